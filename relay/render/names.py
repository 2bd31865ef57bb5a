"""What render knows about providers: their display names and which ones raise account alerts.

Render never imports a provider module. Each provider declares its ``display_name``, whether
its events are account ``alerts`` and, for alerts, ``alert_phrases``; the composition root
(``relay.runtime.provider_names``) copies those into a ``ProviderNames`` and hands it to the
channels, which pass it to the render functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from relay.render.text import one_line


@dataclass(frozen=True)
class ProviderInfo:
    """One provider as people see it."""

    display_name: str
    """ "GoAPI", "Standard Webhooks", "GoAPI account"."""
    alerts: bool = False
    """Its events are account notifications, not tasks."""
    alert_phrases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """For alerts: a readable line per known alert type ("mj_bot_banned" -> "Midjourney bot
    banned")."""


@dataclass(frozen=True)
class ProviderNames:
    """Every provider this relay has, by the name events carry (``TaskEvent.provider``).

    An event may name a provider this relay does not have (it came from another relay): it is
    shown as its name, cleaned, and never read as an alert.
    """

    providers: Mapping[str, ProviderInfo] = field(default_factory=lambda: MappingProxyType({}))
    # Display look-ups forgive case ("GoAPI" in an event from elsewhere); alert look-ups do not.
    _by_lower_name: Mapping[str, ProviderInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lower = {name.lower(): info for name, info in self.providers.items()}
        object.__setattr__(self, "_by_lower_name", lower)

    def display(self, provider: str | None) -> str:
        """ "GoAPI", "APIMart", ...; an unknown provider as given (cleaned)."""
        name = one_line(provider)
        info = self._by_lower_name.get(name.lower())
        return (info.display_name if info is not None else name) or "unknown provider"

    def alert(self, provider: str) -> ProviderInfo | None:
        """The provider when its events are account alerts, else None."""
        info = self.providers.get(provider)
        return info if info is not None and info.alerts else None
