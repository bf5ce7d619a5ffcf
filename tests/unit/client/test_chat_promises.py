"""Promises the chat core keeps against a hostile relay and a name squatter
(issue 13 items 2, 3, 5, 12 and 13; issue 14 items 1 and 8), in memory
through the real relay core (see test_chat.Net)."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from chatnet import OTHER_KEY, Net, _sends, attached, pair

from msgrlib.client import core as chat
from msgrlib.client import window
from msgrlib.client.ratchet_mode import (
    HANDSHAKE_RETRY,
    HANDSHAKE_RETRY_JITTER,
    HANDSHAKE_TIMEOUT,
    RELAY_RETRY_MAX,
    RELAY_RETRY_MIN,
    Phase,
    retry_delay,
)
from msgrlib.relay import rules as relay

FAST = relay.RelayConfig(rate_messages=1e6, burst_messages=1e6, rate_bytes=1e12,
                         burst_bytes=1e12, mailbox_messages=100_000,
                         mailbox_bytes=1 << 30)


def hs_body(msg: dict[str, Any]) -> str:
    return "h1." + base64.b64encode(json.dumps(msg).encode()).decode()


def deliver(core: chat.ChatCore, body: str, *, ident: int, kind: str = "hs",
            sender: str = "bob") -> None:
    core.handle({"type": "deliver", "id": ident, "from": sender, "kind": kind, "ttl": 30,
                 "expires_at": 0, "body": body})


# -- item 2: a message is never shown twice, however many copies ------------------------

def test_more_than_4096_messages_resent_by_a_relay_that_withheld_receipts_show_once():
    """The old receiver remembered the last 4,096 (run, number) pairs: a relay
    that withheld bob's receipts and cut alice's connection got the first
    ones shown again when alice resent everything unconfirmed."""
    net = Net(FAST)
    alice, bob = pair(net)
    count = 4200
    for i in range(count):
        alice.send(f"m{i}")
    withheld = lambda f: f["from"] == "bob" and f["kind"] == "msg"  # noqa: E731
    net.pump(drop=withheld)
    assert len(net.received("bob")) == count
    assert len(alice.unsettled()) == count  # no receipt reached her
    net.detach("alice")
    net.attach(alice)  # she resends every one of them, sealed anew
    net.pump(drop=withheld)
    assert len(net.received("bob")) == count
    assert not [e for e in net.of("bob", chat.Notice) if e.level != "info"]
    net.pump()  # the relay lets receipts through again: all confirmed
    net.detach("alice")
    net.attach(alice)
    net.pump()
    assert len(net.received("bob")) == count
    assert not alice.unsettled()


# -- item 3: deadlines and order ---------------------------------------------------------

def _hold_first(net: Net, held: list[dict[str, Any]]):
    def drop(frame: dict[str, Any]) -> bool:
        if frame["from"] == "alice" and frame["kind"] == "msg" and not held:
            held.append(frame)
            return True
        return False
    return drop


def test_a_message_held_past_not_delivered_is_refused_never_shown_after():
    """A relay held m1, delivered m2 and m3, told alice m1 expired, and later
    delivered m1: it was shown last, silently, after alice was told it was
    not delivered."""
    net = Net()
    alice, bob = pair(net, ttl=10)
    held: list[dict[str, Any]] = []
    alice.send("m1")
    net.pump(drop=_hold_first(net, held))
    alice.send("m2")
    alice.send("m3")
    net.pump()
    assert net.received("bob") == ["m2", "m3"]
    # The relay claims m1 expired: not final (it is not trusted with that).
    out = alice.outbox[1]
    alice.handle({"type": "expired", "id": out.relay_id})
    net.events["alice"].extend(alice.take_events())
    assert not net.of("alice", chat.Undelivered)
    net.advance(10 + window.VERDICT_DELAY)
    assert [(u.n, u.reason) for u in net.of("alice", chat.Undelivered)] == [
        (1, "it expired at the relay before bob read it within its 10 s TTL")]
    bob.handle({**held[0], "id": 99_999})
    net.events["bob"].extend(bob.take_events())
    assert net.received("bob") == ["m2", "m3"]
    assert [e.code for e in net.of("bob", chat.Notice)][-1] == "past_deadline"


def test_static_an_early_expired_report_is_final_only_once_the_receiver_refuses_it():
    """--static: the relay's ``expired`` report failed the message at once,
    though the relay could still deliver it before its deadline: it was shown
    after its sender was told it was not delivered. The report now counts at
    the deadline plus the clocks' tolerance, when the receiver refuses it."""
    net = Net()
    alice = net.core("alice", "bob", mode=chat.Mode.STATIC, ttl=10)
    bob = net.core("bob", "alice", mode=chat.Mode.STATIC)
    net.attach(alice)
    net.attach(bob)
    net.pump()
    held: list[dict[str, Any]] = []
    alice.send("m1")
    net.pump(drop=_hold_first(net, held))
    out = alice.outbox[1]
    alice.handle({"type": "expired", "id": out.relay_id, "to": "bob"})  # early: a lie
    net.events["alice"].extend(alice.take_events())
    assert not net.of("alice", chat.Undelivered)
    net.advance(10 + window.VERDICT_DELAY)
    assert [(u.n, u.reason) for u in net.of("alice", chat.Undelivered)] == [
        (1, "it expired at the relay before bob read it")]
    bob.handle({**held[0], "id": 99_999})
    net.events["bob"].extend(bob.take_events())
    assert net.received("bob") == []
    assert [e.code for e in net.of("bob", chat.Notice)][-1] == "past_deadline"


