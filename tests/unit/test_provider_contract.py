"""The contract every registered provider keeps, whatever its quirks.

- any JSON gives an event, an ``Ignored``, or a PayloadError / VerificationError: never another
  exception (that would be a 500, or a quarantined callback);
- a wrong secret or token is a 401 before the body is read;
- a status-API look-up quotes the task id into a URL built from our config only.

Every fixture matching its oracle entry is the other half: tests/unit/test_fixture_oracle.py.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from relay.errors import PayloadError, VerificationError
from relay.events import TaskEvent
from relay.providers import default_providers
from relay.providers.base import Ignored, Inbound, Provider, StatusLookup
from relay.routing.model import SourceConfig
from tests.fixtures_util import FIXTURES
from tests.oracle import fixture_files

PROVIDERS = sorted(default_providers())
NOW = datetime(2025, 9, 14, 12, 0, 0, tzinfo=UTC)
WHSEC = "whsec_" + base64.b64encode(b"contract-suite-signing-key").decode()
SECRET = "contract-s3cret"
TOKEN = "contract-token-77"


def source(name: str, **changes: Any) -> SourceConfig:
    """A valid source of provider ``name``: with a secret where the provider takes one, else a
    URL token (the provider's own checks decide)."""
    provider = default_providers()[name]
    secret = WHSEC if name == "standard" else SECRET
    signed = SourceConfig(provider=name, secret=SecretStr(secret))
    config = signed if not provider.check_source(signed) else None
    if config is None:
        config = SourceConfig(provider=name, token=SecretStr(TOKEN))
        assert not provider.check_source(config), name
    return config.model_copy(update=changes)


def inbound(config: SourceConfig, payload: Any, **fields: Any) -> Inbound:
    values: dict[str, Any] = {
        "source": f"{config.provider}-main",
        "config": config,
        "headers": {},
        "body": json.dumps(payload).encode(),
        "received_at": NOW,
        "path_token": TOKEN if config.token is not None else None,
        "verify": False,
    }
    values.update(fields)
    return Inbound(**values)


# --- any JSON, never anything but our own errors ------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["completed", "failed", "https://x.test/a.mp4", "TASK_STATUS_SUCCEED"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def _fixtures_of(name: str) -> list[Any]:
    folder = name.replace("-", "_")
    return [
        json.loads((FIXTURES / f).read_text())
        for f in fixture_files()
        if f.split("/", 1)[0] == folder
    ]


@st.composite
def near_fixtures(draw: st.DrawFn, samples: list[Any]) -> Any:
    """A fixture of the provider with one value somewhere in it replaced by any JSON: shapes
    close to real ones reach far deeper into an adapter than random JSON does."""
    payload = json.loads(json.dumps(draw(st.sampled_from(samples))))
    node = payload
    for _ in range(draw(st.integers(0, 4))):
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if isinstance(node[key], dict | list) and draw(st.booleans()):
                node = node[key]
                continue
            node[key] = draw(JSON)
            break
        if isinstance(node, list) and node:
            index = draw(st.integers(0, len(node) - 1))
            if isinstance(node[index], dict | list) and draw(st.booleans()):
                node = node[index]
                continue
            node[index] = draw(JSON)
            break
    return payload


def _normalize_anything(provider: Provider, config: SourceConfig, payload: Any) -> None:
    for verify in (False, True):
        try:
            result = provider.normalize(inbound(config, payload, verify=verify), payload, "evt_x")
        except (PayloadError, VerificationError):
            continue
        assert isinstance(result, TaskEvent | Ignored)


@pytest.mark.parametrize("name", PROVIDERS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_json_gives_an_event_or_our_own_error(name: str, data: st.DataObject) -> None:
    provider = default_providers()[name]
    samples = _fixtures_of(name)
    strategy = JSON | near_fixtures(samples) if samples else JSON
    _normalize_anything(provider, source(name), data.draw(strategy))


# --- wrong secrets and tokens -------------------------------------------------------------------


@pytest.mark.parametrize("name", PROVIDERS)
def test_a_wrong_secret_or_token_is_refused(name: str) -> None:
    provider = default_providers()[name]
    config = source(name)
    wrong_headers = {
        "x-webhook-secret": "not-it",
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(NOW.timestamp())),
        "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode(),
    }
    attempt = inbound(config, {}, headers=wrong_headers, path_token="not-it", verify=True)
    with pytest.raises(VerificationError) as caught:
        provider.authenticate(attempt)
    assert caught.value.status == 401
    for secret in (SECRET, TOKEN, WHSEC):
        assert secret not in caught.value.reason


@pytest.mark.parametrize("name", PROVIDERS)
def test_nothing_at_all_is_refused(name: str) -> None:
    provider = default_providers()[name]
    with pytest.raises(VerificationError):
        provider.authenticate(inbound(source(name), {}, path_token=None, verify=True))


# --- status look-ups ----------------------------------------------------------------------------

LOOKUPS = [n for n in PROVIDERS if isinstance(default_providers()[n], StatusLookup)]


def test_the_providers_that_document_a_status_api_have_a_look_up() -> None:
    assert set(LOOKUPS) == {"goapi", "piapi", "apimart", "muapi", "novita"}


@pytest.mark.parametrize("name", LOOKUPS)
@pytest.mark.parametrize("task_id", ["a/../../admin?x=1#f", "t 1&key=v", "é/%2F"])
def test_a_status_look_up_quotes_the_task_id_into_our_own_url(name: str, task_id: str) -> None:
    provider = default_providers()[name]
    assert isinstance(provider, StatusLookup)
    config = source(name, api_url="https://status.example.test/base", api_key=SecretStr("k-1"))
    request = provider.status_request(config, task_id)
    parts = urlsplit(request.url)
    assert (parts.scheme, parts.netloc, parts.fragment) == ("https", "status.example.test", "")
    assert parts.path.startswith("/base/")
    segments = parts.path.split("/")
    assert ".." not in segments
    # The task id stands whole in one path segment or one query value, and nowhere escapes it.
    places = [unquote(seg) for seg in segments] + [v for _, v in parse_qsl(parts.query)]
    assert places.count(task_id) == 1, request.url
    assert len(parse_qsl(parts.query)) <= 1
    assert "k-1" in "".join(request.headers.values())
    default = provider.status_request(source(name, api_key=SecretStr("k-1")), "t-1")
    assert default.url.startswith(provider.default_api_url)
