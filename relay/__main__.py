"""The command line: serve, worker, check, test, deliveries, replay, events, reprocess, rejected."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from relay import __version__
from relay.admin.params import MOMENT_HELP
from relay.digest import group_of
from relay.errors import (
    ConfigError,
    RequestError,
    StoreUnavailableError,
    UnreadableCallbackError,
)
from relay.events import STATUSES
from relay.logs import LOG_FORMATS, choose_format, setup_logging
from relay.operate import (
    age_argument,
    cmd_deliveries,
    cmd_events,
    cmd_prune,
    cmd_purge,
    cmd_rejected,
    cmd_replay,
    cmd_reprocess,
    print_problems,
)
from relay.operate_silences import add_parser as add_silence_parser
from relay.providers import default_providers
from relay.providers.checks import source_checks
from relay.routing.coverage import matching_routes, shadowed
from relay.routing.loader import LoadedRules, load_rules
from relay.settings import Settings, SettingsError
from relay.store.base import DELIVERY_STATES
from relay.workers import WorkerPool, worker_command

if TYPE_CHECKING:
    from relay.runtime import Runtime


def _load(rules_dir: Path) -> LoadedRules:
    providers = default_providers()
    return load_rules(rules_dir, os.environ, providers.keys(), source_checks(providers))


def _preflight(settings: Settings) -> bool:
    """Build the runtime once before starting (rules loaded, store opened and migrated), so
    broken rules, a bad path or an unreachable database is one clear message rather than a
    traceback."""
    from relay.runtime import build_runtime

    async def build() -> None:
        async with build_runtime(settings, dispatch=False, notes=False):
            pass

    try:
        asyncio.run(build())
    except ConfigError as exc:
        print_problems(exc)
        return False
    except (ValueError, StoreUnavailableError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return False
    return True


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from relay.app import create_app
    from relay.http_limits import guarded_protocol
    from relay.metrics import Metrics
    from relay.metrics_peers import PeerMetrics

    workers = _worker_count(settings)
    if isinstance(workers, str):
        print(f"relay: {workers}", file=sys.stderr)
        return 2
    if workers:
        # The workers deliver: this process only receives.
        settings = replace(settings, dispatch=False)
    if not _preflight(settings):
        return 2
    sockets: tempfile.TemporaryDirectory[str] | None = None
    pool = peers = None
    if workers:
        # Each worker's counters, read by this process's /metrics, on a socket of its own in
        # a folder only this user can enter.
        sockets = tempfile.TemporaryDirectory(prefix="relay-serve-")
        paths = [os.path.join(sockets.name, f"worker-{slot + 1}.sock") for slot in range(workers)]
        peers = PeerMetrics(paths)
        pool = _worker_pool(settings, workers, paths)
        pool.start()
    # Built here, not at startup: the HTTP protocol counts its refusals there too.
    metrics = Metrics(peers)

    def refused(status: int) -> None:
        metrics.http_refused.labels(status=str(status)).inc()

    config = uvicorn.Config(
        create_app(settings, metrics=metrics),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=args.access_log,
        # uvicorn's lines go through our logging set-up: one format in the log.
        log_config=None,
        # Providers must never wait long: keep the server's own limits tight.
        timeout_keep_alive=30,
        # SIGTERM: stop accepting, let open requests finish this long (whole seconds, as
        # uvicorn takes it); then the lifespan gives the dispatcher's sends the grace again.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        # The client address (allow_ips, logs) is the connection's unless RELAY_TRUSTED_PROXIES
        # names the proxies in front: uvicorn's default trusts X-Forwarded-For from loopback,
        # which anything on the same host could forge.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies) or None,
        # The internet's clients: bounded heads (size, time) and connections.
        http=guarded_protocol(settings.max_header_bytes, settings.header_timeout, refused),
        limit_concurrency=settings.max_connections,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the SIGTERM it shut down on, to the handler it found: with workers to
    # stop first, that handler only notes it, and the signal is raised again after them.
    terminated: list[int] = []
    if pool is not None:
        signal.signal(signal.SIGTERM, lambda sig, _: terminated.append(sig))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn has shut down cleanly, then re-raised the Ctrl-C
        return 130
    finally:
        if pool is not None:
            pool.stop()
        if sockets is not None:
            sockets.cleanup()
        if pool is not None and terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)
    return 0 if server.started else 1


def _worker_count(settings: Settings) -> int | str:
    """How many worker processes ``relay serve`` starts, or why the settings cannot be served.
    By default one, on a database the processes can share and when this one would dispatch;
    none on memory:// or with dispatching turned off (``--no-dispatch``, RELAY_DISPATCH=0)."""
    memory = settings.db.startswith("memory:")
    if settings.workers is None:
        return 0 if memory or not settings.dispatch else 1
    if settings.workers and memory:
        return "--workers needs a shared database, not memory:// (--workers 0: one process)"
    if settings.workers and not settings.dispatch:
        return "--workers and --no-dispatch: choose one"
    return settings.workers