def test_static_a_message_sealed_after_it_was_typed_keeps_the_typed_deadline():
    """--static sealed a message with the time it was sealed, not typed: one
    typed while the relay was away lived longer at the receiver than its
    sender waits before reporting it, so a relay could get it shown after
    "not delivered"."""
    net = Net()
    alice = net.core("alice", "bob", mode=chat.Mode.STATIC, ttl=20)
    bob = net.core("bob", "alice", mode=chat.Mode.STATIC)
    net.attach(bob)
    typed = alice._wall()
    alice.send("typed while the relay was away")
    net.advance(6)
    net.attach(alice)
    net.pump()
    (got,) = net.of("bob", chat.Received)
    assert got.sent_at == pytest.approx(typed, abs=0.01)  # not 6 s later


def test_a_message_arriving_after_a_later_one_is_shown_marked_late():
    net = Net()
    alice, bob = pair(net)
    held: list[dict[str, Any]] = []
    alice.send("first")
    net.pump(drop=_hold_first(net, held))
    alice.send("second")
    net.pump()
    bob.handle({**held[0], "id": 99_999})
    net.pump()
    got = net.of("bob", chat.Received)
    assert [(r.text, r.late) for r in got] == [("second", False), ("first", True)]
    codes = [e.code for e in net.of("bob", chat.Notice)]
    assert codes == ["late"]
    assert sorted(d.n for d in net.of("alice", chat.Delivered)) == [1, 2]


def test_the_sender_waits_the_clock_tolerance_before_saying_not_delivered():
    net = Net()
    alice, bob = pair(net, ttl=10)
    alice.send("lost")
    net.pump(drop=lambda f: f["from"] == "alice")
    net.advance(10)
    assert not net.of("alice", chat.Undelivered)  # a copy may still arrive in time
    net.advance(window.VERDICT_DELAY)
    assert [u.n for u in net.of("alice", chat.Undelivered)] == [1]


# -- item 5: only a failed key confirmation counts ---------------------------------------

