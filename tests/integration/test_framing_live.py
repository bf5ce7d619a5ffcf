"""test_framing, the tests that need real processes, sockets or a terminal (the
unit tests are in tests/unit/test_framing.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import BIGGEST, SAMPLE_FRAMES, frame_of, nested_object, prefix

from framing import (
    DEFAULT_MAX_FRAME,
    FrameTooLarge,
    MalformedFrame,
    TruncatedFrame,
    encode_frame,
    read_frame,
    write_frame,
)

# -- size limits ------------------------------------------------------------


def body_of_size(size: int) -> dict[str, str]:
    obj = {"a": "x" * (size - 8)}  # '{"a":"' + x... + '"}' is 8 bytes + x's
    assert len(json.dumps(obj, separators=(",", ":"))) == size
    return obj


# -- strictness -------------------------------------------------------------


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
            for message in SAMPLE_FRAMES:
                await write_frame(cw, message)
            cw.close()
            got = [await read_frame(sr) for _ in SAMPLE_FRAMES]
            assert got == SAMPLE_FRAMES
            assert await read_frame(sr) is None
            assert await read_frame(sr) is None

    run(main())


@pytest.mark.parametrize("cut", [2, 4, 10])
def test_read_frame_eof_mid_frame(cut: int) -> None:
    async def main() -> None:
        async with socket_pair() as ((_, cw), (sr, _)):
            cw.write(encode_frame(SAMPLE_FRAMES[1])[:cut])
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

