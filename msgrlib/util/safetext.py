"""Text from others, made safe to print on a terminal or in a JSON line.

A peer's message, a peer's name and a relay's error sentence are chosen by someone else.
Printed as they are, control characters could move the cursor, clear the screen, set the
window title or hide text; bidirectional controls could make a line read differently from
what it holds (the "Trojan Source" trick, CVE-2021-42574); line and paragraph separators
(U+2028, U+2029) split one line into several on some terminals; zero-width, tag, private-use
and unassigned characters hide text or draw unpredictably.

This module is the one sanitizer msgr applies where text leaves the process for a
terminal or a JSON line, in every output mode:

* :func:`escape` for terminals (line mode, ``--plain``, notices on stderr, the chat
  screen): every character of the :data:`UNSAFE_CATEGORIES` becomes a visible escape
  (``\\x1b``, ``\\u2028``, ``\\U000e0041``); a tab becomes four spaces. All other text is
  left as it is. The backslash itself is not escaped, so escaping twice changes nothing.
* :func:`json_line` for ``--json``: ``json.dumps`` (UTF-8, not ``ensure_ascii``) with
  every character of those categories written as ``\\uXXXX`` (a surrogate pair above
  U+FFFF), so a JSON parser gets the exact string back and a terminal showing the line
  gets no control character.

The zero-width joiner (U+200D, category Cf) is escaped too: emoji sequences joined by it
show as their parts with a visible ``\\u200d`` between them. The promise is simple to state
and to test: no character of those categories reaches output raw.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any, TextIO

#: Unicode general categories never written raw: controls (C0, DEL, C1), format characters
#: (bidi controls, zero-width characters, tags), line and paragraph separators, private
#: use, surrogates and unassigned code points.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"})

#: Bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069) and the
#: three direction marks (LRM, RLM, ALM). All are category Cf; kept as a name for tests.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                          "\u200e\u200f\u061c")


def is_unsafe(ch: str) -> bool:
    """True if the character ``ch`` must not reach a terminal or JSON line raw."""
    return unicodedata.category(ch) in UNSAFE_CATEGORIES


def _visible(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with each unsafe character shown as ``\\xNN``, ``\\uNNNN`` or
    ``\\UNNNNNNNN``; a tab becomes four spaces. Idempotent."""
    if text.isascii() and text.isprintable():
        return text  # the common case, fast
    out = []
    for ch in text:
        if ch == "\t":
            out.append("    ")
        elif is_unsafe(ch):
            out.append(_visible(ch))
        else:
            out.append(ch)
    return "".join(out)


def _json_escape(match: re.Match[str]) -> str:
    ch = match.group()
    if not is_unsafe(ch):
        return ch
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


#: Every character json.dumps(ensure_ascii=False) may leave raw that could be unsafe:
#: json.dumps escapes U+0000-U+001F, '"' and '\\' itself, and writes only ASCII outside
#: strings, so the rest is DEL and everything above ASCII.
_MAYBE_UNSAFE = re.compile("[\x7f-\U0010ffff]")


def json_line(obj: Any) -> str:
    """``obj`` as one JSON line (no newline): UTF-8 text, every unsafe character
    written as a ``\\u`` escape. Parses back to ``obj``."""
    return _MAYBE_UNSAFE.sub(_json_escape, json.dumps(obj, ensure_ascii=False))


def write_line(stream: TextIO, text: str) -> None:
    """Write ``text`` escaped, then a newline, to ``stream`` and flush: the way every
    line msgr prints for a person leaves (stdout in line mode, notices on stderr)."""
    try:
        stream.write(escape(text) + "\n")
        stream.flush()
    except UnicodeEncodeError:
        # A terminal or file whose encoding cannot hold the text (e.g. ASCII): show
        # the characters it cannot hold as escapes instead of failing.
        encoding = getattr(stream, "encoding", None) or "ascii"
        safe = escape(text).encode(encoding, "backslashreplace").decode(encoding)
        stream.write(safe + "\n")
        stream.flush()


__all__ = ["BIDI_CONTROLS", "UNSAFE_CATEGORIES", "escape", "is_unsafe", "json_line",
           "write_line"]
