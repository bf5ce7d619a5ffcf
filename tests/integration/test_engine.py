"""The engine backend against a real redis-server: each script's semantics.

Every test starts its own engine on a unix socket (tests/engine_helpers.py)
and drives :class:`RedisBackend` with a fake clock (milliseconds), so expiry,
claims and leases are tested without waiting. ``run_tasks=True`` tests also
run the pub/sub listener, to see the events a node receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgrlib.invite.nameplates import NameplateError
from msgrlib.relay import store as memstore
from msgrlib.relay.engine import (
    Deliver,
    EngineConfigError,
    EngineLimits,
    EngineReset,
    EngineUnavailable,
    Expired,
    InviteJoined,
    InviteLapsed,
    NameOwned,
    Presence,
    Reaped,
    RedisBackend,
    Replaced,
    Reset,
    Resync,
    ShareFull,
    TooManyNames,
    check_url,
    shard_of,
)
from tests.engine_helpers import engine_running, free_port
from tests.helpers import run, tls_contexts

KEY_A, KEY_B = b"A" * 32, b"B" * 32
T0 = 1_800_000_000_000  # fake engine clock start, ms


class Clock:
    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


class Events(list):
    """Collects a node's events; ``wait_for`` polls until one matches."""

    async def wait_for(self, match: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            for event in self:
                if match(event):
                    return event
            await asyncio.sleep(0.01)
        raise AssertionError(f"no matching event in {list(self)!r}")


@pytest.fixture
def engine():
    """A fresh engine for one test, stopped by pid afterwards."""
    with engine_running() as proc:
        yield proc


@contextlib.asynccontextmanager
async def node(urls: str | list[str], *, clock: Clock | None = None, run_tasks: bool = False,
               socket_timeout: float = 5.0, password: str | None = None,
               **limits: Any) -> AsyncIterator[tuple[RedisBackend, Events]]:
    events = Events()
    backend = RedisBackend([urls] if isinstance(urls, str) else urls,
                           limits=EngineLimits(**{"expire_poll": 0.05, **limits}),
                           on_event=events.append, clock_ms=clock, run_tasks=run_tasks,
                           socket_timeout=socket_timeout, password=password)
    await backend.start()
    try:
        if run_tasks:
            # Subscribed on every shard: publications from now on reach us.
            for shard in range(len(backend.shards)):
                await events.wait_for(lambda e, shard=shard: e == Resync(shard))
        yield backend, events
    finally:
        await backend.close()


# -- send, fetch, ack ---------------------------------------------------------------


def test_send_fetch_ack_and_ack_is_idempotent(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock) as (be, _):
            conn = be.connection_id()
            await be.claim("bob", KEY_B, conn)
            body = "line one\nline two é \U0001f600"
            held = await be.send("alice", "bob", body, "msg", 30)
            assert (held.sender, held.recipient, held.body, held.kind, held.ttl) == (
                "alice", "bob", body, "msg", 30)
            assert held.expires_wall == (T0 + 30_000) / 1000
            assert held.size == len(body) + memstore.OVERHEAD_BYTES
            second = await be.send("carol", "bob", "two", "hs", 5)
            assert second.id == held.id + 1
            waiting = await be.fetch("bob", conn)
            assert [h.id for h in waiting] == [held.id, second.id]
            assert waiting[0] == held
            assert await be.count_for("bob") == 2
            assert await be.ack("bob", conn, [held.id]) == 1
            assert await be.ack("bob", conn, [held.id]) == 0  # idempotent
            assert await be.ack("bob", conn, [second.id, 12345]) == 1
            assert await be.count_for("bob") == 0
            # Every byte was given back: the budget and the mailbox counters are gone.
            assert engine.command("EXISTS", "msgr:bytes", "msgr:{bob}:b", "msgr:{bob}:q") \
                == b":0\r\n"
            assert engine.command("ZCARD", "msgr:exp") == b":0\r\n"
    run(main())


def test_ack_and_fetch_need_the_connection_that_holds_the_name(engine):
    async def main():
        async with node(engine.url, clock=Clock()) as (be, _):
            await be.claim("bob", KEY_B, "1")
            held = await be.send("alice", "bob", "x", "msg", 30)
            assert await be.ack("bob", "2", [held.id]) is None
            assert await be.fetch("bob", "2") is None
            assert await be.ack("alice", "1", [held.id]) is None  # alice holds nothing
            assert [h.id for h in await be.fetch("bob", "1")] == [held.id]
    run(main())


def test_ids_start_at_a_random_point_and_never_repeat_after_a_wipe(engine):
    async def main():
        async with node(engine.url, clock=Clock()) as (be, _):
            first = (await be.send("a", "b", "x", "msg", 5)).id
            assert 1 < first <= 2 ** 48 + 1
            assert (await be.send("a", "b", "x", "msg", 5)).id == first + 1
            return first
    first = run(main())
    assert run(main()) == first + 2  # same engine: the counter lives on
    engine.command("FLUSHALL")
    assert run(main()) not in (first, first + 2, first + 4)  # a wiped engine: a new seed


def test_surrogates_and_newlines_in_bodies_survive(engine):
    async def main():
        async with node(engine.url, clock=Clock()) as (be, _):
            await be.claim("bob", KEY_B, "1")
            body = "\ud800 lone surrogate\n\n{x}\r\n" + "é" * 100
            held = await be.send("alice", "bob", body, "msg", 5)
            assert held.size == len(body) + memstore.OVERHEAD_BYTES
            assert (await be.fetch("bob", "1"))[0].body == body
    run(main())


# -- limits -------------------------------------------------------------------------


def test_mailbox_message_limit_at_max_and_max_plus_one(engine):
    async def main():
        async with node(engine.url, clock=Clock(), mailbox_messages=3) as (be, _):
            for _ in range(3):
                await be.send("alice", "bob", "x", "msg", 5)
            with pytest.raises(memstore.MailboxFull, match="3 messages waiting"):
                await be.send("alice", "bob", "x", "msg", 5)
            await be.send("alice", "carol", "x", "msg", 5)  # others are not affected
            assert await be.count_for("bob") == 3
    run(main())


def test_mailbox_bytes_store_bytes_and_shares(engine):
    over = memstore.OVERHEAD_BYTES

    async def main():
        async with node(engine.url, clock=Clock(), mailbox_bytes=2 * (over + 10),
                        store_bytes=3 * (over + 10)) as (be, _):
            await be.send("alice", "bob", "x" * 10, "msg", 5)
            await be.send("alice", "bob", "x" * 10, "msg", 5)  # exactly the mailbox limit
            with pytest.raises(memstore.MailboxFull, match="bytes waiting"):
                await be.send("alice", "bob", "x", "msg", 5)
            await be.send("alice", "carol", "x" * 10, "msg", 5)  # exactly the store budget
            with pytest.raises(memstore.StoreFull) as info:
                await be.send("alice", "dave", "", "msg", 5, size=1)  # one byte over
            assert not isinstance(info.value, ShareFull)
            assert engine.command("GET", "msgr:bytes") == b"$3\r\n%d\r\n" % (3 * (over + 10))
    run(main())

    async def shares():
        engine.command("FLUSHALL")
        share = 2 * (over + 1)
        async with node(engine.url, clock=Clock(), share_bytes=share) as (be, _):
            first = await be.send("alice", "bob", "x", "msg", 5, origin="203.0.113.5")
            await be.send("alice", "carol", "x", "msg", 5, origin="198.51.100.7")
            with pytest.raises(ShareFull) as info:  # the name's share, one byte over
                await be.send("alice", "dave", "", "msg", 5, origin="198.51.100.7", size=1)
            assert (info.value.share, info.value.held) == ("name:alice", share)
            assert info.value.code == "store_share"
            assert isinstance(info.value, memstore.ShareFull)
            assert "messages from alice already hold" in str(info.value)
            await be.send("erin", "dave", "x", "msg", 5, origin="198.51.100.7")
            with pytest.raises(ShareFull, match="from your address") as info:
                await be.send("frank", "dave", "x", "msg", 5, origin="198.51.100.7")
            assert info.value.share == "addr:198.51.100.7"
            await be.claim("bob", KEY_B, "1")
            assert await be.ack("bob", "1", [first.id]) == 1  # the share is given back
            await be.send("alice", "dave", "x", "msg", 5, origin="203.0.113.5")
            # The recipient's mailbox is capped by the share too.
            with pytest.raises(memstore.MailboxFull):
                await be.send("grace", "dave", "x", "msg", 5, origin="192.0.2.1")
    run(shares())

    async def reserve():
        engine.command("FLUSHALL")
        async with node(engine.url, clock=Clock(), store_bytes=3 * (over + 1),
                        hs_reserve_bytes=2 * (over + 1)) as (be, _):
            await be.send("heidi", "ivan", "x", "msg", 5, origin="192.0.2.2")
            # Ordinary messages leave the handshake reserve free; handshakes use it.
            with pytest.raises(memstore.StoreFull):
                await be.send("heidi", "ivan", "x", "msg", 5, origin="192.0.2.2")
            held = await be.send("heidi", "ivan", "x", "hs", 5, origin="192.0.2.2")
            assert held.origin == "192.0.2.2"
            await be.claim("ivan", KEY_B, "2")
            assert (await be.fetch("ivan", "2"))[1].origin == "192.0.2.2"
    run(reserve())


def test_refused_send_keeps_nothing(engine):
    async def main():
        async with node(engine.url, clock=Clock(), mailbox_messages=1) as (be, _):
            await be.send("alice", "bob", "x", "msg", 5)
            before = engine.command("GET", "msgr:bytes")
            with pytest.raises(memstore.MailboxFull):
                await be.send("alice", "bob", "y", "msg", 5)
            assert engine.command("GET", "msgr:bytes") == before
            assert engine.command("ZCARD", "msgr:exp") == b":1\r\n"
    run(main())


def test_handshake_bucket_is_shared_by_every_node(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock, hs_burst=3, hs_per_second=0.5) as (a, _), \
                node(engine.url, clock=clock, hs_burst=3, hs_per_second=0.5) as (b, _):
            assert await a.handshake_allowed("alice", "bob")
            assert await b.handshake_allowed("bob", "alice")  # the same pair
            assert await a.handshake_allowed("alice", "bob")
            assert not await b.handshake_allowed("alice", "bob")
            assert await a.handshake_allowed("alice", "carol")  # another pair
            clock.advance(2)  # one token back
            assert await b.handshake_allowed("bob", "alice")
            assert not await a.handshake_allowed("alice", "bob")
            # Refused, it says when the bucket holds an attempt (at most the burst).
            assert await a.handshake_take("alice", "bob", 5) == 6.0  # 3 tokens at 0.5/s
            assert await a.handshake_take("alice", "bob", 2) == 4.0
            clock.advance(2)
            assert await b.handshake_take("bob", "alice", 5) is True
    run(main())


# -- expiry -------------------------------------------------------------------------


def test_expiry_pops_in_order_and_returns_the_next_deadline(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock) as (be, _):
            await be.claim("bob", KEY_B, "1")
            m10 = await be.send("alice", "bob", "a", "msg", 10)
            m5 = await be.send("carol", "bob", "b", "msg", 5)
            m7 = await be.send("alice", "dave", "c", "msg", 7)
            now, nxt, popped = await be.expire_once(0)
            assert (now, nxt, popped) == (T0, T0 + 5000, [])
            clock.advance(5)  # due exactly now: popped (expires_at <= now)
            assert await be.expire_once(0) == (T0 + 5000, T0 + 7000,
                                               [(m5.id, "carol", "bob")])
            clock.advance(5)
            # Due (exactly now) but not popped yet: never handed out, never acked.
            assert await be.ack("bob", "1", [m10.id]) == 0
            assert await be.fetch("bob", "1") == []
            clock.advance(0.5)
            assert await be.ack("bob", "1", [m10.id]) == 0
            assert await be.fetch("bob", "1") == []
            _, nxt, popped = await be.expire_once(0)
            assert popped == [(m7.id, "alice", "dave"), (m10.id, "alice", "bob")]
            assert nxt is None
            assert engine.command("EXISTS", "msgr:bytes") == b":0\r\n"
    run(main())


def test_expire_is_bounded_per_call(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock, expire_batch=3) as (be, _):
            ids = [(await be.send("alice", "bob", "x", "msg", 5)).id for _ in range(5)]
            clock.advance(5)
            now, nxt, popped = await be.expire_once(0)
            assert [p[0] for p in popped] == ids[:3] and nxt == now
            _, nxt, popped = await be.expire_once(0)
            assert [p[0] for p in popped] == ids[3:] and nxt is None
    run(main())


def test_expired_reaches_the_senders_node(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock, run_tasks=True) as (a, a_events), \
                node(engine.url, clock=clock, run_tasks=True) as (b, _):
            await a.claim("alice", KEY_A, "7")
            held = await b.send("alice", "bob", "x", "msg", 5)  # sent "through" node b
            clock.advance(5)
            event = await a_events.wait_for(lambda e: isinstance(e, Expired))
            assert event == Expired("7", held.id, "bob")
    run(main())


def test_expiry_reports_wait_for_a_sender_between_connections(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock) as (be, events):
            await be.claim("alice", KEY_A, "1")
            held = await be.send("alice", "bob", "x", "msg", 5)
            await be.release("alice", "1")  # alice's connection drops
            clock.advance(5)
            assert (await be.expire_once(0))[2] == [(held.id, "alice", "bob")]
            await be.claim("alice", KEY_A, "2")  # back, on any node
            assert await be.fetch("alice", "2") == []
            assert events == [Expired("2", held.id, "bob")]
            assert await be.fetch("alice", "2") == []  # taken once
            assert events == [Expired("2", held.id, "bob")]
    run(main())


def test_a_new_key_does_not_get_the_old_keys_reports(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock, claim_ttl=5) as (be, events):
            await be.claim("alice", KEY_A, "1")
            await be.send("alice", "bob", "x", "msg", 5)
            await be.release("alice", "1")
            clock.advance(5)
            await be.expire_once(0)
            await be.claim("alice", KEY_B, "2")  # lapsed: another key takes the name
            assert await be.fetch("alice", "2") == [] and events == []
    run(main())


def test_expiry_reports_missed_by_pubsub_come_with_the_next_fetch(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock) as (be, events):  # no listener at all
            await be.claim("alice", KEY_A, "1")
            held = await be.send("alice", "bob", "x", "msg", 5)
            clock.advance(5)
            await be.expire_once(0)
            assert events == []
            await be.fetch("alice", "1")  # what a node does after it resubscribes
            assert events == [Expired("1", held.id, "bob")]
    run(main())


# -- claims -------------------------------------------------------------------------


def test_release_only_with_the_matching_connection(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock, claim_ttl=10) as (be, _):
            await be.claim("bob", KEY_B, "1")
            assert not await be.release("bob", "2")
            with pytest.raises(NameOwned) as info:
                await be.claim("bob", KEY_A, "3")
            assert info.value.connected
            assert await be.release("bob", "1", bye=True)
            assert not await be.release("bob", "1")  # once
            clock.advance(9)
            with pytest.raises(NameOwned) as info:
                await be.claim("bob", KEY_A, "3")
            assert not info.value.connected and info.value.said_bye
            assert info.value.released_at == T0 / 1000
            assert info.value.now - info.value.released_at == 9
            clock.advance(1)
            await be.claim("bob", KEY_A, "3")  # lapsed: another key may take it
    run(main())


def test_a_name_stays_bound_while_messages_wait_for_it(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock, claim_ttl=10, ttl_max=60) as (be, _):
            await be.claim("bob", KEY_B, "1")
            await be.release("bob", "1")
            await be.send("alice", "bob", "x", "msg", 30)
            clock.advance(10)
            await be.expire_once(0)
            with pytest.raises(NameOwned) as info:
                await be.claim("bob", KEY_A, "3")
            assert info.value.waiting == 1
            clock.advance(20)
            await be.expire_once(0)  # the message expires; the claim is looked at later
            assert engine.command("EXISTS", "msgr:{bob}:c") == b":1\r\n"
            await be.claim("bob", KEY_A, "3")  # nothing waits and the hold is over
    run(main())


def test_lapsed_claims_are_deleted_by_the_expirer(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock, claim_ttl=10) as (be, _):
            await be.claim("bob", KEY_B, "1")
            await be.release("bob", "1")
            _, nxt, _ = await be.expire_once(0)
            assert nxt == T0 + 10_000
            clock.advance(10)
            await be.expire_once(0)
            assert engine.command("EXISTS", "msgr:{bob}:c") == b":0\r\n"
            assert engine.command("SCARD", "msgr:claims") == b":0\r\n"
    run(main())


def test_max_names_per_shard(engine):
    async def main():
        async with node(engine.url, clock=Clock(), max_names=2) as (be, _):
            await be.claim("a", KEY_A, "1")
            await be.claim("b", KEY_A, "2")
            with pytest.raises(TooManyNames):
                await be.claim("c", KEY_A, "3")
            await be.claim("a", KEY_A, "4")  # reclaiming is not a new name
    run(main())


def test_same_key_replaces_its_old_connection(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock, run_tasks=True) as (a, a_events), \
                node(engine.url, clock=clock, run_tasks=True) as (b, _):
            assert (await a.claim("bob", KEY_B, "1")).replaced is None
            assert (await a.claim("bob", KEY_B, "2")).replaced == "1"  # same node
            claimed = await b.claim("bob", KEY_B, "9")  # another node: told by pub/sub
            assert claimed.replaced is None
            assert await a_events.wait_for(lambda e: isinstance(e, Replaced)) == Replaced("2")
            assert not await a.release("bob", "2")  # no longer its connection
            assert await b.release("bob", "9")
    run(main())


def test_deliveries_and_presence_reach_the_right_node(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock, run_tasks=True) as (a, a_events), \
                node(engine.url, clock=clock, run_tasks=True) as (b, b_events):
            assert a.epoch == b.epoch and len(a.epoch) == 16  # one relay to clients
            assert a.node != b.node
            assert not await b.watch("alice")
            assert not await a.online("alice")
            await a.claim("alice", KEY_A, "1")
            assert await a.online("alice")
            assert await b_events.wait_for(lambda e: isinstance(e, Presence)) == \
                Presence("alice", True)
            assert await b.watch("alice")  # a second watcher on b: online
            b_events.clear()
            await a.claim("alice", KEY_A, "2")  # the same key again: offline, then online
            await b_events.wait_for(lambda e: Presence("alice", True) in b_events)
            assert [e for e in b_events if isinstance(e, Presence)] == [
                Presence("alice", False), Presence("alice", True)]
            await b.claim("bob", KEY_B, "5")
            held = await a.send("alice", "bob", "hello", "msg", 30)
            event = await b_events.wait_for(lambda e: isinstance(e, Deliver))
            assert event == Deliver("5", held)
            b_events.clear()
            await b.unwatch("alice")  # one watcher left on b: still told
            await a.release("alice", "2")
            assert await b_events.wait_for(lambda e: isinstance(e, Presence)) == \
                Presence("alice", False)
            await b.unwatch("alice")
            assert engine.command("SCARD", "msgr:{alice}:w") == b":0\r\n"
            assert not any(isinstance(e, (Deliver, Presence)) for e in a_events)
    run(main())


# -- nodes and the engine itself ----------------------------------------------------


def test_a_lapsed_lease_releases_the_nodes_names(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock, lease=10) as (a, a_events), \
                node(engine.url, clock=clock, lease=10) as (b, _):
            await a.claim("bob", KEY_B, "1")
            await a.watch("carol")
            clock.advance(9)
            assert await b.renew_once(0) == []  # a's lease still runs
            clock.advance(2)
            assert await b.renew_once(0) == ["bob"]
            with pytest.raises(NameOwned) as info:
                await b.claim("bob", KEY_A, "3")  # released, and held for claim_ttl
            assert not info.value.connected
            await b.claim("bob", KEY_B, "3")  # its own key takes it back at once
            assert engine.command("SCARD", "msgr:{carol}:w") == b":0\r\n"
            # Node a comes back (it was stopped): it learns its names are gone.
            await a.renew_once(0)
            assert Reaped(0) in a_events
            assert engine.command("ZSCORE", "msgr:nodes", a.node).startswith(b"$")
    run(main())


def test_release_is_refused_for_the_same_connection_id_on_another_node(engine):
    async def main():
        async with node(engine.url, clock=Clock()) as (a, _), \
                node(engine.url, clock=Clock()) as (b, _):
            await a.claim("bob", KEY_B, "1")
            assert not await b.release("bob", "1")  # ids are per node
            assert await b.fetch("bob", "1") is None and await b.ack("bob", "1", [1]) is None
            assert await a.release("bob", "1")
    run(main())


def test_a_clean_close_releases_the_nodes_names_at_once(engine):
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock) as (b, _):
            async with node(engine.url, clock=clock) as (a, _):
                await a.claim("bob", KEY_B, "1")
            with pytest.raises(NameOwned) as info:
                await b.claim("bob", KEY_A, "3")
            assert not info.value.connected
    run(main())


