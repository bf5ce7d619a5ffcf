"""client.ChatClient, the library's asyncio layer, against a real relay on loopback.

What the chat core cannot see on its own: how the client treats the relay's
verdicts, and that time passes while it is disconnected.
"""

from __future__ import annotations

import asyncio

import pytest
from helpers import relay_running, run, tls_contexts

import framing
import kdf
from msgrlib.client import connection as client
from msgrlib.client import core as chat
from msgrlib.relay import rules as relay

TINY_KDF = kdf.KdfParams(time_cost=1, memory_kib=8, parallelism=1)


async def _open(port: int, user: str, peer: str, **kw) -> client.ChatClient:
    return await client.open_chat(server=f"127.0.0.1:{port}", user=user, peer=peer,
                                  passcode="correct horse battery", kdf_params=TINY_KDF, **kw)


async def _until(events, want, timeout: float = 10.0):
    """The next event for which ``want(event)`` is true."""
    async def scan():
        async for event in events:
            if want(event):
                return event
        raise AssertionError("the client closed")
    return await asyncio.wait_for(scan(), timeout)


def test_a_relay_timeout_after_connecting_means_reconnect_not_exit():
    """A laptop that slept past the relay's idle timeout gets a fatal 'timeout'
    error from it. That ended the client when it happened on the first
    connection; it must reconnect like after any other loss."""
    config = relay.RelayConfig(hello_timeout=1.0, idle_timeout=1.0)  # the client pings every 20 s

    async def main():
        async with relay_running(config) as srv:
            alice = await _open(srv.address[1], "alice", "bob")
            events = alice.events()
            lost = await _until(events, lambda e: isinstance(e, client.Status)
                                and e.state == "disconnected")
            assert "heartbeat" in lost.detail
            await _until(events, lambda e: isinstance(e, client.Status) and e.state == "connected")
            assert not alice._task.done()
            await alice.aclose()
    run(main())


def test_a_message_whose_ttl_ends_while_disconnected_is_reported_then_not_resent():
    """Found by review: nothing ticked while the client waited to reconnect;
    at reconnect the expired message was sealed and sent again, shown late by
    the peer, while its sender was told it was not delivered."""
    config = relay.RelayConfig(ttl_min=1)

    async def main():
        async with relay_running(config) as srv:
            port = srv.address[1]
            alice = await _open(port, "alice", "bob")
            alice.core.ttl = 1  # below the CLI's 5 s, which this relay allows
            bob = await _open(port, "bob", "alice")
            events = alice.events()
            await _until(events, lambda e: isinstance(e, chat.SessionStarted))
            await bob.aclose()
            await _until(events, lambda e: isinstance(e, chat.Presence) and not e.online)
            n = alice.send("for later")
            await _until(events, lambda e: isinstance(e, chat.Accepted) and e.n == n)
        # The relay is gone (and with it the message): alice is reconnecting.
        await _until(events, lambda e: isinstance(e, client.Status) and e.state == "reconnecting")
        failed = await _until(events, lambda e: isinstance(e, chat.Undelivered), timeout=10)
        assert failed.n == n and "1 s TTL" in failed.reason
        assert alice.core.outbox == {}
        async with relay_running(config, port=port) as srv:
            await _until(events, lambda e: isinstance(e, client.Status) and e.state == "connected",
                         timeout=40)
            assert srv.relay.stats.accepted == 0  # nothing was sent again
        await alice.aclose()
    run(main(), timeout=90)


def test_text_that_is_not_unicode_is_refused_with_a_reason():
    core = chat.ChatCore(me="alice", peer="bob", key=bytes(32), clock=lambda: 0.0,
                         wallclock=lambda: 0.0, rng=lambda n: bytes(n))
    with pytest.raises(client.MsgrError, match="not valid Unicode"):
        core.send("lone \ud800 surrogate")
    assert core.outbox == {}


