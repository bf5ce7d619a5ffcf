"""msgr's four-message CPace handshake with key confirmation (sans-I/O).

Two users who typed the same passcode agree on a session key and on the
double ratchet's first keys; the relay in between learns nothing it could use
to test passcode guesses offline. ``prs`` is the 32-byte Argon2id output of
the passcode. Messages are JSON-able dicts whose byte fields are standard
base64 with padding; the session layer carries them as opaque payloads::

    M1 A->B {"hs": "init",    "v": 1, "na"}
    M2 B->A {"hs": "resp",    "v": 1, "na", "nb", "Y": Yb, "ad": ADb}
    M3 A->B {"hs": "share",   "v": 1, "na", "nb", "Y": Ya, "ad": ADa, "tag": Ta}
    M4 B->A {"hs": "confirm", "v": 1, "na", "nb", "tag": Tb}

A is the initiator, B the responder, ``na`` and ``nb`` 16 random bytes each.

* ``sid = SHA-512(lv_cat("msgr/v1/cpace-sid", na, nb))[:16]``: fresh from
  both sides, so a message from an older attempt never fits a new one.
* ``CI = lv_cat("msgr/v1/cpace-ci", initiator, responder)``: both usernames,
  in role order, hidden inside the generator (draft Section 10.1.1).
* ``ADa = lv_cat(initiator)``, ``ADb = lv_cat(responder, ratchet_pub)``: each
  side checks the peer's name, and B's first ratchet key is authenticated.
* ``ISK = H(lv_cat("CPace255_ISK", sid, K) || transcript_ir(Ya, ADa, Yb, ADb))``.
  The draft's ``a`` is the side that speaks first; msgr's CPace shares go in
  the other order (Yb in M2, Ya in M3). That is safe: the order only has to
  be fixed by role, which it is, and CI binds each name to its role.
* Key confirmation is draft Section 10.4: ``mac_key = SHA-512("CPaceMac" ||
  sid || ISK)``, ``Ta = HMAC-SHA512(mac_key, lv_cat(Ya, ADa))``, ``Tb`` over
  ``lv_cat(Yb, ADb)``. B checks Ta before it sends M4, A checks Tb; a wrong
  passcode therefore stops at B, which never answers M3.
* ``root_key = kdf.subkey(ISK, "session-root")`` (32 bytes), the ratchet's
  ``ad = lv_cat("msgr/v1/ratchet-ad", sid, initiator, responder)``, and the
  safety number (below).

Safety number
-------------
Both sides show ``SHA-512(lv_cat("msgr/v1/safety-number", ISK))``: its first
20 bytes as a big-endian integer mod 10**40, as 8 groups of 5 digits (about
133 bits). Users who compare it detect a man in the middle who knows the
passcode. Such an attacker M runs two sessions, as responder with A and as
initiator with B. To pass the comparison it needs both ISKs to give the same
number, and it cannot grind both sides:

* In session A-M the last input to ISK is A's share Ya in M3, uniformly
  random and chosen after everything M sent (nb, Yb, ADb). M learns that
  session's number only then, and cannot change it without a new handshake
  with A, which A sees.
* In session M-B the last input is M's own share in M3, so M can try as many
  shares as it likes offline, but each try hits one fixed target.

So M needs a second preimage of a 133-bit value: about 2**133 tries, or
2**133 / T if it makes A restart T times. It cannot run a birthday search
(about 2**67), which needs many candidates on both sides.

This rests on one honest party being the initiator. If M could make both A
and B responders (initiating toward each), M would send the last share in
both sessions, grind both, and the birthday bound would apply: 2**67 X25519
operations while both peers wait, still out of reach within a handshake
timeout, but far below 2**133. So which side initiates must not be up to the
network: the session layer should fix it from something both users know,
e.g. the name that sorts first initiates and a client refuses an "init" from
a peer that should have waited for its own. If both sides initiate toward M,
A's and B's shares are last in both sessions and M cannot grind at all.

Errors::

    errors.MsgrError
    ├── names.BadName               an invalid ``me`` or ``peer`` (constructors)
    ├── HandshakeStateError         a method called in the wrong state (local)
    └── errors.CryptoError          caused by the peer or the network
        ├── MalformedHandshake      a message fails validation
        ├── PasscodeMismatch        a confirmation tag is wrong
        └── cpace.CPaceError        e.g. cpace.LowOrderPoint

``ValueError`` means a caller bug: ``prs`` not 32 bytes, or an injected rng
that returns the wrong number of bytes.
Any error makes the object FAILED for good; start a new handshake.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nacl.bindings

import kdf
from msgrlib.crypto import cpace
from msgrlib.errors import CryptoError, LocalError
from msgrlib.util.names import MAX_NAME_LENGTH, check_name

VERSION = 1
PRS_BYTES = 32
NONCE_BYTES = 16
SID_BYTES = 16
TAG_BYTES = 64
ROOT_KEY_BYTES = 32
RATCHET_KEY_BYTES = 32
#: Longest AD an honest peer sends: ADb = lv_cat(name, ratchet_pub), each
#: length prefix one byte. Checked on the base64 text before decoding it.
MAX_AD_BYTES = 1 + MAX_NAME_LENGTH + 1 + RATCHET_KEY_BYTES
#: The field prime; a share at or above it is a non-canonical encoding, which
#: an honest peer never sends.
_P25519 = 2**255 - 19

_T = TypeVar("_T")

INITIATOR = "initiator"
RESPONDER = "responder"

_SID_LABEL = b"msgr/v1/cpace-sid"
_CI_LABEL = b"msgr/v1/cpace-ci"
_AD_LABEL = b"msgr/v1/ratchet-ad"
_SAFETY_LABEL = b"msgr/v1/safety-number"

#: Attributes that hold secrets, dropped when a handshake ends either way.
_SECRETS = frozenset({"_prs", "_isk", "_expected_tb", "_yb", "_ratchet_priv"})

#: The fields of each message kind, exactly: anything more or less is malformed.
_FIELDS: dict[str, frozenset[str]] = {
    "init": frozenset({"hs", "v", "na"}),
    "resp": frozenset({"hs", "v", "na", "nb", "Y", "ad"}),
    "share": frozenset({"hs", "v", "na", "nb", "Y", "ad", "tag"}),
    "confirm": frozenset({"hs", "v", "na", "nb", "tag"}),
}


class MalformedHandshake(CryptoError):
    """A handshake message from the peer fails validation."""

    code = "bad_handshake"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"malformed handshake message: {field} {problem}")
        self.field = field


class PasscodeMismatch(CryptoError):
    """The peer's confirmation tag is wrong."""

    code = "passcode_mismatch"

    def __init__(self) -> None:
        super().__init__("passcode mismatch, or someone is interfering")


