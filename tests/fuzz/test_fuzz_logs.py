"""Fuzzing the log formatters (relay.logs) with records whose message and fields hold any text.

Proven for any message and any ``extra=`` fields (text with every control character, markup,
huge strings; numbers; None; lists):

- JSON: one line (no CR or LF, and no raw DEL, C1 control or U+2028/U+2029 that a viewer
  would break or act on), which parses back to the same message and the same fields;
- JSON with secrets to scrub: still parses, and no secret is left in any value;
- text: one line with no raw control character at all (C0, DEL, C1, U+2028/U+2029), the
  message shown as ``relay.escape.one_line`` writes it.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay.escape import one_line
from relay.logs import JsonFormatter, LogScrubber, TextFormatter
from relay.redaction import Secrets
from tests.fuzz.strategies import hostile_text

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_STANDARD = {*logging.makeLogRecord({}).__dict__, "message", "asctime", "taskName"}
_RAW_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

_TEXT = hostile_text() | st.text()
_VALUES = st.one_of(
    _TEXT,
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(_TEXT, max_size=3),
)
_FIELDS = st.dictionaries(
    st.from_regex(r"[a-z][a-z_]{0,14}", fullmatch=True).filter(lambda k: k not in _STANDARD),
    _VALUES,
    max_size=5,
)


def _record(message: str, fields: dict[str, Any]) -> logging.LogRecord:
    record = logging.LogRecord(
        "relay.fuzz", logging.WARNING, __file__, 1, "callback %s", (message,), None
    )
    record.__dict__.update(fields)
    return record


def _as_json(value: Any) -> Any:
    """A field as the JSON format writes it (anything else than JSON types by its str())."""
    return json.loads(json.dumps(value, default=str))


def _strict_json(line: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


@FUZZ
@given(message=_TEXT, fields=_FIELDS)
def test_json_lines_are_one_line_and_read_back_as_logged(
    message: str, fields: dict[str, Any]
) -> None:
    line = JsonFormatter(LogScrubber()).format(_record(message, fields))
    assert "\n" not in line and "\r" not in line
    assert not _RAW_CONTROLS.search(line), repr(line)
    parsed = _strict_json(line)
    assert parsed["message"] == f"callback {message}"
    for key, value in fields.items():
        assert parsed[key] == _as_json(value), key


@FUZZ
@given(message=_TEXT, fields=_FIELDS)
def test_text_lines_are_one_line_without_controls(message: str, fields: dict[str, Any]) -> None:
    line = TextFormatter(LogScrubber()).format(_record(message, fields))
    assert not _RAW_CONTROLS.search(line), repr(line)
    assert f"relay.fuzz: callback {one_line(message)}" in line
    for key in fields:
        assert f" {key}=" in line


# A secret starting with a letter JSON also uses in an escape (\n, \t, \u...): the encoded
# line holds "\" + that letter + the rest wherever the text held a control character before
# the rest of the secret.
_SECRETS = st.from_regex(r"[nturbf][a-z0-9]{5,12}", fullmatch=True)


@FUZZ
@given(secret=_SECRETS, before=_TEXT, after=_TEXT, controls=st.sampled_from("\n\t\r\b\f\x01"))
@example(secret="nabc123", before="", after="", controls="\n")
def test_json_lines_scrubbed_of_secrets_still_parse(
    secret: str, before: str, after: str, controls: str
) -> None:
    scrubber = LogScrubber(Secrets([secret]))
    # The secret itself, and the text that only looks like it once encoded.
    message = f"{before}{secret}{after}{controls}{secret[1:]}"
    line = JsonFormatter(scrubber).format(_record(message, {"reason": f"{controls}{secret}"}))
    parsed = _strict_json(line)
    for value in parsed.values():
        assert secret not in str(value)
