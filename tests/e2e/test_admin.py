"""The admin API of the real app under uvicorn: auth, every operation, and what each answers."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from relay.settings import Settings
from tests.downstream import Downstream, Received
from tests.e2e.server import RelayServer, write_rules
from tests.fixtures_util import load

ADMIN = "admin-token-5b1e0c7d9a"
AUTH = {"authorization": f"Bearer {ADMIN}"}
SECRET = "whsec_" + base64.b64encode(b"admin-downstream-key-01").decode()
RULES = f"""
sources:
  goapi: {{provider: goapi, secret: s3cr3t-relay-goapi}}
destinations:
  down:
    type: webhook
    url: ${{DOWN_URL}}/down
    secret: {SECRET}
    retry: {{schedule: [50ms], jitter: 0}}
  other:
    type: webhook
    url: ${{DOWN_URL}}/other
    secret: {SECRET}
    retry: {{schedule: [50ms], jitter: 0}}
routes:
  - match: ['status="succeeded"']
    to: [down]
  - match: ['status="failed"']
    to: [other]
"""


def rules_dir(server: RelayServer) -> Path:
    return server.settings.rules


@pytest.fixture
async def relay(tmp_path: Path, downstream: Downstream) -> AsyncIterator[RelayServer]:
    settings = Settings(
        rules=write_rules(tmp_path / "rules", RULES),
        db=f"sqlite:///{tmp_path / 'relay.db'}",
        admin_token=SecretStr(ADMIN),
        concurrency=2,
    )
    server = await RelayServer(settings, env={"DOWN_URL": downstream.url}).start()
    yield server
    await server.stop()


@pytest.fixture
async def client(relay: RelayServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=relay.url, headers=AUTH) as c:
        yield c


async def post_fixture(client: httpx.AsyncClient, name: str, **change: Any) -> str:
    body, _ = load(name)
    _, headers = load("goapi/image_success_flux.json")  # the secret these rules know
    body["data"].update(change)
    answer = await client.post("/hooks/goapi", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    event_id: str = answer.json()["event_id"]
    return event_id


async def until(
    client: httpx.AsyncClient, path: str, done: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """GET ``path`` until ``done`` holds of its JSON (bounded)."""
    found: dict[str, Any] = {}
    try:
        async with asyncio.timeout(10):
            while True:
                r = await client.get(path)
                assert r.status_code == 200, r.text
                found = r.json()
                if done(found):
                    return found
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"never {what}; last: {found}") from None


def states(detail: dict[str, Any]) -> list[str]:
    return [d["state"] for d in detail["deliveries"]]


# --- auth -----------------------------------------------------------------------------------


async def test_without_a_token_the_api_is_off(tmp_path: Path, downstream: Downstream) -> None:
    settings = Settings(
        rules=write_rules(tmp_path / "rules", RULES), db=f"sqlite:///{tmp_path / 'r.db'}"
    )
    server = await RelayServer(settings, env={"DOWN_URL": downstream.url}).start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as c:
            for path in ("/admin/events", "/admin/openapi.json", "/admin/nothing", "/admin"):
                r = await c.get(path, headers=AUTH)
                assert r.status_code == 404, path
                assert r.json()["error"]
            assert (await c.post("/admin/reload", headers=AUTH)).status_code == 404
    finally:
        await server.stop()


@pytest.mark.parametrize(
    "header",
    [
        {},
        {"authorization": "Bearer wrong-token-0000000"},
        {"authorization": f"Bearer {ADMIN}x"},
        {"authorization": f"Basic {ADMIN}"},
        {"authorization": ADMIN},
        {"authorization": "Bearer"},
    ],
)
async def test_a_missing_or_wrong_token_is_401(relay: RelayServer, header: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=relay.url) as c:
        for method, path in (("GET", "/admin/events"), ("POST", "/admin/reload")):
            r = await c.request(method, path, headers=header)
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "admin token" in r.json()["error"]


async def test_the_right_token_opens_every_endpoint(client: httpx.AsyncClient) -> None:
    assert (await client.get("/admin/events")).json() == {"events": [], "next_cursor": None}
    doc = (await client.get("/admin/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert "/admin/replay" in doc["paths"]
    unknown = await client.get("/admin/nothing-here")
    assert unknown.status_code == 404 and "no admin endpoint" in unknown.json()["error"]
    wrong_method = await client.delete("/admin/events")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]


# --- events ---------------------------------------------------------------------------------


async def test_events_filter_and_page(client: httpx.AsyncClient) -> None:
    flux = await post_fixture(client, "goapi/image_success_flux.json")
    failed = await post_fixture(client, "goapi/failed_midjourney.json")
    luma = await post_fixture(client, "goapi/video_success_luma.json")

    listed = (await client.get("/admin/events")).json()
    assert [e["id"] for e in listed["events"]] == [luma, failed, flux]
    assert all(e["raw"] is None for e in listed["events"])

    async def ids(**query: str) -> list[str]:
        r = await client.get("/admin/events", params=query)
        assert r.status_code == 200, r.text
        return [e["id"] for e in r.json()["events"]]

    assert await ids(status="failed") == [failed]
    assert await ids(source="goapi", status="succeeded") == [luma, flux]
    assert await ids(source="elsewhere") == []
    assert await ids(provider="goapi") == [luma, failed, flux]
    flux_event = (await client.get(f"/admin/events/{flux}")).json()["event"]
    assert await ids(model=flux_event["model"]) == [flux]
    assert await ids(task_id=flux_event["task_id"]) == [flux]
    assert await ids(since="1h") == [luma, failed, flux]
    assert await ids(until="1h") == []
    assert await ids(since="2000-01-01T00:00:00Z", until="2100-01-01") == [luma, failed, flux]

    # Pages of one, by cursor, to the end.
    seen, cursor = [], None
    for _ in range(5):
        query = {"limit": "1"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/admin/events", params=query)).json()
        seen += [e["id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [luma, failed, flux]


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "done"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"destination": "down"}, "destination"),  # not a filter of events: a typo is refused
        ({"source": "a\x00b"}, "source"),
    ],
)
async def test_bad_event_queries_are_400_with_the_reason(
    client: httpx.AsyncClient, query: dict[str, str], says: str
) -> None:
    r = await client.get("/admin/events", params=query)
    assert r.status_code == 400
    body = r.json()
    assert says in body["error"] + " ".join(body.get("problems", []))


async def test_one_event_with_its_deliveries_and_attempts(
    client: httpx.AsyncClient, downstream: Downstream
) -> None:
    downstream.responses = [(503, {})]  # the first attempt fails, the retry goes through
    event_id = await post_fixture(client, "goapi/image_success_flux.json")
    detail = await until(
        client, f"/admin/events/{event_id}", lambda d: states(d) == ["delivered"], "delivered"
    )
    assert detail["event"]["id"] == event_id
    assert detail["event"]["raw"] is not None  # the detail keeps the (redacted) body
    (delivery,) = detail["deliveries"]
    assert delivery["destination"] == "down" and delivery["route"] == 1
    first, second = delivery["attempt_log"]
    assert (first["attempt"], first["state"], first["response_code"]) == (1, "pending", 503)
    assert (second["attempt"], second["state"]) == (2, "delivered")
    assert first["duration_ms"] >= 0 and second["duration_ms"] >= 0
    assert first["started_at"].endswith("Z")

    missing = await client.get("/admin/events/evt_nope")
    assert missing.status_code == 404 and "evt_nope" in missing.json()["error"]
    odd = await client.get("/admin/events/%2e%2e%20x")
    assert odd.status_code == 404


# --- deliveries and replay ------------------------------------------------------------------


async def test_deliveries_list_detail_and_replay_one(
    client: httpx.AsyncClient, downstream: Downstream
) -> None:
    downstream.responses = [(400, {})]  # refused for good: dead at once
    event_id = await post_fixture(client, "goapi/image_success_flux.json")
    detail = await until(
        client, f"/admin/events/{event_id}", lambda d: states(d) == ["dead"], "dead"
    )
    delivery_id = detail["deliveries"][0]["id"]

    dead = (await client.get("/admin/deliveries", params={"state": "dead"})).json()
    assert [d["id"] for d in dead["deliveries"]] == [delivery_id]
    assert (await client.get("/admin/deliveries", params={"destination": "other"})).json()[
        "deliveries"
    ] == []
    one = (await client.get(f"/admin/deliveries/{delivery_id}")).json()
    assert one["state"] == "dead" and "HTTP 400" in one["last_error"]
    assert one["attempt_log"][0]["response_code"] == 400

    replayed = await client.post(f"/admin/deliveries/{delivery_id}/replay")
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["delivery"]["state"] in ("pending", "sending", "delivered")
    await until(
        client, f"/admin/deliveries/{delivery_id}", lambda d: d["state"] == "delivered", "sent"
    )
    # Delivered: replaying sends it again.
    again = await client.post(f"/admin/deliveries/{delivery_id}/replay")
    assert again.status_code == 200
    await until(
        client,
        f"/admin/deliveries/{delivery_id}",
        lambda d: d["state"] == "delivered" and len(d["attempt_log"]) == 3,
        "sent again",
    )
    assert len(downstream.received) == 3
    unknown = await client.post("/admin/deliveries/dlv_nope/replay")
    assert unknown.status_code == 404


async def test_replaying_a_pending_delivery_is_409(
    client: httpx.AsyncClient, downstream: Downstream
) -> None:
    release = asyncio.Event()

    async def hold(item: Received) -> None:
        await release.wait()

    downstream.hold = hold
    try:
        event_id = await post_fixture(client, "goapi/image_success_flux.json")
        detail = await until(
            client, f"/admin/events/{event_id}", lambda d: states(d) == ["sending"], "sending"
        )
        busy = await client.post(f"/admin/deliveries/{detail['deliveries'][0]['id']}/replay")
        assert busy.status_code == 409
        assert "is sending" in busy.json()["error"]
    finally:
        release.set()


async def test_bulk_replay_by_destination_with_a_dry_run_first(
    client: httpx.AsyncClient, downstream: Downstream
) -> None:
    # Five to `down` and one to `other`, all refused for good.
    downstream.responses = [(400, {})] * 6
    for n in range(5):
        await post_fixture(client, "goapi/image_success_flux.json", task_id=f"bulk-{n}")
    await post_fixture(client, "goapi/failed_midjourney.json")
    await until(
        client,
        "/admin/deliveries?state=dead",
        lambda p: len(p["deliveries"]) == 6,
        "six dead",
    )
    dry = await client.post(
        "/admin/replay", json={"destination": "down", "since": "1h", "dry_run": True}
    )
    assert dry.status_code == 200, dry.text
    assert (dry.json()["matched"], dry.json()["replayed"]) == (5, 0)
    assert len(dry.json()["ids"]) == 5
    # A dry run changes nothing.
    still = (await client.get("/admin/deliveries", params={"state": "dead"})).json()
    assert len(still["deliveries"]) == 6

    real = await client.post("/admin/replay", json={"destination": "down", "since": "1h"})
    assert (real.json()["matched"], real.json()["replayed"]) == (5, 5)
    await until(
        client,
        "/admin/deliveries?state=delivered",
        lambda p: len(p["deliveries"]) == 5,
        "five delivered",
    )
    left = (await client.get("/admin/deliveries", params={"state": "dead"})).json()
    assert [d["destination"] for d in left["deliveries"]] == ["other"]
    # Nothing matched is not an error; a filter in the future matches nothing.
    none = await client.post("/admin/replay", json={"destination": "down"})
    assert none.json()["matched"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"state": "pending"},
        {"destinaton": "down"},
        {"since": "soon"},
        {"dry_run": "maybe"},
        [1, 2],
    ],
)
async def test_bad_bulk_replays_are_400(client: httpx.AsyncClient, body: Any) -> None:
    r = await client.post("/admin/replay", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]
    assert (await client.post("/admin/replay", content=b"{nope")).status_code == 400


async def test_a_replayed_burst_keeps_to_the_concurrency_limit(
    client: httpx.AsyncClient, downstream: Downstream
) -> None:
    downstream.responses = [(400, {})] * 12
    for n in range(12):
        await post_fixture(client, "goapi/image_success_flux.json", task_id=f"burst-{n}")
    await until(
        client, "/admin/deliveries?state=dead", lambda p: len(p["deliveries"]) == 12, "dead"
    )
    open_now, most = 0, 0

    async def count(item: Received) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        await asyncio.sleep(0.02)  # keeps each request open long enough to overlap
        open_now -= 1

    downstream.hold = count
    replayed = await client.post("/admin/replay", json={"destination": "down"})
    assert replayed.json()["replayed"] == 12
    await until(
        client,
        "/admin/deliveries?state=delivered",
        lambda p: len(p["deliveries"]) == 12,
        "all delivered",
    )
    # The relay runs with concurrency=2: a replay of twelve never has more than two open.
    assert 1 <= most <= 2


# --- re-route, test event, reload -----------------------------------------------------------


async def test_reroute_under_reloaded_rules(
    relay: RelayServer, client: httpx.AsyncClient, downstream: Downstream
) -> None:
    # A processing event matches no route.
    progress = await post_fixture(client, "goapi/midjourney_processing_progress.json")
    assert (await client.get(f"/admin/events/{progress}")).json()["deliveries"] == []
    nothing = (await client.post(f"/admin/events/{progress}/reroute")).json()
    assert nothing == {"event_id": progress, "created": [], "unchanged": []}

    text = RULES + "  - match: ['status=\"processing\"']\n    to: [other]\n"
    (rules_dir(relay) / "rules.yaml").write_text(text)
    reloaded = await client.post("/admin/reload")
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["reloaded"] is True and reloaded.json()["routes"] == 3

    rerouted = (await client.post(f"/admin/events/{progress}/reroute")).json()
    assert [d["destination"] for d in rerouted["created"]] == ["other"]
    assert rerouted["created"][0]["route"] == 3
    await until(
        client, f"/admin/events/{progress}", lambda d: states(d) == ["delivered"], "delivered"
    )
    assert downstream.received[-1].path == "/hook/other"
    # Twice adds nothing.
    again = (await client.post(f"/admin/events/{progress}/reroute")).json()
    assert again["created"] == [] and again["unchanged"] == ["other"]
    assert (await client.post("/admin/events/evt_nope/reroute")).status_code == 404


async def test_a_bad_reload_is_422_and_keeps_the_rules(
    relay: RelayServer, client: httpx.AsyncClient
) -> None:
    (rules_dir(relay) / "rules.yaml").write_text(RULES.replace("to: [other]", "to: [ghost]"))
    refused = await client.post("/admin/reload")
    assert refused.status_code == 422
    body = refused.json()
    assert body["reloaded"] is False
    assert any("ghost" in p for p in body["problems"])
    assert body["routes"] == 2  # the rules in force are the last good ones


async def test_a_test_event_to_one_destination(
    client: httpx.AsyncClient, downstream: Downstream
) -> None:
    sent = await client.post("/admin/destinations/down/test", json={"status": "failed"})
    assert sent.status_code == 200, sent.text
    answer = sent.json()
    assert answer["delivered"] is True and answer["error"] is None
    assert answer["event"]["test"] is True and answer["event"]["status"] == "failed"
    got = downstream.received[-1]
    assert got.path == "/hook/down"
    assert b'"test":true' in got.body and b"task.failed" in got.body
    # Not stored: the test event is nowhere in the event list.
    assert (await client.get("/admin/events")).json()["events"] == []

    downstream.responses = [(503, {})]
    failing = (await client.post("/admin/destinations/down/test")).json()
    assert failing["delivered"] is False and failing["transient"] is True
    assert "503" in failing["error"]
    unknown = await client.post("/admin/destinations/ghost/test")
    assert unknown.status_code == 404 and "known: down, other" in unknown.json()["error"]


async def test_the_rejected_log_says_why_callbacks_did_not_arrive(
    client: httpx.AsyncClient,
) -> None:
    body, _ = load("goapi/image_success_flux.json")
    wrong = await client.post(
        "/hooks/goapi",
        json={**body, "api_key": "sk-do-not-keep"},
        headers={"x-webhook-secret": "no"},
    )
    assert wrong.status_code == 401
    assert (await client.post("/hooks/ghost/tok-9f8e7d6c5b", json={})).status_code == 404
    found = await until(
        client,
        "/admin/rejected",
        lambda r: len(r["rejected"]) == 2,
        "both refusals kept",
    )
    unknown, refused = found["rejected"]  # newest first
    assert (refused["source"], refused["status"]) == ("goapi", 401)
    assert refused["reason"] == "x-webhook-secret does not match"
    assert '"api_key":"[redacted]"' in refused["excerpt"]
    assert "sk-do-not-keep" not in refused["excerpt"]
    assert (unknown["source"], unknown["status"]) == ("(unknown)", 404)
    assert "tok-9f8e7d6c5b" not in unknown["path"]
    assert refused["received_at"].endswith("Z") and refused["client_ip"] == "127.0.0.1"

    one = (await client.get("/admin/rejected", params={"source": "goapi"})).json()
    assert [r["status"] for r in one["rejected"]] == [401]
    assert len((await client.get("/admin/rejected", params={"limit": "1"})).json()["rejected"]) == 1
    assert (await client.get("/admin/rejected", params={"limit": "0"})).status_code == 400
