"""The relay protocol (PROTOCOL.md section 3), shared by the relay and the client.

Sans-I/O and free of policy: :mod:`framing` turns bytes into JSON objects;
this module turns those objects into typed, frozen frames, checked once, and
frames back into objects. It holds what both sides must agree on: the
protocol version, the error codes (:class:`ErrorCode`, one enum), the string a
client signs to prove it owns its name (:func:`auth_message`), and the checks
on the limits a relay advertises in ``welcome`` (:class:`Limits`).

Parsing is strict where the relay enforces (integers are ``int``, never
``bool`` or ``float``: ``"v": true`` and ``"v": 1.0`` are refused), and every
parser raises :class:`FrameError` and nothing else, whatever the object holds.

The relay's busiest path (``send`` in, ``accepted`` and ``deliver`` out) does
not build these dataclasses: it checks the same rules inline and formats its
two hot frames by hand (see ``relay/rules.py``); ``tests/test_protocol.py``
checks the two agree.

Errors (the whole tree is drawn in ``msgrlib/errors.py``, which also holds
:class:`ErrorCode`)::

    RemoteError
    └── FrameError      an object that is not a valid frame of the protocol;
                        ``code`` is an ErrorCode (protocol, version, bad_name),
                        ``kind`` the frame's type if it had one
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from dataclasses import dataclass, fields
from typing import Any, TypeGuard

from msgrlib.errors import PERMANENT_CODES, ErrorCode, RemoteError
from msgrlib.util.names import MAX_NAME_LENGTH, is_valid_name

#: The one protocol version both sides speak; ``hello`` and ``welcome`` carry it.
PROTOCOL_VERSION = 1

#: What a client signs to prove it owns its name (see :func:`auth_message`).
#: The label keeps this signature from meaning anything anywhere else.
AUTH_LABEL = b"msgr/v1/relay-auth\x00"

#: Longest relay id accepted from a relay (ours are 16 hex digits).
MAX_RELAY_ID = 64
#: Most ids in one ``ack`` (the relay's limit: one frame stays small).
MAX_ACK_IDS = 1024
#: Largest integer ids and refs: 2**53 - 1, so every JSON reader keeps them exact.
MAX_SAFE_INT = 2**53 - 1

_RELAY_ID_RE = re.compile(rf"[0-9A-Za-z._:+/=-]{{1,{MAX_RELAY_ID}}}\Z")


class FrameError(RemoteError):
    """An object that is not a valid frame; ``code`` says which rule it broke."""

    def __init__(self, message: str, *, code: ErrorCode = ErrorCode.PROTOCOL,
                 kind: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind


# -- the signed string -----------------------------------------------------------

def tls_binding(fingerprint: str) -> str:
    """The relay identity a client signs over TLS: the certificate's
    fingerprint, as :func:`msgrlib.tls.certs.fingerprint` writes it."""
    return "tls:" + fingerprint


def id_binding(relay_id: str) -> str:
    """The relay identity a client signs without TLS: the id the relay
    advertised in ``challenge``."""
    return "id:" + relay_id


def auth_message(nonce: bytes, binding: str, name: str) -> bytes:
    """The bytes a client signs to own ``name`` at one relay::

        "msgr/v1/relay-auth" || 0x00 || nonce (32) || lp(UTF-8(binding)) || UTF-8(name)

    ``binding`` (:func:`tls_binding` or :func:`id_binding`) names the relay,
    so a hostile relay cannot forward another relay's challenge and use the
    signature there. ``lp`` is a 4-byte big-endian length.
    """
    bound = binding.encode()
    return AUTH_LABEL + nonce + struct.pack(">I", len(bound)) + bound + name.encode()


# -- field checks ----------------------------------------------------------------

def _int(obj: dict[str, Any], key: str, kind: str, *, low: int = 0,
         high: int = MAX_SAFE_INT) -> int:
    value = obj.get(key)
    if type(value) is not int:  # not bool, not float
        raise FrameError(f"{kind}: {key!r} must be an integer", kind=kind)
    if not low <= value <= high:
        raise FrameError(f"{kind}: {key!r} must be {low}..{high}", kind=kind)
    return value


def _opt_int(obj: dict[str, Any], key: str, kind: str) -> int | None:
    return None if obj.get(key) is None else _int(obj, key, kind)


def _is_number(value: object) -> TypeGuard[int | float]:
    """A finite JSON number (``true`` and ``false`` are not numbers here)."""
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _number(obj: dict[str, Any], key: str, kind: str) -> float:
    value = obj.get(key)
    if not _is_number(value):
        raise FrameError(f"{kind}: {key!r} must be a number", kind=kind)
    return float(value)


def _str(obj: dict[str, Any], key: str, kind: str, *, limit: int | None = None) -> str:
    value = obj.get(key)
    if type(value) is not str:
        raise FrameError(f"{kind}: {key!r} must be a string", kind=kind)
    if limit is not None and len(value) > limit:
        raise FrameError(f"{kind}: {key!r} is longer than {limit} characters", kind=kind)
    return value


def _name(obj: dict[str, Any], key: str, kind: str) -> str:
    value = obj.get(key)
    if not is_valid_name(value):
        raise FrameError(f"{kind}: {key!r} is not a valid name", code=ErrorCode.BAD_NAME,
                         kind=kind)
    return value  # type: ignore[return-value]


def _bool(obj: dict[str, Any], key: str, kind: str) -> bool:
    value = obj.get(key)
    if type(value) is not bool:
        raise FrameError(f"{kind}: {key!r} must be true or false", kind=kind)
    return value


def _b64(obj: dict[str, Any], key: str, kind: str, size: int) -> bytes:
    value = obj.get(key)
    if type(value) is not str:
        raise FrameError(f"{kind}: {key!r} must be a base64 string", kind=kind)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FrameError(f"{kind}: {key!r} is not valid base64", kind=kind) from None
    if len(raw) != size:
        raise FrameError(f"{kind}: {key!r} must be {size} bytes, got {len(raw)}", kind=kind)
    return raw


def _relay_id(value: object, kind: str) -> str | None:
    if value is None:
        return None
    if type(value) is not str or not _RELAY_ID_RE.match(value):
        raise FrameError(f"{kind}: 'relay' must be an id of 1-{MAX_RELAY_ID} letters, "
                         "digits and ._:+/=-", kind=kind)
    return value


def _b64text(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# -- frames a client sends ---------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    user: str
    key: bytes            # Ed25519 public key, 32 bytes
    v: int = PROTOCOL_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"type": "hello", "v": self.v, "user": self.user, "key": _b64text(self.key)}


@dataclass(frozen=True)
class Auth:
    sig: bytes            # Ed25519 signature over auth_message(), 64 bytes

    def to_json(self) -> dict[str, Any]:
        return {"type": "auth", "sig": _b64text(self.sig)}


@dataclass(frozen=True)
class Send:
    to: str
    body: str
    ttl: int | None = None
    kind: str = "msg"      # "msg" or "hs"
    ref: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "send"}
        if self.ref is not None:
            out["ref"] = self.ref
        out["to"] = self.to
        if self.ttl is not None:
            out["ttl"] = self.ttl
        if self.kind != "msg":
            out["kind"] = self.kind
        out["body"] = self.body
        return out


@dataclass(frozen=True)
class Ack:
    ids: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"type": "ack", "ids": list(self.ids)}


@dataclass(frozen=True)
class Watch:
    user: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "watch", "user": self.user}


@dataclass(frozen=True)
class Ping:
    t: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": "ping"} if self.t is None else {"type": "ping", "t": self.t}


@dataclass(frozen=True)
class Bye:
    def to_json(self) -> dict[str, Any]:
        return {"type": "bye"}


#: Largest nameplate number (the relay's; ``msgrlib.invite.code.MAX_NAMEPLATE`` agrees).
MAX_NAMEPLATE = 999_999


@dataclass(frozen=True)
class Allocate:
    """Ask for a nameplate: a short number that routes an invite (section 3.6)."""

    def to_json(self) -> dict[str, Any]:
        return {"type": "allocate"}


@dataclass(frozen=True)
class Join:
    """Claim the inviter's nameplate: both sides are told each other's name."""

    nameplate: int

    def to_json(self) -> dict[str, Any]:
        return {"type": "join", "nameplate": self.nameplate}


@dataclass(frozen=True)
class Cancel:
    """The inviter gives its nameplate up."""

    nameplate: int

    def to_json(self) -> dict[str, Any]:
        return {"type": "cancel", "nameplate": self.nameplate}


ClientFrame = Hello | Auth | Send | Ack | Watch | Ping | Bye | Allocate | Join | Cancel


def parse_hello(obj: dict[str, Any]) -> Hello:
    """``hello``: ``v`` exactly the integer 1 (``version`` if another integer,
    ``protocol`` if not an integer), a valid ``user`` (``bad_name``), a
    32-byte base64 ``key`` (``protocol``)."""
    v = obj.get("v")
    if type(v) is not int:
        raise FrameError("hello: 'v' must be an integer", kind="hello")
    if v != PROTOCOL_VERSION:
        raise FrameError(f"this relay speaks protocol version {PROTOCOL_VERSION}; upgrade msgr",
                         code=ErrorCode.VERSION, kind="hello")
    if not is_valid_name(obj.get("user")):
        raise FrameError(f"invalid username: use 1-{MAX_NAME_LENGTH} characters from a-z, 0-9, "
                         "'.', '_' and '-', starting with a letter or digit",
                         code=ErrorCode.BAD_NAME, kind="hello")
    return Hello(user=obj["user"], key=_b64(obj, "key", "hello", 32), v=v)


def parse_auth(obj: dict[str, Any]) -> Auth:
    return Auth(sig=_b64(obj, "sig", "auth", 64))


def _parse_send(obj: dict[str, Any]) -> Send:
    body = _str(obj, "body", "send")
    to = _name(obj, "to", "send")
    ttl = obj.get("ttl")
    if "ttl" in obj and type(ttl) is not int:  # left out: the relay's default; null: no
        raise FrameError("send: 'ttl' must be an integer number of seconds", kind="send")
    kind = obj.get("kind", "msg")
    if kind != "msg" and kind != "hs":
        raise FrameError("send: 'kind' must be 'msg' or 'hs'", kind="send")
    ref = obj.get("ref")
    if ref is not None and type(ref) is not int:
        raise FrameError("send: 'ref' must be an integer", kind="send")
    return Send(to=to, body=body, ttl=ttl, kind=kind, ref=ref)


def _parse_ack(obj: dict[str, Any]) -> Ack:
    ids = obj.get("ids")
    if ids is None:
        ids = [obj.get("id")]
    if type(ids) is not list or len(ids) > MAX_ACK_IDS:
        raise FrameError(f"ack: needs an 'id' or a list of at most {MAX_ACK_IDS} 'ids'",
                         kind="ack")
    for msg_id in ids:
        if type(msg_id) is not int:
            raise FrameError("ack: message ids are integers", kind="ack")
    return Ack(ids=tuple(ids))


def _parse_ping(obj: dict[str, Any]) -> Ping:
    t = obj.get("t")
    return Ping(t=t if type(t) in (int, float) else None)


_CLIENT_PARSERS: dict[str, Any] = {
    "hello": parse_hello, "auth": parse_auth, "send": _parse_send, "ack": _parse_ack,
    "watch": lambda obj: Watch(user=_name(obj, "user", "watch")),
    "ping": _parse_ping, "bye": lambda obj: Bye(),
    "allocate": lambda obj: Allocate(),
    "join": lambda obj: Join(_int(obj, "nameplate", "join", low=1, high=MAX_NAMEPLATE)),
    "cancel": lambda obj: Cancel(_int(obj, "nameplate", "cancel", low=1, high=MAX_NAMEPLATE)),
}


def parse_client_frame(obj: dict[str, Any]) -> ClientFrame:
    """A frame a client sent to the relay. Raises :class:`FrameError` only."""
    kind = _kind(obj)
    parser = _CLIENT_PARSERS.get(kind)
    if parser is None:
        raise FrameError(f"unknown message type {kind[:32]!r}", kind=kind)
    frame: ClientFrame = parser(obj)
    return frame


# -- frames a relay sends ----------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """The limits a relay advertises in ``welcome``, checked once.

    A field the relay left out, or sent with a wrong type or out of range, is
    None: the client then keeps its own default. Bounds: ``max_frame``,
    ``mailbox_messages`` and ``mailbox_bytes`` positive integers; the TTLs numbers in 0..3600 s;
    ``heartbeat`` 1..600 s (a relay must not make us ping constantly, nor
    never); the four rates positive and finite.
    """

    max_frame: int | None = None
    ttl_min: float | None = None
    ttl_max: float | None = None
    ttl_default: float | None = None
    heartbeat: float | None = None
    mailbox_messages: int | None = None
    mailbox_bytes: int | None = None
    rate_messages: float | None = None
    burst_messages: float | None = None
    rate_bytes: float | None = None
    burst_bytes: float | None = None

    @classmethod
    def from_json(cls, obj: object) -> Limits:
        """Never raises: what cannot be used is left out."""
        if not isinstance(obj, dict):
            return cls()
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = obj.get(f.name)
            if not _is_number(value):
                continue
            if f.name in ("max_frame", "mailbox_messages", "mailbox_bytes"):
                ok = type(value) is int and value > 0
            elif f.name.startswith("ttl_"):
                ok = 0 <= value <= 3600
            elif f.name == "heartbeat":
                ok = 1 <= value <= 600
            else:
                ok = value > 0
            if ok:
                values[f.name] = value
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The fields that are set, as the relay sends them."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Challenge:
    nonce: bytes                 # 32 bytes to sign
    relay: str | None = None     # the relay's id (signed over without TLS)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "challenge", "nonce": _b64text(self.nonce)}
        if self.relay is not None:
            out["relay"] = self.relay
        return out


@dataclass(frozen=True)
class Welcome:
    user: str
    relay: str | None
    limits: Limits
    v: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Accepted:
    id: int
    ttl: int
    expires_at: float
    ref: int | None = None


@dataclass(frozen=True)
class Deliver:
    id: int
    sender: str                  # "from" on the wire
    kind: str                    # "msg" or "hs"
    ttl: int
    expires_at: float
    body: str


@dataclass(frozen=True)
class Expired:
    id: int
    to: str


@dataclass(frozen=True)
class Presence:
    user: str
    online: bool


@dataclass(frozen=True)
class Pong:
    t: float | None = None


@dataclass(frozen=True)
class Error:
    """``code`` is an :class:`ErrorCode`, or the text of one this side does
    not know (a newer relay's); ``message`` is the relay's sentence, raw:
    escape it before showing it."""

    code: ErrorCode | str
    message: str
    fatal: bool = False
    ref: int | None = None


@dataclass(frozen=True)
class Shutdown:
    message: str = ""


@dataclass(frozen=True)
class Allocated:
    """The relay holds ``nameplate`` for the asker until ``ttl`` seconds pass."""

    nameplate: int
    ttl: float

    def to_json(self) -> dict[str, Any]:
        return {"type": "allocated", "nameplate": self.nameplate, "ttl": self.ttl}


@dataclass(frozen=True)
class Joined:
    """Both sides of ``nameplate`` are here: ``peer`` is the other side's name.
    The nameplate is free again."""

    nameplate: int
    peer: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "joined", "nameplate": self.nameplate, "peer": self.peer}


@dataclass(frozen=True)
class NameplateGone:
    """The inviter's nameplate lapsed (``reason`` ``expired``) or was cancelled."""

    nameplate: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "nameplate_gone", "nameplate": self.nameplate, "reason": self.reason}


