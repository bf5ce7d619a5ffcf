"""msgrlib.protocol: frames parsed once, one error-code enum, the signed string.

Parsers are fuzzed (their only exception is FrameError); the relay's
hand-formatted hot frames are checked against them; the relay-binding of the
ownership signature and the integer-only hello are checked on a real relay.
"""

from __future__ import annotations

import base64
import math
import os
import re

import pytest
from helpers import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

import framing
from msgrlib import protocol
from msgrlib.client import connection as client
from msgrlib.protocol import ErrorCode, FrameError
from msgrlib.relay import rules, store

EXAMPLES = int(os.environ.get("MSGR_FUZZ_EXAMPLES", "300"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=10)
FIELDS = ["type", "v", "user", "key", "sig", "to", "body", "ttl", "kind", "ref", "id", "ids",
          "t", "nonce", "relay", "limits", "expires_at", "from", "online", "code", "message",
          "fatal"]
KINDS = ["hello", "auth", "send", "ack", "watch", "ping", "bye", "challenge", "welcome",
         "accepted", "deliver", "expired", "presence", "pong", "error", "shutdown", "x"]
objects = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8).flatmap(
    lambda d: st.sampled_from(KINDS).map(lambda kind: {**d, "type": kind}))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.one_of(objects, st.dictionaries(st.text(max_size=6), json_values, max_size=4)))
def test_fuzz_parsers_raise_frame_error_only(obj):
    for parse in (protocol.parse_client_frame, protocol.parse_relay_frame):
        try:
            frame = parse(obj)
        except FrameError as err:
            assert isinstance(err.code, ErrorCode)
        else:
            assert frame.__dataclass_params__.frozen


@settings(max_examples=EXAMPLES, deadline=None)
@given(json_values)
def test_fuzz_limits_never_raise_and_stay_in_bounds(obj):
    limits = protocol.Limits.from_json(obj if not isinstance(obj, list) else {})
    for name, value in limits.to_json().items():
        assert type(value) in (int, float) and math.isfinite(value) and value >= 0, name
    if limits.heartbeat is not None:
        assert 1 <= limits.heartbeat <= 600
    if limits.max_frame is not None:
        assert type(limits.max_frame) is int and limits.max_frame > 0


def test_limits_keep_what_the_relay_advertises():
    table = rules.RelayConfig().limits_table()
    assert protocol.Limits.from_json(table).to_json() == table
    assert protocol.Limits.from_json({"heartbeat": 0.01, "max_frame": True,
                                      "rate_bytes": -1, "ttl_min": 1e9}) == protocol.Limits()


@pytest.mark.parametrize("v,code", [(True, ErrorCode.PROTOCOL), (1.0, ErrorCode.PROTOCOL),
                                    ("1", ErrorCode.PROTOCOL), (None, ErrorCode.PROTOCOL),
                                    (2, ErrorCode.VERSION), (0, ErrorCode.VERSION)])
def test_hello_version_is_the_integer_1(v, code):
    key = base64.b64encode(bytes(32)).decode()
    with pytest.raises(FrameError) as err:
        protocol.parse_hello({"type": "hello", "v": v, "user": "alice", "key": key})
    assert err.value.code is code
    assert protocol.parse_hello({"type": "hello", "v": 1, "user": "alice", "key": key}).v == 1


def test_round_trips():
    for frame in (protocol.Hello("alice", bytes(32)), protocol.Auth(bytes(64)),
                  protocol.Send("bob", "s1.x", ttl=30, kind="hs", ref=7),
                  protocol.Send("bob", "s1.x"), protocol.Ack((1, 2)), protocol.Watch("bob"),
                  protocol.Ping(), protocol.Ping(1.5), protocol.Bye()):
        assert protocol.parse_client_frame(frame.to_json()) == frame
    assert protocol.parse_relay_frame(protocol.Challenge(bytes(32), "ab").to_json()) == \
        protocol.Challenge(bytes(32), "ab")


names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,31}", fullmatch=True)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.integers(1, 2**53 - 1), names, st.sampled_from(["msg", "hs"]), st.integers(5, 60),
       st.floats(0, 4e9, allow_nan=False), st.text(max_size=50), st.integers(0, 2**53 - 1))
def test_the_relays_hand_formatted_frames_parse_as_the_protocol_says(
        msg_id, sender, kind, ttl, wall, body, ref):
    expires = repr(int(wall * 1000) / 1000)
    deliver = framing.decode_body(rules.deliver_frame(msg_id, sender, kind, ttl, expires,
                                                      body)[4:])
    assert protocol.parse_relay_frame(deliver) == protocol.Deliver(
        msg_id, sender, kind, ttl, float(expires), body)
    accepted = framing.decode_body(rules.accepted_frame(ref, msg_id, ttl, expires)[4:])
    assert protocol.parse_relay_frame(accepted) == protocol.Accepted(msg_id, ttl, float(expires),
                                                                      ref)


