"""Text from others, made safe to print on a terminal.

A peer's message and a relay's error sentence are chosen by someone else. Printed as they
are, control characters could move the cursor, clear the screen, set the window title or
hide text, and bidirectional controls could make a line read differently from what it holds
(the "Trojan Source" trick, CVE-2021-42574). :func:`escape` turns every such character into
a visible escape and leaves all other text, emoji sequences included, as it is.
"""

from __future__ import annotations

import unicodedata

#: Bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069) and the
#: three direction marks (LRM, RLM, ALM).
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                          "\u200e\u200f\u061c")


def escape(text: str) -> str:
    """``text`` with each control character (Unicode category Cc: C0, DEL, C1) and each
    bidirectional control shown as ``\\xNN`` or ``\\uNNNN``; a tab becomes four spaces."""
    out = []
    for ch in text:
        if ch == "\t":
            out.append("    ")
        elif ch in BIDI_CONTROLS or unicodedata.category(ch) == "Cc":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


__all__ = ["BIDI_CONTROLS", "escape"]