def test_a_burst_larger_than_a_batch_keeps_its_order(engine):
    async def main():
        async with node(engine.url, clock=Clock(), mailbox_messages=2000) as (be, _):
            await be.claim("bob", KEY_B, "1")
            sent = await asyncio.gather(*(be.send("alice", "bob", str(i), "msg", 5)
                                          for i in range(1200)))
            assert [h.id for h in sent] == list(range(sent[0].id, sent[0].id + 1200))
            assert [h.body for h in await be.fetch("bob", "1")] == [str(i) for i in range(1200)]
    run(main())


def test_scripts_are_loaded_again_after_script_flush(engine):
    async def main():
        async with node(engine.url, clock=Clock()) as (be, _):
            await be.send("alice", "bob", "x", "msg", 5)
            assert engine.command("SCRIPT", "FLUSH") == b"+OK\r\n"
            await asyncio.gather(*(be.send("alice", "bob", str(i), "msg", 5) for i in range(5)))
            assert await be.count_for("bob") == 6
    run(main())


def test_a_wiped_engine_is_a_reset_with_a_new_epoch():
    with engine_running() as proc:
        async def main():
            async with node(proc.url, clock=Clock()) as (be, events):
                old = be.epoch
                await be.send("alice", "bob", "x", "msg", 5)
                proc.kill()
                proc.start()  # empty: no epoch, no scripts
                with pytest.raises(EngineUnavailable):  # the connection was cut
                    await be.send("alice", "bob", "y", "msg", 5)
                with pytest.raises(EngineReset):  # NOSCRIPT, reload, then EPOCH
                    await be.send("alice", "bob", "y", "msg", 5)
                event = await events.wait_for(lambda e: isinstance(e, Reset))
                assert event.epoch == be.epoch != old
                await be.send("alice", "bob", "z", "msg", 5)  # working again
                assert await be.count_for("bob") == 1
        run(main())


