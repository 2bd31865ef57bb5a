"""A TaskEvent as a Slack Block Kit message (pure: builds JSON, sends nothing).

Layout, top to bottom: a header (mark, title), a TEST EVENT mark, the error for failures, the
prompt, the facts (provider, task type, task id, duration), one block per output (image blocks for
images, links for the rest), when the links expire, and where the event came from.

Every payload value is escaped for mrkdwn (``&``, ``<``, ``>``), so a prompt cannot mention
``<!channel>`` or smuggle a link; every text object is ``verbatim`` so Slack does not parse
mentions or channel names by itself. Slack's limits are enforced before returning: too many
outputs end with a visible "… and N more outputs", long texts end with "…"; nothing is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from relay.events import TaskEvent
from relay.render.names import ProviderNames
from relay.render.summary import CODE_FACTS, PROMPT_LIMIT, OutputView, Summary, summarize
from relay.render.text import ELLIPSIS, and_more, format_time, one_line, shorten, utc

# Slack's documented limits (api.slack.com/reference/block-kit).
MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_SECTION_TEXT = 3000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_CONTEXT_ELEMENTS = 10
MAX_CONTEXT_TEXT = 2000
MAX_ALT_TEXT = 2000
MAX_IMAGE_TITLE = 2000
MAX_IMAGE_URL = 3000
MAX_TEXT = 40000

# What we show of long payload values in the main message (the thread reply shows more).
ERROR_MESSAGE_LIMIT = 1000
ERROR_DETAIL_LIMIT = 500
OUTPUT_TEXT_LIMIT = 2000
ALT_PROMPT_LIMIT = 200
FALLBACK_ERROR_LIMIT = 300
ID_LIMIT = 200

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


@dataclass(frozen=True)
class SlackParts:
    """What a destination's or route's templates rendered (README: Rules, templates), each in
    place of the built-in one; None (or blank): the built-in one. ``header`` is plain text;
    ``text`` and ``sections`` are mrkdwn whose payload values are already escaped."""

    header: str | None = None
    text: str | None = None
    sections: tuple[str, ...] = ()


@dataclass(frozen=True)
class SlackMessage:
    """``text`` is the plain fallback Slack shows in notifications; ``blocks`` the message."""

    text: str
    blocks: list[dict[str, Any]]


# -- mrkdwn text -------------------------------------------------------------------------------


def escape_mrkdwn(text: str) -> str:
    """``text`` with ``&``, ``<`` and ``>`` escaped: shown as typed, never as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_within(text: str, limit: int) -> str:
    """``text`` escaped for mrkdwn, cut (with "…") so the escaped form fits ``limit``."""
    out = escape_mrkdwn(text)
    if len(out) <= limit:
        return out
    budget, used, parts = limit - 1, 0, []
    for ch in text:
        piece = _ESCAPES.get(ch, ch)
        if used + len(piece) > budget:
            break
        parts.append(piece)
        used += len(piece)
    return "".join(parts).rstrip() + ELLIPSIS


def safe_cut(mrkdwn: str, limit: int) -> str:
    """Already-built mrkdwn cut to ``limit`` characters without breaking an ``&amp;`` entity, a
    ``<link|label>`` or a ``` code block; ends with "…" when cut."""
    if len(mrkdwn) <= limit:
        return mrkdwn
    cut = mrkdwn[: max(limit - 4, 0)]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    lt = cut.rfind("<")
    if lt != -1 and ">" not in cut[lt:]:
        cut = cut[:lt]
    cut = cut.rstrip() + ELLIPSIS
    if cut.count("```") % 2:
        cut += "```"
    return cut


def _quote(escaped: str) -> str:
    """Each line of already-escaped text as a mrkdwn quote line."""
    return "\n".join(">" + line for line in escaped.split("\n"))


def _code(text: str) -> str:
    """An identifier in `code` (backticks in it cannot close the span)."""
    return "`" + escape_mrkdwn(text.replace("`", "'")) + "`"


def _code_block_body(text: str) -> str:
    """Text for inside a ``` block: escaped, and no ``` of its own to close the block early."""
    return escape_mrkdwn(text).replace("```", "`\u200b`\u200b`")


def link(url: str, label: str) -> str:
    """A mrkdwn ``<url|label>`` for a checked http(s) URL; the label is escaped."""
    target = url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{target}|{escape_within(label, 200)}>"


def slack_date(value: datetime, token: str = "{date_short_pretty} {time}") -> str:
    """A ``<!date^…>`` that Slack shows in the reader's time zone, with a UTC fallback."""
    moment = utc(value)
    fallback = format_time(moment, seconds="{time_secs}" in token)
    return f"<!date^{int(moment.timestamp())}^{token}|{fallback}>"


