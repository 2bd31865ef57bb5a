"""Provider adapters, wired in one explicit registry (no discovery)."""

from __future__ import annotations

from relay.providers.base import Provider
from relay.providers.unified import UnifiedProvider


def default_providers() -> dict[str, Provider]:
    """Every provider relay ships, by the name a source's ``provider:`` refers to.

    A function rather than a module-level table so each app builds its own instances.
    """
    return {
        "goapi": UnifiedProvider("goapi"),
        "piapi": UnifiedProvider("piapi"),
    }
