"""The rules in force and what is built from them; reloads keep the last good rules."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from relay.channels import ChannelFactory, build_channels
from relay.channels.base import ChannelDeps
from relay.dispatcher import Routing
from relay.errors import ConfigError
from relay.providers.base import Provider
from relay.providers.checks import source_checks
from relay.retry import RetryPolicy
from relay.routing.loader import LoadedRules, load_rules
from relay.routing.model import Rules

log = logging.getLogger("relay.rules")


class RuleBook:
    """Loads ``rules/`` and builds the channels and retry policies for it.

    ``reload()`` swaps everything in one assignment, so a request or a send always sees one
    consistent version, and a failed reload changes nothing.
    """

    def __init__(
        self,
        directory: Path,
        providers: Mapping[str, Provider],
        channel_types: Mapping[str, ChannelFactory],
        deps: ChannelDeps,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.providers = providers
        self._channel_types = channel_types
        self._deps = deps
        self._env = env
        self.loaded: LoadedRules = self._load()
        self.routing: Routing = self._build(self.loaded.rules)

    @property
    def rules(self) -> Rules:
        return self.loaded.rules

    def _load(self) -> LoadedRules:
        env = os.environ if self._env is None else self._env
        checks = source_checks(self.providers)
        loaded = load_rules(self.directory, env, self.providers.keys(), checks)
        for line in loaded.defaults_used:
            log.warning("%s", line)
        return loaded

    def _build(self, rules: Rules) -> Routing:
        channels = build_channels(rules.destinations, self._deps, self._channel_types)
        policies = {
            name: RetryPolicy(tuple(dest.retry.schedule), dest.retry.jitter)
            for name, dest in rules.destinations.items()
            if dest.retry is not None
        }
        return Routing(channels, policies, types={n: d.type for n, d in rules.destinations.items()})

    def reload(self) -> list[str]:
        """Load the rules again. On any problem keep the current ones and return the problems."""
        try:
            loaded = self._load()
            routing = self._build(loaded.rules)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("rules reload failed, keeping the last good rules: %s", problem)
            return exc.problems
        self.loaded, self.routing = loaded, routing
        log.info("rules reloaded from %s", self.directory)
        return []
