"""What every human-facing channel shows about one event, decided once.

``summarize`` turns a TaskEvent into a ``Summary``: a title ("Kling video ready"), the outcome and
its mark, the prompt, ordered facts, the outputs with display labels, the error and the expiry.
The Slack and email renderers only lay a Summary out, so both show the same content.

Every string here is plain text, cleaned of control characters but not escaped: escaping is the
renderer's job (mrkdwn and HTML escape differently). Text helpers live in ``relay.render.text``,
model names and task kinds in ``relay.render.models``, provider names in ``relay.render.names``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from relay.events import OutputKind, Status, TaskEvent
from relay.render.models import KIND_NAMES, model_display, task_kind
from relay.render.names import ProviderInfo, ProviderNames
from relay.render.text import (
    clean_text,
    format_time,
    human_duration,
    humanize,
    one_line,
    readable_detail,
    shorten,
    utc,
    web_url,
)

# How much of a prompt the renderers show (a prompt can be a whole song's lyrics).
PROMPT_LIMIT = 1500
# Longest model name shown in a title; the full name is in the facts.
TITLE_MODEL_LIMIT = 40

OUTCOME_EMOJI: dict[str, str] = {
    "succeeded": ":white_check_mark:",
    "failed": ":x:",
    "processing": ":hourglass_flowing_sand:",
    "pending": ":inbox_tray:",
    "cancelled": ":no_entry_sign:",
}
OUTCOME_SYMBOL: dict[str, str] = {
    "succeeded": "\u2705",
    "failed": "\u274c",
    "processing": "\u23f3",
    "pending": "\U0001f4e5",
    "cancelled": "\U0001f6ab",
}
ALERT_EMOJI = ":rotating_light:"
ALERT_SYMBOL = "\U0001f6a8"

KIND_EMOJI: dict[str, str] = {
    "image": ":frame_with_picture:",
    "video": ":film_frames:",
    "audio": ":musical_note:",
    "model3d": ":package:",
    "text": ":memo:",
    "file": ":page_facing_up:",
}
# Facts whose value is an identifier: shown as code, never reworded.
CODE_FACTS: frozenset[str] = frozenset({"Task ID", "Alert ID", "Model", "Task type"})

# A brand's words as an identifier spells them: "GoAPI" -> "Go", "API".
_BRAND_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


@dataclass(frozen=True)
class OutputView:
    """One output as people see it. ``link`` and ``thumbnail`` are set only for http(s) URLs."""

    kind: OutputKind
    label: str
    url: str | None
    link: str | None
    thumbnail: str | None
    nsfw: bool
    text: str | None
    title: str | None
    width: int | None
    height: int | None
    expires_at: datetime | None

    @property
    def size(self) -> str | None:
        """Width by height ("1168\u00d7864"), or None when the provider gave no size."""
        if self.width and self.height and self.width > 0 and self.height > 0:
            return f"{self.width}\u00d7{self.height}"
        return None

    @property
    def emoji(self) -> str:
        return KIND_EMOJI.get(self.kind, ":page_facing_up:")


@dataclass(frozen=True)
class ErrorView:
    """The provider's error. ``message`` is empty when it would only repeat the title."""

    code: str | None
    message: str
    detail: str | None


@dataclass(frozen=True)
class Summary:
    """What a person is told about one event, whatever the channel."""

    title: str
    """One line: "Kling video ready", "Midjourney imagine failed", "Luma video: processing 45%"."""
    what: str
    """The title without the outcome: "Kling video", "GoAPI account alert"."""
    outcome: Status
    emoji: str
    """A Slack emoji code for the outcome (``:white_check_mark:``)."""
    symbol: str
    """The same mark as a Unicode character, for mail."""
    alert: bool
    """An account notification (a provider that declares ``alerts``), not a task."""
    prompt: str | None
    facts: tuple[tuple[str, str], ...]
    outputs: tuple[OutputView, ...]
    error: ErrorView | None
    test: bool
    expires_at: datetime | None
    """The earliest output expiry."""
    task_id: str
    event_id: str
    source: str
    provider: str
    """The provider's display name."""
    progress: int | None
    final: bool
    received_at: datetime

    @property
    def expired(self) -> bool:
        """Whether the first link had already expired when the event arrived."""
        return self.expires_at is not None and self.expires_at <= utc(self.received_at)

    def expiry_phrase(self) -> str | None:
        """ "Link expires" / "Links expire" / "Links start to expire" (past tense once expired);
        None when nothing expires."""
        if self.expires_at is None:
            return None
        expired = self.expired
        if len(self.outputs) == 1:
            return "Link expired" if expired else "Link expires"
        if len({o.expires_at for o in self.outputs if o.expires_at is not None}) > 1:
            return "Links started to expire" if expired else "Links start to expire"
        return "Links expired" if expired else "Links expire"


# -- the summary -------------------------------------------------------------------------------


def _alert_phrase(event: TaskEvent, alerts: ProviderInfo) -> str:
    kind = one_line(event.task_type or event.provider_status)
    known = alerts.alert_phrases.get(kind)
    phrase = known if known else humanize(kind) or "notification"
    # The title already names the brand ("GoAPI account alert"): "GoAPI quota exchange failed"
    # and an unknown "go_api_..." type both drop it, as written and as an identifier's words.
    brand = alerts.display_name.split(" ", 1)[0]
    spoken = " ".join(_BRAND_WORDS.findall(brand)).lower()
    phrase = phrase.removeprefix(f"{brand} ").removeprefix(f"{spoken} ")
    return phrase[:1].upper() + phrase[1:]


