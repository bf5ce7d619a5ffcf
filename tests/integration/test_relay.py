"""The relay over real sockets on loopback: routing, TTL, ownership, limits, abuse."""

from __future__ import annotations

import asyncio
import base64
import struct

import pytest
from helpers import (
    RawClient,
    connected,
    relay_running,
    run,
    send_frame,
    stored,
    tls_contexts,
    waiting_for,
)
from nacl.signing import SigningKey

from msgrlib.relay import rules as relay

# Every test runs on the in-memory store, then on a Redis engine.
pytestmark = pytest.mark.usefixtures("store")

FAST = relay.RelayConfig(ttl_min=1, hello_timeout=1.0, claim_ttl=1.0)


def test_delivery_both_ways_ack_and_ttl_clamped():
    async def main():
        async with relay_running() as srv:
            port = srv.address[1]
            alice = await RawClient.login(port, "alice")
            bob = await RawClient.login(port, "bob")
            await alice.send(send_frame("bob", "s1.one", ttl=999))
            accepted = await alice.recv_type("accepted")
            assert accepted["ref"] == 1 and accepted["ttl"] == 60  # clamped to the maximum
            got = await bob.recv_type("deliver")
            assert got["from"] == "alice" and got["body"] == "s1.one"
            await bob.send({"type": "ack", "id": got["id"]})
            await bob.send(send_frame("alice", "s1.two", ttl=1))
            assert (await bob.recv_type("accepted"))["ttl"] == 5  # clamped to the minimum
            assert (await alice.recv_type("deliver"))["body"] == "s1.two"
            await asyncio.sleep(0.05)
            assert await stored(srv) == 1  # bob acked; alice has not yet
    run(main())


def test_offline_peer_gets_waiting_messages_within_ttl_and_sender_told_on_expiry():
    async def main():
        async with relay_running(FAST) as srv:
            port = srv.address[1]
            alice = await RawClient.login(port, "alice")
            await alice.send(send_frame("bob", "s1.kept", ref=1, ttl=30))
            await alice.send(send_frame("bob", "s1.lost", ref=2, ttl=1))
            await alice.recv_type("accepted")
            lost = await alice.recv_type("accepted")
            expired = await alice.recv_type("expired", timeout=3)
            assert expired["id"] == lost["id"] and expired["to"] == "bob"
            bob = await RawClient.login(port, "bob")
            got = await bob.recv_type("deliver")
            assert got["body"] == "s1.kept"
            assert await stored(srv) == 1
    run(main())


def test_message_is_gone_after_its_ttl():
    async def main():
        async with relay_running(FAST) as srv:
            port = srv.address[1]
            alice = await RawClient.login(port, "alice")
            await alice.send(send_frame("bob", "s1.gone", ttl=1))
            await alice.recv_type("accepted")
            await alice.recv_type("expired", timeout=3)
            assert await stored(srv) == 0 and srv.relay.store.bytes == 0
            bob = await RawClient.login(port, "bob")
            await bob.send({"type": "ping"})
            assert (await bob.recv())["type"] == "pong"  # and no deliver before it
    run(main())


def test_second_client_cannot_take_or_drain_an_owned_name():
    async def main():
        async with relay_running(FAST) as srv:
            port = srv.address[1]
            owner_key = SigningKey.generate()
            alice = await RawClient.login(port, "alice")
            bob = await RawClient.login(port, "bob", owner_key)
            await bob.close()
            await alice.send(send_frame("bob", "s1.for-bob"))
            await alice.recv_type("accepted")
            thief = await RawClient.connect(port)
            answer = await thief.hello("bob")  # a different key
            assert answer["type"] == "error" and answer["code"] == "name_owned"
            assert "belongs to another key" in answer["message"]
            assert await thief.closed()
            # Even after the claim's idle time, the waiting message keeps the name owned.
            await asyncio.sleep(1.2)
            thief2 = await RawClient.connect(port)
            assert (await thief2.hello("bob"))["code"] == "name_owned"
            # The owner gets its message.
            bob2 = await RawClient.login(port, "bob", owner_key)
            assert (await bob2.recv_type("deliver"))["body"] == "s1.for-bob"
    run(main())