class HandshakeStateError(LocalError):
    """A method was called in a state that does not allow it (a caller bug)."""

    code = "handshake_state"


class State(enum.Enum):
    IDLE = "idle"
    AWAIT_RESP = "await_resp"  # initiator sent M1
    AWAIT_CONFIRM = "await_confirm"  # initiator sent M3
    AWAIT_SHARE = "await_share"  # responder sent M2
    DONE = "done"
    FAILED = "failed"


class Event(enum.Enum):
    START = "start"
    INIT = "init"
    RESP = "resp"
    SHARE = "share"
    CONFIRM = "confirm"


#: The only transitions. Any error, in any state, leads to FAILED instead.
_TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.IDLE, Event.START): State.AWAIT_RESP,
    (State.AWAIT_RESP, Event.RESP): State.AWAIT_CONFIRM,
    (State.AWAIT_CONFIRM, Event.CONFIRM): State.DONE,
    (State.IDLE, Event.INIT): State.AWAIT_SHARE,
    (State.AWAIT_SHARE, Event.SHARE): State.DONE,
}


@dataclass(frozen=True, repr=False)
class SessionKeys:
    """What a completed handshake hands to the double ratchet and the UI."""

    isk: bytes  # 64, the CPace ISK
    sid: bytes  # 16
    role: str  # INITIATOR or RESPONDER
    root_key: bytes  # 32, the ratchet's root key
    ad: bytes  # the ratchet's associated data
    peer_ratchet_pub: bytes | None  # initiator: B's ratchet public key
    own_ratchet_priv: bytes | None  # responder: its ratchet private key
    safety_number: str  # "ddddd ddddd ... " (8 groups), equal on both sides

    def __repr__(self) -> str:
        return f"SessionKeys(role={self.role!r}, sid={self.sid.hex()})"


def kind_of(msg: object) -> str | None:
    """The kind of a handshake message ("init", "resp", "share", "confirm"), else None.

    For dispatch only: it validates nothing else. Never raises.
    """
    if isinstance(msg, dict):
        kind = msg.get("hs")
        if isinstance(kind, str) and kind in _FIELDS:
            return kind
    return None