def _title(event: TaskEvent, what: str) -> str:
    status = event.status
    if status == "succeeded":
        return f"{what} ready" if event.outputs else f"{what} finished"
    if status == "failed":
        return f"{what} failed"
    if status == "cancelled":
        return f"{what} cancelled"
    if status == "processing":
        if event.progress is not None and 0 <= event.progress <= 100:
            return f"{what}: processing {event.progress}%"
        return f"{what}: processing"
    return f"{what}: pending"


def _labels(event: TaskEvent, kind: str) -> list[str]:
    """A name per output: its title or kind, numbered "1 of 3" when the name repeats."""
    bases = []
    for output in event.outputs:
        title = one_line(output.title)
        name = "Caption" if output.kind == "text" and kind == "caption" else KIND_NAMES[output.kind]
        bases.append((shorten(title, 80), True) if title else (name, False))
    totals: dict[str, int] = {}
    for base, _ in bases:
        totals[base] = totals.get(base, 0) + 1
    seen: dict[str, int] = {}
    labels = []
    for base, from_title in bases:
        if totals[base] == 1:
            labels.append(base)
            continue
        seen[base] = seen.get(base, 0) + 1
        number = f"{seen[base]} of {totals[base]}"
        labels.append(f"{base} ({number})" if from_title else f"{base} {number}")
    return labels


def _outputs(event: TaskEvent, kind: str) -> tuple[OutputView, ...]:
    views = []
    for output, label in zip(event.outputs, _labels(event, kind), strict=True):
        text = clean_text(output.text) or None
        views.append(
            OutputView(
                kind=output.kind,
                label=label,
                url=one_line(output.url) or None,
                link=web_url(output.url),
                thumbnail=web_url(output.thumbnail_url),
                nsfw=output.nsfw is True,
                text=text,
                title=one_line(output.title) or None,
                width=output.width,
                height=output.height,
                expires_at=utc(output.expires_at) if output.expires_at else None,
            )
        )
    return tuple(views)


def _error(event: TaskEvent, title: str, alert: bool) -> ErrorView | None:
    if event.error is None:
        return None
    code = one_line(event.error.code) or None
    message = clean_text(event.error.message)
    detail = clean_text(event.error.detail) or None
    if detail is not None:
        detail = readable_detail(detail)
        if detail == message:
            detail = None
    if not message:
        message = "(no message given)"
    elif alert and title.lower().endswith(": " + message.lower()):
        # "Midjourney penalty triggered" under the title that says just that: said once.
        message = ""
    return ErrorView(code=code, message=message, detail=detail)


def _facts(
    event: TaskEvent, model: str | None, kind: str, alert: bool, names: ProviderNames
) -> list[tuple[str, str]]:
    facts: list[tuple[str, str]] = []
    if alert:
        # The alert's type is shown with its message (as the error code).
        if event.created_at is not None:
            facts.append(("Raised", format_time(event.created_at, seconds=True)))
        facts.append(("Alert ID", one_line(event.task_id)))
        return facts + _labels_fact(event)
    facts.append(("Provider", names.display(event.provider)))
    raw_model = one_line(event.model)
    # The raw model id, unless the title already says all of it ("luma" -> "Luma").
    said = (
        model is not None and len(model) <= TITLE_MODEL_LIMIT and raw_model.lower() == model.lower()
    )
    if raw_model and not said:
        facts.append(("Model", shorten(raw_model, 200)))
    task_type = one_line(event.task_type)
    if task_type and task_type.lower() != kind.lower():
        facts.append(("Task type", shorten(task_type, 200)))
    facts.append(("Task ID", one_line(event.task_id)))
    duration = human_duration(event.duration_s)
    if duration is not None:
        facts.append(("Duration", duration))
    if not event.final and event.progress is not None and 0 <= event.progress <= 100:
        facts.append(("Progress", f"{event.progress}%"))
    return facts + _labels_fact(event)


def _labels_fact(event: TaskEvent) -> list[tuple[str, str]]:
    """The labels from the hook URL, as one fact: "team=media · batch=b42"."""
    if not event.labels:
        return []
    text = " · ".join(f"{one_line(k)}={one_line(v)}" for k, v in sorted(event.labels.items()))
    return [("Labels", shorten(text, 200))]


def summarize(event: TaskEvent, names: ProviderNames) -> Summary:
    """What every human-facing channel shows about ``event``; ``names`` says what each provider
    is called and which ones raise account alerts."""
    alerts = names.alert(event.provider)
    alert = alerts is not None
    model = model_display(event.model)
    kind = task_kind(event)
    if alerts is not None:
        what = f"{alerts.display_name} alert"
        title = f"{what}: {_alert_phrase(event, alerts)}"
        emoji, symbol = ALERT_EMOJI, ALERT_SYMBOL
    else:
        who = model if model is not None else names.display(event.provider)
        what = f"{shorten(who, TITLE_MODEL_LIMIT)} {kind}"
        title = _title(event, what)
        emoji, symbol = OUTCOME_EMOJI[event.status], OUTCOME_SYMBOL[event.status]
    outputs = _outputs(event, kind)
    expiries = [o.expires_at for o in outputs if o.expires_at is not None]
    return Summary(
        title=title,
        what=what,
        outcome=event.status,
        emoji=emoji,
        symbol=symbol,
        alert=alert,
        prompt=clean_text(event.prompt) or None,
        facts=tuple(_facts(event, model, kind, alert, names)),
        outputs=outputs,
        error=_error(event, title, alert),
        test=event.test,
        expires_at=min(expiries) if expiries else None,
        task_id=one_line(event.task_id),
        event_id=one_line(event.id),
        source=one_line(event.source),
        provider=names.display(event.provider),
        progress=event.progress,
        final=event.final,
        received_at=utc(event.received_at),
    )
