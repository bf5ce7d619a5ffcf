"""Fuzzing the relay's message handling with random and mutated frame sequences.

A hypothesis state machine drives the real :class:`relay.Relay` (sans-I/O)
with several clients that connect, authenticate, send valid, mutated and
random frames, acknowledge, disconnect and reconnect while time passes. After
every step the invariants must hold: nothing but error frames answers bad
input, the store's accounting is exact, no message is handed to anyone but
its recipient, nothing outlives its TTL, and a closed connection gets nothing.

``MSGR_FUZZ_EXAMPLES`` scales the run (``make fuzz`` sets 20,000).
"""

from __future__ import annotations

import base64
import json
import os
import random
from typing import Any

from helpers import auth_message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from nacl.signing import SigningKey

import framing
from msgrlib.relay import rules as relay

EXAMPLES = int(os.environ.get("MSGR_FUZZ_EXAMPLES", "100"))
NAMES = ["alice", "bob", "carol"]
CONFIG = relay.RelayConfig(ttl_min=1, ttl_max=60, mailbox_messages=5, store_bytes=4000,
                           burst_messages=20, rate_messages=5, hs_burst=3, claim_ttl=5,
                           store_share=0.5, hs_reserve=0.1)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
frame_types = st.sampled_from(["send", "ack", "ping", "watch", "bye", "hello", "auth",
                               "deliver", "", "SEND"])
fields = st.sampled_from(["type", "to", "body", "ttl", "ref", "id", "ids", "kind", "user",
                          "key", "sig", "v", "t"])


class Link:
    def __init__(self, name: str) -> None:
        self.address = f"fuzz:{name}"
        self.host = "10.0.0.2" if name == "carol" else "10.0.0.1"  # alice and bob share one
        self.decoder = framing.FrameDecoder(max_size=1 << 20)
        self.frames: list[dict[str, Any]] = []
        self.closed = False
        self.after_close = 0

    def write(self, data: bytes) -> None:
        frames = self.decoder.feed(data)   # everything the relay writes must decode
        if self.closed:
            self.after_close += len(frames)
        self.frames.extend(frames)

    def close(self) -> None:
        self.closed = True


class RelayMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.relay = relay.Relay(CONFIG, clock=lambda: self.now, wallclock=lambda: self.now,
                                 rng=os.urandom)
        self.keys = {name: SigningKey.generate() for name in NAMES}
        self.conns: dict[str, tuple[relay.Client, Link]] = {}
        self.dead: list[Link] = []
        self.sent_to: dict[int, str] = {}       # our ref -> recipient
        self.recipient_of: dict[int, str] = {}  # relay id -> recipient
        self.ref = 0

    # -- helpers -------------------------------------------------------------------

    def _login(self, name: str, key: SigningKey) -> None:
        link = Link(name)
        client = self.relay.connect(link)
        self.relay.receive(client, {"type": "hello", "v": 1, "user": name,
                                    "key": base64.b64encode(bytes(key.verify_key)).decode()})
        if link.closed:
            return
        sig = key.sign(auth_message(link.frames[-1], name)).signature
        self.relay.receive(client, {"type": "auth", "sig": base64.b64encode(sig).decode()})
        if not link.closed:
            old = self.conns.get(name)
            if old is not None:
                self.dead.append(old[1])
            self.conns[name] = (client, link)

    def _collect(self) -> None:
        for _client, link in self.conns.values():
            for frame in link.frames:
                if frame.get("type") == "accepted":
                    self.recipient_of[frame["id"]] = self.sent_to[frame["ref"]]
        for name, (_client, link) in list(self.conns.items()):
            for frame in link.frames:
                if frame.get("type") == "deliver":
                    # Handed only to its recipient, and only what was accepted.
                    assert self.recipient_of[frame["id"]] == name, frame
            link.frames.clear()
            if link.closed:
                self.dead.append(link)
                del self.conns[name]

    # -- rules ------------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), own_key=st.booleans())
    def connect(self, name: str, own_key: bool) -> None:
        self._login(name, self.keys[name] if own_key else SigningKey.generate())
        self._collect()

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), to=st.sampled_from(NAMES + ["nobody", "BAD NAME"]),
          ttl=st.integers(-5, 100), size=st.integers(0, 600), kind=st.sampled_from(["msg", "hs"]))
    def send(self, data: st.DataObject, to: str, ttl: int, size: int, kind: str) -> None:
        name = data.draw(st.sampled_from(sorted(self.conns)))
        client, link = self.conns[name]
        self.ref += 1
        self.sent_to[self.ref] = to
        self.relay.receive(client, {"type": "send", "ref": self.ref, "to": to, "ttl": ttl,
                                    "kind": kind, "body": "x" * size})
        self._collect()

    @precondition(lambda self: self.conns)
    @rule(data=st.data())
    def ack_some(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.conns)))
        client, _ = self.conns[name]
        ids = data.draw(st.lists(st.integers(0, 60), max_size=5))
        self.relay.receive(client, {"type": "ack", "ids": ids})
        self._collect()

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), frame=st.dictionaries(fields, json_values, max_size=6),
          kind=frame_types)
    def mutated_frame(self, data: st.DataObject, frame: dict[str, Any], kind: str) -> None:
        name = data.draw(st.sampled_from(sorted(self.conns)))
        client, link = self.conns[name]
        frame = dict(frame)
        if data.draw(st.booleans()):
            frame["type"] = kind
        self.relay.receive(client, frame)
        self._collect()

    @rule(frame=st.dictionaries(fields, json_values, max_size=6))
    def stranger_before_hello(self, frame: dict[str, Any]) -> None:
        link = Link("stranger")
        client = self.relay.connect(link)
        self.relay.receive(client, frame)
        if not link.closed:
            self.relay.disconnect(client)
        assert all(f["type"] in ("error", "challenge") for f in link.frames)

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), bye=st.booleans())
    def disconnect(self, data: st.DataObject, bye: bool) -> None:
        name = data.draw(st.sampled_from(sorted(self.conns)))
        client, link = self.conns.pop(name)
        if bye:
            self.relay.receive(client, {"type": "bye"})
        link.close()
        self.relay.disconnect(client)
        self.dead.append(link)

    @rule(seconds=st.floats(0, 40))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.relay.tick()
        self._collect()

    # -- invariants ---------------------------------------------------------------

    @invariant()
    def store_accounting_is_exact(self) -> None:
        store = self.relay.store
        held = [h for n in NAMES + ["nobody"] for h in store.waiting(n)]
        assert len(held) == len(store)
        assert store.bytes == sum(h.size for h in held) <= CONFIG.store_bytes
        for h in held:
            assert h.expires_at > self.now - 1e-9 or store.next_expiry() <= self.now
            assert CONFIG.ttl_min <= h.ttl <= CONFIG.ttl_max
        # Shares: exact per sender and per origin, and never past the share.
        for table, field in ((store.by_sender, "sender"), (store.by_origin, "origin")):
            counted: dict[str, int] = {}
            for h in held:
                counted[getattr(h, field)] = counted.get(getattr(h, field), 0) + h.size
            assert table == counted
            assert all(v <= CONFIG.share_bytes for v in table.values())
        msgs = sum(h.size for h in held if h.kind != "hs")
        assert msgs <= CONFIG.store_bytes - CONFIG.hs_reserve_bytes

    @invariant()
    def closed_connections_get_nothing(self) -> None:
        assert all(link.after_close == 0 for link in self.dead)

    @invariant()
    def claims_point_at_live_connections(self) -> None:
        for name, claim in self.relay.claims.items():
            if claim.client is not None:
                assert name in self.conns and self.conns[name][0] is claim.client

    def teardown(self) -> None:
        # After the longest TTL, nothing is left in memory.
        self.now += CONFIG.ttl_max + 1
        self.relay.tick()
        assert len(self.relay.store) == 0 and self.relay.store.bytes == 0


RelayMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestRelayFuzz = RelayMachine.TestCase


def test_random_byte_streams_never_escape_the_codec():
    """Mutated streams of real frames through the decoder: only FramingError."""
    rng = random.Random(int(os.environ.get("MSGR_FUZZ_SEED", "7")))
    good = b"".join(framing.encode_frame({"type": "send", "ref": i, "to": "bob", "ttl": 30,
                                          "body": "x" * i}) for i in range(20))
    for _ in range(EXAMPLES * 10):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos]
            else:
                data.insert(pos, rng.randrange(256))
        decoder = framing.FrameDecoder()
        try:
            for i in range(0, len(data), 37):
                decoder.feed(bytes(data[i:i + 37]))
            decoder.feed_eof()
        except framing.FramingError:
            pass


def test_regression_non_string_type_is_a_protocol_error():
    """Found by the state machine: {"type": []} raised TypeError inside the relay."""
    link = Link("regression")
    r = relay.Relay(CONFIG, clock=lambda: 0.0, wallclock=lambda: 0.0, rng=os.urandom)
    client = r.connect(link)
    r.receive(client, {"type": []})
    assert link.frames[-1]["code"] == "protocol" and link.closed


@settings(max_examples=EXAMPLES * 5, deadline=None)
@given(msg_id=st.integers(min_value=0, max_value=2**63), sender=st.text(max_size=40),
       kind=st.sampled_from(["msg", "hs"]) | st.text(max_size=8),
       ttl=st.integers(min_value=0, max_value=10**6),
       expires_at=st.floats(allow_nan=False, allow_infinity=False),
       body=st.text(max_size=300))
def test_deliver_frame_is_byte_for_byte_the_generic_encoding(msg_id, sender, kind, ttl,
                                                             expires_at, body):
    """relay.deliver_frame formats the hot frame by hand; it must never differ."""
    frame = {"type": "deliver", "id": msg_id, "from": sender, "kind": kind, "ttl": ttl,
             "expires_at": expires_at, "body": body}
    assert relay.deliver_frame(msg_id, sender, kind, ttl, repr(expires_at), body,
                               max_size=1 << 20) == framing.encode_frame(frame, max_size=1 << 20)


@settings(max_examples=EXAMPLES * 5, deadline=None)
@given(ref=st.integers(min_value=-(2**63), max_value=2**63),
       msg_id=st.integers(min_value=0, max_value=2**63),
       ttl=st.integers(min_value=0, max_value=10**6),
       expires_at=st.floats(allow_nan=False, allow_infinity=False))
def test_accepted_frame_is_byte_for_byte_the_generic_encoding(ref, msg_id, ttl, expires_at):
    frame = {"type": "accepted", "ref": ref, "id": msg_id, "ttl": ttl, "expires_at": expires_at}
    assert relay.accepted_frame(ref, msg_id, ttl, repr(expires_at)) == framing.encode_frame(frame)


@settings(max_examples=EXAMPLES * 5, deadline=None)
@given(walls=st.lists(st.floats(min_value=0, max_value=4e9), min_size=1, max_size=5))
def test_expiry_json_is_the_millisecond_below_as_json_writes_it(walls):
    """The expiry text is cached per millisecond; every answer must still be
    the JSON of that millisecond, whatever came before it."""
    r = relay.Relay(relay.RelayConfig(), clock=lambda: 0.0, wallclock=lambda: 0.0, rng=os.urandom)
    for wall in walls:
        text = r._expiry_json(wall)
        assert text == json.dumps(int(wall * 1000) / 1000)
        # A float near 2**31 s has ~0.5 us of resolution: allow that much.
        assert wall - 0.001 - 1e-6 < float(text) <= wall