def session_id(na: bytes, nb: bytes) -> bytes:
    return hashlib.sha512(cpace.lv_cat(_SID_LABEL, na, nb)).digest()[:SID_BYTES]


def channel_id(initiator: str, responder: str) -> bytes:
    return cpace.lv_cat(_CI_LABEL, initiator.encode(), responder.encode())


def safety_number(isk: bytes) -> str:
    """40 decimal digits in 8 groups of 5, from ISK (see the module docstring)."""
    digest = hashlib.sha512(cpace.lv_cat(_SAFETY_LABEL, isk)).digest()
    digits = f"{int.from_bytes(digest[:20], 'big') % 10**40:040d}"
    return " ".join(digits[i : i + 5] for i in range(0, 40, 5))


def root_key(isk: bytes) -> bytes:
    """The ratchet's root key: ``kdf.subkey(ISK, "session-root")``, 32 bytes.

    Label ``msgr/v1/session-root`` (the ratchet's KDF_RK has its own label,
    ``msgr/v1/ratchet-root``). The draft recommends passing ISK through
    a KDF before any use (Section 4).
    """
    return kdf.subkey(isk, "session-root", size=ROOT_KEY_BYTES)


class _Party:
    """State, inputs and the one place that moves along the transition table."""

    _role: str

    def __init__(self, *, prs: bytes, me: str, peer: str, rng: cpace.Rng) -> None:
        if not isinstance(prs, bytes) or len(prs) != PRS_BYTES:
            raise ValueError(f"prs must be {PRS_BYTES} bytes (the Argon2id output)")
        self._me = check_name(me, what="own username")
        self._peer = check_name(peer, what="peer username")
        self._initiator, self._responder = (
            (self._me, self._peer) if self._role == INITIATOR else (self._peer, self._me)
        )
        self._rng = rng
        self._state = State.IDLE
        self._na = self._nb = self._sid = b""
        # Secrets; b"" until known and again once the handshake ends.
        self._prs = prs

    @property
    def state(self) -> State:
        return self._state

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(me={self._me!r}, peer={self._peer!r}, state={self._state.name})"
        )

    def belongs(self, msg: dict[str, Any]) -> bool:
        """Whether ``msg`` echoes this attempt's nonces (``na``, and ``nb``
        once known). One that does not is from another attempt (an earlier
        run's, a retry's, a replay): the session layer drops it rather than
        let it fail this one. Changes no state."""
        for name, mine in (("na", self._na), ("nb", self._nb)):
            if not mine:
                continue
            try:
                theirs = _field(msg, name, NONCE_BYTES)
            except (KeyError, MalformedHandshake):
                return False
            if not hmac.compare_digest(theirs, mine):
                return False
        return True

    def _step(self, event: Event, step: Callable[[], _T]) -> _T:
        """Run ``step`` if ``event`` is allowed now; on any error, FAILED for good."""
        nxt = _TRANSITIONS.get((self._state, event))
        if nxt is None:
            if self._state is State.FAILED:
                problem = "this handshake already failed; start a new one"
            else:
                problem = f"{event.value!r} is not allowed in state {self._state.name}"
            self._end(State.FAILED)
            raise HandshakeStateError(problem)
        try:
            out = step()
        except BaseException:
            self._end(State.FAILED)
            raise
        if nxt is State.DONE:
            self._end(nxt)
        else:
            self._state = nxt
        return out

    def _end(self, state: State) -> None:
        """Enter a final state and drop every secret (best effort: Python cannot wipe)."""
        self._state = state
        for name in _SECRETS.intersection(vars(self)):
            setattr(self, name, b"")

    def _set_nonces(self, na: bytes, nb: bytes) -> None:
        self._na, self._nb = na, nb
        self._sid = session_id(na, nb)

    def _generator(self) -> bytes:
        return cpace.calculate_generator(
            self._prs, channel_id(self._initiator, self._responder), self._sid
        )

    def _keys(
        self,
        isk: bytes,
        *,
        peer_ratchet_pub: bytes | None = None,
        own_ratchet_priv: bytes | None = None,
    ) -> SessionKeys:
        return SessionKeys(
            isk=isk,
            sid=self._sid,
            role=self._role,
            root_key=root_key(isk),
            ad=cpace.lv_cat(
                _AD_LABEL, self._sid, self._initiator.encode(), self._responder.encode()
            ),
            peer_ratchet_pub=peer_ratchet_pub,
            own_ratchet_priv=own_ratchet_priv,
            safety_number=safety_number(isk),
        )


