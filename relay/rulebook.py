"""The rules in force and what is built from them; reloads keep the last good rules."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from relay.breaker import BreakerPolicy
from relay.channels import ChannelFactory, build_channels
from relay.channels.base import ChannelDeps
from relay.dispatcher import Routing
from relay.errors import ConfigError
from relay.metrics import RulesMetrics
from relay.providers.base import Provider
from relay.providers.checks import source_checks
from relay.retry import RetryPolicy
from relay.routing.loader import LoadedRules, find_rule_files, load_rules
from relay.routing.model import Rules
from relay.templating import route_templates

log = logging.getLogger("relay.rules")


def rules_hash(directory: Path) -> str:
    """12 hex digits of the SHA-256 over the rules files under ``directory``: each file's path
    relative to it and its bytes, in load order. Equal hashes: byte-identical rules files.

    A folder that cannot be listed or a file that cannot be read still gets a hash (loading
    it reports the problem); it differs from any readable version's.
    """
    digest = hashlib.sha256()
    try:
        files = find_rule_files(directory)
    except ConfigError as exc:
        digest.update(b"unloadable\0" + "\n".join(exc.problems).encode())
        return digest.hexdigest()[:12]
    for path in files:
        name = path.relative_to(directory).as_posix().encode()
        try:
            content = path.read_bytes()
        except OSError as exc:
            content, name = str(exc).encode(), b"unreadable\0" + name
        # Lengths first, so no two different sets of files can give the same byte stream.
        digest.update(b"%d:%d:" % (len(name), len(content)) + name + content)
    return digest.hexdigest()[:12]


class RuleBook:
    """Loads ``rules/`` and builds the channels and retry policies for it.

    ``reload()`` swaps everything in one assignment, so a request or a send always sees one
    consistent version, and a failed reload changes nothing. ``hash`` (see ``rules_hash``)
    and ``loaded_at`` name the rules in force; every reload is counted in ``metrics``.
    """

    def __init__(
        self,
        directory: Path,
        providers: Mapping[str, Provider],
        channel_types: Mapping[str, ChannelFactory],
        deps: ChannelDeps,
        env: Mapping[str, str] | None = None,
        metrics: RulesMetrics | None = None,
        notes: bool = True,
    ) -> None:
        self.directory = directory
        # Each "uses the default of ${VAR}" note is logged once, not again at every reload;
        # none at all with ``notes=False`` (a start-up check that the real start repeats).
        self._noted: set[str] = set()
        self._notes = notes
        self.providers = providers
        self._channel_types = channel_types
        self._deps = deps
        self._env = env
        self._metrics = metrics
        # Hashed before loading: a change made while loading gives a new hash (and, from the
        # watcher, another reload) rather than being taken for the version loaded.
        self.hash = rules_hash(directory)
        self.loaded: LoadedRules = self._load()
        self.routing: Routing = self._build(self.loaded.rules)
        self.loaded_at = deps.clock()
        if metrics is not None:
            metrics.loaded(self.hash, self.loaded_at)

    @property
    def rules(self) -> Rules:
        return self.loaded.rules

    def _load(self) -> LoadedRules:
        env = os.environ if self._env is None else self._env
        checks = source_checks(self.providers)
        loaded = load_rules(self.directory, env, self.providers.keys(), checks)
        for line in loaded.defaults_used:
            if self._notes and line not in self._noted:
                log.warning("%s", line)
                self._noted.add(line)
        return loaded

    def _build(self, rules: Rules) -> Routing:
        channels = build_channels(rules.destinations, self._deps, self._channel_types)
        policies = {
            name: RetryPolicy(tuple(dest.retry.schedule), dest.retry.jitter)
            for name, dest in rules.destinations.items()
            if dest.retry is not None
        }
        return Routing(
            channels,
            policies,
            types={n: d.type for n, d in rules.destinations.items()},
            limits={
                n: d.concurrency for n, d in rules.destinations.items() if d.concurrency is not None
            },
            breakers={
                n: BreakerPolicy(d.breaker.failures, d.breaker.pause, d.breaker.max_pause)
                for n, d in rules.destinations.items()
                if d.breaker is not None
            },
            rates={n: d.rate for n, d in rules.destinations.items() if d.rate is not None},
            mentions={i: r.mention for i, r in enumerate(rules.routes) if r.mention is not None},
            mutes={i: tuple(r.mute_times) for i, r in enumerate(rules.routes) if r.mute_times},
            groups={i: r.group for i, r in enumerate(rules.routes) if r.group is not None},
            templates=route_templates(rules.routes),
        )

    def reload(self, *, if_changed: bool = False) -> list[str]:
        """Load the rules again. On any problem keep the current ones, log and return every
        problem. ``if_changed``: do nothing (and count nothing) when the rules files are
        byte-identical to those in force (the file watcher; SIGHUP and the admin API always
        reload)."""
        digest = rules_hash(self.directory)
        if if_changed and digest == self.hash:
            log.info("rules files unchanged (hash %s): nothing to reload", digest)
            return []
        try:
            loaded = self._load()
            routing = self._build(loaded.rules)
        except ConfigError as exc:
            problems = exc.problems
        except Exception as exc:  # a channel's bug must not take the last good rules away
            log.exception("rules reload crashed")
            problems = [f"internal error while building the rules: {type(exc).__name__}"]
        else:
            problems = []
        if problems:
            for problem in problems:
                log.error("rules reload failed, keeping the last good rules: %s", problem)
            if self._metrics is not None:
                self._metrics.reload(ok=False)
            return problems
        self.loaded, self.routing = loaded, routing
        self.hash, self.loaded_at = digest, self._deps.clock()
        if self._metrics is not None:
            self._metrics.reload(ok=True)
            self._metrics.loaded(self.hash, self.loaded_at)
        log.info("rules reloaded from %s (hash %s)", self.directory, self.hash)
        return []
