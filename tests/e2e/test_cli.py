"""The command line run for real: ``python -m relay ...`` as a subprocess in a tmp folder.

Every run has a timeout. The tests assert on exit codes and on the text a user reads.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.downstream import Downstream
from tests.e2e.cli import (
    DOWN_SECRET,
    GOAPI_SECRET,
    REPO,
    Serve,
    arelay,
    base_env,
    free_port,
    relay,
    write,
)
from tests.fixtures_util import FIXTURES, load

# --- the command line as a whole -----------------------------------------------------------


def test_version() -> None:
    from relay import __version__

    r = relay(REPO, "--version")
    assert r.code == 0 and r.out.strip() == f"relay {__version__}"


def test_every_option_and_argument_of_every_command_has_help() -> None:
    import argparse

    from relay.__main__ import parser

    top = parser()
    [commands] = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) >= {"serve", "worker", "check", "test", "deliveries", "replay"}
    assert {"events", "reprocess"} <= set(commands.choices)
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"relay {name}: {action.option_strings or action.dest} has no help"
        # Shown to a person, too.
        shown = relay(REPO, name, "--help")
        assert shown.code == 0 and "usage: relay " + name in shown.out


@pytest.mark.parametrize("command", ["serve", "check", "worker", "events"])
def test_a_bad_environment_variable_is_one_line_and_exit_2(tmp_path: Path, command: str) -> None:
    r = relay(tmp_path, command, env=base_env(RELAY_PORT="abc", RELAY_LOG_LEVEL="verbose"))
    assert r.code == 2
    assert r.err.splitlines() == [
        "relay: RELAY_PORT='abc': must be a whole number",
        "relay: RELAY_LOG_LEVEL='verbose': must be one of debug, info, warning, error, critical",
    ]
    assert r.out == ""


@pytest.mark.parametrize("command", ["deliveries", "replay", "events"])
def test_commands_that_read_no_rules_take_no_rules_option(tmp_path: Path, command: str) -> None:
    r = relay(tmp_path, command, "--rules", "rules")
    assert r.code == 2 and "unrecognized arguments: --rules" in r.err


def test_check_lists_every_problem_of_every_route_in_file_order(tmp_path: Path) -> None:
    write(
        tmp_path / "rules",
        {
            "rules.yaml": (
                "smtp:\n  host: ${SMTP_HOST}\n  from: ${SMTP_FROM}\n"
                "destinations:\n  oncall: {type: email, to: [oncall@example.com]}\n"
                "routes:\n  - to: [oncall, pager]\n    bogus: 1\n  - to: [gone]\n"
            )
        },
    )
    r = relay(tmp_path, "check", "--rules", "rules")
    assert r.code == 1
    lines = [line.strip().removeprefix("rules/rules.yaml: ") for line in r.err.splitlines()]
    assert lines[0] == "rules: 5 problem(s):"
    assert [line.split(":")[0] for line in lines[1:]] == [
        "smtp.host",
        "smtp.from",
        "routes[0].to",
        "routes[0].bogus",
        "routes[1].to",
    ]
    assert "unknown destination 'pager'" in lines[3] and "unknown destination 'gone'" in lines[5]


# --- relay check ----------------------------------------------------------------------------


def test_check_on_the_shipped_rules_uses_the_defaults_and_says_so(tmp_path: Path) -> None:
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    r = relay(tmp_path, "check", "--rules", "rules")
    assert r.code == 0, r.err
    first = r.out.splitlines()[0]
    assert first.startswith("rules OK: 5 source(s), 1 destination(s), 2 route(s)"), r.out
    assert "rules/example.yaml" in first
    for variable in (
        "GOAPI_WEBHOOK_SECRET",
        "PIAPI_WEBHOOK_SECRET",
        "DOWNSTREAM_URL",
        "DOWNSTREAM_WHSEC",
        "APIMART_HOOK_TOKEN",
        "MUAPI_HOOK_TOKEN",
        "NOVITA_HOOK_TOKEN",
    ):
        assert f"uses the default of ${{{variable}}}" in r.out
    # The notes name the variable, never the default's value (some are development secrets).
    assert "s3cr3t-relay-goapi" not in r.text
    assert "whsec_" not in r.text


def test_check_with_the_variables_set_has_no_notes(tmp_path: Path) -> None:
    shutil.copytree(REPO / "rules", tmp_path / "rules")
    env = base_env(
        GOAPI_WEBHOOK_SECRET="prod-goapi",
        PIAPI_WEBHOOK_SECRET="prod-piapi",
        DOWNSTREAM_URL="https://down.example.com/relay",
        DOWNSTREAM_WHSEC=DOWN_SECRET,
        APIMART_HOOK_TOKEN="prod-apimart-token",
        MUAPI_HOOK_TOKEN="prod-muapi-token",
        NOVITA_HOOK_TOKEN="prod-novita-token",
    )
    r = relay(tmp_path, "check", "--rules", "rules", env=env)
    assert r.code == 0, r.err
    assert r.out.startswith("rules OK:")
    assert "note:" not in r.out


LEAKY_SECRET = "not-a-whsec-Sup3rS3cretValue"  # a real secret pasted into the wrong place
PI_SECRET = "pi-literal-S3cretInTheFile"

BROKEN = {
    "a.yaml": f"""
