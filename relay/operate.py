"""The commands that look into the store and act on it: deliveries, replay, events, reprocess,
prune and purge.

Each opens the database the settings name (never creating one that does not exist), does its
work, and answers with an exit code; store errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.admin import operations as ops
from relay.admin import schemas
from relay.admin.params import parse_labels, parse_moment
from relay.breaker import iso, read_views
from relay.errors import (
    ConfigError,
    RequestError,
    StoreUnavailableError,
    UnreadableCallbackError,
    UpstreamUnavailableError,
)
from relay.escape import one_line
from relay.events import TaskEvent
from relay.settings import Settings
from relay.store import open_store
from relay.store.base import (
    DeliveryFilter,
    DeliveryRecord,
    EventFilter,
    QuarantinedCallback,
    RejectedRequest,
    Store,
)
from relay.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from relay.receiver import Receiver

# Everything at once for --all and --all-dead: far more than one run should ever meet.
_EVERYTHING = 1_000_000


def with_store(settings: Settings, work: Callable[[Store], Awaitable[int]]) -> int:
    """Open the existing store, run ``work`` on it, close it; its exit code.

    A database that does not exist is an error, not created: inspecting a mistyped path must
    not make an empty database and report nothing.
    """

    async def run(store: Store) -> int:
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        store = open_store(settings.db)
        if isinstance(store, SQLiteStore) and not Path(store.path).exists():
            print(f"relay: no database at {store.path} (check --db or RELAY_DB)", file=sys.stderr)
            return 1
        return asyncio.run(run(store))
    except StoreUnavailableError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2


def print_problems(exc: ConfigError) -> None:
    """Every problem of the rules, one a line, on stderr."""
    print(f"rules: {len(exc.problems)} problem(s):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def columns(headers: list[str], lines: list[list[str]]) -> str:
    """A plain table: one space-padded column per header. Cells hold outside text (task ids,
    errors from remote answers): their control characters are escaped, so none can forge a
    row or drive the terminal."""
    lines = [[one_line(cell) for cell in line] for line in lines]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    return "\n".join(out)


# --- deliveries and replay ------------------------------------------------------------------


def deliveries_table(rows: Sequence[DeliveryRecord]) -> str:
    headers = ["ID", "STATE", "DESTINATION", "SOURCE", "TASK", "STATUS", "TRIES", "NEXT", "ERROR"]
    lines = [
        [
            r.id,
            r.state,
            r.destination,
            r.source,
            r.task_id,
            r.status,
            str(r.attempts),
            when(r.next_attempt_at) if r.state == "pending" else "-",
            r.last_error[:80],
        ]
        for r in rows
    ]
    return columns(headers, lines)


def _moments(args: argparse.Namespace, now: float) -> tuple[float | None, float | None]:
    """--since and --until as unix seconds; ValueError names the flag."""
    found: list[float | None] = []
    for flag in ("since", "until"):
        text = getattr(args, flag, None)
        try:
            found.append(None if text is None else parse_moment(text, now))
        except ValueError as exc:
            raise ValueError(f"--{flag}: {exc}") from None
    return found[0], found[1]


def _delivery_filter(args: argparse.Namespace, now: float, state: Any = None) -> DeliveryFilter:
    since, until = _moments(args, now)
    return DeliveryFilter(
        state=state if state is not None else args.state,
        destination=args.destination,
        since=since,
        until=until,
    )


def _usage(command: str, exc: ValueError) -> int:
    print(f"relay {command}: {exc}", file=sys.stderr)
    return 2


def cmd_deliveries(args: argparse.Namespace, settings: Settings) -> int:
    try:
        where = _delivery_filter(args, time.time())
    except ValueError as exc:
        return _usage("deliveries", exc)

    async def work(store: Store) -> int:
        if args.id:
            return await _one_delivery(store, args.id, as_json=args.json)
        page = await ops.deliveries_page(store, where, args.limit, None)
        rows = page.items
        if args.json:
            print(
                json.dumps([schemas.Delivery.of(r).model_dump(mode="json") for r in rows], indent=2)
            )
        elif rows:
            paused = await paused_line(store, sorted({r.destination for r in rows}), time.time())
            if paused:
                print(paused)
            print(deliveries_table(rows))
        else:
            print("no deliveries" + (f" in state {args.state}" if args.state else ""))
        return 0

    return with_store(settings, work)


async def paused_line(store: Store, destinations: Sequence[str], now: float) -> str:
    """One line naming the destinations whose circuit breaker pauses them, and until when
    (their deliveries wait, pending); empty if none is paused."""
    views = await read_views(store, destinations, now)
    paused = [
        f"{name} ({v.state.replace('_', ' ')}"
        + (f" until {iso(v.until)}" if v.state == "open" and v.until is not None else "")
        + (f": {one_line(v.reason)}" if v.reason else "")
        + ")"
        for name, v in views.items()
        if v.state != "closed"
    ]
    return "paused by their circuit breaker: " + ", ".join(paused) if paused else ""


async def _one_delivery(store: Store, delivery_id: str, *, as_json: bool) -> int:
    found = await ops.delivery_detail(store, delivery_id)
    if found is None:
        print(f"relay deliveries: no delivery {delivery_id}", file=sys.stderr)
        return 1
    if as_json:
        shown = schemas.Delivery.of(found.delivery, found.attempts)
        print(json.dumps(shown.model_dump(mode="json"), indent=2))
        return 0
    print(deliveries_table([found.delivery]))
    print("\nattempts:")
    # Numbered in order: a replay starts the retry count again, not the history.
    for n, a in enumerate(found.attempts, start=1):
        print(f"  #{n} {when(a.finished_at)} {a.state}: {one_line(a.detail)}")
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Replay named deliveries, or every one a filter matches (dead unless --state delivered)."""
    filtered = any(getattr(args, f) is not None for f in ("destination", "since", "until"))
    if not (args.ids or args.all_dead or filtered):
        print(
            "relay replay: name delivery ids, or filter with --destination/--since/--until, "
            "or use --all-dead",
            file=sys.stderr,
        )
        return 2
    if args.ids and (filtered or args.all_dead):
        print("relay replay: name delivery ids or filter, not both", file=sys.stderr)
        return 2
    now = time.time()
    try:
        where = _delivery_filter(args, now, state=args.state or "dead")
    except ValueError as exc:
        return _usage("replay", exc)

    async def work(store: Store) -> int:
        if not args.ids:
            return await _replay_matching(store, where, now, dry_run=args.dry_run)
        failed = 0
        for delivery_id in dict.fromkeys(args.ids):
            if args.dry_run:
                found = await store.get_delivery(delivery_id)
                state = found.state if found else "unknown"
                print(
                    f"{delivery_id}: {state}, would "
                    + (
                        "be replayed"
                        if state in ("dead", "delivered", "silenced")
                        else "not be replayed"
                    )
                )
                continue
            answer = await ops.replay_one(store, delivery_id, time.time())
            if answer == "replayed":
                print(f"{delivery_id}: pending again, due now")
                continue
            failed += 1
            why = "no such delivery" if answer == "unknown" else "it is pending or sending already"
            print(f"{delivery_id}: not replayed ({why})", file=sys.stderr)
        return 1 if failed else 0

    return with_store(settings, work)


