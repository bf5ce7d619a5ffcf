"""A message the receiver refuses past its deadline is reported to its sender
(found by tools/soak_cluster.py: static-mode messages were lost silently when
their recipient came back in the last second of their TTL)."""

from __future__ import annotations

from chatnet import Net

from msgrlib.client import core as chat
from msgrlib.client.static_mode import STATIC_GRACE


def _late_delivery(mode: chat.Mode) -> Net:
    """alice sends bob one message (TTL 10 s) while he is away; he comes back
    0.5 s before its deadline, when his client refuses it."""
    net = Net()
    alice = net.core("alice", "bob", mode=mode, ttl=10)
    bob = net.core("bob", "alice", mode=mode)
    net.attach(alice)
    net.attach(bob)
    net.pump()
    net.detach("bob")
    alice.send("just too late")
    net.pump()
    assert net.of("alice", chat.Accepted)
    net.advance(9.5)
    net.attach(bob)
    net.pump()
    assert net.received("bob") == []
    assert [n.code for n in net.of("bob", chat.Notice)][-1] == "past_deadline"
    return net


def test_a_static_message_refused_past_its_deadline_is_reported_not_delivered():
    """The static sender's only report is the relay's ``expired``: the
    receiver must leave the refused message unacknowledged so the relay
    reports it when its TTL ends (the old client acknowledged it, the relay
    deleted it as read, and the sender settled it as delivered)."""
    net = _late_delivery(chat.Mode.STATIC)
    net.advance(1)          # the relay's TTL ends: it reports the message unread
    net.advance(STATIC_GRACE)
    undelivered = net.of("alice", chat.Undelivered)
    assert [u.n for u in undelivered] == [1], net.events["alice"]
    assert "expired at the relay before bob read it" in undelivered[0].reason


def test_a_refused_message_handed_out_again_is_still_not_acknowledged():
    """After a reconnect the relay hands the refused message out again: bob's
    client drops it as seen, and still does not acknowledge it."""
    net = _late_delivery(chat.Mode.STATIC)
    bob = net.peers["bob"][0]
    net.detach("bob")
    net.attach(bob)
    net.pump()
    assert net.received("bob") == []
    net.advance(1)
    net.advance(STATIC_GRACE)
    assert [u.n for u in net.of("alice", chat.Undelivered)] == [1]


def test_a_default_mode_message_refused_past_its_deadline_is_reported_once():
    net = _late_delivery(chat.Mode.RATCHET)
    net.advance(1)
    net.advance(STATIC_GRACE)
    assert [u.n for u in net.of("alice", chat.Undelivered)] == [1]


def test_a_static_message_typed_offline_carries_the_time_it_was_typed():
    """The TTL runs from when a message was typed (PROTOCOL.md 6.5). The
    static box was sealed with the time it was sealed: one typed while the
    sender was offline and sent 5 s later got a deadline 5 s later at its
    receiver than at its sender and its relay, so the receiver showed it
    after its sender's deadline, and even as the relay reported it expired."""
    net = Net()
    alice = net.core("alice", "bob", mode=chat.Mode.STATIC, ttl=10)
    bob = net.core("bob", "alice", mode=chat.Mode.STATIC)
    net.attach(alice)
    net.attach(bob)
    net.pump()
    net.detach("alice")
    net.detach("bob")
    typed = net.clock.now + 1.7e9
    alice.send("typed offline")
    net.advance(5)
    net.attach(alice)               # sent now, with 5 s of its TTL left
    net.pump()
    net.advance(4.5)                # bob comes back 0.5 s before its deadline
    net.attach(bob)
    net.pump()
    assert net.received("bob") == [], "shown in the last second of its TTL"
    net.advance(1)
    net.advance(STATIC_GRACE)
    assert [u.n for u in net.of("alice", chat.Undelivered)] == [1]
    # And one bob is there for shows the time it was typed.
    net.detach("alice")
    typed = net.clock.now + 1.7e9
    alice.send("typed offline too")
    net.advance(3)
    net.attach(alice)
    net.pump()
    shown = [e for e in net.of("bob", chat.Received) if e.text == "typed offline too"]
    assert [e.sent_at for e in shown] == [round(typed, 3)]


def test_an_expired_report_that_comes_after_the_grace_is_still_reported():
    """Under load a relay's engine calls queue up, and its ``expired`` report
    came 14 s after the TTL; the static sender had forgotten the message 5 s
    after it, so it was lost without a report. Now it is reported, late."""
    net = Net()
    alice = net.core("alice", "bob", mode=chat.Mode.STATIC, ttl=10)
    bob = net.core("bob", "alice", mode=chat.Mode.STATIC)
    net.attach(alice)
    net.attach(bob)
    net.pump()
    net.detach("bob")
    alice.send("nobody reads this in time")
    net.pump()
    relay_id = alice.outbox[1].relay_id
    # The relay's expirer is behind: only alice's clock moves on.
    net.clock.now += 10 + STATIC_GRACE + 10
    alice.tick()
    net.events["alice"].extend(alice.take_events())
    assert not alice.outbox and not net.of("alice", chat.Undelivered)
    net.relay.tick()        # the report, 15 s late
    net.pump()
    net.relay.tick()
    undelivered = net.of("alice", chat.Undelivered)
    assert [(u.n, u.reason) for u in undelivered] == [
        (1, "it expired at the relay before bob read it (reported late)")]
    assert alice.failed() == [1]
    # A second copy of the report (the engine keeps them for the next
    # sign-in) changes nothing.
    alice.handle({"type": "expired", "id": relay_id, "to": "bob"})
    assert not alice.take_events()


def test_the_late_report_window_is_bounded_in_time():
    from msgrlib.client.static_mode import LATE_REPORT_WINDOW

    net = Net()
    alice = net.core("alice", "bob", mode=chat.Mode.STATIC, ttl=10)
    net.attach(alice)
    net.pump()
    alice.send("to nobody")
    net.pump()
    relay_id = alice.outbox[1].relay_id
    net.clock.now += 10 + STATIC_GRACE
    alice.tick()
    net.clock.now += LATE_REPORT_WINDOW + 1
    alice.tick()
    alice.handle({"type": "expired", "id": relay_id, "to": "bob"})
    assert not [e for e in alice.take_events() if isinstance(e, chat.Undelivered)]
