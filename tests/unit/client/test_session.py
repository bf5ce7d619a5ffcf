"""msgrlib.client.session: the client's relay session, sans-I/O, frame by frame.

No sockets here: frames in, events and frames out, against the relay core
itself where a real answer helps (``test_client.py`` runs it over TCP and TLS).
"""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey

from msgrlib import protocol
from msgrlib.client.session import (
    TRANSITIONS,
    Ended,
    ForChat,
    Ignored,
    Ready,
    RelaySession,
    SessionError,
    SessionState,
)
from msgrlib.protocol import ErrorCode

EXAMPLES = int(os.environ.get("MSGR_FUZZ_EXAMPLES", "200"))
NONCE = bytes(range(32))
FP = "SHA256:" + ":".join(["AB"] * 32)


def challenge(relay: str | None = "0123456789abcdef") -> dict:
    return protocol.Challenge(NONCE, relay).to_json()


def welcome(user: str = "alice", **limits) -> dict:
    return {"type": "welcome", "user": user, "v": 1, "relay": "0123456789abcdef",
            "limits": {"max_frame": 65536, "heartbeat": 20.0, "ttl_min": 5, **limits}}


def started(**kw) -> tuple[RelaySession, SigningKey]:
    key = SigningKey.generate()
    session = RelaySession("alice", key, **kw)
    session.start()
    return session, key


def ready() -> RelaySession:
    session, _ = started()
    assert session.receive(challenge()) == []
    [event] = session.receive(welcome())
    assert isinstance(event, Ready)
    session.frames_to_send()
    return session


def test_hello_challenge_auth_welcome():
    session, key = started()
    [hello] = session.frames_to_send()
    assert hello == {"type": "hello", "v": 1, "user": "alice",
                     "key": base64.b64encode(bytes(key.verify_key)).decode()}
    assert session.state is SessionState.HELLO_SENT
    assert session.receive(challenge("relay-1")) == []
    [auth] = session.frames_to_send()
    sig = base64.b64decode(auth["sig"])
    # Bound to the id the relay advertised (no TLS here).
    VerifyKey(bytes(key.verify_key)).verify(
        protocol.auth_message(NONCE, "id:relay-1", "alice"), sig)
    assert session.state is SessionState.AUTH_SENT
    [event] = session.receive(welcome(heartbeat=7))
    assert event == Ready("0123456789abcdef", protocol.Limits(max_frame=65536, heartbeat=7,
                                                              ttl_min=5))
    assert session.ready and session.frames_to_send() == []


def test_with_tls_the_signature_names_the_certificate_not_the_advertised_id():
    session, key = started(tls_fingerprint=FP)
    session.frames_to_send()
    session.receive(challenge("relay-1"))
    [auth] = session.frames_to_send()
    sig = base64.b64decode(auth["sig"])
    verify = VerifyKey(bytes(key.verify_key)).verify
    verify(protocol.auth_message(NONCE, "tls:" + FP, "alice"), sig)
    with pytest.raises(Exception):  # noqa: B017 - nacl's BadSignatureError
        verify(protocol.auth_message(NONCE, "id:relay-1", "alice"), sig)


def test_a_challenge_without_relay_id_ends_a_plain_session():
    session, _ = started()
    [event] = session.receive(challenge(None))
    assert isinstance(event, Ended) and event.code == ErrorCode.PROTOCOL and event.permanent
    assert session.state is SessionState.CLOSED


def test_with_tls_a_challenge_without_relay_id_is_fine():
    session, _ = started(tls_fingerprint=FP)
    assert session.receive(challenge(None)) == []
    assert session.state is SessionState.AUTH_SENT


@pytest.mark.parametrize("frame", [
    {"type": "welcome", "user": "alice"},                       # welcome before challenge
    {"type": "deliver", "id": 1, "from": "bob", "kind": "msg", "ttl": 5,
     "expires_at": 1.0, "body": "x"},
    {"type": "challenge", "nonce": "AAAA"},                       # 3 bytes, not 32
    {"type": "nonsense"},
    {"type": 7},
])
def test_anything_but_a_good_challenge_first_ends_the_session(frame):
    session, _ = started()
    [event] = session.receive(frame)
    assert isinstance(event, Ended) and event.code == ErrorCode.PROTOCOL
    assert session.frames_to_send() == [] and session.state is SessionState.CLOSED


def test_an_error_before_welcome_ends_it_with_the_relays_code():
    session, _ = started()
    session.receive(challenge())
    [event] = session.receive({"type": "error", "code": "name_owned", "message": "taken",
                               "fatal": True})
    assert event == Ended(ErrorCode.NAME_OWNED, "taken", True)
    session, _ = started()
    [event] = session.receive({"type": "error", "code": "relay_full", "message": "full"})
    assert event == Ended(ErrorCode.RELAY_FULL, "full", False)


def test_welcome_for_another_name_is_refused():
    session, _ = started()
    session.receive(challenge())
    [event] = session.receive(welcome(user="mallory"))
    assert isinstance(event, Ended) and event.code == ErrorCode.PROTOCOL


