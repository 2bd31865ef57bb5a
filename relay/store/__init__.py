"""Durable storage of events and deliveries. ``open_store(url)`` picks the backend."""

from __future__ import annotations

from urllib.parse import parse_qsl

from relay.store.base import Store
from relay.store.memory import MemoryStore
from relay.store.sqlite import SQLiteStore

__all__ = ["Store", "open_store"]

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def open_store(url: str) -> Store:
    """The store a database URL names, not yet opened (the caller awaits ``open()``).

    ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` pick SQLite;
    ``postgresql://user:password@host:5432/dbname`` (or ``postgres://``) picks PostgreSQL, with
    ``?pool_size=10&pool_min=1&pool_timeout=5`` and any libpq option (``sslmode=``...);
    ``memory://`` picks the in-memory store. Anything else is a ValueError that names only
    the scheme, since a URL may carry a password.
    """
    if url == "memory://":
        return MemoryStore()
    if url.startswith(_SQLITE_PREFIX):
        path, _, query = url[len(_SQLITE_PREFIX) :].partition("?")
        if not path or path == ":memory:":
            raise ValueError("sqlite database URL needs a file path: use sqlite:///path.db")
        return SQLiteStore(path, synchronous=_sqlite_options(query).get("synchronous", "FULL"))
    if url.startswith("sqlite:"):
        raise ValueError(
            "unsupported database URL: sqlite needs three slashes; use sqlite:///path.db"
        )
    if url.startswith(_POSTGRES_PREFIXES):
        # Imported here: only a PostgreSQL deployment pays for loading the driver.
        from relay.store.postgres import PostgresStore

        return PostgresStore.from_url(url)
    scheme, sep, _ = url.partition("://")
    named = f"scheme {scheme!r}" if sep else "without a scheme"
    raise ValueError(
        f"unsupported database URL {named}; use sqlite:///path.db or postgresql://host/dbname"
    )


def _sqlite_options(query: str) -> dict[str, str]:
    """``?synchronous=NORMAL`` trades power-loss durability for speed (see the README)."""
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - {"synchronous"})
    if unknown:
        raise ValueError(f"unknown sqlite URL option(s): {', '.join(unknown)}; known: synchronous")
    return options