def test_a_failing_event_handler_does_not_stop_the_listener(engine):
    async def main():
        seen = []

        def handler(event):
            seen.append(event)
            raise RuntimeError("the core's bug")

        backend = RedisBackend([engine.url], on_event=handler, clock_ms=Clock())
        await backend.start()
        try:
            while Resync(0) not in seen:  # subscribed (and the handler raised)
                await asyncio.sleep(0.01)
            await backend.claim("bob", KEY_B, "1")
            for body in ("one", "two"):
                await backend.send("alice", "bob", body, "msg", 5)
            for _ in range(200):
                if sum(isinstance(e, Deliver) for e in seen) == 2:
                    break
                await asyncio.sleep(0.01)
            assert [e.held.body for e in seen if isinstance(e, Deliver)] == ["one", "two"]
        finally:
            await backend.close()
    run(main())


def test_pubsub_reconnects_and_asks_for_a_resync(engine):
    async def main():
        async with node(engine.url, clock=Clock(), run_tasks=True) as (be, events):
            events.clear()
            engine.command("CLIENT", "KILL", "TYPE", "pubsub")
            assert await events.wait_for(lambda e: isinstance(e, Resync)) == Resync(0)
            await be.claim("bob", KEY_B, "1")
            held = await be.send("alice", "bob", "after", "msg", 5)
            assert await events.wait_for(lambda e: isinstance(e, Deliver)) == Deliver("1", held)
    run(main())