def test_a_squatter_without_the_passcode_cannot_lock_a_client_with_abort_and_req():
    """Anyone holding bob's name while he is away answered each handshake
    start with abort then req: three rounds and alice no longer accepted
    handshakes, so the real bob never got a session."""
    net = Net()
    alice = net.core("alice", "bob")
    net.attach(alice)
    squatter = net.core("bob", "alice", key=OTHER_KEY)  # holds the name, runs no handshake
    net.attach(squatter)
    for round_ in range(6):
        net.pump(drop=lambda f: f["to"] == "bob" if "to" in f else f["from"] == "alice")
        # abort, as the old attack sent it, and one with a made-up nonce pair
        deliver(alice, hs_body({"hs": "abort", "v": 1}), ident=1000 + 3 * round_)
        deliver(alice, hs_body({"hs": "abort", "v": 1, "na": "A" * 22 + "==",
                                "nb": "B" * 22 + "=="}), ident=1001 + 3 * round_)
        req = {"hs": "req", "v": 1, "nr": base64.b64encode(os.urandom(16)).decode()}
        deliver(alice, hs_body(req), ident=1002 + 3 * round_)
        net.events["alice"].extend(alice.take_events())
    assert not alice.locked and alice.phase is Phase.RUNNING
    assert not [e for e in net.of("alice", chat.Notice) if e.code == "passcode_mismatch"]
    # The real bob comes back: a session comes up.
    net.detach("bob")
    bob = net.core("bob", "alice")
    net.attach(bob)
    net.pump()
    net.advance(31)  # the attempt the squatter swallowed times out; a new one runs
    assert alice.session is not None and alice.safety_number == bob.safety_number


def test_an_attacker_who_guesses_wrong_three_times_still_locks_the_client():
    """Each wrong guess (a resp from the wrong passcode, answered by a
    bound abort or a bad confirm) counts."""
    net = Net()
    alice = net.core("alice", "bob")
    net.attach(alice)
    for _ in range(3):
        guesser = net.core("bob", "alice", key=OTHER_KEY)
        net.attach(guesser)
        net.pump()
        net.detach("bob")
    assert alice.locked and alice.phase is Phase.LOCKED
    codes = [e.code for e in net.of("alice", chat.Notice)]
    assert codes.count("passcode_mismatch") == 3


def test_a_copy_of_a_req_does_not_start_another_handshake():
    net = Net()
    alice, bob = attached(net)
    reqs: list[dict[str, Any]] = []

    def keep_req(frame: dict[str, Any]) -> bool:
        if frame.get("kind") == "hs" and chat._parse_hs(frame["body"]).get("hs") == "req":
            reqs.append(frame)
        return False

    net.pump(drop=keep_req)
    sid = alice.session.sid
    assert reqs
    for i, frame in enumerate(reqs * 3):
        alice.handle({**frame, "id": 50_000 + i})
    assert not [f for f in _sends(alice.take_frames()) if f.get("kind") == "hs"]
    assert alice.session.sid == sid



def test_a_req_of_another_version_starts_nothing():
    """PROTOCOL.md 6.2: a ``req`` whose ``v`` is not the integer 1 is dropped."""
    net = Net()
    alice, bob = attached(net)
    net.pump()
    sid = alice.session.sid
    for i, v in enumerate((2, 1.0, True, "1")):
        req = {"hs": "req", "v": v, "nr": base64.b64encode(os.urandom(16)).decode()}
        deliver(alice, hs_body(req), ident=70_000 + i, sender="bob")
    assert not [f for f in _sends(alice.take_frames()) if f.get("kind") == "hs"]
    assert alice.session.sid == sid

# -- item 12: what a relay can make the client hold --------------------------------------

def test_a_flood_of_handshake_starts_under_tiny_rates_holds_one_answer():
    core = Net().core("bob", "alice")
    core.set_limits({"rate_messages": 0.001, "burst_messages": 1})
    core.connected_to_relay()
    core.handle({"type": "presence", "user": "alice", "online": True})
    core.take_frames()  # the req spends the only token
    for i in range(5000):
        init = {"hs": "init", "v": 1, "na": base64.b64encode(os.urandom(16)).decode()}
        deliver(core, hs_body(init), ident=i, sender="alice")
        core.take_frames()
        core.next_deadline()
    assert core._sends.waiting() == 1  # only the newest attempt's answer waits
    assert core._sends.held() < 200  # dead entries are swept, not rescanned