def test_owner_reconnect_takes_over_a_stale_connection_at_once():
    async def main():
        async with relay_running() as srv:
            port = srv.address[1]
            key = SigningKey.generate()
            old = await RawClient.login(port, "bob", key)
            new = await RawClient.login(port, "bob", key)
            err = await old.recv()
            assert err["type"] == "error" and err["code"] == "replaced"
            assert await old.closed()
            alice = await RawClient.login(port, "alice")
            await alice.send(send_frame("bob"))
            assert (await new.recv_type("deliver"))["from"] == "alice"
    run(main())


def test_bad_signature_and_bad_names_are_refused():
    async def main():
        async with relay_running() as srv:
            port = srv.address[1]
            c = await RawClient.connect(port)
            await c.send({"type": "hello", "v": 1, "user": "Bad Name!",
                          "key": base64.b64encode(b"k" * 32).decode()})
            assert (await c.recv())["code"] == "bad_name"
            c = await RawClient.connect(port)
            key = SigningKey.generate()
            await c.send({"type": "hello", "v": 1, "user": "mallory",
                          "key": base64.b64encode(bytes(key.verify_key)).decode()})
            await c.recv()
            forged = SigningKey.generate().sign(b"whatever").signature
            await c.send({"type": "auth", "sig": base64.b64encode(forged).decode()})
            answer = await c.recv()
            assert answer["code"] == "bad_signature" and await c.closed()
    run(main())


def test_garbage_and_broken_frames_close_only_that_connection():
    async def main():
        async with relay_running(relay.RelayConfig(hello_timeout=1.0)) as srv:
            port = srv.address[1]
            alice = await RawClient.login(port, "alice")
            bob = await RawClient.login(port, "bob")
            attacks = [
                b"\x00\x00\x00\x05hello",                      # not JSON
                struct.pack(">I", 0xFFFFFFFF) + b"{",           # huge length prefix
                struct.pack(">I", 3) + b"[1]",                  # not an object
                struct.pack(">I", 9) + b'{"a":NaN}',            # NaN
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",           # someone's browser
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
            ]
            for data in attacks:
                evil = await RawClient.connect(port)
                await evil.send_raw(data)
                reply = await evil.recv()
                assert reply["type"] == "error" and reply["fatal"] is True, (data, reply)
                assert await evil.closed()
            # A truncated frame, then an abrupt disconnect.
            evil = await RawClient.connect(port)
            await evil.send_raw(struct.pack(">I", 100) + b'{"type":')
            evil.writer.transport.abort()
            # A slow partial frame: cut at the hello timeout.
            slow = await RawClient.connect(port)
            for byte in struct.pack(">I", 40) + b'{"type":"hello"':
                await slow.send_raw(bytes([byte]))
                await asyncio.sleep(0.05)
                if slow.reader.at_eof():
                    break
            reply = await slow.recv(timeout=3)
            assert reply["code"] == "timeout" and await slow.closed()
            # The others never noticed.
            await alice.send(send_frame("bob", "s1.still-here"))
            assert (await bob.recv_type("deliver"))["body"] == "s1.still-here"
            assert srv.relay.stats.errors.get("bad_frame", 0) >= 3
    run(main())


def test_unknown_type_and_bad_fields():
    async def main():
        async with relay_running() as srv:
            port = srv.address[1]
            c = await RawClient.login(port, "alice")
            await c.send(send_frame("Not A Name"))
            err = await c.recv()
            assert err["code"] == "bad_name" and err["ref"] == 1 and err["fatal"] is False
            await c.send(send_frame("alice"))
            assert (await c.recv())["code"] == "bad_recipient"
            await c.send({"type": "teleport"})
            err = await c.recv()
            assert err["code"] == "protocol" and err["fatal"] and await c.closed()
    run(main())