def test_ready_frames_go_to_the_chat_and_pong_nowhere():
    session = ready()
    deliver = {"type": "deliver", "id": 9, "from": "bob", "kind": "msg", "ttl": 5,
               "expires_at": 1.5, "body": "r1.x"}
    [event] = session.receive(deliver)
    assert event == ForChat(protocol.Deliver(9, "bob", "msg", 5, 1.5, "r1.x"), deliver)
    assert session.receive({"type": "pong"}) == []
    refused = {"type": "error", "code": "rate_limited", "message": "slow", "fatal": False,
               "ref": 3}
    [event] = session.receive(refused)
    assert isinstance(event, ForChat) and event.frame.code is ErrorCode.RATE_LIMITED
    assert session.ready


def test_a_malformed_frame_after_welcome_is_ignored_not_fatal():
    session = ready()
    [event] = session.receive({"type": "deliver", "id": "9", "from": "bob", "body": "x"})
    assert isinstance(event, Ignored) and event.kind == "deliver"
    [event] = session.receive({"type": "challenge", "nonce": base64.b64encode(NONCE).decode()})
    assert isinstance(event, Ended)  # a well-formed frame out of place is not ignored


def test_fatal_error_shutdown_and_close():
    session = ready()
    [event] = session.receive({"type": "error", "code": "replaced", "message": "m",
                               "fatal": True})
    assert event.permanent and session.state is SessionState.CLOSED
    session = ready()
    [event] = session.receive({"type": "error", "code": "timeout", "fatal": True})
    assert event == Ended(ErrorCode.TIMEOUT, "timeout", False)
    session = ready()
    [event] = session.receive({"type": "shutdown", "message": "bye all"})
    assert event == Ended(ErrorCode.SHUTTING_DOWN, "bye all", False)
    session = ready()
    session.ping()
    session.close()
    assert session.frames_to_send() == [{"type": "ping"}, {"type": "bye"}]
    assert session.state is SessionState.CLOSED


def test_an_unknown_error_code_from_a_newer_relay_is_kept_as_text():
    session = ready()
    [event] = session.receive({"type": "error", "code": "new_thing", "message": "m"})
    assert isinstance(event, ForChat) and event.frame.code == "new_thing"


def test_steps_in_the_wrong_state_are_the_callers_error():
    session = RelaySession("alice", SigningKey.generate())
    with pytest.raises(SessionError):
        session.receive(challenge())
    with pytest.raises(SessionError):
        session.ping()
    session.start()
    with pytest.raises(SessionError):
        session.start()
    session.close()
    assert session.frames_to_send() == [protocol.Hello("alice", bytes(
        session.identity.verify_key)).to_json()]  # no bye: never signed in
    with pytest.raises(SessionError):
        session.receive(challenge())


def test_the_transition_table():
    reachable = {SessionState.IDLE}
    for _ in SessionState:
        reachable |= {nxt for (state, _), nxt in TRANSITIONS.items() if state in reachable}
    assert reachable == set(SessionState)
    # CLOSED is terminal: only "close" is allowed there, and it stays CLOSED.
    assert {k: v for k, v in TRANSITIONS.items() if k[0] is SessionState.CLOSED} == {
        (SessionState.CLOSED, "close"): SessionState.CLOSED}


# -- fuzzing: whatever the relay sends, the session answers with events ------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.floats(allow_nan=False,
                                                                      allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12)
KINDS = ["challenge", "welcome", "accepted", "deliver", "expired", "presence", "pong", "error",
         "shutdown", "ping", "hello", "nonsense"]
FIELDS = ["nonce", "relay", "user", "v", "limits", "id", "ttl", "expires_at", "ref", "from",
          "kind", "body", "to", "online", "t", "code", "message", "fatal"]
frames = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8).flatmap(
        lambda fields: st.sampled_from(KINDS).map(lambda kind: {"type": kind, **fields})),
    st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    st.sampled_from([challenge(), welcome(), {"type": "pong"}, {"type": "shutdown"}]),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, max_size=12), st.booleans())
def test_fuzz_inbound_frames_never_raise_and_closed_is_terminal(sequence, tls):
    session, _ = started(tls_fingerprint=FP if tls else None)
    session.frames_to_send()
    for frame in sequence:
        before = session.state
        events = session.receive(frame)
        for event in events:
            assert isinstance(event, (Ready, ForChat, Ignored, Ended))
            if isinstance(event, ForChat):
                assert before is SessionState.READY
            if isinstance(event, Ignored):
                assert before is SessionState.READY and session.state is SessionState.READY
        if any(isinstance(e, Ended) for e in events):
            assert session.state is SessionState.CLOSED and session.frames_to_send() == []
            with pytest.raises(SessionError):
                session.receive(frame)
            return
        for out in session.frames_to_send():
            assert out["type"] == "auth" and before is SessionState.HELLO_SENT
        if before is SessionState.READY:
            assert session.state is SessionState.READY
