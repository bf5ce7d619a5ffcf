"""Line mode's input: read as bytes, decoded by msgr, the same in every locale.

Found in the hostile-input review: under a locale where Python decodes stdin
strictly (en_US.UTF-8), one non-UTF-8 line killed the reader thread with a
TypeError (``call_soon_threadsafe(print, ..., file=...)``); nothing was sent and
the client never exited. Now a bad line is named, the others go, exit code 3.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgrlib.ui.linemode import MAX_LINE_BYTES, LineSplitter, decode_line

PASSCODE = "line mode tests passcode"


# -- the splitter, sans-I/O ------------------------------------------------------------

def test_lines_come_out_whole_and_an_unfinished_last_line_at_eof() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"one\ntw") == [b"one\n"]
    assert splitter.feed(b"o\r\n\nthree") == [b"two\r\n", b"\n"]
    assert splitter.feed_eof() == [b"three"]
    assert decode_line(b"two\r\n") == "two"
    with pytest.raises(UnicodeDecodeError):
        decode_line(b"caf\xe9\n")


def test_an_overlong_line_is_skipped_not_buffered() -> None:
    splitter = LineSplitter(max_bytes=10)
    assert splitter.feed(b"x" * 8) == []
    assert splitter.feed(b"y" * 8) == []
    assert len(splitter._buffer) == 0
    assert splitter.feed(b"zz\nok\n") == [None, b"ok\n"]
    assert splitter.feed(b"x" * 11) == [] and splitter.feed_eof() == [None]
    assert MAX_LINE_BYTES > 4 * 16 * 1024


@given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=10),
       st.data())
def test_any_split_of_the_input_gives_the_same_lines(lines: list[bytes],
                                                     data: st.DataObject) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    splitter = LineSplitter()
    out: list[bytes | None] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out.extend(splitter.feed(stream[start:end]))
    out.extend(splitter.feed_eof())
    assert out == [line + b"\n" for line in lines]

