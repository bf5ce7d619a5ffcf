"""ChatCore against the real relay logic, in memory, with a manual clock.

Two ChatCores and the real :class:`relay.Relay` are wired together through
in-memory links (the relay's sans-I/O core, not a mock), so sessions,
restarts, loss and replays can be driven step by step and deterministically.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from chatnet import KEY, OTHER_KEY, Clock, MemLink, Net, _sends, attached, pair  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgrlib.client import core as chat
from msgrlib.relay import rules as relay


def test_session_messages_both_ways_and_receipts():
    net = Net()
    alice, bob = pair(net)
    assert alice.safety_number == bob.safety_number is not None
    assert len(alice.safety_number.replace(" ", "")) == 40
    n = alice.send("hello bob")
    bob.send("hello alice")
    net.pump()
    assert net.received("bob") == ["hello bob"]
    assert net.received("alice") == ["hello alice"]
    assert [d.n for d in net.of("alice", chat.Delivered)] == [n]
    assert not alice.unsettled() and not bob.unsettled()
    assert alice.outbox == {} and bob.outbox == {}   # confirmed text is not kept
    # The relay only ever saw opaque bodies.
    assert all("hello" not in f["body"] for f in net.tap)


def test_messages_typed_before_the_peer_arrives_wait_for_the_session():
    net = Net()
    alice = net.core("alice", "bob")
    net.attach(alice)
    alice.send("early one")
    alice.send("early two")
    net.pump()
    net.advance(20)   # before bob arrives, within the TTL: still waiting
    assert not net.of("alice", chat.Undelivered)
    bob = net.core("bob", "alice")
    net.attach(bob)
    net.pump()
    assert net.received("bob") == ["early one", "early two"]
    assert len(net.of("alice", chat.Delivered)) == 2


def test_a_message_waiting_for_a_session_ends_with_its_ttl():
    """Found in review: it waited for ever, was hidden from its sender's screen
    at its TTL, and shown to the peer minutes later."""
    net = Net()
    alice = net.core("alice", "bob", ttl=10)
    net.attach(alice)
    alice.send("anyone?")
    net.pump()
    for _ in range(11):
        net.advance(1)
    assert [(u.n, u.reason) for u in net.of("alice", chat.Undelivered)] == [
        (1, "no secure session with bob came up to send it within its 10 s TTL")]
    assert alice.outbox == {}
    bob = net.core("bob", "alice")
    net.attach(bob)
    net.pump()
    assert bob.session is not None and net.received("bob") == []


def test_wrong_passcode_is_detected_not_retried_and_locks_after_three():
    net = Net()
    alice = net.core("alice", "bob")
    bob = net.core("bob", "alice", key=OTHER_KEY)
    net.attach(alice)
    net.attach(bob)
    alice.send("secret")
    net.pump()
    assert net.received("bob") == []
    for name in ("alice", "bob"):
        codes = [e.code for e in net.of(name, chat.Notice)]
        assert "passcode_mismatch" in codes, (name, net.events[name])
    assert alice.session is None and bob.session is None
    # Not retried by itself, even as time passes and presence changes.
    frames_before = len(net.tap)
    net.advance(100)
    assert len([f for f in net.tap[frames_before:] if f["kind"] == "hs"]) == 0
    # Bob restarts twice more with the wrong passcode: alice then locks.
    for _attempt in range(2):
        net.detach("bob")
        bob = net.core("bob", "alice", key=OTHER_KEY)
        net.attach(bob)
        net.pump()
    assert alice.locked
    assert "no longer accepts" in net.of("alice", chat.Notice)[-1].text
    # Bob with the right passcode is now refused by alice until she restarts.
    net.detach("bob")
    bob = net.core("bob", "alice")
    net.attach(bob)
    net.pump()
    assert alice.session is None and net.received("bob") == []


def test_responder_restart_replaces_the_session_and_resends_unconfirmed():
    net = Net()
    alice, bob = pair(net)
    first = alice.safety_number
    # Bob's client dies with a message in flight that he never received.
    lost = alice.send("in flight")
    net.pump(drop=lambda f: f["from"] == "alice" and f["kind"] == "msg")
    net.detach("bob")
    bob2 = net.core("bob", "alice")
    net.attach(bob2)
    net.pump()
    assert alice.safety_number == bob2.safety_number != first
    assert net.received("bob") == ["in flight"]
    assert [d.n for d in net.of("alice", chat.Delivered)] == [lost]
    assert any(e.replaced for e in net.of("alice", chat.SessionStarted))


def test_initiator_restart_too():
    net = Net()
    alice, bob = pair(net)
    pending = bob.send("to the old alice")
    net.pump(drop=lambda f: f["from"] == "bob" and f["kind"] == "msg")
    net.detach("alice")
    alice2 = net.core("alice", "bob")
    net.attach(alice2)
    net.pump()
    assert net.received("alice") == ["to the old alice"]
    assert [d.n for d in net.of("bob", chat.Delivered)] == [pending]


def test_relay_blip_keeps_the_ratchet():
    net = Net()
    alice, bob = pair(net)
    sid = alice.session.sid
    net.detach("bob")
    alice.send("while bob reconnects")
    net.pump()
    net.attach(bob)
    net.pump()
    assert alice.session.sid == bob.session.sid == sid   # no new handshake
    assert net.received("bob") == ["while bob reconnects"]


def test_unconfirmed_message_is_reported_after_its_ttl():
    net = Net()
    alice, bob = pair(net, ttl=10)
    alice.send("into the void")
    net.pump(drop=lambda f: f["from"] == "alice")     # the relay "loses" it
    net.advance(11)
    undelivered = net.of("alice", chat.Undelivered)
    assert [u.n for u in undelivered] == [1]
    assert "10 s" in undelivered[0].reason or "expired" in undelivered[0].reason


def test_replayed_and_tampered_deliveries_are_rejected_and_never_shown_twice():
    net = Net()
    alice, bob = pair(net)
    alice.send("once")
    net.pump()
    original = next(f for f in reversed(net.tap) if f["from"] == "alice" and f["kind"] == "msg"
                    and f["body"].startswith("r1."))
    # A hostile relay re-injects the same ciphertext under a fresh relay id.
    bob.handle({**original, "id": 10_000})
    net.events["bob"].extend(bob.take_events())
    assert net.received("bob") == ["once"]
    assert "replay" in [e.code for e in net.of("bob", chat.Notice)]
    # A fresh message, tampered with in transit: rejected, and the state unchanged,
    # so the untouched original still opens afterwards.
    alice.send("twice")
    held = []
    net.pump(drop=lambda f: f["from"] == "alice" and f["kind"] == "msg" and not held.append(f))
    frame = next(f for f in held if f["body"].startswith("r1."))
    body = frame["body"]
    for i in (len(body) - 5, len(body) - 60, 40):   # ciphertext, MAC region, header
        flipped = body[:i] + ("A" if body[i] != "A" else "B") + body[i + 1:]
        bob.handle({**frame, "id": 10_001 + i, "body": flipped})
    net.events["bob"].extend(bob.take_events())
    assert net.received("bob") == ["once"]
    codes = [e.code for e in net.of("bob", chat.Notice)]
    assert codes.count("forged") + codes.count("bad_message") >= 3, codes
    for f in held:
        bob.handle(f)
    net.pump()
    assert net.received("bob") == ["once", "twice"]


def test_initiator_refuses_an_init_so_a_mitm_cannot_make_both_responders():
    net = Net()
    alice, bob = pair(net)
    assert alice.initiator and not bob.initiator
    # Someone sends alice an "init" as if bob were starting a handshake.
    fake = "h1." + base64.b64encode(b'{"hs":"init","v":1,"na":"AAAAAAAAAAAAAAAAAAAAAA=="}').decode()
    alice.handle({"type": "deliver", "id": 20_000, "from": "bob", "kind": "hs", "ttl": 30,
                  "expires_at": 0, "body": fake})
    assert alice.take_frames() == [{"type": "ack", "ids": [20_000]}]   # no handshake reply
    assert "sorts first" in alice.take_events()[-1].text


def test_message_from_a_stranger_is_ignored():
    net = Net()
    alice, bob = pair(net)
    mallory = net.core("mallory", "alice")
    net.attach(mallory)
    net.relay.receive(net.peers["mallory"][1], {"type": "send", "ref": 1, "to": "alice",
                                                 "ttl": 30, "body": "r1.x"})
    net.pump()
    assert net.received("alice") == []
    assert any(e.code == "stranger" for e in net.of("alice", chat.Notice))


# -- static mode -------------------------------------------------------------------

def test_static_mode_waits_for_an_offline_peer_and_reports_expiry():
    net = Net(relay.RelayConfig(ttl_min=1))
    alice = net.core("alice", "bob", mode=chat.Mode.STATIC, ttl=10)
    net.attach(alice)
    alice.send("waits at the relay")
    net.pump()
    assert not alice.unsettled()                  # accepted by the relay: sent
    assert len(net.of("alice", chat.Accepted)) == 1
    bob = net.core("bob", "alice", mode=chat.Mode.STATIC)
    net.attach(bob)
    net.pump()
    assert net.received("bob") == ["waits at the relay"]
    # A message nobody picks up: its sender is told when the relay drops it.
    net.detach("bob")
    alice.send("nobody reads this")
    net.pump()
    net.advance(11)
    assert [u.n for u in net.of("alice", chat.Undelivered)] == [2]


def test_static_mode_resends_what_a_restarted_relay_lost():
    """Found by review: static mode counted a message as sent once accepted,
    and said nothing when the relay restarted and lost it."""
    net = Net()
    alice = net.core("alice", "bob", mode=chat.Mode.STATIC)
    net.attach(alice)
    alice.send("held at the relay")
    net.pump()
    assert len(net.of("alice", chat.Accepted)) == 1
    net.detach("alice")
    net.relay = relay.Relay(relay.RelayConfig(), clock=net.clock,
                            wallclock=lambda: net.clock.now + 1.7e9, rng=os.urandom)
    net.attach(alice)
    net.pump()
    assert len(net.of("alice", chat.Accepted)) == 2  # sent again, held again
    bob = net.core("bob", "alice", mode=chat.Mode.STATIC)
    net.attach(bob)
    net.pump()
    assert net.received("bob") == ["held at the relay"]


def test_static_mode_says_when_a_message_expired_out_of_its_sight():
    """Its TTL ended while alice was disconnected: the relay's 'expired'
    report could not reach her, so she is told the fate is unknown."""
    net = Net(relay.RelayConfig(ttl_min=1))
    alice = net.core("alice", "bob", mode=chat.Mode.STATIC, ttl=10)
    net.attach(alice)
    alice.send("first")
    alice.send("second")
    net.pump()
    net.detach("alice")
    net.advance(5)
    net.attach(alice)  # back before the TTL: the report would reach her
    net.pump()
    for _ in range(11):
        net.advance(1)
    assert [u.n for u in net.of("alice", chat.Undelivered)] == [1, 2]
    alice.send("third")
    net.pump()
    net.detach("alice")
    net.advance(20)
    alice.tick()
    unknown = [e for e in alice.take_events() if getattr(e, "code", "") == "fate_unknown"]
    assert len(unknown) == 1 and "#3" in unknown[0].text
    assert alice.outbox == {}


def test_static_mode_rejects_wrong_passcode_replay_and_reflection():
    net = Net()
    alice = net.core("alice", "bob", mode=chat.Mode.STATIC)
    bob = net.core("bob", "alice", mode=chat.Mode.STATIC)
    net.attach(alice)
    net.attach(bob)
    alice.send("hi")
    net.pump()
    original = net.tap[-1]
    bob.handle({**original, "id": 9_999})                       # replay
    alice.handle({**original, "id": 9_998, "from": "bob"})      # reflected back to alice
    for core, name in ((bob, "bob"), (alice, "alice")):
        net.events[name].extend(core.take_events())
    assert net.received("bob") == ["hi"] and net.received("alice") == []
    assert "replay" in [e.code for e in net.of("bob", chat.Notice)]
    assert "undecryptable" in [e.code for e in net.of("alice", chat.Notice)]
    carol = net.core("carol", "alice", mode=chat.Mode.STATIC, key=OTHER_KEY)
    net.attach(carol)
    eve = net.core("eve", "bob", mode=chat.Mode.STATIC, key=OTHER_KEY)
    del eve
    wrong = net.core("bob", "alice", mode=chat.Mode.STATIC, key=OTHER_KEY)
    sealed = wrong._box.seal("forged", 30)
    alice.handle({"type": "deliver", "id": 9_997, "from": "bob", "kind": "msg", "ttl": 30,
                  "expires_at": 0, "body": sealed})
    assert [e.code for e in alice.take_events()] == ["undecryptable"]


def test_mixed_modes_give_a_clear_notice():
    net = Net()
    alice = net.core("alice", "bob", mode=chat.Mode.STATIC)
    bob = net.core("bob", "alice")
    net.attach(alice)
    net.attach(bob)
    alice.send("static hello")
    net.pump()
    assert net.received("bob") == []
    assert any("--static" in e.text for e in net.of("bob", chat.Notice))


@pytest.mark.parametrize("seed", range(5))
def test_random_loss_and_duplication_never_shows_a_message_twice(seed):
    import random
    rng = random.Random(seed)
    net = Net()
    alice, bob = pair(net)
    sent = [f"m{i}" for i in range(30)]
    for text in sent:
        (alice if rng.random() < 0.5 else bob).send(text)
        if rng.random() < 0.3:
            original = [f for f in net.tap if f["kind"] == "msg"]
            if original:
                dup = rng.choice(original)
                target = bob if dup["from"] == "alice" else alice
                target.handle({**dup, "id": rng.randrange(10**6, 10**7)})
        net.pump()
    shown = net.received("alice") + net.received("bob")
    assert sorted(shown) == sorted(sent)    # each exactly once


def test_relay_restart_loses_held_messages_and_they_are_resent_sealed_anew():
    net = Net()
    alice, bob = pair(net)
    net.detach("bob")
    alice.send("held at the relay")
    net.pump()
    # The relay restarts: everything it held is gone; alice reconnects.
    old_tap = len(net.tap)
    net.relay = relay.Relay(relay.RelayConfig(), clock=net.clock,
                            wallclock=lambda: net.clock.now + 1.7e9, rng=os.urandom)
    net.peers.clear()
    net.attach(alice)
    net.attach(bob)
    net.pump()
    assert net.received("bob") == ["held at the relay"]
    assert [d.n for d in net.of("alice", chat.Delivered)] == [1]
    assert not any(e.code == "replay" for e in net.of("bob", chat.Notice))
    assert len(net.tap) > old_tap


def test_reconnect_resend_is_confirmed_but_shown_once():
    net = Net()
    alice, bob = pair(net)
    alice.send("only once")
    net.pump(drop=lambda f: f["from"] == "bob" and f["kind"] == "msg")  # receipts lost
    net.detach("alice")
    net.attach(alice)
    net.pump()
    assert net.received("bob") == ["only once"]
    assert [d.n for d in net.of("alice", chat.Delivered)] == [1]
    assert not any(e.level != "info" for e in net.of("bob", chat.Notice))


def test_sealed_names_are_checked_on_receipt():
    net = Net()
    alice, bob = pair(net)
    # Alice's own client, misbehaving, seals a message naming someone else.
    alice._seal_and_submit({"k": "msg", "from": "mallory", "to": "bob", "e": "x", "n": 1,
                            "ts": 0, "ttl": 30, "text": "not from alice?"}, None)
    net.pump()
    assert net.received("bob") == []
    assert any("wrong sender" in e.text for e in net.of("bob", chat.Notice))


# -- hostile frames: the relay, or anyone who can send through it, writes them --------


def test_deeply_nested_bodies_are_notices_not_crashes():
    """20,000 nested arrays made json.loads raise RecursionError, which ended
    the chat: in a handshake body anyone can send, and in an authenticated one."""
    net = Net()
    alice, bob = pair(net)
    deep = "h1." + base64.b64encode(b"[" * 20000).decode()
    alice.handle({"type": "deliver", "id": 10**9, "from": "bob", "kind": "hs", "ttl": 30,
                  "expires_at": 0, "body": deep})
    sealed = bob.session.ratchet.encrypt(b"[" * 20000)
    alice.handle({"type": "deliver", "id": 10**9 + 1, "from": "bob", "kind": "msg", "ttl": 30,
                  "expires_at": 0,
                  "body": f"r1.{bob.session.sid}.{base64.b64encode(sealed).decode()}"})
    notices = [e for e in alice.take_events() if isinstance(e, chat.Notice)]
    assert [n.code for n in notices] == ["bad_message", "bad_message"], notices
    bob.send("still here")
    net.pump()
    assert net.received("alice") == ["still here"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=6)
relay_frames = st.fixed_dictionaries(
    {"type": st.sampled_from(["deliver", "accepted", "error", "expired", "presence"])},
    optional={"id": json_values, "ref": json_values, "from": st.just("bob") | json_values,
              "kind": st.sampled_from(["msg", "hs"]) | json_values,
              "body": st.sampled_from(["h1.", "r1.", "s1."]).flatmap(
                  lambda p: st.binary(max_size=80).map(
                      lambda b: p + base64.b64encode(b).decode())) | json_values,
              "ttl": json_values, "expires_at": json_values, "code": json_values,
              "message": json_values, "fatal": json_values, "user": st.just("bob") | json_values,
              "online": json_values})


@settings(max_examples=int(os.environ.get("MSGR_FUZZ_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(relay_frames, min_size=1, max_size=6))
def test_any_frame_from_the_relay_is_handled_without_raising(frames):
    net = Net()
    alice, _ = pair(net)
    alice.send("in flight")
    for frame in frames:
        alice.handle(frame)  # must not raise
        alice.take_frames()
    alice.take_events()


def test_static_box_refuses_a_deeply_nested_plaintext():
    import nacl.bindings

    from msgrlib.crypto import staticbox as e2e
    clock = Clock()
    alice = e2e.StaticBox(KEY, "alice", "bob", rng=os.urandom, wallclock=clock)
    bob = e2e.StaticBox(KEY, "bob", "alice", rng=os.urandom, wallclock=clock)
    nonce = os.urandom(24)
    sealed = nacl.bindings.crypto_secretbox(b"[" * 20000, nonce, alice._send_key)
    with pytest.raises(e2e.SealError, match="not a valid JSON object"):
        bob.open(e2e.PREFIX + base64.b64encode(nonce + sealed).decode())
    assert bob.open(alice.seal("fine", 30)).text == "fine"


def test_static_box_refuses_a_message_number_below_one():
    """PROTOCOL.md 5: ``n`` counts from 1; a box with ``n`` 0 or below is refused."""
    from msgrlib.crypto import staticbox as e2e
    clock = Clock()
    alice = e2e.StaticBox(KEY, "alice", "bob", rng=os.urandom, wallclock=clock)
    bob = e2e.StaticBox(KEY, "bob", "alice", rng=os.urandom, wallclock=clock)
    for n in (0, -5):
        alice._n = n - 1  # the next seal carries n
        with pytest.raises(e2e.SealError, match="fields are wrong"):
            bob.open(alice.seal("numbered wrongly", 30))

def test_a_lost_hi_is_sent_again_when_the_peer_comes_back():
    """A ratchet responder cannot send until the initiator's first message
    (``hi``) arrives. Found by review: a hi that expired unread while the
    responder was away left it unable to send for the rest of the session,
    its messages queued for ever with nothing said."""
    net = Net()
    alice, bob = attached(net)
    held_back = []

    def hold_hi(frame: dict) -> bool:
        if frame["body"].startswith("r1.") and not held_back:
            held_back.append(frame)
            net.detach("bob")  # bob's connection drops as the hi arrives
            return True
        return False

    net.pump(drop=hold_hi)
    assert held_back and alice.session is not None and bob.session is not None
    assert not bob.session.ratchet.can_send
    net.advance(relay.RelayConfig().ttl_max + 1)  # the hi expires at the relay, unread
    assert len(net.relay.store) == 0
    bob.send("can you hear me")
    net.attach(bob)
    net.pump()
    assert net.received("alice") == ["can you hear me"]
    assert [d.n for d in net.of("bob", chat.Delivered)] == [1]


# -- the relay's rates, acks and receipts across reconnects -----------------------------


def _refused_too_fast(net: Net, name: str) -> list[Any]:
    return [e for e in net.events[name] if getattr(e, "code", "") == "rate_limited"
            or "too fast" in getattr(e, "reason", "")]


def test_sends_are_paced_under_the_relays_rates_and_none_is_refused():
    """Found by review: 450 lines piped in were sent at once; past the relay's
    burst each was refused and reported undelivered, and so were receipts
    (the peer had shown the message)."""
    net = Net(relay.RelayConfig(rate_messages=10, burst_messages=5))
    alice, bob = pair(net)
    sent = [alice.send(f"m{i}") for i in range(30)]
    for _ in range(60):
        net.advance(0.1)
    assert net.received("bob") == [f"m{i}" for i in range(30)]
    assert sorted(d.n for d in net.of("alice", chat.Delivered)) == sent
    assert not net.of("alice", chat.Undelivered)
    assert not _refused_too_fast(net, "alice") and not _refused_too_fast(net, "bob")


def test_a_send_refused_as_too_fast_is_sent_again():
    """If the relay is stricter than it said, a refused send waits and goes again."""
    net = Net(relay.RelayConfig(rate_messages=10, burst_messages=1))
    alice, bob = pair(net)
    for _ in range(20):
        net.advance(0.1)  # the handshake spent the burst; let it refill
    alice.set_limits({"rate_messages": 10, "burst_messages": 4})  # optimistic
    sent = [alice.send(f"m{i}") for i in range(3)]
    net.pump()
    for _ in range(30):
        net.advance(0.1)
    assert net.received("bob") == ["m0", "m1", "m2"]
    assert sorted(d.n for d in net.of("alice", chat.Delivered)) == sent
    assert not net.of("alice", chat.Undelivered)


def test_acks_go_out_in_frames_the_relay_accepts():
    core = Net().core("bob", "alice")
    core.connected_to_relay()
    core.take_frames()
    for i in range(1500):
        core.handle({"type": "deliver", "id": i, "from": "mallory", "kind": "msg",
                     "ttl": 30, "expires_at": 0, "body": "x"})
    acks = [f for f in core.take_frames() if f["type"] == "ack"]
    assert [len(f["ids"]) for f in acks] == [1024, 476]
    assert sum((f["ids"] for f in acks), []) == list(range(1500))


def test_a_receipt_lost_with_the_connection_is_sent_again():
    """Bob showed the message, but his receipt was lost as his connection
    dropped: alice would report it undelivered at its TTL."""
    net = Net()
    alice, bob = pair(net)
    n = alice.send("did you get this")
    _, alice_client, _ = net.peers["alice"]
    for frame in alice.take_frames():
        net.relay.receive(alice_client, frame)
    _, _, bob_link = net.peers["bob"]
    for frame in bob_link.inbox:
        bob.handle(frame)
    bob_link.inbox.clear()
    lost = bob.take_frames()  # the ack and the receipt, never reaching the relay
    assert [f["type"] for f in lost] == ["ack", "send"]
    assert [e.text for e in bob.take_events() if isinstance(e, chat.Received)] == [
        "did you get this"]
    net.detach("bob")
    net.attach(bob)
    net.pump()
    assert [d.n for d in net.of("alice", chat.Delivered)] == [n]
    assert net.received("bob") == []  # handed out again by the relay, not shown again


def test_a_handshake_message_from_another_attempt_does_not_break_this_one():
    """Found by review: a resp that echoes another attempt's nonce (a late
    answer to an earlier run's init, or a forgery) failed the attempt in
    progress, so the genuine resp was refused and no session came up until
    the handshake timed out."""
    net = Net()
    alice, bob = attached(net)
    injected = []

    def stale_resp_first(frame: dict) -> bool:
        if frame.get("kind") == "hs" and frame["from"] == "bob" and not injected:
            msg = chat._parse_hs(frame["body"])
            if msg.get("hs") == "resp":
                stale = dict(msg, na=base64.b64encode(os.urandom(16)).decode())
                body = "h1." + base64.b64encode(json.dumps(stale).encode()).decode()
                alice.handle({**frame, "id": frame["id"] + 10**6, "body": body})
                injected.append(stale)
        return False

    net.pump(drop=stale_resp_first)
    assert injected
    assert alice.session is not None and alice.safety_number == bob.safety_number
    assert not [e for e in alice.take_events() + net.events["alice"]
                if isinstance(e, chat.Notice) and e.level != "info"]


# -- second review: pacing, deadlines and resends together ------------------------------


def _static_core(ttl: int = 30) -> tuple[chat.ChatCore, Clock]:
    clock = Clock()
    core = chat.ChatCore(me="alice", peer="bob", key=KEY, mode=chat.Mode.STATIC, ttl=ttl,
                         clock=clock, wallclock=lambda: clock.now + 1.7e9, rng=os.urandom)
    return core, clock


def test_a_send_held_by_pacing_is_dropped_once_its_message_is_reported_undelivered():
    core, clock = _static_core(ttl=10)
    core.set_limits({"rate_messages": 0.01, "burst_messages": 1})
    core.connected_to_relay()
    for i in range(3):
        core.send(f"m{i}")
    assert len(_sends(core.take_frames())) == 1  # two wait for the rate budget
    clock.now += 11
    core.tick()
    assert [e.n for e in core.take_events() if isinstance(e, chat.Undelivered)] == [1, 2, 3]
    clock.now += 1000  # budget for all of them again
    assert _sends(core.take_frames()) == []  # reported undelivered: never sent after


def test_a_message_with_less_than_the_relays_minimum_ttl_left_is_not_sent():
    """The relay would keep it for its minimum, past the time it is reported."""
    core, clock = _static_core(ttl=10)
    core.send("typed while the relay was away")
    clock.now += 6
    core.set_limits({"ttl_min": 5})
    core.connected_to_relay()
    assert _sends(core.take_frames()) == []
    failed = [e for e in core.take_events() if isinstance(e, chat.Undelivered)]
    assert [(e.n, e.reason) for e in failed] == [
        (1, "too little of its 10 s TTL was left to send it")]


def test_a_send_carries_what_is_left_of_its_ttl():
    core, clock = _static_core(ttl=30)
    core.send("typed while the relay was away")
    clock.now += 12.5
    core.connected_to_relay()
    assert [f["ttl"] for f in _sends(core.take_frames())] == [18]


def test_other_frames_never_wait_behind_paced_sends():
    core, _ = _static_core()
    core.set_limits({"rate_messages": 0.01, "burst_messages": 1})
    core.connected_to_relay()
    core.take_frames()
    core.send("one")
    core.send("two")
    assert len(_sends(core.take_frames())) == 1
    core._frames.append({"type": "watch", "user": "bob"})  # e.g. after a reconnect
    assert [f["type"] for f in core.take_frames()] == ["watch"]


def test_static_sends_waiting_at_a_disconnect_go_out_once():
    """Found in review: held sends stayed queued and the reconnect queued
    them again; the peer got copies and warned of replays."""
    net = Net(relay.RelayConfig(rate_messages=5, burst_messages=2))
    alice = net.core("alice", "bob", mode=chat.Mode.STATIC)
    bob = net.core("bob", "alice", mode=chat.Mode.STATIC)
    net.attach(alice)
    net.attach(bob)
    net.pump()
    for i in range(6):
        alice.send(f"m{i}")
    net.pump()
    net.detach("alice")
    net.attach(alice)
    for _ in range(40):
        net.advance(0.1)
    assert net.received("bob") == [f"m{i}" for i in range(6)]
    assert not [e for e in net.events["bob"] if isinstance(e, chat.Notice)]


def test_static_after_a_relay_restart_only_what_the_peer_could_not_have_is_resent():
    """Sent again, a message the peer already took would be shown twice by a
    peer that restarted too; its fate is reported unknown instead."""
    net = Net(relay.RelayConfig(ttl_min=1))
    alice = net.core("alice", "bob", mode=chat.Mode.STATIC, ttl=10)
    bob = net.core("bob", "alice", mode=chat.Mode.STATIC)
    net.attach(alice)
    net.attach(bob)
    net.pump()
    alice.send("bob was there")
    net.pump()
    assert net.received("bob") == ["bob was there"]
    net.detach("alice")
    net.detach("bob")
    net.relay = relay.Relay(relay.RelayConfig(ttl_min=1), clock=net.clock,
                            wallclock=lambda: net.clock.now + 1.7e9, rng=os.urandom)
    bob2 = net.core("bob", "alice", mode=chat.Mode.STATIC)  # bob restarted too
    net.attach(alice)
    net.attach(bob2)
    net.pump()
    assert net.received("bob") == ["bob was there"]  # once
    for _ in range(16):
        net.advance(1)
    assert [e.code for e in net.of("alice", chat.Notice)] == ["fate_unknown"]


def test_static_an_expiry_during_a_disconnect_is_reported_even_if_back_within_the_grace():
    net = Net(relay.RelayConfig(ttl_min=1))
    alice = net.core("alice", "bob", mode=chat.Mode.STATIC, ttl=10)
    net.attach(alice)
    alice.send("nobody reads this")
    net.pump()
    net.detach("alice")
    net.advance(11)  # it expired at the relay while alice was away...
    net.attach(alice)  # ...and she is back within the 5 s grace
    for _ in range(6):
        net.advance(1)
    assert [e.code for e in net.of("alice", chat.Notice)] == ["fate_unknown"]


def test_a_stale_or_forged_req_does_not_stop_receipts():
    """Found in review: after a req the initiator retired its session and sent
    no receipts; a relay that also dropped the handshake got 'not delivered'."""
    net = Net()
    alice, bob = pair(net)
    req = "h1." + base64.b64encode(b'{"hs":"req","v":1}').decode()
    alice.handle({"type": "deliver", "id": 10**9, "from": "bob", "kind": "hs", "ttl": 30,
                  "expires_at": 0, "body": req})
    assert all(f.get("kind") == "hs" for f in _sends(alice.take_frames()))  # dropped
    n = bob.send("still there?")
    net.pump(drop=lambda f: f.get("kind") == "hs")
    assert net.received("alice") == ["still there?"]
    assert [d.n for d in net.of("bob", chat.Delivered)] == [n]
