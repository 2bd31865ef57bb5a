"""The command line: serve, worker, check, test, deliveries, replay."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.errors import ConfigError, RequestError, StoreUnavailableError
from relay.providers import default_providers
from relay.providers.checks import source_checks
from relay.routing.loader import LoadedRules, load_rules
from relay.settings import Settings
from relay.store import open_store
from relay.store.base import DELIVERY_STATES, DeliveryRecord, Store
from relay.store.sqlite import SQLiteStore


def _load(rules_dir: Path) -> LoadedRules:
    providers = default_providers()
    return load_rules(rules_dir, os.environ, providers.keys(), source_checks(providers))


def _print_problems(exc: ConfigError) -> None:
    print(f"rules: {len(exc.problems)} problem(s):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


async def _check_store(url: str) -> None:
    store = open_store(url)
    await store.open()
    await store.close()


def _preflight(settings: Settings) -> bool:
    """Load the rules and open (and migrate) the store once before starting, so broken rules,
    a bad path or an unreachable database is one clear message rather than a traceback."""
    try:
        _load(settings.rules)
        asyncio.run(_check_store(settings.db))
    except ConfigError as exc:
        _print_problems(exc)
        return False
    except (ValueError, StoreUnavailableError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return False
    return True


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from relay.app import create_app

    if not _preflight(settings):
        return 2
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=args.access_log,
        # uvicorn's lines go through our logging set-up: one format in the log.
        log_config=None,
        # Providers must never wait long: keep the server's own limits tight.
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn has shut down cleanly, then re-raised the Ctrl-C
        return 130
    return 0 if server.started else 1


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from relay.worker import main as worker_main

    if not _preflight(settings):
        return 2
    if settings.db.startswith("memory:"):
        print("relay: a worker needs a shared database, not memory://", file=sys.stderr)
        return 2
    return worker_main(settings)


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    try:
        loaded = _load(settings.rules)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    rules = loaded.rules
    print(
        f"rules OK: {len(rules.sources)} source(s), {len(rules.destinations)} destination(s), "
        f"{len(rules.routes)} route(s) from {', '.join(str(f) for f in loaded.files)}"
    )
    for line in loaded.defaults_used:
        print(f"  note: {line}")
    return 0


def cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    """Dry run: parse, normalize, route and render a payload without verifying or sending."""
    try:
        body = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"relay test: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    return asyncio.run(_dry_run(args, settings, body))


async def _dry_run(args: argparse.Namespace, settings: Settings, body: bytes) -> int:
    import aiohttp

    from relay.channels import default_channel_types
    from relay.channels.base import ChannelDeps, Delivery
    from relay.ids import IdFactory
    from relay.providers.base import Ignored, Inbound
    from relay.receiver import Receiver
    from relay.rulebook import RuleBook
    from relay.store.memory import MemoryStore

    async with aiohttp.ClientSession() as http:
        try:
            book = RuleBook(
                settings.rules,
                default_providers(),
                default_channel_types(),
                ChannelDeps(http=http, clock=time.time, state=MemoryStore()),
            )
        except ConfigError as exc:
            _print_problems(exc)
            return 2
        config = book.rules.sources.get(args.source)
        if config is None:
            known = ", ".join(sorted(book.rules.sources)) or "none"
            print(f"relay test: unknown source '{args.source}' (known: {known})", file=sys.stderr)
            return 2
        receiver = Receiver(book, MemoryStore(), clock=time.time, max_depth=settings.max_depth)
        inbound = Inbound(
            source=args.source,
            config=config,
            headers={},
            body=body,
            received_at=datetime.now(UTC),
            verify=False,
        )
        try:
            event = receiver.normalize(inbound, verify=False)
        except RequestError as exc:
            print(f"relay test: would answer {exc.status}: {exc.reason}", file=sys.stderr)
            return 1
        if isinstance(event, Ignored):
            print(f"would answer 200 and ignore it: {event.reason}")
            return 0
        summary = event.model_dump(mode="json", exclude={"raw"})
        print("event:")
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        targets = receiver.targets(event)
        if not targets:
            print("\nno route matches: the event would be stored and sent nowhere")
            return 0
        for target in targets:
            channel = book.routing.channels[target.destination]
            print(f"\n--- to {target.destination} (route #{target.route + 1}) ---")
            print(channel.render(Delivery(IdFactory()("dlv"), target.destination, 1, event)))
    return 0


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(rows: Sequence[DeliveryRecord]) -> str:
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
            _when(r.next_attempt_at) if r.state == "pending" else "-",
            r.last_error[:80],
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    return "\n".join(out)


def _existing_store(url: str) -> Store | None:
    """The store at ``url``, or None (with a message) when that database does not exist:
    inspecting a mistyped path must not create an empty database and report nothing."""
    store = open_store(url)
    if isinstance(store, SQLiteStore) and not Path(store.path).exists():
        print(f"relay: no database at {store.path} (check --db or RELAY_DB)", file=sys.stderr)
        return None
    return store


def cmd_deliveries(args: argparse.Namespace, settings: Settings) -> int:
    async def run() -> int:
        store = _existing_store(settings.db)
        if store is None:
            return 1
        await store.open()
        try:
            if args.id:
                record = await store.get_delivery(args.id)
                if record is None:
                    print(f"relay deliveries: no delivery {args.id}", file=sys.stderr)
                    return 1
                history = await store.attempts(args.id)
                if args.json:
                    show = {**asdict(record), "attempt_log": [asdict(a) for a in history]}
                    print(json.dumps(show, indent=2))
                    return 0
                print(_table([record]))
                print("\nattempts:")
                # Numbered in order: a replay starts the retry count again, not the history.
                for n, a in enumerate(history, start=1):
                    print(f"  #{n} {_when(a.finished_at)} {a.state}: {a.detail}")
                return 0
            rows = await store.list_deliveries(args.state, args.limit)
        finally:
            await store.close()
        if args.json:
            print(json.dumps([asdict(r) for r in rows], indent=2))
        elif rows:
            print(_table(rows))
        else:
            print("no deliveries" + (f" in state {args.state}" if args.state else ""))
        return 0

    return _with_store_errors(run)


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    async def run() -> int:
        store = _existing_store(settings.db)
        if store is None:
            return 1
        await store.open()
        try:
            ids = list(args.ids)
            if args.all_dead:
                dead = [r.id for r in await store.list_deliveries("dead", limit=1_000_000)]
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
        finally:
            await store.close()

    return _with_store_errors(run)


def _with_store_errors(run: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        return asyncio.run(run())
    except StoreUnavailableError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relay", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, *, db: bool = True) -> None:
        sp.add_argument("--rules", type=Path, help="rules folder (RELAY_RULES, default rules)")
        if db:
            sp.add_argument("--db", help="database URL (RELAY_DB, default sqlite:///relay.db)")

    s = sub.add_parser("serve", help="receive callbacks and deliver them")
    common(s)
    s.add_argument("--host", help="address to bind (RELAY_HOST, default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (RELAY_PORT or PORT, default 8000)")
    s.add_argument("--access-log", action="store_true", help="log every HTTP request")
    s.add_argument(
        "--no-dispatch",
        dest="dispatch",
        action="store_false",
        default=None,
        help="receive only; `relay worker` processes deliver (RELAY_DISPATCH=0)",
    )
    s.set_defaults(func=cmd_serve)

    w = sub.add_parser("worker", help="deliver only: dispatch due deliveries from the database")
    common(w)
    w.set_defaults(func=cmd_worker)

    c = sub.add_parser("check", help="validate the rules and report every problem")
    common(c, db=False)
    c.set_defaults(func=cmd_check)

    t = sub.add_parser("test", help="dry run: normalize, route and render a payload file")
    common(t, db=False)
    t.add_argument("--source", required=True, help="configured source name")
    t.add_argument("file", help="JSON body as the provider would POST it")
    t.set_defaults(func=cmd_test)

    d = sub.add_parser("deliveries", help="list deliveries, or show one with its attempts")
    common(d)
    d.add_argument("id", nargs="?", help="show this delivery and its attempts")
    d.add_argument("--state", choices=DELIVERY_STATES)
    d.add_argument("--limit", type=int, default=50)
    d.add_argument("--json", action="store_true", help="JSON instead of a table")
    d.set_defaults(func=cmd_deliveries)

    r = sub.add_parser("replay", help="make dead deliveries pending again")
    common(r)
    r.add_argument("ids", nargs="*", metavar="DELIVERY_ID")
    r.add_argument("--all-dead", action="store_true", help="replay every dead delivery")
    r.set_defaults(func=cmd_replay)
    return p


def _rename_uvicorn(record: logging.LogRecord) -> bool:
    # uvicorn logs its ordinary start and stop lines as "uvicorn.error", which reads as a fault.
    if record.name == "uvicorn.error":
        record.name = "uvicorn"
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    overrides = {
        key: getattr(args, key)
        for key in ("rules", "db", "host", "port", "dispatch")
        if getattr(args, key, None) is not None
    }
    settings = replace(settings, **overrides)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_rename_uvicorn)
    code: int = args.func(args, settings)
    return code


if __name__ == "__main__":
    sys.exit(main())
