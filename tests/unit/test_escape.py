from relay.escape import one_line


def test_control_characters_become_visible_escapes() -> None:
    assert one_line("a\r\nb\tc") == "a\\r\\nb\\tc"
    assert one_line("\x1b[2J\x00\x7f\x85") == "\\x1b[2J\\x00\\x7f\\x85"
    assert one_line("line\u2028sep\u2029") == "line\\u2028sep\\u2029"


def test_printable_text_is_left_alone() -> None:
    text = 'évènement 完成 🎉 "quoted" back\\slash'
    assert one_line(text) == text


def test_bidirectional_controls_cannot_reorder_a_row() -> None:
    # "evt_1\u202e2_tve" would display as "evt_1evt_2" reversed; escaped, it shows as sent.
    assert one_line("evt_1\u202e2_tve") == "evt_1\\u202e2_tve"
    assert one_line("\u200e\u200f\u2066x\u2069") == "\\u200e\\u200f\\u2066x\\u2069"
