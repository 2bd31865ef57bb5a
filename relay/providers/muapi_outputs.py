"""Reading the outputs of a MuAPI prediction (README: Providers).

MuAPI documents ``outputs`` as a list of plain URLs with no media kind and ``has_nsfw_contents``
as booleans parallel to it. The kind comes from the URL's extension, and from the model or
endpoint name when the URL has none. Models that answer in words (LLM and captioning endpoints)
put the text itself in ``outputs``. Everything here is total over any JSON.

Where the documentation leaves a shape open, every reasonable reading is accepted: one URL or a
map in place of the list, ``output`` (a string, a list or ``{text}``) in place of ``outputs``,
entries that are objects (``{url, type}``, ``{text}``), and a watermarked next to an
unwatermarked URL of the same file (one output, the unwatermarked one).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from relay.events import Output, OutputKind
from relay.providers.common import KIND_BY_EXTENSION, get_list, get_str, s3_expiry
from relay.providers.kit import web_url

# Extensions media endpoints produce that the shared table does not know.
EXTRA_EXTENSIONS: dict[str, OutputKind] = {
    **dict.fromkeys(("tif", "tiff", "svg", "jfif", "ico"), "image"),
    **dict.fromkeys(("mpeg", "mpg", "3gp", "m3u8", "ts", "flv", "wmv"), "video"),
    **dict.fromkeys(("aiff", "aif", "wma", "amr", "mid", "midi", "pcm"), "audio"),
    **dict.fromkeys(("3mf", "dae", "blend", "splat"), "model3d"),
}

# Where one object entry may hold its URL, best first, with the kind the key itself names. A
# clean copy beats the plain URL, which beats a watermarked copy of the same file.
URL_KEYS: tuple[tuple[str, OutputKind | None], ...] = (
    ("no_watermark_url", None),
    ("url_no_watermark", None),
    ("unwatermarked_url", None),
    ("url", None),
    ("uri", None),
    ("file_url", None),
    ("download_url", None),
    ("video_url", "video"),
    ("image_url", "image"),
    ("audio_url", "audio"),
    ("model_url", "model3d"),
    ("glb_url", "model3d"),
    ("watermark_url", None),
    ("watermarked_url", None),
)

# Fields naming the endpoint or model, read for the kind of a URL without an extension.
NAME_KEYS: tuple[str, ...] = ("model", "endpoint", "model_name", "task_type", "type")

# Words of a MuAPI endpoint name, checked in this order: what it produces ("video-to-audio",
# "image-to-video") before what it takes, then generic words, then model brands (last, because
# "wan2.5-text-to-image" is an image although Wan is known for video).
_NAME_KINDS: tuple[tuple[OutputKind, tuple[str, ...]], ...] = (
    ("model3d", ("3d", "tripo", "meshy", "trellis", "rodin")),
    ("audio", ("to-audio", "to-speech", "to-music")),
    ("video", ("to-video", "video", "t2v", "i2v", "v2v", "lipsync", "avatar", "animate")),
    ("image", ("to-image", "t2i", "i2i")),
    ("audio", ("audio", "suno", "music", "speech", "tts", "voice", "sound", "song")),
    ("image", ("image", "photo", "upscale", "background", "face-swap", "portrait")),
    ("video", ("veo", "kling", "seedance", "sora", "hailuo", "pixverse", "vidu", "ltx-2",
               "runway", "luma", "wan2", "dance", "clipping")),
    ("image", ("flux", "midjourney", "imagen", "seedream", "ideogram", "nano-banana",
               "gpt-image", "gpt4o", "hidream", "sdxl", "qwen", "reve", "recraft")),
)  # fmt: skip

# A string that starts with a scheme but is no web URL (data:, blob:, ftp:) is no output, and
# neither is a bare file path; words are anything else.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_PATH_CHARS = re.compile(r"[\w.~%+\-/]+")
_WEB = ("http://", "https://")


def read_outputs(payload: dict[str, Any]) -> list[Output]:
    """One output per media URL and one per text in ``outputs`` (else ``output``).

    The NSFW flags are zipped by position in the original list, so a skipped junk entry never
    shifts the flags of the entries after it; a missing, shorter or non-boolean flag is None.
    """
    hint = kind_of_names(*(get_str(payload, key) for key in NAME_KEYS))
    flags = get_list(payload, "has_nsfw_contents") or []
    outputs: list[Output] = []
    seen: set[str] = set()
    for key in ("outputs", "output"):
        for index, entry in enumerate(_entries(payload.get(key))):
            flag = flags[index] if index < len(flags) else None
            output = _output(entry, hint, flag if isinstance(flag, bool) else None)
            if output is None:
                continue
            # Each file once, each text once.
            mark = output.url or f"text:{output.text}"
            if mark not in seen:
                seen.add(mark)
                outputs.append(output)
        if outputs:
            break
    return outputs


def kind_of_names(*names: str | None) -> OutputKind | None:
    """The media kind an endpoint or model name implies (``tripo3d-p1-image-to-3d``), if any."""
    text = " ".join(name.lower() for name in names if name)
    if not text:
        return None
    for kind, words in _NAME_KINDS:
        if any(word in text for word in words):
            return kind
    return None


def kind_of_url(url: str) -> OutputKind | None:
    """The kind an extension names, ignoring query and fragment; None when there is none."""
    name = url.split("#", 1)[0].split("?", 1)[0].rsplit("/", 1)[-1]
    if "." not in name:
        return None
    extension = name.rsplit(".", 1)[-1].lower()
    return KIND_BY_EXTENSION.get(extension) or EXTRA_EXTENSIONS.get(extension)


def _entries(value: Any) -> Iterator[Any]:
    """The entries of ``outputs``: a list, one string, or a map (its values, in order)."""
    if isinstance(value, list):
        yield from value
    elif isinstance(value, dict):
        # ``{url, type}`` is one entry; ``{"video": url, "cover": url}`` is a map of two.
        is_entry = any(key in value for key, _ in URL_KEYS) or "text" in value
        yield from ([value] if is_entry else value.values())
    elif isinstance(value, str):
        yield value


def _output(entry: Any, hint: OutputKind | None, nsfw: bool | None) -> Output | None:
    if isinstance(entry, str):
        return _from_string(entry, hint, nsfw)
    if not isinstance(entry, dict):
        return None
    for key, key_kind in URL_KEYS:
        url = web_url(entry.get(key))
        if url is not None:
            # The entry's own type (a MIME type or a kind) beats the key and the extension.
            own = _kind_of_type(get_str(entry, "type") or get_str(entry, "content_type"))
            kind = own or key_kind or kind_of_url(url) or hint or "file"
            own_flag = entry.get("nsfw", entry.get("has_nsfw_content"))
            flag = own_flag if isinstance(own_flag, bool) else nsfw
            return Output(kind=kind, url=url, expires_at=s3_expiry(url), nsfw=flag)
    text = get_str(entry, "text") or get_str(entry, "content")
    return Output(kind="text", text=text) if text is not None else None


def _from_string(value: str, hint: OutputKind | None, nsfw: bool | None) -> Output | None:
    text = value.strip()
    if not text:
        return None
    if text.lower().startswith(_WEB):
        kind = kind_of_url(text) or hint or "file"
        return Output(kind=kind, url=text, expires_at=s3_expiry(text), nsfw=nsfw)
    # Another scheme (data:, blob:) or a bare file path is a file we cannot link, not words.
    if _SCHEME.match(text):
        return None
    if _PATH_CHARS.fullmatch(text) and ("/" in text or kind_of_url(text) is not None):
        return None
    return Output(kind="text", text=text)


def _kind_of_type(value: str | None) -> OutputKind | None:
    """``video/mp4``, ``model/gltf-binary``, ``image``, ``3d``: the kind a type field names."""
    if value is None:
        return None
    head = value.lower().split("/", 1)[0].strip()
    kinds: dict[str, OutputKind] = {
        "image": "image",
        "video": "video",
        "audio": "audio",
        "model": "model3d",
        "model3d": "model3d",
        "3d": "model3d",
    }
    return kinds.get(head)
