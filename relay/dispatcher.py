"""The dispatcher: claims due deliveries, sends them through their channel, records outcomes.

Channels only classify failures; the retry policy decides when (or whether) to try again;
the store only persists. ``run_once`` does one round so tests can step it by hand.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, cast

from relay.breaker import BreakerPolicy, Breakers
from relay.channels.base import Channel, Delivery
from relay.digest import DigestChannel, DigestKeeper, group_of
from relay.errors import (
    DeliveryDeferred,
    DeliveryError,
    PermanentDeliveryError,
    StoreUnavailableError,
    TransientDeliveryError,
)
from relay.events import TaskEvent, field_of
from relay.metrics import Metrics
from relay.retry import RetryPolicy
from relay.routing.grouping import GroupConfig
from relay.routing.model import MentionConfig
from relay.routing.quiet import MuteTime
from relay.silencing import Silencer
from relay.store.base import Claim, Outcome, Store
from relay.templating import MessageTemplates

log = logging.getLogger("relay.dispatcher")
# How long a dispatcher woken while sends are under way waits for more of them to end before
# it claims: a few milliseconds of latency for claims of several deliveries each.
COALESCE_SECONDS = 0.002


@dataclass
class Routing:
    """The channels and retry policies of the rules in force; swapped whole on reload."""

    channels: Mapping[str, Channel]
    policies: Mapping[str, RetryPolicy]
    default_policy: RetryPolicy = field(default_factory=RetryPolicy)
    # Each destination's type (webhook, slack, email), for the metrics.
    types: Mapping[str, str] = field(default_factory=dict)
    # Each destination's own bound on sends in flight (its `concurrency:`); absent: the
    # default, never more than the dispatcher's own.
    limits: Mapping[str, int] = field(default_factory=dict)
    # Each destination's circuit breaker; absent: none.
    breakers: Mapping[str, BreakerPolicy] = field(default_factory=dict)
    # Each destination's `rate:` as the seconds between two sends; absent: no rate limit.
    rates: Mapping[str, float] = field(default_factory=dict)
    # Each route's `mention:`, by route index; absent: none.
    mentions: Mapping[int, MentionConfig] = field(default_factory=dict)
    # Each route's `mute_times:`, by route index; absent: never muted.
    mutes: Mapping[int, Sequence[MuteTime]] = field(default_factory=dict)
    # Each route's `group:` (a batch digest), by route index; absent: one message per event.
    groups: Mapping[int, GroupConfig] = field(default_factory=dict)
    # Each route's compiled `template:`, by route index; absent: none.
    templates: Mapping[int, MessageTemplates] = field(default_factory=dict)

    def mentions_for(self, route: int, event: TaskEvent) -> tuple[str, ...]:
        rule = self.mentions.get(route)
        return rule.resolve(event.status, event.labels) if rule is not None else ()

    def policy(self, destination: str) -> RetryPolicy:
        return self.policies.get(destination, self.default_policy)


@dataclass
class DispatcherStats:
    delivered: int = 0
    retried: int = 0
    deferred: int = 0
    dead: int = 0
    silenced: int = 0
    lost_leases: int = 0
    # Leases given back unfinished at shutdown.
    released: int = 0
    # Claims given straight back because their destination was already at its limit.
    returned: int = 0


class Dispatcher:
    """Claims with a lease, sends with bounded concurrency, records with the lease token.

    ``lease_seconds`` must exceed any channel's per-attempt deadline, so a live worker's
    lease never expires while it is still sending. On stop, sends under way get
    ``shutdown_grace`` seconds to finish; the rest are cancelled and their leases given back.
    """

    def __init__(
        self,
        store: Store,
        routing: Callable[[], Routing],
        *,
        clock: Callable[[], float],
        batch_size: int = 100,
        concurrency: int = 64,
        lease_seconds: float = 60.0,
        idle_seconds: float = 1.0,
        metrics: Metrics | None = None,
        shutdown_grace: float = 10.0,
        breakers: Breakers | None = None,
        destination_concurrency: int = 16,
        silencer: Silencer | None = None,
    ) -> None:
        self._store = store
        self._silencer = silencer if silencer is not None else Silencer(store, clock)
        self._breakers = breakers if breakers is not None else Breakers(store, clock=clock)
        self._destination_concurrency = destination_concurrency
        self._metrics = metrics
        self._routing = routing
        self._clock = clock
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._idle_seconds = idle_seconds
        self._wakeup = asyncio.Event()
        self._shutdown_grace = shutdown_grace
        # Each in-flight task and its claim; of those, the claims still sending (not yet
        # recording an outcome): the ones given back if the grace period runs out.
        self._in_flight: dict[asyncio.Task[None], Claim] = {}
        self._sending: dict[str, Claim] = {}
        # Sends in flight per destination (each bounded by its limit), and the deliveries
        # holding one of those slots: a slot is freed when its send ends, before the outcome
        # is recorded, so a commit's wait never holds a destination's room.
        self._busy: Counter[str] = Counter()
        self._holding: set[str] = set()
        # Set once ``stop`` is seen: nothing more is claimed, the sends under way finish.
        self.stopping = asyncio.Event()
        self.worker_id = uuid.uuid4().hex[:8]
        self.stats = DispatcherStats()

    def wake(self) -> None:
        """Tell a sleeping dispatcher that new deliveries are due (same process only)."""
        self._wakeup.set()

    async def run_once(self) -> int:
        """Claim one batch, send it all, record every outcome. Returns how many were claimed.
        Destinations whose breaker is open are skipped; the per-destination limits are not
        applied (``run_forever`` applies them)."""
        routing = self._routing()
        skip = await self._skipped(routing)
        await self._silencer.refresh()
        claims = await self._store.claim(
            self._clock(), self._batch_size, self._lease_seconds, skip=skip, caps=routing.limits
        )
        if claims:
            await asyncio.gather(*(self._attempt(claim) for claim in claims))
        return len(claims)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Keep claiming while work is due; sleep until woken, the next due time, or idle.

        Claims only as many deliveries as there are free send slots, so no lease ticks away
        while its delivery waits for a slot. Once ``stop`` is set: claims nothing more, and
        returns after ``shutdown`` (in-flight sends finished or given back).
        """
        # Deliveries made due by other processes (receivers, `relay replay`) wake us too,
        # where the store can tell; otherwise the idle poll finds them.
        self._store.watch(self.wake)
        while not stop.is_set():
            self._wakeup.clear()
            free = self._concurrency - len(self._in_flight)
            if free <= 0:
                await self._slot_or_stop(stop)
                continue
            limit = min(self._batch_size, free)
            routing = self._routing()
            try:
                # Destinations at their limit or paused by their breaker take no claims: a
                # sick destination's backlog never holds the slots a healthy one needs. The
                # limits set in the rules are counted by the store, over every process.
                skip = await self._skipped(routing)
                # Before claiming: a silence made a moment ago holds what this round sends.
                await self._silencer.refresh()
                # No more of a destination than this process has free slots for: a backlog
                # to one destination must not fill the claim and be given back row by row.
                skipped = set(skip)
                quota = {
                    name: room
                    for name in routing.types
                    if name not in skipped
                    and (room := self._limit(routing, name) - self._busy[name]) > 0
                }
                asked = min(limit, sum(quota.values())) if routing.types else limit
                if routing.types and not quota:
                    # Every destination is at its limit or paused: a claim could only read
                    # through their backlogs to find nothing. Wait for a slot instead.
                    claims = []
                else:
                    # Asked for no more than the destinations can take: a claim for more
                    # would read on through a full destination's backlog for rows of others.
                    claims = await self._store.claim(
                        self._clock(),
                        asked,
                        self._lease_seconds,
                        skip=skip,
                        caps=routing.limits,
                        quota=quota,
                    )
            except StoreUnavailableError as exc:
                log.warning("dispatcher: %s", exc)
                claims = []
            except Exception:
                # Never let the loop die silently: deliveries would pile up unnoticed.
                log.exception("dispatcher: claim failed")
                claims = []
            over: list[Claim] = []
            for claim in claims:
                if self._busy[claim.destination] >= self._limit(routing, claim.destination):
                    # One batch brought more than the destination may take at once.
                    over.append(claim)
                    continue
                self._busy[claim.destination] += 1
                self._holding.add(claim.delivery_id)
                # Before the task starts: a task cancelled before its first step still has
                # its lease given back.
                self._sending[claim.delivery_id] = claim
                task = asyncio.create_task(self._attempt(claim))
                self._in_flight[task] = claim
                task.add_done_callback(self._done)
            if over:
                self.stats.returned += sum(
                    await asyncio.gather(*(self._give_back(c) for c in over))
                )
                continue
            if len(claims) == limit:
                continue
            if claims and len(claims) == asked:
                # Every destination with room got all it had room for (a backlog): nothing
                # more can go out before a send ends (which wakes us) or new work arrives, so
                # no need to ask the store when the next delivery is due.
                await self._sleep(stop, look_up_due=False)
                continue
            # Fewer than asked: what is due and unclaimed belongs to destinations skipped or
            # at their shared limit (slots another process holds: the idle poll looks again).
            await self._sleep(stop, paused=bool(skip) or bool(routing.limits))
        await self._shutdown()

    async def _shutdown(self) -> None:
        """Wait up to the grace period for the sends under way, then cancel those still
        sending and give their leases back (pending, due now, no attempt spent), so another
        process takes them at once rather than when the lease expires. A send that finished
        has its outcome recorded first, so a restart does not send it again."""
        self.stopping.set()
        started = len(self._in_flight)
        if self._in_flight:
            log.info(
                "dispatcher %s stopping: %d send(s) in flight, given up to %g s to finish",
                self.worker_id,
                started,
                self._shutdown_grace,
            )
            _, late = await asyncio.wait(list(self._in_flight), timeout=self._shutdown_grace)
            for task in late:
                # A task already recording its outcome finishes: the message went out.
                if self._in_flight[task].delivery_id in self._sending:
                    task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        unfinished, self._sending = list(self._sending.values()), {}
        released = sum(await asyncio.gather(*(self._give_back(c) for c in unfinished)))
        self.stats.released += released
        finished = started - len(unfinished)
        log.info(
            "dispatcher %s stopped: %d in-flight send(s) finished, %d unfinished lease(s) "
            "given back%s",
            self.worker_id,
            finished,
            released,
            f" ({len(unfinished) - released} already lost)" if released < len(unfinished) else "",
        )

    async def _give_back(self, claim: Claim) -> bool:
        try:
            return await self._store.release(claim, self._clock())
        except StoreUnavailableError as exc:
            log.warning(
                "dispatcher: could not give back %s (retried when its lease expires): %s",
                claim.delivery_id,
                exc,
            )
        except Exception:
            log.exception("dispatcher: could not give back %s", claim.delivery_id)
        return False

    async def _slot_or_stop(self, stop: asyncio.Event) -> None:
        """Every slot is busy: wait for one to free up, or for ``stop``."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([*self._in_flight, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()

    def _limit(self, routing: Routing, destination: str) -> int:
        """How many sends to ``destination`` may be in flight in this process now."""
        own = routing.limits.get(destination, self._destination_concurrency)
        probe = self._breakers.limit(destination) if destination in routing.breakers else None
        return min(own, self._concurrency, probe if probe is not None else own)

    async def _skipped(self, routing: Routing) -> list[str]:
        """The destinations to leave out of the next claim: at their limit, or paused."""
        await self._breakers.sync(routing.breakers)
        skip = [name for name, n in self._busy.items() if n >= self._limit(routing, name)]
        for name, policy in routing.breakers.items():
            if name not in skip and await self._breakers.blocked(name, policy):
                skip.append(name)
        return skip

    def _done(self, task: asyncio.Task[None]) -> None:
        claim = self._in_flight.pop(task, None)
        if claim is not None:
            self._free_slot(claim)
        # A finished send may have scheduled a retry sooner than our next wake-up.
        self._wakeup.set()

    def _free_slot(self, claim: Claim) -> None:
        """Give back the destination slot ``claim`` holds (once: at the end of its send, or
        when its task ends without one)."""
        if claim.delivery_id not in self._holding:
            return
        self._holding.discard(claim.delivery_id)
        self._busy[claim.destination] -= 1
        if self._busy[claim.destination] <= 0:
            del self._busy[claim.destination]

    async def _sleep(
        self, stop: asyncio.Event, *, paused: bool = False, look_up_due: bool = True
    ) -> None:
        """Sleep until woken (new work, a send finished: a slot freed), ``stop``, the next due
        time, a breaker's pause ending, or the idle poll. ``paused``: some destinations were
        skipped, so work already due is theirs, waiting for a slot or its pause to end.
        ``look_up_due=False``: the next due time is not looked up (nothing could be claimed
        before a slot frees)."""
        timeout = self._idle_seconds
        due = None
        if look_up_due:
            try:
                due = await self._store.next_due()
            except StoreUnavailableError:
                due = None
        now = self._clock()
        if due is not None and not (paused and due <= now):
            timeout = min(timeout, max(0.0, due - now))
        reopen = self._breakers.wake_at()
        if reopen is not None:
            timeout = min(timeout, max(0.0, reopen - now))
        # Never spin: due work we did not claim is already held by an in-flight send.
        timeout = max(timeout, 0.005)
        waiters = [asyncio.ensure_future(self._wakeup.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._in_flight and not stop.is_set():
            # Woken while sends are under way (most often by one of them ending): let the
            # others that end meanwhile free their slots too, so one claim takes several
            # deliveries instead of one store round trip per delivery.
            await asyncio.sleep(COALESCE_SECONDS)

    async def _attempt(self, claim: Claim) -> None:
        started = self._clock()
        routing = self._routing()
        channel = routing.channels.get(claim.destination)
        # What the breaker learns: delivered, a transient failure, or nothing (paced, refused
        # for good: the destination answered).
        result: Literal["ok", "failed", None] = None
        try:
            if channel is None:
                raise PermanentDeliveryError(
                    f"destination '{claim.destination}' is no longer in the rules"
                )
            # Only a silence or a mute window in force reads the event (parsing it).
            if self._silencer.may_hold(claim.route, routing.mutes):
                hold = self._silencer.hold(claim.event, claim.route, routing.mutes)
                if hold is not None:
                    raise _Held(hold.held_by, hold.reason)
            interval = routing.rates.get(claim.destination)
            if interval is not None:
                # The destination's rate: one slot per interval, shared through the store.
                try:
                    wait = await self._store.pace(f"rate:{claim.destination}", interval, started)
                except StoreUnavailableError:
                    wait = 1.0  # no slot to be had: not the destination's failure, wait
                if wait > 0:
                    raise DeliveryDeferred(wait, "rate limit")
            # The lease is the promise that nobody else sends this delivery meanwhile, so no
            # attempt may outlive it, whatever the channel's own timeout says.
            async with asyncio.timeout(max(0.0, claim.lease_until - self._clock()) * 0.9):
                grouping = routing.groups.get(claim.route)
                group = group_of(claim.route, grouping, claim.event) if grouping else None
                if grouping is not None and group is not None and hasattr(channel, "send_digest"):
                    # A batch digest: this delivery carries its group's window a step.
                    carrier = cast(DigestChannel, channel)
                    await self._digests(routing).carry(claim, group, grouping, carrier)
                else:
                    mention = routing.mentions.get(claim.route)
                    mentions = (
                        () if mention is None else routing.mentions_for(claim.route, claim.event)
                    )
                    await channel.send(
                        Delivery(
                            claim.delivery_id,
                            claim.destination,
                            claim.attempt,
                            claim.event_data,
                            mentions,
                            template=routing.templates.get(claim.route),
                        )
                    )
            outcome = Outcome("delivered")
            result = "ok"
        except _Held as held:
            outcome = Outcome.silenced(held.held_by, held.reason)
        except DeliveryDeferred as wait:
            # Pacing: back in the queue, due when its turn comes; no attempt is spent.
            due = self._clock() + max(0.0, wait.seconds)
            outcome = Outcome("pending", wait.reason, due, deferred=True)
        except TimeoutError:
            result = "failed"
            outcome = self._after_failure(
                claim, TransientDeliveryError("attempt outlived its lease"), routing
            )
        except DeliveryError as exc:
            result = "failed" if exc.transient else None
            outcome = self._after_failure(claim, exc, routing)
        except Exception as exc:  # a channel bug must not lose the delivery
            log.exception("dispatcher: %s to %s crashed", claim.delivery_id, claim.destination)
            outcome = self._after_failure(
                claim, PermanentDeliveryError(f"internal error: {type(exc).__name__}"), routing
            )
        # The send is over (a cancelled one never gets here): from now on, shutdown lets the
        # outcome be recorded rather than give the lease back.
        self._sending.pop(claim.delivery_id, None)
        await self._breakers.record(
            claim.destination, routing.breakers.get(claim.destination), result
        )
        # The destination has its answer: its slot is free while the outcome is committed.
        self._free_slot(claim)
        self._wakeup.set()
        await self._record(claim, outcome, started, routing.types.get(claim.destination, ""))

    def _digests(self, routing: Routing) -> DigestKeeper:
        def held(event: TaskEvent, route: int) -> tuple[str, str] | None:
            hold = self._silencer.hold(event, route, routing.mutes)
            return None if hold is None else (hold.held_by, hold.reason)

        return DigestKeeper(self._store, self._clock, held)

    def _after_failure(self, claim: Claim, error: DeliveryError, routing: Routing) -> Outcome:
        policy = routing.policy(claim.destination)
        next_at = policy.next_attempt(claim.attempt, error, self._clock())
        if next_at is None:
            why = "permanent" if not error.transient else f"gave up after {claim.attempt} attempts"
            return Outcome("dead", f"{error.reason} ({why})")
        return Outcome("pending", error.reason, next_at)

    async def _record(self, claim: Claim, outcome: Outcome, started: float, kind: str) -> None:
        try:
            # A shutdown that cancels us does not lose the outcome of a sent message: the store
            # has the write under way before it waits (Store.finish), so no shield (a task per
            # delivery) is needed here.
            kept = await self._store.finish(claim, outcome, started, self._clock())
        except StoreUnavailableError as exc:
            # The lease will expire and the delivery will be tried again: at least once.
            log.error(
                "dispatcher: could not record %s: %s",
                claim.delivery_id,
                exc,
                extra=_fields(claim, outcome, started, self._clock(), "unrecorded"),
            )
            return
        if not kept:
            self.stats.lost_leases += 1
            if self._metrics is not None:
                self._metrics.lease_losses.inc()
            log.warning(
                "dispatcher: lease on %s was lost before recording",
                claim.delivery_id,
                extra=_fields(claim, outcome, started, self._clock(), "lease_lost"),
            )
            return
        name = _outcome_name(outcome)
        if self._metrics is not None:
            self._metrics.attempt(claim.destination, kind, name, self._clock() - started)
        if outcome.state == "delivered":
            self.stats.delivered += 1
        elif outcome.state == "silenced":
            self.stats.silenced += 1
        elif outcome.deferred:
            self.stats.deferred += 1
        elif outcome.state == "pending":
            self.stats.retried += 1
        else:
            self.stats.dead += 1
        # One line per outcome: WARNING for a dead delivery, someone must look at it.
        level = logging.WARNING if name == "dead" else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "delivery %s",
                name,
                extra=_fields(claim, outcome, started, self._clock(), name),
            )


class _Held(Exception):
    """Not sent: held by a silence or a mute window (never leaves the dispatcher)."""

    def __init__(self, held_by: str, reason: str) -> None:
        super().__init__(reason)
        self.held_by, self.reason = held_by, reason


def _fields(
    claim: Claim, outcome: Outcome, started: float, now: float, name: str
) -> dict[str, object]:
    """The structured fields of a delivery's log line (README: Logs)."""
    # Read off the stored JSON: a log line does not parse the event.
    event = claim.event_data
    fields: dict[str, object] = {
        "event_id": field_of(event, "id"),
        "delivery_id": claim.delivery_id,
        "source": field_of(event, "source"),
        "task_id": field_of(event, "task_id"),
        "destination": claim.destination,
        "attempt": claim.attempt,
        "outcome": name,
        "duration_ms": round((now - started) * 1000, 1),
    }
    if outcome.detail:
        fields["reason"] = outcome.detail
    if outcome.state == "pending" and outcome.next_attempt_at is not None:
        fields["next_attempt_at"] = (
            datetime.fromtimestamp(outcome.next_attempt_at, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
        fields["next_attempt_in_s"] = round(max(0.0, outcome.next_attempt_at - now), 1)
    return fields


def _outcome_name(outcome: Outcome) -> str:
    """delivered, retried, deferred (paced, no attempt spent) or dead."""
    if outcome.state == "silenced":
        return "silenced"
    if outcome.deferred:
        return "deferred"
    return "retried" if outcome.state == "pending" else outcome.state
