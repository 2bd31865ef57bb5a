"""Batch digests (README: Rules, batch digests): the events of one group become one message
per destination.

The receiver puts every delivery of a grouped route in the ordered group
``digest:<route>:<labels>``, so the store hands out one of them at a time, over every process:
the group's oldest unfinished delivery is its *carrier*. The carrier opens (or joins) the
group's current window, folds the deliveries queued behind it into the window (they are done:
the carrier carries them), and shows the window through its channel: Slack posts after
``wait`` and then edits at most once per ``interval``; email and webhooks send once, when the
window closes. Until then the carrier waits (deferred: no attempt spent), waking to fold
what came meanwhile. The window's state (members, one line per task, the Slack message) is one
channel-state row, written before anything it names is settled, so a restart or another
worker carries on where the last one stopped, and exactly one digest is sent per window.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from relay.channels.base import Delivery
from relay.digest_view import DigestView, TaskLine
from relay.errors import DeliveryDeferred
from relay.events import FINAL_STATUSES, TaskEvent
from relay.routing.grouping import DIGEST_PREFIX, GroupConfig
from relay.store.base import Claim, Outcome, Store

log = logging.getLogger("relay.digest")

# The carrier of an open window looks for new events at least this often (and at most every
# `wait`), so `close_after` is noticed soon after it is reached.
MIN_RECHECK = 1.0


class DigestChannel(Protocol):
    """What a channel does to show a digest (Slack, email and webhooks implement it)."""

    # True: it shows the window while it is open (an edited message); False: only once closed.
    live: bool

    async def send_digest(self, delivery: Delivery, view: DigestView) -> None:
        """Show ``view``: post or edit (live), or send it (closed). ``delivery`` is the
        carrier (its event fills templated destinations). Raise DeliveryError."""


def group_of(route: int, config: GroupConfig, event: TaskEvent) -> str | None:
    """The ordered group of ``event``'s deliveries through ``route`` (as the receiver names
    it), or None: the event lacks a ``by`` label and goes on its own."""
    key = config.key(event.match_labels())
    return None if key is None else f"{DIGEST_PREFIX}{route}:{key}"


def _line(event: TaskEvent) -> dict[str, Any]:
    out = event.outputs[0] if event.outputs else None
    error = ""
    if event.error is not None:
        error = event.error.message + (f" ({event.error.code})" if event.error.code else "")
    thumb = ""
    if out is not None:
        thumb = out.thumbnail_url or (out.url if out.kind == "image" else "") or ""
    usage = {
        k: float(v)
        for k, v in (event.usage or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    return {
        "task": event.task_id,
        "source": event.source,
        "provider": event.provider,
        "status": event.status,
        "error": error,
        "url": (out.url or "") if out is not None else "",
        "thumb": thumb,
        "kind": out.kind if out is not None else "",
        "duration": event.duration_s,
        "usage": usage,
        "at": event.received_at.timestamp(),
    }


def p95(values: Sequence[float]) -> float | None:
    """The 95th percentile (nearest rank), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class Window:
    """One window's state, as kept in the channel-state row of its group (JSON lists, not
    objects keyed by task: PostgreSQL's JSONB does not keep key order)."""

    def __init__(self, row: dict[str, Any] | None) -> None:
        row = row if isinstance(row, dict) and isinstance(row.get("window"), int) else {}
        self.number: int = row.get("window", 0)
        self.opened_at: float = float(row.get("opened_at", 0.0))
        self.last_at: float = float(row.get("last_at", 0.0))
        self.closed: bool = bool(row.get("closed", True))
        self.members: list[str] = list(row.get("members", []))
        self.tasks: list[dict[str, Any]] = list(row.get("tasks", []))
        self.shown: int = int(row.get("shown", 0))
        self.edited_at: float | None = row.get("edited_at")
        self._index = {(t["source"], t["task"]): i for i, t in enumerate(self.tasks)}

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.number,
            "opened_at": self.opened_at,
            "last_at": self.last_at,
            "closed": self.closed,
            "members": self.members,
            "tasks": self.tasks,
            "shown": self.shown,
            "edited_at": self.edited_at,
        }

    def open_next(self, at: float) -> None:
        self.number += 1
        self.opened_at = self.last_at = at
        self.closed = False
        self.members, self.tasks, self.shown, self.edited_at = [], [], 0, None
        self._index = {}

    def takes(self, at: float, config: GroupConfig) -> bool:
        """Whether an event received at ``at`` joins this window (else it opens the next)."""
        return (
            not self.closed
            and len(self.members) < config.close_after
            and at < self.last_at + config.interval
        )

    def add(self, delivery_id: str, event: TaskEvent) -> None:
        self.members.append(delivery_id)
        at = event.received_at.timestamp()
        self.last_at = max(self.last_at, at)
        line = _line(event)
        where = self._index.get((event.source, event.task_id))
        if where is None:
            self._index[(event.source, event.task_id)] = len(self.tasks)
            self.tasks.append(line)
        elif event.final or self.tasks[where]["status"] not in FINAL_STATUSES:
            # A task's latest word counts; a late progress report never undoes its outcome.
            self.tasks[where] = line

    def view(self, group: str, route: int, config: GroupConfig, *, final: bool) -> DigestView:
        labels = dict(pair.split("=", 1) for pair in group.split(":", 2)[2].split(","))
        counts: dict[str, int] = {}
        for task in self.tasks:
            counts[task["status"]] = counts.get(task["status"], 0) + 1
        failed = [t for t in self.tasks if t["status"] in ("failed", "cancelled")]
        succeeded = [t for t in self.tasks if t["status"] == "succeeded"]
        usage: dict[str, float] = {}
        for task in self.tasks:
            for name, value in task.get("usage", {}).items():
                usage[name] = usage.get(name, 0.0) + value
        durations = [
            t["duration"] for t in self.tasks if isinstance(t.get("duration"), float | int)
        ]
        flags = [_cli_filter(name, value) for name, value in labels.items()]
        return DigestView(
            key=f"{group}#{self.number}",
            route=route,
            labels=labels,
            window=self.number,
            final=final,
            total=len(self.tasks),
            counts=counts,
            failures=[_task_line(t) for t in failed[: config.failures]],
            more_failures=max(0, len(failed) - config.failures),
            successes=[_task_line(t) for t in succeeded[: config.successes]],
            more_successes=max(0, len(succeeded) - config.successes),
            opened_at=self.opened_at,
            last_at=self.last_at,
            p95_s=p95([float(d) for d in durations]),
            usage=usage,
            failed_command=" ".join(["relay events", *flags, "--status failed"]),
            failed_path="/admin/events?"
            + "&".join([*(_api_filter(k, v) for k, v in labels.items()), "status=failed"]),
            providers=sorted({t["provider"] for t in self.tasks}),
        )


