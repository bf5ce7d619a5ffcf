"""What the relay buffers outside its store is small and counted (issue 13 item 8).

Before ``welcome`` only frames of ``login_max_frame`` bytes are accepted, so
an unauthenticated connection costs about 1 KiB, not a 64 KiB frame; partly
received frames of all connections count against ``read_buffers``.
"""

from __future__ import annotations

import asyncio
import struct

from helpers import RawClient, relay_running, run, send_frame

from msgrlib.relay import config as relay_config


def test_before_welcome_only_small_frames_are_accepted():
    async def main():
        async with relay_running() as srv:
            port = srv.address[1]
            # A partial frame declaring 2,000 bytes, before hello: refused at
            # once, before its body is waited for.
            c = await RawClient.connect(port)
            await c.send_raw(struct.pack(">I", 2000) + b"{" * 100)
            answer = await c.recv()
            assert answer["code"] == "frame_too_large" and "1024" in answer["message"]
            assert await c.closed()
            assert srv.read_buffered == 0
            # Between hello and auth too.
            c = await RawClient.connect(port)
            await c.send({"type": "hello", "v": 1, "user": "mallory",
                          "key": "A" * 43 + "="})
            assert (await c.recv())["type"] == "challenge"
            await c.send_raw(struct.pack(">I", 65_000) + b"{")
            assert (await c.recv())["code"] == "frame_too_large"
            # After welcome, full-size frames are fine.
            alice = await RawClient.login(port, "alice")
            await alice.send(send_frame("bob", "s1." + "A" * 30_000))
            assert (await alice.recv_type("accepted"))["type"] == "accepted"
    run(main())


def test_partial_frames_are_counted_and_capped_across_connections():
    config = relay_config.RelayConfig(read_buffers=50_000)

    async def main():
        async with relay_running(config) as srv:
            port = srv.address[1]
            clients = [await RawClient.login(port, f"slow{i}") for i in range(3)]
            for c in clients[:2]:
                await c.send_raw(struct.pack(">I", 30_000) + b"{" + b" " * 19_999)
            for _ in range(100):
                if srv.read_buffered == 2 * 20_004:
                    break
                await asyncio.sleep(0.01)
            assert srv.read_buffered == 2 * 20_004
            assert srv.memory()["read_buffers"] == 2 * 20_004
            # The third would pass the cap: it is cut, the first two are not.
            await clients[2].send_raw(struct.pack(">I", 30_000) + b"{" + b" " * 19_999)
            answer = await clients[2].recv_type("error")
            assert answer["code"] == "relay_full" and answer["fatal"]
            assert await clients[2].closed()
            assert srv.read_buffered == 2 * 20_004
            # Finishing a frame releases its bytes.
            await clients[0].close()
            for _ in range(100):
                if srv.read_buffered == 20_004:
                    break
                await asyncio.sleep(0.01)
            assert srv.read_buffered == 20_004
            memory = srv.memory()
            assert set(memory) == {"store", "read_buffers", "write_buffers"}
    run(main())
