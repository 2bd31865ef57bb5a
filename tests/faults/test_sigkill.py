"""SIGKILL at each step of ingest and delivery, with real ``relay serve`` / ``relay worker``
processes on one SQLite file, a real downstream and the Slack stand-in on 127.0.0.1.

Every case puts the process it kills in a known state first (a request held open by the
downstream, callbacks stored with dispatch off, a request body half sent), so what is cut
off is set by the test, not by timing; the one race left (case 4: the 200 against the kill)
is asserted for both ways it can fall. After each case every acknowledged callback ends
delivered or dead with a reason (``settled``), nothing acknowledged is lost, and a copy sent
twice is a send the kill cut off, carrying the same ``webhook-id`` (at least once, by design:
DESIGN.md section 6, README "Delivery guarantee"). Slack's promise is stronger (one message
per task, DESIGN.md section 5): kept when the kill cuts off a ``chat.update``, and when it cuts
off the task's first ``chat.postMessage`` after Slack took it (the retry finds that message).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.store.base import LOST_ATTEMPT
from tests.downstream import Downstream, Received
from tests.e2e.cli import DOWN_SECRET, GOAPI_SECRET
from tests.faults.harness import Ledger, Relay, Serve, alive, children, settled
from tests.fixtures_util import load
from tests.slack_standin import SlackStandIn

WITHIN = 20.0  # bound of every wait; a healthy run needs a few seconds
# The sender's lease (README: RELAY_LEASE_SECONDS) in the cases that wait for one to expire:
# short, so the take-over comes within seconds (a restart takes about as long anyway). An
# attempt lasts at most 0.9 of its lease: a held request must be killed within 2.7 s of its
# arrival, or its sender gives up on it and tries again (the cases check it did not).
LEASE = "3"

RULES = """
sources:
  goapi: {provider: goapi, secret: "${GOAPI_SECRET}"}
destinations:
  down:
    type: webhook
    url: ${DOWN_URL}
    secret: ${DOWN_SECRET}
    timeout: 10s  # longer than 0.9 of the lease: the lease bounds each attempt
    # Short waits so a case runs in seconds.
    retry: {schedule: [100ms, 100ms, 200ms, 200ms, 500ms], jitter: 0}
routes:
  - to: [down]
"""

Make = Callable[..., Relay]


def webhook_relay(make_relay: Make, down: Downstream, name: str = "relay", **env: str) -> Relay:
    return make_relay(
        RULES,
        name=name,
        GOAPI_SECRET=GOAPI_SECRET,
        DOWN_URL=down.url,
        DOWN_SECRET=DOWN_SECRET,
        **env,
    )


def callback(task_id: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A GoAPI final callback for ``task_id`` with a fresh body timestamp, as GoAPI stamps
    every retry."""
    body, headers = load("goapi/image_success_flux.json")
    body["data"]["task_id"] = task_id
    return body, headers


async def post_all(
    serve: Serve, ledger: Ledger, tasks: list[str]
) -> dict[str, httpx.Response | httpx.TransportError]:
    """POST one callback per task at once; each task's answer, or the transport error."""
    async with httpx.AsyncClient(base_url=serve.url, timeout=WITHIN) as client:

        async def one(task: str) -> httpx.Response | httpx.TransportError:
            body, headers = callback(task)
            try:
                return await ledger.post(client, "/hooks/goapi", body, headers)
            except httpx.TransportError as exc:
                return exc

        answers = await asyncio.gather(*(one(t) for t in tasks))
    return dict(zip(tasks, answers, strict=True))


def sigkill(process: Serve) -> None:
    """SIGKILL it now (callable from a stand-in's handler, as a request arrives)."""
    assert process.proc is not None and process.proc.returncode is None
    process.proc.send_signal(signal.SIGKILL)


async def reaped(process: Serve) -> None:
    """Wait until a SIGKILLed process is gone; the harness's stop() then does nothing."""
    assert process.proc is not None
    async with asyncio.timeout(WITHIN):
        assert await process.proc.wait() == -signal.SIGKILL


