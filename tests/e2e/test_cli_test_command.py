"""`relay test` for CI: `--labels` sets the hook URL's labels, `--expect-destinations` fails
(exit 3) when routing differs, `--send` delivers for real (a fire drill) and says how each
send went."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from tests.downstream import Downstream
from tests.e2e.cli import DOWN_SECRET, GOAPI_SECRET, Result, arelay, base_env, relay, write
from tests.fixtures_util import FIXTURES

RULES = """
sources:
  goapi:
    provider: goapi
    secret: ${GOAPI_SECRET}
    labels: [team]
destinations:
  media:
    type: webhook
    url: ${MEDIA_URL}
    secret: ${DOWN_SECRET}
  everyone:
    type: webhook
    url: ${EVERYONE_URL}
    secret: ${DOWN_SECRET}
routes:
  - match: ['team="media"']
    to: [media]
    continue: true
  - match: ['status="succeeded"']
    to: [everyone]
"""
FLUX = str(FIXTURES / "goapi" / "image_success_flux.json")
FAILED = str(FIXTURES / "goapi" / "failed_midjourney.json")


def env(
    media: str = "http://127.0.0.1:9/media", everyone: str = "http://127.0.0.1:9/all"
) -> dict[str, str]:
    return base_env(
        GOAPI_SECRET=GOAPI_SECRET, DOWN_SECRET=DOWN_SECRET, MEDIA_URL=media, EVERYONE_URL=everyone
    )


def dry_run(home: Path, *args: str) -> Result:
    return relay(home, "test", "--rules", "rules", "--source", "goapi", *args, env=env())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    write(tmp_path / "rules", {"rules.yaml": RULES})
    return tmp_path


def test_labels_route_the_dry_run_and_expectations_are_checked(home: Path) -> None:
    r = dry_run(home, FLUX, "--labels", "team=media", "--expect-destinations", "media,everyone")
    assert r.code == 0, r.text
    event = json.loads(r.out.split("\n\n--- to ")[0].removeprefix("event:\n"))
    assert event["labels"] == {"team": "media"}
    assert "--- to media (route #1) ---" in r.out and "--- to everyone (route #2) ---" in r.out

    # Routing that differs from what CI expects: exit 3, saying both.
    r = dry_run(home, FLUX, "--expect-destinations", "media,everyone")
    assert r.code == 3
    assert "routing differs: expected everyone, media, got everyone" in r.err
    r = dry_run(home, FAILED, "--labels", "team=sound", "--expect-destinations", "")
    assert r.code == 0, r.text
    assert "no route matches" in r.out


def test_bad_labels_are_what_relay_would_answer(home: Path) -> None:
    r = dry_run(home, FLUX, "--labels", "team=me dia")
    assert r.code == 1
    assert "would answer 400: label 'team' does not match" in r.err
    r = dry_run(home, FLUX, "--labels", "crew=media")
    assert r.code == 2
    assert "source 'goapi' does not declare crew (declared: team)" in r.err
    r = dry_run(home, FLUX, "--labels", "team")
    assert r.code == 2 and "'team' is not NAME=VALUE" in r.err


async def test_send_delivers_for_real_and_reports_each_outcome(home: Path) -> None:
    media = await Downstream().start()
    media.responses = [(410, {})]  # gone: a permanent refusal
    everyone = await Downstream().start()
    try:
        r = await arelay(
            home,
            "test",
            "--rules",
            "rules",
            "--source",
            "goapi",
            FLUX,
            "--labels",
            "team=media",
            "--send",
            env=env(media.url, everyone.url),
        )
    finally:
        await media.stop()
        await everyone.stop()
    assert r.code == 3, r.text
    assert "sent to everyone" in r.out
    assert "NOT sent to media (permanent): HTTP 410" in r.out
    [received] = everyone.received
    envelope = Webhook(DOWN_SECRET).verify(received.body, received.headers)
    assert envelope["data"]["labels"] == {"team": "media"}
    assert len(media.received) == 1