def test_a_ref_that_is_not_an_integer_is_refused_and_nothing_is_stored():
    """Echoed in `accepted`, a ref of 60 KB of floats used to come back four
    times larger than a frame may be: an exception inside the relay, after
    the message was already stored."""
    async def main():
        async with relay_running() as srv:
            port = srv.address[1]
            c = await RawClient.login(port, "alice")
            await c.send({**send_frame("bob"), "ref": [1e15] * 3000})
            err = await c.recv()
            assert err["code"] == "protocol" and "ref" in err["message"] and err["fatal"]
            assert await c.closed()
            assert await stored(srv) == 0
            c = await RawClient.login(port, "carol")
            await c.send({k: v for k, v in send_frame("bob").items() if k != "ref"})
            accepted = await c.recv()
            assert accepted["type"] == "accepted" and "ref" not in accepted
    run(main())


def test_flood_hits_the_rate_limit_and_others_are_served():
    config = relay.RelayConfig(rate_messages=50, burst_messages=100)
    async def main():
        async with relay_running(config) as srv:
            port = srv.address[1]
            flooder = await RawClient.login(port, "flood")
            alice = await RawClient.login(port, "alice")
            bob = await RawClient.login(port, "bob")
            for i in range(300):
                flooder.writer.write(relay.framing.encode_frame(send_frame("victim", ref=i)))
            await flooder.writer.drain()
            codes = []
            for _ in range(300):
                frame = await flooder.recv()
                codes.append(frame.get("code", frame["type"]))
            assert codes.count("rate_limited") >= 150
            assert codes.count("accepted") <= 120
            await alice.send(send_frame("bob", "s1.served"))
            assert (await bob.recv_type("deliver"))["body"] == "s1.served"
    run(main())


def test_handshake_attempts_per_pair_are_limited():
    config = relay.RelayConfig(hs_burst=4, hs_per_second=0.001)
    async def main():
        async with relay_running(config) as srv:
            port = srv.address[1]
            alice = await RawClient.login(port, "alice")
            for i in range(6):
                await alice.send(send_frame("bob", "h1.x", ref=i, kind="hs"))
            codes = [(await alice.recv()).get("code", "ok") for _ in range(6)]
            assert codes[:4] == ["ok"] * 4 and codes[4:] == ["handshake_limited"] * 2
            # Other pairs and ordinary messages are unaffected.
            await alice.send(send_frame("carol", "h1.x", ref=9, kind="hs"))
            assert (await alice.recv())["type"] == "accepted"
            await alice.send(send_frame("bob", "r1.x", ref=10))
            assert (await alice.recv())["type"] == "accepted"
    run(main())


def test_full_relay_refuses_rather_than_exceeding_its_memory_budget():
    config = relay.RelayConfig(store_bytes=20_000, mailbox_bytes=10**6, store_share=1.0)
    async def main():
        async with relay_running(config) as srv:
            port = srv.address[1]
            alice = await RawClient.login(port, "alice")
            body = "s1." + "A" * 1000
            codes = []
            for i in range(40):
                await alice.send(send_frame(f"u{i}", body, ref=i))
                codes.append((await alice.recv()).get("code", "ok"))
            assert "relay_full" in codes
            assert srv.relay.store.bytes <= 20_000
            err_index = codes.index("relay_full")
            assert all(c == "ok" for c in codes[:err_index])
    run(main())


def test_mailbox_limit_per_recipient():
    config = relay.RelayConfig(mailbox_messages=3)
    async def main():
        async with relay_running(config) as srv:
            alice = await RawClient.login(srv.address[1], "alice")
            codes = []
            for i in range(5):
                await alice.send(send_frame("bob", ref=i))
                codes.append((await alice.recv()).get("code", "ok"))
            assert codes == ["ok", "ok", "ok", "mailbox_full", "mailbox_full"]
    run(main())


