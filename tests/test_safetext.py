"""safetext.escape: what others wrote, made safe to print (peer text, relay errors)."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from msgrlib.util.safetext import BIDI_CONTROLS, escape


def test_controls_and_bidi_overrides_become_visible_escapes() -> None:
    assert escape("\x1b[2J") == "\\x1b[2J"
    assert escape("a\nb\rc\x00\x7f\x9b") == "a\\x0ab\\x0dc\\x00\\x7f\\x9b"
    assert escape("\u202eevil\u2066x\u2069\u200f") == "\\u202eevil\\u2066x\\u2069\\u200f"
    assert escape("tab\there") == "tab    here"


def test_ordinary_text_is_left_alone() -> None:
    for text in ("hello, world", "déjà vu ✓", "日本語", "👨\u200d👩\u200d👧 family", "a\\x1b"):
        assert escape(text) == text


@given(st.text())
def test_nothing_that_drives_a_terminal_survives(text: str) -> None:
    out = escape(text)
    assert not any(unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS for c in out)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc",),
                                      blacklist_characters=sorted(BIDI_CONTROLS))))
def test_text_without_controls_is_unchanged(text: str) -> None:
    assert escape(text) == text