def test_one_error_enum_for_both_sides_and_the_spec():
    """Every code either side uses is an ErrorCode, and PROTOCOL.md's table
    lists exactly those (truncated_frame is only logged: section 2)."""
    for cls in (framing.FrameTooLarge, framing.MalformedFrame, framing.TruncatedFrame):
        assert ErrorCode(cls.code)
    for cls in store.StoreError.__subclasses__():
        assert ErrorCode(cls.code)
    assert rules.ProtocolViolation("x").code is ErrorCode.PROTOCOL
    assert rules.Refused("rate_limited", "x").code is ErrorCode.RATE_LIMITED
    # A code this side does not know (a newer relay's) is kept as text on the
    # base class; tests/test_errors.py checks the relay only raises known ones.
    assert type(rules.Refused("made_up", "x")) is rules.Refused
    with open(os.path.join(ROOT, "PROTOCOL.md"), encoding="utf-8") as f:
        spec = f.read()
    table = spec.split("### 3.5 Error codes", 1)[1].split("\n## ", 1)[0]
    listed = {code for row in table.splitlines() if row.startswith("| `")
              for code in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    assert listed == {c.value for c in ErrorCode} - {"truncated_frame"}
    assert "`truncated_frame`" in spec
    assert client.FATAL_CODES == protocol.PERMANENT_CODES


class _Link:
    address = "test"

    def __init__(self) -> None:
        self.decoder = framing.FrameDecoder(max_size=1 << 20)
        self.frames: list[dict] = []

    def write(self, data: bytes) -> None:
        self.frames.extend(self.decoder.feed(data))

    def close(self) -> None:
        pass


def _relay_verdict(obj: dict) -> str | None:
    """The error code the relay core answers ``obj`` with, from a signed-in
    client (None: served). Send and ack are checked inline there, for speed."""
    core = rules.Relay(clock=lambda: 0.0, wallclock=lambda: 0.0, rng=os.urandom)
    link, key = _Link(), SigningKey.generate()
    conn = core.connect(link)
    core.receive(conn, protocol.Hello("alice", bytes(key.verify_key)).to_json())
    challenge = protocol.parse_relay_frame(link.frames.pop())
    sig = key.sign(protocol.auth_message(challenge.nonce, core.binding, "alice")).signature
    core.receive(conn, protocol.Auth(sig).to_json())
    link.frames.clear()
    core.receive(conn, obj)
    errors = [f["code"] for f in link.frames if f["type"] == "error"]
    return errors[0] if errors else None


send_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["send", "ack"])},
    optional={"to": st.sampled_from(["bob", "Bob", "", 5, None]),
              "body": st.sampled_from(["s1.x", 5, None, ""]),
              "ttl": st.sampled_from([30, 30.0, True, None, "30", -1]),
              "kind": st.sampled_from(["msg", "hs", "x", None]),
              "ref": st.sampled_from([1, 2**60, 1.0, True, None, "1"]),
              "id": st.sampled_from([1, "1", None, 1.5]),
              "ids": st.sampled_from([[1, 2], [], [1, "2"], "1", None, [True],
                                      list(range(1025))])})


@settings(max_examples=EXAMPLES, deadline=None)
@given(send_like)
def test_the_relays_inline_send_and_ack_checks_agree_with_the_protocol(obj):
    try:
        protocol.parse_client_frame(obj)
        expected = None
    except FrameError as err:
        expected = err.code
    assert _relay_verdict(obj) == expected, obj


def _imports(relpath: str) -> set[str]:
    import ast

    with open(os.path.join(ROOT, relpath), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_client_imports_nothing_from_the_relay_and_the_cores_no_io():
    client_dir = os.path.join(ROOT, "msgrlib", "client")
    for name in sorted(os.listdir(client_dir)):
        if name.endswith(".py"):
            found = _imports(os.path.join("msgrlib", "client", name))
            assert not {m for m in found if m.startswith("msgrlib.relay")}, name
    for relpath in ("msgrlib/protocol.py", "msgrlib/ratelimit.py", "msgrlib/client/session.py",
                    "msgrlib/client/identity.py"):
        found = _imports(relpath)
        assert not found & {"asyncio", "socket", "ssl", "curses"}, relpath
        assert not {m for m in found if m.startswith(("msgrlib.relay", "msgrlib.ui"))}, relpath

