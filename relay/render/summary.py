"""What every human-facing channel shows about one event, decided once.

``summarize`` turns a TaskEvent into a ``Summary``: a title ("Kling video ready"), the outcome and
its mark, the prompt, ordered facts, the outputs with display labels, the error and the expiry.
The Slack and email renderers only lay a Summary out, so both show the same content.

Every string here is plain text, cleaned of control characters but not escaped: escaping is the
renderer's job (mrkdwn and HTML escape differently).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

from relay.events import OutputKind, Status, TaskEvent
from relay.providers.goapi_account import KNOWN_TYPES

ELLIPSIS = "…"

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
KIND_NAMES: dict[str, str] = {
    "image": "Image",
    "video": "Video",
    "audio": "Audio",
    "model3d": "3D model",
    "text": "Text",
    "file": "File",
}

# Facts whose value is an identifier: shown as code, never reworded.
CODE_FACTS: frozenset[str] = frozenset({"Task ID", "Alert ID", "Model", "Task type"})

ALERT_PROVIDER = "goapi-account"

_PROVIDER_NAMES: dict[str, str] = {
    "goapi": "GoAPI",
    "piapi": "PiAPI",
    "apimart": "APIMart",
    "muapi": "MuAPI",
    "novita": "Novita",
    "goapi-account": "GoAPI account",
    "standard": "Standard Webhooks",
}

# (lower-case name or prefix, display name). A model id matches when its last path segment (or
# its first, for "vendor/model" ids) is the name, or starts with it followed by a non-letter
# ("kling-v2", "flux1-dev", "veo3"). Order matters only between overlapping prefixes.
_MODEL_NAMES: tuple[tuple[str, str], ...] = (
    ("kling", "Kling"),
    ("midjourney", "Midjourney"),
    ("mj", "Midjourney"),
    ("luma", "Luma"),
    ("dream-machine", "Luma"),
    ("suno", "Suno"),
    ("chirp", "Suno"),
    ("music-s", "Suno"),
    # PiAPI's music-u is Udio (piapi.ai/udio-api), not Suno.
    ("music-u", "Udio"),
    ("udio", "Udio"),
    ("flux", "Flux"),
    ("joycaption", "JoyCaption"),
    ("hailuo", "Hailuo"),
    ("minimax", "MiniMax"),
    ("hunyuan", "Hunyuan"),
    ("wanx", "Wan"),
    ("wan", "Wan"),
    ("trellis", "Trellis"),
    ("faceswap", "Faceswap"),
    ("veo", "Veo"),
    ("sora", "Sora"),
    ("seedance", "Seedance"),
    ("seedream", "Seedream"),
    ("gpt-4o-image", "GPT-4o image"),
    ("gpt-image", "GPT Image"),
    ("dall-e", "DALL\u00b7E"),
    ("ideogram", "Ideogram"),
    ("recraft", "Recraft"),
    ("runway", "Runway"),
    ("pika", "Pika"),
    ("vidu", "Vidu"),
    ("pixverse", "PixVerse"),
    ("framepack", "FramePack"),
    ("skyreels", "SkyReels"),
    ("sdxl", "SDXL"),
    ("stable-diffusion", "Stable Diffusion"),
    ("nano-banana", "Nano Banana"),
    ("gemini", "Gemini"),
    ("qwen", "Qwen"),
    ("omnihuman", "OmniHuman"),
    ("diffrhythm", "DiffRhythm"),
    ("ace-step", "ACE-Step"),
    ("mmaudio", "MMAudio"),
)
_EXACT_ONLY: frozenset[str] = frozenset({"mj"})

# What a task type means, as the word in a title ("Kling video ready").
_TASK_KIND_WORDS: tuple[tuple[str, str], ...] = (
    (
        "video_generation generate_video video txt2video img2video text_to_video image_to_video "
        "txt_to_video img_to_video extend_video video_extend lipsync effects avatar motion_control",
        "video",
    ),
    (
        "txt2img img2img text_to_image image_to_image txt_to_img img_to_img image_generation "
        "generate_image image kontext fill redux controlnet upscale_image image_edit",
        "image",
    ),
    ("music generate_music song generate_song", "music"),
    ("tts txt_to_speech text_to_speech speech", "speech"),
    ("image_to_3d img_to_3d text_to_3d txt_to_3d model3d 3d", "3D model"),
    ("caption image_caption joycaption", "caption"),
)
# Midjourney's own actions: people know them by name ("Midjourney imagine failed").
_MIDJOURNEY_ACTIONS = (
    "imagine upscale variation reroll describe blend inpaint outpaint pan zoom seed shorten"
)
_TASK_KINDS: dict[str, str] = {
    name: kind for names, kind in _TASK_KIND_WORDS for name in names.split(" ")
} | {action: action for action in _MIDJOURNEY_ACTIONS.split(" ")}
# What a model makes, when neither the outputs nor the task type say.
_MODEL_KINDS: dict[str, str] = {
    "Kling": "video",
    "Luma": "video",
    "Hailuo": "video",
    "Hunyuan": "video",
    "Wan": "video",
    "Veo": "video",
    "Sora": "video",
    "Seedance": "video",
    "Runway": "video",
    "Pika": "video",
    "Vidu": "video",
    "PixVerse": "video",
    "FramePack": "video",
    "SkyReels": "video",
    "Suno": "music",
    "Udio": "music",
    "DiffRhythm": "music",
    "ACE-Step": "music",
    "Flux": "image",
    "Midjourney": "image",
    "Ideogram": "image",
    "Recraft": "image",
    "Seedream": "image",
    "Stable Diffusion": "image",
    "SDXL": "image",
    "Trellis": "3D model",
    "JoyCaption": "caption",
}
# Which output kind names the task when several are produced.
_KIND_PRIORITY: tuple[OutputKind, ...] = ("video", "audio", "model3d", "image", "text", "file")

_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f]")
_SPACES = re.compile(r"[ \t\f\v]+")
_ANY_SPACE = re.compile(r"\s+")
_WEB_URL = re.compile(r"https?://[^\s/?#@]+(?:[/?#]\S*)?", re.IGNORECASE)


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
    """An account notification (GoAPI account), not a task."""
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


# -- small text helpers ------------------------------------------------------------------------


def clean_text(text: str | None, *, multiline: bool = True) -> str:
    """``text`` without control or bidi-override characters, stripped.

    Line breaks are kept (as ``\\n``) when ``multiline``; otherwise every run of whitespace,
    line breaks included, becomes one space.
    """
    if not text:
        return ""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n")
    text = text.replace("\u2029", "\n")
    text = _BIDI.sub("", text)
    text = "".join(ch if ch in "\n\t" or unicodedata.category(ch) != "Cc" else " " for ch in text)
    if not multiline:
        return _ANY_SPACE.sub(" ", text).strip()
    lines = [_SPACES.sub(" ", line).rstrip() for line in text.split("\n")]
    return "\n".join(lines).strip()


def one_line(text: str | None) -> str:
    """``text`` as one clean line."""
    return clean_text(text, multiline=False)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending with "…" when cut (at a word
    boundary when there is one near the end)."""
    if len(text) <= limit:
        return text
    if limit <= 0:
        return ""
    cut = text[: limit - 1]
    # At a word boundary when one is near the end ("…modify your…", not "…modify your pro…").
    space = cut.rfind(" ")
    if space >= 0.8 * len(cut):
        cut = cut[:space]
    return cut.rstrip() + ELLIPSIS


