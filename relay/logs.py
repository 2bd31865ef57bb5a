"""The process's log: JSON (one object a line) or text, never showing a known secret.

``setup_logging`` installs one stderr handler on the root logger, so relay's lines and
uvicorn's share one format. Structured fields are passed with ``extra=`` (``log.info("callback
accepted", extra={"source": ..., "event_id": ...})``): the JSON format puts each one beside
``time``, ``level``, ``logger`` and ``message``; the text format appends them as key=value.

Every line is scrubbed of the secrets the process knows (``LogScrubber``): the settings' own
from the start, and those of each runtime's rules in force once ``build_runtime`` registers
them with ``follow_in_logs`` (a reload is followed at once). It is the last line of defence:
code should not log secrets in the first place.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import orjson

from relay.escape import one_line
from relay.redaction import Secrets, longest_first, mask_path, scrub, settings_secrets
from relay.settings import Settings

LOG_FORMATS = ("json", "text")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has: anything else on a record came from ``extra=`` (except
# uvicorn's terminal-coloured copy of its message, left out).
_STANDARD = frozenset(
    (*logging.makeLogRecord({}).__dict__, "message", "asctime", "taskName", "color_message")
)


class LogScrubber:
    """Replaces every secret of the followed ``Secrets`` with "[redacted]"."""

    def __init__(self, *followed: Secrets) -> None:
        self._followed: list[Secrets] = list(followed)
        self._seen: list[tuple[str, ...]] = []
        self._values: tuple[str, ...] = ()
        self._encoded_for: tuple[str, ...] | None = None
        self._encoded: tuple[str, ...] = ()

    def follow(self, secrets: Secrets) -> Callable[[], None]:
        """Scrub ``secrets`` too, until the returned function is called."""
        self._followed.append(secrets)
        return lambda: self._followed.remove(secrets)

    def values(self) -> tuple[str, ...]:
        """Every secret, longest first."""
        current = [s.values() for s in self._followed]
        # Merged longest first: a shorter secret inside a longer one must not leave its tail.
        if len(current) != len(self._seen) or any(
            a is not b for a, b in zip(current, self._seen, strict=True)
        ):
            self._values = longest_first(v for values in current for v in values)
            self._seen = current
        return self._values

    def __call__(self, text: str) -> str:
        return scrub(text, self.values())

    def encoded(self, secrets: tuple[str, ...]) -> tuple[str, ...]:
        """``secrets`` as they appear inside an encoded JSON string (cached per tuple)."""
        if secrets is not self._encoded_for:
            self._encoded = tuple(_encode(s)[1:-1] for s in secrets)
            self._encoded_for = secrets
        return self._encoded


# Built once: json.dumps with any keyword builds a new encoder on every call. ``default``:
# a field of another type is shown as its str().
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
# orjson writes the same compact JSON about five times faster (a line is logged per callback
# and per delivery); dates and dataclasses are left to ``default`` as the stdlib encoder does.
_ORJSON_OPTIONS = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)


def _encode(value: Any) -> str:
    """``value`` as compact JSON. What orjson refuses (an integer beyond 64 bits, a lone
    surrogate) is written by the stdlib encoder."""
    try:
        return orjson.dumps(value, default=str, option=_ORJSON_OPTIONS).decode()
    except (orjson.JSONEncodeError, TypeError):
        return _ENCODER.encode(value)


# A text-format value is quoted (as a JSON string) if it holds a space, '"', '=' or a control
# character: quoted, the controls are escapes, so a value cannot end its line or drive the
# terminal.
_NEEDS_QUOTES = re.compile(
    '[\\s"=\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]'
)
# What JSON leaves raw in a string but a terminal or a log viewer does not: DEL, the C1
# controls (NEL ends a line; CSI starts an escape sequence) and U+2028/U+2029 (line and
# paragraph separators), and the bidirectional controls (they reorder what a viewer shows).
# Written as \u escapes: the same JSON value, on one visible line.
_JSON_CONTROLS = {
    c: f"\\u{c:04x}"
    for c in (
        0x7F,
        *range(0x80, 0xA0),
        0x2028,
        0x2029,
        0x200E,
        0x200F,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    )
}


def _scrubbed(value: Any, secrets: tuple[str, ...]) -> Any:
    """``value`` with every secret scrubbed from its strings (keys too); values of other
    types as the encoder would write them (their str(), scrubbed)."""
    if isinstance(value, str):
        return scrub(value, secrets) if secrets else value
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {_scrubbed(k, secrets): _scrubbed(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v, secrets) for v in value]
    return _scrubbed(str(value), secrets)


def _fields(record: logging.LogRecord) -> list[tuple[str, Any]]:
    return [item for item in record.__dict__.items() if item[0] not in _STANDARD]


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601, UTC, milliseconds), level, logger, message,
    the ``extra=`` fields, and ``exception`` with the traceback if there is one. Every string
    in it is scrubbed before it is encoded: scrubbing the encoded line instead could match
    from inside an escape (``\n`` then a secret starting with "abc" reads as "nabc...")
    and leave a line that is not JSON."""

    def __init__(self, scrubber: LogScrubber) -> None:
        super().__init__()
        self.scrubber = scrubber
        self._second = -1
        self._stamp = ""

    def _time(self, record: logging.LogRecord) -> str:
        # Lines come many a second: the date and time of day are formatted once a second.
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        secrets = self.scrubber.values()
        text = _encode(line)
        # Most lines hold no secret. A string holding one encodes to text holding the secret's
        # own encoded form (JSON escapes character by character), so when no encoded secret is
        # in the line, nothing needs scrubbing; otherwise every string is scrubbed, then encoded.
        if any(encoded in text for encoded in self.scrubber.encoded(secrets)):
            text = _encode(_scrubbed(line, secrets))
        if not text.isascii() or "\x7f" in text:
            text = text.translate(_JSON_CONTROLS)
        return text


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``, for a person at a terminal; the whole
    line (traceback included) is scrubbed."""

    def __init__(self, scrubber: LogScrubber) -> None:
        super().__init__(TEXT_FORMAT)
        self.scrubber = scrubber

    def format(self, record: logging.LogRecord) -> str:
        # The message may quote outside text (a path, a remote answer): one line, always.
        record.message = one_line(record.getMessage())
        record.asctime = self.formatTime(record)
        line = self.formatMessage(record)
        fields = " ".join(f"{key}={_text_value(value)}" for key, value in _fields(record))
        if fields:
            line = f"{line} {fields}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return self.scrubber(line)


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    text = str(value)
    if not text or _NEEDS_QUOTES.search(text):
        return _ENCODER.encode(text).translate(_JSON_CONTROLS)
    return text


def _uvicorn_lines(record: logging.LogRecord) -> bool:
    """uvicorn's lines as relay shows them: its ordinary start and stop lines are logged as
    "uvicorn.error", which reads as a fault; its access lines carry the raw path, URL token
    and all."""
    if record.name == "uvicorn.error":
        record.name = "uvicorn"
    elif record.name == "uvicorn.access" and isinstance(record.args, tuple):
        args = list(record.args)
        if len(args) >= 3 and isinstance(args[2], str):
            args[2] = mask_path(args[2])
            record.args = tuple(args)
    return True


def choose_format(wanted: str | None, stream: TextIO) -> str:
    """``wanted`` (json or text), or by default JSON unless ``stream`` is a terminal."""
    if wanted is not None:
        return wanted
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # a closed or odd stream
        return "json"


def setup_logging(settings: Settings, stream: TextIO | None = None) -> LogScrubber:
    """Send every log line to ``stream`` (stderr) in ``settings.log_format``, at
    ``settings.log_level``, scrubbed of the settings' secrets; returns the scrubber, which
    ``build_runtime`` also teaches the rules' secrets (see ``follow_in_logs``). Calling it
    again replaces the handler it installed before."""
    out = sys.stderr if stream is None else stream
    scrubber = LogScrubber(Secrets(settings_secrets(settings)))
    formatter: logging.Formatter
    if choose_format(settings.log_format, out) == "json":
        formatter = JsonFormatter(scrubber)
    else:
        formatter = TextFormatter(scrubber)
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(_uvicorn_lines)
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old.formatter, JsonFormatter | TextFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # No format shows where a line was logged from, or its thread and process: not computed
    # for every record (the Logging HOWTO's "Optimization"; finding the caller alone is a
    # fifth of a line's cost).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # watchfiles says "N changes detected" at INFO for every save; relay's own line says what
    # the reload did.
    logging.getLogger("watchfiles").setLevel(max(logging.WARNING, root.level))
    return scrubber


def follow_in_logs(secrets: Secrets) -> Callable[[], None]:
    """Have the log installed by ``setup_logging`` (if any) scrub ``secrets`` too, until the
    returned function is called. The scrubber is found on the root logger's handlers: logging
    is the one piece of process-wide state a runtime cannot be handed."""
    undo: list[Callable[[], None]] = []
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(formatter, JsonFormatter | TextFormatter):
            undo.append(formatter.scrubber.follow(secrets))

    def stop() -> None:
        for step in undo:
            step()

    return stop