async def _replay_matching(
    store: Store, where: DeliveryFilter, now: float, *, dry_run: bool
) -> int:
    result = await ops.replay_matching(store, where, now, dry_run=dry_run)
    what = f"{where.state} deliveries" + (f" to {where.destination}" if where.destination else "")
    if where.since is not None or where.until is not None:
        start = when(where.since) if where.since is not None else "the start"
        end = when(where.until) if where.until is not None else "now"
        what += f" created from {start} to {end}"
    if dry_run:
        print(f"would replay {result.matched} {what}")
        for delivery_id in result.ids:
            print(f"  {delivery_id}")
        if result.matched > len(result.ids):
            print(f"  … and {result.matched - len(result.ids)} more")
        return 0
    if not result.matched:
        print(f"no {what} to replay")
        return 0
    print(f"replayed {result.replayed} of {result.matched} {what}: pending again, due now")
    return 0 if result.replayed == result.matched else 1


# --- events and the quarantine --------------------------------------------------------------


def events_table(events: Sequence[TaskEvent]) -> str:
    headers = ["ID", "RECEIVED", "SOURCE", "TASK", "STATUS", "MODEL"]
    lines = [
        [e.id, when(e.received_at.timestamp()), e.source, e.task_id, e.status, e.model or "-"]
        for e in events
    ]
    return columns(headers, lines)


