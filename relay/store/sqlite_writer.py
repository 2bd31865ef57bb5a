"""Write transactions of relay's processes on one SQLite file take turns through a lock file.

SQLite has one write lock per database and no queue for it: a writer that finds it taken
sleeps in SQLite's busy handler (1, 2, 5, 10, 15, 20 ms and on) and tries again, however soon
the lock was given back. With a receiver and its workers committing hundreds of times a second
on one file, those sleeps were most of a worker's time waiting (p99 18 ms for a lock held
about 1 ms). So every ``BEGIN IMMEDIATE`` of ``WriterConnection`` first takes an exclusive
``flock`` on ``<database>-writer.lock`` (beside SQLite's own ``-wal`` and ``-shm`` files),
given back as the transaction ends. A waiter tries it again every half millisecond at most
(a blocking flock could not be bounded), so it goes about as soon as the lock is free.

The wait for the lock file is bounded by the connection's busy timeout, and ends as SQLite's
own wait would: "database is locked". Writers other than relay (the sqlite3 shell) do not take
the lock file; SQLite's lock still keeps them apart, as before. A lock file that cannot be
opened (a read-only folder) is done without: only the wake-ups are lost, never the safety.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from typing import Any

# Between tries of a taken lock file: short at first (most transactions hold it for about a
# millisecond), then at most this long, so a waiter is woken within that of its release.
_FIRST_PAUSE = 0.00002
_LONGEST_PAUSE = 0.0005


class WriterLock:
    """An exclusive ``flock`` on a lock file, taken with a bounded wait."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self._timeout = timeout
        self._fd: int | None = None
        self._unusable = False
        self.held = False

    def acquire(self) -> bool:
        """Take the lock (waiting at most the timeout); False if the wait ran out."""
        if self.held or self._unusable:
            return True
        if self._fd is None:
            try:
                # flock needs no write access: another user's workers may share the file.
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                self._unusable = True
                return True
        deadline = time.monotonic() + self._timeout
        pause = _FIRST_PAUSE
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                # A blocking flock could not be bounded; a short sleep releases the GIL too.
                time.sleep(pause)
                pause = min(pause * 2, _LONGEST_PAUSE)
                continue
            self.held = True
            return True

    def release(self) -> None:
        if self.held and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self.held = False

    def close(self) -> None:
        self.release()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class WriterConnection(sqlite3.Connection):
    """A connection whose ``BEGIN IMMEDIATE`` takes ``writer_lock`` first (if one is set);
    the lock is given back when the transaction ends (COMMIT, ROLLBACK, or an error that
    ended it: see ``end_of_job``)."""

    writer_lock: WriterLock | None = None
    # SQLite's synchronous level as the store set it (0 OFF to 3 EXTRA), so that it need not
    # be asked for before every relaxed write; None: unknown.
    synchronous: int | None = None

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        lock = self.writer_lock
        if lock is None:
            return super().execute(sql, parameters)
        if sql == "BEGIN IMMEDIATE":
            if not lock.acquire():
                raise sqlite3.OperationalError("database is locked (by another relay process)")
            try:
                return super().execute(sql, parameters)
            except BaseException:
                lock.release()
                raise
        cursor = super().execute(sql, parameters)
        # Given back as soon as the transaction ends (COMMIT): a job may run several. A
        # statement that failed is seen to by the job (``end_of_job``).
        if lock.held and not self.in_transaction:
            lock.release()
        return cursor

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.end_of_job()

    def end_of_job(self) -> None:
        """Give the lock back if no transaction is open (a job that failed mid-way)."""
        lock = self.writer_lock
        if lock is not None and lock.held and not self.in_transaction:
            lock.release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.writer_lock is not None:
                self.writer_lock.close()
