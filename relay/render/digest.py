"""A batch digest as a Slack message, a mail and a JSON body (pure: builds, sends nothing).

Top to bottom: the group and how it stands ("Batch batch=b42 · 480 succeeded, 20 failed"), the
counts by status, the failures with their errors (the first N, then "and N more" with the
command and admin API filter that lists them all), the successes as links or thumbnails (up
to a limit), how long it took (first to last result) and the p95 task duration, and the usage
the providers reported, summed. Every value from a payload is escaped as in the per-event
messages (a task id cannot mention anyone).
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from relay.digest_view import DigestView, TaskLine
from relay.render.mail import MailContent
from relay.render.slack import (
    MAX_HEADER,
    SlackMessage,
    enforce_limits,
    escape_mrkdwn,
    escape_within,
    link,
)
from relay.render.text import human_duration, one_line, shorten, web_url

_ORDER = ("succeeded", "failed", "cancelled", "processing", "pending")
_MARK = {"succeeded": "✅", "failed": "❌", "cancelled": "⚪", "processing": "⏳", "pending": "⏳"}
MAX_THUMBNAILS = 5
ERROR_LIMIT = 300


def _counts(view: DigestView) -> str:
    statuses = sorted(view.counts, key=lambda s: _ORDER.index(s) if s in _ORDER else 99)
    return ", ".join(f"{view.counts[s]} {s}" for s in statuses) or "no tasks"


def headline(view: DigestView) -> str:
    """One line: the group, its counts, and whether it is still open."""
    state = "" if view.final else " (so far)"
    tasks = f"{view.total} task" + ("" if view.total == 1 else "s")
    return one_line(f"Batch {view.title}: {_counts(view)} — {tasks}{state}")


def _number(value: float) -> str:
    return f"{value:,.0f}" if value.is_integer() else f"{value:,.4g}"


def _usage(view: DigestView) -> str:
    if not view.usage:
        return ""
    return "Usage: " + " · ".join(
        f"{one_line(k)} {_number(v)}" for k, v in sorted(view.usage.items())
    )


def _timing(view: DigestView) -> str:
    parts = []
    span = human_duration(view.span_s)
    if span is not None and view.total > 1:
        parts.append(f"Took {span} (first to last result)")
    p95 = human_duration(view.p95_s)
    if p95 is not None:
        parts.append(f"p95 task duration {p95}")
    return " · ".join(parts)


def _closed_line(view: DigestView) -> str:
    if view.final:
        return f"Closed {datetime.fromtimestamp(view.last_at, UTC):%Y-%m-%d %H:%M:%SZ}"
    return "Open: this message is updated as results come in"


# -- Slack ----------------------------------------------------------------------------------


def _code(text: str) -> str:
    """A task id in `code` (a backtick in it cannot close the span)."""
    return "`" + escape_mrkdwn(one_line(text).replace("`", "'")) + "`"


def _failure_mrkdwn(line: TaskLine) -> str:
    error = escape_within(one_line(line.error) or line.status, ERROR_LIMIT)
    return f"• {_code(line.task_id)}: {error}"


def _success_mrkdwn(line: TaskLine) -> str:
    url = web_url(line.url)
    return f"• {link(url, one_line(line.task_id))}" if url else f"• {_code(line.task_id)}"


def digest_slack(view: DigestView) -> SlackMessage:
    """The digest's one Slack message (posted, then edited in place)."""
    mark = "❌" if view.counts.get("failed") else "✅" if view.final else "⏳"
    header = shorten(f"{mark} Batch {view.title}", MAX_HEADER)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
        _section(f"*{escape_mrkdwn(_counts(view))}* of {view.total} tasks"),
    ]
    if view.failures:
        lines = [_failure_mrkdwn(f) for f in view.failures]
        if view.more_failures:
            lines.append(f"… and {view.more_failures} more: `{escape_mrkdwn(view.failed_command)}`")
        blocks.append(_section("*Failures*\n" + "\n".join(lines)))
    if view.successes:
        lines = [_success_mrkdwn(s) for s in view.successes]
        if view.more_successes:
            lines.append(f"… and {view.more_successes} more")
        blocks.append(_section("*Results*\n" + "\n".join(lines)))
        images = [s for s in view.successes if web_url(s.thumbnail)][:MAX_THUMBNAILS]
        blocks.extend(
            {
                "type": "image",
                "image_url": web_url(s.thumbnail),
                "alt_text": shorten(one_line(s.task_id), 200) or "result",
            }
            for s in images
        )
    facts = [t for t in (_timing(view), _usage(view)) if t]
    context = [escape_mrkdwn(t) for t in facts] + [escape_mrkdwn(_closed_line(view))]
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": t, "verbatim": True} for t in context],
        }
    )
    return SlackMessage(text=escape_mrkdwn(headline(view)), blocks=enforce_limits(blocks))


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}}


