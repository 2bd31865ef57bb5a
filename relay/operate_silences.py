"""``relay silence``: make, list and end silences, and release what they hold (README:
Silences). The same operations as the admin API's ``/admin/silences``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

from relay.admin import silences
from relay.admin.params import parse_moment
from relay.errors import ConfigError
from relay.ids import IdFactory
from relay.operate import columns, print_problems, when, with_store
from relay.settings import Settings
from relay.store.base import Store


def cmd_silence(args: argparse.Namespace, settings: Settings) -> int:
    action = {"add": _add, "list": _list, "expire": _expire, "release": _release}[args.action]
    return action(args, settings)


def _add(args: argparse.Namespace, settings: Settings) -> int:
    from relay.providers import default_providers
    from relay.providers.checks import source_checks
    from relay.routing.loader import load_rules

    providers = default_providers()
    try:
        rules = load_rules(
            settings.rules, os.environ, providers.keys(), source_checks(providers)
        ).rules
    except ConfigError as exc:
        print_problems(exc)
        return 1
    now = time.time()
    try:
        ends = parse_moment(args.until, now) if args.until else None
        starts = parse_moment(args.starts, now) if args.starts else None
    except ValueError as exc:
        print(f"relay silence add: {exc}", file=sys.stderr)
        return 2
    if args.duration is None and ends is None:
        print("relay silence add: say how long (--for 2h) or until when (--until)", file=sys.stderr)
        return 2

    async def work(store: Store) -> int:
        try:
            made = await silences.create(
                store,
                rules,
                matchers=args.matchers,
                duration=args.duration,
                ends_at=ends,
                starts_at=starts,
                comment=args.comment or "",
                created_by=args.by or os.environ.get("USER", "cli"),
                now=now,
                ids=IdFactory(),
            )
        except silences.SilenceError as exc:
            print(f"relay silence add: {exc}", file=sys.stderr)
            return 2
        print(
            f"{made.id}: silencing {', '.join(made.matchers)} from {when(made.starts_at)} "
            f"until {when(made.ends_at)}"
        )
        return 0

    return with_store(settings, work)


def _list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(store: Store) -> int:
        now = time.time()
        views = await silences.listing(store, now, include_ended=args.all)
        if args.json:
            from relay.admin import schemas

            out = [schemas.SilenceOut.of(v, now).model_dump(mode="json") for v in views]
            print(json.dumps({"silences": out}, indent=2, ensure_ascii=False))
            return 0
        if not views:
            print("no silences" if args.all else "no silences in force (--all: ended ones too)")
            return 0
        headers = ["ID", "STATE", "HELD", "UNTIL", "MATCHERS", "COMMENT"]
        lines = [
            [
                v.silence.id,
                v.state(now),
                str(v.held),
                when(v.silence.ends_at),
                " ".join(v.silence.matchers),
                v.silence.comment,
            ]
            for v in views
        ]
        print(columns(headers, lines))
        return 0

    return with_store(settings, work)


def _expire(args: argparse.Namespace, settings: Settings) -> int:
    async def work(store: Store) -> int:
        now = time.time()
        found = await silences.expire(store, args.id, now)
        if found is None:
            print(f"relay silence expire: no silence {args.id}", file=sys.stderr)
            return 1
        line = f"{args.id}: ended; it holds {_deliveries(found.held)}"
        if args.release:
            released = await silences.release(store, args.id, now)
            line = f"{args.id}: ended; released {_deliveries(released, 'held ')} (due now)"
        elif found.held:
            line += f" (send them with `relay silence release {args.id}`)"
        print(line)
        return 0

    return with_store(settings, work)


def _release(args: argparse.Namespace, settings: Settings) -> int:
    async def work(store: Store) -> int:
        released = await silences.release(store, args.holder, time.time())
        print(f"{args.holder}: released {_deliveries(released, 'held ')} (due now)")
        return 0

    return with_store(settings, work)


def _deliveries(n: int, what: str = "") -> str:
    return f"{n} {what}delivery" if n == 1 else f"{n} {what}deliveries"


Adder = Callable[[argparse.ArgumentParser], None]


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], rules: Adder, db: Adder
) -> None:
    """The ``silence`` command and its actions; ``rules`` and ``db`` add the shared options."""
    p = sub.add_parser("silence", help="hold the deliveries of matching events for a while")
    actions = p.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="add, list, expire or release"
    )
    a = actions.add_parser(
        "add", help="silence matching events: relay silence add 'provider=\"goapi\"' --for 2h"
    )
    rules(a)
    db(a)
    a.add_argument("matchers", nargs="+", metavar="MATCHER", help="matchers, all must hold")
    a.add_argument("--for", dest="duration", metavar="DURATION", help="how long: 30m, 2h, 1d")
    a.add_argument("--until", metavar="WHEN", help="or until when (ISO 8601, unix seconds)")
    a.add_argument("--starts", metavar="WHEN", help="when it starts (default now)")
    a.add_argument("--comment", metavar="TEXT", help="why (shown with the held deliveries)")
    a.add_argument("--by", metavar="NAME", help="who (default $USER)")
    ls = actions.add_parser("list", help="the silences in force, with what each holds")
    db(ls)
    ls.add_argument("--all", action="store_true", help="ended ones too")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table")
    x = actions.add_parser("expire", help="end a silence now")
    db(x)
    x.add_argument("id", metavar="SILENCE_ID", help="the silence to end (relay silence list)")
    x.add_argument("--release", action="store_true", help="and send what it held, now")
    r = actions.add_parser(
        "release", help="send what a silence (or a route's mute window, mute:N) holds"
    )
    db(r)
    r.add_argument(
        "holder", metavar="SILENCE_ID|mute:N", help="a silence's id, or mute:N for route N"
    )
    p.set_defaults(func=cmd_silence)