async def kill(process: Serve) -> None:
    sigkill(process)
    await reaped(process)


async def pause(relay: Relay, process: Serve) -> None:
    """SIGSTOP ``process`` outside any write transaction of its own (a paused holder of the
    SQLite write lock would stall every other process): once all its threads are stopped,
    the lock is tried; if it is taken, let the process run a moment and stop it again."""
    assert process.proc is not None
    pid = process.proc.pid
    async with asyncio.timeout(WITHIN):
        while True:
            process.proc.send_signal(signal.SIGSTOP)
            await until(lambda: stopped(pid), "the process stopped")
            if write_lock_free(relay):
                return
            process.proc.send_signal(signal.SIGCONT)
            await asyncio.sleep(0.01)


def stopped(pid: int) -> bool:
    """Every thread of ``pid`` is stopped (Linux: state T in /proc/PID/task/*/stat)."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            states.append(stat.read_text().rpartition(")")[2].split()[0])
    return bool(states) and all(state in "Tt" for state in states)


def write_lock_free(relay: Relay) -> bool:
    conn = sqlite3.connect(relay.home / "relay.db", timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


async def until(check: Callable[[], bool], what: str, within: float = WITHIN) -> None:
    try:
        async with asyncio.timeout(within):
            while True:
                if check():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


def copies(down: Downstream) -> collections.Counter[str]:
    """How many copies of each delivery (its ``webhook-id``) the downstream received."""
    return collections.Counter(r.headers["webhook-id"] for r in down.received)


def deliveries_in_file(relay: Relay, key: str = "id") -> set[tuple[str, str, int]]:
    """(delivery or, ``key="event_id"``, event id, state, attempts) of every delivery, read
    from the SQLite file."""
    conn = sqlite3.connect(relay.home / "relay.db")
    try:
        rows = conn.execute(f"SELECT {key}, state, attempts FROM deliveries").fetchall()
    finally:
        conn.close()
    return {(str(i), str(s), int(a)) for i, s, a in rows}


def delivery_lines(relay: Relay) -> list[dict[str, Any]]:
    """The dispatcher's JSON log lines about a delivery's outcome, every process's."""
    lines = [json.loads(line) for line in relay.logs().splitlines() if line.startswith("{")]
    return [line for line in lines if str(line.get("message", "")).startswith("delivery ")]


def delivered_event(received: Received) -> str:
    event_id: str = json.loads(received.body)["data"]["id"]
    return event_id


class Gate:
    """A downstream ``hold``: requests wait until ``open()``, or ``let(webhook_id)`` one
    through; ``held`` are the webhook-ids waiting now, in arrival order. ``only``: hold just
    the requests whose path ends so, answer the others at once."""

    def __init__(self, only: str = "") -> None:
        self.only = only
        self.opened = False
        self.waiting: dict[str, asyncio.Event] = {}

    @property
    def held(self) -> list[str]:
        return list(self.waiting)

    async def __call__(self, item: Received) -> None:
        if self.opened or not item.path.endswith(self.only):
            return
        webhook_id = item.headers["webhook-id"]
        released = self.waiting[webhook_id] = asyncio.Event()
        try:
            async with asyncio.timeout(WITHIN):
                await released.wait()
        finally:
            del self.waiting[webhook_id]

    def let(self, webhook_id: str) -> None:
        self.waiting[webhook_id].set()

    def open(self) -> None:
        self.opened = True
        for released in self.waiting.values():
            released.set()


# ---------------------------------------------------------------- 1. during ingest


