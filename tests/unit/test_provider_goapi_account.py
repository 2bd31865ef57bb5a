"""The GoAPI account-notification adapter (samples shaped from GoAPI's docs, see the README)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from relay.errors import PayloadError, VerificationError
from relay.events import TaskEvent
from relay.providers import default_providers
from relay.providers.base import Ignored, Inbound
from relay.providers.checks import source_checks
from relay.providers.goapi_account import GoapiAccountProvider
from relay.routing.loader import load_rules
from relay.routing.model import SourceConfig
from relay.routing.router import route

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "providers" / "goapi_account"
NOW = datetime(2025, 7, 1, 14, 0, 0, tzinfo=UTC)
SECRET = "acct-s3cr3t-relay"

# What each sample must become: (type, time, message substring, detail substring).
CASES: dict[str, tuple[str, int, str, str]] = {
    "quota_exchange_failed.json": (
        "go_api_quota_exchange_failed",
        1751371200,
        "Quota exchange failed",
        '"credis_remain": 120',
    ),
    "mj_bot_banned.json": (
        "mj_bot_banned",
        1751374800,
        "Midjourney bot has been banned",
        '"bot_name": "studio-bot-2"',
    ),
    # An empty message falls back to a readable line for the type.
    "mj_penalty_triggered.json": (
        "mj_penalty_triggered",
        1751378400,
        "Midjourney penalty triggered",
        '"cap_usage": 101',
    ),
}


def secret_config(secret: str = SECRET) -> SourceConfig:
    return SourceConfig(provider="goapi-account", secret=SecretStr(secret))


def token_config() -> SourceConfig:
    return SourceConfig(provider="goapi-account", token=SecretStr("acct-token-0123"))


def inbound(
    payload: Any, config: SourceConfig | None = None, headers: dict[str, str] | None = None
) -> Inbound:
    return Inbound(
        source="goapi-account",
        config=config if config is not None else secret_config(),
        headers=headers if headers is not None else {"x-webhook-secret": SECRET},
        body=json.dumps(payload).encode(),
        received_at=NOW,
    )


def sample(name: str) -> tuple[dict[str, Any], dict[str, str]]:
    body: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    headers = json.loads((FIXTURES / name.replace(".json", ".headers.json")).read_text())
    return body, {k.lower(): v for k, v in headers.items()}


def normalize(payload: Any) -> TaskEvent:
    event = GoapiAccountProvider().normalize(inbound(payload), payload, "ev-1")
    assert isinstance(event, TaskEvent)
    return event


def test_every_sample_has_a_case() -> None:
    samples = [p.name for p in FIXTURES.glob("*.json") if ".headers." not in p.name]
    assert sorted(name for name in samples if name != "expected.json") == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_sample_normalizes_to_an_alert(name: str) -> None:
    kind, when, message, detail = CASES[name]
    payload, headers = sample(name)
    provider = GoapiAccountProvider()
    req = inbound(payload, secret_config(headers["x-webhook-secret"]), headers)
    provider.authenticate(req)
    event = provider.normalize(req, payload, "ev-1")

    assert isinstance(event, TaskEvent)
    assert (event.provider, event.source, event.id) == ("goapi-account", "goapi-account", "ev-1")
    assert event.task_id == f"{kind}-{when}"
    assert event.dedupe_key == f"{kind}:{when}"
    assert (event.status, event.final, event.provider_status) == ("failed", True, kind)
    assert (event.task_type, event.model, event.test, event.progress) == (kind, None, False, None)
    assert event.outputs == []
    assert event.error is not None
    assert event.error.code == kind
    assert message in event.error.message
    assert event.error.detail is not None and detail in event.error.detail
    json.loads(event.error.detail)
    assert event.created_at == datetime.fromtimestamp(when, UTC)
    assert event.received_at == NOW
    assert event.match_labels()["error_code"] == (kind,)
    assert event.raw == json.loads((FIXTURES / name).read_text())
    TaskEvent.model_validate_json(event.model_dump_json())


def test_default_providers_has_goapi_account() -> None:
    provider = default_providers()["goapi-account"]
    assert isinstance(provider, GoapiAccountProvider)
    assert provider.name == "goapi-account"


def test_rules_route_account_alerts_to_ops(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        """
sources:
  goapi-account: {provider: goapi-account, secret: acct}
destinations:
  ops: {type: webhook, url: "https://ops.example/hook"}
  tasks: {type: webhook, url: "https://tasks.example/hook"}
routes:
  - match: ['provider="goapi-account"']
    to: [ops]
  - to: [tasks]
