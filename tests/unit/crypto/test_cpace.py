"""Known-answer tests for cpace.py against draft-irtf-cfrg-cpace Appendix A and B.1.

Every check calls the production functions; the only arithmetic done here is
on the vector's own ``g`` (x-only doubling), to relate it to libsodium's
cofactor-cleared generator.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import nacl.bindings
import pytest
from helpers import VECTORS as VECTOR_DIR
from hypothesis import given, settings
from hypothesis import strategies as st

from msgrlib.crypto import cpace
from msgrlib.errors import CryptoError

VECTORS = json.loads((VECTOR_DIR / "cpace-x25519-sha512.json").read_text())
H = bytes.fromhex

PRS = VECTORS["PRS_text"].encode()
ADA = VECTORS["ADa_text"].encode()
ADB = VECTORS["ADb_text"].encode()
CI = H(VECTORS["CI"])
SID = H(VECTORS["sid"])
G_U = H(VECTORS["g"])
YA_SCALAR, YB_SCALAR = H(VECTORS["ya"]), H(VECTORS["yb"])
YA, YB, K = H(VECTORS["Ya"]), H(VECTORS["Yb"]), H(VECTORS["K"])

# Draft B.1.1, "generator_string(G.DSI,PRS,CI,sid,H.s_in_bytes)" (170 bytes).
GENERATOR_STRING = H(
    "0843506163653235350850617373776f72646d"
    + "00" * 109
    + "180b415f696e69746961746f720b425f726573706f6e646572107e4b4791d6a8ef019b936c79fb7f2c57"
)

P = 2**255 - 19
A24 = 486662


def montgomery_double_u(u: bytes) -> bytes:
    """x([2]P) on Curve25519 from x(P), for relating the vector's g to 8*g."""
    x = int.from_bytes(u, "little")
    num = (x * x - 1) ** 2
    den = 4 * x * (x * x + A24 * x + 1)
    return (num * pow(den, P - 2, P) % P).to_bytes(32, "little")


# -- Appendix A: string utilities ---------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "00"),
        (b"1234", "0431323334"),
        (bytes(range(127)), "7f" + bytes(range(127)).hex()),
        (bytes(range(128)), "8001" + bytes(range(128)).hex()),
    ],
)
def test_prepend_len(data: bytes, expected: str) -> None:
    assert cpace.prepend_len(data).hex() == expected


def test_prepend_len_multibyte_leb128() -> None:
    assert cpace.prepend_len(bytes(300))[:2] == bytes([0xAC, 0x02])
    assert cpace.prepend_len(bytes(16384))[:3] == bytes([0x80, 0x80, 0x01])


def test_lv_cat() -> None:
    assert cpace.lv_cat(b"1234", b"5", b"", b"678").hex() == "043132333401350003363738"


def test_ordered_concatenation() -> None:
    larger = cpace.lexiographically_larger
    assert larger(b"\0", b"\0\0") is False
    assert larger(b"\1", b"\0\0") is True
    assert larger(b"\0\0", b"\0") is True
    assert larger(b"\0\0", b"\1") is False
    assert larger(b"\0\1", b"\1") is False
    assert larger(b"ABCD", b"BCD") is False
    assert cpace.o_cat(b"ABCD", b"BCD").hex() == "6f6342434441424344"
    assert cpace.o_cat(b"BCD", b"ABCDE").hex() == "6f634243444142434445"


def test_transcripts() -> None:
    ir, oc = cpace.transcript_ir, cpace.transcript_oc
    assert ir(b"123", b"PartyA", b"234", b"PartyB").hex() == (
        "03313233065061727479410332333406506172747942"
    )
    assert ir(b"3456", b"PartyA", b"2345", b"PartyB").hex() == (
        "043334353606506172747941043233343506506172747942"
    )
    assert oc(b"123", b"PartyA", b"234", b"PartyB").hex() == (
        "6f6303323334065061727479420331323306506172747941"
    )
    assert oc(b"3456", b"PartyA", b"2345", b"PartyB").hex() == (
        "6f63043334353606506172747941043233343506506172747942"
    )


# -- B.1.1: the generator -------------------------------------------------------


def test_generator_string() -> None:
    assert cpace.generator_string(cpace.DSI, PRS, CI, SID) == GENERATOR_STRING


def test_generator_hash() -> None:
    assert cpace.generator_hash(PRS, CI, SID).hex() == VECTORS["gen_hash"]


def test_generator_is_eight_times_the_drafts_g() -> None:
    # libsodium's from_uniform is the draft's Elligator 2 followed by cofactor
    # clearing; check u(G8) == u(8*g) for the vector's g, byte for byte.
    g8 = cpace.calculate_generator(PRS, CI, SID)
    u = G_U
    for _ in range(3):
        u = montgomery_double_u(u)
    assert nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(g8) == u


def test_generator_depends_on_every_input() -> None:
    base = cpace.calculate_generator(PRS, CI, SID)
    assert cpace.calculate_generator(b"Passwore", CI, SID) != base
    assert cpace.calculate_generator(PRS, CI + b"x", SID) != base
    assert cpace.calculate_generator(PRS, CI, SID[:-1]) != base


