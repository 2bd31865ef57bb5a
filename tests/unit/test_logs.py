"""The log formatters, the secret scrubber and what it knows: relay.logs and relay.redaction."""

from __future__ import annotations

import base64
import datetime
import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from relay.logs import (
    JsonFormatter,
    LogScrubber,
    TextFormatter,
    choose_format,
    follow_in_logs,
    setup_logging,
)
from relay.redaction import (
    Secrets,
    database_passwords,
    mask_path,
    rule_secrets,
    settings_secrets,
)
from relay.routing.model import Rules
from relay.settings import Settings

WHSEC_KEY = base64.b64encode(b"logs-unit-signing-secret").decode()
WHSEC = f"whsec_{WHSEC_KEY}"
OLD_WHSEC = "whsec_" + base64.b64encode(b"the-rotated-out-secret").decode()


def every_secret_rules() -> Rules:
    return Rules.model_validate(
        {
            "smtp": {"host": "127.0.0.1", "password": "shared-smtp-pass", "username": "u"},
            "sources": {
                "signed": {"provider": "goapi", "secret": "source-hmac-secret"},
                "tokened": {"provider": "novita", "token": "url-token-1234"},
                "fetching": {"provider": "goapi", "api_key": "provider-api-key"},
            },
            "destinations": {
                "hook": {
                    "type": "webhook",
                    "url": "https://down.example.com/in",
                    "secret": f"{WHSEC} {OLD_WHSEC}",
                    "headers": {
                        "Authorization": "Bearer header-bearer-token",
                        "X-Short-Key": "k3y9",
                        "Accept": "*/*",
                    },
                },
                "slack": {
                    "type": "slack",
                    "token": "xoxb-slack-bot-token",
                    "channel": "#c",
                },
                "slackhook": {
                    "type": "slack",
                    "webhook_url": "https://hooks.slack.com/services/T0/B0/slackwebhooksecret",
                },
                "mail": {
                    "type": "email",
                    "to": ["ops@example.com"],
                    "password": "dest-smtp-pass",
                    "username": "u",
                },
            },
        }
    )


def test_rule_secrets_lists_every_secret_the_rules_hold() -> None:
    found = set(rule_secrets(every_secret_rules()))
    expected = {
        "source-hmac-secret",
        "url-token-1234",
        "provider-api-key",
        "shared-smtp-pass",
        "dest-smtp-pass",
        WHSEC,
        WHSEC_KEY,
        OLD_WHSEC,
        "Bearer header-bearer-token",
        "header-bearer-token",
        "k3y9",  # short, but its header's name says it is a credential
        "xoxb-slack-bot-token",
        "https://hooks.slack.com/services/T0/B0/slackwebhooksecret",
        "/services/T0/B0/slackwebhooksecret",
        "slackwebhooksecret",
    }
    assert expected <= found
    assert "*/*" not in found  # a short value of an ordinary header is no secret
    assert "Bearer" not in found


def test_settings_secrets_are_the_admin_token_and_the_database_password() -> None:
    settings = Settings(
        db="postgresql://relay:pa%24%24word@db.example.com/relay",
        admin_token=SecretStr("admin-token-0123456789"),
    )
    assert set(settings_secrets(settings)) == {"admin-token-0123456789", "pa%24%24word", "pa$$word"}
    assert database_passwords("postgresql://db.example.com/relay?password=qpass1") == ["qpass1"]
    assert database_passwords("sqlite:///relay.db") == []


def test_secrets_follow_the_rules_in_force() -> None:
    current = [Rules()]
    secrets = Secrets(["fixed-secret"], lambda: current[0])
    assert secrets.values() == ("fixed-secret",)
    current[0] = Rules.model_validate(
        {"sources": {"s": {"provider": "goapi", "secret": "reloaded-secret"}}}
    )
    assert secrets.scrub("a reloaded-secret and a fixed-secret") == "a [redacted] and a [redacted]"


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/hooks/novita/tok123", "/hooks/novita/****"),
        ("/hooks/novita/tok123/callback", "/hooks/novita/****/callback"),
        ("/hooks/goapi", "/hooks/goapi"),
        ("/hooks/goapi/callback", "/hooks/goapi/callback"),
        ("/hooks/a/b/c/d", "/hooks/a/****/****/****"),
        ("/hooks/a/callback/x", "/hooks/a/****/****"),
        ("/hooks/s?token=abc&x=1", "/hooks/s?token=****&x=1"),
        ("/healthz", "/healthz"),
    ],
)
def test_mask_path(path: str, shown: str) -> None:
    assert mask_path(path) == shown


def test_a_longer_secret_is_scrubbed_whole_even_if_a_shorter_one_comes_from_elsewhere() -> None:
    scrubber = LogScrubber(Secrets(["abcd"]))
    scrubber.follow(Secrets(["abcdefgh"]))
    assert scrubber("x abcdefgh y abcd") == "x [redacted] y [redacted]"


