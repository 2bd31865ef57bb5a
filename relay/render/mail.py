"""A TaskEvent as an email: subject, plain-text part and HTML part (pure: sends nothing).

Same content as the Slack message (see ``relay.render.summary``). The subject is one line
whatever the payload holds (no CR/LF or other control characters, and no RFC 2047 encoded word
that a mail client would decode). In the HTML every payload value is escaped with
``html.escape(quote=True)`` and only http(s) URLs become ``href``/``src``; anything else is
shown as text. Styles are inline: mail clients drop ``<style>``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from relay.events import TaskEvent
from relay.render.names import ProviderNames
from relay.render.summary import PROMPT_LIMIT, OutputView, Summary, summarize
from relay.render.text import and_more, format_time, one_line, shorten

SUBJECT_PREFIX = "[relay]"
SUBJECT_LIMIT = 200
SUBJECT_ERROR_LIMIT = 80
ERROR_LIMIT = 4000
OUTPUT_TEXT_LIMIT = 2000
# Outputs listed one by one; the rest are counted ("… and 30 more outputs").
MAX_LISTED_OUTPUTS = 50
# Images shown inline; later ones are links only (a mail with 80 pictures helps nobody).
MAX_INLINE_IMAGES = 12
IMAGE_WIDTH = 480
# A cover or still for a video, song or 3D model: a preview, not the output itself.
THUMBNAIL_WIDTH = 240

TEST_NOTE = "TEST EVENT: sent in the provider's test mode, not a real task"
NSFW_NOTE = "flagged NSFW by the provider, not shown here"

_MUTED = "color:#616061;"
_P = "margin:0 0 12px;"


@dataclass(frozen=True)
class MailParts:
    """What a destination's or route's templates rendered (README: Rules, templates); None
    (or blank): the built-in one. ``subject`` is made one line here; ``paragraph_text`` is
    plain text and ``paragraph_html`` HTML whose payload values are already escaped."""

    subject: str | None = None
    paragraph_text: str | None = None
    paragraph_html: str | None = None


@dataclass(frozen=True)
class MailContent:
    subject: str
    text: str
    html: str


def _esc(value: str) -> str:
    return html.escape(value, quote=True)


def _short_id(task_id: str) -> str:
    """Enough of an id to tell tasks apart in a subject line: "1a2b3c4d…", "task_01KA040M…"."""
    head, sep, rest = task_id.partition("_")
    keep = len(head) + 1 + 8 if sep and len(head) <= 8 and rest else 8
    return shorten(task_id, keep + 1) if len(task_id) > keep + 4 else task_id


def mail_subject(summary: Summary) -> str:
    """One line, at most 200 characters, whatever the payload holds."""
    parts = [SUBJECT_PREFIX]
    if summary.test:
        parts.append("[TEST]")
    short = _short_id(summary.task_id)
    task = short if short.lower().startswith("task") else f"task {short}"
    if summary.alert:
        parts.append(summary.title)
    elif summary.outcome == "failed":
        reason = one_line(summary.error.message) if summary.error else ""
        parts.append(f"FAILED {summary.what}: {shorten(reason, SUBJECT_ERROR_LIMIT) or task}")
    elif summary.outcome in ("processing", "pending"):
        parts.append(f"{summary.title.replace(': ', ' ', 1)}: {task}")
    else:
        parts.append(f"{summary.title}: {task}")
    return subject_line(" ".join(parts))


def subject_line(text: str) -> str:
    """``text`` as a subject: one line, at most 200 characters, nothing a client decodes."""
    # one_line again over the whole: every control character and line break becomes a space.
    # An RFC 2047 encoded word from the payload ("=?utf-8?b?...?=") would be decoded by mail
    # clients, into any text (line breaks, bidi overrides): a zero-width space keeps it literal.
    line = one_line(text).replace("=?", "=\u200b?")
    return shorten(line, SUBJECT_LIMIT)


# -- plain text --------------------------------------------------------------------------------


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line if line else prefix.rstrip() for line in text.split("\n"))


def _output_text(output: OutputView) -> list[str]:
    head = " \u00b7 ".join(part for part in (output.label, output.size) if part)
    if output.nsfw:
        head += f" \u00b7 {NSFW_NOTE}"
    if output.kind == "text":
        return [f"- {head}:", _indent(shorten(output.text or "(empty)", OUTPUT_TEXT_LIMIT), "    ")]
    if output.link is not None:
        return [f"- {head}", f"    {output.link}"]
    if output.url:
        return [f"- {head}", f"    not a web link: {shorten(output.url, 300)}"]
    return [f"- {head} (no link given)"]


def _error_head(summary: Summary, code: str | None) -> str:
    if summary.alert:
        return f"Alert type: {code}" if code else "Alert:"
    return f"Error (code {code}):" if code else "Error:"


def _expiry_line(summary: Summary) -> str | None:
    phrase = summary.expiry_phrase()
    if phrase is None or summary.expires_at is None:
        return None
    return f"{phrase} {format_time(summary.expires_at)}."


def _received_line(summary: Summary) -> str:
    return (
        f"Received {format_time(summary.received_at, seconds=True)} via {summary.source}"
        f" \u00b7 event {summary.event_id}"
    )


def mail_text(summary: Summary, paragraph: str | None = None) -> str:
    lines: list[str] = [f"{summary.symbol} {summary.title}"]
    if summary.test:
        lines.append(f"*** {TEST_NOTE} ***")
    if paragraph is not None:
        lines += ["", paragraph.strip("\n")]
    if summary.error is not None:
        error = summary.error
        lines += ["", _error_head(summary, error.code)]
        if error.message:
            lines.append(_indent(shorten(error.message, ERROR_LIMIT)))
        if error.detail:
            lines.append(_indent("Detail: " + shorten(error.detail, ERROR_LIMIT)))
    if summary.prompt:
        lines += ["", "Prompt:", _indent(shorten(summary.prompt, PROMPT_LIMIT))]
    width = max(len(label) for label, _ in summary.facts) + 2
    lines.append("")
    lines += [f"{label + ':':<{width}}{value}" for label, value in summary.facts]
    if summary.outputs:
        lines += ["", "Outputs:" if len(summary.outputs) > 1 else "Output:"]
        for output in summary.outputs[:MAX_LISTED_OUTPUTS]:
            lines += _output_text(output)
        hidden = len(summary.outputs) - MAX_LISTED_OUTPUTS
        if hidden > 0:
            lines.append(and_more(hidden, "output"))
    expiry = _expiry_line(summary)
    if expiry:
        lines += ["", expiry]
    lines += ["", "--", _received_line(summary)]
    return "\n".join(lines) + "\n"


# -- HTML --------------------------------------------------------------------------------------


def _a(url: str, label: str) -> str:
    """A link; ``url`` must be a checked http(s) URL (``OutputView.link``)."""
    return f'<a href="{_esc(url)}" style="color:#1264a3;">{_esc(label)}</a>'


def _multiline(text: str) -> str:
    return _esc(text).replace("\n", "<br>\n")


def _picture(output: OutputView) -> str | None:
    """What to show inline for an output: its thumbnail, else the image itself."""
    return output.thumbnail or (output.link if output.kind == "image" else None)


def _has_picture(output: OutputView) -> bool:
    return output.kind != "text" and _picture(output) is not None


def _html_output(output: OutputView, inline_image: bool) -> str:
    details = [output.size] if output.size else []
    if output.kind == "text":
        body = _multiline(shorten(output.text or "(empty)", OUTPUT_TEXT_LIMIT))
        return (
            f'<p style="margin:0 0 4px;font-weight:bold;">{_esc(output.label)}</p>'
            f'<blockquote style="margin:0 0 12px;padding:4px 12px;border-left:4px solid #dddddd;'
            f'color:#333333;">{body}</blockquote>'
        )
    parts: list[str] = []
    if output.link is not None:
        picture = _picture(output)
        if inline_image and picture is not None and not output.nsfw:
            most = IMAGE_WIDTH if output.kind == "image" else THUMBNAIL_WIDTH
            width = min(output.width or most, most)
            parts.append(
                f'<a href="{_esc(output.link)}"><img src="{_esc(picture)}" '
                f'alt="{_esc(output.label)}" width="{width}" style="display:block;max-width:100%;'
                f'height:auto;border:0;margin:0 0 4px;"></a>'
            )
        line = _a(output.link, output.label)
    elif output.url:
        line = f"<strong>{_esc(output.label)}</strong>"
        details.append(f"not a web link: {shorten(output.url, 300)}")
    else:
        line = f"<strong>{_esc(output.label)}</strong>"
        details.append("no link given")
    for detail in details:
        line += f" \u00b7 {_esc(detail)}"
    if output.nsfw:
        line += f' \u00b7 <span style="color:#b35900;">\u26a0 {_esc(NSFW_NOTE)}</span>'
    parts.append(line)
    return f'<div style="{_P}">{"".join(parts)}</div>'


def mail_html(summary: Summary, paragraph: str | None = None) -> str:
    """The HTML part; ``paragraph`` (HTML, payload values escaped) goes under the title."""
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(summary.title)}</title></head>",
        '<body style="margin:0;padding:0;background:#f4f4f5;">',
        '<div style="max-width:640px;margin:0 auto;padding:20px;background:#ffffff;'
        "font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;font-size:14px;"
        'line-height:1.5;color:#1d1c1d;">',
    ]
    if summary.test:
        out.append(
            f'<p style="{_P}padding:6px 10px;background:#fff4ce;border:1px solid #e0c060;'
            f'font-weight:bold;">{_esc(TEST_NOTE)}</p>'
        )
    out.append(
        f'<h1 style="margin:0 0 16px;font-size:20px;line-height:1.3;">'
        f"{summary.symbol} {_esc(summary.title)}</h1>"
    )
    if paragraph is not None:
        body = paragraph.strip("\n").replace("\n", "<br>\n")
        out.append(f'<p style="{_P}">{body}</p>')
    if summary.error is not None:
        error = summary.error
        head = "Alert type" if summary.alert else "Error"
        code = (
            f' <code style="background:#f4f4f5;padding:0 4px;">{_esc(error.code)}</code>'
            if error.code
            else ""
        )
        detail = (
            f'<p style="margin:6px 0 0;{_MUTED}">Detail: '
            f"{_multiline(shorten(error.detail, ERROR_LIMIT))}</p>"
            if error.detail
            else ""
        )
        message = (
            f'<p style="margin:0;">{_multiline(shorten(error.message, ERROR_LIMIT))}</p>'
            if error.message
            else ""
        )
        out.append(
            '<div style="margin:0 0 16px;padding:10px 12px;border-left:4px solid #e01e5a;'
            f'background:#fdeef3;"><p style="margin:0 0 4px;font-weight:bold;">{head}{code}</p>'
            f"{message}{detail}</div>"
        )
    if summary.prompt:
        out.append(
            f'<p style="margin:0 0 4px;font-weight:bold;">Prompt</p>'
            f'<blockquote style="margin:0 0 16px;padding:4px 12px;border-left:4px solid #dddddd;'
            f'color:#333333;">{_multiline(shorten(summary.prompt, PROMPT_LIMIT))}</blockquote>'
        )
    rows = "".join(
        f'<tr><td style="padding:2px 16px 2px 0;vertical-align:top;{_MUTED}">{_esc(label)}</td>'
        f'<td style="padding:2px 0;vertical-align:top;">{_esc(value)}</td></tr>'
        for label, value in summary.facts
    )
    out.append(
        '<table role="presentation" cellpadding="0" cellspacing="0" '
        f'style="border-collapse:collapse;margin:0 0 16px;">{rows}</table>'
    )
    if summary.outputs:
        heading = "Outputs" if len(summary.outputs) > 1 else "Output"
        out.append(f'<p style="margin:0 0 8px;font-weight:bold;">{heading}</p>')
        inline = 0
        for output in summary.outputs[:MAX_LISTED_OUTPUTS]:
            out.append(_html_output(output, inline < MAX_INLINE_IMAGES))
            if output.link is not None and not output.nsfw and _has_picture(output):
                inline += 1
        hidden = len(summary.outputs) - MAX_LISTED_OUTPUTS
        if hidden > 0:
            out.append(f'<p style="{_P}">{_esc(and_more(hidden, "output"))}</p>')
    expiry = _expiry_line(summary)
    if expiry:
        out.append(f'<p style="{_P}">\u23f3 {_esc(expiry)}</p>')
    out.append(
        f'<p style="margin:16px 0 0;font-size:12px;{_MUTED}">{_esc(_received_line(summary))}</p>'
    )
    out.append("</div></body></html>")
    return "\n".join(out) + "\n"


def _given(text: str | None) -> str | None:
    return text if text is not None and text.strip() else None


def mail_content(
    event: TaskEvent, names: ProviderNames, parts: MailParts | None = None
) -> MailContent:
    """Subject, plain text and HTML for ``event``: the same content in each (``names``: see
    ``summarize``). ``parts``: what templates rendered, in place of the built-in subject, and
    a paragraph under the title; blank ones are left out."""
    summary = summarize(event, names)
    parts = parts or MailParts()
    subject = mail_subject(summary)
    custom = _given(parts.subject)
    if custom is not None:
        subject = subject_line(("[TEST] " if summary.test else "") + custom)
    text = _given(parts.paragraph_text)
    return MailContent(
        subject=subject,
        text=mail_text(summary, text),
        html=mail_html(summary, _given(parts.paragraph_html)),
    )
