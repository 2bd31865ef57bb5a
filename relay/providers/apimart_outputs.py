"""Reading the outputs of an APIMart task's ``result`` (README: Providers).

APIMart documents ``result.images[]``, ``result.videos[]`` and ``result.audios[]``, each item
``{url, expires_at}`` where ``url`` is a list or a string. Everything here is total over any
JSON: odd values give no output, never an exception.

Where the documentation leaves a shape open, every reasonable reading is accepted: a lone item or
a map (``{"0": item}``) in place of a list, a bare URL string in place of an item, several URLs
in one item (one output each), a watermarked next to an unwatermarked URL of the same file (one
output, the unwatermarked one), ``result`` itself a list of URLs, and ``text``/``texts`` for
tasks that answer in words.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from relay.events import Output, OutputKind
from relay.providers.common import get_str, kind_from_url, parse_time, s3_expiry
from relay.providers.kit import web_url

# Documented lists first, then the singular spellings seen on sibling gateways.
RESULT_KINDS: tuple[tuple[str, OutputKind], ...] = (
    ("images", "image"),
    ("videos", "video"),
    ("audios", "audio"),
    ("image", "image"),
    ("video", "video"),
    ("audio", "audio"),
)

# Read only when the lists above gave nothing: single-URL fields some result shapes use instead.
FALLBACK_KEYS: tuple[tuple[str, OutputKind | None], ...] = (
    ("video_url", "video"),
    ("image_url", "image"),
    ("audio_url", "audio"),
    ("url", None),
    ("urls", None),
)

# The keys of one item that may hold its URL, best first: a file given with and without the
# provider's watermark is one output, and the clean copy is the one people want.
URL_KEYS: tuple[str, ...] = (
    "no_watermark_url",
    "url_no_watermark",
    "unwatermarked_url",
    "nowatermark_url",
    "url",
    "watermark_url",
    "watermarked_url",
)

# An item's own preview picture (a video frame, a song cover): shown with it, never an output.
THUMBNAIL_KEYS: tuple[str, ...] = ("thumbnail_url", "cover_url", "cover_image_url")

# ``type`` (image, video, audio, text) or ``object`` (video.generation.task) name the media of
# an untyped URL without an extension.
_TYPE_KINDS: dict[str, OutputKind] = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "music": "audio",
    "3d": "model3d",
    "model3d": "model3d",
}


def read_outputs(task: dict[str, Any], result: Any) -> list[Output]:
    """Every output of ``result``: one per media file (each URL once), then any text."""
    hint = _type_hint(task)
    outputs: list[Output] = []
    seen: set[str] = set()
    if isinstance(result, dict):
        thumbnail = web_url(result.get("thumbnail_url"))
        for key, kind in RESULT_KINDS:
            for item in _items(result.get(key)):
                _add_item(outputs, seen, item, kind, hint, thumbnail)
        if not outputs:
            for key, fixed in FALLBACK_KEYS:
                for item in _items(result.get(key)):
                    _add_item(outputs, seen, item, fixed, hint, thumbnail)
        outputs.extend(_texts(result))
    else:
        # ``result`` as a bare list (or one URL): the kind comes from each URL, then the task.
        for item in _items(result):
            _add_item(outputs, seen, item, None, hint, None)
    return outputs


def _items(value: Any) -> Iterator[Any]:
    """The items of a result list; a lone item or a map of items is read as well."""
    if isinstance(value, list):
        yield from value
    elif isinstance(value, dict) and not _is_item(value):
        yield from value.values()
    elif value is not None:
        yield value


def _is_item(value: dict[str, Any]) -> bool:
    # A map's keys are positions or names ("0", "first"); an item's are its fields.
    return any(k in URL_KEYS or k == "expires_at" or str(k).endswith("_url") for k in value)


def _add_item(
    outputs: list[Output],
    seen: set[str],
    item: Any,
    kind: OutputKind | None,
    hint: OutputKind | None,
    thumbnail: str | None,
) -> None:
    """Append the outputs of one item; ``kind`` is the list's, ``hint`` the task's type."""
    title: str | None = None
    expires: datetime | None = None
    if isinstance(item, dict):
        urls = _item_urls(item, kind)
        expires = parse_time(item.get("expires_at"))
        # A song's cover or a video's frame, when the item carries its own.
        covers = (*THUMBNAIL_KEYS, "image_url") if kind in ("video", "audio") else THUMBNAIL_KEYS
        thumbnail = next((u for k in covers if (u := web_url(item.get(k)))), None) or thumbnail
        title = get_str(item, "title")
    else:
        urls = _web_urls(item)
    for url in urls:
        if url in seen:
            continue
        seen.add(url)
        media = kind or _untyped_kind(url, hint)
        outputs.append(
            Output(
                kind=media,
                url=url,
                # A presigned URL's own expiry is exact; APIMart's may round.
                expires_at=s3_expiry(url) or expires,
                thumbnail_url=thumbnail if media in ("video", "audio") else None,
                title=title,
            )
        )


def _item_urls(item: dict[str, Any], kind: OutputKind | None) -> list[str]:
    """The URLs of one item. The first key holding a web URL wins: the keys after it are the
    same file again, watermarked, and a file is one output."""
    keys = list(URL_KEYS)
    if kind is not None:
        # ``video_url`` and the like: the spelling of sibling gateways, read after ``url``.
        keys.insert(keys.index("url") + 1, f"{kind}_url")
    for key in keys:
        urls = _web_urls(item.get(key))
        if urls:
            return urls
    return []


def _web_urls(value: Any) -> list[str]:
    # ``url`` is documented as a string or a list; a map of URLs is read as a list.
    values = list(value.values()) if isinstance(value, dict) else _listed(value)
    return [url for url in (web_url(v) for v in values) if url is not None]


def _type_hint(task: dict[str, Any]) -> OutputKind | None:
    for key in ("type", "object"):
        name = get_str(task, key)
        if name is not None:
            kind = _TYPE_KINDS.get(name.lower().split(".", 1)[0])
            if kind is not None:
                return kind
    return None


def _texts(result: dict[str, Any]) -> list[Output]:
    """``text`` (a string) or ``texts`` (strings or ``{text}``): words, not files."""
    found: list[str] = []
    for value in (result.get("text"), *_listed(result.get("texts"))):
        text = value.get("text") if isinstance(value, dict) else value
        if isinstance(text, str) and text.strip():
            found.append(text.strip())
    return [Output(kind="text", text=text) for text in dict.fromkeys(found)]


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _untyped_kind(url: str, hint: OutputKind | None) -> OutputKind:
    """The kind of a URL no list names: its extension, else the task's type, else file."""
    kind = kind_from_url(url)
    return hint if kind == "file" and hint is not None else kind