def test_a_message_too_large_for_the_relays_frames_is_refused_before_sending():
    """Found in review: 16,000 emoji (under the 16,384-character limit) made a
    frame larger than the relay's; the client lost the connection on it,
    again at every reconnect, and the messages after it never went out."""
    async def main():
        async with relay_running() as srv:
            port = srv.address[1]
            alice = await _open(port, "alice", "bob")
            bob = await _open(port, "bob", "alice")
            events = alice.events()
            await _until(events, lambda e: isinstance(e, chat.SessionStarted))
            limit = alice.core.max_text_bytes
            largest = "🎉" * ((limit - 2) // 4)  # 4 bytes each, plus the JSON quotes
            with pytest.raises(client.MsgrError, match="bytes once encoded"):
                alice.send(largest + "🎉")
            alice.send(largest)
            alice.send("and after it")
            got = []
            async for message in bob.messages():
                got.append(message.text)
                if len(got) == 2:
                    break
            assert got == [largest, "and after it"]
            await alice.aclose()
            await bob.aclose()
    run(main())


def test_backoff_starts_afresh_after_each_successful_reconnect():
    """Found in review: after one relay restart the backoff kept growing, so
    the next loss waited 36 s (longer than a TTL) before the first retry."""
    def waits(event) -> float | None:
        if isinstance(event, client.Status) and event.state == "reconnecting":
            return float(event.detail.split(" in ")[1].split()[0])
        return None

    async def main():
        async with relay_running() as srv:
            port = srv.address[1]
            alice = await _open(port, "alice", "bob")
            alice.stable_after = 0.3  # a connection this long counts as one that worked
            await asyncio.sleep(0.4)
        events = alice.events()
        seen = []
        while sum(seen) < 3:  # let the backoff grow while the relay is away
            seen.append(waits(await _until(events, lambda e: waits(e) is not None)))
        assert seen[-1] >= 2 * 0.7
        async with relay_running(port=port):
            await _until(events, lambda e: isinstance(e, client.Status)
                         and e.state == "connected", timeout=20)
            await asyncio.sleep(0.4)
        first_after = waits(await _until(events, lambda e: waits(e) is not None))
        assert first_after <= 0.5 * 1.3
        await alice.aclose()
    run(main(), timeout=60)


def test_a_tls_relay_shutting_down_is_reported_as_such(tmp_path):
    """Found in review: over TLS the client said 'Connection lost' (a write
    found the socket closed) before reading the relay's shutdown notice."""
    server_ctx, _ = tls_contexts(tmp_path)

    async def main():
        async with relay_running(ssl_context=server_ctx) as srv:
            alice = await _open(srv.address[1], "alice", "bob",
                                tls=client.TlsOptions(cafile=str(tmp_path / "cert.pem")))
            events = alice.events()
            await _until(events, lambda e: isinstance(e, chat.Presence))
        lost = await _until(events, lambda e: isinstance(e, client.Status)
                            and e.state == "disconnected")
        assert "shutting down" in lost.detail, lost
        await alice.aclose()
    run(main())


def test_the_library_refuses_a_ttl_out_of_range_and_reports_what_is_open_at_close():
    async def main():
        async with relay_running() as srv:
            port = srv.address[1]
            for ttl in (0, 500):
                with pytest.raises(client.ClientError, match="out of range"):
                    await _open(port, "alice", "bob", ttl=ttl)
            alice = await _open(port, "alice", "bob")
            events = alice.events()
            n = alice.send("bob never came")
            await alice.aclose()
            left = [e async for e in events]
            assert [(e.n, e.reason) for e in left if isinstance(e, chat.Undelivered)] == [
                (n, "the chat was closed before it was confirmed; no secure session with "
                    "bob came up to send it")]
    run(main())


def test_a_server_that_resets_the_tls_handshake_gets_a_hint_not_an_exception_name():
    """Found in review: 'cannot reach localhost:2024: ConnectionResetError'."""
    import socket
    import struct

    async def main():
        async def reset(reader, writer):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await reader.read(10)
            writer.close()

        server = await asyncio.start_server(reset, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(client.WrongTransport, match="reset it during the TLS handshake"):
                await _open(port, "alice", "bob", tls=client.TlsOptions(pin="SHA256:" + "00" * 32))
    run(main())


def test_a_relay_with_larger_frames_than_ours_causes_no_reconnect_loop():
    """Found in review: with --max-frame 128 KiB, a stranger's 100 KB message
    made the client drop the connection at every delivery, and a message
    over 64 KiB was accepted by send() but could not be encoded."""
    from helpers import RawClient

    async def main():
        async with relay_running(relay.RelayConfig(max_frame=128 * 1024)) as srv:
            port = srv.address[1]
            bob = await _open(port, "bob", "alice")
            events = bob.events()
            mallory = await RawClient.login(port, "mallory")
            await mallory.send_raw(framing.encode_frame(
                {"type": "send", "ref": 1, "to": "bob", "ttl": 30, "body": "r1." + "A" * 100_000},
                max_size=1 << 20))
            notice = await _until(events, lambda e: isinstance(e, chat.Notice)
                                  or isinstance(e, client.Status) and e.state == "disconnected")
            assert isinstance(notice, chat.Notice) and "mallory" in notice.text, notice
            with pytest.raises(client.MsgrError, match="bytes once encoded"):
                bob.send("x" * 60_000)
            await bob.aclose()
    run(main())


def test_reconnect_waits_are_capped_well_below_the_shortest_ttl():
    """Issue 14 item 3: the wait doubled up to 30 s (the default TTL): a relay
    down for 15 s was rejoined after 33 s, and a message typed meanwhile was
    reported as not delivered. Now no wait exceeds 5 s, jitter included."""
    assert client.BACKOFF_MAX <= 5.0
    delay, waits = client.BACKOFF_FIRST, []
    for _ in range(40):
        waits.append(client.backoff_wait(min(delay, client.BACKOFF_MAX)))
        delay = min(delay * 2, client.BACKOFF_MAX)
    assert max(waits) <= 5.0 and len({round(w, 6) for w in waits}) > 30  # jittered
    assert client.backoff_wait(4.0, rng=lambda lo, hi: hi) == pytest.approx(4.0 * 0.7)
    assert client.backoff_wait(4.0, rng=lambda lo, hi: lo) == 4.0


def test_reconnect_now_after_a_relay_restart_delivers_what_was_typed_meanwhile():
    """Issue 14 item 3: the screen binds reconnect_now() to a key. A real relay
    is stopped and restarted on the same port; alice waits a long backoff
    (30 s here) until asked to try now, then her message typed during the
    outage reaches bob, who came back on his own (5 s cap)."""
    def is_status(state):
        return lambda e: isinstance(e, client.Status) and e.state == state

    async def main():
        async with relay_running() as srv:
            port = srv.address[1]
            alice = await _open(port, "alice", "bob")
            bob = await _open(port, "bob", "alice")
            alice_events, bob_events = alice.events(), bob.events()
            await _until(alice_events, lambda e: isinstance(e, chat.SessionStarted))
            await _until(bob_events, lambda e: isinstance(e, chat.SessionStarted))
            assert alice.reconnect_now() is False  # connected: nothing to cut short
            alice.backoff_first = alice.backoff_max = 30.0
            alice.stable_after = 0.0  # so the backoff starts from backoff_first
        waiting = await _until(alice_events, is_status("reconnecting"))
        assert float(waiting.detail.split(" in ")[1].split()[0]) >= 20
        n = alice.send("typed while the relay was down")
        async with relay_running(port=port):
            assert alice.reconnect_now() is True
            await _until(alice_events, is_status("connected"), timeout=10)
            got = await _until(bob_events, lambda e: isinstance(e, chat.Received), timeout=15)
            assert got.text == "typed while the relay was down"
            done = await _until(alice_events, lambda e: isinstance(e, (chat.Delivered,
                                                                       chat.Undelivered)))
            assert isinstance(done, chat.Delivered) and done.n == n
            await alice.aclose()
            await bob.aclose()
    run(main(), timeout=60)


@pytest.mark.parametrize("text,want", [
    ("relay.example:9000", ("relay.example", 9000, None)),
    ("[::1]:9000", ("::1", 9000, None)),
    ("ws://localhost:8765", ("localhost", 8765, False)),
    ("msgr://localhost", ("localhost", 8765, False)),
    ("wss://relay.example:443/", ("relay.example", 443, True)),
    ("MSGRS://[::1]:7000", ("::1", 7000, True)),
])
def test_parse_server_takes_host_port_and_urls(text, want):
    address = client.parse_server(text)
    host, port = address  # as before URLs: a (host, port) pair
    assert (host, port, address.tls) == want == (address.host, address.port, address.tls)


@pytest.mark.parametrize("text,hint", [
    ("http://localhost:8765", "wss://"),
    ("https://relay.example", "msgrs://"),
    ("ws://localhost:8765/chat", "nothing more"),
    ("ws://alice@localhost:8765", "nothing more"),
    ("wss://localhost:99999", "1-65535"),
])
def test_a_url_msgr_cannot_use_gets_a_one_line_hint_never_about_ipv6(text, hint):
    """Issue 14 item 4a: ws://localhost:8765 was answered with "write an IPv6
    address in brackets: [ws://localhost]:8765"."""
    with pytest.raises(client.ClientError) as err:
        client.parse_server(text)
    assert hint in str(err.value) and "IPv6" not in str(err.value)
    assert "\n" not in str(err.value)


def test_wss_url_on_the_command_line_means_tls(tmp_path):
    """The original's users type --server wss://HOST:PORT: a real line-mode
    client reaches a real TLS relay with it, no --tls needed; ws:// with
    --tls is a contradiction, said in one line (exit 2)."""
    import os
    import subprocess
    import sys

    from helpers import ROOT, Chat

    server_ctx, _ = tls_contexts(tmp_path)
    cafile = str(tmp_path / "cert.pem")

    async def main():
        async with relay_running(ssl_context=server_ctx) as srv:
            port = srv.address[1]
            alice = await Chat.start(port, "alice", "bob", "--cafile", cafile,
                                     host="wss://127.0.0.1")
            line = await alice.wait_for("connected to|refused|error|cannot", stream="stderr")
            assert "(TLS)" in line, alice.stderr
            await alice.end_input()
            assert await alice.exit_code() == 0, alice.stderr
    run(main())
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "msgr.py"), "chat", "--server",
                          "ws://127.0.0.1:1", "--tls", "--user", "a", "--peer", "b"],
                         capture_output=True, text=True, timeout=30,
                         env={**os.environ, "MSGR_PASSCODE": "x"})
    assert bad.returncode == 2 and "wss://" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_a_relay_frame_that_breaks_the_protocol_after_welcome_is_dropped_with_a_notice():
    """A fake relay (the attacker) welcomes the client, then sends a deliver
    whose id is a string: the session drops it, the user is told, the
    connection and the chat go on."""
    from msgrlib import protocol

    async def fake_relay(reader, writer):
        hello = protocol.parse_hello(await framing.read_frame(reader))
        writer.write(framing.encode_frame(protocol.Challenge(bytes(32), "fake").to_json()))
        await framing.read_frame(reader)  # auth: not checked, we are the attacker
        writer.write(framing.encode_frame({"type": "welcome", "user": hello.user, "v": 1,
                                           "relay": "fake", "limits": {"heartbeat": 1e9}}))
        writer.write(framing.encode_frame({"type": "deliver", "id": "1\x1b[2J", "from": "bob",
                                           "kind": "msg", "ttl": 5, "expires_at": 1.0,
                                           "body": "x"}))
        writer.write(framing.encode_frame({"type": "presence", "user": "bob", "online": False}))
        await writer.drain()
        await reader.read()  # until the client goes

    async def main():
        server = await asyncio.start_server(fake_relay, "127.0.0.1", 0)
        async with server:
            alice = await _open(server.sockets[0].getsockname()[1], "alice", "bob")
            events = alice.events()
            notice = await _until(events, lambda e: isinstance(e, chat.Notice))
            assert "'deliver' frame" in notice.text and "\x1b" not in notice.text, notice
            assert alice.heartbeat == 20.0  # 1e9 s is out of range: the default stays
            await _until(events, lambda e: isinstance(e, chat.Presence))  # still connected
            await alice.aclose()
    run(main())
