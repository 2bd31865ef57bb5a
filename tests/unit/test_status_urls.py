"""Status-API URLs of every provider that has one (``verify: fetch``): no task id can move the
request to another path of the provider's API, where our API key would go with it."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import SecretStr

from relay.errors import PayloadError
from relay.providers import default_providers
from relay.providers.base import StatusLookup
from relay.routing.model import SourceConfig

BASE = "http://127.0.0.1:9999/base"
LOOKUPS = {
    name: provider
    for name, provider in default_providers().items()
    if isinstance(provider, StatusLookup)
}


def config(name: str) -> SourceConfig:
    return SourceConfig(provider=name, api_key=SecretStr("k-1"), api_url=BASE)


def test_there_are_providers_with_status_apis() -> None:
    assert {"apimart", "muapi", "novita"} <= set(LOOKUPS)


IN_PATH = sorted(
    name
    for name, provider in LOOKUPS.items()
    if "task-1" in urlsplit(provider.status_request(config(name), "task-1").url).path
)


def test_some_put_the_task_id_in_the_path() -> None:
    assert {"apimart", "muapi"} <= set(IN_PATH)


@pytest.mark.parametrize("name", IN_PATH)
@pytest.mark.parametrize("task_id", [".", ".."])
def test_a_dot_segment_in_the_path_is_refused(name: str, task_id: str) -> None:
    with pytest.raises(PayloadError) as info:
        LOOKUPS[name].status_request(config(name), task_id)
    assert "cannot be looked up" in info.value.reason


@pytest.mark.parametrize("name", sorted(LOOKUPS))
@pytest.mark.parametrize(
    "task_id",
    [".", "..", "../../admin", "a/../b", "%2e%2e", ".%2E", "..;x", "a?b#c", "x/./y", "..."],
)
def test_no_task_id_changes_the_path(name: str, task_id: str) -> None:
    """Whatever the id, the URL the HTTP client sends keeps the path of a normal id, with the
    id in the place of that id (query-string APIs: the path never moves at all)."""
    try:
        request = LOOKUPS[name].status_request(config(name), task_id)
    except PayloadError:
        return  # refused as a 400: nothing is sent
    normal = LOOKUPS[name].status_request(config(name), "task-1")
    # What httpx would put on the wire, after its own normalization of the URL.
    sent = urlsplit(str(httpx.URL(request.url)))
    expected = urlsplit(str(httpx.URL(normal.url)))
    assert sent.netloc == expected.netloc
    sent_parts, expected_parts = sent.path.split("/"), expected.path.split("/")
    assert len(sent_parts) == len(expected_parts), (request.url, sent.path)
    differing = [
        i for i, (a, b) in enumerate(zip(sent_parts, expected_parts, strict=True)) if a != b
    ]
    assert len(differing) <= 1, (sent.path, expected.path)
    assert sent.path.startswith("/base/")