sources:
  goapi:
    provider: goapi
    secret: ${{UNSET_GOAPI_SECRET}}
  piapi:
    provider: piapi
    secret: {PI_SECRET}
    colour: blue
destinations:
  down:
    type: webhook
    url: http://127.0.0.1:9/hook
    secret: {LEAKY_SECRET}
""",
    "b.yaml": """
routes:
  - match: ['model=~"(flux"']
    to: [down]
  - to: [down, nowhere]
""",
}


def test_check_lists_every_problem_with_file_and_key_and_no_secret(tmp_path: Path) -> None:
    write(tmp_path / "rules", BROKEN)
    r = relay(tmp_path, "check", "--rules", "rules")
    assert r.code == 1, r.text
    assert r.out == ""
    lines = r.err.splitlines()
    assert lines[0] == "rules: 5 problem(s):", r.err
    expected = [
        ("rules/a.yaml: sources.goapi.secret:", "UNSET_GOAPI_SECRET is not set"),
        ("rules/a.yaml: sources.piapi.colour:", "unknown key"),
        ("rules/a.yaml: destinations.down.secret:", "must start with whsec_"),
        ("rules/b.yaml: routes[0].match:", "bad regex"),
        ("rules/b.yaml: routes[1].to:", "unknown destination 'nowhere' (known: down)"),
    ]
    for where, what in expected:
        matching = [line for line in lines if line.strip().startswith(where)]
        assert len(matching) == 1, (where, r.err)
        assert what in matching[0], (what, matching[0])
    assert LEAKY_SECRET not in r.text
    assert PI_SECRET not in r.text


def test_check_on_a_missing_folder(tmp_path: Path) -> None:
    r = relay(tmp_path, "check", "--rules", "nope")
    assert r.code == 1
    assert "nope: no such directory" in r.err


# --- relay test -----------------------------------------------------------------------------

DRY_RULES = """
sources:
  goapi:
    provider: goapi
    secret: ${GOAPI_SECRET}
destinations:
  down:
    type: webhook
    url: https://down.example.com/hooks/tasks
    secret: ${DOWN_SECRET}
routes:
  - match: ['status="succeeded"', 'final="true"']
    to: [down]
