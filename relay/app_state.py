"""The dependencies one app instance runs with, built by the lifespan and handed to endpoints."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from relay.dispatcher import Dispatcher
from relay.receiver import Receiver
from relay.rulebook import RuleBook
from relay.settings import Settings
from relay.store.base import Store


@dataclass
class AppState:
    settings: Settings
    store: Store
    rulebook: RuleBook
    receiver: Receiver
    http: aiohttp.ClientSession
    dispatcher: Dispatcher | None
