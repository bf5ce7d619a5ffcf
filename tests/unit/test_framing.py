"""Tests for framing.py: round trips, limits, strictness, EOF, fuzz, asyncio glue.

Hypothesis example counts come from the environment variable
MSGR_FUZZ_EXAMPLES (default 200; ``make fuzz`` sets 20000).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from helpers import BIGGEST, SAMPLE_FRAMES, frame_of, nested_object, prefix
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framing import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    FrameTooLarge,
    FramingError,
    MalformedFrame,
    TruncatedFrame,
    decode_body,
    encode_frame,
)
from msgrlib.errors import MsgrError

settings.register_profile(
    "msgr-fuzz",
    max_examples=int(os.environ.get("MSGR_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("msgr-fuzz")


def nested_array(depth: int) -> bytes:
    assert depth >= 2
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def feed_chunks(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    start = 0
    for cut in sorted(cuts) + [len(data)]:
        out.extend(decoder.feed(data[start:cut]))
        start = cut
    return out


# -- round trips ------------------------------------------------------------


def test_encode_format_is_compact_utf8_with_big_endian_length() -> None:
    data = encode_frame({"type": "text", "body": "é", "n": [1, 2]})
    body = '{"type":"text","body":"é","n":[1,2]}'.encode()
    assert data == len(body).to_bytes(4, "big") + body


def test_round_trip_whole_stream() -> None:
    stream = b"".join(encode_frame(m) for m in SAMPLE_FRAMES)
    decoder = FrameDecoder()
    assert decoder.feed(stream) == SAMPLE_FRAMES
    assert decoder.buffered == 0
    decoder.feed_eof()


def test_round_trip_byte_by_byte() -> None:
    stream = b"".join(encode_frame(m) for m in SAMPLE_FRAMES)
    decoder = FrameDecoder()
    out: list[dict[str, Any]] = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i : i + 1]))
        assert decoder.buffered < len(stream)
    assert out == SAMPLE_FRAMES
    decoder.feed_eof()


def test_partial_frame_is_buffered_until_complete() -> None:
    frame = encode_frame(SAMPLE_FRAMES[1])
    decoder = FrameDecoder()
    assert decoder.feed(frame[:-1]) == []
    assert decoder.buffered == len(frame) - 1
    assert decoder.feed(frame[-1:] + frame[:3]) == [SAMPLE_FRAMES[1]]
    assert decoder.buffered == 3
    assert decoder.feed(b"") == []
    assert decoder.feed(frame[3:]) == [SAMPLE_FRAMES[1]]
    assert decoder.buffered == 0


def test_many_small_frames_in_one_chunk() -> None:
    messages = [{"n": i} for i in range(20_000)]
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    assert decoder.feed(stream + b"\x00\x00") == messages
    assert decoder.buffered == 2


def test_feed_accepts_bytearray_and_memoryview() -> None:
    frame = encode_frame(SAMPLE_FRAMES[0])
    decoder = FrameDecoder()
    assert decoder.feed(bytearray(frame)) == [SAMPLE_FRAMES[0]]
    assert decoder.feed(memoryview(frame)) == [SAMPLE_FRAMES[0]]


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=6,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


@FUZZ
@given(messages=st.lists(json_objects, min_size=1, max_size=3), data=st.data())
def test_round_trip_random_splits(messages: list[dict[str, Any]], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    decoder = FrameDecoder()
    assert feed_chunks(decoder, stream, cuts) == messages
    assert decoder.buffered == 0
    decoder.feed_eof()


@FUZZ
@given(obj=json_objects)
def test_decode_body_inverts_encode_frame(obj: dict[str, Any]) -> None:
    assert decode_body(encode_frame(obj)[4:]) == obj


# -- size limits ------------------------------------------------------------


def body_of_size(size: int) -> dict[str, str]:
    obj = {"a": "x" * (size - 8)}  # '{"a":"' + x... + '"}' is 8 bytes + x's
    assert len(json.dumps(obj, separators=(",", ":"))) == size
    return obj


@pytest.mark.parametrize("limit", [100, DEFAULT_MAX_FRAME])
def test_encode_at_limit_and_one_over(limit: int) -> None:
    frame = encode_frame(body_of_size(limit), max_size=limit)
    assert len(frame) == 4 + limit
    with pytest.raises(FrameTooLarge) as info:
        encode_frame(body_of_size(limit + 1), max_size=limit)
    err = info.value
    assert (err.size, err.limit) == (limit + 1, limit)
    assert str(limit + 1) in str(err) and str(limit) in str(err)
    assert err.remote is False  # our own message is too big, not the peer's fault
    assert err.code == "frame_too_large"


@pytest.mark.parametrize("limit", [100, DEFAULT_MAX_FRAME])
def test_decode_at_limit(limit: int) -> None:
    obj = body_of_size(limit)
    assert FrameDecoder(max_size=limit).feed(encode_frame(obj, max_size=limit)) == [obj]


@pytest.mark.parametrize("limit", [100, DEFAULT_MAX_FRAME])
def test_decode_one_over_limit_fails_on_the_prefix(limit: int) -> None:
    frame = encode_frame(body_of_size(limit + 1), max_size=limit + 1)
    decoder = FrameDecoder(max_size=limit)
    assert decoder.feed(frame[:3]) == []
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(frame[3:4])  # the 4th prefix byte is enough to know
    err = info.value
    assert (err.size, err.limit) == (limit + 1, limit)
    assert str(limit + 1) in str(err) and str(limit) in str(err)
    assert err.remote is True
    assert decoder.buffered <= 4  # the body was never waited for


def test_decode_over_limit_in_one_chunk_releases_the_buffer() -> None:
    frame = encode_frame(body_of_size(1001), max_size=2000)
    decoder = FrameDecoder(max_size=1000)
    with pytest.raises(FrameTooLarge):
        decoder.feed(frame)
    assert decoder.buffered <= 4


def test_huge_length_prefix() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(prefix(BIGGEST))
    assert (info.value.size, info.value.limit) == (BIGGEST, DEFAULT_MAX_FRAME)
    assert str(BIGGEST) in str(info.value)
    assert decoder.buffered <= 4


def test_zero_length_frame_is_malformed() -> None:
    with pytest.raises(MalformedFrame):
        FrameDecoder().feed(prefix(0))
    with pytest.raises(MalformedFrame):
        decode_body(b"")


def test_limits_are_validated() -> None:
    for kwargs in ({"max_size": 0}, {"max_size": BIGGEST + 1}, {"max_depth": 0}):
        with pytest.raises(ValueError):
            FrameDecoder(**kwargs)


# -- strictness -------------------------------------------------------------

MALFORMED = {
    "invalid utf-8": b'{"a":"\xff"}',
    "overlong utf-8": b'{"a":"\xc0\xaf"}',
    "utf-8 encoded surrogate": b'{"a":"\xed\xa0\x80"}',
    "not json": b"hello",
    "trailing data": b"{}{}",
    "unterminated": b'{"a":',
    "array": b"[1,2]",
    "string": b'"hello"',
    "number": b"42",
    "null": b"null",
    "true": b"true",
    "NaN": b'{"a":NaN}',
    "Infinity": b'{"a":Infinity}',
    "-Infinity": b'{"a":-Infinity}',
    "top-level NaN": b"NaN",
    "float overflow": b'{"a":1e999}',
    "huge integer": b'{"a":' + b"9" * 5000 + b"}",
    "duplicate key": b'{"a":1,"a":2}',
    "nested duplicate key": b'{"a":{"b":1,"b":1}}',
    "duplicate key via escape": b'{"a":1,"\\u0061":2}',
    "unpaired high surrogate": b'{"a":"\\ud800"}',
    "unpaired low surrogate in key": b'{"\\udc00":1}',
    "unpaired surrogate deep": b'{"a":[{"b":"x\\udbff"}]}',
    "raw control character": b'{"a":"\x01"}',
    "byte order mark": b'\xef\xbb\xbf{"a":1}',
    "single quotes": b"{'a':1}",
    "trailing comma": b'{"a":1,}',
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(MalformedFrame) as info:
        decode_body(body)
    assert info.value.code == "bad_frame" and info.value.remote is True
    with pytest.raises(MalformedFrame):
        FrameDecoder().feed(frame_of(body))


def test_accepted_edge_bodies() -> None:
    assert decode_body(b' \n{"a" : 1 }\t') == {"a": 1}
    assert decode_body(b'{"a":"\\ud83d\\ude00"}') == {"a": "😀"}  # a valid pair
    assert decode_body(b'{"a":"\\\\ud800"}') == {"a": "\\ud800"}  # an escaped backslash
    assert decode_body(b'{"a":-0.0,"b":1e308,"c":' + b"9" * 4000 + b"}")["c"] > 0
    assert decode_body(bytearray(b'{"a":[]}')) == {"a": []}


def test_error_messages_do_not_echo_peer_text() -> None:
    with pytest.raises(MalformedFrame) as info:
        decode_body(b'{"\x1b[31msecret":1,"\x1b[31msecret":2}')
    assert "secret" not in str(info.value) and "\x1b" not in str(info.value)


@pytest.mark.parametrize("depth", [1, 2, DEFAULT_MAX_DEPTH])
def test_nesting_at_max_depth_is_accepted(depth: int) -> None:
    decode_body(nested_object(depth))
    if depth >= 2:
        decode_body(nested_array(depth))
    assert len(FrameDecoder().feed(frame_of(nested_object(depth)))) == 1


def test_nesting_one_over_max_depth_is_rejected() -> None:
    for body in (nested_object(DEFAULT_MAX_DEPTH + 1), nested_array(DEFAULT_MAX_DEPTH + 1)):
        with pytest.raises(MalformedFrame, match="deeper than 16"):
            decode_body(body)
        with pytest.raises(MalformedFrame):
            FrameDecoder().feed(frame_of(body))


def test_custom_max_depth() -> None:
    decode_body(nested_object(3), max_depth=3)
    with pytest.raises(MalformedFrame):
        decode_body(nested_object(4), max_depth=3)
    decoder = FrameDecoder(max_depth=1)
    assert decoder.feed(frame_of(b'{"a":1}')) == [{"a": 1}]
    with pytest.raises(MalformedFrame):
        decoder.feed(frame_of(b'{"a":[]}'))


def test_deep_nesting_within_max_size_is_malformed_not_recursion_error() -> None:
    deep = 100_000
    bodies = [
        b'{"a":' + b"[" * deep + b"]" * deep + b"}",
        b'{"a":' * deep + b"{}" + b"}" * deep,
        b"[" * deep,  # unterminated too
        b'{"a":' + b'{"a":[' * (deep // 2),
    ]
    decoder_limit = 1 << 20
    for body in bodies:
        assert len(body) <= decoder_limit
        with pytest.raises(MalformedFrame):
            FrameDecoder(max_size=decoder_limit).feed(frame_of(body))
    # and within the default limit
    with pytest.raises(MalformedFrame):
        half = DEFAULT_MAX_FRAME // 2
        FrameDecoder().feed(frame_of(b"[" * half + b"]" * half))


def test_wide_but_shallow_frame_is_accepted() -> None:
    body = b'{"a":[' + b",".join([b"[]"] * 20_000) + b"]}"
    assert len(decode_body(body)["a"]) == 20_000


# -- EOF and the dead decoder -----------------------------------------------


def test_clean_eof() -> None:
    decoder = FrameDecoder()
    decoder.feed_eof()
    decoder = FrameDecoder()
    decoder.feed(encode_frame(SAMPLE_FRAMES[0]))
    decoder.feed_eof()


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 20])
def test_truncated_at_eof(cut: int) -> None:
    frame = encode_frame(SAMPLE_FRAMES[1])
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(SAMPLE_FRAMES[0]) + frame[:cut]) == [SAMPLE_FRAMES[0]]
    with pytest.raises(TruncatedFrame) as info:
        decoder.feed_eof()
    assert info.value.buffered == cut
    assert info.value.code == "truncated_frame" and info.value.remote is True
    with pytest.raises(TruncatedFrame):
        decoder.feed(frame[cut:])  # dead: the rest arriving late does not revive it


def test_decoder_stays_dead_after_malformed_frame() -> None:
    decoder = FrameDecoder()
    good = encode_frame(SAMPLE_FRAMES[0])
    with pytest.raises(MalformedFrame) as first:
        decoder.feed(good + frame_of(b"[]") + good)
    for _ in range(3):
        with pytest.raises(MalformedFrame) as again:
            decoder.feed(good)
        assert str(again.value) == str(first.value)
        assert again.value is not first.value
    with pytest.raises(MalformedFrame):
        decoder.feed_eof()
    assert decoder.buffered == 0


def test_decoder_stays_dead_after_frame_too_large() -> None:
    decoder = FrameDecoder(max_size=10)
    with pytest.raises(FrameTooLarge):
        decoder.feed(prefix(11))
    with pytest.raises(FrameTooLarge) as again:
        decoder.feed(encode_frame({}))
    assert (again.value.size, again.value.limit) == (11, 10)
    with pytest.raises(FrameTooLarge):
        decoder.feed_eof()


def test_exception_tree() -> None:
    for cls in (FrameTooLarge, MalformedFrame, TruncatedFrame):
        assert issubclass(cls, FramingError)
        assert cls.remote is True
    assert issubclass(FramingError, MsgrError)
    assert FramingError.code == MalformedFrame.code == "bad_frame"


def test_encode_rejects_caller_mistakes_with_plain_errors() -> None:
    with pytest.raises(TypeError):
        encode_frame([1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_frame({"a": object()})
    with pytest.raises(ValueError):
        encode_frame({"a": float("nan")})
    with pytest.raises(ValueError):
        encode_frame({"a": "\ud800"})


# -- fuzz: only FramingError may escape ------------------------------------


def check_fuzz_stream(stream: bytes, cuts: list[int], max_size: int) -> None:
    decoder = FrameDecoder(max_size=max_size)
    try:
        messages = feed_chunks(decoder, stream, cuts)
        decoder.feed_eof()
    except FramingError:
        with pytest.raises(FramingError):
            decoder.feed(b"")
        return
    for message in messages:
        assert type(message) is dict
        # Whatever we accept, we can send on unchanged.
        encode_frame(message, max_size=BIGGEST)


# Byte soup that looks like JSON, to reach the parser's corners.
json_tokens = st.sampled_from(
    [
        b"{", b"}", b"[", b"]", b":", b",", b'"', b'"a"', b'"b"', b"1", b"-", b"0.5",
        b"e9", b"1e999", b"NaN", b"Infinity", b"true", b"null", b" ", b"\\", b"\\u",
        b"\\ud800", b"\\udc00", b"\\\\", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80", b"\x00",
    ]
)
json_soup = st.lists(json_tokens, max_size=40).map(b"".join)
# Inside a well-formed object, to reach string and number handling.
string_tokens = st.sampled_from(
    [
        b"a", b"\\ud800", b"\\udc00", b"\\ud83d", b"\\ude00", b"\\u0041", b"\\n",
        b"\\", b'\\"', b"\\x", b"\xe9", b"\xc3\xa9", b"\x01", b"\\u12",
    ]
)
object_soup = st.tuples(
    st.lists(string_tokens, max_size=8).map(b"".join),
    st.lists(string_tokens, max_size=8).map(b"".join),
    st.sampled_from([b"1", b"-0", b"1.5e308", b"2e308", b"-1e400", b"0.1", b"[]", b"{}"]),
).map(lambda t: b'{"' + t[0] + b'":"' + t[1] + b'","n":' + t[2] + b"}")


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    messages = draw(st.lists(json_objects, min_size=1, max_size=3))
    data = bytearray(b"".join(encode_frame(m) for m in messages))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif data:
            del data[pos : pos + draw(st.integers(1, 4))]
    return bytes(data)


fuzz_streams = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(frame_of),
    json_soup.map(frame_of),
    object_soup.map(frame_of),
    st.lists(json_soup.map(frame_of), max_size=4).map(b"".join),
    mutated_streams(),
)


@FUZZ
@given(stream=fuzz_streams, data=st.data())
def test_fuzz_only_framing_errors_escape(stream: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    max_size = data.draw(st.sampled_from([DEFAULT_MAX_FRAME, 64, 8]))
    check_fuzz_stream(stream, cuts, max_size)


@FUZZ
@given(body=st.one_of(st.binary(max_size=200), json_soup, object_soup))
def test_fuzz_decode_body_raises_only_malformed_frame(body: bytes) -> None:
    try:
        obj = decode_body(body)
    except MalformedFrame:
        return
    assert type(obj) is dict
    encode_frame(obj, max_size=BIGGEST)


# -- asyncio glue over real sockets -----------------------------------------

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]

