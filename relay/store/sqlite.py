"""The SQLite store: one file in WAL mode, the default backend (DESIGN section 6).

sqlite3 blocks, so one dedicated worker thread owns the one connection and runs every
statement; the event loop only awaits futures. One thread also means one writer in this
process, so our own calls never contend for the database lock.

Ingest is the hot path: every provider callback waits for it before it gets its 2xx. Concurrent
ingests are group-committed: they queue, and one flush writes the whole queue in one transaction
(one fsync for the lot) and then answers every waiter. Items that arrive during a flush go in the
next one, so batches grow exactly when the disk is the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from relay.errors import StoreUnavailableError
from relay.events import TaskEvent
from relay.store import sqlite_queries as q
from relay.store.base import (
    AttemptRecord,
    Claim,
    DeliveryRecord,
    DeliveryState,
    IngestResult,
    NewDelivery,
    Outcome,
)
from relay.store.memory import next_attempt_for

T = TypeVar("T")

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


class _Waiter(NamedTuple):
    """One queued ingest: the worker thread gets ``item``; only the loop touches ``future``."""

    item: q.IngestItem
    future: asyncio.Future[IngestResult]


class SQLiteStore:
    """A Store in one SQLite file.

    ``synchronous`` is SQLite's durability knob: FULL (the default) fsyncs every commit, so a
    2xx to a provider means the event survives a power cut. ``busy_timeout`` is how long (in
    seconds) to wait for another process's write lock before answering StoreUnavailableError.
    ``ingest_batches`` and ``finish_batches`` count group commits, for metrics.
    """

    def __init__(self, path: str, *, synchronous: str = "FULL", busy_timeout: float = 5.0) -> None:
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}")
        self.path = path
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._closing = False
        self._queue: list[_Waiter] = []
        self._flusher: asyncio.Task[None] | None = None
        self._finishes: list[tuple[q.FinishItem, asyncio.Future[bool]]] = []
        self._finisher: asyncio.Task[None] | None = None
        self.ingest_batches = 0
        self.finish_batches = 0

    async def open(self) -> None:
        """Create the file (and its directory) if missing, set WAL mode, apply migrations."""
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-sqlite")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, self._connect)
        except BaseException:
            executor.shutdown(wait=True)
            raise
        self._executor, self._conn, self._closing = executor, conn, False

    def _connect(self) -> sqlite3.Connection:
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(f"store: open: {exc}") from exc
        conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transactions are
            # exactly as wide as the code says.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            q.migrate(conn)
            return conn
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreUnavailableError(f"store: open: {exc}") from exc
            raise

    async def close(self) -> None:
        """Finish queued ingests and already submitted writes, then close the connection."""
        if self._executor is None or self._conn is None:
            return
        self._closing = True
        pending = [t for t in (self._flusher, self._finisher) if t is not None]
        if pending:
            # wait() rather than await: a flusher that failed has already answered its waiters.
            await asyncio.wait(pending)
        executor, conn = self._executor, self._conn
        self._executor, self._conn = None, None
        self._flusher, self._finisher = None, None
        try:
            # Queued behind every job already submitted (shielded writes included).
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            executor.shutdown(wait=True)

    def _submit(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run ``fn`` on the worker thread; sqlite errors become StoreUnavailableError."""
        if self._executor is None or self._conn is None:
            raise StoreUnavailableError(f"store: {what}: not open")
        conn = self._conn

        def job() -> T:
            try:
                return fn(conn)
            except BaseException as exc:
                # Never leave a transaction open: the next job would run inside it.
                if conn.in_transaction:
                    # The original error is the one worth reporting.
                    with contextlib.suppress(sqlite3.Error):
                        conn.rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StoreUnavailableError(f"store: {what}: {exc}") from exc
                raise

        return asyncio.get_running_loop().run_in_executor(self._executor, job)

    async def ping(self) -> None:
        await self._submit("ping", q.ping)

    async def ingest(self, event: TaskEvent, deliveries: list[NewDelivery]) -> IngestResult:
        if self._closing or self._executor is None:
            raise StoreUnavailableError("store: ingest: not open")
        loop = asyncio.get_running_loop()
        # Serialized here, so a model that cannot be dumped fails its own caller only.
        item = q.IngestItem(event, event.model_dump_json(), list(deliveries))
        waiter = _Waiter(item, loop.create_future())
        self._queue.append(waiter)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return await waiter.future

    async def _flush(self) -> None:
        """Write queued ingests, one transaction per batch, until the queue is empty."""
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                # Shielded: once a batch is in the thread, it commits or fails as a whole.
                fut = self._submit("ingest", partial(q.write_batch, batch=[w.item for w in batch]))
                results = await asyncio.shield(fut)
            except asyncio.CancelledError:
                _fail(batch, StoreUnavailableError("store: ingest: cancelled"))
                raise
            except Exception as exc:
                _fail(batch, exc)
                continue
            self.ingest_batches += 1
            for waiter, result in zip(batch, results, strict=True):
                if waiter.future.done():  # its caller was cancelled; the row is stored anyway
                    continue
                if isinstance(result, IngestResult):
                    waiter.future.set_result(result)
                else:
                    waiter.future.set_exception(result)

    async def claim(self, now: float, limit: int, lease_seconds: float) -> list[Claim]:
        if limit <= 0:  # SQLite reads a negative LIMIT as no limit
            return []
        return await self._submit(
            "claim", partial(q.claim, now=now, limit=limit, lease=lease_seconds)
        )

    async def finish(self, claim: Claim, outcome: Outcome, started_at: float, now: float) -> bool:
        """Queued and written with the other outcomes waiting, in one transaction (group
        commit, as for ingest). Shielded: a caller cancelled mid-write (shutdown) still has its
        outcome recorded."""
        if self._closing or self._executor is None:
            raise StoreUnavailableError("store: finish: not open")
        item = q.FinishItem(claim, outcome, next_attempt_for(outcome), started_at, now)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._finishes.append((item, future))
        if self._finisher is None or self._finisher.done():
            self._finisher = asyncio.get_running_loop().create_task(self._flush_finishes())
        return await asyncio.shield(future)

    async def _flush_finishes(self) -> None:
        """Write queued outcomes, one transaction per batch, until the queue is empty."""
        while self._finishes:
            batch, self._finishes = self._finishes, []
            try:
                fut = self._submit("finish", partial(q.finish_batch, batch=[i for i, _ in batch]))
                results = await asyncio.shield(fut)
            except asyncio.CancelledError:
                _answer_all(batch, StoreUnavailableError("store: finish: cancelled"))
                raise
            except Exception as exc:
                _answer_all(batch, exc)
                continue
            self.finish_batches += 1
            for (_, future), kept in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(kept)

    async def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100
    ) -> list[DeliveryRecord]:
        if limit <= 0:  # SQLite reads a negative LIMIT as no limit
            return []
        return await self._submit(
            "list deliveries", partial(q.list_deliveries, state=state, limit=limit)
        )

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        return await self._submit("get delivery", partial(q.get_delivery, delivery_id=delivery_id))

    async def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        return await self._submit("attempts", partial(q.attempts, delivery_id=delivery_id))

    async def get_event(self, event_id: str) -> TaskEvent | None:
        return await self._submit("get event", partial(q.get_event, event_id=event_id))

    async def replay(self, delivery_id: str, now: float) -> bool:
        """Shielded like finish: an operator's replay is a status write too."""
        fut = self._submit("replay", partial(q.replay, delivery_id=delivery_id, now=now))
        return await asyncio.shield(fut)

    async def get_state(self, destination: str, key: str) -> dict[str, Any] | None:
        return await self._submit(
            "get state", partial(q.get_state, destination=destination, key=key)
        )

    async def put_state(
        self, destination: str, key: str, value: dict[str, Any], now: float
    ) -> None:
        text = json.dumps(value, separators=(",", ":"))
        await asyncio.shield(
            self._submit(
                "put state",
                partial(q.put_state, destination=destination, key=key, value=text, now=now),
            )
        )

    async def pace(self, key: str, interval: float, now: float) -> float:
        return await self._submit("pace", partial(q.pace, key=key, interval=interval, now=now))

    def watch(self, wake: Callable[[], None]) -> None:
        """Nothing to watch: in one process the receiver wakes the dispatcher itself, and
        other processes on this file find new deliveries by polling."""

    async def next_due(self) -> float | None:
        return await self._submit("next due", q.next_due)


def _answer_all(batch: list[tuple[q.FinishItem, asyncio.Future[bool]]], exc: Exception) -> None:
    """Fail every still-waiting caller of a batch of outcomes that was not written."""
    for _, future in batch:
        if not future.done():
            # A fresh exception per waiter: a shared one would collect everyone's tracebacks.
            future.set_exception(StoreUnavailableError(str(exc)))


def _fail(batch: list[_Waiter], exc: BaseException) -> None:
    """Answer every still-waiting caller of a batch that was not written."""
    for waiter in batch:
        if not waiter.future.done():
            # A fresh exception per waiter: a shared one would collect everyone's tracebacks.
            fresh = (
                StoreUnavailableError(str(exc)) if isinstance(exc, StoreUnavailableError) else exc
            )
            waiter.future.set_exception(fresh)