def test_sigstop_of_the_engine_is_survived(engine):
    async def main():
        async with node(engine.url, clock=Clock(), run_tasks=True,
                        socket_timeout=0.5) as (be, events):
            await be.claim("bob", KEY_B, "1")
            engine.signal(signal.SIGSTOP)
            try:
                with pytest.raises(EngineUnavailable):
                    await asyncio.wait_for(be.send("alice", "bob", "x", "msg", 5), 10)
            finally:
                engine.signal(signal.SIGCONT)
            held = await be.send("alice", "bob", "y", "msg", 5)
            # "x" may have been stored too, when the engine woke up: an
            # unavailable step may or may not have happened.
            assert await events.wait_for(
                lambda e: isinstance(e, Deliver) and e.held.body == "y") == Deliver("1", held)
    run(main())


def test_close_answers_every_pending_call(engine):
    async def main():
        async with node(engine.url, clock=Clock(), socket_timeout=30) as (be, _):
            await be.claim("bob", KEY_B, "1")
            engine.signal(signal.SIGSTOP)  # the next batch waits for an answer
            try:
                pending = [asyncio.ensure_future(be.send("alice", "bob", "x", "msg", 5))
                           for _ in range(3)]
                await asyncio.sleep(0.1)
                await asyncio.wait_for(be.close(timeout=0.3), 5)  # no waiting for the engine
            finally:
                engine.signal(signal.SIGCONT)
            for call in pending:
                with pytest.raises(EngineUnavailable):
                    await asyncio.wait_for(call, 5)
    run(main())


