"""The digest keeper on a real (in-memory) store with a recording channel: a window collects
its group's events, its carrier folds the followers, Slack-like channels show it after
``wait`` and at most once per ``interval``, mail-like ones once when it closes; a closed
window's next event opens the next one; silenced followers stay held."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from relay.channels.base import Delivery
from relay.digest import DigestKeeper, Window, group_of, p95
from relay.digest_view import DigestView
from relay.errors import DeliveryDeferred
from relay.events import TaskError, TaskEvent
from relay.routing.grouping import GroupConfig
from relay.store.base import NewDelivery, Outcome
from relay.store.memory import MemoryStore

T0 = 1_800_000_000.0


class Recorder:
    def __init__(self, live: bool) -> None:
        self.live = live
        self.shown: list[DigestView] = []

    async def send_digest(self, delivery: Delivery, view: DigestView) -> None:
        self.shown.append(view)


def event(n: int, at: float, *, status: str = "succeeded", batch: str = "b42") -> TaskEvent:
    return TaskEvent(
        id=f"evt_{n}",
        source="goapi",
        provider="goapi",
        task_id=f"task-{n}",
        dedupe_key=f"k{n}",
        status=status,  # type: ignore[arg-type]
        provider_status=status,
        final=True,
        labels={"batch": batch},
        duration_s=float(n),
        usage={"consume": 100, "type": "point"},
        error=TaskError(code="E1", message=f"boom {n}") if status == "failed" else None,
        received_at=datetime.fromtimestamp(at, UTC),
    )


CONFIG = GroupConfig(by=["batch"], wait=10, interval=60, close_after=5, failures=2, successes=2)


async def ingest(store: MemoryStore, n: int, at: float, **kw: str) -> str:
    e = event(n, at, **kw)
    group = group_of(0, CONFIG, e)
    assert group == f"digest:0:batch={e.labels['batch']}"
    await store.ingest(e, [NewDelivery(f"dlv_{n}", "dest", 0, group=group)])
    return group


async def step(
    store: MemoryStore, keeper: DigestKeeper, channel: Recorder, now: float
) -> float | None:
    """Claim the group's carrier and carry it; the deferral's seconds, or None when done."""
    [claim] = await store.claim(now, 10, 30)
    assert claim.delivery_id.startswith("dlv_")
    group = group_of(0, CONFIG, claim.event)
    assert group is not None
    try:
        await keeper.carry(claim, group, CONFIG, channel)
    except DeliveryDeferred as wait:
        await store.finish(
            claim, Outcome("pending", wait.reason, now + wait.seconds, deferred=True), now, now
        )
        return wait.seconds
    await store.finish(claim, Outcome("delivered"), now, now)
    return None


async def test_a_live_channel_posts_after_wait_edits_per_interval_and_closes_once() -> None:
    store = MemoryStore()
    await store.open()
    clock = [T0]
    keeper = DigestKeeper(store, lambda: clock[0], lambda e, r: None)
    slack = Recorder(live=True)
    for n in range(3):
        await ingest(store, n, T0 + n, status="failed" if n == 1 else "succeeded")
    clock[0] = T0 + 3
    assert await step(store, keeper, slack, clock[0]) == pytest.approx(7)  # until wait is over
    assert slack.shown == []
    clock[0] = T0 + 10
    await step(store, keeper, slack, clock[0])
    [first] = slack.shown
    assert (first.final, first.total, first.counts) == (False, 3, {"succeeded": 2, "failed": 1})
    assert [f.error for f in first.failures] == ["boom 1 (E1)"]
    assert first.usage == {"consume": 300.0}
    # Followers were folded: only the carrier is left.
    folded = await store.get_delivery("dlv_1")
    assert folded is not None and folded.state == "delivered"
    assert folded.last_error == "in digest digest:0:batch=b42#1, carried by dlv_0"
    # A new event within the interval: no edit until the interval since the last one passes.
    await ingest(store, 3, T0 + 20)
    clock[0] = T0 + 21
    await step(store, keeper, slack, clock[0])
    assert len(slack.shown) == 1
    clock[0] = T0 + 71
    await step(store, keeper, slack, clock[0])
    assert [v.total for v in slack.shown] == [3, 4] and not slack.shown[-1].final
    # Quiet for a whole interval after the last event: the window closes, shown final once.
    clock[0] = T0 + 81
    assert await step(store, keeper, slack, clock[0]) is None
    assert slack.shown[-1].final and slack.shown[-1].total == 4
    assert len(slack.shown) == 3
    # The next event opens window 2.
    await ingest(store, 4, T0 + 90)
    clock[0] = T0 + 101
    await step(store, keeper, slack, clock[0])
    assert slack.shown[-1].key == "digest:0:batch=b42#2" and slack.shown[-1].total == 1


async def test_a_mail_like_channel_sends_once_when_close_after_is_reached() -> None:
    store = MemoryStore()
    await store.open()
    clock = [T0]
    keeper = DigestKeeper(store, lambda: clock[0], lambda e, r: None)
    mail = Recorder(live=False)
    for n in range(7):
        await ingest(store, n, T0 + n)
    clock[0] = T0 + 11
    # Five events close the window at once; the sixth is the next window's first.
    assert await step(store, keeper, mail, clock[0]) is None
    [view] = mail.shown
    assert (view.final, view.total, view.window) == (True, 5, 1)
    assert len(view.successes) == 2 and view.more_successes == 3
    assert view.p95_s == 4.0
    assert await step(store, keeper, mail, clock[0]) is not None  # window 2 waits
    assert len(mail.shown) == 1


async def test_silenced_followers_stay_held_and_out_of_the_digest() -> None:
    store = MemoryStore()
    await store.open()
    clock = [T0 + 100]

    def held(e: TaskEvent, route: int) -> tuple[str, str] | None:
        return ("sil_1", "silenced by sil_1") if e.status == "failed" else None

    keeper = DigestKeeper(store, lambda: clock[0], held)
    mail = Recorder(live=False)
    for n in range(3):
        await ingest(store, n, T0 + n, status="failed" if n == 2 else "succeeded")
    assert await step(store, keeper, mail, clock[0]) is None  # quiet long enough: closes
    assert mail.shown[0].counts == {"succeeded": 2}
    record = await store.get_delivery("dlv_2")
    assert record is not None and record.state == "silenced"
    assert await store.held_counts() == {"sil_1": 1}


def test_p95_and_a_row_of_another_shape() -> None:
    assert p95([]) is None
    assert p95([float(n) for n in range(1, 101)]) == 95.0
    assert Window({"oops": 1}).closed and Window(None).number == 0