def and_more(n: int, noun: str = "") -> str:
    """The overflow phrase: "… and 3 more", "… and 62 more outputs", "… and 1 more output"."""
    if not noun:
        return f"{ELLIPSIS} and {n} more"
    return f"{ELLIPSIS} and {n} more {noun if n == 1 else noun + 's'}"


def web_url(url: str | None) -> str | None:
    """``url`` when it is an absolute http(s) URL without spaces or control characters."""
    if not url or len(url) > 65536:
        return None
    if not _WEB_URL.fullmatch(url):
        return None
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in url):
        return None
    return url


def utc(value: datetime) -> datetime:
    """An aware UTC datetime (a naive one is taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def format_time(value: datetime, *, seconds: bool = False) -> str:
    """ "2025-07-01 12:00 UTC" (with ":05" seconds when asked), never microseconds."""
    return utc(value).strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def human_duration(seconds: float | None) -> str | None:
    """ "0.4 s", "42 s", "3 min 5 s", "2 h 5 min", "3 d 4 h"; None for nothing or nonsense."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    if seconds < 10:
        shown = f"{seconds:.1f}".removesuffix(".0")
        return f"{shown} s"
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


# -- names -------------------------------------------------------------------------------------


def provider_display(provider: str | None) -> str:
    """ "GoAPI", "APIMart", ...; an unknown provider as given (cleaned)."""
    name = one_line(provider)
    return _PROVIDER_NAMES.get(name.lower(), name) or "unknown provider"


def _model_match(segment: str) -> str | None:
    for key, display in _MODEL_NAMES:
        if segment == key:
            return display
        if key in _EXACT_ONLY or not segment.startswith(key):
            continue
        if not segment[len(key)].isalpha():
            return display
    return None


