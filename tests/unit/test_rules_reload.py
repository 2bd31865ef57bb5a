"""The rules' hash, the reload metrics, and the rules watcher's own failure handling."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.channels import default_channel_types
from relay.channels.base import ChannelDeps
from relay.metrics import RulesMetrics
from relay.providers import default_providers
from relay.reload import RulesWatcher
from relay.rulebook import RuleBook, rules_hash
from relay.runtime import provider_names
from relay.store.memory import MemoryStore

WHSEC = "whsec_cmVsYXktZGV2LXNpZ25pbmctc2VjcmV0"


def rules(*names: str) -> str:
    dests = "".join(
        f"  {n}: {{type: webhook, url: 'http://127.0.0.1:9/{n}', secret: {WHSEC}}}\n" for n in names
    )
    return (
        "sources:\n  goapi: {provider: goapi, secret: s}\n"
        f"destinations:\n{dests}routes:\n  - to: [{', '.join(names)}]\n"
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "rules.yaml").write_text(rules("alpha"))
    return directory


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make_book(
    folder: Path, http: aiohttp.ClientSession, metrics: RulesMetrics | None, clock: Clock
) -> RuleBook:
    providers = default_providers()
    deps = ChannelDeps(http=http, clock=clock, state=MemoryStore(), names=provider_names(providers))
    return RuleBook(folder, providers, default_channel_types(), deps, env={}, metrics=metrics)


def scrape(registry: CollectorRegistry) -> dict[str, object]:
    found: dict[str, object] = {"hash": []}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == "relay_rules_reloads_total":
                found[sample.labels["outcome"]] = sample.value
            elif sample.name == "relay_rules_info":
                assert sample.value == 1
                found["hash"].append(sample.labels["hash"])  # type: ignore[attr-defined]
            elif sample.name == "relay_rules_loaded_timestamp_seconds":
                found["loaded_at"] = sample.value
    return found


def test_the_hash_is_of_the_files_names_and_bytes(folder: Path, tmp_path: Path) -> None:
    first = rules_hash(folder)
    assert len(first) == 12 and int(first, 16) >= 0
    content = (folder / "rules.yaml").read_bytes()
    name = b"rules.yaml"
    framed = b"%d:%d:" % (len(name), len(content)) + name + content
    assert first == hashlib.sha256(framed).hexdigest()[:12]

    # The same files elsewhere: the same hash (names are relative to the folder).
    copy = tmp_path / "elsewhere"
    shutil.copytree(folder, copy)
    assert rules_hash(copy) == first
    # What the loader skips does not count: hidden entries, other suffixes.
    (folder / ".rules.yaml.swp").write_text("junk")
    (folder / "notes.txt").write_text("junk")
    (folder / "..2024_01_01").mkdir()
    (folder / "..2024_01_01" / "rules.yaml").write_text("junk")
    assert rules_hash(folder) == first
    # A byte changed, a file renamed, a file added in a subfolder: each a new hash.
    (folder / "rules.yaml").write_text(rules("alpha") + "\n")
    changed = rules_hash(folder)
    (folder / "rules.yaml").rename(folder / "main.yaml")
    renamed = rules_hash(folder)
    (folder / "more").mkdir()
    (folder / "more" / "extra.yml").write_text("")
    added = rules_hash(folder)
    assert len({first, changed, renamed, added}) == 4
    # A folder that cannot be loaded still has a hash, unlike any loadable one's.
    assert rules_hash(tmp_path / "missing") not in {first, changed, renamed, added}


async def test_every_reload_is_counted_and_the_hash_follows_the_rules_in_force(
    folder: Path, http: aiohttp.ClientSession
) -> None:
    registry = CollectorRegistry()
    clock = Clock()
    book = make_book(folder, http, RulesMetrics(registry), clock)
    start = scrape(registry)
    assert start == {"hash": [book.hash], "ok": 0, "failed": 0, "loaded_at": clock.now}
    assert book.hash == rules_hash(folder) and book.loaded_at == clock.now

    clock.now += 60
    (folder / "rules.yaml").write_text(rules("alpha", "beta"))
    assert book.reload() == []
    good = scrape(registry)
    assert good["ok"] == 1 and good["failed"] == 0 and good["loaded_at"] == clock.now
    assert good["hash"] == [rules_hash(folder)] != start["hash"]  # one series: the new hash
    assert sorted(book.rules.destinations) == ["alpha", "beta"]

    clock.now += 60
    (folder / "rules.yaml").write_text(rules("alpha").replace("to: [alpha]", "to: [gamma]"))
    problems = book.reload()
    assert problems and "unknown destination 'gamma'" in problems[0]
    bad = scrape(registry)
    assert bad["failed"] == 1 and bad["ok"] == 1
    # The rules in force, their hash and load time are those of the last good version.
    assert bad["hash"] == good["hash"] and bad["loaded_at"] == good["loaded_at"]
    assert sorted(book.rules.destinations) == ["alpha", "beta"]


async def test_an_unchanged_folder_is_not_reloaded_unless_forced(
    folder: Path, http: aiohttp.ClientSession
) -> None:
    registry = CollectorRegistry()
    book = make_book(folder, http, RulesMetrics(registry), Clock())
    rules_before, routing_before = book.rules, book.routing
    (folder / "rules.yaml").write_text(rules("alpha"))  # the same bytes
    assert book.reload(if_changed=True) == []
    assert book.rules is rules_before and book.routing is routing_before
    assert scrape(registry)["ok"] == 0
    # SIGHUP and the admin API force it: built again, counted.
    assert book.reload() == []
    assert book.routing is not routing_before and scrape(registry)["ok"] == 1
    # A bad version then the good one back: the good one is in force, nothing to do.
    (folder / "rules.yaml").write_text("sources: [")
    assert book.reload(if_changed=True) != []
    (folder / "rules.yaml").write_text(rules("alpha"))
    assert book.reload(if_changed=True) == []
    assert scrape(registry) | {"loaded_at": 0} == {
        "hash": [book.hash],
        "ok": 1,
        "failed": 1,
        "loaded_at": 0,
    }


async def test_the_watcher_stops_when_told(folder: Path, http: aiohttp.ClientSession) -> None:
    book = make_book(folder, http, None, Clock())
    stop = asyncio.Event()
    task = asyncio.create_task(RulesWatcher(book).run(stop))
    stop.set()
    async with asyncio.timeout(10):
        await task


async def test_a_folder_that_cannot_be_watched_is_logged_not_fatal(
    folder: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    book = make_book(folder, http, None, Clock())
    shutil.rmtree(folder)
    with caplog.at_level(logging.ERROR, logger="relay.rules"):
        async with asyncio.timeout(10):
            await RulesWatcher(book).run(asyncio.Event())
    assert f"stopped watching {folder} for rules changes" in caplog.text
    assert "reload with SIGHUP instead" in caplog.text
    assert sorted(book.rules.destinations) == ["alpha"]
