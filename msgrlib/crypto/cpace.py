"""CPACE-X25519-SHA512 from draft-irtf-cfrg-cpace (the CFRG's balanced PAKE).

Section numbers below are those of draft-irtf-cfrg-cpace-21; the known-answer
tests use the draft's Appendix B.1 vectors (tests/vectors/cpace-x25519-sha512.json).
This module is the group and hash layer only; :mod:`handshake` runs the
protocol. Every function is pure; randomness is a parameter.

The generator
-------------
The draft (Section 8.2) hashes ``generator_string(DSI, PRS, CI, sid, 128)``
with SHA-512, keeps 32 bytes, clears bit 255 and maps the field element with
Elligator 2 (RFC 9380 ``map_to_curve_elligator2``, Z = 2). The result ``g``
is a point of the whole curve, not only of the prime-order subgroup, and
``Y = X25519(y, g)``.

libsodium offers this map only as ``crypto_core_ed25519_from_uniform``, which
runs the same Elligator 2 on the same 255 bits and then multiplies by the
cofactor: it returns the Edwards point ``G8 = 8*g``, in constant time. (Bit
255 picks the sign of x, so strictly ``G8 = +-8*g``; u-coordinates, and so
everything below, are the same for both.) We keep ``G8`` as
the generator and compensate in the scalar: X25519 clamps ``y`` to
``c = clamp(y)``, a multiple of 8, so ``c*g = (c/8)*(8*g) = (c >> 3)*G8``.
:func:`scalar_mult` computes ``(c >> 3)*G8`` with
``crypto_scalarmult_ed25519_noclamp`` and returns its Montgomery
u-coordinate, which is the draft's ``Y`` byte for byte (the tests check this
against Ya, Yb and random scalars).

The draft's ``g`` itself cannot be produced with libsodium: from ``8*g`` the
cofactor component of ``g`` is lost, and libsodium exposes neither the map
without cofactor clearing nor field arithmetic. Computing it with Python
integers would be possible but not constant time on a password-derived value,
which Section 10.10 forbids for the map, so this module never holds ``g``.
The tests instead check ``u(G8) == u(8*g)`` for the vector's ``g`` (three
x-only doublings) and ``X25519(s, g) == scalar_mult(s, G8)``.

Errors::

    errors.CryptoError
    └── CPaceError                  a CPace computation cannot go on
        ├── LowOrderPoint           the peer's share is a low-order point (abort)
        ├── InvalidShare            the peer's share is not 32 bytes
        └── CPaceUnavailable        libsodium lacks what we need (local, not remote)
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

import nacl.bindings
import nacl.exceptions

from msgrlib.errors import CryptoError, LocalError

#: ``G_X25519.DSI`` (Section 8.2).
DSI = b"CPace255"
#: Domain separator of the ISK hash (Section 7.2: ``G.DSI || b"_ISK"``).
DSI_ISK = DSI + b"_ISK"
#: SHA-512's input block size ``H.s_in_bytes``, which sizes the zero padding.
S_IN_BYTES = 128
#: ``G_X25519.field_size_bytes``: scalars, shares and K.
FIELD_BYTES = 32
#: ``H.b_in_bytes`` for SHA-512: length of ISK and of sid_output.
ISK_BYTES = 64
#: ``G_X25519.I``, the neutral element's encoding.
IDENTITY = bytes(FIELD_BYTES)

Rng = Callable[[int], bytes]


class CPaceError(CryptoError):
    """A CPace step failed; the handshake that saw it must be abandoned."""

    code = "cpace"


class LowOrderPoint(CPaceError):
    """The peer's public share is a low-order point: the draft says abort."""

    code = "cpace_low_order"

    def __init__(self) -> None:
        super().__init__(
            "the peer sent an invalid key share (a low-order point), which an honest "
            "client never does: someone may be interfering; start a new handshake"
        )


class InvalidShare(CPaceError):
    """The peer's public share does not have the length of an X25519 share."""

    code = "cpace_bad_share"

    def __init__(self, length: int) -> None:
        super().__init__(f"the peer's key share is {length} bytes, expected {FIELD_BYTES}")
        self.length = length


