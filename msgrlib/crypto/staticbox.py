"""Static-mode sealing: the original design's passcode key, hardened.

Used by ``chat --static``. Each direction has its own key
(:func:`kdf.direction_keys`), so a message cannot be reflected back to its
sender as if the peer wrote it. A sealed message is::

    body = "s1." + base64(nonce[24] || crypto_secretbox(inner, nonce, key))
    inner = UTF-8 JSON {"from", "to", "epoch", "n", "ts", "ttl", "text"}

``epoch`` is 8 random bytes (base64) chosen once per client run and ``n``
counts messages within it, so a restarted sender never reuses a (epoch, n)
pair and its fresh messages never look replayed. ``ts`` is the sender's Unix
time; a receiver rejects messages older than :data:`FRESHNESS` seconds, which
bounds how long it must remember (epoch, n) pairs to reject replays.

The nonce is random (24 bytes, XSalsa20's extended nonce makes collisions
negligible) rather than a counter, because a counter would repeat after a
restart under the same key.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nacl.bindings
import nacl.exceptions

import framing
import kdf
from msgrlib.errors import CryptoError

PREFIX = "s1."
#: A message older than this (sender's clock), or from further in the future
#: than CLOCK_SKEW, is refused: the relay's longest TTL plus generous skew.
CLOCK_SKEW = 120.0
FRESHNESS = 60.0 + CLOCK_SKEW


class SealError(CryptoError):
    code = "bad_message"


class Undecryptable(SealError):
    code = "undecryptable"


class Replayed(SealError):
    code = "replay"


class Misdirected(SealError):
    code = "misdirected"


class Stale(SealError):
    code = "stale"


@dataclass(frozen=True)
class Opened:
    sender: str
    epoch: str
    n: int
    ts: float
    ttl: int
    text: str


class StaticBox:
    """Seal and open static-mode messages between ``me`` and ``peer``."""

    def __init__(self, master: bytes, me: str, peer: str, *, rng: Callable[[int], bytes],
                 wallclock: Callable[[], float]) -> None:
        self.me = me
        self.peer = peer
        self._send_key, self._recv_key = kdf.direction_keys(master, me, peer)
        self._rng = rng
        self._now = wallclock
        self.epoch = base64.b64encode(rng(8)).decode()
        self._n = 0
        # (epoch, n) -> ts of messages already opened, forgotten after FRESHNESS.
        self._seen: dict[tuple[str, int], float] = {}

    def seal(self, text: str, ttl: int, *, ts: float | None = None) -> str:
        """Seal ``text``; ``ts`` (Unix time, default now) is when it was typed:
        with ``ttl`` it is the deadline the receiver holds it to."""
        self._n += 1
        inner = {"from": self.me, "to": self.peer, "epoch": self.epoch, "n": self._n,
                 "ts": round(self._now() if ts is None else ts, 3), "ttl": ttl, "text": text}
        plaintext = json.dumps(inner, ensure_ascii=False, separators=(",", ":")).encode()
        nonce = self._rng(24)
        sealed = nacl.bindings.crypto_secretbox(plaintext, nonce, self._send_key)
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, body: str) -> Opened:
        """Open a body from the peer; raise a :class:`SealError` and change nothing if bad."""
        if not body.startswith(PREFIX):
            raise SealError("not a static-mode message (is the peer running without --static?)")
        try:
            raw = base64.b64decode(body[len(PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise SealError("message is not valid base64") from None
        if len(raw) < 24 + 16:
            raise SealError("message is too short")
        try:
            plaintext = nacl.bindings.crypto_secretbox_open(raw[24:], raw[:24], self._recv_key)
        except nacl.exceptions.CryptoError:
            raise Undecryptable("a message could not be decrypted: the passcodes differ, "
                                "or it was tampered with") from None
        inner = _parse_inner(plaintext)
        if inner["from"] != self.peer or inner["to"] != self.me:
            raise Misdirected("a message names the wrong sender or recipient; rejected")
        now = self._now()
        ts = inner["ts"]
        if ts < now - FRESHNESS or ts > now + CLOCK_SKEW:
            raise Stale("a message is too old or dated in the future (check both clocks); "
                        "rejected")
        key = (inner["epoch"], inner["n"])
        self._forget_old(now)
        if key in self._seen:
            raise Replayed("a replayed message was rejected")
        self._seen[key] = ts
        return Opened(self.peer, inner["epoch"], inner["n"], ts, inner["ttl"], inner["text"])

    def _forget_old(self, now: float) -> None:
        # Dict order is insertion order, and entries are inserted roughly in ts
        # order; stop at the first fresh one, so this is O(expired).
        seen = self._seen
        while seen:
            key, ts = next(iter(seen.items()))
            if ts >= now - FRESHNESS:
                break
            del seen[key]


def _parse_inner(plaintext: bytes) -> dict[str, Any]:
    try:
        inner = framing.decode_body(plaintext)
    except framing.FramingError:
        raise SealError("a message decrypted but is not a valid JSON object") from None
    if (not isinstance(inner.get("from"), str)
            or not isinstance(inner.get("to"), str) or not isinstance(inner.get("epoch"), str)
            or type(inner.get("n")) is not int or inner["n"] < 1
            or type(inner.get("ts")) not in (int, float)
            or type(inner.get("ttl")) is not int or not isinstance(inner.get("text"), str)):
        raise SealError("a message decrypted but its fields are wrong")
    return inner
