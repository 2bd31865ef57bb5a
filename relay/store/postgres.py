"""The PostgreSQL store: several relay replicas on one database (README: Storage and deployment).

Driver: psycopg 3 in async mode with psycopg_pool, rather than asyncpg. Both are async with
binary wheels. psycopg ships its type annotations, so this module is checked by mypy --strict
like the rest (asyncpg has none: it would be Any throughout, or need a stub package), and it
drives libpq, so every option of a libpq URL works as PostgreSQL's own tools read it (sslmode,
sslrootcert, connect_timeout, target_session_attrs, several hosts, passfiles, services).
asyncpg's lower per-query cost matters little here: each call is one round trip to the server
(ingest, claim, finish and pace are one statement each) and psycopg prepares repeated
statements on its own.

Every call takes a connection from the pool (autocommit: a lone statement is its own
transaction). A deadlock or serialization failure rolled the call's transaction back whole, and
running it again normally succeeds: it is retried a few times, shortly after (``_run``). Every
other driver error, whatever it is (connection refused, pool closed or exhausted, constraint
violated), and a conflict that outlasts the retries, becomes StoreUnavailableError naming the
operation, with any password scrubbed out of the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg_pool import AsyncConnectionPool

from relay.errors import StoreUnavailableError
from relay.events import TaskEvent
from relay.store import postgres_queries as q
from relay.store import postgres_retention as r
from relay.store.base import (
    AttemptRecord,
    Claim,
    Cursor,
    DeliveryFilter,
    DeliveryRecord,
    DeliveryState,
    EventFilter,
    IngestResult,
    NewDelivery,
    Outcome,
    PruneCount,
    QuarantinedCallback,
    QueueStats,
    RejectedRequest,
    Silence,
)
from relay.store.batching import GroupCommit
from relay.store.memory import REPLAYABLE, next_attempt_for

log = logging.getLogger("relay.store")

T = TypeVar("T")

# Our options in the URL's query; libpq gets the rest.
URL_OPTIONS = ("pool_size", "pool_min", "pool_timeout")
DEFAULT_POOL_SIZE = 10
DEFAULT_POOL_MIN = 1
DEFAULT_POOL_TIMEOUT = 5.0

# Conflicts the server resolved by rolling one transaction back: worth running it again.
RETRYABLE_ERRORS = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
CONFLICT_RETRIES = 5
# The first retry waits about this long (seconds), each next one twice as long, each jittered
# so the transactions that collided do not collide again in step: under half a second in all.
CONFLICT_BACKOFF = 0.01


class PostgresStore:
    """A Store in a PostgreSQL database, shared by every replica that opens it.

    ``conninfo`` is a libpq URL or key=value string, without our options (see ``from_url``).
    The pool keeps ``pool_min`` connections open and grows to ``pool_size`` under load.
    ``pool_timeout`` (seconds) bounds the wait for a free connection, and for connecting at
    open, before StoreUnavailableError. ``secrets`` are scrubbed from every error message.

    ``conflict_retries`` counts the writes run again after a deadlock or serialization failure
    (for metrics); ``ingest_batches`` and ``finish_batches`` count the group commits.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_min: int = DEFAULT_POOL_MIN,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        secrets: tuple[str, ...] = (),
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if not 0 <= pool_min <= pool_size:
            raise ValueError("pool_min must be between 0 and pool_size")
        if not pool_timeout > 0:
            raise ValueError("pool_timeout must be a positive number of seconds")
        self._conninfo = conninfo
        self.pool_size = pool_size
        self.pool_min = pool_min
        self.pool_timeout = pool_timeout
        found = [*secrets, *_secrets_of(conninfo), os.environ.get("PGPASSWORD", "")]
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = tuple(sorted({s for s in found if s}, key=len, reverse=True))
        self._pool: AsyncConnectionPool | None = None
        self._closing = False
        self._writes: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._conflict_retries = 0
        # Several ingest writers at once (each a connection): a batch waiting on another
        # replica's group lock must not hold back every callback behind it.
        self._max_ingesters = max(1, pool_size // 2)
        self._ingests: GroupCommit[q.IngestItem, IngestResult] = GroupCommit(
            "ingest", self._write_ingests, writers=self._max_ingesters
        )
        self._finishes: GroupCommit[q.FinishItem, bool] = GroupCommit(
            "finish", self._write_finishes
        )

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """The store a ``postgresql://`` (or ``postgres://``) URL names.

        ``?pool_size=``, ``?pool_min=`` and ``?pool_timeout=`` are ours; any other query option
        goes to libpq, which must know it. A bad URL is a ValueError that never quotes a password.
        """
        secrets = _secrets_of(url)
        try:
            parts = urlsplit(url)
            options = parse_qsl(parts.query, keep_blank_values=True)
        except ValueError as exc:
            raise ValueError(_scrub(f"invalid postgresql database URL: {exc}", secrets)) from None
        ours = {k: v for k, v in options if k in URL_OPTIONS}
        rest = [(k, v) for k, v in options if k not in URL_OPTIONS]
        conninfo = urlunsplit(parts._replace(query=urlencode(rest)))
        try:
            pg_conninfo.conninfo_to_dict(conninfo)
        except psycopg.Error as exc:
            message = f"invalid postgresql database URL: {_one_line(exc)}"
            raise ValueError(_scrub(message, secrets)) from None
        return cls(
            conninfo,
            pool_size=_int_option(ours, "pool_size", DEFAULT_POOL_SIZE),
            pool_min=_int_option(ours, "pool_min", DEFAULT_POOL_MIN),
            pool_timeout=_float_option(ours, "pool_timeout", DEFAULT_POOL_TIMEOUT),
            secrets=secrets,
        )

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True}
        params = pg_conninfo.conninfo_to_dict(self._conninfo)
        if "connect_timeout" not in params and "PGCONNECT_TIMEOUT" not in os.environ:
            # libpq waits forever by default (a host that drops packets); it counts whole
            # seconds and takes 2 as its least.
            kwargs["connect_timeout"] = max(2, math.ceil(self.pool_timeout))
        return kwargs

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(_scrub(f"store: {what}: {_one_line(exc)}", self._secrets))

    async def open(self) -> None:
        """Connect, apply migrations (one replica at a time), then fill the pool."""
        if self._pool is not None:
            return
        kwargs = self._connect_kwargs()
        # A connection of its own first: a server that is down fails here at once, with
        # libpq's reason, where the pool would retry until its timeout and then only say so.
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, **kwargs)
        except psycopg.Error as exc:
            raise self._unavailable("open", exc) from exc
        try:
            await q.migrate(conn)
        except psycopg.Error as exc:
            raise self._unavailable("open", exc) from exc
        finally:
            await conn.close()
        pool: AsyncConnectionPool = AsyncConnectionPool(
            self._conninfo,
            kwargs=kwargs,
            min_size=self.pool_min,
            max_size=self.pool_size,
            timeout=self.pool_timeout,
            open=False,
            name="relay-store",
        )
        try:
            await pool.open(wait=True, timeout=self.pool_timeout)
        except psycopg.Error as exc:
            await pool.close()
            raise self._unavailable("open", exc) from exc
        self._pool, self._closing = pool, False

    def watch(self, wake: Callable[[], None]) -> None:
        """LISTEN on a connection of its own: every replica's ingest and replay NOTIFY, so a
        worker in another process starts at once instead of at its next poll."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen(wake))

    async def _listen(self, wake: Callable[[], None]) -> None:
        delay = 1.0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, **self._connect_kwargs()
                )
                async with conn:
                    await conn.execute(f"LISTEN {q.NOTIFY_CHANNEL}")
                    delay = 1.0
                    wake()  # whatever became due while nobody was listening
                    async for _ in conn.notifies():
                        wake()
            except psycopg.Error as exc:
                # Polling still finds the work meanwhile: a warning, then try again.
                log.warning("%s; retrying in %.0f s", self._unavailable("listen", exc), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def close(self) -> None:
        """Let the outcome writes under way finish, then close every connection."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is None:
            return
        self._closing = True
        await self._ingests.wait()
        await self._finishes.wait()
        if self._writes:
            await asyncio.wait(set(self._writes))
        pool, self._pool = self._pool, None
        try:
            await pool.close()
        finally:
            self._closing = False

    def _check_open(self, what: str) -> AsyncConnectionPool:
        if self._pool is None or self._closing:
            raise StoreUnavailableError(f"store: {what}: not open")
        return self._pool

    async def _run(self, what: str, fn: Callable[[q.Conn], Awaitable[T]]) -> T:
        """Run ``fn`` on a pooled connection; driver errors become StoreUnavailableError.

        Every call of the store comes through here. A deadlock or serialization failure runs
        ``fn`` again (on a connection from the pool again), up to CONFLICT_RETRIES times after
        a short jittered wait, each counted in ``conflict_retries`` and logged as a warning.
        So ``fn`` must be safe to run again after one: one transaction (the server rolled it
        back whole) or autocommit statements that can each be repeated.
        """
        pool = self._check_open(what)
        retry = 0
        while True:
            try:
                async with pool.connection() as conn:
                    return await fn(conn)
            except RETRYABLE_ERRORS as exc:
                if retry == CONFLICT_RETRIES:
                    raise self._unavailable(what, exc) from exc
                retry += 1
                self._conflict_retries += 1
                delay = CONFLICT_BACKOFF * 2 ** (retry - 1) * random.uniform(0.5, 1.5)
                log.warning(
                    "%s; retry %d of %d in %.3f s",
                    self._unavailable(what, exc),
                    retry,
                    CONFLICT_RETRIES,
                    delay,
                )
                await asyncio.sleep(delay)
            except psycopg.Error as exc:
                raise self._unavailable(what, exc) from exc

    async def _write(self, what: str, fn: Callable[[q.Conn], Awaitable[T]]) -> T:
        """``_run``, shielded: a caller cancelled mid-write (shutdown) still has it recorded,
        and close() waits for it."""
        task = asyncio.ensure_future(self._run(what, fn))
        self._writes.add(task)
        task.add_done_callback(_forget(self._writes))
        return await asyncio.shield(task)

    async def ping(self) -> None:
        await self._run("ping", q.ping)

    async def ingest(self, event: TaskEvent, deliveries: list[NewDelivery]) -> IngestResult:
        """Queued and written with the other callbacks waiting, in one transaction (group
        commit, as on SQLite). The caller gets its answer once that transaction committed."""
        if self._pool is None or self._closing:
            raise StoreUnavailableError("store: ingest: not open")
        # Serialized here, so a model that cannot be dumped fails its own caller only.
        item = q.IngestItem(event, event.model_dump_json(), list(deliveries))
        return await self._ingests.put(item)

    async def _write_ingests(
        self, items: list[q.IngestItem]
    ) -> list[IngestResult | StoreUnavailableError]:
        try:
            return [*await self._run("ingest", partial(q.ingest_batch, batch=items))]
        except StoreUnavailableError as exc:
            if not isinstance(exc.__cause__, psycopg.IntegrityError) or len(items) == 1:
                raise
        # A constraint broke (an id clash: a bug): each alone, so only that one fails.
        results: list[IngestResult | StoreUnavailableError] = []
        for item in items:
            try:
                [result] = await self._run("ingest", partial(q.ingest_batch, batch=[item]))
                results.append(result)
            except StoreUnavailableError as exc:
                results.append(exc)
        return results

    async def claim(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        *,
        skip: Collection[str] = (),
        caps: Mapping[str, int] | None = None,
        quota: Mapping[str, int] | None = None,
    ) -> list[Claim]:
        if limit <= 0:  # PostgreSQL refuses a negative LIMIT
            return []
        fn = partial(
            q.claim,
            now=now,
            limit=limit,
            lease=lease_seconds,
            skip=list(skip),
            caps=caps,
            quota=quota,
        )
        return await self._run("claim", fn)

    async def finish(self, claim: Claim, outcome: Outcome, started_at: float, now: float) -> bool:
        """Queued and written with the other outcomes waiting, in one statement (group
        commit). Shielded: a caller cancelled mid-write (shutdown) still has its outcome
        recorded, and close() waits for it."""
        if self._pool is None or self._closing:
            raise StoreUnavailableError("store: finish: not open")
        item = q.FinishItem(claim, outcome, next_attempt_for(outcome), started_at, now)
        return await asyncio.shield(self._finishes.put(item))

    async def _write_finishes(self, items: list[q.FinishItem]) -> list[bool]:
        return await self._run("finish", partial(q.finish_batch, batch=items))

    @property
    def ingest_batches(self) -> int:
        return self._ingests.batches

    @property
    def finish_batches(self) -> int:
        return self._finishes.batches

    @property
    def conflict_retries(self) -> int:
        """How many times a write was run again after a deadlock or serialization failure
        (SQLSTATE 40P01, 40001), since this store was made: a metric. A conflict that still
        failed after its retries counts them, and reaches the caller as StoreUnavailableError.
        """
        return self._conflict_retries

    async def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100
    ) -> list[DeliveryRecord]:
        """``find_deliveries`` by state alone: newest first, ties by id."""
        return await self._find_deliveries("list deliveries", DeliveryFilter(state=state), limit)

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        return await self._run("get delivery", partial(q.get_delivery, delivery_id=delivery_id))

    async def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        return await self._run("attempts", partial(q.attempts, delivery_id=delivery_id))

    async def get_event(self, event_id: str) -> TaskEvent | None:
        return await self._run("get event", partial(q.get_event, event_id=event_id))

    async def replay(
        self, delivery_id: str, now: float, *, states: Sequence[DeliveryState] = ("dead",)
    ) -> bool:
        """NOTIFYs (at commit) when it made the delivery pending, so every worker wakes."""
        allowed = sorted(REPLAYABLE.intersection(states))
        if not allowed:
            self._check_open("replay")
            return False
        fn = partial(q.replay, delivery_id=delivery_id, now=now, states=allowed)
        return await self._write("replay", fn)

    async def add_silence(self, silence: Silence) -> bool:
        return await self._write("add silence", partial(q.add_silence, silence=silence))

    async def list_silences(self, now: float, *, include_ended: bool = False) -> list[Silence]:
        fn = partial(q.list_silences, now=now, include_ended=include_ended)
        return await self._run("list silences", fn)

    async def get_silence(self, silence_id: str) -> Silence | None:
        return await self._run("get silence", partial(q.get_silence, silence_id=silence_id))

    async def expire_silence(self, silence_id: str, now: float) -> bool:
        fn = partial(q.expire_silence, silence_id=silence_id, now=now)
        return await self._write("expire silence", fn)

    async def held_counts(self) -> dict[str, int]:
        return await self._run("held counts", q.held_counts)

    async def release_held(self, held_by: str, now: float) -> int:
        fn = partial(q.release_held, held_by=held_by, now=now)
        return await self._write("release held", fn)

    async def group_pending(
        self, destination: str, group: str, *, after: str, limit: int
    ) -> list[tuple[str, TaskEvent]]:
        if limit <= 0:
            return []
        fn = partial(q.group_pending, destination=destination, group=group, after=after)
        return await self._run("group pending", partial(fn, limit=limit))

    async def fold(self, delivery_ids: Sequence[str], outcome: Outcome, now: float) -> int:
        if not delivery_ids:
            return 0
        fn = partial(q.fold, ids=list(delivery_ids), outcome=outcome, now=now)
        return await self._write("fold", fn)

    async def list_events(self, limit: int = 100) -> list[TaskEvent]:
        """``find_events`` of every event: newest received first, ties by id."""
        return await self._find_events("list events", EventFilter(), limit)

    async def find_events(
        self, where: EventFilter, limit: int = 100, before: Cursor | None = None
    ) -> list[TaskEvent]:
        return await self._find_events("find events", where, limit, before)

    async def _find_events(
        self, what: str, where: EventFilter, limit: int, before: Cursor | None = None
    ) -> list[TaskEvent]:
        if limit <= 0:  # PostgreSQL refuses a negative LIMIT
            return []
        return await self._run(
            what, partial(q.find_events, where=where, limit=limit, before=before)
        )

    async def find_deliveries(
        self, where: DeliveryFilter, limit: int = 100, before: Cursor | None = None
    ) -> list[DeliveryRecord]:
        return await self._find_deliveries("find deliveries", where, limit, before)

    async def _find_deliveries(
        self, what: str, where: DeliveryFilter, limit: int, before: Cursor | None = None
    ) -> list[DeliveryRecord]:
        if limit <= 0:  # PostgreSQL refuses a negative LIMIT
            return []
        return await self._run(
            what, partial(q.find_deliveries, where=where, limit=limit, before=before)
        )

    async def count_deliveries(self, where: DeliveryFilter) -> int:
        return await self._run("count deliveries", partial(q.count_deliveries, where=where))

    async def add_deliveries(
        self, event_id: str, deliveries: list[NewDelivery], now: float
    ) -> bool:
        """Created at ``now`` (see MemoryStore.add_deliveries); NOTIFYs like an ingest."""
        fn = partial(q.add_deliveries, event_id=event_id, deliveries=list(deliveries), now=now)
        return await self._write("add deliveries", fn)

    async def release(self, claim: Claim, now: float) -> bool:
        """Shielded like finish (a shutdown calls it); NOTIFYs, so another worker takes it."""
        return await self._write("release", partial(q.release, claim=claim, now=now))

    async def queue_stats(self, now: float) -> QueueStats:
        return await self._run("queue stats", partial(q.queue_stats, now=now))

    async def record_rejected(self, requests: Sequence[RejectedRequest], keep: int) -> None:
        fn = partial(q.record_rejected, requests=list(requests), keep=max(keep, 0))
        await self._write("record rejected", fn)

    async def list_rejected(
        self, source: str | None = None, limit: int = 100
    ) -> list[RejectedRequest]:
        if limit <= 0:
            return []
        return await self._run(
            "list rejected", partial(q.list_rejected, source=source, limit=limit)
        )

    async def quarantine(self, callback: QuarantinedCallback) -> None:
        """Shielded: the callback is answered 200 only once this committed."""
        await self._write("quarantine", partial(q.quarantine, callback=callback))

    async def list_quarantined(
        self, limit: int = 100, *, include_reprocessed: bool = False
    ) -> list[QuarantinedCallback]:
        if limit <= 0:
            return []
        fn = partial(q.list_quarantined, limit=limit, include_reprocessed=include_reprocessed)
        return await self._run("list quarantined", fn)

    async def get_quarantined(self, quarantine_id: str) -> QuarantinedCallback | None:
        fn = partial(q.get_quarantined, quarantine_id=quarantine_id)
        return await self._run("get quarantined", fn)

    async def settle_quarantined(
        self, quarantine_id: str, *, event_id: str | None, reason: str, now: float
    ) -> bool:
        fn = partial(
            q.settle_quarantined,
            quarantine_id=quarantine_id,
            event_id=event_id,
            reason=reason,
            now=now,
        )
        return await self._write("settle quarantined", fn)

    async def next_due(self) -> float | None:
        return await self._run("next due", q.next_due)

    async def get_state(self, destination: str, key: str) -> dict[str, Any] | None:
        return await self._run("get state", partial(q.get_state, destination=destination, key=key))

    async def put_state(
        self, destination: str, key: str, value: dict[str, Any], now: float
    ) -> None:
        fn = partial(q.put_state, destination=destination, key=key, value=value, now=now)
        await self._write("put state", fn)

    async def pace(self, key: str, interval: float, now: float) -> float:
        return await self._run("pace", partial(q.pace, key=key, interval=interval, now=now))

    async def prune(self, before: float, limit: int, *, dry_run: bool = False) -> PruneCount:
        """One batch in one transaction (``postgres_retention``)."""
        if dry_run:
            return await self._run("prune", partial(r.count_prunable, before=before))
        if limit <= 0:
            return PruneCount()
        return await self._write("prune", partial(r.prune, before=before, limit=limit))

    async def purge_dead(self, before: float, limit: int, *, dry_run: bool = False) -> PruneCount:
        """One batch in one transaction (``postgres_retention``)."""
        if dry_run:
            return await self._run("purge dead", partial(r.count_purgeable, before=before))
        if limit <= 0:
            return PruneCount()
        fn = partial(r.purge_dead, before=before, limit=limit)
        return await self._write("purge dead", fn)


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # its caller may be gone: retrieved, so asyncio does not log it

    return done