class Initiator(_Party):
    """Side A: :meth:`start`, then :meth:`on_resp`, then :meth:`on_confirm`.

    Each ``on_*`` raises :class:`MalformedHandshake`, :class:`cpace.CPaceError`
    or :class:`PasscodeMismatch` for bad peer data, and every method raises
    :class:`HandshakeStateError` when called out of order; after any error
    the object is FAILED and refuses everything.
    """

    _role = INITIATOR

    def __init__(self, *, prs: bytes, me: str, peer: str, rng: cpace.Rng = os.urandom) -> None:
        super().__init__(prs=prs, me=me, peer=peer, rng=rng)
        self._isk = self._expected_tb = self._peer_ratchet_pub = b""

    def start(self) -> dict[str, Any]:
        """M1."""
        return self._step(Event.START, self._start)

    def on_resp(self, msg: dict[str, Any]) -> dict[str, Any]:
        """M2 in, M3 out."""
        return self._step(Event.RESP, lambda: self._on_resp(msg))

    def on_confirm(self, msg: dict[str, Any]) -> SessionKeys:
        """M4 in; the session keys out."""
        return self._step(Event.CONFIRM, lambda: self._on_confirm(msg))

    def _start(self) -> dict[str, Any]:
        self._na = cpace.random_bytes(self._rng, NONCE_BYTES)
        return {"hs": "init", "v": VERSION, "na": _b64(self._na)}

    def _on_resp(self, msg: dict[str, Any]) -> dict[str, Any]:
        _check_kind(msg, "resp")
        _check_echo(msg, "na", self._na)
        self._set_nonces(self._na, _field(msg, "nb", NONCE_BYTES))
        yb = _share(msg)
        adb = _field(msg, "ad", None)
        self._peer_ratchet_pub = _parse_adb(adb, self._peer)

        ya = cpace.sample_scalar(self._rng)
        share = cpace.scalar_mult(ya, self._generator())
        k = cpace.scalar_mult_vfy(ya, yb)
        ada = cpace.lv_cat(self._me.encode())
        self._isk = cpace.isk(self._sid, k, cpace.transcript_ir(share, ada, yb, adb))
        mac_key = cpace.confirmation_key(self._sid, self._isk)
        self._expected_tb = cpace.confirmation_tag(mac_key, yb, adb)
        self._prs = b""
        return {
            "hs": "share",
            "v": VERSION,
            "na": _b64(self._na),
            "nb": _b64(self._nb),
            "Y": _b64(share),
            "ad": _b64(ada),
            "tag": _b64(cpace.confirmation_tag(mac_key, share, ada)),
        }

    def _on_confirm(self, msg: dict[str, Any]) -> SessionKeys:
        _check_kind(msg, "confirm")
        _check_echo(msg, "na", self._na)
        _check_echo(msg, "nb", self._nb)
        tag = _field(msg, "tag", TAG_BYTES)
        if not hmac.compare_digest(tag, self._expected_tb):
            raise PasscodeMismatch()
        return self._keys(self._isk, peer_ratchet_pub=self._peer_ratchet_pub)