def _worker_pool(settings: Settings, count: int, sockets: list[str]) -> WorkerPool:
    """``count`` ``relay worker`` processes, with this process's settings (the command line's
    included); no metrics port (each worker would want the same one): each serves its counters
    on its socket of ``sockets`` instead."""
    from relay.metrics_peers import SOCKET_VARIABLE
    from relay.worker import PARENT_VARIABLE

    resolved = {
        "RELAY_DB": settings.db,
        "RELAY_RULES": str(settings.rules),
        "RELAY_LOG_LEVEL": settings.log_level,
        "RELAY_LOG_FORMAT": choose_format(settings.log_format, sys.stderr),
        PARENT_VARIABLE: str(os.getpid()),
    }
    command, env = worker_command(resolved)
    for name in ("RELAY_METRICS_PORT", "RELAY_WORKERS", "RELAY_DISPATCH"):
        env.pop(name, None)
    return WorkerPool(
        count,
        command,
        env,
        settings.shutdown_grace,
        slot_env=lambda slot: {SOCKET_VARIABLE: sockets[slot]},
    )


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
        print_problems(exc)
        return 1
    rules = loaded.rules
    print(
        f"rules OK: {len(rules.sources)} source(s), {len(rules.destinations)} destination(s), "
        f"{len(rules.routes)} route(s) from {', '.join(str(f) for f in loaded.files)}"
    )
    for line in loaded.defaults_used:
        print(f"  note: {line}")
    where = [f"{file}: routes[{index}]" for file, index in loaded.route_origins]
    for shadow in shadowed(rules.routes):
        print(
            f"  warning: {where[shadow.index]} never matches: {where[shadow.by]} comes first, "
            "catches every event it would and does not continue"
        )
    if args.fixtures is None:
        return 0
    directory = Path(args.fixtures)
    samples = {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*.json"))
        if not p.name.endswith(".headers.json") and p.name != "expected.json"
    }
    if not samples:
        print(f"relay check: no *.json samples under {directory}", file=sys.stderr)
        return 2
    return asyncio.run(_fixture_coverage(settings, directory, samples, where))


async def _fixture_coverage(
    settings: Settings, directory: Path, samples: dict[str, bytes], where: list[str]
) -> int:
    """Route each sample callback (``<provider>/…/*.json``, as in tests/fixtures/providers)
    at every source of its provider; print what each route catches."""
    from relay.providers.base import Ignored, Inbound
    from relay.runtime import build_runtime

    async with build_runtime(settings, dry_run=True, notes=False) as runtime:
        rules, receiver = runtime.rulebook.rules, runtime.receiver
        caught: list[list[str]] = [[] for _ in rules.routes]
        unrouted: list[str] = []
        for name, body in samples.items():
            provider = name.split("/", 1)[0]
            for source, config in sorted(rules.sources.items()):
                if config.provider != provider:
                    continue
                inbound = Inbound(
                    source=source,
                    config=config,
                    headers={},
                    body=body,
                    received_at=datetime.now(UTC),
                    verify=False,
                )
                try:
                    event = receiver.normalize(inbound, verify=False)
                except (RequestError, UnreadableCallbackError):
                    continue
                if isinstance(event, Ignored):
                    continue
                routes = matching_routes(rules.routes, event.match_labels())
                label = name if len(rules.sources) == 1 else f"{name} at {source}"
                for index in routes:
                    caught[index].append(label)
                if not routes:
                    unrouted.append(label)
    print(f"\nsamples under {directory} caught by each route:")
    for index, names in enumerate(caught):
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        print(f"  {where[index]}: {len(names)} {'(' + shown + ')' if names else ''}".rstrip())
    if unrouted:
        print(f"  no route: {len(unrouted)} ({', '.join(unrouted[:8])})")
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
    from relay.runtime import build_runtime

    try:
        async with build_runtime(settings, dry_run=True) as runtime:
            return await _show_dry_run(args, runtime, body)
    except ConfigError as exc:
        print_problems(exc)
        return 2