"""
    )
    providers = default_providers()
    loaded = load_rules(tmp_path, {}, providers.keys(), source_checks(providers))
    payload, _ = sample("mj_bot_banned.json")
    targets = route(loaded.rules, normalize(payload))
    assert [t.destination for t in targets] == ["ops"]


# -- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "x-webhook-secret header missing"),
        ({"x-webhook-secret": ""}, "x-webhook-secret header missing"),
        ({"x-webhook-secret": "wrong"}, "x-webhook-secret does not match"),
        ({"x-webhook-secret": SECRET + "x"}, "x-webhook-secret does not match"),
        ({"x-webhook-secret": "\udcff"}, "x-webhook-secret does not match"),
    ],
)
def test_authenticate_rejects_bad_secret(headers: dict[str, str], reason: str) -> None:
    payload, _ = sample("mj_bot_banned.json")
    with pytest.raises(VerificationError) as info:
        GoapiAccountProvider().authenticate(inbound(payload, secret_config(), headers))
    assert info.value.reason == reason
    assert SECRET not in str(info.value)


def test_authenticate_token_only_source_needs_no_header() -> None:
    payload, _ = sample("mj_bot_banned.json")
    GoapiAccountProvider().authenticate(inbound(payload, token_config(), {}))


def test_authenticate_refuses_a_source_with_neither() -> None:
    with pytest.raises(VerificationError):
        GoapiAccountProvider().authenticate(inbound({}, SourceConfig(provider="goapi-account"), {}))


def test_check_source_has_nothing_to_add() -> None:
    assert GoapiAccountProvider().check_source(secret_config()) == []


def test_an_old_notification_is_still_accepted() -> None:
    # No replay window: `time` is when the account event happened.
    payload = {"type": "no_active_mj_bot", "time": 1709035361, "message": "Test", "detail": {}}
    event = normalize(payload)
    assert event.created_at == datetime.fromtimestamp(1709035361, UTC)


# -- fields ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.pop("type"), "type:"),
        (lambda p: p.update(type=""), "type:"),
        (lambda p: p.update(type=3), "type:"),
        (lambda p: p.pop("time"), "time:"),
        (lambda p: p.update(time="yesterday"), "time:"),
        (lambda p: p.update(time=0), "time:"),
        (lambda p: p.update(time=True), "time:"),
        (lambda p: p.update(time=1e300), "time:"),
    ],
)
def test_missing_required_field_names_it(mutate: Any, field: str) -> None:
    payload, _ = sample("mj_bot_banned.json")
    mutate(payload)
    with pytest.raises(PayloadError) as info:
        normalize(payload)
    assert info.value.reason.startswith(field)


@pytest.mark.parametrize("body", [[], "x", 3, None])
def test_body_not_an_object(body: Any) -> None:
    with pytest.raises(PayloadError, match=r"^body"):
        normalize(body)


def test_time_as_numeric_string_and_milliseconds() -> None:
    event = normalize({"type": "mj_bot_no_fasthour", "time": "1751371200"})
    assert (event.task_id, event.created_at) == (
        "mj_bot_no_fasthour-1751371200",
        datetime(2025, 7, 1, 12, 0, tzinfo=UTC),
    )
    millis = normalize({"type": "mj_bot_no_fasthour", "time": 1751371200000})
    assert millis.created_at == datetime(2025, 7, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("detail", "want"),
    [
        ({}, None),
        ([], None),
        (None, None),
        ("", None),
        ("  plain words ", "plain words"),
        ({"bot_id": 1, "bot_name": "b"}, '{"bot_id": 1, "bot_name": "b"}'),
        ([1, "x"], '[1, "x"]'),
        (7, "7"),
        ({"api_key": "leak-me", "n": 1}, '{"api_key": "[redacted]", "n": 1}'),
    ],
)
def test_detail_as_text(detail: Any, want: str | None) -> None:
    payload = {"type": "gpt_account_unavailable", "time": 1751371200, "detail": detail}
    event = normalize(payload)
    assert event.error is not None
    assert event.error.detail == want


def test_long_detail_is_cut() -> None:
    payload = {"type": "x", "time": 1751371200, "detail": {"reason": "y" * 5000}}
    detail = normalize(payload).error
    assert detail is not None and detail.detail is not None
    assert len(detail.detail) == 2000 and detail.detail.endswith("…")


@pytest.mark.parametrize(
    ("message", "kind", "want"),
    [
        ("Bot captcha", "mj_bot_captcha_required", "Bot captcha"),
        ("", "mj_bot_captcha_required", "Midjourney bot needs a captcha solved"),
        (None, "gpt_usage_limit_reached", "GPT usage limit reached"),
        (5, "brand_new_type", "brand_new_type"),
    ],
)
def test_message_falls_back_to_the_type(message: Any, kind: str, want: str) -> None:
    event = normalize({"type": kind, "time": 1751371200, "message": message})
    assert event.error is not None and event.error.message == want


def test_secrets_in_the_body_are_redacted_in_raw() -> None:
    payload = {"type": "x", "time": 1751371200, "detail": {"secret": "leak-me"}}
    event = normalize(payload)
    assert "leak-me" not in event.model_dump_json()


# -- property: any JSON gives an event or the payload error, nothing else --------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
PAYLOADS = JSON | st.fixed_dictionaries(
    {
        "type": st.sampled_from(["mj_bot_banned", "new_type", ""]) | JSON,
        "time": st.integers(min_value=-10, max_value=10**16) | st.floats() | JSON,
    },
    optional={"message": JSON, "detail": JSON},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=PAYLOADS)
def test_any_json_gives_event_or_payload_error(payload: Any) -> None:
    snapshot = copy.deepcopy(payload)
    try:
        result = GoapiAccountProvider().normalize(inbound(payload), payload, "ev-1")
    except PayloadError:
        assert payload == snapshot
        return
    assert isinstance(result, TaskEvent | Ignored)
    if isinstance(result, TaskEvent):
        TaskEvent.model_validate_json(result.model_dump_json())
        assert result.status == "failed" and result.final
