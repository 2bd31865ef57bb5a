"""The SQLite store: one file in WAL mode, the default backend (README: Storage and deployment).

sqlite3 blocks, so one dedicated worker thread owns the one connection and runs every
statement; the event loop only awaits futures. One thread also means one writer in this
process, so our own calls never contend for the database lock; relay's other processes on the
file (a receiver's workers) take turns with it through a lock file (``sqlite_writer``).

Ingest is the hot path: every provider callback waits for it before it gets its 2xx. Concurrent
ingests are group-committed: they queue, and one flush writes the whole queue in one transaction
(one fsync for the lot) and then answers every waiter. Items that arrive during a flush go in the
next one, so batches grow exactly when the disk is the bottleneck; the thread goes on to that
next one by itself, without waiting for the event loop (``ThreadedGroupCommit``). Under
``synchronous=FULL`` that fsync comes after the write lock is given back (``wal_sync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from relay.errors import StoreUnavailableError
from relay.events import TaskEvent
from relay.store import sqlite_queries as q
from relay.store import sqlite_retention as r
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
from relay.store.batching import ThreadedGroupCommit
from relay.store.memory import REPLAYABLE, next_attempt_for
from relay.store.sqlite_writer import WriterConnection, WriterLock
from relay.store.wal_sync import WalLog

T = TypeVar("T")

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


# How often a watching store looks for other processes' commits (a cheap read of a counter).
WATCH_SECONDS = 0.05


class SQLiteStore:
    """A Store in one SQLite file.

    ``synchronous`` is SQLite's durability knob: FULL (the default) fsyncs every commit, so a
    2xx to a provider means the event survives a power cut. ``busy_timeout`` is how long (in
    seconds) to wait for another process's write lock before answering StoreUnavailableError.
    ``ingest_batches`` and ``finish_batches`` count group commits, for metrics. ``sync`` is
    how the log is flushed after a write under FULL (``os.fdatasync``; tests pass their own).
    """

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        sync: Callable[[int], None] = os.fdatasync,
    ) -> None:
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}")
        self.path = path
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._sync = sync
        # Under FULL, in WAL mode: the log, flushed after each write's commit (see _submit);
        # the connection itself is NORMAL, so SQLite makes no fsync with the write lock held.
        self._wal: WalLog | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._conn: WriterConnection | None = None
        self._closing = False
        # Written on the store's thread batch after batch (see ThreadedGroupCommit).
        self._ingests: ThreadedGroupCommit[q.IngestItem, IngestResult] = ThreadedGroupCommit(
            "ingest", self._write_ingests, self._on_thread
        )
        self._finishes: ThreadedGroupCommit[q.FinishItem, bool] = ThreadedGroupCommit(
            "finish", self._write_finishes, self._on_thread
        )
        self._watcher: asyncio.Task[None] | None = None

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

    def _connect(self) -> WriterConnection:
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(f"store: open: {exc}") from exc
        conn: WriterConnection | None = None
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transactions are
            # exactly as wide as the code says.
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, factory=WriterConnection
            )
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            # This process's writers take turns with the others' without SQLite's sleeps.
            conn.writer_lock = WriterLock(f"{self.path}-writer.lock", self._busy_timeout_ms / 1000)
            # Takes effect on a new file only (before its first table, and before WAL mode,
            # which writes the header): retention then gives freed pages back in steps.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            # What SQLite could set: a file in memory, say, keeps no log.
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            level = self._synchronous
            if level == "FULL" and str(mode).lower() == "wal":
                # SQLite keeps the log beside the file the path resolves to.
                self._wal = WalLog(os.path.realpath(self.path) + "-wal", self._sync)
                level = "NORMAL"
            conn.execute(f"PRAGMA synchronous = {level}")
            conn.synchronous = _SYNCHRONOUS.index(level)
            conn.execute("PRAGMA foreign_keys = ON")
            # A multi-row insert inside a transaction keeps a statement journal (to undo just
            # that statement on a constraint error); past 64 KiB SQLite spills it to a new
            # temporary file, which a batch of callbacks always was: kept in memory instead.
            conn.execute("PRAGMA temp_store = MEMORY")
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
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._ingests.wait()
        await self._finishes.wait()
        executor, conn = self._executor, self._conn
        self._executor, self._conn = None, None
        try:
            # Queued behind every job already submitted (shielded writes included).
            await asyncio.get_running_loop().run_in_executor(executor, self._close_files, conn)
        finally:
            executor.shutdown(wait=True)

    def _close_files(self, conn: WriterConnection) -> None:
        try:
            if self._wal is not None:
                self._wal.close()
        finally:
            conn.close()

    def _check_open(self, what: str) -> tuple[ThreadPoolExecutor, WriterConnection]:
        if self._executor is None or self._conn is None:
            raise StoreUnavailableError(f"store: {what}: not open")
        return self._executor, self._conn

    def _submit(
        self,
        what: str,
        fn: Callable[[sqlite3.Connection], T],
        *,
        relaxed: bool = False,
        vouches: bool = False,
    ) -> asyncio.Future[T]:
        """Run ``fn`` on the worker thread; sqlite errors become StoreUnavailableError.

        Under FULL, a job that changed rows has the log flushed after its commit, before it
        answers; a ``relaxed`` one (the dispatcher's leases and outcomes) has it not; one that
        ``vouches`` for rows it found (an ingest answering "duplicate") has it always.
        """
        executor, _ = self._check_open(what)
        return asyncio.get_running_loop().run_in_executor(
            executor, self._job(what, fn, relaxed=relaxed, vouches=vouches)
        )

    def _on_thread(self, job: Callable[[], None]) -> None:
        """Queue ``job`` on the store's thread (RuntimeError once it is shut down)."""
        if self._executor is None:
            raise RuntimeError("not open")
        self._executor.submit(job)

    def _job(
        self,
        what: str,
        fn: Callable[[sqlite3.Connection], T],
        *,
        relaxed: bool = False,
        vouches: bool = False,
    ) -> Callable[[], T]:
        """``fn`` as a job for the store's thread (see ``_submit``)."""
        _, conn = self._check_open(what)
        wal = None if relaxed else self._wal

        def job() -> T:
            try:
                changes = conn.total_changes
                result = fn(conn)
                if wal is not None and (vouches or conn.total_changes != changes):
                    wal.flush()
                return result
            except BaseException as exc:
                # Never leave a transaction open: the next job would run inside it.
                if conn.in_transaction:
                    # The original error is the one worth reporting.
                    with contextlib.suppress(sqlite3.Error):
                        conn.rollback()
                if isinstance(exc, sqlite3.Error):
                    raise StoreUnavailableError(f"store: {what}: {exc}") from exc
                raise
            finally:
                conn.end_of_job()

        return job

    async def ping(self) -> None:
        await self._submit("ping", q.ping)

    async def ingest(self, event: TaskEvent, deliveries: list[NewDelivery]) -> IngestResult:
        """Queued and committed with the other callbacks waiting (group commit)."""
        if self._closing or self._executor is None:
            raise StoreUnavailableError("store: ingest: not open")
        # Serialized here, so a model that cannot be dumped fails its own caller only.
        item = q.IngestItem(event, event.model_dump_json(), list(deliveries))
        return await self._ingests.put(item)

    def _write_ingests(
        self, items: list[q.IngestItem]
    ) -> list[IngestResult | StoreUnavailableError]:
        """On the store's thread: one batch, committed (and the log flushed) or failed whole."""
        return self._job("ingest", partial(q.write_batch, batch=items), vouches=True)()

    @property
    def ingest_batches(self) -> int:
        return self._ingests.batches

    @property
    def finish_batches(self) -> int:
        return self._finishes.batches

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
        if limit <= 0:  # SQLite reads a negative LIMIT as no limit
            return []
        fn = partial(
            q.claim,
            now=now,
            limit=limit,
            lease=lease_seconds,
            skip=tuple(skip),
            caps=caps,
            quota=quota,
        )
        return await self._submit("claim", fn, relaxed=True)

    async def finish(self, claim: Claim, outcome: Outcome, started_at: float, now: float) -> bool:
        """Queued and committed with the other outcomes waiting (group commit). Shielded: a
        caller cancelled mid-write (shutdown) still has its outcome recorded."""
        if self._closing or self._executor is None:
            raise StoreUnavailableError("store: finish: not open")
        item = q.FinishItem(claim, outcome, next_attempt_for(outcome), started_at, now)
        return await asyncio.shield(self._finishes.put(item))

    def _write_finishes(self, items: list[q.FinishItem]) -> list[bool]:
        """On the store's thread: one batch of outcomes, recorded or failed whole."""
        return self._job("finish", partial(q.finish_batch, batch=items), relaxed=True)()

    async def list_deliveries(
        self, state: DeliveryState | None = None, limit: int = 100
    ) -> list[DeliveryRecord]:
        """``find_deliveries`` by state alone: newest first, ties by id."""
        return await self._find_deliveries("list deliveries", DeliveryFilter(state=state), limit)

    async def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        return await self._submit("get delivery", partial(q.get_delivery, delivery_id=delivery_id))

    async def attempts(self, delivery_id: str) -> list[AttemptRecord]:
        return await self._submit("attempts", partial(q.attempts, delivery_id=delivery_id))

    async def get_event(self, event_id: str) -> TaskEvent | None:
        return await self._submit("get event", partial(q.get_event, event_id=event_id))

    async def list_events(self, limit: int = 100) -> list[TaskEvent]:
        """``find_events`` of every event: newest received first, ties by id."""
        return await self._find_events("list events", EventFilter(), limit)

    async def quarantine(self, callback: QuarantinedCallback) -> None:
        """Shielded: the callback is answered 200 only once this committed."""
        fut = self._submit("quarantine", partial(q.quarantine, callback=callback))
        await asyncio.shield(fut)

    async def list_quarantined(
        self, limit: int = 100, *, include_reprocessed: bool = False
    ) -> list[QuarantinedCallback]:
        if limit <= 0:
            return []
        fn = partial(q.list_quarantined, limit=limit, include_reprocessed=include_reprocessed)
        return await self._submit("list quarantined", fn)

    async def get_quarantined(self, quarantine_id: str) -> QuarantinedCallback | None:
        fn = partial(q.get_quarantined, quarantine_id=quarantine_id)
        return await self._submit("get quarantined", fn)

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
        return await asyncio.shield(self._submit("settle quarantined", fn))

    async def replay(
        self, delivery_id: str, now: float, *, states: Sequence[DeliveryState] = ("dead",)
    ) -> bool:
        """Shielded like finish: an operator's replay is a status write too."""
        allowed = sorted(REPLAYABLE.intersection(states))
        if not allowed:
            self._check_open("replay")
            return False
        fn = partial(q.replay, delivery_id=delivery_id, now=now, states=allowed)
        return await asyncio.shield(self._submit("replay", fn))

    async def add_silence(self, silence: Silence) -> bool:
        return await asyncio.shield(
            self._submit("add silence", partial(q.add_silence, silence=silence))
        )

    async def list_silences(self, now: float, *, include_ended: bool = False) -> list[Silence]:
        fn = partial(q.list_silences, now=now, include_ended=include_ended)
        return await self._submit("list silences", fn)

    async def get_silence(self, silence_id: str) -> Silence | None:
        return await self._submit("get silence", partial(q.get_silence, silence_id=silence_id))

    async def expire_silence(self, silence_id: str, now: float) -> bool:
        fn = partial(q.expire_silence, silence_id=silence_id, now=now)
        return await asyncio.shield(self._submit("expire silence", fn))

    async def held_counts(self) -> dict[str, int]:
        return await self._submit("held counts", q.held_counts)

    async def release_held(self, held_by: str, now: float) -> int:
        fn = partial(q.release_held, held_by=held_by, now=now)
        return await asyncio.shield(self._submit("release held", fn))

    async def group_pending(
        self, destination: str, group: str, *, after: str, limit: int
    ) -> list[tuple[str, TaskEvent]]:
        if limit <= 0:
            return []
        fn = partial(q.group_pending, destination=destination, group=group, after=after)
        return await self._submit("group pending", partial(fn, limit=limit))

    async def fold(self, delivery_ids: Sequence[str], outcome: Outcome, now: float) -> int:
        if not delivery_ids:
            return 0
        fn = partial(q.fold, ids=list(delivery_ids), outcome=outcome, now=now)
        return await asyncio.shield(self._submit("fold", fn))

    async def find_events(
        self, where: EventFilter, limit: int = 100, before: Cursor | None = None
    ) -> list[TaskEvent]:
        return await self._find_events("find events", where, limit, before)

    async def _find_events(
        self, what: str, where: EventFilter, limit: int, before: Cursor | None = None
    ) -> list[TaskEvent]:
        if limit <= 0:  # SQLite reads a negative LIMIT as no limit
            return []
        fn = partial(q.find_events, where=where, limit=limit, before=before)
        return await self._submit(what, fn)

    async def find_deliveries(
        self, where: DeliveryFilter, limit: int = 100, before: Cursor | None = None
    ) -> list[DeliveryRecord]:
        return await self._find_deliveries("find deliveries", where, limit, before)

    async def _find_deliveries(
        self, what: str, where: DeliveryFilter, limit: int, before: Cursor | None = None
    ) -> list[DeliveryRecord]:
        if limit <= 0:  # SQLite reads a negative LIMIT as no limit
            return []
        fn = partial(q.find_deliveries, where=where, limit=limit, before=before)
        return await self._submit(what, fn)

    async def count_deliveries(self, where: DeliveryFilter) -> int:
        return await self._submit("count deliveries", partial(q.count_deliveries, where=where))

    async def add_deliveries(
        self, event_id: str, deliveries: list[NewDelivery], now: float
    ) -> bool:
        """Created at ``now`` (see MemoryStore.add_deliveries). Shielded: a status write."""
        fn = partial(q.add_deliveries, event_id=event_id, deliveries=list(deliveries), now=now)
        return await asyncio.shield(self._submit("add deliveries", fn))

    async def release(self, claim: Claim, now: float) -> bool:
        """Shielded like finish: a shutdown calls it, and must not leave the lease behind."""
        fn = partial(q.release, claim=claim, now=now)
        return await asyncio.shield(self._submit("release", fn))

    async def queue_stats(self, now: float) -> QueueStats:
        return await self._submit("queue stats", partial(q.queue_stats, now=now))

    async def record_rejected(self, requests: Sequence[RejectedRequest], keep: int) -> None:
        fn = partial(q.record_rejected, requests=list(requests), keep=max(keep, 0))
        await asyncio.shield(self._submit("record rejected", fn))

    async def list_rejected(
        self, source: str | None = None, limit: int = 100
    ) -> list[RejectedRequest]:
        if limit <= 0:
            return []
        fn = partial(q.list_rejected, source=source, limit=limit)
        return await self._submit("list rejected", fn)

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
        """Call ``wake`` when another connection (another process: a ``relay serve`` that
        receives, ``relay replay``) has committed to the file, seen by its data_version
        every WATCH_SECONDS: a worker starts at once instead of at its next idle poll. In
        one process the receiver wakes the dispatcher itself."""
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch(wake))

    async def _watch(self, wake: Callable[[], None]) -> None:
        last: int | None = None
        while not self._closing:
            try:
                version = await self._submit("watch", q.data_version)
            except StoreUnavailableError:
                version = None  # the idle poll still finds the work
            if version is not None:
                if last is not None and version != last:
                    wake()
                last = version
            await asyncio.sleep(WATCH_SECONDS)

    async def next_due(self) -> float | None:
        return await self._submit("next due", q.next_due)

    async def prune(self, before: float, limit: int, *, dry_run: bool = False) -> PruneCount:
        """One batch in one write transaction, then a bounded incremental vacuum as a job of
        its own (an ingest queued during the batch goes before it)."""
        if dry_run:
            return await self._submit("prune", partial(r.count_prunable, before=before))
        if limit <= 0:  # SQLite reads a negative LIMIT as no limit
            return PruneCount()
        count = await self._submit("prune", partial(r.prune, before=before, limit=limit))
        await self._submit("vacuum", r.vacuum_step)
        return count

    async def purge_dead(self, before: float, limit: int, *, dry_run: bool = False) -> PruneCount:
        """Like ``prune``: one batch, then a bounded incremental vacuum."""
        if dry_run:
            return await self._submit("purge dead", partial(r.count_purgeable, before=before))
        if limit <= 0:
            return PruneCount()
        fn = partial(r.purge_dead, before=before, limit=limit)
        count = await self._submit("purge dead", fn)
        await self._submit("vacuum", r.vacuum_step)
        return count