def model_display(model: str | None) -> str | None:
    """ "Kling", "Flux", "Suno", ...; an unknown model as given (cleaned); None when empty."""
    name = one_line(model)
    if not name:
        return None
    segments = [part for part in name.lower().split("/") if part]
    for segment in (segments[-1:] + segments[:1]) if segments else []:
        found = _model_match(segment)
        if found:
            return found
    return name


def _humanize(word: str) -> str:
    return _ANY_SPACE.sub(" ", word.replace("_", " ").replace("-", " ")).strip().lower()


def _kind_of_task_type(task_type: str | None) -> str | None:
    name = one_line(task_type).lower().replace("-", "_")
    if not name:
        return None
    if name in _TASK_KINDS:
        return _TASK_KINDS[name]
    if "caption" in name:
        return "caption"
    words = _humanize(name)
    # An unknown task type is shown as words when it looks like one ("face swap"), else dropped.
    if len(words) <= 30 and re.fullmatch(r"[a-z0-9 ]+", words):
        return words
    return None


def _kind_of_outputs(event: TaskEvent, model: str | None) -> str | None:
    kinds = [o.kind for o in event.outputs]
    for kind in _KIND_PRIORITY:
        if kind not in kinds:
            continue
        count = kinds.count(kind)
        if kind == "audio":
            music = _kind_of_task_type(event.task_type) == "music" or (
                model is not None and _MODEL_KINDS.get(model) == "music"
            )
            return "music" if music else "audio"
        if kind == "text":
            caption = _kind_of_task_type(event.task_type) == "caption" or (
                model is not None and _MODEL_KINDS.get(model) == "caption"
            )
            return "caption" if caption else "text"
        if kind in ("image", "video"):
            return kind + ("s" if count > 1 else "")
        return KIND_NAMES[kind].lower() if kind != "model3d" else "3D model"
    return None


def task_kind(event: TaskEvent) -> str:
    """What the task made or makes, as a word for a title: "video", "images", "imagine", ..."""
    model = model_display(event.model)
    return (
        _kind_of_outputs(event, model)
        or _kind_of_task_type(event.task_type)
        or (_MODEL_KINDS.get(model) if model else None)
        or "task"
    )


# -- the summary -------------------------------------------------------------------------------


def _alert_phrase(event: TaskEvent) -> str:
    kind = one_line(event.task_type or event.provider_status)
    known = KNOWN_TYPES.get(kind)
    phrase = known if known else _humanize(kind) or "notification"
    # The title already says "GoAPI account alert".
    phrase = phrase.removeprefix("GoAPI ").removeprefix("go api ")
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


def readable_detail(detail: str) -> str:
    """A JSON object as "key: value · key: value" (what people read); anything else as is."""
    try:
        value = json.loads(detail)
    except ValueError:
        return detail
    if not isinstance(value, dict) or not value:
        return detail
    parts = []
    for key, item in value.items():
        shown = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
        parts.append(f"{one_line(str(key))}: {one_line(shown)}")
    return " \u00b7 ".join(parts)


def _error(event: TaskEvent, title: str) -> ErrorView | None:
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
    elif event.provider == ALERT_PROVIDER and title.lower().endswith(": " + message.lower()):
        # "Midjourney penalty triggered" under the title that says just that: said once.
        message = ""
    return ErrorView(code=code, message=message, detail=detail)


def _facts(event: TaskEvent, model: str | None, kind: str, alert: bool) -> list[tuple[str, str]]:
    facts: list[tuple[str, str]] = []
    if alert:
        # The alert's type is shown with its message (as the error code).
        if event.created_at is not None:
            facts.append(("Raised", format_time(event.created_at, seconds=True)))
        facts.append(("Alert ID", one_line(event.task_id)))
        return facts
    facts.append(("Provider", provider_display(event.provider)))
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
    return facts


def summarize(event: TaskEvent) -> Summary:
    """What every human-facing channel shows about ``event``."""
    alert = event.provider == ALERT_PROVIDER
    model = model_display(event.model)
    kind = task_kind(event)
    if alert:
        what = "GoAPI account alert"
        title = f"{what}: {_alert_phrase(event)}"
        emoji, symbol = ALERT_EMOJI, ALERT_SYMBOL
    else:
        who = model if model is not None else provider_display(event.provider)
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
        facts=tuple(_facts(event, model, kind, alert)),
        outputs=outputs,
        error=_error(event, title),
        test=event.test,
        expires_at=min(expiries) if expiries else None,
        task_id=one_line(event.task_id),
        event_id=one_line(event.id),
        source=one_line(event.source),
        provider=provider_display(event.provider),
        progress=event.progress,
        final=event.final,
        received_at=utc(event.received_at),
    )