# -- item 13 (third part) and issue 14 item 8: bodies under unknown sessions ------------

def test_a_body_naming_a_session_that_never_existed_says_so():
    net = Net()
    alice, bob = pair(net)
    deliver(alice, f"r1.{os.urandom(16).hex()}.AAAA", ident=77_777, kind="msg")
    notices = [e for e in alice.take_events() if isinstance(e, chat.Notice)]
    assert [n.code for n in notices] == ["unknown_session"]
    assert "never had" in notices[0].text and "earlier session" not in notices[0].text


def test_a_restarted_peer_says_nothing_about_messages_that_will_be_resent():
    net = Net()
    alice, bob = pair(net)
    alice.send("under the old session")
    net.pump(drop=lambda f: f["from"] == "alice" and f["kind"] == "msg")
    net.detach("bob")
    # The relay hands the new bob what the old session left behind.
    bob2 = net.core("bob", "alice")
    net.attach(bob2)
    net.pump()
    assert net.received("bob") == ["under the old session"]
    assert not [e for e in net.of("bob", chat.Notice)], net.of("bob", chat.Notice)


# -- issue 14 item 1: the relay's handshake limit ----------------------------------------

def test_after_the_relays_handshake_limit_the_clients_retry_by_themselves():
    net = Net(relay.RelayConfig(hs_burst=4, hs_per_second=4 / 60))
    alice, bob = pair(net)  # spends the burst
    net.detach("bob")
    bob = net.core("bob", "alice")  # a restart: it needs a new session, refused
    net.attach(bob)
    n = bob.send("waiting for a session")
    net.pump()
    retries = net.of("bob", chat.HandshakeRetry) + net.of("alice", chat.HandshakeRetry)
    assert retries and retries[0].at is not None
    refused = bob if net.of("bob", chat.HandshakeRetry) else alice
    assert refused.phase is Phase.BACKOFF
    assert "next try in" in refused.session_status
    assert refused.handshake_retry_at is not None
    # At worst: an attempt whose answer the relay refused times out, then
    # the initiator's own retry waits out its backoff.
    for _ in range(int(HANDSHAKE_TIMEOUT + HANDSHAKE_RETRY * (1 + HANDSHAKE_RETRY_JITTER)) + 30):
        net.advance(1)
        if bob.session is not None and alice.session is not None \
                and bob.session.sid == alice.session.sid:
            break
    assert alice.safety_number == bob.safety_number is not None
    # The message outlived its 30 s TTL meanwhile: the reason is the real one.
    reasons = [u.reason for u in net.of("bob", chat.Undelivered) if u.n == n]
    assert reasons and "limits handshakes" in reasons[0], reasons


def test_the_relay_says_when_its_handshake_limit_allows_an_attempt_and_clients_wait_that():
    """A refusal's ``retry_after`` (PROTOCOL.md 3.5) is when the pair's bucket
    holds a whole attempt (4 frames) again; the client waits that, plus its
    jitter, instead of a fixed 60 s."""
    net = Net(relay.RelayConfig(hs_burst=4, hs_per_second=0.5))
    alice, bob = pair(net)  # spends the burst
    start = net.clock.now
    net.detach("bob")
    bob = net.core("bob", "alice")
    net.attach(bob)
    refusals: list[dict[str, Any]] = []
    for core in (alice, bob):
        def handle(frame: dict[str, Any], real: Any = core.handle) -> None:
            if frame.get("code") == "handshake_limited":
                refusals.append(frame)
            real(frame)
        core.handle = handle  # type: ignore[method-assign]
    net.pump()
    retries = [r for r in net.of("bob", chat.HandshakeRetry) + net.of("alice", chat.HandshakeRetry)
               if r.at is not None]
    assert retries and refusals
    assert all(type(f["retry_after"]) is int and 1 <= f["retry_after"] <= 8 for f in refusals)
    wait = retries[0].at - (net.clock.now + 1.7e9)
    assert 1 <= wait <= 8 * (1 + HANDSHAKE_RETRY_JITTER) + 1, wait  # 4 tokens at 0.5/s
    for _ in range(60):
        net.advance(1)
        if bob.session is not None and alice.session is not None \
                and bob.session.sid == alice.session.sid:
            break
    assert alice.safety_number == bob.safety_number is not None
    assert net.clock.now - start < 40  # not 60 s plus jitter, nor a handshake timeout


