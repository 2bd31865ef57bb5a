"""ThreadedGroupCommit: batches written back to back on the store's own thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from relay.errors import StoreUnavailableError
from relay.store.batching import ThreadedGroupCommit

# Bounds every wait on the thread: a hang fails the test instead of stalling the run.
WAIT = 10.0


class Writer:
    """The write of a batch, on the thread: records each batch; ``gate`` (when set) holds a
    write until released; ``fail`` raises for a batch holding that item."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.order: list[str] = []
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.fail: str | None = None
        self.changed = threading.Condition()

    def __call__(self, items: list[str]) -> Sequence[str | Exception]:
        self.started.set()
        if self.gate is not None and not self.gate.wait(WAIT):
            raise AssertionError("the gate was never opened")
        if self.fail in items:
            raise StoreUnavailableError("store: test: disk on fire")
        with self.changed:
            self.batches.append(items)
            self.order.append(f"batch {items}")
            self.changed.notify_all()
        return [ValueError(i) if i.startswith("bad") else i.upper() for i in items]

    def wait_for_batches(self, n: int) -> None:
        """Block the calling thread (the event loop's, in these tests) until ``n`` batches."""
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.batches) >= n, WAIT)


@pytest.fixture
async def thread() -> AsyncIterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=1)
    yield executor
    executor.shutdown(wait=True)


def commit(writer: Writer, executor: ThreadPoolExecutor) -> ThreadedGroupCommit[str, str]:
    submit: Callable[[Callable[[], None]], object] = executor.submit
    return ThreadedGroupCommit("test", writer, submit)


async def held_first_batch(
    thread: ThreadPoolExecutor, item: str
) -> tuple[Writer, threading.Event, ThreadedGroupCommit[str, str], asyncio.Future[str]]:
    """A group whose first batch (``item``) is on the thread, held at its writer's gate."""
    writer, gate = Writer(), threading.Event()
    writer.gate = gate
    group = commit(writer, thread)
    first = group.put(item)
    await asyncio.sleep(0)  # the first batch goes to the thread and waits at the gate
    assert writer.started.wait(WAIT)
    return writer, gate, group, first


async def test_items_put_in_one_turn_of_the_loop_are_one_batch(
    thread: ThreadPoolExecutor,
) -> None:
    writer = Writer()
    group = commit(writer, thread)
    results = await asyncio.gather(*(group.put(f"i{n}") for n in range(50)))
    assert results == [f"I{n}" for n in range(50)]
    assert writer.batches == [[f"i{n}" for n in range(50)]] and group.batches == 1


async def test_the_thread_takes_the_next_batch_without_the_event_loop(
    thread: ThreadPoolExecutor,
) -> None:
    writer, gate, group, first = await held_first_batch(thread, "a")
    second = [group.put("b"), group.put("c")]
    gate.set()
    # The loop is blocked here, in this thread: only the store's thread can write the second
    # batch (GroupCommit would wait for the loop to hand it over).
    writer.wait_for_batches(2)
    assert writer.batches == [["a"], ["b", "c"]]
    assert await first == "A" and await asyncio.gather(*second) == ["B", "C"]


async def test_jobs_queued_on_the_thread_run_between_batches(
    thread: ThreadPoolExecutor,
) -> None:
    # A steady stream of items does not keep the thread's other jobs (reads, claims) waiting.
    writer, gate, group, first = await held_first_batch(thread, "a")
    other = asyncio.get_running_loop().run_in_executor(thread, writer.order.append, "other job")
    second = group.put("b")
    gate.set()
    await asyncio.gather(first, other, second)
    assert writer.order == ["batch ['a']", "other job", "batch ['b']"]


async def test_each_caller_gets_its_own_result_or_error(thread: ThreadPoolExecutor) -> None:
    group = commit(Writer(), thread)
    results = await asyncio.gather(group.put("x"), group.put("bad"), return_exceptions=True)
    assert results[0] == "X"
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad"


async def test_a_batch_that_fails_fails_each_of_its_callers_and_the_next_is_written(
    thread: ThreadPoolExecutor,
) -> None:
    writer = Writer()
    writer.fail = "doomed"
    group = commit(writer, thread)
    failed = await asyncio.gather(group.put("doomed"), group.put("x"), return_exceptions=True)
    assert all(isinstance(f, StoreUnavailableError) for f in failed)
    assert [str(f) for f in failed] == ["store: test: disk on fire"] * 2
    assert failed[0] is not failed[1]  # one exception each: no shared traceback
    assert await group.put("y") == "Y"


async def test_a_cancelled_caller_is_still_written_and_waited_for(
    thread: ThreadPoolExecutor,
) -> None:
    writer, gate, group, cancelled = await held_first_batch(thread, "gone")
    kept = group.put("kept")
    cancelled.cancel()
    waiting = asyncio.create_task(group.wait())
    await asyncio.sleep(0.01)
    assert not waiting.done()  # the batch holding the cancelled item is not written yet
    gate.set()
    await asyncio.wait_for(waiting, WAIT)
    assert writer.batches == [["gone"], ["kept"]] and await kept == "KEPT"


async def test_items_put_once_the_thread_is_shut_down_fail() -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    executor.shutdown(wait=True)
    group = commit(Writer(), executor)
    with pytest.raises(StoreUnavailableError, match="store: test: "):
        await group.put("late")
    await asyncio.wait_for(group.wait(), WAIT)
