"""Under ``synchronous=FULL``, commits are fsynced after SQLite's write lock is given back.

SQLite's FULL fsyncs the write-ahead log inside COMMIT, while it holds the database's one write
lock, so every other writer (a worker recording what it sent) waited out every callback batch's
fsync, about a millisecond on the development machine. So the store's connection runs at
``synchronous=NORMAL`` (no fsync in COMMIT) and the store flushes the log itself
(``fdatasync``) after each job that wrote, before the job's caller is answered; the
dispatcher's leases and outcomes stay unsynced, as they were (README: Storage).

That is as durable as SQLite's FULL: the commit's frames are written to the log before the
flush begins, so when it returns they are on disk, with every frame before them and the log's
header; recovery replays the log up to its last commit (and checkpoints sync the log before
copying it, at NORMAL as at FULL). What changes is only that other connections may read a
commit a moment before it is on disk: a worker may deliver an event whose callback is not
answered yet, and a power cut in that moment loses the event, which the provider sends again
as it was never answered (delivered at least once, as ever). An answered callback is never
lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from relay.errors import StoreUnavailableError


class WalLog:
    """The log file at ``path`` (a database's ``-wal``), flushed to disk with ``sync``
    (``os.fdatasync``). Used on the store's one thread only.

    The file is opened at the first flush and kept open: SQLite removes the log only when the
    last connection to the database closes, and ours is open until ``close``.
    """

    def __init__(self, path: str, sync: Callable[[int], None] = os.fdatasync) -> None:
        self.path = path
        self._sync = sync
        self._fd: int | None = None

    def flush(self) -> None:
        """Every byte written to the log so far is on disk when this returns; a failure is a
        StoreUnavailableError (the batch is committed, but its callers get no 2xx)."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise StoreUnavailableError(
                    f"store: ingest: write-ahead log: {exc.strerror}"
                ) from None
        try:
            self._sync(self._fd)
        except OSError as exc:
            # Opened again next time rather than trusted after a failed flush.
            self.close()
            raise StoreUnavailableError(
                f"store: ingest: write-ahead log not synced: {exc.strerror}"
            ) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
