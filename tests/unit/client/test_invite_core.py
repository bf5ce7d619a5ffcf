"""Invite mode in the chat core, against the real relay logic in memory (test_chat's Net).

One handshake per invite: a failed confirmation burns it on both sides at once, an
initiator whose tag went unanswered counts that as the guess, a spent code starts no second
handshake, and ``xfer.*`` messages run beside the chat without touching its outbox.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from chatnet import KEY, OTHER_KEY, Net

from msgrlib.client import core as chat
from msgrlib.crypto import handshake
from msgrlib.transfer import Offered, Transfers
from msgrlib.transfer.files import MemorySink, prepare_secret
from msgrlib.transfer.machine import Completed


def hs_kind(frame: dict[str, Any]) -> str | None:
    if frame.get("kind") != "hs":
        return None
    msg = json.loads(base64.b64decode(frame["body"][3:]))
    return msg.get("hs") if msg.get("hs") in ("abort", "req") else handshake.kind_of(msg)


def burned(net: Net, name: str) -> bool:
    return any(e.code == "invite_burned" for e in net.of(name, chat.Notice))


def test_one_wrong_code_burns_the_invite_on_both_sides_at_once() -> None:
    net = Net()
    alice = net.core("alice", "bob", invite=True)
    bob = net.core("bob", "alice", key=OTHER_KEY, invite=True)
    net.attach(alice)
    net.attach(bob)
    net.pump()
    assert alice.locked and bob.locked
    assert burned(net, "alice") and burned(net, "bob")
    # The right code afterwards gets nowhere: the invite is spent.
    net.detach("bob")
    bob = net.core("bob", "alice", invite=True)
    net.attach(bob)
    net.pump()
    net.advance(40)
    assert alice.session is None and bob.session is None


def test_an_initiator_whose_tag_got_no_confirm_counts_it_as_the_guess() -> None:
    """A fake responder learns one guess from the initiator's share and stays silent:
    without this, the initiator would time out and try again, a guess each time."""
    net = Net()
    alice = net.core("alice", "bob", invite=True)  # sorts first: the initiator
    bob = net.core("bob", "alice", invite=True)
    net.attach(alice)
    net.attach(bob)
    net.pump(drop=lambda f: hs_kind(f) == "confirm")
    assert alice.session is None and not alice.locked
    net.advance(chat.HANDSHAKE_TIMEOUT + 1)
    assert alice.locked and burned(net, "alice")
    shares = [f for f in net.tap if hs_kind(f) == "share"]
    net.advance(chat.HANDSHAKE_TIMEOUT * 3)
    assert [f for f in net.tap if hs_kind(f) == "share"] == shares  # no second attempt


def test_a_spent_code_starts_no_second_handshake() -> None:
    net = Net()
    alice = net.core("alice", "bob", invite=True)
    bob = net.core("bob", "alice", invite=True)
    net.attach(alice)
    net.attach(bob)
    net.pump()
    assert alice.session is not None and bob.session is not None
    inits = len([f for f in net.tap if hs_kind(f) == "init"])
    # Bob's client restarts (or someone holding his name asks): alice does not answer.
    net.detach("bob")
    bob = net.core("bob", "alice", invite=True)
    net.attach(bob)
    net.pump()
    net.advance(5)
    assert len([f for f in net.tap if hs_kind(f) == "init"]) == inits
    assert bob.session is None


def test_a_secret_goes_through_the_session_outside_the_chat_outbox() -> None:
    net = Net()
    alice = net.core("alice", "bob", invite=True, transfers=Transfers())
    bob = net.core("bob", "alice", invite=True, transfers=Transfers())
    net.attach(alice)
    net.attach(bob)
    net.pump()
    prepared = prepare_secret(b"correct horse battery staple", "ab" * 16)
    alice.send_transfer(prepared.offer, prepared.source)
    net.pump()
    offered = [e.event.receiver for e in net.of("bob", chat.TransferEvent)
               if isinstance(e.event, Offered)]
    assert len(offered) == 1 and offered[0].offer.kind == "secret"
    sink = MemorySink(max_size=1024)
    offered[0].accept(sink, net.clock.now)
    bob.transfer_answered(offered[0].transfer_id)
    net.pump()
    for name in ("alice", "bob"):
        assert any(isinstance(e.event, Completed) for e in net.of(name, chat.TransferEvent))
    assert sink.take() == b"correct horse battery staple"
    # Never chat: nothing shown, nothing in the outbox, no receipts owed for it.
    assert net.received("bob") == [] and alice.outbox == {} and bob.outbox == {}
    assert net.of("alice", chat.Delivered) == [] and alice.quiet() and bob.quiet()


def test_a_chat_without_transfers_ignores_an_offer_with_a_notice() -> None:
    net = Net()
    alice = net.core("alice", "bob", transfers=Transfers())
    bob = net.core("bob", "alice")
    net.attach(alice)
    net.attach(bob)
    net.pump()
    prepared = prepare_secret(b"x", "cd" * 16)
    alice.send_transfer(prepared.offer, prepared.source)
    net.pump()
    assert [e.code for e in net.of("bob", chat.Notice)] == ["transfer_ignored"]
    assert KEY != OTHER_KEY


# -- the rendezvous, sans-I/O, and the nameplate frames' parsers --------------------------

def test_the_rendezvous_table() -> None:
    import os

    import pytest

    from msgrlib import protocol
    from msgrlib.client.invite import InviteError, InviteReady, PeerJoined, Rendezvous
    from msgrlib.invite import parse_code

    inviter = Rendezvous(rng=lambda n: bytes([0x3C, 0x3B][:n]))
    assert inviter.start() == [{"type": "allocate"}]
    with pytest.raises(InviteError):
        inviter.start()
    assert inviter.handle(protocol.Joined(7, "i-early")) == []  # no number yet: not ours
    ready = inviter.handle(protocol.Allocated(7, 600.0))
    assert ready == [InviteReady("7-crossover-clockwork", 600.0)]
    assert inviter.handle(protocol.Joined(8, "i-other")) == []  # another invite's
    assert inviter.handle(protocol.Joined(7, "i-bob")) == [PeerJoined("i-bob")]
    assert inviter.done and inviter.peer == "i-bob"
    assert inviter.key() == bytes.fromhex(
        "d18fef8d6bbb63776a3c45c76893c429b3f73bfdb4e48ea25d9890b952bffd71")  # docs/transfer.md
    joiner = Rendezvous(parse_code("7-crossover-clockwork"), rng=os.urandom)
    assert joiner.start() == [{"type": "join", "nameplate": 7}]
    with pytest.raises(InviteError, match="no invite with that number"):
        joiner.handle(protocol.Error("no_nameplate", "gone"))
    lapsed = Rendezvous(rng=os.urandom)
    lapsed.start()
    lapsed.handle(protocol.Allocated(3, 5.0))
    with pytest.raises(InviteError, match="expired"):
        lapsed.handle(protocol.NameplateGone(3, "expired"))


def test_nameplate_frames_parse_or_raise_frame_error_only() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from msgrlib import protocol

    values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40),
                       st.lists(st.integers(), max_size=3))

    @settings(max_examples=300, deadline=None)
    @given(kind=st.sampled_from(["allocated", "joined", "nameplate_gone", "allocate", "join",
                                 "cancel"]),
           fields=st.dictionaries(st.sampled_from(["nameplate", "ttl", "peer", "reason"]),
                                  values))
    def check(kind: str, fields: dict[str, Any]) -> None:
        obj = {"type": kind, **fields}
        parse = (protocol.parse_client_frame if kind in ("allocate", "join", "cancel")
                 else protocol.parse_relay_frame)
        try:
            frame = parse(obj)
        except protocol.FrameError:
            return
        assert parse(frame.to_json()) == frame  # type: ignore[union-attr]

    check()