def quarantine_table(rows: Sequence[QuarantinedCallback]) -> str:
    headers = ["ID", "RECEIVED", "SOURCE", "PROVIDER", "STATE", "REASON"]
    lines = [
        [
            q.id,
            when(q.received_at),
            q.source,
            q.provider,
            q.state if q.event_id is None else f"{q.state} as {q.event_id}",
            q.reason[:100],
        ]
        for q in rows
    ]
    return columns(headers, lines)


def cmd_events(args: argparse.Namespace, settings: Settings) -> int:
    try:
        since, until = _moments(args, time.time())
        labels = parse_labels(args.label or [])
    except ValueError as exc:
        return _usage("events", exc)
    where = EventFilter(
        source=args.source,
        provider=args.provider,
        status=args.status,
        task_id=args.task,
        model=args.model,
        since=since,
        until=until,
        labels=labels,
    )

    async def work(store: Store) -> int:
        if args.quarantined:
            rows = await store.list_quarantined(args.limit, include_reprocessed=args.all)
            if args.json:
                print(
                    json.dumps(
                        [schemas.Quarantined.of(q).model_dump(mode="json") for q in rows], indent=2
                    )
                )
            elif rows:
                print(quarantine_table(rows))
                print("\nread them again after an upgrade with: relay reprocess ID… | --all")
            else:
                print("no quarantined callbacks")
            return 0
        page = await ops.events_page(store, where, args.limit, None)
        events = page.items
        if args.json:
            print(json.dumps([e.model_dump(mode="json") for e in events], indent=2))
        elif events:
            print(events_table(events))
        else:
            print("no events")
        return 0

    return with_store(settings, work)


def cmd_reprocess(args: argparse.Namespace, settings: Settings) -> int:
    """Read quarantined callbacks again with today's adapters; route and store what reads."""
    if not args.ids and not args.all:
        print("relay reprocess: name quarantined callback ids or use --all", file=sys.stderr)
        return 2
    return with_store(settings, lambda store: _reprocess(args, settings, store))


