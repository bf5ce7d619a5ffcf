"""The per-conversation registry: routing plaintexts to machines, limits, lingering."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from msgrlib.transfer import messages as m
from msgrlib.transfer.errors import TransferProtocolError, TransferStateError
from msgrlib.transfer.files import BytesSource, MemorySink, prepare_secret
from msgrlib.transfer.machine import Completed, Failed, ReceiverState, SenderState
from msgrlib.transfer.registry import Offered, Transfers


def tid(n: int) -> str:
    return f"{n:032x}"


def through_the_ratchet_plaintext(obj: dict) -> dict:
    """What the peer's chat core hands on: a chunk as its binary plaintext, the rest JSON."""
    from msgrlib.client.ratchet_mode import parse_inner
    from msgrlib.transfer.messages import encode_chunk_plaintext

    if obj["k"] == "xfer.chunk":
        return parse_inner(encode_chunk_plaintext(obj))
    return parse_inner(json.dumps(obj).encode())


def exchange(a: Transfers, b: Transfers, now: float = 0.0,
             rounds: int = 1000) -> dict[str, MemorySink]:
    """Deliver everything both ways (through the plaintext the ratchet seals) until quiet;
    b accepts new offers into memory sinks, returned by transfer id."""
    sinks: dict[str, MemorySink] = {}
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for obj in src.take_outgoing():
                dst.handle(through_the_ratchet_plaintext(obj), now)
                moved = True
        for t, event in b.take_events():
            if isinstance(event, Offered) and event.receiver.problem is None:
                size = event.receiver.offer.size
                sinks[t] = MemorySink(max_size=size)
                event.receiver.accept(sinks[t], now)
                b.after_local(t, now)
        if not moved:
            return sinks
    raise AssertionError("the exchange did not settle")


def test_two_secrets_at_once_each_arrive_once():
    alice, bob = Transfers(), Transfers()
    secrets = {tid(1): b"first secret", tid(2): b"second secret"}
    for t, data in secrets.items():
        prepared = prepare_secret(data, t)
        alice.send(prepared.offer, prepared.source, 0.0)
    sinks = exchange(alice, bob)
    for t, data in secrets.items():
        assert bob.get(t).state is ReceiverState.DONE
        assert sinks[t].take() == data
        assert alice.get(t).state is SenderState.DONE
    done = [t for t, e in alice.take_events() if e == Completed()]
    assert sorted(done) == sorted(secrets)


def test_offers_beyond_the_limit_are_declined_at_once():
    alice, bob = Transfers(max_active=10), Transfers(max_active=2)
    for n in range(3):
        p = prepare_secret(b"x", tid(n))
        alice.send(p.offer, p.source, 0.0)
    for obj in alice.take_outgoing():
        bob.handle(obj, 0.0)
    offered = [t for t, e in bob.take_events() if isinstance(e, Offered)]
    assert offered == [tid(0), tid(1)]
    (decline,) = bob.take_outgoing()
    assert decline["k"] == "xfer.decline" and decline["t"] == tid(2)


def test_the_sender_side_limit_and_id_reuse_are_caller_errors():
    alice = Transfers(max_active=1)
    p = prepare_secret(b"x", tid(1))
    alice.send(p.offer, p.source, 0.0)
    with pytest.raises(TransferStateError):
        alice.send(p.offer, p.source, 0.0)
    q = prepare_secret(b"y", tid(2))
    with pytest.raises(TransferStateError):
        alice.send(q.offer, q.source, 0.0)


def test_messages_for_unknown_transfers_are_dropped():
    bob = Transfers()
    bob.handle(m.Chunk(tid(9), 0, b"x").to_obj(), 0.0)
    bob.handle(m.Done(tid(9)).to_obj(), 0.0)
    assert bob.take_outgoing() == [] and bob.take_events() == []


def test_a_malformed_message_for_a_known_transfer_fails_it_on_both_sides():
    alice, bob = Transfers(), Transfers()
    p = prepare_secret(b"abc", tid(1))
    alice.send(p.offer, p.source, 0.0)
    for obj in alice.take_outgoing():
        bob.handle(obj, 0.0)
    bob.take_events()
    bob.handle({"k": "xfer.chunk", "t": tid(1), "i": 0, "data": "not base64!"}, 0.0)
    (fail,) = bob.take_outgoing()
    assert fail["k"] == "xfer.fail" and fail["code"] == "protocol"
    alice.handle(fail, 0.0)
    (event,) = [e for _, e in alice.take_events() if isinstance(e, Failed)]
    assert event.by_peer and alice.get(tid(1)).state is SenderState.FAILED


@pytest.mark.parametrize("obj", [{"k": "xfer.chunk"}, {"k": "xfer.nope", "t": tid(1)},
                                 {"k": "xfer.done", "t": 5}])
def test_a_malformed_message_naming_no_known_transfer_raises_our_error(obj):
    with pytest.raises(TransferProtocolError):
        Transfers().handle(obj, 0.0)


def test_finished_transfers_linger_then_are_forgotten():
    alice, bob = Transfers(linger=30), Transfers(linger=30)
    p = prepare_secret(b"abc", tid(1))
    alice.send(p.offer, p.source, 0.0)
    exchange(alice, bob)
    assert bob.get(tid(1)).state is ReceiverState.DONE
    # Within the linger time, a repeated last chunk still gets xfer.done.
    bob.handle(m.Chunk(tid(1), 0, b"abc").to_obj(), 10.0)
    assert bob.take_outgoing() == [m.Done(tid(1)).to_obj()]
    bob.tick(29.0)
    assert tid(1) in bob
    bob.tick(31.0)
    alice.tick(31.0)
    assert tid(1) not in bob and tid(1) not in alice
    assert bob.active == 0


def test_resume_and_tick_reach_every_transfer():
    alice = Transfers()
    data = os.urandom(100)
    offer = m.Offer(tid(3), "secret", "", 100, "text/plain", hashlib.sha256(data).hexdigest(),
                    16)
    alice.send(offer, BytesSource(data), 0.0)
    alice.take_outgoing()  # the offer is lost
    alice.resume(1.0)
    assert alice.take_outgoing() == [offer.to_obj()]
    alice.tick(12.0)  # no answer for a while: the offer is repeated
    assert alice.take_outgoing() == [offer.to_obj()]