RelayFrame = (Challenge | Welcome | Accepted | Deliver | Expired | Presence | Pong | Error
              | Shutdown | Allocated | Joined | NameplateGone)

#: Longest relay sentence kept (an error's message, a shutdown notice).
MAX_MESSAGE = 300


def _parse_welcome(obj: dict[str, Any]) -> Welcome:
    v = obj.get("v", PROTOCOL_VERSION)
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise FrameError("welcome: 'v' is not this protocol's version", kind="welcome")
    return Welcome(user=_name(obj, "user", "welcome"),
                   relay=_relay_id(obj.get("relay"), "welcome"),
                   limits=Limits.from_json(obj.get("limits")), v=v)


def _parse_deliver(obj: dict[str, Any]) -> Deliver:
    kind = obj.get("kind", "msg")
    if kind != "msg" and kind != "hs":
        raise FrameError("deliver: 'kind' must be 'msg' or 'hs'", kind="deliver")
    return Deliver(id=_int(obj, "id", "deliver"), sender=_name(obj, "from", "deliver"),
                   kind=kind, ttl=_int(obj, "ttl", "deliver"),
                   expires_at=_number(obj, "expires_at", "deliver"),
                   body=_str(obj, "body", "deliver"))


def _parse_error(obj: dict[str, Any]) -> Error:
    code_text = _str(obj, "code", "error", limit=64)
    try:
        code: ErrorCode | str = ErrorCode(code_text)
    except ValueError:
        code = code_text
    message = obj.get("message")
    fatal = obj.get("fatal", False)
    return Error(code=code,
                 message=message[:MAX_MESSAGE] if type(message) is str else code_text,
                 fatal=fatal is True, ref=_opt_int(obj, "ref", "error"))