# -- blocks ------------------------------------------------------------------------------------


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(safe_cut(text, MAX_SECTION_TEXT))}


def _context(*texts: str) -> dict[str, Any]:
    return {"type": "context", "elements": [_mrkdwn(safe_cut(t, MAX_CONTEXT_TEXT)) for t in texts]}


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": shorten(text, limit), "emoji": True}


def _header(summary: Summary, custom: str | None = None) -> dict[str, Any]:
    prefix = "[TEST] " if summary.test else ""
    shown = one_line(custom) if custom is not None else f"{summary.emoji} {summary.title}"
    return {"type": "header", "text": _plain(f"{prefix}{shown}", MAX_HEADER)}


def _test_mark() -> dict[str, Any]:
    return _context(
        ":test_tube: *TEST EVENT* \u00b7 sent in the provider's test mode, not a real task"
    )


def _error_block(summary: Summary) -> dict[str, Any] | None:
    error = summary.error
    if error is None:
        return None
    head = "*Alert type*" if summary.alert else ":warning: *Error*"
    if error.code:
        head += " " + _code(shorten(error.code, ID_LIMIT))
    text = head
    if error.message:
        text += "\n" + _quote(escape_within(error.message, ERROR_MESSAGE_LIMIT))
    if error.detail:
        text += "\n_Detail:_ " + escape_within(one_line(error.detail), ERROR_DETAIL_LIMIT)
    return _section(text)


def _prompt_block(summary: Summary) -> dict[str, Any] | None:
    if summary.prompt is None:
        return None
    return _section("*Prompt*\n" + _quote(escape_within(summary.prompt, PROMPT_LIMIT)))


def _facts_block(summary: Summary) -> dict[str, Any]:
    fields = []
    for label, value in summary.facts[:MAX_FIELDS]:
        shown = _code(shorten(value, 1900)) if label in CODE_FACTS else escape_within(value, 1900)
        fields.append(_mrkdwn(safe_cut(f"*{label}*\n{shown}", MAX_FIELD_TEXT)))
    return {"type": "section", "fields": fields}


def _image_title(output: OutputView, summary: Summary) -> str | None:
    """ "Image 2 of 4 \u00b7 1024\u00d71024"; None for a lone image with nothing more to say."""
    if len(summary.outputs) == 1 and output.title is None and output.size is None:
        return None
    return " \u00b7 ".join(part for part in (output.label, output.size) if part)


def _alt_text(output: OutputView, summary: Summary) -> str:
    """What the image shows: the prompt (with the image's name when there are several)."""
    lone = len(summary.outputs) == 1
    if summary.prompt:
        said = one_line(summary.prompt)
        return shorten(said if lone else f"{output.label}: {said}", ALT_PROMPT_LIMIT)
    return summary.title if lone else f"{summary.title}: {output.label}"


def _output_line(output: OutputView) -> str:
    """One output as a mrkdwn line: the kind's emoji, a link, the size and any warning."""
    label = escape_within(output.label, 200)
    if output.link is not None and len(output.link) <= MAX_SECTION_TEXT - 500:
        shown = f"*{link(output.link, output.label)}*"
    elif output.link is not None:
        shown = f"*{label}* (its link is too long for Slack)"
    elif output.url:
        shown = f"*{label}* \u00b7 not a web link: {escape_within(output.url, 300)}"
    else:
        shown = f"*{label}* \u00b7 no link given"
    parts = [f"{':warning:' if output.nsfw else output.emoji} {shown}"]
    if output.size:
        parts.append(output.size)
    if output.nsfw:
        parts.append("flagged NSFW by the provider, not shown here")
    return " \u00b7 ".join(parts)


def _output_block(output: OutputView, summary: Summary) -> dict[str, Any]:
    link_ok = output.link is not None and len(output.link) <= MAX_IMAGE_URL
    if output.kind == "image" and link_ok and not output.nsfw:
        image: dict[str, Any] = {
            "type": "image",
            "image_url": output.link,
            "alt_text": shorten(_alt_text(output, summary), MAX_ALT_TEXT),
        }
        title = _image_title(output, summary)
        if title is not None:
            image["title"] = _plain(title, MAX_IMAGE_TITLE)
        return image
    if output.kind == "text":
        body = _quote(escape_within(output.text or "(empty)", OUTPUT_TEXT_LIMIT))
        return _section(f"{output.emoji} *{escape_within(output.label, 200)}*\n{body}")
    block = _section(_output_line(output))
    thumb = output.thumbnail
    if thumb is not None and not output.nsfw and len(thumb) <= MAX_IMAGE_URL:
        block["accessory"] = {
            "type": "image",
            "image_url": thumb,
            "alt_text": shorten(f"{output.label} (thumbnail)", MAX_ALT_TEXT),
        }
    return block