# -- mail -----------------------------------------------------------------------------------


def digest_mail(view: DigestView) -> MailContent:
    """The digest's one mail, sent when its window closes."""
    text = [headline(view), ""]
    if view.failures:
        text.append("Failures:")
        text += [f"  {one_line(f.task_id)}: {one_line(f.error) or f.status}" for f in view.failures]
        if view.more_failures:
            text.append(f"  … and {view.more_failures} more: {view.failed_command}")
        text.append("")
    if view.successes:
        text.append("Results:")
        text += [
            f"  {one_line(s.task_id)}" + (f": {web_url(s.url)}" if web_url(s.url) else "")
            for s in view.successes
        ]
        if view.more_successes:
            text.append(f"  … and {view.more_successes} more")
        text.append("")
    for fact in (_timing(view), _usage(view), _closed_line(view)):
        if fact:
            text.append(fact)
    esc = html.escape
    parts = [f"<h2>{esc(headline(view))}</h2>"]
    if view.failures:
        items = "".join(
            f"<li><code>{esc(one_line(f.task_id))}</code>: {esc(one_line(f.error) or f.status)}"
            "</li>"
            for f in view.failures
        )
        more = (
            f"<li>… and {view.more_failures} more: <code>{esc(view.failed_command)}</code></li>"
            if view.more_failures
            else ""
        )
        parts.append(f"<h3>Failures</h3><ul>{items}{more}</ul>")
    if view.successes:
        items = "".join(
            f'<li><a href="{esc(url)}">{esc(one_line(s.task_id))}</a></li>'
            if (url := web_url(s.url))
            else f"<li>{esc(one_line(s.task_id))}</li>"
            for s in view.successes
        )
        more = f"<li>… and {view.more_successes} more</li>" if view.more_successes else ""
        parts.append(f"<h3>Results</h3><ul>{items}{more}</ul>")
    facts = [f for f in (_timing(view), _usage(view), _closed_line(view)) if f]
    parts.append("".join(f"<p>{esc(f)}</p>" for f in facts))
    subject = shorten(headline(view), 200)
    return MailContent(subject=subject, text="\n".join(text).strip() + "\n", html="".join(parts))


# -- webhook --------------------------------------------------------------------------------


def _task_json(line: TaskLine) -> dict[str, Any]:
    return {
        "task_id": line.task_id,
        "status": line.status,
        "error": line.error or None,
        "url": line.url or None,
        "duration_s": line.duration_s,
    }


def _iso(ts: float) -> str:
    """As the event envelope writes times: ISO 8601, UTC, with a Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def digest_json(view: DigestView) -> dict[str, Any]:
    """The digest's webhook body: ``type: relay.digest``, sent once when the window closes."""
    return {
        "type": "relay.digest",
        "id": view.key,
        "data": {
            "labels": view.labels,
            "window": view.window,
            "final": view.final,
            "total": view.total,
            "counts": view.counts,
            "failures": [_task_json(f) for f in view.failures],
            "more_failures": view.more_failures,
            "successes": [_task_json(s) for s in view.successes],
            "more_successes": view.more_successes,
            "opened_at": _iso(view.opened_at),
            "last_at": _iso(view.last_at),
            "p95_duration_s": view.p95_s,
            "usage": view.usage,
            "providers": view.providers,
            "failed_events": view.failed_path,
        },
    }