def _secrets_of(conninfo: str) -> tuple[str, ...]:
    """Every password a URL or key=value string carries, as written and decoded."""
    found: list[str] = []
    try:
        parts = urlsplit(conninfo)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "password" and value:
                found.append(value)
    except ValueError:
        pass
    try:
        password = pg_conninfo.conninfo_to_dict(conninfo).get("password")
    except psycopg.Error:
        password = None
    if isinstance(password, str) and password:
        found.append(password)
    return tuple(dict.fromkeys(found))


def _scrub(message: str, secrets: tuple[str, ...]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            message = message.replace(secret, "***")
    return message


def _one_line(exc: BaseException) -> str:
    """The driver's message on one line (libpq adds hints on lines of their own)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _int_option(options: dict[str, str], name: str, default: int) -> int:
    if name not in options:
        return default
    try:
        return int(options[name])
    except ValueError:
        raise ValueError(f"postgresql URL option {name} must be a whole number") from None


def _float_option(options: dict[str, str], name: str, default: float) -> float:
    if name not in options:
        return default
    try:
        value = float(options[name])
    except ValueError:
        raise ValueError(f"postgresql URL option {name} must be a number of seconds") from None
    if not math.isfinite(value):
        raise ValueError(f"postgresql URL option {name} must be a number of seconds")
    return value
