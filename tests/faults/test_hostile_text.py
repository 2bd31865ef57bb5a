"""Hostile text against a real ``relay serve``: JSON that nothing could store or send again, and
control characters (CR, LF, escape sequences, NUL, U+2028, NEL) in the hook path, a task id, a
prompt and a downstream's error answer, and a refused request that names a URL-token source's
token. The whole path is read back: the answers, the store (admin API), the process's log in
both formats, and ``relay deliveries`` / ``events`` / ``rejected`` as a terminal shows them.

tests/e2e/test_logs.py checks the log's fields and secrets in-process; this is the real-process
proof that remote text cannot forge a log record or a table row, or drive a terminal.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web

from relay.escape import CONTROLS, one_line
from tests.downstream import Downstream
from tests.e2e.cli import arelay
from tests.faults.harness import ADMIN_TOKEN, GOAPI_SECRET, Ledger, Relay, Serve, settled
from tests.fixtures_util import load
from tests.local_http import serve_app

BATCH_TOKEN = "batch-hook-Token-4e7Qz9Lm2x"  # the URL-token source's token
GUESSED = "guessed-Token-8c1Vb5Nn0k"  # a wrong token a client tried: masked all the same
RULES = f"""
sources:
  goapi: {{provider: goapi, secret: {GOAPI_SECRET}}}
  batch: {{provider: goapi, token: {BATCH_TOKEN}}}
destinations:
  downstream:
    type: webhook
    url: ${{DOWN_URL}}
    retry: {{schedule: [50ms], jitter: 0}}
  sick:
    type: webhook
    url: ${{SICK_URL}}
    retry: {{schedule: [50ms], jitter: 0}}
    breaker: off
routes:
  - match: ['model="sick-model"']
    to: [sick]
  - to: [downstream]
"""
# A record or a line someone would like to slip into the log, after a line break.
FORGED_JSON = (
    '{"time":"2025-01-01T00:00:00.000Z","level":"error","logger":"relay.hooks","forged":1}'
)
FORGED_TEXT = "2025-01-01 00:00:00,000 ERROR relay.hooks: FORGED"
HOSTILE = (
    f"x\r\n{FORGED_JSON}\n{FORGED_TEXT}\r\x1b[2J\x1b]0;owned\x07\x00\u2028\u2029\x85\x9b31m\x7f end"
)
# What a terminal must never receive raw: C0 and C1 controls, DEL, U+2028 and U+2029.
RAW = re.compile("[" + "".join(re.escape(chr(c)) for c in CONTROLS) + "]")


def callback(task_id: str, **data: Any) -> tuple[dict[str, Any], dict[str, str]]:
    body, headers = load("goapi/image_success_flux.json")
    body["data"]["task_id"] = task_id
    body["data"].update(data)
    return body, headers


def no_raw_control(text: str, what: str) -> list[str]:
    """``text``'s lines (split on LF alone), none holding a raw control character."""
    lines = text.split("\n")
    for line in lines:
        found = RAW.search(line)
        assert found is None, f"{what}: raw {found[0]!r} in {line!r}"
    return lines


@pytest.fixture
async def sick_url() -> AsyncIterator[str]:
    """A destination that answers every request 500 with a body of CR/LF, a forged record
    and ANSI escapes."""
    body = f"boom\r\n{FORGED_JSON}\n{FORGED_TEXT}\x1b[2J\x1b[31m\x07\x00".encode()

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=500, body=body, content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner, port = await serve_app(app)
    yield f"http://127.0.0.1:{port}/sick"
    await runner.cleanup()