# -- B.1.2 - B.1.4: shares and K --------------------------------------------------


def test_shares() -> None:
    g8 = cpace.calculate_generator(PRS, CI, SID)
    assert cpace.scalar_mult(YA_SCALAR, g8) == YA
    assert cpace.scalar_mult(YB_SCALAR, g8) == YB


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_scalar_mult_equals_x25519_on_the_drafts_g(y: bytes) -> None:
    # The cofactor compensation, for any scalar: (clamp(y) >> 3) * 8g == clamp(y) * g.
    g8 = cpace.calculate_generator(PRS, CI, SID)
    assert cpace.scalar_mult(y, g8) == nacl.bindings.crypto_scalarmult(y, G_U)


def test_k_both_directions() -> None:
    assert cpace.scalar_mult_vfy(YA_SCALAR, YB) == K
    assert cpace.scalar_mult_vfy(YB_SCALAR, YA) == K


# -- B.1.5 - B.1.7: ISK and sid_output ---------------------------------------------


def test_isk_initiator_responder() -> None:
    transcript = cpace.transcript_ir(YA, ADA, YB, ADB)
    assert len(transcript) == 74
    assert cpace.isk(SID, K, transcript).hex() == VECTORS["ISK_IR"]


def test_isk_symmetric() -> None:
    transcript = cpace.transcript_oc(YA, ADA, YB, ADB)
    assert len(transcript) == 76
    assert cpace.isk(SID, K, transcript).hex() == VECTORS["ISK_SY"]
    # Ordered concatenation makes the symmetric ISK independent of who is "a".
    assert cpace.isk(SID, K, cpace.transcript_oc(YB, ADB, YA, ADA)).hex() == VECTORS["ISK_SY"]


def test_sid_output() -> None:
    assert cpace.sid_output(cpace.transcript_ir(YA, ADA, YB, ADB)).hex() == VECTORS["sid_ir"]
    assert cpace.sid_output(cpace.transcript_oc(YA, ADA, YB, ADB)).hex() == VECTORS["sid_oc"]


def test_confirmation_follows_section_10_4() -> None:
    # The draft gives no vectors for key confirmation; pin the formula.
    isk = H(VECTORS["ISK_IR"])
    mac_key = cpace.confirmation_key(SID, isk)
    assert mac_key == hashlib.sha512(b"CPaceMac" + SID + isk).digest()
    tag = cpace.confirmation_tag(mac_key, YA, ADA)
    assert tag == hmac.new(mac_key, cpace.lv_cat(YA, ADA), "sha512").digest()
    assert tag != cpace.confirmation_tag(mac_key, YB, ADB)


# -- B.1.10: low-order points -------------------------------------------------------

LOW_ORDER = VECTORS["low_order"]


@pytest.mark.parametrize("case", LOW_ORDER["cases"], ids=[c["u"][:8] for c in LOW_ORDER["cases"]])
def test_low_order_points(case: dict[str, str]) -> None:
    s, u, q = H(LOW_ORDER["s"]), H(case["u"]), H(case["q"])
    if q == cpace.IDENTITY:
        with pytest.raises(cpace.LowOrderPoint) as info:
            cpace.scalar_mult_vfy(s, u)
        assert info.value.code == "cpace_low_order"
        assert info.value.remote is True
        assert isinstance(info.value, CryptoError)
    else:
        assert cpace.scalar_mult_vfy(s, u) == q


def test_the_draft_lists_both_kinds_of_low_order_case() -> None:
    qs = [c["q"] for c in LOW_ORDER["cases"]]
    assert qs.count("00" * 32) == 7 and len(qs) == 12


# -- inputs and randomness -----------------------------------------------------------


@pytest.mark.parametrize("length", [0, 31, 33])
def test_share_of_wrong_length(length: int) -> None:
    with pytest.raises(cpace.InvalidShare) as info:
        cpace.scalar_mult_vfy(YA_SCALAR, bytes(length))
    assert info.value.length == length


def test_scalar_of_wrong_length_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        cpace.scalar_mult_vfy(b"short", YB)
    with pytest.raises(ValueError):
        cpace.scalar_mult(b"short", cpace.calculate_generator(PRS, CI, SID))


def test_sample_scalar_uses_the_injected_rng() -> None:
    assert cpace.sample_scalar(lambda n: YA_SCALAR[:n]) == YA_SCALAR
    assert len(cpace.sample_scalar()) == 32
    assert cpace.sample_scalar() != cpace.sample_scalar()


def test_a_broken_rng_is_refused() -> None:
    with pytest.raises(ValueError):
        cpace.sample_scalar(lambda n: bytes(n - 1))
    with pytest.raises(ValueError):
        cpace.sample_scalar(lambda n: "x" * n)  # type: ignore[arg-type, return-value]


def test_protocol_run_with_fresh_scalars() -> None:
    g8 = cpace.calculate_generator(PRS, CI, SID)
    ya, yb = cpace.sample_scalar(), cpace.sample_scalar()
    share_a, share_b = cpace.scalar_mult(ya, g8), cpace.scalar_mult(yb, g8)
    assert cpace.scalar_mult_vfy(ya, share_b) == cpace.scalar_mult_vfy(yb, share_a)
