"""test_framing, the tests that need real processes, sockets or a terminal (the
unit tests are in tests/unit/test_framing.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from framing import (
    DEFAULT_MAX_FRAME,
    FrameTooLarge,
    MalformedFrame,
    TruncatedFrame,
    encode_frame,
    read_frame,
    write_frame,
)

settings.register_profile(
    "msgr-fuzz",
    max_examples=int(os.environ.get("MSGR_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("msgr-fuzz")

BIGGEST = 0xFFFF_FFFF

SAMPLE = [
    {"type": "hello", "user": "alice", "version": 1},
    {"type": "send", "to": "bob", "ttl": 30, "ref": 17, "body": "QUJD" * 40},
    {"type": "ack", "ref": 17, "ok": True, "error": None},
    {"type": "text", "body": "héllo wörld ✓ 😀", "nested": {"a": [1, 2, {"b": []}]}},
    {},
]


def prefix(size: int) -> bytes:
    return struct.pack(">I", size)


def frame_of(body: bytes) -> bytes:
    return prefix(len(body)) + body


def nested_object(depth: int) -> bytes:
    """A body whose nesting depth is exactly ``depth`` (top-level object = 1)."""
    assert depth >= 1
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


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


# -- size limits ------------------------------------------------------------


def body_of_size(size: int) -> dict[str, str]:
    obj = {"a": "x" * (size - 8)}  # '{"a":"' + x... + '"}' is 8 bytes + x's
    assert len(json.dumps(obj, separators=(",", ":"))) == size
    return obj


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


# -- asyncio glue over real sockets -----------------------------------------

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def socket_pair() -> AsyncIterator[tuple[Streams, Streams]]:
    """(client, server) stream pairs over a TCP connection on 127.0.0.1."""
    accepted: asyncio.Future[Streams] = asyncio.get_running_loop().create_future()

    async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.set_result((r, w))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await asyncio.open_connection("127.0.0.1", port)
    peer = await asyncio.wait_for(accepted, 5)
    try:
        yield client, peer
    finally:
        for _, writer in (client, peer):
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_write_then_read_frames_then_clean_eof() -> None:
    async def main() -> None:
        async with socket_pair() as ((_, cw), (sr, _)):
            for message in SAMPLE:
                await write_frame(cw, message)
            cw.close()
            got = [await read_frame(sr) for _ in SAMPLE]
            assert got == SAMPLE
            assert await read_frame(sr) is None
            assert await read_frame(sr) is None

    run(main())


@pytest.mark.parametrize("cut", [2, 4, 10])
def test_read_frame_eof_mid_frame(cut: int) -> None:
    async def main() -> None:
        async with socket_pair() as ((_, cw), (sr, _)):
            cw.write(encode_frame(SAMPLE[1])[:cut])
            await cw.drain()
            cw.close()
            with pytest.raises(TruncatedFrame) as info:
                await read_frame(sr)
            assert info.value.buffered == cut

    run(main())


def test_read_frame_checks_length_before_reading_body() -> None:
    async def main() -> None:
        async with socket_pair() as ((_, cw), (sr, _)):
            # The body never arrives and the connection stays open: reading
            # it would hang (and time out) instead of failing at once.
            cw.write(prefix(BIGGEST) + b"rest")
            await cw.drain()
            with pytest.raises(FrameTooLarge) as info:
                await asyncio.wait_for(read_frame(sr), 2)
            assert (info.value.size, info.value.limit) == (BIGGEST, DEFAULT_MAX_FRAME)
            assert await sr.readexactly(4) == b"rest"  # nothing past the prefix read

            cw.write(frame_of(b'{"a":"' + b"x" * 100 + b'"}'))
            await cw.drain()
            with pytest.raises(FrameTooLarge):
                await asyncio.wait_for(read_frame(sr, max_size=100), 2)

    run(main())


def test_read_frame_malformed_and_custom_depth() -> None:
    async def main() -> None:
        async with socket_pair() as ((_, cw), (sr, _)):
            cw.write(frame_of(b"[]") + frame_of(nested_object(3)) + prefix(0))
            await cw.drain()
            with pytest.raises(MalformedFrame):
                await read_frame(sr)
            with pytest.raises(MalformedFrame):
                await read_frame(sr, max_depth=2)
            with pytest.raises(MalformedFrame):
                await read_frame(sr)

    run(main())


def test_write_frame_too_large_writes_nothing() -> None:
    async def main() -> None:
        async with socket_pair() as ((_, cw), (sr, _)):
            with pytest.raises(FrameTooLarge) as info:
                await write_frame(cw, body_of_size(101), max_size=100)
            assert info.value.remote is False
            await write_frame(cw, {"ok": True})
            assert await read_frame(sr) == {"ok": True}

    run(main())