#: Limits raised so that one sender can flood one recipient (mailbox_bytes
#: is each test's own).
_FLOOD_LIMITS = dict(mailbox_messages=10_000, rate_messages=10**6, burst_messages=10**6,
                     rate_bytes=10**9, burst_bytes=10**9)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_non_reading_client_is_dropped_and_its_messages_wait_until_ttl(tls, tmp_path):
    # Over TLS this also checks that tlsconn passes flow control through.
    server_ctx, client_ctx = tls_contexts(tmp_path) if tls else (None, None)
    config = relay.RelayConfig(write_buffer=64 * 1024, stall_timeout=0.5, ttl_min=1,
                               **_FLOOD_LIMITS, mailbox_bytes=10**8, store_share=1.0)
    async def main():
        async with relay_running(config, ssl_context=server_ctx) as srv:
            port = srv.address[1]
            key = SigningKey.generate()
            lazy = await RawClient.login(port, "lazy", key, ssl=client_ctx)
            lazy.writer.transport.pause_reading()  # never read again
            alice = await RawClient.login(port, "alice", ssl=client_ctx)
            body = "s1." + "B" * 8000
            # Far more than the kernel's socket buffers can absorb (16 MB).
            for i in range(2000):
                alice.writer.write(relay.framing.encode_frame(send_frame("lazy", body, ref=i)))
            await alice.writer.drain()
            for _ in range(2000):
                assert (await alice.recv_type("accepted"))
            # The relay stops handing deliveries to it, then drops it.
            for _ in range(100):
                await asyncio.sleep(0.05)
                if not connected(srv, "lazy"):
                    break
            assert not connected(srv, "lazy")
            assert await waiting_for(srv, "lazy") == 2000  # nothing lost
            lazy.writer.transport.abort()
            again = await RawClient.login(port, "lazy", key, ssl=client_ctx)
            first = await again.recv_type("deliver")
            assert first["body"] == body
    run(main(), timeout=60)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_closed_connection_that_does_not_read_is_cut_after_stall_timeout(tls, tmp_path):
    """Closing waits for the send buffer to drain, but not forever."""
    server_ctx, client_ctx = tls_contexts(tmp_path) if tls else (None, None)
    # A write buffer so large the relay never pauses: only the close is left.
    config = relay.RelayConfig(hello_timeout=0.5, idle_timeout=1.0, stall_timeout=0.5,
                               write_buffer=1 << 30, **_FLOOD_LIMITS, mailbox_bytes=10**9)

    async def main():
        async with relay_running(config, ssl_context=server_ctx) as srv:
            port = srv.address[1]
            lazy = await RawClient.login(port, "lazy", ssl=client_ctx)
            lazy.writer.transport.pause_reading()  # and no heartbeat: idle timeout
            alice = await RawClient.login(port, "alice", ssl=client_ctx)
            conn = next(c for c in srv.connections if c.client.user == "lazy")
            body = "s1." + "B" * 8000
            ref = 0
            while conn.transport.get_write_buffer_size() == 0:  # past the kernel's buffers
                await alice.send(send_frame("lazy", body, ref=ref))
                ref += 1
                await asyncio.sleep(0)
            await alice.close()
            for _ in range(80):  # idle timeout 1 s, then at most 0.5 s to drain
                await asyncio.sleep(0.05)
                if conn not in srv.connections:
                    break
            assert conn not in srv.connections
            lazy.writer.transport.abort()
    run(main(), timeout=30)


def test_a_thousand_concurrent_connections_are_served():
    # All from 127.0.0.1: the per-address limits are raised.
    config = relay.RelayConfig(max_per_address=2000, claim_burst=2000)
    async def main():
        async with relay_running(config) as srv:
            port = srv.address[1]
            clients = await asyncio.gather(*(RawClient.login(port, f"user{i}")
                                             for i in range(1000)))
            assert len(srv.connections) == 1000
            for i in range(0, 1000, 2):
                await clients[i].send(send_frame(f"user{i + 1}", f"s1.m{i}", ref=i))
            got = await asyncio.gather(*(clients[i].recv_type("deliver")
                                         for i in range(1, 1000, 2)))
            assert [g["body"] for g in got] == [f"s1.m{i}" for i in range(0, 1000, 2)]
            for c in clients:
                c.writer.transport.abort()
    run(main(), timeout=120)


