"""Schemathesis against ``/admin/openapi.json`` of a real `relay serve`: generated requests to
every operation get no 5xx, and every answer matches the document (status code, content type,
body schema)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.generation.case import Case

from tests.e2e.cli import base_env, free_port, write
from tests.fixtures_util import load

ADMIN = "schema-admin-token-8c2f41"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
RULES = """
sources:
  goapi: {provider: goapi, secret: s3cr3t-relay-goapi}
destinations:
  down:
    type: webhook
    url: http://127.0.0.1:${DOWN_PORT}/hook
    secret: whsec_c2NoZW1hLWRvd25zdHJlYW0ta2V5
    retry: {schedule: [50ms], jitter: 0}
routes:
  - match: ['final="true"']
    to: [down]
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A relay with a few events and dead deliveries (its destination refuses connections)."""
    cwd = tmp_path_factory.mktemp("schema")
    write(cwd / "rules", {"rules.yaml": RULES})
    port = free_port()
    env = base_env(RELAY_ADMIN_TOKEN=ADMIN, DOWN_PORT=str(free_port()), RELAY_LOG_LEVEL="warning")
    log = (cwd / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "serve", "--rules", "rules", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=2.0) as client:
            deadline = time.monotonic() + 15
            while True:
                assert proc.poll() is None, (cwd / "serve.log").read_text()
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, (cwd / "serve.log").read_text()
                time.sleep(0.05)
            _, headers = load("goapi/image_success_flux.json")
            for name in ("image_success_flux", "failed_midjourney", "video_success_luma"):
                body, _ = load(f"goapi/{name}.json")
                assert client.post("/hooks/goapi", json=body, headers=headers).is_success
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        output = (cwd / "serve.log").read_text()
        assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def admin_schema(served: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{served}/admin/openapi.json", headers=AUTH)


schema = schemathesis.pytest.from_fixture("admin_schema")


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_the_admin_api_keeps_to_its_document(case: Case, served: str) -> None:
    response = case.call(headers=AUTH)
    case.validate_response(
        response,
        checks=[
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
        ],
    )


def test_the_document_lists_every_operation(served: str) -> None:
    doc = json.loads(httpx.get(f"{served}/admin/openapi.json", headers=AUTH).text)
    operations = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert operations == {
        ("/admin/events", "get"),
        ("/admin/events/{event_id}", "get"),
        ("/admin/events/{event_id}/reroute", "post"),
        ("/admin/deliveries", "get"),
        ("/admin/deliveries/{delivery_id}", "get"),
        ("/admin/deliveries/{delivery_id}/replay", "post"),
        ("/admin/replay", "post"),
        ("/admin/destinations/{destination}/test", "post"),
        ("/admin/reload", "post"),
        ("/admin/rejected", "get"),
        ("/admin/silences", "get"),
        ("/admin/silences", "post"),
        ("/admin/silences/{silence_id}", "get"),
        ("/admin/silences/{silence_id}/expire", "post"),
        ("/admin/held/{held_by}/release", "post"),
        ("/admin/quarantine", "get"),
    }