async def _show_dry_run(args: argparse.Namespace, runtime: Runtime, body: bytes) -> int:
    """What ``body`` would become at source ``args.source``: the event, then each request;
    with ``--send``, each delivery's outcome. 0: as expected; 1: refused or quarantined;
    2: usage; 3: routed otherwise than ``--expect-destinations``, or a send failed."""
    from relay.channels.base import Delivery
    from relay.errors import DeliveryDeferred, DeliveryError
    from relay.ids import IdFactory
    from relay.providers.base import Ignored, Inbound
    from relay.receiver import final_dedupe_key, url_labels

    book, receiver = runtime.rulebook, runtime.receiver
    config = book.rules.sources.get(args.source)
    if config is None:
        known = ", ".join(sorted(book.rules.sources)) or "none"
        print(f"relay test: unknown source '{args.source}' (known: {known})", file=sys.stderr)
        return 2
    query: dict[str, str] = {}
    for item in (args.labels or "").split(","):
        if item.strip():
            name, sep, value = item.strip().partition("=")
            if not sep:
                print(f"relay test: --labels: '{item}' is not NAME=VALUE", file=sys.stderr)
                return 2
            query[name] = value
    undeclared = sorted(set(query) - set(config.labels))
    if undeclared:
        declared = ", ".join(sorted(config.labels)) or "none"
        print(
            f"relay test: --labels: source '{args.source}' does not declare "
            f"{', '.join(undeclared)} (declared: {declared})",
            file=sys.stderr,
        )
        return 2
    inbound = Inbound(
        source=args.source,
        config=config,
        headers={},
        body=body,
        received_at=datetime.now(UTC),
        query=query,
        verify=False,
    )
    try:
        event = receiver.normalize(inbound, verify=False)
        if not isinstance(event, Ignored):
            event.labels = url_labels(inbound)
    except RequestError as exc:
        print(f"relay test: would answer {exc.status}: {exc.reason}", file=sys.stderr)
        return 1
    except UnreadableCallbackError as exc:
        print(
            f"relay test: would answer 200 and quarantine it (relay events --quarantined): "
            f"{exc.reason}",
            file=sys.stderr,
        )
        return 1
    if isinstance(event, Ignored):
        print(f"would answer 200 and ignore it: {event.reason}")
        return 0
    if event.final:
        event.dedupe_key = final_dedupe_key(event)
    summary = event.model_dump(mode="json", exclude={"raw"})
    print("event:")
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    targets = receiver.targets(event)
    if not targets:
        print("\nno route matches: the event would be stored and sent nowhere")
    failed = 0
    for target in targets:
        channel = book.routing.channels[target.destination]
        mentions = book.routing.mentions_for(target.route, event)
        template = book.routing.templates.get(target.route)
        delivery = Delivery(
            IdFactory()("dlv"), target.destination, 1, event, mentions, template=template
        )
        print(f"\n--- to {target.destination} (route #{target.route + 1}) ---")
        grouping = book.routing.groups.get(target.route)
        group = group_of(target.route, grouping, event) if grouping else None
        if grouping is not None and group is not None:
            # The real thing sends a digest; the event's own message is shown for its content.
            print(
                f"grouped by {', '.join(grouping.by)}: joins digest {group} (one message per "
                f"window: first after {grouping.wait:g}s, closed after {grouping.interval:g}s "
                f"quiet or {grouping.close_after} events); this event alone would show as:"
            )
        elif grouping is not None:
            print(f"not grouped: it lacks a label of {', '.join(grouping.by)}, sent on its own")
        try:
            print(channel.render(delivery))
        except DeliveryError as exc:
            # A template that fails for this event: what a send would record as dead.
            failed += 1
            print(f"NOT renderable, would be dead (permanent): {exc.reason}")
            continue
        if args.send:
            try:
                await channel.send(delivery)
                print(f"sent to {target.destination}")
            except DeliveryError as exc:
                failed += 1
                kind = "transient" if exc.transient else "permanent"
                print(f"NOT sent to {target.destination} ({kind}): {exc.reason}")
            except DeliveryDeferred as exc:
                failed += 1
                print(f"NOT sent to {target.destination}: {exc}")
    code = 3 if failed else 0
    if args.expect_destinations is not None:
        expected = sorted({d.strip() for d in args.expect_destinations.split(",") if d.strip()})
        got = sorted({t.destination for t in targets})
        if got != expected:
            print(
                f"\nrouting differs: expected {', '.join(expected) or 'none'}, "
                f"got {', '.join(got) or 'none'}",
                file=sys.stderr,
            )
            code = 3
    return code


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be 0 to 64: {value}")
    return value


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relay", description=__doc__)
    p.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def rules(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--rules", type=Path, metavar="DIR", help="rules folder (RELAY_RULES, default rules)"
        )

    def db(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--db", metavar="URL", help="database URL (RELAY_DB, default sqlite:///relay.db)"
        )

    def listing(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument(
            "--limit",
            type=_positive,
            default=50,
            metavar="N",
            help=f"show at most N {what}, newest first (default 50)",
        )
        sp.add_argument("--json", action="store_true", help="JSON instead of a table")

    def log_format(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--log-format",
            choices=LOG_FORMATS,
            help="log lines as JSON objects or text (RELAY_LOG_FORMAT; default: JSON unless "
            "stderr is a terminal)",
        )

    def window(sp: argparse.ArgumentParser, what: str) -> None:
        sp.add_argument("--destination", metavar="NAME", help=f"only {what} to this destination")
        sp.add_argument(
            "--since", metavar="WHEN", help=f"only {what} created since WHEN: {MOMENT_HELP}"
        )
        sp.add_argument("--until", metavar="WHEN", help=f"only {what} created before WHEN")

    s = sub.add_parser("serve", help="receive callbacks and deliver them")
    rules(s)
    db(s)
    s.add_argument("--host", help="address to bind (RELAY_HOST, default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (RELAY_PORT or PORT, default 8000)")
    s.add_argument("--access-log", action="store_true", help="log every HTTP request")
    log_format(s)
    s.add_argument(
        "--no-dispatch",
        dest="dispatch",
        action="store_false",
        default=None,
        help="receive only; `relay worker` processes deliver (RELAY_DISPATCH=0)",
    )
    s.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="deliver from N worker processes beside this one, which then only receives "
        "(RELAY_WORKERS; default 1; 0: deliver in this process)",
    )
    s.set_defaults(func=cmd_serve)

    w = sub.add_parser("worker", help="deliver only: dispatch due deliveries from the database")
    rules(w)
    db(w)
    w.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve GET /metrics and /healthz on this port, at RELAY_HOST's address "
        "(RELAY_METRICS_PORT; default: none)",
    )
    log_format(w)
    w.set_defaults(func=cmd_worker)

    c = sub.add_parser("check", help="validate the rules and report every problem")
    rules(c)
    c.add_argument(
        "--fixtures",
        metavar="DIR",
        help="also show which sample callbacks (DIR/<provider>/…/*.json) each route catches",
    )
    c.set_defaults(func=cmd_check)

    t = sub.add_parser("test", help="dry run: normalize, route and render a payload file")
    rules(t)
    t.add_argument("--source", required=True, metavar="NAME", help="configured source name")
    t.add_argument("file", metavar="FILE", help="JSON body as the provider would POST it")
    t.add_argument(
        "--labels",
        metavar="NAME=VALUE,...",
        help="labels in the callback URL's query string, as the source declares them",
    )
    t.add_argument(
        "--expect-destinations",
        metavar="A,B",
        help="exit 3 unless the event is routed to exactly these destinations (none: '')",
    )
    t.add_argument(
        "--send",
        action="store_true",
        help="deliver for real to each destination (a fire drill); nothing is stored",
    )
    t.set_defaults(func=cmd_test)

    d = sub.add_parser("deliveries", help="list deliveries, or show one with its attempts")
    db(d)
    d.add_argument(
        "id", nargs="?", metavar="DELIVERY_ID", help="show this delivery and its attempts"
    )
    d.add_argument("--state", choices=DELIVERY_STATES, help="only deliveries in this state")
    window(d, "deliveries")
    listing(d, "deliveries")
    d.set_defaults(func=cmd_deliveries)

    r = sub.add_parser(
        "replay",
        help="make dead (or delivered) deliveries pending again: by id or by filter",
    )
    db(r)
    r.add_argument(
        "ids", nargs="*", metavar="DELIVERY_ID", help="dead or delivered deliveries to replay"
    )
    r.add_argument("--all-dead", action="store_true", help="replay every dead delivery")
    r.add_argument(
        "--state",
        choices=("dead", "delivered", "silenced"),
        help="with a filter: replay deliveries in this state (default dead)",
    )
    window(r, "deliveries")
    r.add_argument(
        "--dry-run", action="store_true", help="say what would be replayed, change nothing"
    )
    r.set_defaults(func=cmd_replay)

    e = sub.add_parser("events", help="list received events, or quarantined callbacks")
    db(e)
    e.add_argument(
        "--quarantined",
        action="store_true",
        help="verified callbacks no adapter could read, kept for `relay reprocess`",
    )
    e.add_argument(
        "--all", action="store_true", help="with --quarantined: the reprocessed ones too"
    )
    e.add_argument("--source", metavar="NAME", help="only events of this source")
    e.add_argument("--provider", metavar="NAME", help="only events of this provider")
    e.add_argument("--status", choices=STATUSES, help="only events with this status")
    e.add_argument("--task", metavar="TASK_ID", help="only events of this task")
    e.add_argument("--model", metavar="MODEL", help="only events of this model")
    e.add_argument(
        "--label",
        action="append",
        metavar="NAME=VALUE",
        help="only events with this label from the hook URL (repeat to require several)",
    )
    e.add_argument("--since", metavar="WHEN", help=f"received since: {MOMENT_HELP}")
    e.add_argument("--until", metavar="WHEN", help="received before WHEN")
    listing(e, "events")
    e.set_defaults(func=cmd_events)

    add_silence_parser(sub, rules, db)

    j = sub.add_parser(
        "rejected", help="refused requests, newest first: why a callback did not arrive"
    )
    db(j)
    j.add_argument("--source", metavar="NAME", help="only requests to this source")
    listing(j, "refused requests")
    j.set_defaults(func=cmd_rejected)

    q = sub.add_parser(
        "reprocess", help="read quarantined callbacks again, then route and deliver them"
    )
    rules(q)
    db(q)
    q.add_argument(
        "ids", nargs="*", metavar="QUARANTINE_ID", help="quarantined callbacks to read again"
    )
    q.add_argument("--all", action="store_true", help="every callback still quarantined")
    log_format(q)
    q.set_defaults(func=cmd_reprocess)

    pr = sub.add_parser("prune", help="remove delivered events older than the retention")
    rules(pr)
    db(pr)
    pr.add_argument(
        "--before",
        type=age_argument,
        metavar="AGE",
        help="received over AGE ago (e.g. 7d, 12h; default: the retention, RELAY_RETENTION "
        "or the rules' retention.delivered)",
    )
    pr.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    pr.set_defaults(func=cmd_prune)

    pu = sub.add_parser("purge", help="remove dead deliveries (and then empty events) for good")
    db(pu)
    pu.add_argument("--dead", action="store_true", required=True, help="dead deliveries")
    pu.add_argument(
        "--before",
        type=age_argument,
        required=True,
        metavar="AGE",
        help="that died over AGE ago (e.g. 30d)",
    )
    pu.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    pu.set_defaults(func=cmd_purge)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"relay: {problem}", file=sys.stderr)
        return 2
    overrides = {
        key: getattr(args, key)
        for key in (
            "rules",
            "db",
            "host",
            "port",
            "dispatch",
            "metrics_port",
            "log_format",
            "workers",
        )
        if getattr(args, key, None) is not None
    }
    settings = replace(settings, **overrides)
    setup_logging(settings)
    code: int = args.func(args, settings)
    return code


if __name__ == "__main__":
    sys.exit(main())