def record(message: str, *args: object, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError('boom with tricky"sec\\ret')
        except RuntimeError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("relay.test", logging.WARNING, __file__, 1, message, args, exc_info)
    made.__dict__.update(extra)
    return made


TRICKY = 'tricky"sec\\ret'  # JSON escapes both: must still be found


def test_json_lines_carry_the_fields_and_no_secret() -> None:
    formatter = JsonFormatter(LogScrubber(Secrets([TRICKY, "plain-secret"])))
    line = formatter.format(
        record(
            "refused %s",
            "plain-secret",
            exc=True,
            source="s",
            attempt=3,
            duplicate=False,
            reason=f"bad {TRICKY}",
            next_attempt_at=None,
            tags=["plain-secret", 1],
        )
    )
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "warning" and parsed["logger"] == "relay.test"
    assert parsed["time"].endswith("Z") and parsed["time"][10] == "T"
    assert parsed["message"] == "refused [redacted]"
    assert parsed["source"] == "s" and parsed["attempt"] == 3 and parsed["duplicate"] is False
    assert parsed["reason"] == "bad [redacted]"
    assert parsed["next_attempt_at"] is None
    assert parsed["tags"] == ["[redacted]", 1]
    assert "RuntimeError: boom with [redacted]" in parsed["exception"]
    for secret in (TRICKY, json.dumps(TRICKY)[1:-1], "plain-secret"):
        assert secret not in line


def test_text_lines_append_the_fields_as_key_value() -> None:
    formatter = TextFormatter(LogScrubber(Secrets(["plain-secret"])))
    line = formatter.format(
        record("callback %s", "accepted", source="s", reason="two words", token="plain-secret")
    )
    assert line.endswith(
        ' WARNING relay.test: callback accepted source=s reason="two words" token=[redacted]'
    )
    multi = formatter.format(record("failed", exc=True))
    assert "\nTraceback" in multi and "plain-secret" not in multi


def test_outside_text_cannot_forge_a_text_line() -> None:
    formatter = TextFormatter(LogScrubber(Secrets()))
    line = formatter.format(
        record("no hook at %s", "/hooks/x\r\n2026-01-01 INFO relay: forged", task_id="a\nb")
    )
    assert "\n" not in line and "\r" not in line
    assert "no hook at /hooks/x\\r\\n2026-01-01 INFO relay: forged" in line
    assert 'task_id="a\\nb"' in line


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_format_defaults_to_json_unless_stderr_is_a_terminal() -> None:
    assert choose_format(None, io.StringIO()) == "json"
    assert choose_format(None, _Tty()) == "text"
    assert choose_format("json", _Tty()) == "json"
    assert choose_format("text", io.StringIO()) == "text"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """setup_logging changes the root logger: put it back afterwards. uvicorn's loggers are
    as ``relay serve`` leaves them (log_config=None), whatever an in-process uvicorn of an
    earlier test configured for them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = []
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.level, logger.propagate))
        logger.handlers, logger.propagate = [], True
        logger.setLevel(logging.NOTSET)
    yield
    for logger, its_handlers, its_level, propagate in saved:
        logger.handlers, logger.propagate = its_handlers, propagate
        logger.setLevel(its_level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_setup_logging_scrubs_settings_and_followed_secrets_and_uvicorn_paths() -> None:
    out = io.StringIO()
    settings = Settings(admin_token=SecretStr("admin-token-0123456789"), log_format="json")
    setup_logging(settings, out)
    setup_logging(settings, out)  # again: replaces its handler, never doubles the lines
    rules_secrets = Secrets(["rules-secret"])
    stop = follow_in_logs(rules_secrets)
    log = logging.getLogger("relay.test")
    log.info("admin-token-0123456789 and rules-secret")
    stop()
    log.info("after: rules-secret")
    logging.getLogger("uvicorn.error").info("Started server process")
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "POST", "/hooks/src/guessed-token", "1.1", 401
    )
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["message"] for line in lines] == [
        "[redacted] and [redacted]",
        "after: rules-secret",
        "Started server process",
        '127.0.0.1:5 - "POST /hooks/src/**** HTTP/1.1" 401',
    ]
    assert lines[2]["logger"] == "uvicorn"


def test_bidirectional_controls_are_escaped_in_both_formats() -> None:
    record = logging.LogRecord("relay.test", logging.INFO, __file__, 1, "hook", None, None)
    record.task_id = "abc\u202edcb"
    text = TextFormatter(LogScrubber(Secrets())).format(record)
    assert "\u202e" not in text and 'task_id="abc\\u202edcb"' in text
    line = JsonFormatter(LogScrubber(Secrets())).format(record)
    assert "\u202e" not in line and json.loads(line)["task_id"] == "abc\u202edcb"


def test_json_lines_hold_values_the_fast_encoder_refuses() -> None:
    """orjson writes most lines; what it cannot (an integer beyond 64 bits, a lone surrogate
    from outside text, a non-string key, an object) still gives one JSON line, scrubbed."""
    formatter = JsonFormatter(LogScrubber(Secrets(["plain-secret"])))
    when = datetime.datetime(2026, 12, 3, 5, 0, tzinfo=datetime.UTC)
    line = formatter.format(
        record(
            "odd",
            huge=2**70,
            text="half \ud800 of a pair, plain-secret",
            keys={1: "one", None: "none"},
            when=when,
        )
    )
    parsed = json.loads(line)
    assert parsed["huge"] == 2**70
    assert parsed["text"] == "half \ud800 of a pair, [redacted]"
    assert parsed["keys"] == {"1": "one", "null": "none"}
    # As the stdlib encoder's default shows it: str(), not orjson's own ISO form.
    assert parsed["when"] == str(when)
