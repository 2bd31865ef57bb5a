"""Which model and what kind of task an event is about, as people name them.

``model_display`` maps a provider's model id to the name people know ("kling-v2-master" ->
"Kling"); ``task_kind`` says what the task made, as the word a title uses ("video", "images",
"imagine"). Both only read the event: no provider knowledge beyond public model names.
"""

from __future__ import annotations

import re

from relay.events import OutputKind, TaskEvent
from relay.render.text import humanize, one_line

# What each output kind is called, as a label ("Image 2 of 3").
KIND_NAMES: dict[str, str] = {
    "image": "Image",
    "video": "Video",
    "audio": "Audio",
    "model3d": "3D model",
    "text": "Text",
    "file": "File",
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


def _kind_of_task_type(task_type: str | None) -> str | None:
    name = one_line(task_type).lower().replace("-", "_")
    if not name:
        return None
    if name in _TASK_KINDS:
        return _TASK_KINDS[name]
    if "caption" in name:
        return "caption"
    words = humanize(name)
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