_FLAGS = {"source": "--source", "provider": "--provider", "model": "--model", "task_id": "--task"}


def _cli_filter(name: str, value: str) -> str:
    flag = _FLAGS.get(name)
    return f"{flag} {value}" if flag else f"--label {name}={value}"


def _api_filter(name: str, value: str) -> str:
    return f"{name}={value}" if name in _FLAGS and name != "task_id" else f"label={name}={value}"


def _task_line(task: dict[str, Any]) -> TaskLine:
    duration = task.get("duration")
    return TaskLine(
        task_id=task["task"],
        status=task["status"],
        error=task.get("error", ""),
        url=task.get("url", ""),
        thumbnail=task.get("thumb", ""),
        kind=task.get("kind", ""),
        duration_s=float(duration) if isinstance(duration, int | float) else None,
    )


def _carrier(claim: Claim) -> Delivery:
    return Delivery(claim.delivery_id, claim.destination, claim.attempt, claim.event_data)


class DigestKeeper:
    """Carries one digest delivery a step: folds, shows, closes or waits (see the module)."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        held: Callable[[TaskEvent, int], tuple[str, str] | None],
    ) -> None:
        self._store = store
        self._clock = clock
        # What holds a follower instead (a silence, a mute window): (held_by, reason) or None.
        self._held = held

    async def carry(
        self, claim: Claim, group: str, config: GroupConfig, channel: DigestChannel
    ) -> None:
        """Returns when the window is done with this carrier (delivered); raises
        DeliveryDeferred to wait, DeliveryError when the channel fails."""
        dest = claim.destination
        window = Window(await self._store.get_state(dest, group))
        received = claim.event.received_at.timestamp()
        if claim.delivery_id in window.members:
            if window.closed:
                return  # shown and closed before a crash kept this carrier from finishing
        else:
            if not window.takes(received, config):
                window.open_next(received)
            window.add(claim.delivery_id, claim.event)
        followers = await self._store.group_pending(
            dest, group, after=claim.delivery_id, limit=config.close_after
        )
        joined: list[str] = []
        held: dict[tuple[str, str], list[str]] = {}
        boundary = False
        for delivery_id, event in followers:
            hold = self._held(event, claim.route)
            if hold is not None:
                held.setdefault(hold, []).append(delivery_id)
                continue
            if delivery_id in window.members:
                joined.append(delivery_id)  # joined before a crash, not settled yet
                continue
            if not window.takes(event.received_at.timestamp(), config):
                boundary = True  # it opens the next window once this one is closed
                break
            window.add(delivery_id, event)
            joined.append(delivery_id)
        now = self._clock()
        closing = (
            boundary
            or len(window.members) >= config.close_after
            or now >= window.last_at + config.interval
        )
        # Written before the followers are settled: a restart finds them in the window.
        await self._store.put_state(dest, group, window.to_json(), now)
        detail = f"in digest {group}#{window.number}, carried by {claim.delivery_id}"
        await self._store.fold(joined, Outcome("delivered", detail), now)
        for (held_by, reason), ids in held.items():
            await self._store.fold(ids, Outcome.silenced(held_by, reason), now)
        if closing:
            await channel.send_digest(
                _carrier(claim), window.view(group, claim.route, config, final=True)
            )
            window.closed = True
            window.shown, window.edited_at = len(window.members), now
            await self._store.put_state(dest, group, window.to_json(), self._clock())
            log.info(
                "digest %s#%d closed: %d events, %d tasks",
                group,
                window.number,
                len(window.members),
                len(window.tasks),
            )
            return
        if channel.live:
            first_due = window.opened_at + config.wait
            due_edit = window.edited_at is None or now >= window.edited_at + config.interval
            if now >= first_due and due_edit and len(window.members) > window.shown:
                await channel.send_digest(
                    _carrier(claim), window.view(group, claim.route, config, final=False)
                )
                window.shown, window.edited_at = len(window.members), now
                await self._store.put_state(dest, group, window.to_json(), self._clock())
        recheck = max(MIN_RECHECK, min(config.wait, config.interval))
        wake = min(window.last_at + config.interval, now + recheck)
        if channel.live and window.edited_at is None:
            wake = min(wake, max(window.opened_at + config.wait, now + 0.05))
        raise DeliveryDeferred(
            max(0.05, wake - self._clock()),
            f"digest window open: {len(window.members)} events so far",
        )