def test_connection_limits_total_and_per_address():
    config = relay.RelayConfig(max_per_address=3)
    async def main():
        async with relay_running(config) as srv:
            port = srv.address[1]
            keep = [await RawClient.login(port, f"u{i}") for i in range(3)]
            extra = await RawClient.connect(port)
            err = await extra.recv()
            assert err["code"] == "too_many_connections" and await extra.closed()
            keep[0].writer.transport.abort()
            await asyncio.sleep(0.1)
            assert (await RawClient.login(port, "u9"))
    run(main())


def test_idle_connection_is_dropped_after_heartbeat_timeout():
    config = relay.RelayConfig(idle_timeout=0.5, hello_timeout=0.3)
    async def main():
        async with relay_running(config) as srv:
            c = await RawClient.login(srv.address[1], "alice")
            err = await c.recv(timeout=3)
            assert err["code"] == "timeout" and "heartbeat" in err["message"]
            assert await c.closed()
    run(main())


def test_shutdown_tells_clients():
    async def main():
        from msgrlib.relay import server

        srv = await server.start_relay(relay.RelayConfig(), port=0)
        c = await RawClient.login(srv.address[1], "alice")
        await srv.close(timeout=2)
        frame = await c.recv()
        assert frame["type"] == "shutdown"
        assert await c.closed()
    run(main())


def test_tls_handshake_timeout_cuts_a_silent_tls_client(tmp_path):
    context, client_context = tls_contexts(tmp_path)
    config = relay.RelayConfig(tls_handshake_timeout=0.5)

    async def main():
        async with relay_running(config, ssl_context=context) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.address[1])
            writer.write(b"\x16\x03\x01")          # the start of a ClientHello, then silence
            started = asyncio.get_running_loop().time()
            data = await asyncio.wait_for(reader.read(100), 5)
            waited = asyncio.get_running_loop().time() - started
            assert data == b"" and waited < 3       # closed by the relay, not by us
            writer.close()
            # A real TLS client is still served.
            ok = await RawClient.login(srv.address[1], "alice", ssl=client_context)
            await ok.send({"type": "ping"})
            assert (await ok.recv())["type"] == "pong"
    run(main())


def test_a_full_size_frame_right_after_welcome_is_accepted():
    """On the engine, welcome is written when the engine answers, after the
    read that carried auth: the switch from the small sign-in frame limit
    to max_frame must not wait for a read that ends at READY (it used to)."""
    async def main():
        async with relay_running() as srv:
            port = srv.address[1]
            alice = await RawClient.login(port, "alice")
            await alice.send(send_frame("bob", "s1." + "A" * 60_000))
            assert (await alice.recv())["type"] == "accepted"
    run(main())


def test_an_ack_sent_just_before_the_connection_ends_still_counts():
    """On the engine, frames wait behind an unanswered step; a connection
    that ended dropped them, acks included, so what bob had read came again
    at his next sign-in."""
    async def main():
        async with relay_running() as srv:
            port = srv.address[1]
            alice = await RawClient.login(port, "alice")
            bob = await RawClient.login(port, "bob")
            await alice.send(send_frame("bob", "s1.one"))
            await alice.recv_type("accepted")
            got = await bob.recv_type("deliver")
            encode = relay.framing.encode_frame
            replies = b"".join(encode(send_frame("alice", "s1.reply", ref=i)) for i in range(20))
            bob.writer.write(replies + encode({"type": "ack", "id": got["id"]}))
            bob.writer.close()  # at once: the ack waits behind the send
            await asyncio.sleep(0.3)
            again = await RawClient.login(port, "bob", bob.key)
            frames = []
            with pytest.raises(asyncio.TimeoutError):
                while True:  # (on the engine, what waits comes after welcome)
                    frames.append(await again.recv(timeout=0.5))
            assert not [f for f in frames if f["type"] == "deliver"], frames
    run(main())
