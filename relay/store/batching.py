"""Group commit: callers that arrive while a write is under way are written together next.

Both backends use it for ingests and for delivery outcomes: one transaction (one fsync, one
statement) for everything that queued up, instead of one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from relay.errors import StoreUnavailableError

I = TypeVar("I")  # noqa: E741 - the item type, beside R, the result type
R = TypeVar("R")

# Items per write: the statements stay small and one slow batch holds few callers back.
MAX_BATCH = 500


class GroupCommit(Generic[I, R]):
    """Queue items; up to ``writers`` tasks write them in batches with ``write``.

    ``write`` gets a batch and returns one result per item, in order: a value, or an
    exception for that item alone. If ``write`` itself raises, every caller of the batch gets
    a StoreUnavailableError. ``batches`` counts the writes, for metrics and tests.
    """

    def __init__(
        self,
        what: str,
        write: Callable[[list[I]], Awaitable[Sequence[R | Exception]]],
        *,
        writers: int = 1,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._what = what
        self._write = write
        self._writers = writers
        self._max_batch = max_batch
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0

    def put(self, item: I) -> asyncio.Future[R]:
        """Queue ``item``; the future has its result once its batch is written."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        # A writer that has returned is done() at once, but leaves the set only when its
        # callback runs: count the live ones, or a caller could queue behind none.
        if sum(not task.done() for task in self._tasks) < self._writers:
            task = loop.create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def wait(self) -> None:
        """Until everything queued so far is written (or has failed)."""
        while self._tasks:
            # wait() rather than await: a writer that failed has already answered its callers.
            await asyncio.wait(set(self._tasks))

    async def _run(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            try:
                results = await self._write([item for item, _ in batch])
            except asyncio.CancelledError:
                _fail(batch, StoreUnavailableError(f"store: {self._what}: cancelled"))
                raise
            except Exception as exc:
                _fail(batch, exc)
                continue
            self.batches += 1
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # its caller was cancelled; the write stands anyway
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


def _fail(batch: list[tuple[I, asyncio.Future[R]]], exc: BaseException) -> None:
    """Answer every still-waiting caller of a batch that was not written."""
    for _, future in batch:
        if not future.done():
            # A fresh exception per caller: a shared one would collect everyone's tracebacks.
            fresh = (
                StoreUnavailableError(str(exc)) if isinstance(exc, StoreUnavailableError) else exc
            )
            future.set_exception(fresh)