def engine_bytes(proc: Any) -> int:
    reply = proc.command("GET", "msgr:bytes")
    return 0 if reply.startswith(b"$-1") else int(reply.split(b"\r\n")[1])


def test_a_full_engine_refuses_sends_and_keeps_what_it_holds():
    with engine_running("--maxmemory", "3mb") as proc:
        async def main():
            async with node(proc.url, clock=Clock()) as (be, _):
                await be.claim("bob", KEY_B, "1")
                kept = []
                with pytest.raises(memstore.StoreFull, match="out of memory"):
                    for i in range(200):
                        recipient = f"user{i}"
                        kept.append(await be.send("alice", recipient, "x" * 60_000, "msg", 60))
                assert kept  # some fitted before the engine filled up
                assert await be.count_for(kept[0].recipient) == 1  # nothing was evicted
                refused = f"user{len(kept)}"
                assert await be.count_for(refused) == 0  # the refused one left nothing
                assert engine_bytes(proc) == sum(h.size for h in kept)
                await be.renew_once(0)  # leases are renewed all the same
                # Acknowledging frees memory, and sends go through again.
                await be.claim(kept[0].recipient, KEY_A, "2")
                assert await be.ack(kept[0].recipient, "2", [kept[0].id]) == 1
                await be.claim(kept[1].recipient, KEY_A, "3")
                assert await be.ack(kept[1].recipient, "3", [kept[1].id]) == 1
                await be.send("alice", "bob", "small", "msg", 60)
        run(main())


def test_refuses_an_evicting_engine():
    with engine_running("--maxmemory-policy", "allkeys-lru") as proc:
        async def main():
            backend = RedisBackend([proc.url])
            with pytest.raises(EngineConfigError, match="noeviction"):
                await backend.start()
        run(main())


def test_warns_loudly_when_the_engine_persists(caplog):
    with engine_running("--appendonly", "yes", "--save", "3600 1") as proc:
        async def main():
            async with node(proc.url) as (be, _):
                assert len(be.warnings) == 2
                assert "append-only" in be.warnings[1] and "snapshots" in be.warnings[0]
        run(main())
    assert any("engine-config" in r.message for r in caplog.records)


def test_a_well_set_engine_gives_no_warning(engine):
    async def main():
        async with node(engine.url) as (be, _):
            assert be.warnings == []
    run(main())


def test_without_config_the_policy_is_read_from_info():
    # Managed services rename CONFIG away; INFO still tells the policy.
    with engine_running("--rename-command", "CONFIG", "") as proc:
        async def main():
            async with node(proc.url) as (be, _):
                assert len(be.warnings) == 1 and "CONFIG is not available" in be.warnings[0]
        run(main())
    with engine_running("--rename-command", "CONFIG", "",
                        "--maxmemory-policy", "volatile-lru") as proc:
        async def refused():
            with pytest.raises(EngineConfigError, match="volatile-lru"):
                await RedisBackend([proc.url]).start()
        run(refused())


def test_refuses_two_shards_on_one_server(engine):
    async def main():
        backend = RedisBackend([engine.url, engine.url + "?db=1"])
        with pytest.raises(EngineConfigError, match="same server"):
            await backend.start()
    run(main())