class CPaceUnavailable(LocalError):
    """The local libsodium cannot run CPace (a minimal build) or failed."""

    code = "cpace_unavailable"


# -- string utilities (Appendix A.1 - A.3) ----------------------------------


def prepend_len(data: bytes) -> bytes:
    """``data`` prefixed with its length in LEB128 (Appendix A.1.1)."""
    length = len(data)
    out = bytearray()
    while True:
        if length < 128:
            out.append(length)
        else:
            out.append((length & 0x7F) | 0x80)
        length >>= 7
        if length == 0:
            break
    return bytes(out) + data


def lv_cat(*args: bytes) -> bytes:
    """Length-value concatenation, a prefix-free encoding (Appendix A.1.3)."""
    return b"".join(prepend_len(arg) for arg in args)


def generator_string(
    dsi: bytes, prs: bytes, ci: bytes, sid: bytes, s_in_bytes: int = S_IN_BYTES
) -> bytes:
    """Appendix A.2: zero padding fills the first hash block after DSI and PRS."""
    len_zpad = max(0, s_in_bytes - 1 - len(prepend_len(prs)) - len(prepend_len(dsi)))
    return lv_cat(dsi, prs, bytes(len_zpad), ci, sid)


def lexiographically_larger(bytes1: bytes, bytes2: bytes) -> bool:
    """Appendix A.3.1 (the draft's spelling); Python's bytes order is the same."""
    return bytes1 > bytes2


def o_cat(bytes1: bytes, bytes2: bytes) -> bytes:
    """Ordered concatenation, larger string first (Appendix A.3.2)."""
    if lexiographically_larger(bytes1, bytes2):
        return b"oc" + bytes1 + bytes2
    return b"oc" + bytes2 + bytes1


def transcript_ir(ya: bytes, ada: bytes, yb: bytes, adb: bytes) -> bytes:
    """Initiator-responder transcript (Appendix A.3.4)."""
    return lv_cat(ya, ada) + lv_cat(yb, adb)


def transcript_oc(ya: bytes, ada: bytes, yb: bytes, adb: bytes) -> bytes:
    """Symmetric-setting transcript, independent of who spoke first (A.3.6)."""
    return o_cat(lv_cat(ya, ada), lv_cat(yb, adb))


# -- group G_X25519 (Section 8.2) --------------------------------------------


def generator_hash(prs: bytes, ci: bytes, sid: bytes) -> bytes:
    """``gen_str_hash``: SHA-512 of the generator string, first 32 bytes."""
    return hashlib.sha512(generator_string(DSI, prs, ci, sid)).digest()[:FIELD_BYTES]


def calculate_generator(prs: bytes, ci: bytes, sid: bytes) -> bytes:
    """The generator as this module represents it: Edwards ``8*g``, 32 bytes.

    ``g`` is the draft's ``G.calculate_generator(H, PRS, CI, sid)``; see the
    module docstring for why we hold ``8*g``. Pass the result to
    :func:`scalar_mult` only. Constant time (libsodium).
    """
    _require_ed25519()
    return nacl.bindings.crypto_core_ed25519_from_uniform(generator_hash(prs, ci, sid))


def sample_scalar(rng: Rng = os.urandom) -> bytes:
    """``G_X25519.sample_scalar()``: 32 uniformly random bytes."""
    return random_bytes(rng, FIELD_BYTES)


def scalar_mult(y: bytes, generator: bytes) -> bytes:
    """``G.scalar_mult(y, g) = X25519(y, g)``, given ``generator = 8*g``.

    Returns the u-coordinate of ``clamp(y)*g``, computed as
    ``(clamp(y) >> 3) * (8*g)``; clamping makes the shift exact.
    """
    _require_ed25519()
    _check_scalar(y)
    small = _clamp(y) >> 3  # < 2**252, so the 32-byte encoding below cannot overflow
    try:
        point = nacl.bindings.crypto_scalarmult_ed25519_noclamp(
            small.to_bytes(FIELD_BYTES, "little"), generator
        )
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(point)
    except nacl.exceptions.CryptoError:
        # libsodium refuses a generator outside the prime-order subgroup or a
        # result at infinity. A hash output that maps there has probability
        # about 2**-250; a new sid gives a new generator.
        raise CPaceError(
            "the derived generator is unusable (astronomically unlikely); start a new handshake"
        ) from None


