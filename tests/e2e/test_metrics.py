"""GET /metrics of the real app under uvicorn, after a scripted run: what each counter says,
and the queue figures (read from the store) while a delivery waits and once all is done."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay import __version__
from relay.settings import Settings
from tests.downstream import Downstream
from tests.e2e.server import RelayServer, write_rules
from tests.fixtures_util import load

SECRET = "whsec_" + base64.b64encode(b"metrics-downstream-key-1").decode()
TOKEN = "tok-metrics-3c9a"
RULES = f"""
sources:
  goapi: {{provider: goapi, secret: s3cr3t-relay-goapi}}
  novita: {{provider: novita, token: {TOKEN}}}
destinations:
  down:
    type: webhook
    url: ${{DOWN_URL}}
    secret: {SECRET}
    retry: {{schedule: [50ms], jitter: 0}}
routes:
  - match: ['final="true"']
    to: [down]
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def relay(tmp_path: Path, downstream: Downstream) -> AsyncIterator[RelayServer]:
    settings = Settings(
        rules=write_rules(tmp_path / "rules", RULES),
        db=f"sqlite:///{tmp_path / 'relay.db'}",
        max_body=4096,
        # One send at a time: while the downstream holds one, the next due one waits.
        concurrency=1,
    )
    server = await RelayServer(settings, env={"DOWN_URL": downstream.url}).start()
    yield server
    await server.stop()


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    return samples(r.text)


def queue(found: Samples) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["destination"], dict(labels)["state"]): n
        for (name, labels), n in found.items()
        if name == "relay_queue_depth"
    }


async def scrape_until(
    client: httpx.AsyncClient, done: Callable[[Samples], bool], what: str
) -> Samples:
    """Scrape until ``done`` holds (bounded): outcomes are recorded just after the answer."""
    found: Samples = {}
    try:
        async with asyncio.timeout(10):
            while True:
                found = await scrape(client)
                if done(found):
                    return found
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"never {what}; last scrape: {found}") from None


async def test_every_outcome_is_counted(relay: RelayServer, downstream: Downstream) -> None:
    # The first delivery is refused for good, the second fails once then goes through; the
    # third request is held open until the queue has been looked at.
    downstream.responses = [(400, {}), (503, {}), (200, {}), (200, {})]
    release = asyncio.Event()

    async def hold_the_third(item: object) -> None:
        if len(downstream.received) == 3:
            await release.wait()

    downstream.hold = hold_the_third
    flux, headers = load("goapi/image_success_flux.json")
    failed, _ = load("goapi/failed_midjourney.json")
    progress, _ = load("goapi/midjourney_processing_progress.json")
    luma, _ = load("goapi/video_success_luma.json")
    other, _ = load("novita/other_event_type_synthetic.json")
    async with httpx.AsyncClient(base_url=relay.url) as client:
        # accepted, duplicate, accepted, accepted (not final: routed nowhere), accepted
        for body in (flux, flux, failed, progress, luma):
            assert (await client.post("/hooks/goapi", json=body, headers=headers)).is_success
        assert (await client.post(f"/hooks/novita/{TOKEN}", json=other)).json()["ignored"]
        bad = {"x-webhook-secret": "wrong"}
        assert (await client.post("/hooks/goapi", json=flux, headers=bad)).status_code == 401
        not_json = await client.post("/hooks/goapi", content=b"{", headers=headers)
        assert not_json.status_code == 400
        assert (await client.post("/hooks/nope", json={})).status_code == 404
        assert (await client.post("/hooks/nope/a/b/c", json={})).status_code == 404
        big = json.dumps({"pad": "x" * 5000})
        too_big = await client.post("/hooks/goapi", content=big, headers=headers)
        assert too_big.status_code == 413
        assert (await client.get("/hooks/goapi")).status_code == 405

        try:
            # The third request (luma's first, or failed's retry) is held: the other one is
            # due and waits for the only send slot, so it grows overdue.
            waiting = {
                ("down", "pending"): 1,
                ("down", "sending"): 1,
                ("down", "dead"): 1,
                ("down", "silenced"): 0,
            }
            found = await scrape_until(
                client,
                lambda f: (
                    queue(f) == waiting and value(f, "relay_queue_oldest_due_age_seconds") > 0
                ),
                "saw one delivery waiting, one sending and one dead",
            )
            assert value(found, "relay_queue_stats_up") == 1
        finally:
            release.set()

        await downstream.wait_for(4)
        found = await scrape_until(
            client,
            lambda f: (
                value(
                    f,
                    "relay_deliveries_total",
                    destination="down",
                    type="webhook",
                    outcome="delivered",
                )
                == 2
                and queue(f)
                == {
                    ("down", "pending"): 0,
                    ("down", "sending"): 0,
                    ("down", "dead"): 1,
                    ("down", "silenced"): 0,
                }
            ),
            "saw both deliveries through and the queue settled",
        )
        # Nothing is overdue any more.
        assert value(found, "relay_queue_oldest_due_age_seconds") == 0

    callbacks = {
        (dict(labels)["source"], dict(labels)["outcome"]): n
        for (name, labels), n in found.items()
        if name == "relay_callbacks_total"
    }
    assert callbacks == {
        ("goapi", "accepted"): 4,
        ("goapi", "duplicate"): 1,
        ("novita", "ignored"): 1,
        ("goapi", "refused_auth"): 1,
        ("goapi", "refused_payload"): 1,
        ("goapi", "refused_too_large"): 1,
        ("goapi", "refused_method"): 1,
        # Sources not in the rules share one label: no series per probed path.
        ("(unknown)", "refused_unknown_source"): 2,
    }
    assert value(found, "relay_ingest_seconds_count", source="goapi") == 9
    deliveries = {
        dict(labels)["outcome"]: n
        for (name, labels), n in found.items()
        if name == "relay_deliveries_total"
    }
    assert deliveries == {"dead": 1, "retried": 1, "delivered": 2}
    assert value(found, "relay_delivery_attempt_seconds_count", destination="down") == 4
    tasks = {
        (dict(labels)["model"], dict(labels)["status"]): n
        for (name, labels), n in found.items()
        if name == "relay_task_outcomes_total"
    }
    assert tasks == {
        ("Qubico/flux1-dev-advanced", "succeeded"): 1,
        ("midjourney", "failed"): 1,
        ("luma", "succeeded"): 1,
    }
    assert value(found, "relay_lease_losses_total") == 0
    assert value(found, "relay_build_info", version=__version__) == 1