"""
FLUX = FIXTURES / "goapi" / "image_success_flux.json"
FLUX_IMAGE = "https://img.theapi.app/temp/10f0a646-6155-4938-bf50-76934c953e9c.png"


@pytest.fixture
def dry(tmp_path: Path) -> Path:
    write(tmp_path / "rules", {"rules.yaml": DRY_RULES})
    return tmp_path


def dry_env() -> dict[str, str]:
    return base_env(GOAPI_SECRET=GOAPI_SECRET, DOWN_SECRET=DOWN_SECRET)


def test_dry_run_prints_the_event_the_destination_and_the_signed_envelope(dry: Path) -> None:
    fixture = json.loads(FLUX.read_text())
    assert fixture["timestamp"] < time.time() - 3600  # far outside any replay window
    r = relay(dry, "test", "--rules", "rules", "--source", "goapi", str(FLUX), env=dry_env())
    assert r.code == 0, r.err

    assert r.out.startswith("event:\n")
    # The event, then one section per destination: "--- to <name> (route ...) ---".
    event_text, *sections = re.split(r"\n\n--- to (\S+) \(route [^)]*\) ---\n", r.out[7:])
    assert sections[::2] == ["down"], r.out
    rest = sections[1]
    event = json.loads(event_text)
    assert event["status"] == "succeeded" and event["final"] is True
    assert event["source"] == "goapi" and event["task_id"] == fixture["data"]["task_id"]
    assert event["outputs"][0]["kind"] == "image"
    assert event["outputs"][0]["url"] == FLUX_IMAGE

    head, _, body_text = rest.partition("\n\n")
    request_line, *header_lines = head.split("\n")
    assert request_line == "POST https://down.example.com/hooks/tasks"
    headers = dict(line.split(": ", 1) for line in header_lines)
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"].startswith("dlv_")
    # Signed as a send would sign it: the reference verifier accepts the compact body.
    envelope = json.loads(body_text)
    compact = json.dumps(envelope, separators=(",", ":")).encode()
    assert Webhook(DOWN_SECRET).verify(compact, headers) == envelope
    assert envelope["type"] == "task.succeeded"
    assert envelope["timestamp"].endswith("Z")
    assert envelope["data"]["outputs"][0]["url"] == FLUX_IMAGE
    assert envelope["data"]["raw"]["data"]["config"]["webhook_config"]["secret"] == "[redacted]"

    assert GOAPI_SECRET not in r.text
    assert DOWN_SECRET not in r.text


@pytest.mark.parametrize("timestamp", ["drop", "garbage", "stale"])
def test_dry_run_checks_neither_secret_nor_timestamp(
    dry: Path, tmp_path: Path, timestamp: str
) -> None:
    body = json.loads(FLUX.read_text())
    if timestamp == "drop":
        del body["timestamp"]
    elif timestamp == "garbage":
        body["timestamp"] = "yesterday"
    else:
        body["timestamp"] = 1  # 1970
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps(body))
    r = relay(dry, "test", "--rules", "rules", "--source", "goapi", str(sample), env=dry_env())
    assert r.code == 0, r.err
    event = json.loads(re.split(r"\n\n--- to ", r.out[7:])[0])
    assert event["status"] == "succeeded"
    # What the relay would dedupe the event on: one success per task.
    assert event["dedupe_key"] == f"goapi:{body['data']['task_id']}:succeeded"


def test_dry_run_when_no_route_matches(dry: Path) -> None:
    progress = FIXTURES / "goapi" / "midjourney_processing_progress.json"
    r = relay(dry, "test", "--rules", "rules", "--source", "goapi", str(progress), env=dry_env())
    assert r.code == 0, r.err
    assert "no route matches: the event would be stored and sent nowhere" in r.out
    assert "--- to" not in r.out


def test_dry_run_of_an_unknown_source_lists_the_known_ones(dry: Path) -> None:
    r = relay(dry, "test", "--rules", "rules", "--source", "kling", str(FLUX), env=dry_env())
    assert r.code == 2
    assert "unknown source 'kling' (known: goapi)" in r.err
    assert r.out == ""


def test_dry_run_of_a_body_that_is_not_json_says_what_would_be_answered(dry: Path) -> None:
    (dry / "bad.json").write_text("{not json")
    r = relay(dry, "test", "--rules", "rules", "--source", "goapi", "bad.json", env=dry_env())
    assert r.code == 1
    assert "would answer 400" in r.err
    assert "invalid JSON" in r.err
    assert r.out == ""


def test_dry_run_of_a_missing_file(dry: Path) -> None:
    r = relay(dry, "test", "--rules", "rules", "--source", "goapi", "missing.json", env=dry_env())
    assert r.code == 2
    assert "cannot read missing.json" in r.err


def test_dry_run_with_broken_rules_lists_the_problems(dry: Path) -> None:
    r = relay(dry, "test", "--rules", "rules", "--source", "goapi", str(FLUX), env=base_env())
    assert r.code == 2
    assert "rules/rules.yaml: sources.goapi.secret" in r.err
    assert "GOAPI_SECRET is not set" in r.err


# --- relay serve, deliveries, replay --------------------------------------------------------

SERVE_RULES = """
sources:
  goapi:
    provider: goapi
    secret: ${GOAPI_SECRET}
destinations:
  down:
    type: webhook
    url: ${DOWN_URL}
    secret: ${DOWN_SECRET}
    timeout: 2s
    retry: {schedule: [100ms], jitter: 0}
routes:
  - match: ['final="true"']
    to: [down]
