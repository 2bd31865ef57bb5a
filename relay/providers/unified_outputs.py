"""Reading ``data.output`` of the GoAPI / PiAPI unified schema into ``Output`` fields.

Every model family puts its result somewhere else (tests/fixtures/providers/goapi/families/
SOURCES.md says where each shape comes from). The rules every family follows here:

- every media file is one output, never zero, never twice: a clip given both watermarked and
  clean (Kling ``works`` + ``video_url``, Luma ``video`` + ``video_raw``, Hailuo ``video_url`` +
  ``download_url``) is one output with the clean URL;
- only non-empty http(s) URLs become outputs; thumbnails and covers are attributes of their
  output, not outputs of their own;
- a text result (caption, lyrics, Midjourney describe prompts, a seed) is a text output;
- lists and maps (``{clip_id: clip}``) of clips or songs are read alike.

Everything here is total over any JSON: wrong types are skipped, nothing raises.
"""

from __future__ import annotations

import re
from typing import Any

from relay.events import OutputKind
from relay.providers.common import as_float, get_dict, get_list, get_str, kind_from_url, s3_expiry
from relay.providers.kit import web_url

# Output keys that hold URLs of one kind (or of a kind read from the URL when None), read after
# the family-specific shapes; a string, an object with a URL, or a list (or map) of either.
GENERIC_OUTPUT_KEYS: tuple[tuple[str, OutputKind | None], ...] = (
    ("video_url", "video"),
    ("video_urls", "video"),
    ("videos", "video"),
    ("audio_url", "audio"),
    ("audio_urls", "audio"),
    ("audios", "audio"),
    ("audio", "audio"),
    ("image", "image"),
    ("images", "image"),
    ("url", None),
    ("download_url", None),
)

# A Kling work holds its media under a key named for the kind (Kling Sound: assumed "audio").
KLING_WORK_KINDS: tuple[OutputKind, ...] = ("video", "image", "audio")

# Keys inside an output object that may hold its URL, best first (no-watermark before watermark).
URL_KEYS: tuple[str, ...] = (
    "resource_without_watermark",
    "url_no_watermark",
    "resource",
    "url",
    "image_url",
    "video_url",
    "audio_url",
    "song_path",
)

# Where a video's still sits; the first web URL found becomes the video's thumbnail.
THUMBNAIL_KEYS: tuple[str, ...] = ("thumbnail", "thumbnail_url", "cover", "cover_url")

# Single-text results: JoyCaption's caption, a Suno lyrics task, transcripts. Midjourney's
# describe ("description") and Udio's lyrics ("lyrics_pairs") have readers of their own.
TEXT_KEYS: tuple[str, ...] = ("text", "lyrics", "caption", "transcript")

# 3D result files besides the model itself (Trellis): (key, kind).
THREE_D_EXTRAS: tuple[tuple[str, OutputKind], ...] = (
    ("combined_video", "video"),
    ("no_background_image", "image"),
)

# Midjourney numbers its four describe prompts with keycap emoji: 1️⃣ 2️⃣ 3️⃣ 4️⃣.
_KEYCAP = re.compile("[0-9#*]\ufe0f?\u20e3")


def collect_outputs(output: Any) -> list[dict[str, Any]]:
    """All outputs in a callback's ``data.output``, as the fields of ``Output`` models."""
    return _OutputCollector().collect(output)


