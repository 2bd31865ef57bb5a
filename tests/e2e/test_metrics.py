"""GET /metrics of the real app under uvicorn, after a scripted run: what each counter says."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
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
    )
    server = await RelayServer(settings, env={"DOWN_URL": downstream.url}).start()
    yield server
    await server.stop()


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    return samples(r.text)


async def test_every_outcome_is_counted(relay: RelayServer, downstream: Downstream) -> None:
    # The first delivery is refused for good, the second fails once then goes through.
    downstream.responses = [(400, {}), (503, {}), (200, {})]
    flux, headers = load("goapi/image_success_flux.json")
    failed, _ = load("goapi/failed_midjourney.json")
    progress, _ = load("goapi/midjourney_processing_progress.json")
    other, _ = load("novita/other_event_type_synthetic.json")
    async with httpx.AsyncClient(base_url=relay.url) as client:
        for body in (flux, flux, failed, progress):  # accepted, duplicate, accepted, accepted
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

        await downstream.wait_for(3)
        # The last outcome is recorded just after the receiver answered: bounded wait for it.
        async with asyncio.timeout(10):
            while True:
                found = await scrape(client)
                if (
                    value(
                        found,
                        "relay_deliveries_total",
                        destination="down",
                        type="webhook",
                        outcome="delivered",
                    )
                    == 1
                ):
                    break
                await asyncio.sleep(0.05)

    callbacks = {
        (dict(labels)["source"], dict(labels)["outcome"]): n
        for (name, labels), n in found.items()
        if name == "relay_callbacks_total"
    }
    assert callbacks == {
        ("goapi", "accepted"): 3,
        ("goapi", "duplicate"): 1,
        ("novita", "ignored"): 1,
        ("goapi", "refused_auth"): 1,
        ("goapi", "refused_payload"): 1,
        ("goapi", "refused_too_large"): 1,
        ("goapi", "refused_method"): 1,
        # Sources not in the rules share one label: no series per probed path.
        ("(unknown)", "refused_unknown_source"): 2,
    }
    assert value(found, "relay_ingest_seconds_count", source="goapi") == 8
    deliveries = {
        dict(labels)["outcome"]: n
        for (name, labels), n in found.items()
        if name == "relay_deliveries_total"
    }
    assert deliveries == {"dead": 1, "retried": 1, "delivered": 1}
    assert value(found, "relay_delivery_attempt_seconds_count", destination="down") == 3
    tasks = {
        (dict(labels)["model"], dict(labels)["status"]): n
        for (name, labels), n in found.items()
        if name == "relay_task_outcomes_total"
    }
    assert tasks == {("Qubico/flux1-dev-advanced", "succeeded"): 1, ("midjourney", "failed"): 1}
    assert value(found, "relay_lease_losses_total") == 0
    assert value(found, "relay_build_info", version=__version__) == 1
