"""Reading the outputs of a Novita task result (README: Providers).

The Task Result API (and so the webhook's ``payload``) lists ``images[]`` (``image_url``,
``image_url_ttl``, ``image_type``, ``nsfw_detection_result``), ``videos[]`` (``video_url``,
``video_url_ttl``, ``video_type``) and ``audios[]`` (``audio_url``, ``audio_url_ttl``,
``audio_type``, ``audio_metadata {text, start_time, end_time}``). A ttl is a string or an int,
``"0"`` when unknown. Everything here is total over any JSON: odd values give no output.

Where the documentation leaves a shape open, every reasonable reading is accepted: a lone item or
a map (``{"0": item}``) in place of a list, ``null`` lists, a bare URL string in place of an
item, ``url`` in place of ``image_url``, and a watermarked next to an unwatermarked URL of the
same file (one output, the unwatermarked one).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from relay.events import Output, OutputKind
from relay.providers.common import as_float, get_list, get_str, s3_expiry
from relay.providers.kit import web_url

# (list in the payload, key of the URL, key of its ttl, the kind): one entry per media list.
MEDIA_LISTS: tuple[tuple[str, str, str, OutputKind], ...] = (
    ("images", "image_url", "image_url_ttl", "image"),
    ("videos", "video_url", "video_url_ttl", "video"),
    ("audios", "audio_url", "audio_url_ttl", "audio"),
)

# A ttl beyond this is not a real lifetime (S3 caps presigned URLs at 7 days), and an unbounded
# one would overflow datetime arithmetic.
_MAX_TTL_S = 10 * 365 * 86400


def read_outputs(
    body: dict[str, Any], extra: dict[str, Any] | None, received: datetime
) -> list[Output]:
    """One output per media file in ``images``, ``videos`` and ``audios``, each URL once."""
    outputs: list[Output] = []
    seen: set[str] = set()
    # Some Novita APIs flag NSFW images in a list parallel to ``images`` instead of per image.
    flags = get_list(extra, "has_nsfw_contents") or []
    for list_key, url_key, ttl_key, kind in MEDIA_LISTS:
        for index, item in enumerate(_items(body.get(list_key), url_key)):
            url = _item_url(item, url_key)
            if url is None or url in seen:
                continue
            seen.add(url)
            nsfw = _nsfw(item)
            if nsfw is None and kind == "image" and index < len(flags):
                nsfw = flags[index] if isinstance(flags[index], bool) else None
            ttl = _ttl(item.get(ttl_key)) if isinstance(item, dict) else None
            outputs.append(
                Output(
                    kind=kind,
                    url=url,
                    expires_at=_expires_at(url, ttl, received),
                    nsfw=nsfw,
                    # What a TTS voice says, kept with its audio: it is no file of its own.
                    text=_spoken_text(item) if kind == "audio" else None,
                )
            )
    return outputs


def _items(value: Any, url_key: str) -> Iterator[Any]:
    """The items of a media list; a lone item or a map of items is read as well."""
    if isinstance(value, list):
        yield from value
    elif isinstance(value, dict):
        # A map's keys are positions ("0", "1"); an item's are its fields.
        is_item = any(key == url_key or str(key).endswith("_url") for key in value)
        yield from ([value] if is_item else value.values())
    elif isinstance(value, str):
        yield value


def _item_url(item: Any, url_key: str) -> str | None:
    """The web URL of one item. A clean copy beats the documented key, which beats ``url`` and
    a watermarked copy: those are the same file again, and a file is one output."""
    if isinstance(item, str):
        return web_url(item)
    if not isinstance(item, dict):
        return None
    keys = (
        f"{url_key}_no_watermark",
        "no_watermark_url",
        url_key,
        "url",
        f"{url_key}_watermark",
        "watermark_url",
    )
    return next((url for key in keys if (url := web_url(item.get(key))) is not None), None)


def _nsfw(item: Any) -> bool | None:
    """``nsfw_detection_result``: ``{valid, confidence}`` where ``valid`` says NSFW was found;
    null when detection was off. A bare boolean is taken as it is."""
    result = item.get("nsfw_detection_result") if isinstance(item, dict) else None
    if isinstance(result, bool):
        return result
    valid = result.get("valid") if isinstance(result, dict) else None
    return valid if isinstance(valid, bool) else None


def _spoken_text(item: Any) -> str | None:
    """``audio_metadata.text``; a list of such segments is joined, in order."""
    metadata = item.get("audio_metadata") if isinstance(item, dict) else None
    segments = metadata if isinstance(metadata, list) else [metadata]
    texts = [text for segment in segments if (text := get_str(segment, "text")) is not None]
    return " ".join(texts) or None


def _ttl(value: Any) -> float | None:
    """A ``*_url_ttl`` in seconds (a string or a number); ``"0"``, 0 and garbage are unknown."""
    seconds = as_float(value)
    if seconds is None or seconds <= 0 or seconds > _MAX_TTL_S:
        return None
    return seconds


def _expires_at(url: str, ttl: float | None, received: datetime) -> datetime | None:
    # The presigned URL states when it stops working; Novita's ttl counts from some moment
    # before it reached us, so it is only the fallback.
    signed = s3_expiry(url)
    if signed is not None:
        return signed
    return received + timedelta(seconds=ttl) if ttl is not None else None
