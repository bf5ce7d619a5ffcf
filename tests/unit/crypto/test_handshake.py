"""Tests for handshake.py: an in-memory initiator/responder pair, no sockets."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import nacl.bindings
import pytest
from helpers import VECTORS as VECTOR_DIR
from hypothesis import given, settings
from hypothesis import strategies as st

from msgrlib.crypto import cpace, handshake
from msgrlib.crypto.handshake import (
    HandshakeStateError,
    Initiator,
    MalformedHandshake,
    PasscodeMismatch,
    Responder,
    SessionKeys,
    State,
    kind_of,
)
from msgrlib.errors import MsgrError
from msgrlib.util.names import BadName

PRS = hashlib.sha512(b"stand-in for the Argon2id output").digest()[:32]
WRONG_PRS = hashlib.sha512(b"another passcode").digest()[:32]
ALICE, BOB = "alice", "bob"

LOW_ORDER = json.loads(
    (VECTOR_DIR / "cpace-x25519-sha512.json").read_text()
)["low_order"]


def seeded_rng(seed: str) -> Callable[[int], bytes]:
    """A deterministic rng: SHA-512 of seed and a counter."""
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.sha512(f"{seed}/{counter}".encode()).digest()[:n]

    return rng


def pair(
    *, prs_a: bytes = PRS, prs_b: bytes = PRS, seed: str | None = None
) -> tuple[Initiator, Responder]:
    kw_a: dict[str, Any] = {"rng": seeded_rng(seed + "/a")} if seed else {}
    kw_b: dict[str, Any] = {"rng": seeded_rng(seed + "/b")} if seed else {}
    return (
        Initiator(prs=prs_a, me=ALICE, peer=BOB, **kw_a),
        Responder(prs=prs_b, me=BOB, peer=ALICE, **kw_b),
    )


def wire(msg: dict[str, Any]) -> dict[str, Any]:
    """What the relay does to a payload: JSON out, JSON in."""
    return json.loads(json.dumps(msg))


def run(a: Initiator, b: Responder) -> tuple[SessionKeys, SessionKeys]:
    m2 = b.on_init(wire(a.start()))
    m4, keys_b = b.on_share(wire(a.on_resp(wire(m2))))
    return a.on_confirm(wire(m4)), keys_b


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def flip(text: str, index: int = 0) -> str:
    raw = bytearray(unb64(text))
    raw[index] ^= 0x01
    return b64(bytes(raw))


def up_to_m2(seed: str | None = None) -> tuple[Initiator, Responder, dict[str, Any]]:
    a, b = pair(seed=seed)
    return a, b, b.on_init(a.start())


def up_to_m3(seed: str | None = None) -> tuple[Initiator, Responder, dict[str, Any]]:
    a, b, m2 = up_to_m2(seed)
    return a, b, a.on_resp(m2)


# -- the happy path -------------------------------------------------------------


def test_full_handshake_agrees() -> None:
    a, b = pair(seed="happy")
    keys_a, keys_b = run(a, b)
    assert len(keys_a.isk) == 64 and keys_a.isk == keys_b.isk
    assert len(keys_a.sid) == 16 and keys_a.sid == keys_b.sid
    assert len(keys_a.root_key) == 32 and keys_a.root_key == keys_b.root_key
    assert keys_a.root_key not in keys_a.isk
    assert (
        keys_a.ad == keys_b.ad == cpace.lv_cat(b"msgr/v1/ratchet-ad", keys_a.sid, b"alice", b"bob")
    )
    assert keys_a.safety_number == keys_b.safety_number
    assert re.fullmatch(r"\d{5}( \d{5}){7}", keys_a.safety_number)
    assert (keys_a.role, keys_b.role) == ("initiator", "responder")
    assert a.state is State.DONE and b.state is State.DONE


def test_ratchet_keys_are_role_correct() -> None:
    keys_a, keys_b = run(*pair(seed="ratchet"))
    assert keys_a.own_ratchet_priv is None and keys_b.peer_ratchet_pub is None
    assert keys_b.own_ratchet_priv is not None and len(keys_b.own_ratchet_priv) == 32
    assert keys_a.peer_ratchet_pub == nacl.bindings.crypto_scalarmult_base(keys_b.own_ratchet_priv)


def test_pinned_rng_is_deterministic_and_sessions_are_fresh() -> None:
    first, again = run(*pair(seed="same")), run(*pair(seed="same"))
    assert first[0].isk == again[0].isk and first[1].isk == again[1].isk
    other = run(*pair(seed="other"))
    assert other[0].isk != first[0].isk and other[0].sid != first[0].sid
    assert other[0].safety_number != first[0].safety_number


def test_default_rng() -> None:
    keys_a, keys_b = run(*pair())
    assert keys_a.isk == keys_b.isk


def test_messages_have_the_documented_shape() -> None:
    a, b = pair(seed="shape")
    m1 = a.start()
    m2 = b.on_init(m1)
    m3 = a.on_resp(m2)
    m4, _ = b.on_share(m3)
    assert m1 == {"hs": "init", "v": 1, "na": m1["na"]} and len(unb64(m1["na"])) == 16
    assert set(m2) == {"hs", "v", "na", "nb", "Y", "ad"} and m2["na"] == m1["na"]
    assert set(m3) == {"hs", "v", "na", "nb", "Y", "ad", "tag"} and len(unb64(m3["tag"])) == 64
    assert set(m4) == {"hs", "v", "na", "nb", "tag"}
    assert unb64(m3["ad"]) == cpace.lv_cat(b"alice")
    assert unb64(m2["ad"])[:5] == cpace.prepend_len(b"bob") + b"\x20"
    assert [kind_of(m) for m in (m1, m2, m3, m4)] == ["init", "resp", "share", "confirm"]


def test_the_transcript_is_the_drafts() -> None:
    # Recompute B's view from the messages with the cpace module alone.
    a, b = pair(seed="transcript")
    m1 = a.start()
    m2 = b.on_init(m1)
    m3 = a.on_resp(m2)
    _, keys = b.on_share(m3)
    sid = hashlib.sha512(
        cpace.lv_cat(b"msgr/v1/cpace-sid", unb64(m1["na"]), unb64(m2["nb"]))
    ).digest()[:16]
    assert keys.sid == sid
    ci = cpace.lv_cat(b"msgr/v1/cpace-ci", b"alice", b"bob")
    yb_scalar = seeded_rng("transcript/b")  # nb first, then yb
    yb_scalar(16)
    yb = yb_scalar(32)
    assert cpace.scalar_mult(yb, cpace.calculate_generator(PRS, ci, sid)) == unb64(m2["Y"])
    k = cpace.scalar_mult_vfy(yb, unb64(m3["Y"]))
    transcript = cpace.transcript_ir(
        unb64(m3["Y"]), unb64(m3["ad"]), unb64(m2["Y"]), unb64(m2["ad"])
    )
    assert keys.isk == cpace.isk(sid, k, transcript)


def test_session_keys_repr_hides_secrets() -> None:
    keys_a, keys_b = run(*pair(seed="repr"))
    for keys in (keys_a, keys_b):
        text = repr(keys) + str(keys)
        assert keys.sid.hex() in text and keys.role in text
        for secret in (keys.isk, keys.root_key, keys.own_ratchet_priv or b"x" * 32):
            assert secret.hex() not in text and repr(secret) not in text
        assert keys.safety_number not in text


def test_kind_of() -> None:
    assert kind_of({"hs": "share"}) == "share"
    for bad in (None, [], "init", {"hs": "hello"}, {"hs": 1}, {"hs": ["init"]}, {}):
        assert kind_of(bad) is None


def test_safety_number_is_the_documented_function() -> None:
    isk = bytes(range(64))
    digest = hashlib.sha512(cpace.lv_cat(b"msgr/v1/safety-number", isk)).digest()
    digits = str(int.from_bytes(digest[:20], "big") % 10**40).zfill(40)
    assert handshake.safety_number(isk).replace(" ", "") == digits


# -- wrong passcode, tampering, replays -----------------------------------------------


def test_wrong_passcode_stops_at_b_and_b_sends_nothing() -> None:
    a, b = pair(prs_b=WRONG_PRS, seed="wrong")
    m3 = a.on_resp(b.on_init(a.start()))
    with pytest.raises(PasscodeMismatch) as info:
        b.on_share(m3)
    assert str(info.value) == "passcode mismatch, or someone is interfering"
    assert info.value.code == "passcode_mismatch" and info.value.remote
    assert b.state is State.FAILED


def _tamper_m2(
    field: str, change: Callable[[str], str]
) -> tuple[Initiator, Responder, dict[str, Any]]:
    a, b, m2 = up_to_m2("tamper")
    m2 = copy.deepcopy(m2)
    m2[field] = change(m2[field])
    return a, b, m2


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("Y", lambda s: flip(s, 1)),
        ("ad", lambda s: flip(s, 10)),  # B's ratchet key
        ("nb", flip),
    ],
)
def test_tampered_m2_is_caught_by_b(field: str, change: Callable[[str], str]) -> None:
    a, b, m2 = _tamper_m2(field, change)
    m3 = a.on_resp(m2)  # A cannot tell yet
    with pytest.raises((PasscodeMismatch, MalformedHandshake)):
        b.on_share(m3)
    assert b.state is State.FAILED


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("na", flip),
        ("ad", lambda s: b64(cpace.lv_cat(b"carol", bytes(32)))),
        ("ad", lambda s: b64(unb64(s)[:-1])),
        ("Y", lambda s: b64(unb64(s)[:31])),
        ("Y", lambda s: b64(bytes(31) + b"\x80")),  # non-canonical encoding
    ],
)
def test_tampered_m2_is_caught_by_a(field: str, change: Callable[[str], str]) -> None:
    a, _, m2 = _tamper_m2(field, change)
    with pytest.raises(MalformedHandshake) as info:
        a.on_resp(m2)
    assert info.value.field == field and info.value.code == "bad_handshake"
    assert a.state is State.FAILED


@pytest.mark.parametrize(
    ("field", "change", "error"),
    [
        ("tag", flip, PasscodeMismatch),
        ("Y", lambda s: flip(s, 2), PasscodeMismatch),
        ("ad", lambda s: b64(cpace.lv_cat(b"mallory")), MalformedHandshake),
        ("nb", flip, MalformedHandshake),
    ],
)
def test_tampered_m3(field: str, change: Callable[[str], str], error: type[Exception]) -> None:
    _, b, m3 = up_to_m3("tamper3")
    m3 = dict(m3, **{field: change(m3[field])})
    with pytest.raises(error):
        b.on_share(m3)
    assert b.state is State.FAILED


def test_tampered_m4_is_caught_by_a() -> None:
    a, b, m3 = up_to_m3("tamper4")
    m4, _ = b.on_share(m3)
    with pytest.raises(PasscodeMismatch):
        a.on_confirm(dict(m4, tag=flip(m4["tag"], 63)))
    assert a.state is State.FAILED


def test_replayed_m3_from_an_older_attempt_is_rejected() -> None:
    _, _, old_m3 = up_to_m3("attempt-1")
    a2, b2 = pair(seed="attempt-2")
    b2.on_init(a2.start())
    with pytest.raises(MalformedHandshake) as info:
        b2.on_share(old_m3)
    assert info.value.field in {"na", "nb"}
    assert "stale or replayed" in str(info.value)


def test_replayed_m2_and_m4_are_rejected() -> None:
    a1, b1, m2_old = up_to_m2("old")
    m4_old, _ = b1.on_share(a1.on_resp(m2_old))
    a2, b2 = pair(seed="new")
    with pytest.raises(MalformedHandshake):
        a2.on_resp(b2.on_init(a2.start()) | {"na": m2_old["na"]})
    a3, b3 = pair(seed="newer")
    a3.on_resp(b3.on_init(a3.start()))
    with pytest.raises(MalformedHandshake):
        a3.on_confirm(m4_old)


# -- low-order shares ------------------------------------------------------------------

LOW_ORDER_US = [c["u"] for c in LOW_ORDER["cases"]]
_ZERO_Q = {c["u"] for c in LOW_ORDER["cases"] if c["q"] == "00" * 32}


def expected_error(u: str) -> type[Exception]:
    """A canonical share giving the neutral element is a low-order point; any
    other vector share is a non-canonical encoding (bit 255 set, or >= p),
    which an honest peer never sends, refused before any arithmetic."""
    if int.from_bytes(bytes.fromhex(u), "little") < 2**255 - 19:
        assert u in _ZERO_Q  # the draft's non-zero cases are all non-canonical
        return cpace.LowOrderPoint
    return MalformedHandshake


@pytest.mark.parametrize("u", LOW_ORDER_US, ids=[u[:8] for u in LOW_ORDER_US])
def test_low_order_share_in_m2(u: str) -> None:
    a, _, m2 = up_to_m2("low2")
    with pytest.raises(expected_error(u)):
        a.on_resp(dict(m2, Y=b64(bytes.fromhex(u))))
    assert a.state is State.FAILED


@pytest.mark.parametrize("u", LOW_ORDER_US, ids=[u[:8] for u in LOW_ORDER_US])
def test_low_order_share_in_m3(u: str) -> None:
    _, b, m3 = up_to_m3("low3")
    with pytest.raises(expected_error(u)):
        b.on_share(dict(m3, Y=b64(bytes.fromhex(u))))
    assert b.state is State.FAILED


def test_all_zero_share() -> None:
    a, _, m2 = up_to_m2()
    with pytest.raises(cpace.LowOrderPoint):
        a.on_resp(dict(m2, Y=b64(bytes(32))))


# -- the state machine -----------------------------------------------------------------


def test_messages_in_the_wrong_state() -> None:
    a, b = pair()
    with pytest.raises(HandshakeStateError) as info:
        a.on_resp({})
    assert not info.value.remote and info.value.code == "handshake_state"
    with pytest.raises(HandshakeStateError):
        b.on_share({})
    a, b = pair()
    a.start()
    with pytest.raises(HandshakeStateError):
        a.start()
    a, b = pair()
    m1 = a.start()
    with pytest.raises(HandshakeStateError):
        a.on_confirm({})
    b.on_init(m1)
    with pytest.raises(HandshakeStateError):
        b.on_init(m1)


def test_done_objects_refuse_more_input() -> None:
    a, b = pair(seed="done")
    m1 = a.start()
    m2 = b.on_init(m1)
    m3 = a.on_resp(m2)
    m4, _ = b.on_share(m3)
    a.on_confirm(m4)
    with pytest.raises(HandshakeStateError):
        b.on_share(m3)
    with pytest.raises(HandshakeStateError):
        a.on_confirm(m4)


def test_failure_is_terminal() -> None:
    a, b, m2 = up_to_m2("terminal")
    with pytest.raises(MalformedHandshake):
        a.on_resp(dict(m2, v=2))
    assert a.state is State.FAILED
    with pytest.raises(HandshakeStateError, match="already failed"):
        a.on_resp(m2)  # the genuine M2 no longer helps
    assert a.state is State.FAILED

    a, b = pair(prs_b=WRONG_PRS)
    m3 = a.on_resp(b.on_init(a.start()))
    with pytest.raises(PasscodeMismatch):
        b.on_share(m3)
    with pytest.raises(HandshakeStateError):
        b.on_share(m3)


def test_secrets_are_dropped_when_done_or_failed() -> None:
    a, b = pair(seed="drop")
    run(a, b)
    for obj in (a, b):
        for name in ("_prs", "_isk", "_expected_tb", "_yb", "_ratchet_priv"):
            assert getattr(obj, name, b"") == b""
    a, _ = pair()
    a.start()
    with pytest.raises(MalformedHandshake):
        a.on_resp({})
    assert a._prs == b""


def test_constructor_checks_inputs() -> None:
    with pytest.raises(ValueError):
        Initiator(prs=b"short", me=ALICE, peer=BOB)
    with pytest.raises(BadName):
        Initiator(prs=PRS, me="Alice", peer=BOB)
    with pytest.raises(BadName):
        Responder(prs=PRS, me=BOB, peer="a lice")


@pytest.mark.parametrize(
    "change",
    [
        {"v": True},
        {"v": 1.0},
        {"v": "1"},
        {"hs": "confirm"},
        {"na": None},
        {"na": "AAAA"},
        {"na": "A" * 10_000},
        {"na": "!!!!!!!!!!!!!!!!!!!!!!!!"},
        {"na": "AAAAAAAAAAAAAAAAAAAAAB=="},  # non-canonical trailing bits
        {"extra": 1},
    ],
)
def test_malformed_m1(change: dict[str, Any]) -> None:
    _, b = pair()
    m1 = Initiator(prs=PRS, me=ALICE, peer=BOB).start()
    with pytest.raises(MalformedHandshake):
        b.on_init(m1 | change)


def test_missing_field() -> None:
    a, _, m2 = up_to_m2()
    del m2["ad"]
    with pytest.raises(MalformedHandshake, match="fields"):
        a.on_resp(m2)


# -- fuzz: only our own errors ------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)


def _mutations(msg: dict[str, Any]) -> st.SearchStrategy[Any]:
    fields = sorted(msg)
    return st.one_of(
        JSON,
        st.builds(lambda k, v: msg | {k: v}, st.sampled_from(fields), JSON),
        st.builds(
            lambda k, raw: msg | {k: b64(raw)}, st.sampled_from(fields), st.binary(max_size=80)
        ),
        st.builds(lambda k: {f: msg[f] for f in fields if f != k}, st.sampled_from(fields)),
    )


def _fuzz_targets() -> list[tuple[Callable[[Any], Any], dict[str, Any]]]:
    """Each entry point in the state where it expects a message, with a valid template."""
    a, b, m2 = up_to_m2("fuzz")
    a2, b2, m3 = up_to_m3("fuzz")
    m4, _ = b2.on_share(copy.deepcopy(m3))
    a3, b3 = pair(seed="fuzz")
    m1 = a3.start()
    return [(b3.on_init, m1), (a.on_resp, m2), (b.on_share, m3), (a2.on_confirm, m4)]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_fuzz_every_entry_point(data: st.DataObject) -> None:
    method, template = data.draw(st.sampled_from(_fuzz_targets()))
    msg = data.draw(_mutations(template))
    try:
        method(msg)
    except MsgrError:
        pass


@settings(max_examples=100, deadline=None)
@given(JSON)
def test_fuzz_raw_garbage(value: Any) -> None:
    for make in (
        lambda: up_to_m2()[0].on_resp,
        lambda: pair()[1].on_init,
        lambda: up_to_m3()[1].on_share,
    ):
        try:
            make()(value)
        except MsgrError:
            pass


# -- men in the middle ------------------------------------------------------------------


def test_mitm_relaying_unchanged_changes_nothing() -> None:
    seen: list[dict[str, Any]] = []

    def relay(msg: dict[str, Any]) -> dict[str, Any]:
        seen.append(msg)
        return wire(msg)

    a, b = pair(seed="relay")
    m2 = b.on_init(relay(a.start()))
    m4, keys_b = b.on_share(relay(a.on_resp(relay(m2))))
    keys_a = a.on_confirm(relay(m4))
    assert keys_a.isk == keys_b.isk
    assert (keys_a, keys_b) == run(*pair(seed="relay"))
    assert len(seen) == 4


def fake_responder(
    m1: dict[str, Any], prs: bytes
) -> tuple[dict[str, Any], Callable[[dict[str, Any]], dict[str, Any]]]:
    """An attacker playing B with passcode output ``prs``, built from cpace alone.

    Unlike :class:`Responder` it never checks Ta: it forges M4 from its own
    view of the keys, the best it can do.
    """
    na, nb = unb64(m1["na"]), bytes(16)
    sid = handshake.session_id(na, nb)
    yb = hashlib.sha256(b"attacker").digest()
    share = cpace.scalar_mult(
        yb, cpace.calculate_generator(prs, handshake.channel_id(ALICE, BOB), sid)
    )
    adb = cpace.lv_cat(b"bob", nacl.bindings.crypto_scalarmult_base(yb))
    m2 = {"hs": "resp", "v": 1, "na": m1["na"], "nb": b64(nb), "Y": b64(share), "ad": b64(adb)}

    def finish(m3: dict[str, Any]) -> dict[str, Any]:
        ya, ada = unb64(m3["Y"]), unb64(m3["ad"])
        isk = cpace.isk(
            sid, cpace.scalar_mult_vfy(yb, ya), cpace.transcript_ir(ya, ada, share, adb)
        )
        tb = cpace.confirmation_tag(cpace.confirmation_key(sid, isk), share, adb)
        return {"hs": "confirm", "v": 1, "na": m1["na"], "nb": b64(nb), "tag": b64(tb)}

    return m2, finish


def test_fake_responder_with_the_right_passcode_passes() -> None:
    # Shows the forgery below is built right: only the passcode makes it fail.
    a = Initiator(prs=PRS, me=ALICE, peer=BOB)
    m2, finish = fake_responder(a.start(), PRS)
    keys = a.on_confirm(finish(a.on_resp(m2)))
    assert keys.peer_ratchet_pub is not None


def test_mitm_with_a_wrong_passcode_is_detected_on_both_sides() -> None:
    # Toward A, the attacker plays B with its own passcode guess: A refuses M4.
    a = Initiator(prs=PRS, me=ALICE, peer=BOB)
    m2, finish = fake_responder(a.start(), WRONG_PRS)
    m3 = a.on_resp(m2)
    with pytest.raises(PasscodeMismatch):
        a.on_confirm(finish(m3))
    # Toward B, it plays A with its guess: B refuses M3 and sends no M4.
    b = Responder(prs=PRS, me=BOB, peer=ALICE)
    fake_a = Initiator(prs=WRONG_PRS, me=ALICE, peer=BOB)
    m3_fake = fake_a.on_resp(b.on_init(fake_a.start()))
    with pytest.raises(PasscodeMismatch):
        b.on_share(m3_fake)
    assert b.state is State.FAILED


def test_mitm_who_knows_the_passcode_shows_different_safety_numbers() -> None:
    a, b = pair(seed="mitm-a")
    mitm_b = Responder(prs=PRS, me=BOB, peer=ALICE, rng=seeded_rng("mitm-1"))
    mitm_a = Initiator(prs=PRS, me=ALICE, peer=BOB, rng=seeded_rng("mitm-2"))
    keys_a, _ = run(a, mitm_b)
    _, keys_b = run(mitm_a, b)
    assert keys_a.isk != keys_b.isk
    assert keys_a.safety_number != keys_b.safety_number


def test_belongs_tells_this_attempts_messages_from_others_without_changing_state():
    a, b = pair()
    assert a.belongs({"hs": "resp"})  # nothing to check before start()
    m1 = wire(a.start())
    m2 = wire(b.on_init(m1))
    other_a, other_b = pair()
    stale = wire(other_b.on_init(wire(other_a.start())))  # another attempt's resp
    assert a.belongs(m2)
    assert not a.belongs(stale)
    assert not a.belongs({**m2, "na": "not base64!"}) and not a.belongs({"hs": "resp"})
    assert a.state is State.AWAIT_RESP
    m3 = wire(a.on_resp(m2))
    assert b.belongs(m3) and not b.belongs({**m3, "nb": b64(bytes(16))})
    m4, keys_b = b.on_share(m3)
    assert a.on_confirm(wire(m4)).root_key == keys_b.root_key