async def _reprocess(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    from relay.runtime import build_runtime

    try:
        async with build_runtime(settings, store=store, dispatch=False) as built:
            ids = list(args.ids)
            if args.all:
                ids += [q.id for q in await store.list_quarantined(limit=_EVERYTHING)]
                if not ids:
                    print("no quarantined callbacks to reprocess")
                    return 0
            done = [await _reprocess_one(built.receiver, store, q) for q in dict.fromkeys(ids)]
            return 0 if all(done) else 1
    except ConfigError as exc:
        print_problems(exc)
        return 2


async def _reprocess_one(receiver: Receiver, store: Store, quarantine_id: str) -> bool:
    """Read one quarantined callback again; whether it left the quarantine."""
    from relay.providers.base import Ignored

    callback = await store.get_quarantined(quarantine_id)
    if callback is None or callback.state != "quarantined":
        why = "unknown" if callback is None else f"already {callback.state}"
        print(f"{quarantine_id}: not reprocessed ({why})", file=sys.stderr)
        return False
    try:
        result = await receiver.reprocess(callback)
    except (UnreadableCallbackError, RequestError) as exc:
        reason = exc.reason
        if isinstance(exc, RequestError):
            reason = f"now refused ({exc.status}): {reason}"
        await store.settle_quarantined(quarantine_id, event_id=None, reason=reason, now=time.time())
        print(f"{quarantine_id}: still quarantined: {reason}", file=sys.stderr)
        return False
    except UpstreamUnavailableError as exc:
        print(f"{quarantine_id}: not reprocessed, try again: {exc}", file=sys.stderr)
        return False
    if isinstance(result, Ignored):
        event_id, said = "ignored", f"ignored: {result.reason}"
    elif result.duplicate:
        event_id, said = result.event_id, f"duplicate of {result.event_id}"
    else:
        event_id, said = result.event_id, f"event {result.event_id}, {result.deliveries} deliveries"
    await store.settle_quarantined(
        quarantine_id, event_id=event_id, reason=callback.reason, now=time.time()
    )
    print(f"{quarantine_id}: {said}")
    return True


# --- retention: prune and purge -------------------------------------------------------------


def age_argument(text: str) -> float:
    """An ``--before`` age on the command line: the rules' duration syntax (30d, 12h)."""
    from relay.routing.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    """Remove delivered events older than ``--before``, by default the retention in force
    (RELAY_RETENTION, else the rules' ``retention.delivered``, else 7 days)."""
    from relay.retention import describe, in_batches

    age: float | None = args.before
    if age is None:
        try:
            age = _retention_in_force(settings)
        except ConfigError as exc:
            print_problems(exc)
            return 2
    if age is None:
        print("retention is off (RELAY_RETENTION or the rules' retention.delivered): nothing")
        print("pruned; give --before AGE to prune anyway")
        return 0
    before = time.time() - age
    what = f"delivered, received before {when(before)}"

    async def work(store: Store) -> int:
        if args.dry_run:
            count = await store.prune(before, _EVERYTHING, dry_run=True)
            print(f"would prune {describe(count)} ({what})")
        else:
            count = await in_batches(store.prune, before)
            print(f"pruned {describe(count)} ({what})")
        return 0

    return with_store(settings, work)


def _retention_in_force(settings: Settings) -> float | None:
    """The retention ``relay serve`` would prune with: the rules are read only if
    RELAY_RETENTION does not say. Raises ConfigError for broken rules."""
    from relay.providers import default_providers
    from relay.providers.checks import source_checks
    from relay.retention import delivered_retention
    from relay.routing.loader import load_rules
    from relay.routing.model import Rules

    if settings.retention is not None:
        return delivered_retention(settings, Rules())
    providers = default_providers()
    loaded = load_rules(settings.rules, os.environ, providers.keys(), source_checks(providers))
    return delivered_retention(settings, loaded.rules)


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    """Remove dead deliveries that died over ``--before`` ago, their attempts, and their
    events once no delivery of the event is left. For good: they can no longer be replayed."""
    from relay.retention import describe, in_batches

    before = time.time() - args.before
    what = f"dead deliveries last tried before {when(before)}"

    async def work(store: Store) -> int:
        if args.dry_run:
            count = await store.purge_dead(before, _EVERYTHING, dry_run=True)
            print(f"would purge {describe(count)} ({what})")
        else:
            count = await in_batches(store.purge_dead, before, unit=lambda count: count.deliveries)
            print(f"purged {describe(count)} ({what})")
        return 0

    return with_store(settings, work)


# --- refused requests -----------------------------------------------------------------------


def rejected_table(rows: Sequence[RejectedRequest]) -> str:
    headers = ["RECEIVED", "SOURCE", "CLIENT", "STATUS", "PATH", "REASON"]
    lines = [
        [
            when(r.received_at),
            r.source,
            r.client_ip or "-",
            str(r.status),
            r.path,
            r.reason[:100],
        ]
        for r in rows
    ]
    return columns(headers, lines)


def cmd_rejected(args: argparse.Namespace, settings: Settings) -> int:
    """The newest refused requests (of one source with ``--source``): why a callback did not
    arrive. ``--json`` adds the redacted excerpt of each body."""
    from relay.rejected import rejected_json

    async def work(store: Store) -> int:
        rows = await store.list_rejected(args.source, args.limit)
        if args.json:
            print(json.dumps([rejected_json(r) for r in rows], indent=2, ensure_ascii=False))
        elif rows:
            print(rejected_table(rows))
            print("\nthe bodies' redacted excerpts: relay rejected --json")
        else:
            print("no refused requests" + (f" to source {args.source}" if args.source else ""))
        return 0

    return with_store(settings, work)
