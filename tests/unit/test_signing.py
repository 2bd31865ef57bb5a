import base64
import contextlib
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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
    headers = signing.headers([key], "dlv_1", ts, body)
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
    assert signing.headers([], "a", 1, b"x") == {"webhook-id": "a", "webhook-timestamp": "1"}


@pytest.mark.parametrize("bad", ["nope", "whsec_***not-base64***"])
def test_bad_secrets_are_refused_without_echoing_them(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        signing.decode_secret(SecretStr(bad))
    assert bad not in str(info.value)


# Several outbound keys: a rotation without downtime.

OTHER = "whsec_" + base64.b64encode(b"n" * 32).decode()


def test_every_key_signs_and_either_alone_verifies_with_the_reference_library() -> None:
    import time

    keys = signing.decode_secrets(SecretStr(f"{SECRET}  {OTHER}\n"))
    assert keys == [b"k" * 24, b"n" * 32]
    body = b'{"type":"task.failed"}'
    headers = signing.headers(keys, "dlv_2", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(SECRET).verify(body, headers) == {"type": "task.failed"}
    assert Webhook(OTHER).verify(body, headers) == {"type": "task.failed"}


@pytest.mark.parametrize(
    ("value", "problems"),
    [
        (f"{SECRET} {OTHER}", []),
        ("   ", ["holds no whsec_ secret"]),
        (f"{SECRET} nope", ["webhook secret must start with whsec_ (secret 2 of 2)"]),
        (
            "whsec_ whsec_***",
            [
                "webhook secret is empty after whsec_ (secret 1 of 2)",
                "webhook secret is not valid base64 after whsec_ (secret 2 of 2)",
            ],
        ),
    ],
)
def test_secret_problems_name_which_secret_and_never_its_value(
    value: str, problems: list[str]
) -> None:
    assert signing.secret_problems(SecretStr(value)) == problems
    if problems:
        with pytest.raises(ValueError, match="secret") as info:
            signing.decode_secrets(SecretStr(value))
        assert str(info.value) == problems[0]


# verify: the inbound side.

KEY = b"k" * 24
OLD_KEY = b"o" * 32
NOW = 1_751_371_200  # 2025-07-01T12:00:00Z
BODY = b'{"type":"task.succeeded","data":{}}'


def check(
    signature: str | None = None,
    *,
    keys: tuple[bytes, ...] = (KEY,),
    msg_id: str = "dlv_1",
    timestamp: str = str(NOW),
    body: bytes = BODY,
    now: float = NOW,
    tolerance: float = 300,
) -> None:
    if signature is None:
        signature = signing.sign(KEY, "dlv_1", NOW, BODY)
    signing.verify(keys, msg_id, timestamp, signature, body, now, tolerance)


def test_verify_accepts_our_own_signature() -> None:
    sent = signing.headers([KEY], "dlv_9", NOW, BODY)
    signing.verify(
        [KEY],
        sent["webhook-id"],
        sent["webhook-timestamp"],
        sent["webhook-signature"],
        BODY,
        NOW,
        300,
    )


def test_signature_error_is_one_value_error() -> None:
    assert issubclass(signing.SignatureError, ValueError)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"body": BODY + b" "}, "webhook-signature: no signature matches"),
        ({"msg_id": "dlv_2"}, "webhook-signature: no signature matches"),
        ({"timestamp": str(NOW + 1), "now": NOW + 1}, "webhook-signature: no signature matches"),
        ({"keys": (b"x" * 24,)}, "webhook-signature: no signature matches"),
        ({"keys": ()}, "no key to verify the signature with"),
    ],
)
def test_verify_refuses_anything_changed(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(signing.SignatureError) as info:
        check(**changes)
    assert str(info.value) == reason


def test_key_rotation_accepts_old_and_new_keys() -> None:
    new = signing.sign(KEY, "dlv_1", NOW, BODY)
    old = signing.sign(OLD_KEY, "dlv_1", NOW, BODY)
    # The receiver knows both keys while the sender moves from one to the other.
    for header in (new, old, f"{old} {new}", f"{new} {old}"):
        check(header, keys=(OLD_KEY, KEY))
    # The sender signs with both keys while the receiver knows only one of them.
    check(f"{old} {new}", keys=(KEY,))
    check(f"{new} {old}", keys=(OLD_KEY,))
    with pytest.raises(signing.SignatureError):
        check(old, keys=(KEY,))


GOOD = signing.sign(KEY, "dlv_1", NOW, BODY)
GOOD_B64 = GOOD.removeprefix("v1,")
NOT_INT = "webhook-timestamp: not an integer unix time in seconds"
NO_V1 = "webhook-signature: no valid v1 signature in the header"


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (f"v2,{GOOD_B64} {GOOD}", True),  # other versions are skipped
        (f"v1 {GOOD}", True),  # an entry without a comma is skipped
        (f"v1,***not-base64*** {GOOD}", True),  # bad base64 is skipped
        (f"v1,{GOOD_B64[:-1]} {GOOD}", True),  # bad padding is skipped
        (f"v1, {GOOD}", True),  # an empty signature is skipped
        (f"v1,é {GOOD}", True),  # non-ASCII base64 is skipped
        (f"  {GOOD}  ", True),  # extra spaces
        (f"v1a,{GOOD_B64}", False),
        (f"V1,{GOOD_B64}", False),
        (f"v1,{GOOD_B64}=", False),
    ],
)
def test_verify_skips_entries_it_cannot_use(header: str, accepted: bool) -> None:
    if accepted:
        check(header)
    else:
        with pytest.raises(signing.SignatureError):
            check(header)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"msg_id": ""}, "webhook-id header missing"),
        ({"timestamp": ""}, "webhook-timestamp header missing"),
        ({"timestamp": "soon"}, NOT_INT),
        ({"timestamp": f"{NOW}.5"}, NOT_INT),
        ({"timestamp": f"-{NOW}"}, NOT_INT),
        ({"timestamp": f" {NOW}"}, NOT_INT),
        ({"timestamp": "\uff11\uff12\uff13"}, NOT_INT),
        ({"timestamp": "9" * 5000}, NOT_INT),
        ({"signature": ""}, "webhook-signature header missing"),
        ({"signature": "v1"}, NO_V1),
        ({"signature": "nocomma"}, NO_V1),
        ({"signature": "v1,,,"}, NO_V1),
        ({"signature": "v1,!!!!"}, NO_V1),
        ({"signature": f"v2,{GOOD_B64}"}, NO_V1),
        ({"signature": "   "}, NO_V1),
    ],
)
def test_every_malformed_header_is_a_signature_error(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(signing.SignatureError) as info:
        check(**changes)
    assert str(info.value) == reason


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (-301, f"webhook-timestamp {NOW - 301} is too old (outside the 300 s replay window)"),
        (301, f"webhook-timestamp {NOW + 301} is in the future (outside the 300 s replay window)"),
        (-86400, f"webhook-timestamp {NOW - 86400} is too old (outside the 300 s replay window)"),
    ],
)
def test_stale_and_future_timestamps_are_refused(offset: int, reason: str) -> None:
    signature = signing.sign(KEY, "dlv_1", NOW + offset, BODY)
    with pytest.raises(signing.SignatureError) as info:
        check(signature, timestamp=str(NOW + offset))
    assert str(info.value) == reason


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamps_at_the_edge_of_the_window_are_accepted(offset: int) -> None:
    check(signing.sign(KEY, "dlv_1", NOW + offset, BODY), timestamp=str(NOW + offset))


