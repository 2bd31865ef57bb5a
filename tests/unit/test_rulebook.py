"""RuleBook.reload: a broken rules folder changes nothing; a fixed one takes effect at once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from relay.channels import default_channel_types
from relay.channels.base import ChannelDeps, Delivery
from relay.channels.webhook import WebhookChannel
from relay.errors import ConfigError
from relay.providers import default_providers
from relay.rulebook import RuleBook
from relay.runtime import provider_names
from relay.store.memory import MemoryStore
from tests.downstream import Downstream
from tests.events_factory import make_event

WHSEC = "whsec_cmVsYXktZGV2LXNpZ25pbmctc2VjcmV0"

FIRST = """
sources:
  goapi:
    provider: goapi
    secret: ${GOAPI_SECRET}
destinations:
  alpha:
    type: webhook
    url: ${ALPHA_URL}
    secret: ${WHSEC}
routes:
  - to: [alpha]
"""

SECOND = """
sources:
  goapi:
    provider: goapi
    secret: ${GOAPI_SECRET}
destinations:
  beta:
    type: webhook
    url: http://127.0.0.1:9/beta
    retry: {schedule: [1s, 2s], jitter: 0}
routes:
  - match: ['status="failed"']
    to: [beta]
"""

# Each broken version of rules.yaml and a piece of the problem it must report.
BROKEN = {
    "yaml syntax": ("sources: [unclosed\n", "invalid YAML"),
    "unknown key": (FIRST.replace("    secret: ${WHSEC}", "    secrett: x"), "unknown key"),
    "missing destination": (FIRST.replace("to: [alpha]", "to: [gamma]"), "unknown destination"),
    "unset variable": (FIRST.replace("${GOAPI_SECRET}", "${NOT_SET}"), "NOT_SET is not set"),
    "bad regex": (FIRST + "  - match: ['model=~\"(\"']\n    to: [alpha]\n", "bad regex"),
    "bad whsec": (FIRST.replace("${WHSEC}", "plain-secret"), "whsec_"),
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_book(directory: Path, http: aiohttp.ClientSession, env: dict[str, str]) -> RuleBook:
    providers = default_providers()
    return RuleBook(
        directory,
        providers,
        default_channel_types(),
        ChannelDeps(
            http=http, clock=time.time, state=MemoryStore(), names=provider_names(providers)
        ),
        env=env,
    )


@pytest.fixture
def env(downstream: Downstream) -> dict[str, str]:
    return {"GOAPI_SECRET": "goapi-secret", "ALPHA_URL": downstream.url, "WHSEC": WHSEC}


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "rules.yaml").write_text(FIRST)
    return directory


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_a_failed_reload_keeps_the_last_good_rules_then_a_fix_takes_effect(
    case: str,
    rules_dir: Path,
    http: aiohttp.ClientSession,
    env: dict[str, str],
    downstream: Downstream,
) -> None:
    book = make_book(rules_dir, http, env)
    rules, routing, loaded = book.rules, book.routing, book.loaded
    assert list(routing.channels) == ["alpha"]

    broken, expected = BROKEN[case]
    (rules_dir / "rules.yaml").write_text(broken)
    problems = book.reload()

    assert problems, case
    assert any(expected in p for p in problems), problems
    assert all(p.startswith(str(rules_dir / "rules.yaml")) for p in problems), problems
    assert "plain-secret" not in "\n".join(problems)
    # Nothing changed: same rules, same channels, and the old channel still sends.
    assert book.rules is rules and book.loaded is loaded and book.routing is routing
    assert list(book.rules.destinations) == ["alpha"]
    channel = book.routing.channels["alpha"]
    await channel.send(Delivery("dlv_kept", "alpha", 1, make_event()))
    await downstream.wait_for(1)
    assert downstream.received[0].headers["webhook-id"] == "dlv_kept"

    (rules_dir / "rules.yaml").write_text(SECOND)
    assert book.reload() == []

    assert list(book.rules.destinations) == ["beta"]
    assert list(book.routing.channels) == ["beta"]
    assert isinstance(book.routing.channels["beta"], WebhookChannel)
    assert book.routing.policy("beta").schedule == (1.0, 2.0)
    assert book.routing.policy("beta").jitter == 0
    assert book.rules.routes[0].to == ["beta"]
    assert book.loaded.files == [rules_dir / "rules.yaml"]


async def test_a_reload_with_the_rules_file_gone_keeps_the_rules(
    rules_dir: Path, http: aiohttp.ClientSession, env: dict[str, str]
) -> None:
    book = make_book(rules_dir, http, env)
    rules = book.rules
    (rules_dir / "rules.yaml").unlink()
    problems = book.reload()
    assert problems == [f"{rules_dir}: no *.yaml or *.yml rules file"]
    assert book.rules is rules and "alpha" in book.routing.channels


async def test_a_reload_reads_the_environment_again(
    rules_dir: Path, http: aiohttp.ClientSession, env: dict[str, str]
) -> None:
    book = make_book(rules_dir, http, env)
    del env["ALPHA_URL"]
    assert any("ALPHA_URL is not set" in p for p in book.reload())
    assert "alpha" in book.routing.channels
    env["ALPHA_URL"] = "http://127.0.0.1:9/elsewhere"
    assert book.reload() == []
    assert book.rules.destinations["alpha"].url == "http://127.0.0.1:9/elsewhere"


async def test_broken_rules_at_construction_raise_with_every_problem(
    rules_dir: Path, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_book(rules_dir, http, {})
    problems = caught.value.problems
    assert len(problems) == 3, problems
    for name in ("GOAPI_SECRET", "ALPHA_URL", "WHSEC"):
        assert any(f"{name} is not set" in p for p in problems), problems
