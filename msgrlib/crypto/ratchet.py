"""The Double Ratchet (Signal specification, section 3), sans-I/O.

One :class:`Ratchet` is one side of one conversation. It turns plaintext into
ratchet messages (bytes) and ratchet messages back into plaintext; it never
touches a socket, a clock or a log. Randomness is a parameter (``rng``).

It follows "The Double Ratchet Algorithm" (Perrin, Marlinspike, revision 1,
2016-11-20), section 3 without header encryption, with the section 5.2
recommendations instantiated as:

==========  ================================================================
GENERATE_DH X25519 key pair; 32 private bytes from ``rng``
DH          X25519 (libsodium); an all-zero output, which only a low-order
            peer key can produce, is rejected as a malformed message
KDF_RK      HKDF-SHA512(salt=rk, ikm=dh_out, info=b"msgr/v1/ratchet-root"),
            64 bytes = new root key (32) || new chain key (32)
KDF_CK      message key = HMAC-SHA512(ck, 0x01)[:32],
            next chain key = HMAC-SHA512(ck, 0x02)[:32]
ENCRYPT     XSalsa20-Poly1305 (secretbox) under a key and nonce derived per
            message: HKDF-SHA512(ikm=mk, salt=b"", info=b"msgr/v1/ratchet-msg"
            || u32(len(AD)) || AD || header), 56 bytes = key (32) || nonce (24)
==========  ================================================================

Secretbox has no associated data, so AD and the header are bound into the
key instead (section 5.2 allows deriving the key and nonce from the message
key). Every message key is used for exactly one message, so no key ever sees
two nonces. A changed header byte gives a different key and the MAC fails.

Wire format of one message (big-endian)::

    version (1) = 1 | sender_role (1): 0 initiator, 1 responder
    | dh_pub (32) | pn (4) | n (4) | secretbox: MAC (16) || ciphertext

The first 42 bytes are the header. A message whose ``sender_role`` is the
receiver's own role is refused as reflected before anything else happens; a
message whose role byte was flipped to hide that fails the MAC, because the
role is part of the header and so of the key.

Errors::

    MsgrError
    ├── CryptoError (remote)
    │   └── RatchetError             "ratchet"
    │       ├── MalformedMessage     "bad_message"   too short, unknown version
    │       │                                        or role, low-order key
    │       ├── ReflectedMessage     "reflected"     my own message sent back
    │       ├── DuplicateMessage     "replay"        key already used, or the
    │       │                                        message is older than
    │       │                                        anything still stored
    │       ├── DecryptionFailed     "forged"        MAC failed
    │       └── TooManySkipped       "too_many_skipped"
    └── RatchetStateError (local)    "ratchet_state" encrypt() before can_send

:meth:`Ratchet.decrypt` raises only :class:`RatchetError` subclasses for any
bytes it is given, and a failed call leaves the object exactly as it was
(spec 3.5: "changes to the state object are discarded"): every value is
computed into locals and committed only after the MAC has verified. Whether
a failure ends the conversation is the caller's policy, not this module's.

Limits (keyword-only, defaults below):

``max_skip``
    Spec MAX_SKIP, checked per chain as in the spec's ``SkipMessageKeys``:
    a message may skip at most ``max_skip`` keys of the old receiving chain
    (its ``pn``) and at most ``max_skip`` of its own chain (its ``n``), so
    one message costs at most ``2 * max_skip`` HMAC pairs.
``max_stored``
    Skipped message keys kept in total; the oldest are evicted first. The
    message an evicted key belonged to is then refused as a duplicate.
``max_retired``
    Public keys of closed receiving chains remembered, so that a replayed
    message from an old chain is reported as a replay ("replay") rather than
    attempted as a new DH ratchet step, which would fail the MAC ("forged").
    A replay older than that is still refused, as "forged".

Not implemented, on purpose: header encryption (section 4), deferred key
generation (section 6.5), and sending by the responder before it has
received: the spec's Bob has no sending chain until Alice's first message
arrives. msgr's initiator always sends a message right after the handshake,
so the responder can reply as soon as that message is decrypted.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import struct
from collections.abc import Callable

import nacl.exceptions
from nacl.bindings import (
    crypto_scalarmult,
    crypto_scalarmult_base,
    crypto_secretbox,
    crypto_secretbox_open,
)

from msgrlib.errors import CryptoError, LocalError

#: Keys one message may skip in one chain (the spec's MAX_SKIP). Large enough
#: for any real burst of lost or delayed messages (a thousand messages in one
#: direction that never arrived), small enough that a forged header, which
#: can make us derive up to two chains' worth before its MAC is checked, costs
#: the receiver at most about 15 ms of HMACs.
DEFAULT_MAX_SKIP = 1000
#: Skipped keys kept in total, oldest evicted first. Twice ``max_skip`` so the
#: worst legitimate message (old-chain tail plus new-chain gap) always fits;
#: about 450 KB, and it bounds how many unused keys weaken forward secrecy.
DEFAULT_MAX_STORED = 2000
#: Closed receiving chains remembered to recognise replays (32 bytes each):
#: a thousand changes of direction back, after which a replay reads "forged".
DEFAULT_MAX_RETIRED = 1000

#: Wire format version; anything else is refused.
VERSION = 1
HEADER_LEN = 42
MAC_LEN = 16
#: Shortest valid message: a header and an empty secretbox.
MIN_MESSAGE_LEN = HEADER_LEN + MAC_LEN
KEY_LEN = 32

INITIATOR = "initiator"
RESPONDER = "responder"
_ROLE_BYTE = {INITIATOR: 0, RESPONDER: 1}

#: Largest ``n`` or ``pn`` the 4-byte header fields can carry.
_MAX_COUNTER = 0xFFFFFFFF

_HEADER = struct.Struct(">BB32sII")
_ROOT_INFO = b"msgr/v1/ratchet-root"
_MSG_INFO = b"msgr/v1/ratchet-msg"
#: KDF_CK inputs, as recommended in spec 5.2: distinct single-byte constants.
_CK_MESSAGE = b"\x01"
_CK_CHAIN = b"\x02"

Rng = Callable[[int], bytes]


class RatchetError(CryptoError):
    """A ratchet message was refused. The ratchet's state did not change."""

    code = "ratchet"


