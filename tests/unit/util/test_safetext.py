"""safetext: the one sanitizer for what others wrote (peer text, names, relay errors)."""

from __future__ import annotations

import io
import json
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from msgrlib.util.safetext import (
    BIDI_CONTROLS,
    UNSAFE_CATEGORIES,
    escape,
    is_unsafe,
    json_line,
    write_line,
)


def unsafe_in(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) in UNSAFE_CATEGORIES]


def test_controls_and_bidi_overrides_become_visible_escapes() -> None:
    assert escape("\x1b[2J") == "\\x1b[2J"
    assert escape("a\nb\rc\x00\x7f\x9b") == "a\\x0ab\\x0dc\\x00\\x7f\\x9b"
    assert escape("\u202eevil\u2066x\u2069\u200f") == "\\u202eevil\\u2066x\\u2069\\u200f"
    assert escape("tab\there") == "tab    here"


def test_separators_format_private_unassigned_and_surrogates_are_escaped_too() -> None:
    """Found in the hostile-relay review: only Cc and bidi controls were escaped,
    so U+2028 split a line and zero-width and tag characters hid text."""
    assert escape("a\u2028b\u2029c") == "a\\u2028b\\u2029c"
    assert escape("zero\u200bwidth\u200d\ufeff") == "zero\\u200bwidth\\u200d\\ufeff"
    assert escape("tag\U000e0041") == "tag\\U000e0041"
    assert escape("\ue000\ud800\U0010fffe") == "\\ue000\\ud800\\U0010fffe"
    assert escape("\u0378") == "\\u0378"  # unassigned


def test_ordinary_text_is_left_alone() -> None:
    for text in ("hello, world", "déjà vu ✓", "日本語", "👍🏽 family", "a\\x1b", "e\u0301"):
        assert escape(text) == text


def test_json_lines_escape_what_json_dumps_leaves_raw_and_parse_back() -> None:
    obj = {"text": "a\x1b\x7f\x9b\u2028\u202e\u200d\U000e0041\ud800 é 👍", "n": 1}
    line = json_line(obj)
    assert "\\u009b" in line and "\\u2028" in line and "\\udb40\\udc41" in line
    assert not unsafe_in(line)
    assert json.loads(line) == obj
    assert json_line({"a": "plain é"}) == '{"a": "plain é"}'


def test_write_line_escapes_and_survives_a_narrow_encoding() -> None:
    out = io.StringIO()
    write_line(out, "x\x1b]0;t\x07")
    assert out.getvalue() == "x\\x1b]0;t\\x07\n"
    raw = io.BytesIO()
    narrow = io.TextIOWrapper(raw, encoding="ascii")
    write_line(narrow, "café \u2028")
    assert raw.getvalue() == b"caf\\xe9 \\u2028\n"


@given(st.text())
def test_nothing_unsafe_survives(text: str) -> None:
    out = escape(text)
    assert not unsafe_in(out)
    assert not any(c in BIDI_CONTROLS for c in out)
    assert escape(out) == out                      # idempotent
    line = json_line({"t": text})
    assert not unsafe_in(line)
    assert json.loads(line) == {"t": text}


@given(st.text(alphabet=st.characters(blacklist_categories=tuple(UNSAFE_CATEGORIES))))
def test_text_without_unsafe_characters_is_unchanged(text: str) -> None:
    assert not any(is_unsafe(c) for c in text)
    assert escape(text) == text.replace("\t", "    ")
