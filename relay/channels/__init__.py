"""Destinations: one channel class per destination ``type``, registered explicitly."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from relay.channels.base import Channel, ChannelDeps
from relay.channels.webhook import WebhookChannel
from relay.routing.model import WebhookDestination

ChannelFactory = Callable[[str, WebhookDestination, ChannelDeps], Channel]


def default_channel_types() -> dict[str, ChannelFactory]:
    """The explicit registry of destination types."""
    return {"webhook": WebhookChannel}


def build_channels(
    destinations: Mapping[str, WebhookDestination],
    deps: ChannelDeps,
    types: Mapping[str, ChannelFactory],
) -> dict[str, Channel]:
    """One channel per configured destination."""
    return {name: types[cfg.type](name, cfg, deps) for name, cfg in destinations.items()}