def _parse_pong(obj: dict[str, Any]) -> Pong:
    t = obj.get("t")
    return Pong(t=float(t) if _is_number(t) else None)


def _parse_shutdown(obj: dict[str, Any]) -> Shutdown:
    message = obj.get("message")
    return Shutdown(message=message[:MAX_MESSAGE] if type(message) is str else "")


_RELAY_PARSERS: dict[str, Any] = {
    "challenge": lambda obj: Challenge(nonce=_b64(obj, "nonce", "challenge", 32),
                                       relay=_relay_id(obj.get("relay"), "challenge")),
    "welcome": _parse_welcome,
    "accepted": lambda obj: Accepted(id=_int(obj, "id", "accepted"),
                                     ttl=_int(obj, "ttl", "accepted"),
                                     expires_at=_number(obj, "expires_at", "accepted"),
                                     ref=_opt_int(obj, "ref", "accepted")),
    "deliver": _parse_deliver,
    "expired": lambda obj: Expired(id=_int(obj, "id", "expired"),
                                   to=_name(obj, "to", "expired")),
    "presence": lambda obj: Presence(user=_name(obj, "user", "presence"),
                                     online=_bool(obj, "online", "presence")),
    "pong": _parse_pong,
    "error": _parse_error,
    "shutdown": _parse_shutdown,
    "allocated": lambda obj: Allocated(
        _int(obj, "nameplate", "allocated", low=1, high=MAX_NAMEPLATE),
        _number(obj, "ttl", "allocated")),
    "joined": lambda obj: Joined(_int(obj, "nameplate", "joined", low=1, high=MAX_NAMEPLATE),
                                 _name(obj, "peer", "joined")),
    "nameplate_gone": lambda obj: NameplateGone(
        _int(obj, "nameplate", "nameplate_gone", low=1, high=MAX_NAMEPLATE),
        _str(obj, "reason", "nameplate_gone", limit=32)),
}