def _overflow_block(rest: tuple[OutputView, ...]) -> dict[str, Any]:
    """The last block when outputs do not all fit: "… and N more outputs", then as many of
    their links as fit in one section, then "… and K more" for those not even linked."""
    head = f"*{and_more(len(rest), 'output')}*"
    links: list[str] = []
    used = len(head) + 40
    for output in rest:
        if output.link is None or len(output.link) > 1000:
            continue
        piece = link(output.link, output.label)
        if used + len(piece) + 3 > MAX_SECTION_TEXT - 40:
            break
        links.append(piece)
        used += len(piece) + 3
    text = head
    if links:
        text += "\n" + " \u00b7 ".join(links)
        unlisted = len(rest) - len(links)
        if unlisted:
            text += "\n" + and_more(unlisted)
    return _section(text)


def _expiry_block(summary: Summary) -> dict[str, Any] | None:
    phrase = summary.expiry_phrase()
    if phrase is None or summary.expires_at is None:
        return None
    return _context(f":hourglass: {phrase} {slack_date(summary.expires_at)}")


def _source_block(summary: Summary) -> dict[str, Any]:
    received = slack_date(summary.received_at, "{date_short_pretty} at {time_secs}")
    return _context(
        f"Received {received} via {_code(shorten(summary.source, ID_LIMIT))}"
        f" \u00b7 event {_code(shorten(summary.event_id, ID_LIMIT))}"
    )


def _fallback_text(summary: Summary) -> str:
    prefix = "[TEST] " if summary.test else ""
    text = f"{prefix}{summary.emoji} {escape_mrkdwn(summary.title)}"
    noun = "alert" if summary.alert else "task"
    text += f" \u00b7 {noun} {_code(shorten(summary.task_id, ID_LIMIT))}"
    if summary.error is not None and summary.error.message:
        text += " \u00b7 " + escape_within(one_line(summary.error.message), FALLBACK_ERROR_LIMIT)
    return safe_cut(text, MAX_TEXT)


def _blocks(summary: Summary, parts: SlackParts) -> list[dict[str, Any]]:
    text = _section(parts.text) if parts.text is not None else None
    head = [
        _header(summary, parts.header),
        text,
        _test_mark() if summary.test else None,
        _error_block(summary),
        _prompt_block(summary),
        _facts_block(summary),
        *(_section(s) for s in parts.sections),
    ]
    tail = [_expiry_block(summary), _source_block(summary)]
    top = [b for b in head if b is not None]
    bottom = [b for b in tail if b is not None]
    room = MAX_BLOCKS - len(top) - len(bottom)
    outputs = summary.outputs
    if len(outputs) <= room:
        middle = [_output_block(o, summary) for o in outputs]
    else:
        shown = max(room - 1, 0)
        middle = [_output_block(o, summary) for o in outputs[:shown]]
        middle.append(_overflow_block(outputs[shown:]))
    return top + middle + bottom


# -- limits ------------------------------------------------------------------------------------


def _fit_text_object(obj: dict[str, Any], limit: int) -> None:
    text = obj.get("text")
    if not isinstance(text, str):
        return
    if obj.get("type") == "plain_text":
        obj["text"] = shorten(text, limit)
    else:
        obj["text"] = safe_cut(text, limit)


def _fit_image(block: dict[str, Any]) -> dict[str, Any] | None:
    """An image (block or accessory) within limits, or None when its URL is too long.
    Anything that is not an image is left as it is."""
    if block.get("type") != "image":
        return block
    url = block.get("image_url")
    if not isinstance(url, str) or len(url) > MAX_IMAGE_URL:
        return None
    alt = block.get("alt_text")
    block["alt_text"] = shorten(alt if isinstance(alt, str) else "image", MAX_ALT_TEXT)
    title = block.get("title")
    if isinstance(title, dict):
        _fit_text_object(title, MAX_IMAGE_TITLE)
    return block