def test_a_relays_retry_after_is_held_to_a_sane_range():
    assert retry_delay(None) == HANDSHAKE_RETRY
    assert retry_delay(float("nan")) == HANDSHAKE_RETRY
    assert retry_delay(7) == 7
    assert retry_delay(0) == retry_delay(-5) == RELAY_RETRY_MIN
    assert retry_delay(float("inf")) == retry_delay(1e12) == RELAY_RETRY_MAX


def test_owed_receipts_and_acks_make_the_io_layer_send_now():
    """Receipts are sealed together when frames are taken; the I/O layer
    only wakes for next_deadline, so owing one must make that 'now' (found
    with real clients: the receipt waited for the next heartbeat)."""
    net = Net()
    alice, bob = pair(net)
    alice.send("x")
    _, alice_client, _ = net.peers["alice"]
    for frame in alice.take_frames():
        net.relay.receive(alice_client, frame)
    _, _, bob_link = net.peers["bob"]
    for frame in bob_link.inbox:
        bob.handle(frame)
    bob_link.inbox.clear()
    assert bob.next_deadline() is not None and bob.next_deadline() <= net.clock.now
    assert [f["type"] for f in bob.take_frames()] == ["ack", "send"]
    assert bob.next_deadline() is None


def test_hostile_welcome_limits_are_ignored_not_raised():
    core = Net().core("alice", "bob")
    core.set_limits({"rate_messages": 10**400, "burst_messages": True, "ttl_min": 10**400,
                     "rate_bytes": float("nan"), "max_frame": -1})
    core.connected_to_relay()
    core.send("still works")
    assert [f["type"] for f in core.take_frames()] == ["watch"]  # waits for a session


# -- the session's state table -----------------------------------------------------------

def test_the_session_table_locks_for_good_and_every_phase_is_reachable():
    from msgrlib.client.ratchet_mode import TRANSITIONS, Ev
    assert not [key for key in TRANSITIONS if key[0] is Phase.LOCKED]
    assert [key for key, target in TRANSITIONS.items() if target is Phase.LOCKED] == [
        (Phase.RUNNING, Ev.LOCK)]
    reached = {Phase.IDLE}
    for _ in range(len(Phase)):
        for (source, _event), target in TRANSITIONS.items():
            if source in reached:
                reached |= set(target) if isinstance(target, tuple) else {target}
    assert reached == set(Phase)


def test_an_abort_to_the_responder_or_before_our_tag_changes_nothing():
    net = Net()
    alice, bob = attached(net)
    held: list[dict[str, Any]] = []
    # Hold bob's resp: alice waits for it (no tag sent yet); bob waits for share.
    net.pump(drop=lambda f: f.get("kind") == "hs" and f["from"] == "bob"
             and chat._parse_hs(f["body"]).get("hs") == "resp" and not held.append(f))
    assert alice.phase is Phase.RUNNING and bob.phase is Phase.RUNNING and held
    resp = chat._parse_hs(held[0]["body"])
    abort = hs_body({"hs": "abort", "v": 1, "na": resp["na"], "nb": resp["nb"]})
    deliver(alice, abort, ident=60_001)              # bound, but alice sent no tag yet
    deliver(bob, abort, ident=60_002, sender="alice")  # to the responder: never valid
    for core in (alice, bob):
        assert core.phase is Phase.RUNNING
        assert not [e for e in core.take_events() if isinstance(e, chat.Notice)]
    alice.handle(held[0])
    net.pump()
    assert alice.safety_number == bob.safety_number is not None