def parse_relay_frame(obj: dict[str, Any]) -> RelayFrame:
    """A frame the relay sent to a client. Raises :class:`FrameError` only."""
    kind = _kind(obj)
    parser = _RELAY_PARSERS.get(kind)
    if parser is None:
        raise FrameError(f"unknown message type {kind[:32]!r}", kind=kind)
    frame: RelayFrame = parser(obj)
    return frame


def _kind(obj: object) -> str:
    if not isinstance(obj, dict):
        raise FrameError("a frame must be a JSON object")
    kind = obj.get("type")
    if type(kind) is not str:
        raise FrameError("every frame needs a string 'type'")
    return kind


__all__ = [
    "AUTH_LABEL", "Accepted", "Ack", "Allocate", "Allocated", "Auth", "Bye", "Cancel",
    "Challenge", "ClientFrame", "Deliver", "Error", "ErrorCode", "Expired", "FrameError",
    "Hello", "Join", "Joined", "Limits", "MAX_ACK_IDS", "MAX_NAMEPLATE", "NameplateGone",
    "PERMANENT_CODES", "PROTOCOL_VERSION", "Ping", "Pong", "Presence", "RelayFrame", "Send",
    "Shutdown", "Watch", "Welcome", "auth_message", "id_binding", "parse_auth",
    "parse_client_frame", "parse_hello", "parse_relay_frame", "tls_binding",
]