async def held_post(
    serve: Serve, task_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A callback whose request head and half its body are sent, the rest never: it is in
    flight for sure when the kill comes, and cannot have been stored."""
    body, headers = callback(task_id)
    raw = json.dumps(body).encode()
    head = (
        "POST /hooks/goapi HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + f"content-length: {len(raw)}\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", serve.port)
    writer.write(head.encode() + raw[: len(raw) // 2])
    await writer.drain()
    return reader, writer


async def test_sigkill_during_ingest_loses_nothing_acknowledged(
    make_relay: Make, downstream: Downstream
) -> None:
    """SIGKILL ``relay serve`` while 40 callbacks are in flight to it: 10 with half a body
    sent (cut off for sure), 30 posted at once, the kill as soon as the first of those is
    acknowledged (the others are then stored and waiting for their answer, or not stored
    yet). Every callback answered 2xx is delivered after the restart. Every one cut off is
    posted again, as the provider would, and so are the acknowledged ones (a provider unsure
    of its answer): a re-post of a callback stored before the kill, answered or not, is a
    duplicate of that same event and adds no delivery. So each of the 40 tasks is one event
    with one delivery, delivered, and the downstream saw each event under that one
    ``webhook-id``; a copy sent twice is a send the kill cut off (its attempt unrecorded)."""
    # A short lease: sends the kill cuts off are taken over within seconds of the restart.
    relay = webhook_relay(make_relay, downstream, RELAY_LEASE_SECONDS=LEASE)
    serve = await relay.serve()
    ledger = Ledger()
    held_tasks = [f"held-{i:02d}" for i in range(10)]
    held = [await held_post(serve, task) for task in held_tasks]
    fast = [f"fast-{i:02d}" for i in range(30)]
    first_ack = asyncio.Event()
    answers: dict[str, httpx.Response] = {}

    async def post_fast() -> None:
        async with httpx.AsyncClient(base_url=serve.url, timeout=WITHIN) as client:

            async def one(task: str) -> None:
                body, headers = callback(task)
                # A transport error: not acknowledged, so not owed.
                with contextlib.suppress(httpx.TransportError):
                    answers[task] = await ledger.post(client, "/hooks/goapi", body, headers)
                    first_ack.set()

            await asyncio.gather(*(one(t) for t in fast))

    posting = asyncio.create_task(post_fast())
    async with asyncio.timeout(WITHIN):
        await first_ack.wait()
    await kill(serve)
    async with asyncio.timeout(WITHIN):
        await posting
    for reader, writer in held:
        # Nothing was answered (the body never arrived): the connection just ends.
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), WITHIN) == b""
        writer.close()
    assert answers and all(a.status_code == 200 for a in answers.values()), answers
    owed = dict(ledger.acked)
    assert len(owed) == len(answers)

    serve = await relay.serve()
    cut = sorted(set(fast) - set(answers)) + held_tasks
    again = await post_all(serve, ledger, cut + sorted(answers))
    replies: dict[str, Any] = {}
    for task, answer in again.items():
        assert isinstance(answer, httpx.Response) and answer.status_code == 200, (task, answer)
        replies[task] = answer.json()
    for task, first in answers.items():
        assert replies[task]["duplicate"] is True and replies[task]["deliveries"] == 0
        assert replies[task]["event_id"] == first.json()["event_id"]
    for task in held_tasks:  # never stored: new now
        assert replies[task]["duplicate"] is False, replies[task]
    assert set(owed) <= set(ledger.acked)
    assert len(ledger.acked) == 40  # one event per task, however often it was posted

    found = await settled(serve, ledger, within=WITHIN)
    assert all(len(ds) == 1 for ds in found.values()), found
    deliveries = {d["id"]: d for ds in found.values() for d in ds}
    assert {d["state"] for d in deliveries.values()} == {"delivered"}
    await asyncio.sleep(0.3)  # room for a wrong extra copy
    sent = copies(downstream)
    assert set(sent) == set(deliveries)
    for webhook_id, n in sent.items():
        assert n == 1 or (n == 2 and deliveries[webhook_id]["attempts"] == 2), (webhook_id, n)
    assert {delivered_event(r) for r in downstream.received} == set(ledger.acked)


# ---------------------------------------------------------------- 2. stored, not yet claimed


async def test_sigkill_after_storing_before_any_claim(
    make_relay: Make, downstream: Downstream
) -> None:
    """``relay serve`` with dispatch off acknowledges 20 callbacks and is SIGKILLed before
    anything claims them: they are all still pending (no attempt spent) after the kill, and a
    ``relay worker`` started afterwards delivers each once."""
    relay = webhook_relay(make_relay, downstream, RELAY_DISPATCH="0")
    serve = await relay.serve()
    ledger = Ledger()
    answers = await post_all(serve, ledger, [f"stored-{i:02d}" for i in range(20)])
    assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers.values())
    await kill(serve)
    # Read from the file the killed process left (no relay process is running now).
    assert deliveries_in_file(relay, "event_id") == {
        (event_id, "pending", 0) for event_id in ledger.acked
    }
    assert downstream.received == []

    serve, _ = await asyncio.gather(relay.serve(), relay.worker())
    found = await settled(serve, ledger, within=WITHIN)
    deliveries = {d["id"] for ds in found.values() for d in ds}
    assert all(d["state"] == "delivered" for ds in found.values() for d in ds)
    assert copies(downstream) == collections.Counter(deliveries)
    assert {delivered_event(r) for r in downstream.received} == set(ledger.acked)


# ---------------------------------------------------------------- 3. mid-send


@pytest.mark.parametrize("sender", ["worker", "serve", "serve-worker"])
async def test_sigkill_mid_send_is_retried_with_the_same_webhook_id(
    make_relay: Make, downstream: Downstream, sender: str
) -> None:
    """The downstream holds the request open; once it has arrived, the process sending it
    (a ``relay worker``, ``relay serve --workers 0`` dispatching itself, or the worker process
    ``relay serve`` starts by default) is SIGKILLed, then the held request is let go. After a
    restart (of the killed process; serve restarts its worker itself) the delivery's lease
    (RELAY_LEASE_SECONDS=3) expires and it is sent again: delivered, both copies carry the
    same ``webhook-id``. What the attempt log tells: the delivery counts two attempts; the
    one the kill cut off left no row (and no log line), attempt 2 is the only one logged,
    delivered."""
    gate = Gate()
    downstream.hold = gate
    relay = webhook_relay(
        make_relay,
        downstream,
        RELAY_LEASE_SECONDS=LEASE,
        RELAY_DISPATCH=str(int(sender != "worker")),
    )
    child: list[int] = []
    if sender == "serve":
        serve = victim = await relay.serve("--workers", "0")
    elif sender == "serve-worker":
        serve = await relay.serve()
        assert serve.proc is not None
        parent = serve.proc.pid
        child[:] = await asyncio.to_thread(children_of, parent, 1)

        def kill_child(_: object) -> None:
            os.kill(child[0], signal.SIGKILL)

        downstream.on_request = kill_child  # as it arrives (then held)
    else:
        serve, victim = await asyncio.gather(relay.serve(), relay.worker())
    if sender == "worker":
        downstream.on_request = lambda _: sigkill(victim)  # as it arrives (then held)
    ledger = Ledger()
    await post_all(serve, ledger, ["mid-send"])
    assert len(ledger.acked) == 1
    if sender == "serve":
        # Once the callback is acknowledged: serve's answer and its send race each other.
        await downstream.wait_for(1, within=WITHIN)
        sigkill(victim)
    if sender == "serve-worker":
        await downstream.wait_for(1, within=WITHIN)
        await asyncio.to_thread(gone, child[0])
    else:
        await reaped(victim)
    downstream.on_request = None
    assert len(gate.held) == 1
    if sender != "serve-worker":
        # Its first attempt, leased, when the sender died (not given up on and tried again);
        # serve restarts its worker on its own, which may have taken it over already.
        assert {(s, n) for _, s, n in deliveries_in_file(relay)} == {("sending", 1)}
    gate.open()  # the held request is answered 200, to a sender that is gone

    if sender == "serve":
        serve = await relay.serve("--workers", "0")
    elif sender == "worker":
        await relay.worker()
    found = await settled(serve, ledger, within=WITHIN)
    [[delivery]] = found.values()
    assert delivery["state"] == "delivered"
    await asyncio.sleep(0.3)  # room for a wrong third copy
    assert copies(downstream) == {delivery["id"]: 2}
    assert delivery["attempts"] == 2
    # Attempt 1 died with its process: its row says so (written when attempt 2 took over).
    log = [(a["attempt"], a["state"], a["detail"]) for a in delivery["attempt_log"]]
    assert log == [(1, "pending", LOST_ATTEMPT), (2, "delivered", "")], delivery["attempt_log"]
    # The process log agrees: attempt 1 ended unrecorded with the killed process, attempt 2
    # is logged delivered by the new one.
    outcomes = [(line["attempt"], line["outcome"]) for line in delivery_lines(relay)]
    assert outcomes == [(2, "delivered")], outcomes
    if sender == "serve-worker":
        assert "exited with signal SIGKILL" in relay.logs()


def children_of(pid: int, count: int) -> list[int]:
    """The ``count`` live children of ``pid``, waited for (bounded)."""
    deadline = time.monotonic() + WITHIN
    while len(found := children(pid)) != count:
        assert time.monotonic() < deadline, f"{len(found)} children of {pid}, not {count}"
        time.sleep(0.05)
    return found


def gone(pid: int) -> None:
    """Wait (bounded) until ``pid`` is no longer running (reaped, or a zombie)."""
    deadline = time.monotonic() + WITHIN
    while alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still running"
        time.sleep(0.05)


# ---------------------------------------------------------------- 4. answered, not recorded


async def test_sigkill_as_the_200_goes_out(make_relay: Make, downstream: Downstream) -> None:
    """The downstream answers 200 and, as the answer goes out, the test SIGKILLs the worker
    that sent it, before (or, the race falling the other way, after) it recorded the
    outcome. Either way the delivery ends delivered: recorded on the first attempt and sent
    once, or (the usual way) not recorded, its lease expires, and it is sent again with the
    same ``webhook-id``, for the receiver to drop. At least once by design (DESIGN.md
    section 6, README "Delivery guarantee"): relay cannot know a 200 it never recorded."""
    relay = webhook_relay(make_relay, downstream, RELAY_LEASE_SECONDS=LEASE, RELAY_DISPATCH="0")
    serve, worker = await asyncio.gather(relay.serve(), relay.worker())
    assert worker.proc is not None
    proc = worker.proc
    loop = asyncio.get_running_loop()

    async def kill_as_answered(item: Received) -> None:
        # call_soon runs after this handler step returns, i.e. once aiohttp has written the
        # 200 to the socket: the kill lands while the worker reads it or records it.
        if len(downstream.received) == 1:
            loop.call_soon(proc.send_signal, signal.SIGKILL)

    downstream.hold = kill_as_answered
    ledger = Ledger()
    await post_all(serve, ledger, ["answered"])
    async with asyncio.timeout(WITHIN):
        assert await proc.wait() == -signal.SIGKILL

    await relay.worker()
    found = await settled(serve, ledger, within=WITHIN)
    [[delivery]] = found.values()
    assert delivery["state"] == "delivered"
    await asyncio.sleep(0.3)  # room for a wrong extra copy
    sent = copies(downstream)
    assert set(sent) == {delivery["id"]}
    log = [(a["attempt"], a["state"]) for a in delivery["attempt_log"]]
    if sent[delivery["id"]] == 1:  # recorded before it died
        assert (delivery["attempts"], log) == (1, [(1, "delivered")]), delivery
    else:
        assert sent[delivery["id"]] == 2
        assert (delivery["attempts"], log) == (2, [(1, "pending"), (2, "delivered")]), delivery


# ---------------------------------------------------------------- 5. Slack mid-call

SLACK_RULES = """
sources:
  goapi: {provider: goapi, secret: "${GOAPI_SECRET}"}
destinations:
  renders:
    type: slack
    token: xoxb-test
    channel: "#renders"
    api_url: ${SLACK_API}
    pace: 0s
    timeout: 10s
    retry: {schedule: [100ms, 100ms, 200ms, 200ms, 500ms], jitter: 0}
routes:
  - to: [renders]
"""


class HeldSlack(SlackStandIn):
    """The Slack stand-in whose delayed calls (``fail_next(method, delay=...)``) wait for the
    test instead of a time: ``on_arrival()`` is called as one comes in; it is answered
    normally (the message posted or edited, as Slack does whether or not the client still
    listens) once ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.on_arrival: Callable[[], None] = lambda: None
        self.release = asyncio.Event()

    async def _hold(self, delay: float) -> None:
        self.on_arrival()
        async with asyncio.timeout(WITHIN):
            await self.release.wait()


def slack_callback(task_id: str, status: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A Midjourney callback of ``task_id``: progress ("processing") or the final result."""
    body, headers = load("goapi/midjourney_processing_progress.json")
    body["data"]["task_id"] = task_id
    body["data"]["status"] = status
    if status == "completed":
        body["data"]["output"]["progress"] = 100
        body["data"]["output"]["image_url"] = "https://img.theapi.app/mj/final.png"
    return body, headers


class TwoMessages(AssertionError):
    """A task's Slack message was posted twice."""


@pytest.mark.parametrize("held", ["chat.postMessage", "chat.update"])
async def test_sigkill_mid_slack_call_keeps_one_message_per_task(
    make_relay: Make, held: str
) -> None:
    """The stand-in holds the worker's Slack call; once it has arrived the worker is
    SIGKILLed, then the call is carried out (as Slack does, whatever became of its client).
    After a restart and the lease, the task still has one message (DESIGN.md section 5: one
    message per task, later events edit it with ``chat.update``), showing the final result.
    ``chat.update``: the progress event posted the task's message; the final event's edit is
    cut off, and done again (at least once) it edits that same message a second time.
    ``chat.postMessage``: the task's first post is the one cut off; the retry finds the
    message the post made (relay tags its posts and remembers a post under way) and edits it
    instead of posting again. (An earlier task's message taught relay the channel's ID, which
    the look-up needs when the rules name the channel "#renders".)"""
    async with HeldSlack() as slack:
        relay = make_relay(
            SLACK_RULES,
            GOAPI_SECRET=GOAPI_SECRET,
            SLACK_API=slack.api_url,
            RELAY_LEASE_SECONDS=LEASE,
            RELAY_DISPATCH="0",
        )
        serve, worker = await asyncio.gather(relay.serve(), relay.worker())
        ledger = Ledger()
        task = "slack-task"
        async with httpx.AsyncClient(base_url=serve.url, timeout=WITHIN) as client:
            first = task if held == "chat.update" else "earlier-task"
            await ledger.post(client, "/hooks/goapi", *slack_callback(first, "processing"))
            await settled(serve, ledger, within=WITHIN)
            assert len(slack.messages("C0RENDERS")) == 1
            slack.fail_next(held, delay=WITHIN)
            slack.on_arrival = lambda: sigkill(worker)
            await ledger.post(client, "/hooks/goapi", *slack_callback(task, "completed"))
        await reaped(worker)
        final = list(ledger.acked)[-1]
        # Its first attempt, leased, when the worker died (not given up on and tried again).
        assert (final, "sending", 1) in deliveries_in_file(relay, "event_id")
        slack.release.set()
        # The held call carried out: the stand-in records a call once it has answered it.
        await until(lambda: len(slack.calls_to(held)) == 1, f"the held {held} carried out")

        await relay.worker()
        found = await settled(serve, ledger, within=WITHIN)
        await asyncio.sleep(0.3)  # room for a wrong extra post
    assert all(d["state"] == "delivered" for ds in found.values() for d in ds), found
    posts = [c.status for c in slack.calls_to("chat.postMessage")]
    updates = [c.status for c in slack.calls_to("chat.update")]
    messages = [m for m in slack.messages("C0RENDERS") if task in (m.text or "")]
    if len(messages) != 1:
        raise TwoMessages(
            f"{len(messages)} messages for one task: chat.postMessage answered {posts}, "
            f"chat.update {updates}"
        )
    [message] = messages
    assert task in (message.text or "") and "processing" not in (message.text or "")
    if held == "chat.update":
        # One post (the progress event), the cut-off edit and its retry, both of one message.
        assert (posts, updates, message.edits) == ([200], [200, 200], 2)
    else:
        # The earlier task's post and the cut-off one; the retry found it and edited it.
        assert (posts, updates, message.edits) == ([200, 200], [200], 1)
        assert len(slack.calls_to("conversations.history")) == 1


# ---------------------------------------------------------------- 6. two workers


async def test_sigkill_one_of_two_workers_mid_batch(
    make_relay: Make, downstream: Downstream
) -> None:
    """Two ``relay worker`` processes on one store; the victim (4 send slots) has a batch of 4
    held open by the downstream, 2 more of its sends already delivered and recorded, when it
    is SIGKILLed. The survivor delivers everything else meanwhile without touching the
    victim's leased deliveries, then, once their lease expires, takes those 4 over: every
    delivery ends delivered, and the only ones the downstream got twice are the 4 the kill
    cut off, first from the victim, then from the survivor, with the same ``webhook-id``."""
    gate = Gate(only="/victim")
    downstream.hold = gate
    arrivals: dict[str, list[str]] = collections.defaultdict(list)
    downstream.on_request = lambda r: arrivals[r.headers["webhook-id"]].append(r.path)
    relay = webhook_relay(make_relay, downstream, RELAY_DISPATCH="0")
    base = downstream.url
    serve, victim, survivor = await asyncio.gather(
        relay.serve(),
        relay.worker(
            name="victim",
            DOWN_URL=f"{base}/victim",
            RELAY_CONCURRENCY="4",
            RELAY_LEASE_SECONDS=LEASE,
        ),
        relay.worker(name="survivor", DOWN_URL=f"{base}/survivor", RELAY_LEASE_SECONDS=LEASE),
    )
    assert survivor.proc is not None
    # The survivor is paused (SIGSTOP) until the victim holds its batch, so which deliveries
    # the victim has in flight is set by the test. Paused outside any write transaction, or
    # it would hold the file's write lock for everyone.
    try:
        await pause(relay, survivor)
        ledger = Ledger()
        answers = await post_all(serve, ledger, [f"pair-{i:02d}" for i in range(40)])
        assert all(isinstance(a, httpx.Response) for a in answers.values())
        assert len(ledger.acked) == 40
        await until(lambda: len(gate.held) == 4, "the victim's batch held")
        let_through = set(gate.held[:2])
        for webhook_id in let_through:
            gate.let(webhook_id)
        # The victim records those two, claims two more: 4 held again, 6 sent by it in all.
        await until(lambda: len(gate.held) == 4 and len(arrivals) == 6, "the victim refilled")
        in_flight = set(gate.held)
        assert not in_flight & let_through
    finally:
        survivor.proc.send_signal(signal.SIGCONT)
    # Everything but the victim's four in flight, delivered by the survivor; the victim's
    # four are not taken while its lease runs.
    await until(lambda: len(arrivals) == 40, "the survivor delivered the rest")
    assert all(len(arrivals[i]) == 1 for i in in_flight), arrivals
    await kill(victim)
    # Still the victim's first try of each when it died (not timed out and tried again).
    rows = {(d, state, n) for d, state, n in deliveries_in_file(relay) if d in in_flight}
    assert rows == {(d, "sending", 1) for d in in_flight}, rows
    gate.open()
    found = await settled(serve, ledger, within=WITHIN)
    deliveries = {d["id"]: d for ds in found.values() for d in ds}
    assert {d["state"] for d in deliveries.values()} == {"delivered"}
    await asyncio.sleep(0.3)  # room for a wrong extra copy
    assert set(arrivals) == set(deliveries)
    doubled = {i for i, paths in arrivals.items() if len(paths) > 1}
    assert doubled == in_flight
    for webhook_id in in_flight:
        assert arrivals[webhook_id] == ["/hook/victim", "/hook/survivor"], webhook_id
        assert deliveries[webhook_id]["attempts"] == 2
    for webhook_id in let_through:  # delivered and recorded by the victim before it died
        assert arrivals[webhook_id] == ["/hook/victim"], webhook_id
        assert deliveries[webhook_id]["attempts"] == 1
