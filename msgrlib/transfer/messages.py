"""The transfer messages: JSON objects carried as the plaintext of ratchet messages.

One exception: an ``xfer.chunk`` travels as a *binary* plaintext (:func:`encode_chunk_plaintext`:
a 26-byte header, then the raw bytes), so its data is base64-encoded once (the ciphertext in the
relay frame) rather than twice. In memory it is the same kind of object as the others, with
``"data"`` holding ``bytes``.

Each is a JSON object whose ``"k"`` is one of :data:`KINDS` (all start with ``"xfer."``, so the
chat core can dispatch on the prefix beside its ``hi``/``msg``/``rcpt``), and whose ``"t"`` is
the transfer id (32 lowercase hex characters, 16 random bytes chosen by the sender). The
fields, their bounds and worked examples are in docs/transfer.md.

:func:`parse_message` turns a decoded object into one of the frozen dataclasses below, checking
exactly the expected keys, exact types (``true`` is not a number), ranges and canonical base64;
anything else raises :class:`TransferProtocolError` and nothing else. ``msg.to_obj()`` is the
inverse: ``parse_message(m.to_obj()) == m`` for every valid ``m``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from msgrlib.transfer.errors import TransferProtocolError

# --- limits on what a message may declare (the receiver applies its own, smaller, limits) ---

#: Largest chunk payload a message may carry (a parse bound: a receiver holds one chunk at a
#: time). The sender picks the largest chunk the relay's ``max_frame`` allows
#: (chunk_size_for(): 47 KiB for the default 64 KiB frame, the data base64-encoded once).
MAX_CHUNK_SIZE = 1024 * 1024
DEFAULT_CHUNK_SIZE = 32 * 1024
#: Declared sizes stay exact in a JSON double (2**53) with room; 1 PiB is no real bound.
MAX_DECLARED_SIZE = 2**50
#: Chunks a receiver may let be in flight (a parse bound). The relay may hold up to twice the
#: window (see machine.py), so a receiver picks its window with fit_window() from the relay's
#: mailbox limits; 16 full 47 KiB chunks (2 x 16 frames of ~64 KB) use half the default 4 MiB.
MAX_WINDOW = 64
DEFAULT_WINDOW = 16
#: A reason is a short sentence shown (escaped) to the other person.
MAX_REASON_LENGTH = 200
#: RFC 6838: type and subtype names are at most 127 characters each.
MAX_MIME_LENGTH = 255
#: A file name is at most 255 UTF-8 bytes (see names.py), so at most 255 characters.
MAX_NAME_LENGTH = 255

KIND_FILE = "file"
KIND_DIRECTORY = "directory"
KIND_SECRET = "secret"
TRANSFER_KINDS = (KIND_FILE, KIND_DIRECTORY, KIND_SECRET)

#: Failure codes msgr sends; a peer's unknown code is still accepted if it matches _CODE_RE.
FAIL_CODES = ("cancelled", "timeout", "hash_mismatch", "write_failed", "read_failed",
              "protocol", "refused")

_HEX32 = re.compile(r"[0-9a-f]{32}\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_CODE_RE = re.compile(r"[a-z][a-z_]{0,31}\Z")
_MIME_PART = r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}"
MIME_RE = re.compile(rf"{_MIME_PART}/{_MIME_PART}\Z")


def _fail(what: str) -> TransferProtocolError:
    return TransferProtocolError(f"a transfer message is malformed: {what}")


def _int(obj: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    value = obj[key]
    if type(value) is not int:
        raise _fail(f"{key!r} must be an integer")
    if not lo <= value <= hi:
        raise _fail(f"{key!r} must be {lo}..{hi}")
    return value


def _str(obj: Mapping[str, Any], key: str, max_len: int) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise _fail(f"{key!r} must be a string")
    if len(value) > max_len:
        raise _fail(f"{key!r} is longer than {max_len} characters")
    return value


def _match(obj: Mapping[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    value = obj[key]
    if not isinstance(value, str) or pattern.match(value) is None:
        raise _fail(f"{key!r} must be {what}")
    return value


def _tid(obj: Mapping[str, Any]) -> str:
    return _match(obj, "t", _HEX32, "32 lowercase hex characters")


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_canonical(text: object, what: str) -> bytes:
    """Standard base64 with padding, in its one canonical spelling (re-encodes identically)."""
    if not isinstance(text, str):
        raise _fail(f"{what!r} must be a base64 string")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise _fail(f"{what!r} is not valid base64") from None
    if b64encode(data) != text:
        raise _fail(f"{what!r} is not canonical base64")
    return data


@dataclass(frozen=True)
class Offer:
    """Sender -> receiver: what is offered. ``size`` is the exact byte count sent (for a
    directory: of its tar archive); ``sha256`` the hex SHA-256 of exactly those bytes."""

    t: str
    kind: str
    name: str
    size: int
    mime: str
    sha256: str
    chunk: int

    K = "xfer.offer"

    @property
    def chunks(self) -> int:
        """How many chunk messages carry ``size`` bytes (0 for an empty file)."""
        return -(-self.size // self.chunk)

    def chunk_length(self, index: int) -> int:
        """The exact payload length of chunk ``index`` (the last one may be shorter)."""
        return min(self.chunk, self.size - index * self.chunk)

    def to_obj(self) -> dict[str, Any]:
        return {"k": self.K, "t": self.t, "kind": self.kind, "name": self.name,
                "size": self.size, "mime": self.mime, "sha256": self.sha256,
                "chunk": self.chunk}

    @classmethod
    def _parse(cls, obj: Mapping[str, Any]) -> Offer:
        kind = obj["kind"]
        if kind not in TRANSFER_KINDS:
            raise _fail(f"'kind' must be one of {', '.join(TRANSFER_KINDS)}")
        name = _str(obj, "name", MAX_NAME_LENGTH)
        if kind == KIND_SECRET and name:
            raise _fail("a secret has no name")
        if kind != KIND_SECRET and not name:
            raise _fail("a file or directory needs a name")
        mime = _match(obj, "mime", MIME_RE, "a MIME type such as text/plain")
        if len(mime) > MAX_MIME_LENGTH:
            raise _fail("'mime' is too long")
        return cls(t=_tid(obj), kind=kind, name=name,
                   size=_int(obj, "size", 0, MAX_DECLARED_SIZE), mime=mime,
                   sha256=_match(obj, "sha256", _HEX64, "64 lowercase hex characters"),
                   chunk=_int(obj, "chunk", 1, MAX_CHUNK_SIZE))


@dataclass(frozen=True)
class Accept:
    """Receiver -> sender: go ahead; at most ``window`` unacknowledged chunks in flight."""

    t: str
    window: int

    K = "xfer.accept"

    def to_obj(self) -> dict[str, Any]:
        return {"k": self.K, "t": self.t, "window": self.window}

    @classmethod
    def _parse(cls, obj: Mapping[str, Any]) -> Accept:
        return cls(t=_tid(obj), window=_int(obj, "window", 1, MAX_WINDOW))


@dataclass(frozen=True)
class Decline:
    """Receiver -> sender: no (``reason`` is shown to the sender, escaped)."""

    t: str
    reason: str

    K = "xfer.decline"

    def to_obj(self) -> dict[str, Any]:
        return {"k": self.K, "t": self.t, "reason": self.reason}

    @classmethod
    def _parse(cls, obj: Mapping[str, Any]) -> Decline:
        return cls(t=_tid(obj), reason=_str(obj, "reason", MAX_REASON_LENGTH))


@dataclass(frozen=True)
class Chunk:
    """Sender -> receiver: bytes ``[i * chunk, i * chunk + len(data))`` of the content."""

    t: str
    i: int
    data: bytes

    K = "xfer.chunk"

    def to_obj(self) -> dict[str, Any]:
        """The in-memory object; :func:`encode_chunk_plaintext` makes its wire form."""
        return {"k": self.K, "t": self.t, "i": self.i, "data": self.data}

    @classmethod
    def _parse(cls, obj: Mapping[str, Any]) -> Chunk:
        index = _int(obj, "i", 0, MAX_DECLARED_SIZE)
        data = obj["data"]
        if type(data) is not bytes or not 1 <= len(data) <= MAX_CHUNK_SIZE:
            raise _fail(f"'data' must be 1..{MAX_CHUNK_SIZE} bytes (a binary chunk plaintext)")
        return cls(t=_tid(obj), i=index, data=data)


@dataclass(frozen=True)
class Ack:
    """Receiver -> sender: chunks ``0..next-1`` are written. ``gap`` says a later chunk came
    before chunk ``next`` (it was dropped): the sender goes back and resends from ``next``."""

    t: str
    next: int
    gap: bool = False

    K = "xfer.ack"

    def to_obj(self) -> dict[str, Any]:
        return {"k": self.K, "t": self.t, "next": self.next, "gap": self.gap}

    @classmethod
    def _parse(cls, obj: Mapping[str, Any]) -> Ack:
        gap = obj["gap"]
        if type(gap) is not bool:
            raise _fail("'gap' must be true or false")
        return cls(t=_tid(obj), next=_int(obj, "next", 0, MAX_DECLARED_SIZE), gap=gap)


@dataclass(frozen=True)
class Done:
    """Receiver -> sender: everything arrived, the hash matched, the file is in place."""

    t: str

    K = "xfer.done"

    def to_obj(self) -> dict[str, Any]:
        return {"k": self.K, "t": self.t}

    @classmethod
    def _parse(cls, obj: Mapping[str, Any]) -> Done:
        return cls(t=_tid(obj))


@dataclass(frozen=True)
class Fail:
    """Either way: this transfer is over and failed (``code`` from :data:`FAIL_CODES` when
    msgr sends it; ``reason`` a sentence shown escaped)."""

    t: str
    code: str
    reason: str

    K = "xfer.fail"

    def to_obj(self) -> dict[str, Any]:
        return {"k": self.K, "t": self.t, "code": self.code, "reason": self.reason}

    @classmethod
    def _parse(cls, obj: Mapping[str, Any]) -> Fail:
        return cls(t=_tid(obj), code=_match(obj, "code", _CODE_RE, "a short lowercase code"),
                   reason=_str(obj, "reason", MAX_REASON_LENGTH))


Message = Offer | Accept | Decline | Chunk | Ack | Done | Fail

_FIELDS: dict[str, tuple[frozenset[str], Callable[[Mapping[str, Any]], Message]]] = {
    cls.K: (frozenset(cls.__dataclass_fields__) | {"k"}, cls._parse)
    for cls in (Offer, Accept, Decline, Chunk, Ack, Done, Fail)
}

#: Every ``"k"`` of a transfer message.
KINDS = frozenset(_FIELDS)


def is_transfer_message(obj: Mapping[str, Any]) -> bool:
    """True if a decoded inner plaintext is meant for this layer (its ``k`` starts with
    ``xfer.``), whether or not it is valid: the chat core routes it here to be parsed."""
    kind = obj.get("k")
    return isinstance(kind, str) and kind.startswith("xfer.")


def parse_message(obj: object) -> Message:
    """The typed message for a decoded JSON object. Raises :class:`TransferProtocolError`
    (and nothing else) unless ``obj`` is a dict with exactly the fields of one kind, each
    valid."""
    if not isinstance(obj, dict):
        raise _fail("not an object")
    kind = obj.get("k")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise _fail("unknown kind")
    fields, parse = _FIELDS[kind]
    if set(obj) != fields:
        extra = sorted(set(obj) - fields)
        missing = sorted(fields - set(obj))
        raise _fail(f"fields missing {missing}" if missing else f"unexpected fields {extra}")
    return parse(obj)


#: First byte of a binary plaintext. A JSON plaintext starts with ``{``, so the two can
#: never be confused; the second byte names the binary kind (1: ``xfer.chunk``).
BINARY_TAG = 0x00
CHUNK_KIND = 0x01
#: tag, kind, 16-byte transfer id, 8-byte big-endian index.
CHUNK_HEADER = 26


def encode_chunk_plaintext(obj: Mapping[str, Any]) -> bytes:
    """The ratchet plaintext of an ``xfer.chunk`` object (from :meth:`Chunk.to_obj`):

    ``00 01 | transfer id (16 bytes) | index (8 bytes, big-endian) | data``

    The ratchet authenticates and encrypts it like any plaintext; only the ciphertext is
    base64-encoded (into the relay frame), once."""
    return (bytes((BINARY_TAG, CHUNK_KIND)) + bytes.fromhex(obj["t"])
            + obj["i"].to_bytes(8, "big") + obj["data"])


def decode_binary_plaintext(plaintext: bytes) -> dict[str, Any]:
    """The object of a binary plaintext (first byte :data:`BINARY_TAG`), for
    :func:`parse_message` to check. Raises :class:`TransferProtocolError` if it is not a
    well-formed chunk (unknown kind, short header, no data, over :data:`MAX_CHUNK_SIZE`)."""
    if len(plaintext) < 2 or plaintext[0] != BINARY_TAG or plaintext[1] != CHUNK_KIND:
        raise _fail("unknown binary plaintext")
    if not CHUNK_HEADER < len(plaintext) <= CHUNK_HEADER + MAX_CHUNK_SIZE:
        raise _fail(f"a binary chunk must hold 1..{MAX_CHUNK_SIZE} bytes")
    index = int.from_bytes(plaintext[18:26], "big")
    if index > MAX_DECLARED_SIZE:
        raise _fail("'i' out of range")
    return {"k": Chunk.K, "t": plaintext[2:18].hex(), "i": index,
            "data": plaintext[CHUNK_HEADER:]}


def new_transfer_id(randbytes: Callable[[int], bytes]) -> str:
    """A transfer id from 16 bytes of ``randbytes`` (``os.urandom`` in real use)."""
    raw = randbytes(16)
    if len(raw) != 16:
        raise ValueError("randbytes(16) must return 16 bytes")
    return bytes(raw).hex()


#: Bytes of a relay ``send`` frame around a chunk message's sealed body, beyond the names.
_SEND_OVERHEAD = 100


def chunk_frame_size(chunk: int, *, name_length: int = 32) -> int:
    """An upper bound on the relay ``send`` frame that carries a chunk of ``chunk`` bytes.

    Sizes along the way: the binary chunk plaintext is the data plus a 26-byte header; the
    ratchet adds a 42-byte header and a 16-byte MAC; the body is ``"r1." + 32 hex + "."``
    plus base64 of that; the ``send`` frame adds at most ``100 + name_length`` bytes of
    fields.
    """
    inner = chunk + CHUNK_HEADER
    ratchet = inner + 42 + 16
    body = 36 + 4 * -(-ratchet // 3)
    return body + _SEND_OVERHEAD + name_length


def chunk_size_for(max_frame: int, *, name_length: int = 32) -> int:
    """The largest chunk size (a multiple of 1 KiB, at most :data:`MAX_CHUNK_SIZE`) whose
    ``xfer.chunk`` message still fits a relay ``send`` frame of ``max_frame`` bytes
    (:func:`chunk_frame_size`). Raises ``ValueError`` if not even 1 KiB fits."""
    best = 0
    c = 1024
    while c <= MAX_CHUNK_SIZE and chunk_frame_size(c, name_length=name_length) <= max_frame:
        best = c
        c += 1024
    if not best:
        raise ValueError(f"a relay frame of {max_frame} bytes is too small for file chunks")
    return best


def chunk_size_for_relay(limits: object, *, name_length: int = 32) -> int:
    """:func:`chunk_size_for` the ``max_frame`` a relay declared in ``welcome`` (``limits``,
    its JSON object), or for the default 64 KiB frame if it declared none usable. A relay
    declaring more than it accepts only gets its own frames refused; the chunk stays at most
    :data:`MAX_CHUNK_SIZE` whatever it says.

    The frame is also held to a quarter of the ``mailbox_bytes`` it declared (the relay may
    hold two windows of at least one chunk for the transfer, in half the mailbox, as
    :func:`fit_window` plans): a relay whose frames are larger than its mailbox would
    otherwise refuse every chunk as ``mailbox_full`` (found by the review: ``serve
    --max-frame 4194304 --mailbox-bytes 1048576`` stalled every transfer)."""
    frame = limits.get("max_frame") if isinstance(limits, dict) else None
    if type(frame) is not int or frame < 4096:
        frame = 64 * 1024
    mailbox = limits.get("mailbox_bytes") if isinstance(limits, dict) else None
    if type(mailbox) is int and mailbox > 0:
        frame = min(frame, max(4096, mailbox // 4))
    return chunk_size_for(min(frame, 2 * MAX_CHUNK_SIZE), name_length=name_length)


def mailbox_bytes_of(limits: object, default: int = 4 * 1024 * 1024) -> int:
    """The ``mailbox_bytes`` a relay declared in ``welcome`` (``limits``), for
    :func:`fit_window`; ``default`` (msgr's relay's default) if it declared none usable."""
    mailbox = limits.get("mailbox_bytes") if isinstance(limits, dict) else None
    return mailbox if type(mailbox) is int and mailbox > 0 else default


def fit_window(chunk: int, *, mailbox_bytes: int, mailbox_messages: int,
               want: int = DEFAULT_WINDOW) -> int:
    """The window a receiver should offer so that the relay never refuses a chunk as
    ``mailbox_full``: twice the window (what the relay may hold for one transfer) stays
    within half the mailbox, bytes and messages, leaving the other half to chat. At least
    1, at most ``want`` (and :data:`MAX_WINDOW`)."""
    by_bytes = (mailbox_bytes // 2) // (2 * chunk_frame_size(chunk))
    by_count = (mailbox_messages // 2) // 2
    return max(1, min(want, MAX_WINDOW, by_bytes, by_count))


__all__ = [
    "DEFAULT_CHUNK_SIZE", "DEFAULT_WINDOW", "FAIL_CODES", "KINDS", "KIND_DIRECTORY",
    "KIND_FILE", "KIND_SECRET", "MAX_CHUNK_SIZE", "MAX_DECLARED_SIZE", "MAX_REASON_LENGTH",
    "MAX_WINDOW", "TRANSFER_KINDS", "Accept", "Ack", "Chunk", "Decline", "Done", "Fail",
    "Message", "Offer", "b64decode_canonical", "chunk_frame_size", "chunk_size_for",
    "chunk_size_for_relay", "mailbox_bytes_of",
    "decode_binary_plaintext", "encode_chunk_plaintext", "fit_window", "is_transfer_message",
    "new_transfer_id", "parse_message",
]
