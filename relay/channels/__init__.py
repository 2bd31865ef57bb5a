"""Destinations: one channel class per destination ``type``, registered explicitly."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from relay.channels.base import Channel, ChannelDeps
from relay.channels.email import EmailChannel
from relay.channels.slack import SlackChannel
from relay.channels.webhook import WebhookChannel
from relay.routing.model import Destination

# Each factory takes the config model of its own type (the rules' discriminated union picks
# it by ``type``), hence Any here.
ChannelFactory = Callable[[str, Any, ChannelDeps], Channel]


def default_channel_types() -> dict[str, ChannelFactory]:
    """The explicit registry of destination types."""
    return {"webhook": WebhookChannel, "slack": SlackChannel, "email": EmailChannel}


def build_channels(
    destinations: Mapping[str, Destination],
    deps: ChannelDeps,
    types: Mapping[str, ChannelFactory],
) -> dict[str, Channel]:
    """One channel per configured destination."""
    return {name: types[cfg.type](name, cfg, deps) for name, cfg in destinations.items()}