def scalar_mult_vfy(y: bytes, x: bytes) -> bytes:
    """``G.scalar_mult_vfy(y, X) = X25519(y, X)``, raising instead of returning G.I.

    RFC 7748 decoding ignores bit 255 of ``x``, so non-canonical encodings of
    ordinary points give ordinary results, as the draft's B.1.10 requires.

    Raises :class:`LowOrderPoint` when the result is the neutral element
    (``x`` encodes a point of small order on the curve or its twist), and
    :class:`InvalidShare` when ``x`` is not 32 bytes.
    """
    _check_scalar(y)
    if not isinstance(x, bytes):
        raise TypeError("a CPace share must be bytes")
    if len(x) != FIELD_BYTES:
        raise InvalidShare(len(x))
    try:
        k = nacl.bindings.crypto_scalarmult(y, x)
    except nacl.exceptions.CryptoError:
        # libsodium itself refuses an all-zero result (and a short list of
        # low-order inputs, all of which give one).
        raise LowOrderPoint() from None
    if hmac.compare_digest(k, IDENTITY):
        raise LowOrderPoint()
    return k


# -- outputs (Sections 7.2, 10.4, 10.6) --------------------------------------


def isk(sid: bytes, k: bytes, transcript: bytes) -> bytes:
    """``ISK = H.hash(lv_cat(G.DSI || b"_ISK", sid, K) || transcript)`` (Section 7.2)."""
    return hashlib.sha512(lv_cat(DSI_ISK, sid, k) + transcript).digest()


def sid_output(transcript: bytes) -> bytes:
    """Public session id for runs without a sid input (Section 10.6)."""
    return hashlib.sha512(b"CPaceSidOutput" + transcript).digest()


def confirmation_key(sid: bytes, isk_: bytes) -> bytes:
    """``mac_key = H.hash(b"CPaceMac" || sid || ISK)`` (Section 10.4)."""
    return hashlib.sha512(b"CPaceMac" + sid + isk_).digest()


def confirmation_tag(mac_key: bytes, y: bytes, ad: bytes) -> bytes:
    """``MAC(mac_key, lv_cat(Y, AD))`` over the share a party sent (Section 10.4).

    MAC is HMAC-SHA512 (the section names HMAC; SHA-512 is the suite's hash).
    """
    return hmac.digest(mac_key, lv_cat(y, ad), "sha512")


# -- helpers ------------------------------------------------------------------


def random_bytes(rng: Rng, n: int) -> bytes:
    """``rng(n)``, checked: a broken injected rng must not pass silently."""
    out = rng(n)
    if not isinstance(out, bytes) or len(out) != n:
        raise ValueError(f"rng({n}) must return {n} bytes")
    return out


def _clamp(y: bytes) -> int:
    """RFC 7748 decodeScalar25519, as an integer."""
    c = bytearray(y)
    c[0] &= 248
    c[31] &= 127
    c[31] |= 64
    return int.from_bytes(c, "little")


def _check_scalar(y: object) -> None:
    if not isinstance(y, bytes) or len(y) != FIELD_BYTES:
        raise ValueError(f"a CPace scalar must be {FIELD_BYTES} bytes")


def _require_ed25519() -> None:
    # PyNaCl's wheels have these; a build against a minimal libsodium does not,
    # and PyNaCl before 1.6 does not expose from_uniform.
    if not hasattr(nacl.bindings, "crypto_core_ed25519_from_uniform"):
        raise CPaceUnavailable("this PyNaCl is too old for CPace; install PyNaCl 1.6 or newer")
    if not (nacl.bindings.has_crypto_core_ed25519 and nacl.bindings.has_crypto_scalarmult_ed25519):
        raise CPaceUnavailable(
            "this PyNaCl is built against a minimal libsodium without Ed25519 point "
            "arithmetic; install PyNaCl's standard wheel"
        )
