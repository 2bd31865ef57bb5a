"""Provider adapters, wired in one explicit registry (no discovery)."""

from __future__ import annotations

from relay.providers.apimart import ApimartProvider
from relay.providers.base import Provider
from relay.providers.goapi_account import GoapiAccountProvider
from relay.providers.muapi import MuapiProvider
from relay.providers.novita import NovitaProvider
from relay.providers.standard import StandardProvider
from relay.providers.unified import UnifiedProvider


def default_providers() -> dict[str, Provider]:
    """Every provider relay ships, by the name a source's ``provider:`` refers to.

    A function rather than a module-level table so each app builds its own instances.
    """
    return {
        "goapi": UnifiedProvider("goapi"),
        "piapi": UnifiedProvider("piapi"),
        "apimart": ApimartProvider(),
        "muapi": MuapiProvider(),
        "novita": NovitaProvider(),
        "goapi-account": GoapiAccountProvider(),
        "standard": StandardProvider(),
    }