def test_the_timestamp_is_checked_before_the_signature() -> None:
    # A stale request with a garbage signature is refused for its age: no HMAC was needed.
    with pytest.raises(signing.SignatureError, match="too old"):
        check("v1,AAAA", timestamp=str(NOW - 3600))


def test_reasons_never_contain_the_signature() -> None:
    wrong = signing.sign(b"x" * 24, "dlv_1", NOW, BODY)
    with pytest.raises(signing.SignatureError) as info:
        check(wrong)
    assert wrong.removeprefix("v1,") not in str(info.value)


@settings(max_examples=300)
@given(
    msg_id=st.text(),
    timestamp=st.one_of(st.text(), st.integers(NOW - 400, NOW + 400).map(str)),
    signature=st.one_of(
        st.text(),
        st.lists(
            st.one_of(
                st.text(),
                st.sampled_from(["v1,", "v1,AAAA", "v2,", GOOD, ",", "v1,=", "v1,\x00"]),
                st.binary().map(lambda b: "v1," + base64.b64encode(b).decode()),
            )
        ).map(" ".join),
    ),
    body=st.binary(max_size=64),
)
def test_arbitrary_headers_only_ever_raise_signature_error(
    msg_id: str, timestamp: str, signature: str, body: bytes
) -> None:
    with contextlib.suppress(signing.SignatureError):
        signing.verify([KEY, OLD_KEY], msg_id, timestamp, signature, body, NOW, 300)


def test_a_reference_library_signature_verifies_with_ours() -> None:
    secret = "whsec_" + base64.b64encode(b"reference-interop-key-32-bytes!!").decode()
    sent_at = datetime.fromtimestamp(NOW, UTC)
    reference = Webhook(secret).sign("msg_2Lh9KRb0pWM", sent_at, BODY.decode())
    key = signing.decode_secret(SecretStr(secret))
    signing.verify([key], "msg_2Lh9KRb0pWM", str(NOW), reference, BODY, NOW, 300)
    # And the other way round, already covered above for headers(): the same bytes.
    assert reference == signing.sign(key, "msg_2Lh9KRb0pWM", NOW, BODY)
