"""Text from outside (request paths, task ids, prompts, remote error bodies) made safe for one
line of a log or a terminal: control characters become visible escapes, so a CR/LF cannot
start a forged line or row and an escape sequence cannot drive the terminal."""

from __future__ import annotations

# C0 and C1 controls and DEL as escapes; the common three by their usual names.
CONTROLS = {
    **{i: f"\\x{i:02x}" for i in (*range(0x20), *range(0x7F, 0xA0))},
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}
# Unicode's line and paragraph separators end a line in some terminals and log viewers.
CONTROLS.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
# Bidirectional marks, embeddings, overrides and isolates reorder how the rest of a line or a
# table row displays (a task id that shows as another one).
CONTROLS.update(
    {i: f"\\u{i:04x}" for i in (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}
)


def one_line(text: str) -> str:
    """``text`` with every control character escaped: it stays on one line."""
    return text.translate(CONTROLS)