def enforce_limits(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``blocks`` cut to Slack's limits (a last line of defence: the builders already fit).

    Texts are shortened with "…", fields and context elements beyond the maximum dropped, an
    image whose URL is too long becomes a note, and blocks beyond 50 become "… and N more".
    Changes the given block dicts in place.
    """
    fitted: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            _fit_text_object(block["text"], MAX_HEADER)
        elif kind == "section":
            if isinstance(block.get("text"), dict):
                _fit_text_object(block["text"], MAX_SECTION_TEXT)
            if isinstance(block.get("fields"), list):
                block["fields"] = block["fields"][:MAX_FIELDS]
                for field in block["fields"]:
                    _fit_text_object(field, MAX_FIELD_TEXT)
            accessory = block.get("accessory")
            if isinstance(accessory, dict) and _fit_image(accessory) is None:
                del block["accessory"]
        elif kind == "context":
            block["elements"] = block["elements"][:MAX_CONTEXT_ELEMENTS]
            for element in block["elements"]:
                _fit_text_object(element, MAX_CONTEXT_TEXT)
        elif kind == "image" and _fit_image(block) is None:
            block = _section(":frame_with_picture: an image whose link is too long for Slack")
        fitted.append(block)
    if len(fitted) > MAX_BLOCKS:
        keep = fitted[: MAX_BLOCKS - 1]
        keep.append(_section(and_more(len(fitted) - len(keep), "block")))
        fitted = keep
    return fitted


# -- public API --------------------------------------------------------------------------------


def _given(text: str | None) -> str | None:
    return text if text is not None and text.strip() else None


def slack_message(
    event: TaskEvent,
    names: ProviderNames,
    mentions: Sequence[str] = (),
    parts: SlackParts | None = None,
) -> SlackMessage:
    """The Slack message for ``event``, within Slack's limits (``names``: see ``summarize``).
    ``mentions`` (Slack mention syntax, from the rules: never payload text, which is always
    escaped) lead the text, so they notify, and get a line of their own under the header.
    ``parts``: what templates rendered, shown in place of (header, text) or beside (sections)
    the built-in content; blank ones are left out."""
    summary = summarize(event, names)
    given = parts or SlackParts()
    parts = SlackParts(
        header=_given(given.header),
        text=_given(given.text),
        sections=tuple(s for s in given.sections if s.strip()),
    )
    text, blocks = _fallback_text(summary), _blocks(summary, parts)
    if parts.text is not None:
        prefix = "[TEST] " if summary.test else ""
        text = safe_cut(prefix + parts.text, MAX_TEXT)
    if mentions:
        line = " ".join(mentions)
        text = safe_cut(f"{line} {text}", MAX_TEXT)
        blocks.insert(1, _section(line))
    return SlackMessage(text=text, blocks=enforce_limits(blocks))


def slack_thread_reply(event: TaskEvent, names: ProviderNames) -> SlackMessage | None:
    """For a failed event with an error: a reply with the whole error (code, message, detail),
    split over as many sections as it takes, within limits. None otherwise."""
    summary = summarize(event, names)
    error = summary.error
    if event.status != "failed" or error is None:
        return None
    what = "Alert" if summary.alert else "Error"
    blocks: list[dict[str, Any]] = [
        _section(
            f":mag: *{what} details* for {'alert' if summary.alert else 'task'} "
            f"{_code(shorten(summary.task_id, ID_LIMIT))}"
        )
    ]
    fields = []
    if error.code:
        fields.append(_mrkdwn(f"*Code*\n{_code(shorten(error.code, 1900))}"))
    status = one_line(event.provider_status)
    if status:
        fields.append(_mrkdwn(f"*Provider status*\n{_code(shorten(status, 1900))}"))
    if fields:
        blocks.append({"type": "section", "fields": fields})
    sections: list[str] = []
    for title, body in (("Message", error.message), ("Detail", error.detail)):
        if body:
            chunks = _chunks(_code_block_body(body), MAX_SECTION_TEXT - 40)
            sections.extend(
                (f"*{title}*\n" if i == 0 else "") + f"```{chunk}```"
                for i, chunk in enumerate(chunks)
            )
    room = MAX_BLOCKS - len(blocks)
    if len(sections) > room:
        dropped = sections[room - 1 :]
        sections = sections[: room - 1]
        left = sum(len(s) for s in dropped)
        sections.append(and_more(left, "character"))
    blocks.extend(_section(s) for s in sections)
    text = f"{what} details: " + escape_within(one_line(error.message), FALLBACK_ERROR_LIMIT)
    return SlackMessage(text=safe_cut(text, MAX_TEXT), blocks=enforce_limits(blocks))


def slack_webhook_payload(event: TaskEvent, names: ProviderNames) -> dict[str, Any]:
    """The JSON body for an incoming webhook: the same text and blocks as ``slack_message``."""
    message = slack_message(event, names)
    return {"text": message.text, "blocks": message.blocks}


def _chunks(escaped: str, size: int) -> list[str]:
    """Escaped text in pieces of at most ``size`` characters, never splitting an entity and
    preferring to split at a line break or space."""
    pieces = []
    while len(escaped) > size:
        cut = size
        amp = escaped.rfind("&", cut - 6, cut)
        if amp != -1 and ";" not in escaped[amp:cut]:
            cut = amp
        for sep in ("\n", " "):
            at = escaped.rfind(sep, size // 2, cut)
            if at != -1:
                cut = at + 1
                break
        pieces.append(escaped[:cut])
        escaped = escaped[cut:]
    if escaped or not pieces:
        pieces.append(escaped)
    return pieces
