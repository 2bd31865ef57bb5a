"""Per-provider checks of a source's settings, handed to the rules loader."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from relay.providers.base import Provider, StatusLookup
from relay.routing.model import SourceConfig

SourceCheck = Callable[[SourceConfig], list[tuple[str | None, str]]]


def source_checks(providers: Mapping[str, Provider]) -> dict[str, SourceCheck]:
    """Each provider's own checks, plus what ``verify: fetch`` needs of any provider."""
    return {name: _checker(name, provider) for name, provider in providers.items()}


def _checker(name: str, provider: Provider) -> SourceCheck:
    def check(config: SourceConfig) -> list[tuple[str | None, str]]:
        problems = list(provider.check_source(config))
        if config.verify == "fetch":
            if not isinstance(provider, StatusLookup):
                problems.append(("verify", f"fetch is not available: {name} has no status API"))
            if config.api_key is None or not config.api_key.get_secret_value():
                problems.append(("api_key", "is required with verify: fetch"))
        return problems

    return check