class _OutputCollector:
    """Reads every output shape of the unified schema, keeping each URL once.

    Outputs are collected as plain dicts, validated with the event; ``_done`` holds the keys
    of ``output`` a family reader has already accounted for, so the generic pass skips them.
    """

    def __init__(self) -> None:
        self.outputs: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._texts: set[str] = set()
        self._done: set[str] = set()

    def collect(self, output: Any) -> list[dict[str, Any]]:
        if isinstance(output, list):
            # Suno: data.output is the list of clips itself.
            self._clips(output)
        elif isinstance(output, dict):
            self._object(output)
        return self.outputs

    def _object(self, output: dict[str, Any]) -> None:
        # Each reader only runs when its key is there: an output holds a few of them.
        if "clips" in output:
            self._clips(output["clips"])
        if "songs" in output:
            self._songs(output["songs"])
        if "generation" in output:
            self._luma_generation(output)
        if "video_raw" in output or "last_frame" in output:
            self._luma_frames(output)
        if "works" in output:
            self._kling(output)
        self._images(output)
        if "model_file" in output or "combined_video" in output or "mesh_url" in output:
            self._three_d(output)
        self._text(output)
        if "video" in output and "video" not in self._done:
            self._object_video(output)
        self._generic(output)
        # A Midjourney seed task answers with nothing but its seed.
        if not self.outputs:
            self._seed(output)

    # -- adding ------------------------------------------------------------------------------

    def add(
        self,
        kind: OutputKind | None,
        url: Any,
        *,
        width: Any = None,
        height: Any = None,
        title: Any = None,
        thumbnail_url: Any = None,
    ) -> bool:
        """Add one URL output unless it is empty, not http(s), or already there.

        Returns whether the URL is among the outputs now (added or already there), so a reader
        can tell an empty alternative from a duplicate.
        """
        url = web_url(url)
        # Only web URLs: base64 blobs and other schemes are not something a channel can link.
        if url is None:
            return False
        if url in self._seen:
            return True
        self._seen.add(url)
        self.outputs.append(
            {
                "kind": kind or kind_from_url(url),
                "url": url,
                "expires_at": s3_expiry(url),
                "width": _positive(width),
                "height": _positive(height),
                "title": title.strip() or None if isinstance(title, str) else None,
                "thumbnail_url": web_url(thumbnail_url),
            }
        )
        return True

    def add_text(self, text: Any, title: Any = None) -> None:
        if not isinstance(text, str) or not text.strip() or text.strip() in self._texts:
            return
        self._texts.add(text.strip())
        self.outputs.append(
            {
                "kind": "text",
                "text": text.strip(),
                "title": title.strip() or None if isinstance(title, str) else None,
            }
        )

    def _any(self, value: Any, kind: OutputKind | None) -> bool:
        """A URL string, an object holding one, or a list or map of either; whether any was
        taken."""
        if isinstance(value, dict) and _first_url(value) is None:
            # A map of id -> item rather than an item.
            value = list(value.values())
        items = value if isinstance(value, list) else [value]
        took = False
        for item in items:
            if isinstance(item, dict):
                took |= self.add(
                    kind,
                    _first_url(item),
                    width=item.get("width"),
                    height=item.get("height"),
                    thumbnail_url=_thumbnail(item),
                )
            else:
                took |= self.add(kind, item)
        return took

    # -- audio: Suno clips, Udio songs ----------------------------------------------------------

    def _clips(self, clips: Any) -> None:
        # Suno: one audio output per clip, as a list or as a map of clip id -> clip; a clip's
        # video_url is only a visualiser of the song, its metadata.prompt the lyrics sung.
        for clip in _items(clips):
            if isinstance(clip, dict):
                self.add(
                    "audio",
                    get_str(clip, "audio_url"),
                    title=clip.get("title"),
                    thumbnail_url=get_str(clip, "image_url"),
                )
            else:
                self.add(None, clip)

    def _songs(self, songs: Any) -> None:
        # Udio (music-u): songs[] with song_path and image_path; their lyrics stay in raw, as
        # Suno's do (the song is the result, the lyrics are part of it).
        for song in _items(songs):
            if isinstance(song, dict):
                self.add(
                    "audio",
                    get_str(song, "song_path") or get_str(song, "audio_url"),
                    title=song.get("title"),
                    thumbnail_url=get_str(song, "image_path") or get_str(song, "image_url"),
                )

    # -- video: Luma, Kling, everything with a "video" ------------------------------------------

    def _luma_generation(self, output: dict[str, Any]) -> None:
        # Luma (first unified version): output.generation.video.
        video = get_dict(get_dict(output, "generation"), "video")
        if video is None:
            return
        self.add(
            "video",
            get_str(video, "url_no_watermark") or get_str(video, "url"),
            width=video.get("width"),
            height=video.get("height"),
            thumbnail_url=get_str(video, "thumbnail"),
        )

    def _luma_frames(self, output: dict[str, Any]) -> None:
        # Luma (ray-v2): video (watermarked) and video_raw (clean) are one clip; thumbnail is
        # its still; last_frame is a file of its own (the frame a follow-up extends from).
        raw, marked = output.get("video_raw"), output.get("video")
        clip = raw if _url_of(raw) else marked
        if _url_of(clip) is not None:
            self._done.add("video")
            self.add(
                "video",
                _url_of(clip),
                width=clip.get("width") if isinstance(clip, dict) else None,
                height=clip.get("height") if isinstance(clip, dict) else None,
                thumbnail_url=_url_of(output.get("thumbnail")),
            )
        last = output.get("last_frame")
        self.add(
            "image",
            _url_of(last),
            width=last.get("width") if isinstance(last, dict) else None,
            height=last.get("height") if isinstance(last, dict) else None,
        )

    def _kling(self, output: dict[str, Any]) -> None:
        # Kling: works[], each with video / image (Kling Sound: audio) and a cover. PiAPI repeats
        # the first clip's clean copy as output.video_url: the same clip, never a second output,
        # and the clean URL to use when the work itself only has the watermarked one.
        top_video = web_url(output.get("video_url"))
        for work in _items(output.get("works")):
            cover = get_dict(work, "cover")
            thumbnail = _first_url(cover) if cover is not None else None
            for kind in KLING_WORK_KINDS:
                media = get_dict(work, kind)
                if media is None:
                    continue
                url = _first_url(media)
                if kind == "video" and top_video is not None and "video_url" not in self._done:
                    self._done.add("video_url")
                    if not get_str(media, "resource_without_watermark"):
                        url = top_video
                self.add(
                    kind,
                    url,
                    width=media.get("width"),
                    height=media.get("height"),
                    thumbnail_url=thumbnail if kind == "video" else None,
                )

    def _object_video(self, output: dict[str, Any]) -> None:
        # Sora2, Veo3, Kling 3.0 / omni, OmniHuman: output.video, a URL or an object with one.
        video = output.get("video")
        if isinstance(video, dict):
            self.add(
                "video",
                _first_url(video),
                width=video.get("width"),
                height=video.get("height"),
                thumbnail_url=_thumbnail(video) or _thumbnail(output),
            )
        else:
            self.add("video", video, thumbnail_url=_thumbnail(output))

    # -- images ----------------------------------------------------------------------------------

    def _images(self, output: dict[str, Any]) -> None:
        # Midjourney: image_urls are the finished images, image_url the grid of them,
        # temporary_image_urls a short-lived copy, discord_image_url the bot's copy;
        # intermediate_image_urls are progress previews and never outputs. Flux, faceswap and
        # the image tools have only image_url (their image_base64 is not a URL).
        urls = get_list(output, "image_urls") or []
        if any(web_url(u) or (isinstance(u, dict) and _first_url(u)) for u in urls):
            self._any(urls, "image")
        elif web_url(output.get("image_url")):
            self.add("image", output.get("image_url"))
        else:
            self._any(get_list(output, "temporary_image_urls") or [], "image")

    # -- 3D ----------------------------------------------------------------------------------

    def _three_d(self, output: dict[str, Any]) -> None:
        # Trellis: model_file (GLB), combined_video (turntable), no_background_image (the input
        # cut out); Trellis 2 and Pixal3D give model_file alone. mesh_url is an assumed alias.
        model_file = output.get("model_file") or output.get("mesh_url")
        if isinstance(model_file, dict):
            model_file = _first_url(model_file)
        self.add("model3d", model_file)
        for key, kind in THREE_D_EXTRAS:
            self.add(kind, output.get(key))

    # -- text --------------------------------------------------------------------------------

    def _text(self, output: dict[str, Any]) -> None:
        for key in TEXT_KEYS:
            self.add_text(output.get(key), output.get("title"))
        for pair in _items(output.get("lyrics_pairs")):
            # Udio generate_lyrics: [{title, text}], one text output each.
            if isinstance(pair, dict):
                self.add_text(pair.get("text"), pair.get("title"))
        self._describe(output.get("description"))
        for item in _items(output.get("descriptions")):
            self._describe(item)

    def _describe(self, description: Any) -> None:
        # Midjourney describe: one string holding four prompts, each after a keycap number;
        # a list of prompts is taken as it is.
        if isinstance(description, list):
            for item in description:
                self._describe(item)
            return
        if not isinstance(description, str):
            return
        parts = _KEYCAP.split(description)
        for part in parts if len(parts) > 1 else [description]:
            self.add_text(part)

    def _seed(self, output: dict[str, Any]) -> None:
        seed = output.get("seed")
        if isinstance(seed, str):
            self.add_text(seed)
        elif as_float(seed) is not None and seed:
            self.add_text(str(seed))

    # -- everything else -----------------------------------------------------------------------

    def _generic(self, output: dict[str, Any]) -> None:
        had_video = any(o["kind"] == "video" for o in self.outputs)
        for key, kind in GENERIC_OUTPUT_KEYS:
            value = output.get(key)
            if value is None or key in self._done:
                continue
            if key == "download_url" and had_video and kind_from_url(value) == "video":
                # Hailuo: download_url is the downloadable copy of video_url, the same clip.
                continue
            if kind == "video":
                if self._video_key(value, output):
                    had_video = True
            else:
                self._any(value, kind)

    def _video_key(self, value: Any, output: dict[str, Any]) -> bool:
        # A video given by URL takes the output's cover (Hailuo cover_url) as its thumbnail.
        if isinstance(value, str):
            return self.add("video", value, thumbnail_url=_thumbnail(output))
        return self._any(value, "video")


def _items(value: Any) -> list[Any]:
    """A list as it is, a map of id -> item as its items, anything else as nothing."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return []


def _url_of(value: Any) -> str | None:
    """The web URL of a string or of an object holding one."""
    if isinstance(value, dict):
        return _first_url(value)
    return web_url(value)


def _first_url(obj: dict[str, Any]) -> str | None:
    for key in URL_KEYS:
        url = web_url(obj.get(key))
        if url is not None:
            return url
    return None


def _thumbnail(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    for key in THUMBNAIL_KEYS:
        url = _url_of(obj.get(key))
        if url is not None:
            return url
    return None


def _positive(value: Any) -> int | None:
    number = as_float(value)
    if number is None or number <= 0 or not number.is_integer() or number > 1_000_000:
        return None
    return int(number)