async def admin(server: Serve, path: str, **params: Any) -> Any:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=5) as client:
        answer = await client.get(path, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def rejected(server: Serve, count: int) -> list[dict[str, Any]]:
    """The refused-request log once it holds ``count`` requests (written in the background,
    within a second or so)."""
    async with asyncio.timeout(10):
        while True:
            found: list[dict[str, Any]] = (await admin(server, "/admin/rejected"))["rejected"]
            if len(found) >= count:
                assert len(found) == count, found
                return found
            await asyncio.sleep(0.1)


# --- JSON nothing could store or send again -------------------------------------------------


def with_escape(escape: str, where: str) -> bytes:
    """A signed GoAPI callback's body with the JSON escape ``escape`` (such as ``\\ud800``)
    written, as its raw text, into ``where``: a value, a key, a nested value, the task id."""
    body, _ = callback(f"hostile-json-{uuid.uuid4().hex}")
    marker = "MARKER-0f1e2d"
    if where == "value":
        body["data"]["input"]["prompt"] = marker
    elif where == "key":
        body["data"]["input"][marker] = 1
    elif where == "nested":
        body["data"]["logs"] = [{"lines": ["ok", {"deep": marker}]}]
    else:
        body["data"]["task_id"] = marker
    return json.dumps(body).replace(marker, f"a{escape}b").encode()


def with_value(raw: str) -> bytes:
    """A signed GoAPI callback's body with ``raw`` written as the JSON text of a value."""
    body, _ = callback(f"hostile-json-{uuid.uuid4().hex}")
    body["data"]["meta"]["usage"]["consume"] = "MARKER-0f1e2d"
    return json.dumps(body).replace('"MARKER-0f1e2d"', raw).encode()


REFUSED_JSON = [
    *(
        (f"{escape} in a {where}", with_escape(escape, where), "lone surrogate")
        for escape in ("\\ud800", "\\udfff")
        for where in ("value", "key", "nested", "task id")
    ),
    ("NaN", with_value("NaN"), "NaN is not valid JSON"),
    ("Infinity", with_value("Infinity"), "Infinity is not valid JSON"),
    ("-Infinity", with_value("-Infinity"), "-Infinity is not valid JSON"),
    ("1e400", with_value("1e400"), "too large for a double"),
    ("a 400-digit decimal", with_value("1" + "0" * 400 + ".5"), "too large for a double"),
    ("a 5000-digit integer", with_value("9" * 5000), "Exceeds the limit (4300 digits)"),
    ("arrays 100000 deep", with_value("[" * 100_000 + "]" * 100_000), "nested deeper than 64"),
    ("Latin-1 bytes", with_value('"caf\xe9"').decode().encode("latin-1"), "not UTF-8"),
    ("a UTF-16 body", with_value("1").decode().encode("utf-16"), "not UTF-8"),
    ("a UTF-16 body without a BOM", with_value("1").decode().encode("utf-16-le"), "invalid"),
]


async def test_json_nothing_could_store_or_send_is_a_400_and_nothing_is_stored(
    make_relay: Callable[..., Relay], downstream: Downstream
) -> None:
    """Lone surrogate escapes (in a value, a key, nested, the task id), NaN and Infinity, a
    number beyond a double (1e400), an integer of 5000 digits, arrays 100000 deep, bytes that
    are not UTF-8, a UTF-16 body: each, signed, is a 400 whose body names the problem, never a
    5xx; nothing is stored, each is in the refused-request log, and no traceback is logged.
    What JSON allows is taken: a UTF-8 BOM is read past, of duplicate keys the last counts, a
    4000-digit integer is kept exactly. Callbacks after are acknowledged, and all end
    delivered."""
    relay = make_relay(RULES, DOWN_URL=downstream.url, SICK_URL="http://127.0.0.1:9/")
    server = await relay.serve()
    ledger = Ledger()
    headers = {"content-type": "application/json", "x-webhook-secret": GOAPI_SECRET}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for what, raw, reason in REFUSED_JSON:
            answer = await ledger.post(client, "/hooks/goapi", raw, headers)
            assert answer.status_code == 400, f"{what}: {answer.status_code} {answer.text}"
            assert reason in answer.json()["error"], f"{what}: {answer.text}"
            assert len(answer.content) < 300, f"{what}: a long answer: {answer.text[:300]}"
        assert not ledger.acked
        bom, _ = callback("bom-task")
        dup = json.dumps(callback("first-task")[0]).replace(
            '"task_id": "first-task"', '"task_id": "first-task", "task_id": "last-task"'
        )
        digits = "7" * 4000
        taken = [
            b"\xef\xbb\xbf" + json.dumps(bom).encode(),
            dup.encode(),
            with_value(digits),
        ]
        for raw in taken:
            answer = await ledger.post(client, "/hooks/goapi", raw, headers)
            assert answer.status_code == 200, answer.text
        body, headers = callback("after-task")
        assert (await ledger.post(client, "/hooks/goapi", body, headers)).status_code == 200
    found = await settled(server, ledger)
    assert all(d["state"] == "delivered" for ds in found.values() for d in ds), found
    events = (await admin(server, "/admin/events", limit=1000))["events"]
    assert sorted(e["id"] for e in events) == sorted(ledger.acked)
    tasks = {e["task_id"] for e in events}
    assert {"bom-task", "last-task", "after-task"} <= tasks
    assert len(tasks) == 4 and not {t for t in tasks if "first-task" in t}
    # The big integer went downstream exactly, inside valid JSON.
    delivered = [json.loads(r.body) for r in downstream.received]
    assert any(f'"consume": {digits}' in json.dumps(d["data"]["raw"]) for d in delivered), (
        "the 4000-digit integer was not delivered exactly"
    )
    refused = await rejected(server, len(REFUSED_JSON))
    assert [r["status"] for r in refused] == [400] * len(REFUSED_JSON)
    for row in refused:
        no_raw_control(row["reason"] + row["excerpt"], "a refused request's reason or excerpt")
    log = relay.logs()
    outcomes = Counter(
        json.loads(line).get("outcome") for line in log.splitlines() if '"relay.hooks"' in line
    )
    assert outcomes == {"refused_payload": len(REFUSED_JSON), "accepted": 4}, outcomes


# --- control characters in the path, a task id, a prompt, an error answer -------------------

HOSTILE_TASK = f"task-{HOSTILE}"
SICK_TASK = f"sick-{HOSTILE}"
# Refused requests: (path, body, status). Percent-encoded, the path reaches relay decoded.
REFUSED = [
    ("/hooks/goapi%0d%0a" + FORGED_TEXT.replace(" ", "%20") + "%1b%5b2J", b"{}", 404),
    ("/hooks/%E2%80%A8%C2%85%00%7f%c2%9bx", b"{}", 404),
    (f"/hooks/batch/{GUESSED}%0d%0aforged", b"{}", 401),
    # The right token, a body that is not JSON and echoes it, with control characters.
    (f"/hooks/batch/{BATCH_TOKEN}", f"not json {BATCH_TOKEN}\r\n\x1b[2J".encode(), 400),
    (f"/hooks/batch?token={BATCH_TOKEN}", b"\x00\r\n{", 400),
]


async def hostile_traffic(server: Serve, ledger: Ledger) -> None:
    """Everything hostile, each answered as it should be."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for path, raw, status in REFUSED:
            answer = await ledger.post(client, path, raw, {"content-type": "application/json"})
            assert answer.status_code == status, f"{path}: {answer.status_code} {answer.text}"
            assert BATCH_TOKEN not in answer.text and GUESSED not in answer.text
        for body, headers, path in [
            (*callback(HOSTILE_TASK), "/hooks/goapi"),
            (*callback(f"prompt-{uuid.uuid4().hex}", input={"prompt": HOSTILE}), "/hooks/goapi"),
            (*callback(SICK_TASK, model="sick-model"), "/hooks/goapi"),
            (*callback(f"batch-{uuid.uuid4().hex}"), f"/hooks/batch/{BATCH_TOKEN}"),
        ]:
            answer = await ledger.post(client, path, body, headers)
            assert answer.status_code == 200, f"{path}: {answer.text}"


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_control_characters_cannot_forge_a_record_a_row_or_show_a_token(
    make_relay: Callable[..., Relay],
    downstream: Downstream,
    sick_url: str,
    log_format: str,
) -> None:
    """Control characters in a percent-encoded hook path, a task id, a prompt and a
    downstream's 500 answer, and refused requests that name a URL-token source's token (in the
    path, the query, the body). In the log (JSON: every line one object, exactly one callback
    record per request and one record per delivery outcome, nothing forged; text: no raw
    control character), in ``relay deliveries`` / ``events`` / ``rejected`` (one row per
    delivery, event, refusal; no raw control character, nothing forged) and in the refused-
    request log, the text is escaped and neither token is anywhere. Every acknowledged
    callback ends delivered, or dead with the downstream's (escaped) answer as its reason."""
    relay = make_relay(RULES, DOWN_URL=downstream.url, SICK_URL=sick_url)
    server = await relay.serve("--log-format", log_format)
    ledger = Ledger()
    await hostile_traffic(server, ledger)
    found = await settled(server, ledger)
    states = Counter(d["state"] for ds in found.values() for d in ds)
    assert states == {"delivered": 3, "dead": 1}, found
    (dead,) = [d for ds in found.values() for d in ds if d["state"] == "dead"]
    assert dead["last_error"].startswith("HTTP 500: boom\r\n"), dead["last_error"]
    # Escaping is for showing: the destination gets the prompt and task id as they came.
    sent = [json.loads(r.body)["data"] for r in downstream.received]
    assert HOSTILE in {d["prompt"] for d in sent} and HOSTILE_TASK in {d["task_id"] for d in sent}
    refused = await rejected(server, len(REFUSED))
    for row in refused:
        shown = json.dumps(row, ensure_ascii=False)
        assert BATCH_TOKEN not in shown and GUESSED not in shown, shown
        no_raw_control(row["path"] + row["reason"] + row["excerpt"], "the refused-request log")
    # The path token masked; the query (and its token) is not kept at all.
    assert {r["path"] for r in refused if r["source"] == "batch"} == {
        "/hooks/batch/****",
        "/hooks/batch",
    }
    if log_format == "json":  # the tables do not depend on the log's format: read them once
        await check_cli(relay, server, len(found), len(REFUSED))
    await relay.stop()  # the log is complete
    log = relay.logs()
    assert BATCH_TOKEN not in log and GUESSED not in log
    if log_format == "json":
        check_json_log(log, ledger, found)
    else:
        check_text_log(log, ledger)


def records(log: str) -> list[dict[str, Any]]:
    """Every line of a JSON log as its object: each must parse as one."""
    lines = no_raw_control(log.rstrip("\n"), "the JSON log")
    parsed = []
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert "forged" not in record, line
        parsed.append(record)
    return parsed


def check_json_log(log: str, ledger: Ledger, found: dict[str, list[dict[str, Any]]]) -> None:
    lines = records(log)
    callbacks = [r for r in lines if r["logger"] == "relay.hooks"]
    assert Counter(r["outcome"] for r in callbacks) == {
        "refused_unknown_source": 2,
        "refused_auth": 1,
        "refused_payload": 2,
        "accepted": 4,
    }, callbacks
    accepted = Counter(r["event_id"] for r in callbacks if r["outcome"] == "accepted")
    assert accepted == dict.fromkeys(ledger.acked, 1)
    # The hostile task id is logged whole, as a JSON string that holds it exactly.
    assert HOSTILE_TASK in {r["task_id"] for r in callbacks if r["outcome"] == "accepted"}
    outcomes = Counter(
        (r["delivery_id"], r["outcome"])
        for r in lines
        if r["logger"] == "relay.dispatcher" and "delivery_id" in r
    )
    expected: Counter[tuple[str, str]] = Counter()
    for deliveries in found.values():
        for d in deliveries:
            if d["state"] == "delivered":
                expected[(d["id"], "delivered")] = 1
            else:
                expected.update({(d["id"], "retried"): 1, (d["id"], "dead"): 1})
    assert outcomes == expected, outcomes
    (dead,) = [r for r in lines if r.get("outcome") == "dead"]
    assert dead["reason"].startswith("HTTP 500: boom\r\n"), dead


def check_text_log(log: str, ledger: Ledger) -> None:
    lines = no_raw_control(log.rstrip("\n"), "the text log")
    # One line per request: a CR/LF in a path, a task id or an answer could start another.
    assert len([line for line in lines if " relay.hooks: callback " in line]) == 9
    for line in lines:
        assert not line.startswith(FORGED_TEXT) and not line.startswith("{"), line
    accepted = [line for line in lines if "relay.hooks: callback accepted" in line]
    assert {event_id for event_id in ledger.acked if any(event_id in x for x in accepted)} == set(
        ledger.acked
    )
    # The hostile task id is there whole, quoted as a JSON string with every control escaped.
    shown = "task_id=" + json.dumps(HOSTILE_TASK).replace("\x7f", "\\u007f")
    assert sum(shown in line for line in accepted) == 1, accepted


async def check_cli(relay: Relay, server: Serve, events: int, refusals: int) -> None:
    env = relay.environment()
    (dead,) = (await admin(server, "/admin/deliveries", state="dead"))["deliveries"]
    commands = [
        ("deliveries",),
        ("events",),
        ("rejected",),
        ("deliveries", dead["id"]),
    ]
    results = await asyncio.gather(*(arelay(relay.home, *c, env=env) for c in commands))
    for command, result in zip(commands, results, strict=True):
        assert result.code == 0, f"relay {' '.join(command)}: {result.text}"
        assert BATCH_TOKEN not in result.text and GUESSED not in result.text, result.text
    deliveries, listed, refused, one = results
    rows = table(deliveries.out, "deliveries", header="ID ")
    assert len(rows) == events, rows
    assert sum(one_line(SICK_TASK) in row for row in rows) == 1
    assert sum(one_line(HOSTILE_TASK) in row for row in rows) == 1
    (sick,) = [row for row in rows if row.split()[2] == "sick"]
    assert "HTTP 500: boom\\r\\n{" in sick, sick
    assert len(table(listed.out, "events", header="ID ")) == events
    assert len(table(refused.out, "rejected", header="RECEIVED ")) == refusals
    lines = no_raw_control(one.out, "relay deliveries ID")
    assert sum(line.lstrip().startswith("#") for line in lines) == 2, one.out


def table(out: str, what: str, *, header: str) -> list[str]:
    """The rows of a CLI table (after its header line), none holding a raw control character
    or starting with forged text."""
    lines = no_raw_control(out.rstrip("\n"), f"relay {what}")
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break  # the table ends (a hint may follow)
        assert not line.startswith(("{", FORGED_TEXT)), line
        rows.append(line)
    return rows