class MalformedMessage(RatchetError):
    """The message cannot be parsed, or carries an unusable (low-order) key."""

    code = "bad_message"


class ReflectedMessage(RatchetError):
    """The message claims to come from our own role: it was sent back to us."""

    code = "reflected"


class DuplicateMessage(RatchetError):
    """The message's key was already used, or is older than any kept key."""

    code = "replay"


class DecryptionFailed(RatchetError):
    """The MAC failed: tampered, from another session, or not from the peer."""

    code = "forged"


class TooManySkipped(RatchetError):
    """The message would make us skip more message keys than allowed."""

    code = "too_many_skipped"

    def __init__(self, skip: int, limit: int) -> None:
        super().__init__(f"message skips {skip} message keys in one chain; the limit is {limit}")
        self.skip = skip
        self.limit = limit


class RatchetStateError(LocalError):
    """The caller used the ratchet in a state that does not allow it."""

    code = "ratchet_state"


# -- pure functions ---------------------------------------------------------


def hkdf(ikm: bytes, *, salt: bytes, info: bytes, length: int, hash_name: str = "sha512") -> bytes:
    """HKDF (RFC 5869) extract-then-expand; ``hash_name`` is for test vectors."""
    hash_len = hashlib.new(hash_name).digest_size
    if not 0 < length <= 255 * hash_len:
        raise ValueError(f"HKDF length must be 1..{255 * hash_len}, got {length}")
    prk = hmac.digest(salt, ikm, hash_name)
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), hash_name)
        out += block
        counter += 1
    return out[:length]


