"""Environment settings are validated like the rules: every bad variable named, none guessed."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.settings import Settings, SettingsError


def test_no_variables_give_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "RELAY_RULES": "/etc/relay/rules",
            "RELAY_DB": "postgresql://relay@db/relay",
            "RELAY_HOST": "0.0.0.0",
            "RELAY_PORT": "9001",
            "RELAY_MAX_BODY": "2048",
            "RELAY_MAX_DEPTH": "16",
            "RELAY_LEASE_SECONDS": "12.5",
            "RELAY_CONCURRENCY": "8",
            "RELAY_LOG_LEVEL": "WARNING",
            "RELAY_DISPATCH": "off",
        }
    )
    assert settings == Settings(
        rules=Path("/etc/relay/rules"),
        db="postgresql://relay@db/relay",
        host="0.0.0.0",
        port=9001,
        max_body=2048,
        max_depth=16,
        lease_seconds=12.5,
        concurrency=8,
        log_level="warning",
        dispatch=False,
    )


def test_port_comes_from_port_when_relay_port_is_unset() -> None:
    assert Settings.from_env({"PORT": "5000"}).port == 5000
    assert Settings.from_env({"PORT": "5000", "RELAY_PORT": "6000"}).port == 6000
    # Empty counts as unset.
    assert Settings.from_env({"RELAY_PORT": "", "RELAY_DB": ""}) == Settings()


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"RELAY_PORT": "abc"}, "RELAY_PORT='abc': must be a whole number"),
        ({"PORT": "http"}, "RELAY_PORT='http': must be a whole number"),
        ({"RELAY_PORT": "70000"}, "RELAY_PORT='70000': input should be less than or equal"),
        ({"RELAY_LOG_LEVEL": "verbose"}, "RELAY_LOG_LEVEL='verbose': must be one of debug,"),
        ({"RELAY_DISPATCH": "maybe"}, "RELAY_DISPATCH='maybe': must be 1 or 0"),
        ({"RELAY_LEASE_SECONDS": "nan"}, "RELAY_LEASE_SECONDS='nan': "),
        ({"RELAY_LEASE_SECONDS": "0"}, "RELAY_LEASE_SECONDS='0': input should be greater than 0"),
        ({"RELAY_CONCURRENCY": "1.5"}, "RELAY_CONCURRENCY='1.5': "),
        ({"RELAY_MAX_BODY": "-1"}, "RELAY_MAX_BODY='-1': input should be greater than or equal"),
    ],
)
def test_a_bad_variable_is_named_with_its_value(env: dict[str, str], problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    [found] = caught.value.problems
    assert found.startswith(problem), found


def test_every_bad_variable_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"RELAY_PORT": "abc", "RELAY_LOG_LEVEL": "loud", "RELAY_DISPATCH": "x"})
    assert [p.split("=")[0] for p in caught.value.problems] == [
        "RELAY_PORT",
        "RELAY_LOG_LEVEL",
        "RELAY_DISPATCH",
    ]