def test_unreachable_engine_is_a_clear_error(tmp_path):
    async def main():
        backend = RedisBackend([f"unix://{tmp_path}/nothing.sock"], socket_timeout=1)
        with pytest.raises(EngineUnavailable, match="cannot reach"):
            await backend.start()
    run(main())


def test_engine_urls():
    assert check_url("redis://127.0.0.1:6379/0") == "redis"
    assert check_url("rediss://engine.example:6380") == "rediss"
    assert check_url("unix:///run/redis.sock") == "unix"
    assert check_url("redis://msgr@127.0.0.1") == "redis"  # an ACL user, no password
    with pytest.raises(EngineConfigError, match="no password"):
        check_url("redis://:hunter2@127.0.0.1")
    with pytest.raises(EngineConfigError, match="redis://"):
        check_url("http://127.0.0.1")
    with pytest.raises(EngineConfigError, match="prefix"):
        RedisBackend(["redis://127.0.0.1"], prefix="a{b}")


def test_rediss_engine_over_tls(tmp_path):
    """rediss:// with the engine's CA given in the URL's query (ssl_ca_certs)."""
    tls_contexts(tmp_path)  # a self-signed certificate for localhost
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    port = free_port()
    with engine_running("--tls-port", str(port), "--tls-cert-file", str(cert),
                        "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                        "--tls-auth-clients", "no") as proc:
        async def main():
            url = f"rediss://localhost:{port}/0?ssl_ca_certs={cert}"
            async with node(url, clock=Clock()) as (be, _):
                await be.claim("bob", KEY_B, "1")
                held = await be.send("alice", "bob", "over tls", "msg", 5)
                assert [h.id for h in await be.fetch("bob", "1")] == [held.id]
            other = tmp_path / "other"
            other.mkdir()
            tls_contexts(other)  # a CA that did not sign the engine's certificate
            stranger = RedisBackend([f"rediss://localhost:{port}/0?ssl_ca_certs="
                                     f"{other / 'cert.pem'}"], socket_timeout=2)
            with pytest.raises(EngineUnavailable, match="cannot reach"):
                await stranger.start()
        run(main())
        assert proc.ping()


def test_an_engine_with_a_password():
    with engine_running("--requirepass", "correct horse") as proc:
        async def main():
            async with node(proc.url, clock=Clock(), password="correct horse") as (be, _):
                await be.send("alice", "bob", "x", "msg", 5)
            for wrong in (None, "wrong"):
                backend = RedisBackend([proc.url], password=wrong)
                with pytest.raises(EngineConfigError, match="refused the password"):
                    await backend.start()
        run(main())


def test_limits_come_from_the_relay_config():
    from msgrlib.relay.config import RelayConfig

    config = RelayConfig(mailbox_messages=7, store_bytes=1 << 20, claim_ttl=90, hs_burst=3)
    limits = EngineLimits.from_config(config, lease=4.0)
    assert (limits.mailbox_messages, limits.store_bytes, limits.claim_ttl, limits.hs_burst,
            limits.ttl_max, limits.lease) == (7, 1 << 20, 90, 3, config.ttl_max, 4.0)


# -- several shards -----------------------------------------------------------------


def test_two_shards_route_names_and_forward_expired_reports():
    names = [f"user{i}" for i in range(40)]
    assert {shard_of(n, 2) for n in names} == {0, 1}
    sender = next(n for n in names if shard_of(n, 2) == 0)
    recipient = next(n for n in names if shard_of(n, 2) == 1)
    with engine_running() as one, engine_running() as two:
        async def main():
            clock = Clock()
            async with node([one.url, two.url], clock=clock, run_tasks=True) as (be, events):
                epochs = {be.shards[0].epoch, be.shards[1].epoch}
                assert len(epochs) == 2 and be.epoch not in epochs and len(be.epoch) == 16
                await be.claim(sender, KEY_A, "1")
                await be.claim(recipient, KEY_B, "2")
                held = await be.send(sender, recipient, "x", "msg", 5)
                assert await events.wait_for(lambda e: isinstance(e, Deliver)) == \
                    Deliver("2", held)
                assert two.command("EXISTS", f"msgr:{{{recipient}}}:q") == b":1\r\n"
                assert one.command("EXISTS", f"msgr:{{{recipient}}}:q") == b":0\r\n"
                clock.advance(5)
                event = await events.wait_for(lambda e: isinstance(e, Expired))
                assert event == Expired("1", held.id, recipient)
                # The sender offline when it expires: the report waits on its shard.
                second = await be.send(sender, recipient, "y", "msg", 5)
                await be.release(sender, "1")
                events.clear()
                clock.advance(5)
                await asyncio.sleep(0.3)  # the expirers run
                assert not any(isinstance(e, Expired) for e in events)
                await be.claim(sender, KEY_A, "3")
                await be.fetch(sender, "3")
                assert Expired("3", second.id, recipient) in events
        run(main())


# -- the engine behaves as the in-memory store ----------------------------------------

NAMES = ["alice", "bob", "carol"]
UNIT = memstore.OVERHEAD_BYTES + 20
LIMITS = {"mailbox_messages": 4, "mailbox_bytes": 3 * UNIT, "store_bytes": 7 * UNIT}
# Shares of 2 units per name, address and recipient; 2 units kept for handshakes.
SHARED_LIMITS = {**LIMITS, "share_bytes": 2 * UNIT, "hs_reserve_bytes": 2 * UNIT}
# Bodies of a few lengths, so that the byte limits are met exactly, and any
# text now and then; two recipients, so that mailboxes fill up.
bodies = st.one_of(st.sampled_from(["x" * 20] * 4 + ["", "x" * 10, "é\n" * 5]),
                   st.text(max_size=40))
operations = st.lists(st.one_of(
    st.tuples(st.just("send"), st.sampled_from(NAMES), st.sampled_from(NAMES[1:])
              | st.sampled_from(NAMES), bodies, st.sampled_from(["msg", "hs"]),
              st.sampled_from([5, 10, 30, 60]) | st.integers(5, 60),
              st.sampled_from(["192.0.2.1", "2001:db8::/64"])),
    st.tuples(st.just("ack"), st.sampled_from(NAMES), st.integers(0, 30)),
    st.tuples(st.just("wait"), st.sampled_from([5, 10, 30]) | st.integers(0, 30)),
), min_size=4, max_size=40)


@pytest.fixture(scope="module")
def shared_engine():
    with engine_running() as proc:
        yield proc


@settings(max_examples=int(os.environ.get("MSGR_FUZZ_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@pytest.mark.parametrize("limits", [LIMITS, SHARED_LIMITS], ids=["plain", "shares"])
@given(ops=operations)
def test_engine_matches_the_memory_store(shared_engine, limits, ops):
    """Random send/ack/expire sequences: same refusals (same codes and
    sentences), same ids (from the same start), same mailboxes, same expiry
    order, same byte accounting, with and without store shares."""
    shared_engine.command("FLUSHALL")

    async def main():
        clock = Clock(1_000_000_000)
        async with node(shared_engine.url, clock=clock, **limits) as (be, _):
            for name in NAMES:
                await be.claim(name, KEY_A, name)
            first = int(await be.shards[0].redis.get("msgr:ids")) + 1
            mem = memstore.MemoryStore(first_id=first, **limits)
            sent: list[int] = []
            for op in ops:
                now = clock.ms / 1000
                if op[0] == "send":
                    _, sender, to, body, kind, ttl, origin = op
                    try:
                        expect: Any = mem.add(sender, to, body, kind, ttl, now, now, origin).id
                    except memstore.StoreError as err:
                        expect = (err.code, str(err))
                    try:
                        got: Any = (await be.send(sender, to, body, kind, ttl,
                                                  origin=origin)).id
                    except memstore.StoreError as err:
                        got = (err.code, str(err))
                    assert got == expect, op
                    if isinstance(got, int):
                        sent.append(got)
                elif op[0] == "ack":
                    _, name, pick = op
                    msg_id = sent[pick % len(sent)] if sent else first
                    expect = mem.ack(name, msg_id) is not None
                    assert await be.ack(name, name, [msg_id]) == int(expect), op
                else:
                    clock.advance(op[1])
                    expect = [(h.id, h.sender, h.recipient) for h in
                              mem.pop_expired(clock.ms / 1000)]
                    _, nxt, got = await be.expire_once(0)
                    assert got == expect, op
                    mem_next = mem.next_expiry()
                    # The engine's deadline may be a lapsing claim (none here).
                    assert nxt == (None if mem_next is None else round(mem_next * 1000))
                for name in NAMES:
                    waiting = await be.fetch(name, name)
                    assert [(h.id, h.body, h.kind, h.ttl) for h in waiting] == \
                        [(h.id, h.body, h.kind, h.ttl) for h in mem.waiting(name)]
                raw = await be.shards[0].redis.get("msgr:bytes")
                assert int(raw or 0) == mem.bytes
    run(main())


# One name: names are independent of each other in the engine, and one name
# makes the rare sequences (release, send, wait to the boundary, claim with
# another key) common enough to be found.
claim_operations = st.lists(st.one_of(
    st.tuples(st.just("claim"), st.sampled_from(NAMES[:1]), st.integers(0, 1)),
    # Mostly from the connection holding the name; sometimes from a stale one.
    st.tuples(st.just("release"), st.sampled_from(NAMES[:1]),
              st.sampled_from(["holder", "holder", "holder", "stale"]), st.booleans()),
    st.tuples(st.just("send"), st.sampled_from([5, 10, 20]).flatmap(
        lambda ttl: st.tuples(st.just("send"), st.sampled_from(NAMES[:1]), st.just(ttl)))),
    # Whole multiples of 5 s: claim_ttl and TTL boundaries are met exactly.
    st.tuples(st.just("wait"), st.sampled_from([5, 10]), st.booleans()),
), min_size=4, max_size=40)


@settings(max_examples=int(os.environ.get("MSGR_FUZZ_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ops=claim_operations)
def test_claims_follow_the_relays_rules(shared_engine, ops):
    """Random claims, releases, messages and time against a model of the
    relay's rules: a name is bound to its key while connected, for claim_ttl
    after its last connection ends, and while messages wait for it (when the
    expirer looks, the claim goes as the in-memory relay's tick deletes it);
    the same key always takes it back (replacing a connected one); a release
    counts only from the connection holding it."""
    shared_engine.command("FLUSHALL")
    claim_ttl = 10
    keys = [KEY_A, KEY_B]

    async def main():
        clock = Clock(1_000_000_000)
        async with node(shared_engine.url, clock=clock, claim_ttl=claim_ttl,
                        ttl_max=20) as (be, _):
            claims: dict[str, dict[str, Any]] = {}  # the model
            expiries: dict[str, list[int]] = {n: [] for n in NAMES}
            conns = 0
            for op in ops:
                now = clock.ms
                waiting = {n: sum(1 for e in expiries[n] if e > now) for n in NAMES}
                if op[0] == "claim":
                    _, name, k = op
                    conns += 1
                    conn = str(conns)
                    model = claims.get(name)
                    if model is not None and model["key"] != k:
                        lapsed = (model["conn"] is None
                                  and now - model["released"] >= claim_ttl * 1000
                                  and not waiting[name])
                        if not lapsed:
                            with pytest.raises(NameOwned) as info:
                                await be.claim(name, keys[k], conn)
                            assert info.value.connected == (model["conn"] is not None), op
                            assert info.value.waiting == waiting[name], op
                            continue
                        model = None
                    got = await be.claim(name, keys[k], conn)
                    replaced = model["conn"] if model is not None else None
                    assert got.replaced == replaced, op
                    claims[name] = {"key": k, "conn": conn, "released": 0, "lapse_at": None}
                elif op[0] == "release":
                    _, name, which, bye = op
                    model = claims.get(name)
                    holder = model["conn"] if model is not None else None
                    conn = holder if which == "holder" and holder else str(conns + 1)
                    expect = model is not None and model["conn"] == conn
                    assert await be.release(name, conn, bye=bye) == expect, op
                    if expect:
                        model.update(conn=None, released=now, lapse_at=now + claim_ttl * 1000)
                elif op[0] == "send":
                    _, name, ttl = op[1]
                    held = await be.send("zed", name, "x", "msg", ttl)
                    expiries[name].append(round(held.expires_at * 1000))
                else:
                    clock.advance(op[1])
                    if not op[2]:
                        continue  # the expirer is late: the claim rules still hold
                    await be.expire_once(0)
                    # The in-memory relay's tick: a claim whose hold is over is
                    # deleted, or looked at again ttl_max later if messages wait.
                    now = clock.ms
                    for name, model in list(claims.items()):
                        if model["lapse_at"] is None or model["lapse_at"] > now:
                            continue
                        if any(e > now for e in expiries[name]):
                            model["lapse_at"] = now + 20_000
                        else:
                            del claims[name]
    run(main())


# -- invites (nameplates) ------------------------------------------------------------


def test_the_join_budget_of_an_address_is_shared_by_every_node(engine):
    """Each join uses an invite up, right code or not: an address's join budget
    is kept in the engine, so N relays (or workers) do not give it N budgets."""
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock, run_tasks=True, lease=10) as (a, _), \
                node(engine.url, clock=clock, run_tasks=True, lease=10) as (b, _):
            number, _ = await a.allocate_nameplate("alice", "7", 600)
            for n, backend in enumerate((a, b, a)):  # the burst, over both nodes
                with pytest.raises(NameplateError) as err:
                    await backend.join_nameplate(900 + n, "mallory", origin="198.51.100.7",
                                                 rate=1 / 6, burst=3)
                assert err.value.code == "no_nameplate"
            with pytest.raises(NameplateError) as err:
                await b.join_nameplate(number, "mallory", origin="198.51.100.7",
                                       rate=1 / 6, burst=3)
            assert err.value.code == "rate_limited"
            # Refused before it looked: alice's invite is still there for bob,
            # whose address has its own budget.
            assert await b.join_nameplate(number, "bob", origin="203.0.113.9",
                                          rate=1 / 6, burst=3) == "alice"
            clock.advance(6)  # one token back for the first address
            with pytest.raises(NameplateError) as err:
                await a.join_nameplate(901, "mallory", origin="198.51.100.7",
                                       rate=1 / 6, burst=3)
            assert err.value.code == "no_nameplate"
    run(main())


def test_nameplates_are_shared_by_every_node(engine):
    """An invite made through node a is joined through node b; a hears it.
    Smallest free numbers, own number, cancel, lapse, a connection's end and
    a reaped node, as the in-memory table (tests/unit/invite)."""
    async def main():
        clock = Clock()
        async with node(engine.url, clock=clock, run_tasks=True, lease=10) as (a, a_events), \
                node(engine.url, clock=clock, run_tasks=True, lease=10) as (b, _):
            assert await a.allocate_nameplate("alice", "7", 5) == (1, T0 / 1000 + 5)
            assert (await a.allocate_nameplate("alice", "7", 5))[0] == 2
            with pytest.raises(NameplateError) as err:
                await b.join_nameplate(1, "alice")
            assert err.value.code == "own_nameplate"
            assert await b.join_nameplate(1, "bob") == "alice"
            assert await a_events.wait_for(lambda e: isinstance(e, InviteJoined)) == \
                InviteJoined("7", 1, "bob")
            with pytest.raises(NameplateError) as err:
                await b.join_nameplate(1, "carol")  # used: a second join learns nothing
            assert err.value.code == "no_nameplate"
            assert (await a.allocate_nameplate("dave", "8", 5))[0] == 1  # freed: reused
            assert not await a.cancel_nameplate(1, "alice")  # not hers
            assert await a.cancel_nameplate(1, "dave")
            for _ in range(2):
                await a.allocate_nameplate("alice", "7", 5)
            with pytest.raises(NameplateError) as err:
                await a.allocate_nameplate("alice", "9", 5, max_per_owner=3)
            assert err.value.code == "too_many_nameplates"
            assert await a.cancel_nameplates("alice", "7") == 3  # connection 7 ended
            # Lapse: the owner's node is told.
            await a.allocate_nameplate("erin", "10", 5)
            clock.advance(5)
            assert await a_events.wait_for(lambda e: isinstance(e, InviteLapsed)) == \
                InviteLapsed("10", 1)
            # A reaped node's invites go with its names.
            number, _ = await a.allocate_nameplate("frank", "11", 600)
            clock.advance(11)
            await b.renew_once(0)  # a's lease lapsed: its names and invites go
            with pytest.raises(NameplateError) as err:
                await b.join_nameplate(number, "bob")
            assert err.value.code == "no_nameplate"
    run(main())


def test_a_lapsed_nameplate_cannot_be_cancelled_and_its_owner_hears_it_lapsed(engine):
    """As the in-memory table: cancel first forgets what lapsed, so a number
    due but not yet popped by an expirer answers "not yours" (the client is
    told no_nameplate) and its owner's node hears it lapsed, not cancelled."""
    async def main():
        clock = Clock()
        # expire_poll 60: the expirer, idle at the start, sleeps through this test.
        async with node(engine.url, clock=clock, run_tasks=True, lease=10,
                        expire_poll=60) as (a, a_events):
            number, _ = await a.allocate_nameplate("alice", "7", 5)
            clock.advance(5)
            assert not await a.cancel_nameplate(number, "alice")
            assert await a_events.wait_for(lambda e: isinstance(e, InviteLapsed)) == \
                InviteLapsed("7", number)
    run(main())
