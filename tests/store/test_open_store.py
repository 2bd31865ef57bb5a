from __future__ import annotations

import pytest

from relay.store import open_store
from relay.store.memory import MemoryStore
from relay.store.sqlite import SQLiteStore


def test_memory_url() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relay.db", "relay.db"),
        ("sqlite:///data/relay.db", "data/relay.db"),
        ("sqlite:////var/lib/relay/relay.db", "/var/lib/relay/relay.db"),
    ],
)
def test_sqlite_urls(url: str, path: str) -> None:
    store = open_store(url)
    assert isinstance(store, SQLiteStore)
    assert store.path == path


@pytest.mark.parametrize(
    "url",
    [
        "mysql://relay:hunter2@db/relay",
        "sqlite://relay.db",
        "sqlite:///",
        "sqlite:///:memory:",
        "relay.db",
        "",
    ],
)
def test_other_urls_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ValueError, match=r"sqlite:///path\.db") as info:
        open_store(url)
    assert "hunter2" not in str(info.value)