class Responder(_Party):
    """Side B: :meth:`on_init`, then :meth:`on_share`.

    Raises as :class:`Initiator` does; a wrong passcode raises
    :class:`PasscodeMismatch` from :meth:`on_share`, which then returns no M4.
    """

    _role = RESPONDER

    def __init__(self, *, prs: bytes, me: str, peer: str, rng: cpace.Rng = os.urandom) -> None:
        super().__init__(prs=prs, me=me, peer=peer, rng=rng)
        self._yb = self._share = self._adb = self._ratchet_priv = b""

    def on_init(self, msg: dict[str, Any]) -> dict[str, Any]:
        """M1 in, M2 out."""
        return self._step(Event.INIT, lambda: self._on_init(msg))

    def on_share(self, msg: dict[str, Any]) -> tuple[dict[str, Any], SessionKeys]:
        """M3 in; M4 and the session keys out, only if Ta is right."""
        return self._step(Event.SHARE, lambda: self._on_share(msg))

    def _on_init(self, msg: dict[str, Any]) -> dict[str, Any]:
        _check_kind(msg, "init")
        self._set_nonces(_field(msg, "na", NONCE_BYTES), cpace.random_bytes(self._rng, NONCE_BYTES))
        self._yb = cpace.sample_scalar(self._rng)
        self._share = cpace.scalar_mult(self._yb, self._generator())
        self._ratchet_priv = cpace.random_bytes(self._rng, RATCHET_KEY_BYTES)
        ratchet_pub = nacl.bindings.crypto_scalarmult_base(self._ratchet_priv)
        self._adb = cpace.lv_cat(self._me.encode(), ratchet_pub)
        self._prs = b""
        return {
            "hs": "resp",
            "v": VERSION,
            "na": _b64(self._na),
            "nb": _b64(self._nb),
            "Y": _b64(self._share),
            "ad": _b64(self._adb),
        }

    def _on_share(self, msg: dict[str, Any]) -> tuple[dict[str, Any], SessionKeys]:
        _check_kind(msg, "share")
        _check_echo(msg, "na", self._na)
        _check_echo(msg, "nb", self._nb)
        ya = _share(msg)
        ada = _field(msg, "ad", None)
        if ada != cpace.lv_cat(self._peer.encode()):
            raise MalformedHandshake("ad", "does not name the user you expected")
        tag = _field(msg, "tag", TAG_BYTES)
        k = cpace.scalar_mult_vfy(self._yb, ya)
        isk = cpace.isk(self._sid, k, cpace.transcript_ir(ya, ada, self._share, self._adb))
        mac_key = cpace.confirmation_key(self._sid, isk)
        if not hmac.compare_digest(tag, cpace.confirmation_tag(mac_key, ya, ada)):
            raise PasscodeMismatch()
        m4 = {
            "hs": "confirm",
            "v": VERSION,
            "na": _b64(self._na),
            "nb": _b64(self._nb),
            "tag": _b64(cpace.confirmation_tag(mac_key, self._share, self._adb)),
        }
        return m4, self._keys(isk, own_ratchet_priv=self._ratchet_priv)


# -- validation of peer messages ---------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64_len(n: int) -> int:
    return 4 * ((n + 2) // 3)


def _check_kind(msg: object, kind: str) -> None:
    if not isinstance(msg, dict):
        raise MalformedHandshake("message", "is not a JSON object")
    if msg.get("hs") != kind:
        raise MalformedHandshake("hs", f"is not {kind!r}, the message expected now")
    if set(msg) != _FIELDS[kind]:
        raise MalformedHandshake("fields", f"of a {kind!r} message are not the expected ones")
    v = msg["v"]
    if type(v) is not int or v != VERSION:
        raise MalformedHandshake("v", f"is not {VERSION} (the peer runs another msgr version?)")


def _field(msg: dict[str, Any], name: str, length: int | None) -> bytes:
    """Field ``name`` as bytes: exactly ``length`` bytes, or at most MAX_AD_BYTES."""
    text = msg[name]
    if not isinstance(text, str):
        raise MalformedHandshake(name, "is not a string")
    limit = _b64_len(MAX_AD_BYTES if length is None else length)
    if len(text) > limit:  # before decoding: never decode a huge string
        raise MalformedHandshake(name, f"is {len(text)} characters, the limit is {limit}")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedHandshake(name, "is not valid base64") from None
    if _b64(raw) != text:
        raise MalformedHandshake(name, "is not canonical base64")
    if length is not None and len(raw) != length:
        raise MalformedHandshake(name, f"is {len(raw)} bytes, expected {length}")
    return raw


def _check_echo(msg: dict[str, Any], name: str, expected: bytes) -> None:
    if not hmac.compare_digest(_field(msg, name, NONCE_BYTES), expected):
        raise MalformedHandshake(name, "does not match this attempt (stale or replayed message)")


def _share(msg: dict[str, Any]) -> bytes:
    y = _field(msg, "Y", cpace.FIELD_BYTES)
    if int.from_bytes(y, "little") >= _P25519:
        raise MalformedHandshake("Y", "is not a canonical X25519 share")
    return y


def _parse_adb(adb: bytes, responder: str) -> bytes:
    """B's ratchet public key from ``ADb = lv_cat(responder, ratchet_pub)``.

    Only the length is checked here; ``ratchet.Ratchet.initiator`` refuses a
    low-order key.
    """
    prefix = cpace.prepend_len(responder.encode()) + bytes([RATCHET_KEY_BYTES])
    if len(adb) != len(prefix) + RATCHET_KEY_BYTES or not adb.startswith(prefix):
        raise MalformedHandshake("ad", "does not name the user you expected with a ratchet key")
    return adb[len(prefix) :]