"""
HEADER = ["ID", "STATE", "DESTINATION", "SOURCE", "TASK", "STATUS", "TRIES", "NEXT", "ERROR"]


def delivery_states(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT id, state FROM deliveries").fetchall())
    except sqlite3.OperationalError:  # not created yet
        return {}
    finally:
        conn.close()


async def wait_for_state(db: Path, state: str, server: Serve, within: float = 15.0) -> str:
    """The id of the one delivery once it reaches ``state`` (bounded)."""
    deadline = time.monotonic() + within
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = delivery_states(db)
        if len(states) == 1 and state in states.values():
            return next(iter(states))
        await asyncio.sleep(0.1)
    raise AssertionError(f"no delivery became {state}: {states}\n{server.output()}")


@pytest.fixture
def serve_dir(tmp_path: Path) -> Path:
    return write(tmp_path / "rules", {"rules.yaml": SERVE_RULES}).parent


async def test_dead_delivery_listed_inspected_replayed_and_then_delivered(serve_dir: Path) -> None:
    cwd = serve_dir
    db = cwd / "relay.db"  # the default --db sqlite:///relay.db, relative to the cwd
    down_port = free_port()  # nothing listens here until the replay part
    env = base_env(
        GOAPI_SECRET=GOAPI_SECRET,
        DOWN_URL=f"http://127.0.0.1:{down_port}/hook",
        DOWN_SECRET=DOWN_SECRET,
        RELAY_LOG_LEVEL="warning",
    )

    # 1. A real relay takes a callback it cannot deliver: 2 attempts, then dead.
    server = await Serve(cwd, env, "serve1").start()
    try:
        body, headers = load("goapi/image_success_flux.json")  # timestamp set to now
        async with httpx.AsyncClient(base_url=server.url, timeout=5.0) as client:
            answer = await client.post("/hooks/goapi", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["deliveries"] == 1
        delivery_id = await wait_for_state(db, "dead", server)
    finally:
        code = await server.stop()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status shows it.
    assert code in (0, -signal.SIGTERM), server.output()
    # The store was closed (the last connection's close checkpoints and removes the WAL).
    assert not (cwd / "relay.db-wal").exists()
    assert "Traceback" not in server.output()

    # 2. Inspect it.
    table = await arelay(cwd, "deliveries", env=env)
    assert table.code == 0, table.err
    header, *rows = table.out.splitlines()
    assert header.split() == HEADER
    assert len(rows) == 1
    assert rows[0].split()[:3] == [delivery_id, "dead", "down"]
    assert "connection failed" in rows[0]

    as_json = await arelay(cwd, "deliveries", "--state", "dead", "--json", env=env)
    assert as_json.code == 0, as_json.err
    listed = json.loads(as_json.out)
    assert [d["id"] for d in listed] == [delivery_id]
    assert listed[0]["state"] == "dead" and listed[0]["attempts"] == 2
    assert "gave up after 2 attempts" in listed[0]["last_error"]

    none_pending = await arelay(cwd, "deliveries", "--state", "pending", env=env)
    assert none_pending.code == 0
    assert none_pending.out.strip() == "no deliveries in state pending"

    one = await arelay(cwd, "deliveries", delivery_id, env=env)
    assert one.code == 0, one.err
    assert delivery_id in one.out
    attempts = [line.strip() for line in one.out.split("\nattempts:\n", 1)[1].splitlines()]
    assert len(attempts) == 2, one.out
    assert attempts[0].startswith("#1 ") and " pending: connection failed" in attempts[0]
    assert attempts[1].startswith("#2 ") and " dead: connection failed" in attempts[1]

    unknown = await arelay(cwd, "deliveries", "dlv_nope", env=env)
    assert unknown.code == 1
    assert "no delivery dlv_nope" in unknown.err

    # 3. Replay it: once works, twice does not, and nothing to replay is a usage error.
    replay = await arelay(cwd, "replay", delivery_id, env=env)
    assert replay.code == 0, replay.err
    assert replay.out.strip() == f"{delivery_id}: pending again, due now"
    again = await arelay(cwd, "replay", delivery_id, env=env)
    assert again.code == 1
    assert f"{delivery_id}: not replayed (it is pending or sending already)" in again.err
    unknown_id = await arelay(cwd, "replay", "dlv_nope", env=env)
    assert unknown_id.code == 1
    assert "dlv_nope: not replayed (no such delivery)" in unknown_id.err
    nothing = await arelay(cwd, "replay", env=env)
    assert nothing.code == 2
    assert "name delivery ids, or filter with --destination/--since/--until" in nothing.err
    none_dead = await arelay(cwd, "replay", "--all-dead", env=env)
    assert none_dead.code == 0, none_dead.err
    assert none_dead.out.strip() == "no dead deliveries to replay"
    pending = json.loads((await arelay(cwd, "deliveries", "--json", env=env)).out)
    assert [(d["id"], d["state"]) for d in pending] == [(delivery_id, "pending")]

    # 4. With the downstream up, a new relay on the same database delivers the replayed one.
    downstream = await Downstream().start(port=down_port)
    server = await Serve(cwd, env, "serve2").start()
    try:
        await downstream.wait_for(1, within=15)
        got = downstream.received[0]
        got_headers = {k.lower(): v for k, v in got.headers.items()}
        assert got_headers["webhook-id"] == delivery_id
        payload = Webhook(DOWN_SECRET).verify(got.body, got_headers)
        assert payload["type"] == "task.succeeded"
        assert payload["data"]["outputs"][0]["url"] == FLUX_IMAGE
        await wait_for_state(db, "delivered", server)
        delivered = await arelay(cwd, "deliveries", "--state", "delivered", env=env)
    finally:
        code = await server.stop()
        await downstream.stop()
    assert code in (0, -signal.SIGTERM), server.output()
    assert "Traceback" not in server.output()
    assert delivered.code == 0, delivered.err
    header, *rows = delivered.out.splitlines()
    assert header.split() == HEADER
    assert len(rows) == 1 and rows[0].split()[:3] == [delivery_id, "delivered", "down"]
    assert len(downstream.received) == 1


# --- relay serve refusing to start ----------------------------------------------------------


def test_serve_with_broken_rules_exits_2_with_the_problems(tmp_path: Path) -> None:
    write(tmp_path / "rules", BROKEN)
    started = time.monotonic()
    r = relay(tmp_path, "serve", "--rules", "rules", "--port", str(free_port()))
    assert time.monotonic() - started < 15
    assert r.code == 2, r.text
    assert "rules: 5 problem(s):" in r.err
    assert "rules/b.yaml: routes[1].to: unknown destination 'nowhere'" in r.err
    assert LEAKY_SECRET not in r.text
    assert not (tmp_path / "relay.db").exists()


def test_serve_with_an_unsupported_database_url_exits_2(tmp_path: Path) -> None:
    write(tmp_path / "rules", {"rules.yaml": DRY_RULES})
    env = dry_env()
    url = "mysql://relay:hunter2-db-password@db.internal:5432/relay"
    r = relay(tmp_path, "serve", "--rules", "rules", "--db", url, "--port", "0", env=env)
    assert r.code == 2, r.text
    assert "unsupported database URL scheme 'mysql'" in r.err
    assert "sqlite:///path.db" in r.err
    assert "hunter2-db-password" not in r.text


@pytest.mark.parametrize("command", [["deliveries"], ["replay", "dlv_x"]])
def test_inspecting_a_database_that_does_not_exist_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    result = relay(tmp_path, *command, "--db", "sqlite:///typo/relay.db")
    assert result.code == 1
    assert "no database at typo/relay.db" in result.err
    assert not (tmp_path / "typo").exists()


def test_serve_with_a_database_it_cannot_open_exits_2_with_one_line(tmp_path: Path) -> None:
    write(tmp_path / "rules", {"rules.yaml": DRY_RULES})
    (tmp_path / "not-a-dir").write_text("a file where a folder should be")
    url = "sqlite:///not-a-dir/relay.db"
    r = relay(tmp_path, "serve", "--rules", "rules", "--db", url, "--port", "0", env=dry_env())
    assert r.code == 2, r.text
    assert r.err.startswith("relay: store: open:"), r.err
    assert "Traceback" not in r.text


async def test_sighup_reloads_the_rules_and_keeps_the_last_good_ones(tmp_path: Path) -> None:
    env = base_env(
        GOAPI_SECRET=GOAPI_SECRET, DOWN_URL="http://127.0.0.1:9/", DOWN_SECRET=DOWN_SECRET
    )
    rules = write(tmp_path / "rules", {"rules.yaml": SERVE_RULES})
    server = await Serve(tmp_path, env, "hup").start()
    try:
        assert server.proc is not None
        async with httpx.AsyncClient(base_url=server.url) as client:

            async def destinations(expected: list[str]) -> list[str]:
                seen: list[str] = []
                for _ in range(100):  # bounded: about 5 s
                    seen = (await client.get("/readyz")).json()["destinations"]
                    if seen == expected:
                        break
                    await asyncio.sleep(0.05)
                return seen

            assert await destinations(["down"]) == ["down"]
            extra = "  archive:\n    type: webhook\n    url: http://127.0.0.1:9/archive\n"
            text = SERVE_RULES.replace("destinations:\n", "destinations:\n" + extra)
            (rules / "rules.yaml").write_text(text)
            server.proc.send_signal(signal.SIGHUP)
            assert await destinations(["archive", "down"]) == ["archive", "down"]

            (rules / "rules.yaml").write_text(text + "  - to: [nowhere]\n")
            server.proc.send_signal(signal.SIGHUP)
            for _ in range(100):
                if "keeping the last good rules" in server.output():
                    break
                await asyncio.sleep(0.05)
            assert "routes[1].to: unknown destination 'nowhere'" in server.output()
            assert (await client.get("/readyz")).json()["destinations"] == ["archive", "down"]
    finally:
        await server.stop()
