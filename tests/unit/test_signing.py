import base64

import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from relay import signing

SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()


def test_signature_verifies_with_the_reference_library() -> None:
    key = signing.decode_secret(SECRET_STR := SecretStr(SECRET))
    assert SECRET_STR.get_secret_value() == SECRET
    body = b'{"type":"task.succeeded"}'
    import time

    ts = int(time.time())
    headers = signing.headers(key, "dlv_1", ts, body)
    assert Webhook(SECRET).verify(body, headers) == {"type": "task.succeeded"}


def test_signature_depends_on_id_timestamp_and_body() -> None:
    key = b"k" * 24
    base = signing.sign(key, "a", 1, b"x")
    assert base.startswith("v1,")
    assert (
        len(
            {
                base,
                signing.sign(key, "b", 1, b"x"),
                signing.sign(key, "a", 2, b"x"),
                signing.sign(key, "a", 1, b"y"),
            }
        )
        == 4
    )


def test_without_a_key_there_is_no_signature_header() -> None:
    assert signing.headers(None, "a", 1, b"x") == {"webhook-id": "a", "webhook-timestamp": "1"}


@pytest.mark.parametrize("bad", ["nope", "whsec_***not-base64***"])
def test_bad_secrets_are_refused_without_echoing_them(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        signing.decode_secret(SecretStr(bad))
    assert bad not in str(info.value)
