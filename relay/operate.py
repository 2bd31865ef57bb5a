"""The commands that look into the store and act on it: deliveries, replay, events, reprocess.

Each opens the database the settings name (never creating one that does not exist), does its
work, and answers with an exit code; store errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.errors import (
    ConfigError,
    RequestError,
    StoreUnavailableError,
    UnreadableCallbackError,
    UpstreamUnavailableError,
)
from relay.events import TaskEvent
from relay.settings import Settings
from relay.store import open_store
from relay.store.base import DeliveryRecord, QuarantinedCallback, Store
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
    """A plain table: one space-padded column per header."""
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


def cmd_deliveries(args: argparse.Namespace, settings: Settings) -> int:
    async def work(store: Store) -> int:
        if args.id:
            return await _one_delivery(store, args.id, as_json=args.json)
        rows = await store.list_deliveries(args.state, args.limit)
        if args.json:
            print(json.dumps([asdict(r) for r in rows], indent=2))
        elif rows:
            print(deliveries_table(rows))
        else:
            print("no deliveries" + (f" in state {args.state}" if args.state else ""))
        return 0

    return with_store(settings, work)


async def _one_delivery(store: Store, delivery_id: str, *, as_json: bool) -> int:
    record = await store.get_delivery(delivery_id)
    if record is None:
        print(f"relay deliveries: no delivery {delivery_id}", file=sys.stderr)
        return 1
    history = await store.attempts(delivery_id)
    if as_json:
        print(json.dumps({**asdict(record), "attempt_log": [asdict(a) for a in history]}, indent=2))
        return 0
    print(deliveries_table([record]))
    print("\nattempts:")
    # Numbered in order: a replay starts the retry count again, not the history.
    for n, a in enumerate(history, start=1):
        print(f"  #{n} {when(a.finished_at)} {a.state}: {a.detail}")
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    async def work(store: Store) -> int:
        ids = list(args.ids)
        if args.all_dead:
            dead = [r.id for r in await store.list_deliveries("dead", limit=_EVERYTHING)]
            if not dead and not ids:
                print("no dead deliveries to replay")
                return 0
            ids += dead
        if not ids:
            print("relay replay: name delivery ids or use --all-dead", file=sys.stderr)
            return 2
        failed = 0
        for delivery_id in ids:
            if await store.replay(delivery_id, time.time()):
                print(f"{delivery_id}: pending again, due now")
            else:
                failed += 1
                print(f"{delivery_id}: not replayed (unknown or not dead)", file=sys.stderr)
        return 1 if failed else 0

    return with_store(settings, work)


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


def _quarantine_json(q: QuarantinedCallback) -> dict[str, Any]:
    shown = asdict(q)
    body = q.body.decode("utf-8", "replace")
    try:
        shown["body"] = json.loads(body)
    except ValueError:
        shown["body"] = body
    return shown


def cmd_events(args: argparse.Namespace, settings: Settings) -> int:
    async def work(store: Store) -> int:
        if args.quarantined:
            rows = await store.list_quarantined(args.limit, include_reprocessed=args.all)
            if args.json:
                print(json.dumps([_quarantine_json(q) for q in rows], indent=2))
            elif rows:
                print(quarantine_table(rows))
                print("\nread them again after an upgrade with: relay reprocess ID… | --all")
            else:
                print("no quarantined callbacks")
            return 0
        events = await store.list_events(args.limit)
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
