from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from relay.events import LABEL_NAMES
from relay.routing.matchers import Matcher, parse_matchers
from relay.routing.model import Route


def labels(**values: str | tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {k: v if isinstance(v, tuple) else (v,) for k, v in values.items()}


def one(text: str) -> Matcher:
    [matcher] = parse_matchers(text)
    return matcher


# -- the four operators ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "model", "expected"),
    [
        ('model="kling"', "kling", True),
        ('model="kling"', "luma", False),
        ('model!="kling"', "kling", False),
        ('model!="kling"', "luma", True),
        ('model=~"kling|luma"', "luma", True),
        ('model=~"kling|luma"', "flux", False),
        ('model!~"kling|luma"', "luma", False),
        ('model!~"kling|luma"', "flux", True),
    ],
)
def test_operators(text: str, model: str, expected: bool) -> None:
    assert one(text).matches(labels(model=model)) is expected


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ('model=~"kling"', "kling-v2", False),  # anchored at the end
        ('model=~"kling"', "new-kling", False),  # anchored at the start
        ('model=~"kling.*"', "kling-v2", True),
        ('model=~"a|b"', "ab", False),  # the alternation is grouped inside the anchors
        ('model=~"kling$"', "kling\n", False),  # Python's "$" would accept a trailing newline
        ('model!~"kling"', "kling-v2", True),
    ],
)
def test_regexes_are_anchored(text: str, value: str, expected: bool) -> None:
    assert one(text).matches(labels(model=value)) is expected


def test_leading_flags_work() -> None:
    matcher = one('model=~"(?i)kling"')
    assert matcher.matches(labels(model="KLING"))
    assert not matcher.matches(labels(model="KLING-2"))


# -- multi-valued and missing labels --------------------------------------------------------


def test_multi_valued_label_positive_ops_hold_if_any_value_matches() -> None:
    both = labels(output_kind=("image", "video"))
    assert one('output_kind="video"').matches(both)
    assert one('output_kind=~"vid.*"').matches(both)
    assert not one('output_kind="audio"').matches(both)


def test_multi_valued_label_negative_ops_hold_if_no_value_matches() -> None:
    both = labels(output_kind=("image", "video"))
    assert not one('output_kind!="video"').matches(both)
    assert not one('output_kind!~"vid.*"').matches(both)
    assert one('output_kind!="audio"').matches(both)
    assert one('output_kind!~"aud.*"').matches(both)


def test_missing_label_counts_as_empty() -> None:
    assert one('error_code=""').matches({})
    assert not one('error_code!=""').matches({})
    assert one('error_code=~".*"').matches({})
    assert not one('error_code=~".+"').matches({})
    assert one('error_code!="quota"').matches({})


# -- syntax ---------------------------------------------------------------------------------


def test_list_with_braces_commas_and_spaces() -> None:
    parsed = parse_matchers(' { status="failed" , model =~ "kling|luma", } ')
    assert parsed == [Matcher("status", "=", "failed"), Matcher("model", "=~", "kling|luma")]


def test_list_without_braces() -> None:
    assert parse_matchers('status="failed",final="true"') == [
        Matcher("status", "=", "failed"),
        Matcher("final", "=", "true"),
    ]


def test_empty_braces_is_empty_list() -> None:
    assert parse_matchers("{}") == []
    assert parse_matchers("{ }") == []


def test_unquoted_values() -> None:
    assert parse_matchers("status=failed, model=~kling|luma") == [
        Matcher("status", "=", "failed"),
        Matcher("model", "=~", "kling|luma"),
    ]
    assert parse_matchers("{error_code=}") == [Matcher("error_code", "=", "")]


def test_quoted_value_may_hold_commas_braces_and_spaces() -> None:
    assert one('model="a, {b} c"').value == "a, {b} c"


def test_escapes() -> None:
    assert one(r'model="say \"hi\""').value == 'say "hi"'
    assert one(r'model="back\\slash"').value == "back\\slash"
    assert one(r'model="two\nlines"').value == "two\nlines"
    # Unknown escapes are kept, as in Alertmanager, so regex escapes survive.
    regex = one(r'model=~"kling\.v1"')
    assert regex.value == r"kling\.v1"
    assert regex.matches(labels(model="kling.v1"))
    assert not regex.matches(labels(model="klingxv1"))


def test_str_is_canonical_and_escaped() -> None:
    assert str(one("status = failed")) == 'status="failed"'
    assert str(Matcher("model", "!=", 'a"b\\c\nd')) == r'model!="a\"b\\c\nd"'


@given(
    st.sampled_from(sorted(LABEL_NAMES)),
    st.sampled_from(["=", "!="]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"])),
)
def test_str_round_trips(name: str, op: str, value: str) -> None:
    matcher = Matcher(name, op, value)  # type: ignore[arg-type]
    assert parse_matchers(str(matcher)) == [matcher]
    assert parse_matchers("{" + str(matcher) + "}") == [matcher]


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'model=~"(kling"',
            "bad regex in 'model=~\"(kling\"': missing ), unterminated subpattern at position 0",
        ),
        ('model!~"*"', "bad regex in 'model!~\"*\"': nothing to repeat at position 0"),
        # A name no source could declare (a typo of a declared one is the loader's to find).
        ('Modle="x"', "unknown label 'Modle' in 'Modle=\"x\"' (valid: error_code, final, model,"),
        ("status", "bad matcher 'status': expected one of =, !=, =~, !~ after 'status'"),
        ('status=="x"', "stray '\"'"),
        ('status="x', "unterminated quoted value"),
        ('{status="x"', "missing closing '}'"),
        ('status="x" model="y"', "expected ',' between matchers"),
        ("status=failed model=x", "has a space: quote it or add a ','"),
        ('="x"', "expected a label name at position 0"),
        ('status="x",,', "expected a label name"),
        ("", "empty matcher"),
        ("   ", "empty matcher"),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_matchers(text)
    assert message in str(caught.value)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown label 'no-pe'"):
        Matcher("no-pe", "=", "x")
    with pytest.raises(ValueError, match="unknown operator '=='"):
        Matcher("model", "==", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bad regex"):
        Matcher("model", "=~", "[")


def test_matchers_compare_and_hash_by_text() -> None:
    assert one('model=~"a|b"') == Matcher("model", "=~", "a|b")
    assert len({one('model=~"a|b"'), Matcher("model", "=~", "a|b")}) == 1


# -- pydantic -------------------------------------------------------------------------------


class _Holder(BaseModel):
    matcher: Matcher


def test_pydantic_field_accepts_instances_and_strings() -> None:
    matcher = Matcher("status", "=", "failed")
    assert _Holder(matcher=matcher).matcher is matcher
    assert _Holder.model_validate({"matcher": "status=failed"}).matcher == matcher
    assert _Holder(matcher=matcher).model_dump(mode="json") == {"matcher": 'status="failed"'}
    with pytest.raises(ValidationError, match="exactly one matcher"):
        _Holder.model_validate({"matcher": "status=failed, final=true"})
    with pytest.raises(ValidationError, match="must be a string"):
        _Holder.model_validate({"matcher": 3})


def test_route_parses_match_strings() -> None:
    route = Route.model_validate(
        {"match": ['{status="failed", final="true"}', "model=~kling"], "to": "x"}
    )
    assert route.match == [
        Matcher("status", "=", "failed"),
        Matcher("final", "=", "true"),
        Matcher("model", "=~", "kling"),
    ]