def kdf_rk(rk: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    """Spec KDF_RK: (new root key, new chain key)."""
    out = hkdf(dh_out, salt=rk, info=_ROOT_INFO, length=2 * KEY_LEN)
    return out[:KEY_LEN], out[KEY_LEN:]


def kdf_ck(ck: bytes) -> tuple[bytes, bytes]:
    """Spec KDF_CK: (next chain key, message key)."""
    next_ck = hmac.digest(ck, _CK_CHAIN, "sha512")[:KEY_LEN]
    mk = hmac.digest(ck, _CK_MESSAGE, "sha512")[:KEY_LEN]
    return next_ck, mk


def message_key_nonce(mk: bytes, ad_prefix: bytes, header: bytes) -> tuple[bytes, bytes]:
    """The secretbox key and nonce for one message; ``ad_prefix`` = info || lv(AD)."""
    out = hkdf(mk, salt=b"", info=ad_prefix + header, length=56)
    return out[:32], out[32:]


def _ad_prefix(ad: bytes) -> bytes:
    return _MSG_INFO + len(ad).to_bytes(4, "big") + ad


def _dh(priv: bytes, pub: bytes) -> bytes:
    """X25519; refuses the all-zero output a low-order public key produces."""
    try:
        out = crypto_scalarmult(priv, pub)
    except nacl.exceptions.CryptoError:
        # libsodium itself refuses an all-zero result.
        raise MalformedMessage("the peer's ratchet key is a low-order point") from None
    if hmac.compare_digest(out, bytes(KEY_LEN)):
        raise MalformedMessage("the peer's ratchet key is a low-order point")
    return out


def _new_private(rng: Rng) -> bytes:
    priv = rng(KEY_LEN)
    if not isinstance(priv, bytes) or len(priv) != KEY_LEN:
        raise ValueError(f"rng must return {KEY_LEN} bytes")
    return priv


def _check_key(name: str, value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != KEY_LEN:
        raise ValueError(f"{name} must be {KEY_LEN} bytes")
    return bytes(value)


def _check_skip(nr: int, until: int, limit: int) -> None:
    # Spec SkipMessageKeys: "if state.Nr + MAX_SKIP < until: raise Error()".
    if nr + limit < until:
        raise TooManySkipped(until - nr, limit)


def _skip_keys(
    ck: bytes, dh: bytes, start: int, until: int
) -> tuple[bytes, list[tuple[tuple[bytes, int], bytes]]]:
    """Advance ``ck`` from message ``start`` to ``until``; return it and the keys."""
    keys = []
    for n in range(start, until):
        ck, mk = kdf_ck(ck)
        keys.append(((dh, n), mk))
    return ck, keys


def _open(mk: bytes, ad_prefix: bytes, header: bytes, box: bytes) -> bytes:
    key, nonce = message_key_nonce(mk, ad_prefix, header)
    try:
        return crypto_secretbox_open(box, nonce, key)
    except nacl.exceptions.CryptoError:
        raise DecryptionFailed(
            "message failed authentication: tampered, or not from this session"
        ) from None


# -- the state machine ------------------------------------------------------


class Ratchet:
    """One party's Double Ratchet state for one conversation.

    Build it with :meth:`initiator` (the spec's Alice, who knows the peer's
    ratchet public key and sends first) or :meth:`responder` (Bob, who holds
    that key pair and can send only after his first successful decrypt).
    Private keys live only in this object; ``repr`` shows counters only.
    """

    def __init__(
        self,
        *,
        role: str,
        root_key: bytes,
        dhs_priv: bytes,
        dhr: bytes | None,
        ad: bytes,
        rng: Rng,
        max_skip: int,
        max_stored: int,
        max_retired: int,
    ) -> None:
        """Internal; use :meth:`initiator` or :meth:`responder`."""
        if role not in _ROLE_BYTE:
            raise ValueError(f"role must be {INITIATOR!r} or {RESPONDER!r}")
        if not isinstance(ad, (bytes, bytearray)):
            raise TypeError("ad must be bytes")
        for name, value in (
            ("max_skip", max_skip),
            ("max_stored", max_stored),
            ("max_retired", max_retired),
        ):
            if not isinstance(value, int) or not 0 <= value <= _MAX_COUNTER:
                raise ValueError(f"{name} must be an int in 0..{_MAX_COUNTER}")
        self.role = role
        self._role_byte = _ROLE_BYTE[role]
        self._ad_prefix = _ad_prefix(bytes(ad))
        self._rng = rng
        self._max_skip = max_skip
        self._max_stored = max_stored
        self._max_retired = max_retired
        self._dhs_priv = dhs_priv
        self._dhs_pub = crypto_scalarmult_base(dhs_priv)
        self._dhr = dhr
        self._rk = root_key
        self._cks: bytes | None = None
        self._ckr: bytes | None = None
        self._ns = 0
        self._nr = 0
        self._pn = 0
        # (peer ratchet key, n) -> message key, in insertion order (oldest first).
        self._skipped: dict[tuple[bytes, int], bytes] = {}
        # Closed receiving chains' peer keys, used as an ordered set.
        self._retired: dict[bytes, None] = {}

    @classmethod
    def initiator(
        cls,
        root_key: bytes,
        peer_ratchet_pub: bytes,
        ad: bytes,
        *,
        rng: Rng = os.urandom,
        max_skip: int = DEFAULT_MAX_SKIP,
        max_stored: int = DEFAULT_MAX_STORED,
        max_retired: int = DEFAULT_MAX_RETIRED,
    ) -> Ratchet:
        """Spec RatchetInitAlice: can send at once.

        Raises :class:`MalformedMessage` if ``peer_ratchet_pub`` is a
        low-order point (it came from the peer), ``ValueError`` for keys of
        the wrong length.
        """
        root_key = _check_key("root_key", root_key)
        peer = _check_key("peer_ratchet_pub", peer_ratchet_pub)
        state = cls(
            role=INITIATOR,
            root_key=root_key,
            dhs_priv=_new_private(rng),
            dhr=peer,
            ad=ad,
            rng=rng,
            max_skip=max_skip,
            max_stored=max_stored,
            max_retired=max_retired,
        )
        state._rk, state._cks = kdf_rk(root_key, _dh(state._dhs_priv, peer))
        return state

    @classmethod
    def responder(
        cls,
        root_key: bytes,
        own_ratchet_priv: bytes,
        ad: bytes,
        *,
        rng: Rng = os.urandom,
        max_skip: int = DEFAULT_MAX_SKIP,
        max_stored: int = DEFAULT_MAX_STORED,
        max_retired: int = DEFAULT_MAX_RETIRED,
    ) -> Ratchet:
        """Spec RatchetInitBob: can decrypt now, send after the first decrypt."""
        return cls(
            role=RESPONDER,
            root_key=_check_key("root_key", root_key),
            dhs_priv=_check_key("own_ratchet_priv", own_ratchet_priv),
            dhr=None,
            ad=ad,
            rng=rng,
            max_skip=max_skip,
            max_stored=max_stored,
            max_retired=max_retired,
        )

    @property
    def can_send(self) -> bool:
        """False only for a responder that has not yet decrypted a message."""
        return self._cks is not None

    @property
    def skipped_count(self) -> int:
        """How many skipped message keys are stored (metadata, not secret)."""
        return len(self._skipped)

    def __repr__(self) -> str:
        return (
            f"<Ratchet {self.role} can_send={self.can_send} sent={self._ns} "
            f"received={self._nr} skipped={len(self._skipped)}>"
        )

    def encrypt(self, plaintext: bytes) -> bytes:
        """Spec RatchetEncrypt: return one ratchet message carrying ``plaintext``.

        Raises :class:`RatchetStateError` if :attr:`can_send` is False, or if
        this sending chain has used all 2**32 - 1 message numbers.
        """
        if not isinstance(plaintext, (bytes, bytearray, memoryview)):
            raise TypeError("plaintext must be bytes")
        if self._cks is None:
            raise RatchetStateError("the responder cannot send before it has received a message")
        if self._ns >= _MAX_COUNTER:
            raise RatchetStateError("sending chain exhausted; wait for a reply")
        cks, mk = kdf_ck(self._cks)
        header = _HEADER.pack(VERSION, self._role_byte, self._dhs_pub, self._pn, self._ns)
        key, nonce = message_key_nonce(mk, self._ad_prefix, header)
        box = crypto_secretbox(bytes(plaintext), nonce, key)
        self._cks = cks
        self._ns += 1
        return header + box

    def decrypt(self, message: bytes) -> bytes:
        """Spec RatchetDecrypt: return the plaintext of one ratchet message.

        Raises :class:`MalformedMessage`, :class:`ReflectedMessage`,
        :class:`DuplicateMessage`, :class:`DecryptionFailed` or
        :class:`TooManySkipped` (all :class:`RatchetError`), and nothing else
        for bytes input (an ``rng`` that fails is the caller's bug and its
        exception propagates); after a raise the state is exactly as before.
        A skipped key is deleted once its message has decrypted.
        """
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise TypeError("message must be bytes")
        data = bytes(message)
        if len(data) < MIN_MESSAGE_LEN:
            raise MalformedMessage(
                f"ratchet message is {len(data)} bytes; the minimum is {MIN_MESSAGE_LEN}"
            )
        version, role, dh, pn, n = _HEADER.unpack_from(data)
        if version != VERSION:
            raise MalformedMessage(f"unknown ratchet message version {version}")
        if role not in (0, 1):
            raise MalformedMessage(f"unknown sender role {role}")
        if role == self._role_byte:
            raise ReflectedMessage("received a message sent by our own side")
        header = data[:HEADER_LEN]
        box = data[HEADER_LEN:]

        # Spec TrySkippedMessageKeys.
        mk = self._skipped.get((dh, n))
        if mk is not None:
            plaintext = _open(mk, self._ad_prefix, header, box)
            del self._skipped[(dh, n)]
            return plaintext

        if dh == self._dhr:
            return self._decrypt_current_chain(dh, n, header, box)
        if dh in self._retired:
            raise DuplicateMessage("message from a closed chain, already handled")
        return self._decrypt_new_chain(dh, pn, n, header, box)

    def _decrypt_current_chain(self, dh: bytes, n: int, header: bytes, box: bytes) -> bytes:
        if self._ckr is None:
            # Only the initiator's first DHr (the responder's initial key) is in
            # this state, and the responder never sends under that key.
            raise DecryptionFailed("message under a ratchet key that never sent")
        if n < self._nr:
            raise DuplicateMessage(f"message {n} of this chain was already handled")
        _check_skip(self._nr, n, self._max_skip)
        ckr, skipped = _skip_keys(self._ckr, dh, self._nr, n)
        ckr, mk = kdf_ck(ckr)
        plaintext = _open(mk, self._ad_prefix, header, box)
        self._store_skipped(skipped)
        self._ckr = ckr
        self._nr = n + 1
        return plaintext

    def _decrypt_new_chain(self, dh: bytes, pn: int, n: int, header: bytes, box: bytes) -> bytes:
        # Spec RatchetDecrypt with header.dh != state.DHr: skip the rest of the
        # old receiving chain, then DHRatchet, then skip within the new chain.
        # Both bounds are checked before any key is derived.
        _check_skip(self._nr, pn, self._max_skip)
        _check_skip(0, n, self._max_skip)
        old_skipped: list[tuple[tuple[bytes, int], bytes]] = []
        if self._ckr is not None and self._dhr is not None:
            _, old_skipped = _skip_keys(self._ckr, self._dhr, self._nr, pn)
        rk, ckr = kdf_rk(self._rk, _dh(self._dhs_priv, dh))
        ckr, new_skipped = _skip_keys(ckr, dh, 0, n)
        ckr, mk = kdf_ck(ckr)
        plaintext = _open(mk, self._ad_prefix, header, box)

        # Authenticated: finish DHRatchet with a fresh sending key pair. The rng
        # is called only now, so a refused message does not consume randomness.
        dhs_priv = _new_private(self._rng)
        rk, cks = kdf_rk(rk, _dh(dhs_priv, dh))
        dhs_pub = crypto_scalarmult_base(dhs_priv)

        if self._ckr is not None and self._dhr is not None:
            self._retired[self._dhr] = None
            while len(self._retired) > self._max_retired:
                del self._retired[next(iter(self._retired))]
        self._store_skipped(old_skipped + new_skipped)
        self._pn = self._ns
        self._ns = 0
        self._nr = n + 1
        self._dhr = dh
        self._rk = rk
        self._ckr = ckr
        self._cks = cks
        self._dhs_priv = dhs_priv
        self._dhs_pub = dhs_pub
        return plaintext

    def _store_skipped(self, keys: list[tuple[tuple[bytes, int], bytes]]) -> None:
        self._skipped.update(keys)
        excess = len(self._skipped) - self._max_stored
        if excess > 0:
            # Dicts keep insertion order, so the first keys are the oldest.
            for index in list(itertools.islice(self._skipped, excess)):
                del self._skipped[index]
