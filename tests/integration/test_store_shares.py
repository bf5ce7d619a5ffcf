"""Store shares and the handshake reserve, with real flooding clients (issue 13 item 7).

No single address, name or connection may hold more than ``store_share`` of
the store, and ordinary messages leave ``hs_reserve`` of it to handshake
messages, so a relay full of messages still lets two people start a session.
Flooders connect from other loopback addresses (127.0.0.2, ...), as distinct
hosts would.
"""

from __future__ import annotations

import asyncio

import pytest
from helpers import RawClient, relay_running, run, send_frame

import framing
from msgrlib.relay import config as relay_config
from msgrlib.relay.rules import origin_of

# The shares are kept by the store: every test runs in memory, then on a Redis engine.
pytestmark = pytest.mark.usefixtures("store")

STORE = 400_000
CONFIG = relay_config.RelayConfig(
    store_bytes=STORE, store_share=0.1, hs_reserve=0.05, mailbox_messages=10**6,
    mailbox_bytes=10**9, rate_messages=10**5, burst_messages=10**5, rate_bytes=10.0**9,
    burst_bytes=10.0**9)
BODY = "s1." + "A" * 4000


async def _login_from(port: int, source: str, user: str) -> RawClient:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    client = RawClient(reader, writer)
    welcome = await client.hello(user)
    assert welcome["type"] == "welcome", welcome
    return client


async def _flood(client: RawClient, prefix: str, count: int) -> list[str]:
    """Pipeline ``count`` sends to distinct recipients; the outcome of each."""
    for i in range(count):
        client.writer.write(framing.encode_frame(
            send_frame(f"{prefix}{i % 97}", BODY, ref=i)))
    await client.writer.drain()
    outcomes = []
    while len(outcomes) < count:
        frame = await client.recv()
        if frame["type"] == "accepted":
            outcomes.append("ok")
        elif frame["type"] == "error":
            outcomes.append(frame["code"])
    return outcomes


def test_one_address_with_many_connections_gets_only_its_share():
    async def main():
        async with relay_running(CONFIG) as srv:
            port = srv.address[1]
            flooders = [await _login_from(port, "127.0.0.2", f"flood{i}") for i in range(4)]
            results = await asyncio.gather(*(_flood(c, f"r{i}x", 40)
                                            for i, c in enumerate(flooders)))
            codes = {code for outcome in results for code in outcome}
            assert codes == {"ok", "store_share"}
            if srv.backend is None:  # (the engine's counters are its own keys)
                store = srv.relay.store
                assert store.by_origin["127.0.0.2"] <= CONFIG.share_bytes
                assert store.bytes <= CONFIG.share_bytes
            # One name alone is capped too, from an address with room left.
            solo = await _login_from(port, "127.0.0.3", "solo")
            outcome = await _flood(solo, "s", 40)
            assert outcome.count("ok") * (len(BODY) + 200) <= CONFIG.share_bytes
            if srv.backend is None:
                assert store.by_sender["solo"] <= CONFIG.share_bytes
            # Everyone else carries on.
            alice = await _login_from(port, "127.0.0.1", "alice")
            await alice.send(send_frame("bob", BODY))
            assert (await alice.recv_type("accepted"))["type"] == "accepted"
    run(main())


def test_a_full_store_still_lets_two_people_start_a_session():
    async def main():
        async with relay_running(CONFIG) as srv:
            port = srv.address[1]
            flooders = [await _login_from(port, f"127.0.0.{10 + i}", f"flood{i}")
                        for i in range(12)]  # 12 x 10% > the 95% messages may use
            results = await asyncio.gather(*(_flood(c, f"r{i}x", 12)
                                            for i, c in enumerate(flooders)))
            assert "relay_full" in {code for outcome in results for code in outcome}
            store = srv.relay.store
            assert store.bytes <= STORE - CONFIG.hs_reserve_bytes
            alice = await _login_from(port, "127.0.0.1", "alice")
            bob = await _login_from(port, "127.0.0.1", "bob")
            # An ordinary message is refused: the store is full...
            await alice.send(send_frame("bob", BODY, ref=1))
            assert (await alice.recv())["code"] == "relay_full"
            # ...but the four handshake messages of a session go through.
            for n, (sender, receiver, to) in enumerate(
                    [(alice, bob, "bob"), (bob, alice, "alice")] * 2):
                await sender.send(send_frame(to, f"hs.{n}." + "B" * 300, ref=10 + n, kind="hs"))
                assert (await sender.recv_type("accepted"))["ref"] == 10 + n
                got = await receiver.recv_type("deliver")
                assert got["kind"] == "hs" and got["body"].startswith(f"hs.{n}.")
                await receiver.send({"type": "ack", "id": got["id"]})
    run(main())


def test_ipv6_addresses_share_by_64():
    assert origin_of("2001:db8:1:2::1") == origin_of("[2001:db8:1:2:ffff::9]")
    assert origin_of("2001:db8:1:2::1") != origin_of("2001:db8:1:3::1")
    assert origin_of("::ffff:10.0.0.1") == origin_of("10.0.0.1") == "10.0.0.1"
    assert origin_of("fe80::1%eth0") == origin_of("fe80::2")
    assert origin_of("not-an-ip") == "not-an-ip"
