"""A chat between two people, sans-I/O: relay frames in, frames and events out.

:class:`ChatCore` holds everything a chat client decides: the CPace handshake
and the double ratchet (default mode) or the passcode box (``--static``), the
outbox of messages not yet confirmed, receipts, replay and duplicate checks,
and what to tell the user. The asyncio layer (``client.py``) feeds it relay
frames and the passage of time, and sends what :meth:`ChatCore.take_frames`
returns; a UI shows what :meth:`ChatCore.take_events` returns. Nothing here
reads a clock, draws randomness or touches a socket on its own.

Default mode, in short (PROTOCOL.md has the details):

* Both clients watch each other's presence at the relay. Roles are fixed:
  the name that sorts first is always the CPace initiator. An initiator with
  no session starts a handshake when its peer is online; a responder with no
  session asks for one with a ``req``. An initiator never answers an
  ``init``, so a man in the middle cannot make both people responders (which
  would let it contribute the last share of both sessions and grind their
  safety numbers towards each other; see handshake.py).
* After the handshake the initiator sends a ``hi`` through the ratchet so the
  responder can send too (a ratchet responder cannot send first).
* Each message stays in the outbox until the peer's client returns a receipt
  through the ratchet. When a new session replaces the old one (the peer
  restarted), unconfirmed messages are sent again under it. A message whose
  TTL ends unconfirmed is reported as not delivered.

Static mode seals with :class:`e2e.StaticBox` and counts a message as sent once
the relay has acknowledged it, as the original design did.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import framing
from msgrlib.crypto import handshake, ratchet
from msgrlib.crypto import staticbox as e2e
from msgrlib.errors import CryptoError, MsgrError
from msgrlib.relay.rules import TokenBucket

#: Consecutive failed handshakes after which a client stops answering new
#: ones. Each attempt lets an active attacker test one passcode guess; three
#: leaves room for a typo on the other side, and the user is told each time.
MAX_HANDSHAKE_FAILURES = 3
#: Seconds a handshake may take before it is abandoned.
HANDSHAKE_TIMEOUT = 30.0
#: How many times in a row a timed-out handshake is started again by itself.
MAX_HANDSHAKE_TIMEOUTS = 3
#: Static mode: seconds after a message's TTL to wait for the relay's
#: "expired" report before forgetting the message.
STATIC_GRACE = 5.0
#: Relay ids and (epoch, n) pairs remembered to drop duplicates silently.
DEDUP_MEMORY = 4096
#: Share of the relay's per-connection rates (from ``welcome``) the client
#: allows itself, so that its sends are not refused as too fast.
RATE_MARGIN = 0.9
#: Times a send refused as too fast (``rate_limited``) is tried again.
RATE_RETRIES = 3
#: Most ids in one ``ack`` frame (the relay's limit, PROTOCOL.md).
MAX_ACK_IDS = 1024
#: Bytes kept free in a frame for everything around a message's text
#: (see ChatCore.max_text_bytes).
FRAME_OVERHEAD = 512


class Mode(enum.Enum):
    RATCHET = "ratchet"
    STATIC = "static"


# -- events for the UI ---------------------------------------------------------

@dataclass(frozen=True)
class Received:
    """A message from the peer, shown once."""

    sender: str
    text: str
    sent_at: float      # sender's Unix time
    expires_at: float   # Unix time the relay forgets it; the UI hides it then
    ttl: int


@dataclass(frozen=True)
class Notice:
    """Something the user should know; ``level`` is info, warn or error."""

    text: str
    code: str = "info"
    level: str = "info"


@dataclass(frozen=True)
class Accepted:
    """The relay holds message ``n`` (static mode: that is "sent")."""

    n: int
    expires_at: float


@dataclass(frozen=True)
class Delivered:
    """The peer's client confirmed message ``n`` end to end."""

    n: int


@dataclass(frozen=True)
class Undelivered:
    """Message ``n`` did not reach the peer; ``reason`` says why."""

    n: int
    reason: str


@dataclass(frozen=True)
class Presence:
    online: bool


@dataclass(frozen=True)
class SessionStarted:
    """A handshake completed; compare ``safety_number`` out of band."""

    safety_number: str
    session_id: str
    replaced: bool


Event = Received | Notice | Accepted | Delivered | Undelivered | Presence | SessionStarted


# -- internal state -------------------------------------------------------------

class OutState(enum.Enum):
    QUEUED = "queued"          # waiting for a session (or for the ratchet to allow sending)
    SENT = "sent"              # handed to the relay, no answer yet
    ACCEPTED = "accepted"      # the relay holds it
    DELIVERED = "delivered"    # confirmed by the peer (default mode)
    FAILED = "failed"          # reported as not delivered


@dataclass
class Outgoing:
    n: int
    text: str
    ttl: int
    ts: float
    deadline: float                 # monotonic: when typed, plus its TTL
    state: OutState = OutState.QUEUED
    body: str | None = None         # the last ciphertext sent
    ref: int | None = None
    relay_id: int | None = None
    blind: bool = False             # static: disconnected since accepted (see tick)
    handed_live: bool = False       # accepted while the peer was online (handed over at once)


@dataclass
class Pending:
    """A send frame, from when it is queued until the relay answers it."""

    purpose: str                         # msg, ctl (hi), rcpt (receipt) or hs
    frame: dict[str, Any]
    out: Outgoing | None = None          # msg: the message it carries
    inner: dict[str, Any] | None = None  # rcpt: sealed again after a reconnect
    sent: bool = False                   # handed to the I/O layer
    retries: int = 0


class Pacer:
    """Keeps sends under the relay's per-connection message and byte rates."""

    def __init__(self, limits: dict[str, Any], now: float) -> None:
        def rate(name: str, default: float) -> float:
            value = limits.get(name)
            ok = type(value) in (int, float) and 0 < value < float("inf")
            return value * RATE_MARGIN if ok else default  # type: ignore[operator]

        self.msgs = TokenBucket(rate("rate_messages", 1e9), max(1.0, rate("burst_messages", 1e9)),
                                now)
        self.bytes = TokenBucket(rate("rate_bytes", 1e12), rate("burst_bytes", 1e12), now)

    def take(self, size: int, now: float) -> bool:
        size = min(size, int(self.bytes.burst))  # larger than a burst: the relay decides
        if self.msgs.level(now) < 1 or self.bytes.level(now) < size:
            return False
        return self.msgs.take(1, now) and self.bytes.take(size, now)

    def ready_at(self, size: int, now: float) -> float:
        size = min(size, int(self.bytes.burst))
        wait = max((1 - self.msgs.level(now)) / self.msgs.rate,
                   (size - self.bytes.level(now)) / self.bytes.rate, 0.0)
        return now + wait

    def empty(self, now: float) -> None:
        """The relay said we were too fast: start again from no budget."""
        self.msgs.tokens = self.bytes.tokens = 0.0
        self.msgs.stamp = self.bytes.stamp = now


@dataclass
class Session:
    keys: handshake.SessionKeys
    ratchet: ratchet.Ratchet
    sid: str
    heard: bool = False  # a message from the peer opened under it


class ChatCore:
    """Decide everything a chat client does; see the module docstring."""

    def __init__(self, *, me: str, peer: str, key: bytes, mode: Mode = Mode.RATCHET,
                 ttl: int = 30, clock: Callable[[], float], wallclock: Callable[[], float],
                 rng: Callable[[int], bytes],
                 max_failures: int = MAX_HANDSHAKE_FAILURES,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        if me == peer:
            raise MsgrError("you cannot chat with yourself: --user and --peer are the same")
        self.me = me
        self.peer = peer
        self.mode = mode
        self.ttl = ttl
        self._key = key
        self._clock = clock
        self._wall = wallclock
        self._rng = rng
        self.max_failures = max_failures
        self.handshake_timeout = handshake_timeout
        self._frames: list[dict[str, Any]] = []
        self._events: list[Event] = []
        self._acks: list[int] = []
        self._refs: dict[int, Pending] = {}
        self._pacer: Pacer | None = None
        self._redo_receipts: list[dict[str, Any]] = []
        self._relay: str | None = None  # the relay instance of the last welcome
        self._max_frame = framing.DEFAULT_MAX_FRAME  # the relay's, once welcomed
        self._ttl_min = 0.0  # the relay's shortest TTL, once welcomed
        self._next_ref = 0
        self._next_n = 0
        # Messages whose fate is open. Settled ones leave it at once, so their
        # text does not linger in memory for the rest of the session.
        self.outbox: dict[int, Outgoing] = {}
        self._failed: list[int] = []
        self._seen_relay_ids: OrderedDict[int, None] = OrderedDict()
        self._seen_msgs: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.epoch = base64.b64encode(rng(8)).decode()
        self.connected = False
        self.peer_online: bool | None = None
        self.verified = False
        # default mode
        self.session: Session | None = None
        self._previous: Session | None = None
        self._hs: handshake.Initiator | handshake.Responder | None = None
        self._hs_started = 0.0
        self._req_at: float | None = None   # responder: when we last asked for a handshake
        self.initiator = me < peer
        self._hs_failures = 0
        self._hs_timeouts = 0
        self.locked = False
        # static mode
        self._box = (e2e.StaticBox(key, me, peer, rng=rng, wallclock=wallclock)
                     if mode is Mode.STATIC else None)

    # -- outputs --------------------------------------------------------------

    def take_frames(self) -> list[dict[str, Any]]:
        """Frames to send to the relay now. Sends beyond the relay's rates
        (see :meth:`set_limits`) wait, in order, until :meth:`next_deadline`;
        other frames (acks, watch) never wait behind them. A message's send
        carries what is left of its TTL, and is dropped if the message was
        settled meanwhile (reported undelivered: it must not arrive after)."""
        acks, self._acks = self._acks, []
        frames = [{"type": "ack", "ids": acks[i:i + MAX_ACK_IDS]}
                  for i in range(0, len(acks), MAX_ACK_IDS)]
        queue, self._frames = self._frames, []
        pacer = self._pacer
        now = self._clock()
        held: list[dict[str, Any]] = []
        for frame in queue:
            if frame["type"] != "send":
                frames.append(frame)
                continue
            entry = self._refs.get(frame["ref"])
            out = entry.out if entry is not None else None
            if out is not None:
                if self.outbox.get(out.n) is not out or out.state is not OutState.SENT:
                    del self._refs[frame["ref"]]  # settled while it waited
                    continue
                left = math.ceil(out.deadline - now)  # the relay counts whole seconds
                if left < max(self._ttl_min, 1):
                    # The relay would keep it for its minimum TTL, past the
                    # time we report it undelivered.
                    del self._refs[frame["ref"]]
                    self._fail(out, f"too little of its {out.ttl} s TTL was left to send it")
                    continue
                frame["ttl"] = min(out.ttl, left)
            if held or (pacer is not None and not pacer.take(len(frame["body"]), now)):
                held.append(frame)  # in order, behind the first that must wait
                continue
            if entry is not None:
                entry.sent = True
            frames.append(frame)
        self._frames = held + self._frames
        return frames

    def set_limits(self, limits: dict[str, Any]) -> None:
        """The relay's limits from ``welcome`` (each connection starts with
        its full burst): pace sends to stay under its rates, and keep every
        frame under its ``max_frame``."""
        self._pacer = Pacer(limits, self._clock())
        max_frame = limits.get("max_frame")
        if type(max_frame) is int and max_frame > 0:
            # Never above our own limit: the I/O layer encodes with it.
            self._max_frame = min(max_frame, framing.DEFAULT_MAX_FRAME)
        ttl_min = limits.get("ttl_min")
        if type(ttl_min) in (int, float) and 0 <= ttl_min <= 60:
            self._ttl_min = float(ttl_min)

    @property
    def max_text_bytes(self) -> int:
        """The largest text (UTF-8, JSON-escaped) whose sealed frame fits the
        relay's ``max_frame``: base64 grows the sealed body by 4/3, and the
        sealed fields, the nonce, the MAC and the frame's own fields take
        less than 1 KiB."""
        return max(0, (self._max_frame - FRAME_OVERHEAD) * 3 // 4 - FRAME_OVERHEAD)

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    @property
    def safety_number(self) -> str | None:
        return self.session.keys.safety_number if self.session else None

    def unsettled(self) -> list[Outgoing]:
        """Messages whose fate is not known yet (static mode: not yet held by the relay)."""
        if self.mode is Mode.STATIC:
            return [o for o in self.outbox.values() if o.state is not OutState.ACCEPTED]
        return list(self.outbox.values())

    def failed(self) -> list[int]:
        """Numbers of the messages reported as not delivered, in order."""
        return list(self._failed)

    # -- inputs from the user ---------------------------------------------------

    def send(self, text: str) -> int:
        """Queue ``text`` for the peer; return its number (for Delivered etc.).

        Raises :class:`MsgrError` (nothing is queued) for an empty text, one
        that is not valid Unicode, or one too large for the relay's frames.
        """
        if not text:
            raise MsgrError("the message is empty")
        try:
            size = len(json.dumps(text, ensure_ascii=False).encode("utf-8"))
        except UnicodeEncodeError:
            raise MsgrError("the message is not valid Unicode text (input that is not "
                            "UTF-8?)") from None
        limit = self.max_text_bytes
        if size > limit:
            raise MsgrError(f"the message is {size:,} bytes once encoded; the relay's limit "
                            f"allows {limit:,}")
        self._next_n += 1
        # The TTL runs from now, whether or not it can be sent now: one that
        # waits for the relay or a session is reported at its end, not
        # delivered after it left the sender's screen.
        out = Outgoing(self._next_n, text, self.ttl, self._wall(), self._clock() + self.ttl)
        self.outbox[out.n] = out
        self._pump()
        return out.n

    def mark_verified(self) -> None:
        self.verified = True

    def give_up(self, reason: str) -> None:
        """Report every unsettled message as not delivered (used at exit)."""
        for out in self.unsettled():
            self._fail(out, reason)

    # -- inputs from the I/O layer ----------------------------------------------

    def connected_to_relay(self, relay: str | None = None) -> None:
        """The relay accepted us (first time or after a reconnect); ``relay``
        is the instance its welcome named, if any."""
        # What expired while we were away is reported, not sent again.
        self.tick()
        restarted = relay is not None and self._relay is not None and relay != self._relay
        self._relay = relay
        self.connected = True
        self._frames.append({"type": "watch", "user": self.peer})
        for out in list(self.outbox.values()):  # _submit may fail one
            if self.mode is Mode.RATCHET and out.state in (OutState.SENT, OutState.ACCEPTED):
                # The relay may have lost it (a frame in flight, or a relay
                # restart). Seal it again under a fresh ratchet key: the peer
                # shows each (epoch, n) once and simply confirms a copy.
                out.state = OutState.QUEUED
            elif out.state is OutState.SENT and out.body is not None or (
                    restarted and out.state is OutState.ACCEPTED and not out.handed_live
                    and self._clock() < out.deadline):
                # Static mode: resend what the relay never acknowledged, and
                # what a relay that restarted since lost before the peer was
                # there to take it. The same body: the peer shows each once.
                # (One the peer was online for was handed over at once; sent
                # again, a restarted peer would show it twice. Its fate is
                # then unknown, and said so at its end: see tick.)
                out.blind = False
                self._submit(out)
            elif (out.state is OutState.ACCEPTED and not restarted
                  and self._clock() < out.deadline):
                out.blind = False  # back before its TTL ends: we will hear of an expiry
            elif out.state is OutState.ACCEPTED and restarted:
                out.blind = True  # the relay that held it is gone: no report will come
        # Receipts the relay may not have stored: the peer would otherwise
        # report as undelivered a message we showed. A copy is harmless.
        redo, self._redo_receipts = self._redo_receipts, []
        session = self.session
        if session is not None and session.ratchet.can_send:
            for inner in redo:
                self._seal_and_submit(inner, None)
        self._pump()

    def disconnected(self) -> None:
        self.connected = False
        self.peer_online = None
        for out in self.outbox.values():
            if out.state is OutState.ACCEPTED:
                out.blind = True  # an "expired" report would not reach us now
        # Sends handed out on that connection get no answer on another one.
        # Messages are resent from the outbox (so their sends still waiting
        # here are dropped, not sent twice); receipts are sealed anew.
        for ref, entry in list(self._refs.items()):
            if entry.sent or entry.purpose == "msg":
                del self._refs[ref]
                if entry.sent and entry.purpose == "rcpt" and entry.inner is not None:
                    self._redo_receipts.append(entry.inner)
        self._frames = [f for f in self._frames
                        if f["type"] != "send" or f["ref"] in self._refs]

    def handle(self, frame: dict[str, Any]) -> None:
        """One frame from the relay (after welcome).

        Whatever the frame holds, this does not raise: the relay, and anyone
        who can send through it, chooses its content. A frame the checks
        below did not foresee is reported as a notice and ignored, rather
        than ending the chat (and with it, the fate of the messages in flight).
        """
        kind = frame.get("type")
        try:
            if kind == "deliver":
                self._on_deliver(frame)
            elif kind == "accepted":
                self._on_accepted(frame)
            elif kind == "error":
                self._on_error(frame)
            elif kind == "expired":
                self._on_expired(frame)
            elif kind == "presence":
                self._on_presence(frame)
        except Exception as err:  # noqa: BLE001 - see the docstring
            self._notice(f"ignored a {str(kind)[:20]!r} frame from the relay that could not be "
                         f"handled ({type(err).__name__})", "bad_frame", "warn")

    def next_deadline(self) -> float | None:
        times = [o.deadline + (STATIC_GRACE if o.state is OutState.ACCEPTED else 0.0)
                 for o in self.outbox.values()]
        if self._hs is not None:
            times.append(self._hs_started + self.handshake_timeout)
        if self._req_at is not None:
            times.append(self._req_at + self.handshake_timeout)
        if self._pacer is not None and self.connected:
            held = next((f for f in self._frames if f["type"] == "send"), None)
            if held is not None:
                times.append(self._pacer.ready_at(len(held["body"]), self._clock()))
        return min(times) if times else None

    def tick(self) -> None:
        """Time passed: expire unconfirmed messages and stalled handshakes."""
        now = self._clock()
        for out in list(self.outbox.values()):
            if now >= out.deadline:
                if self.mode is Mode.STATIC and out.state is OutState.ACCEPTED:
                    # The relay reports an unread expiry (as "expired") when
                    # the TTL ends; after a grace period the fate is settled.
                    if now >= out.deadline + STATIC_GRACE:
                        del self.outbox[out.n]
                        if out.blind:
                            self._notice(
                                f"message #{out.n}: its TTL ended while the connection to "
                                f"the relay was down, so msgr cannot tell whether "
                                f"{self.peer} read it", "fate_unknown", "warn")
                    continue
                if out.state is not OutState.QUEUED:
                    why = f"{self.peer} did not confirm it"
                elif not self.connected:
                    why = "the relay could not be reached to send it"
                elif self.mode is Mode.RATCHET:
                    why = f"no secure session with {self.peer} came up to send it"
                else:
                    why = "it could not be sent"
                self._fail(out, f"{why} within its {out.ttl} s TTL")
        req_due = self._req_at is not None and now - self._req_at >= self.handshake_timeout
        if req_due or (self._hs is not None and now - self._hs_started >= self.handshake_timeout):
            self._hs = None
            self._req_at = None
            self._hs_timeouts += 1
            self._notice(f"the handshake with {self.peer} timed out", "handshake_timeout",
                         "warn")
            self._maybe_initiate()

    # -- relay frames -------------------------------------------------------------

    def _on_deliver(self, frame: dict[str, Any]) -> None:
        relay_id = frame.get("id")
        body = frame.get("body")
        if type(relay_id) is not int or not isinstance(body, str):
            return
        self._acks.append(relay_id)
        if relay_id in self._seen_relay_ids:
            return  # handed out again after a reconnect; already handled
        _remember(self._seen_relay_ids, relay_id)
        if frame.get("from") != self.peer:
            self._notice(f"ignored a message from {str(frame.get('from'))[:32]!r}, who is "
                         "not the peer of this chat", "stranger", "warn")
            return
        expires_at = _unix_time(frame.get("expires_at"), self._wall() + self.ttl)
        try:
            if self.mode is Mode.STATIC:
                self._open_static(body, expires_at)
            elif frame.get("kind") == "hs":
                self._on_handshake(body)
            else:
                self._open_ratchet(body, expires_at)
        except CryptoError as err:
            self._notice(_explain(err, self.peer), err.code, "warn")

    def _take_ref(self, frame: dict[str, Any]) -> Pending | None:
        """The send this frame answers (``ref`` is ours: an int)."""
        ref = frame.get("ref")
        entry = self._refs.get(ref) if type(ref) is int else None
        if entry is None or not entry.sent:
            return None  # not ours, or not sent yet: a hostile relay's answer
        del self._refs[ref]
        return entry

    def _on_accepted(self, frame: dict[str, Any]) -> None:
        entry = self._take_ref(frame)
        if entry is None or entry.out is None:
            return
        out = entry.out
        if out.state is OutState.SENT:
            out.state = OutState.ACCEPTED
            out.handed_live = self.peer_online is True
            out.relay_id = frame.get("id")  # type: ignore[assignment]
            self._events.append(Accepted(out.n, _unix_time(frame.get("expires_at"), 0.0)))

    def _on_error(self, frame: dict[str, Any]) -> None:
        code = str(frame.get("code", "error"))
        message = str(frame.get("message", "the relay refused a request"))[:300]
        entry = self._take_ref(frame)
        if (entry is not None and code == "rate_limited" and entry.retries < RATE_RETRIES
                and (entry.out is None or entry.out.n in self.outbox)):
            # Not stored by the relay: the same frame goes again, in its
            # place among those waiting, once the budget allows (the peer
            # never saw it, so it is no replay).
            entry.retries += 1
            entry.sent = False
            ref = entry.frame["ref"]
            self._refs[ref] = entry
            queue = self._frames
            at = next((i for i, f in enumerate(queue) if f.get("ref", ref) > ref), len(queue))
            queue.insert(at, entry.frame)
            if self._pacer is not None:
                self._pacer.empty(self._clock())
            return
        if entry is not None and entry.out is not None and entry.out.n in self.outbox:
            self._fail(entry.out, f"the relay refused it: {message}")
        elif entry is not None and entry.purpose == "hs":
            self._hs = None
            self._notice(f"handshake message refused by the relay: {message}", code, "warn")
        else:
            self._notice(f"relay: {message}", code, "warn")

    def _on_expired(self, frame: dict[str, Any]) -> None:
        relay_id = frame.get("id")
        for out in self.outbox.values():
            if out.relay_id == relay_id and out.relay_id is not None:
                self._fail(out, f"it expired at the relay before {self.peer} read it")
                return

    def _on_presence(self, frame: dict[str, Any]) -> None:
        if frame.get("user") != self.peer:
            return
        online = frame.get("online") is True
        if online != self.peer_online:
            self.peer_online = online
            self._events.append(Presence(online))
            if online:
                self._hs_timeouts = 0
                # After a reconnect of either side: our last hi may have been
                # lost with a connection, a relay restart, or expired unread.
                self._say_hi()
        self._maybe_initiate()

    # -- static mode -----------------------------------------------------------

    def _open_static(self, body: str, expires_at: float) -> None:
        assert self._box is not None
        opened = self._box.open(body)
        self._events.append(Received(self.peer, opened.text, opened.ts, expires_at,
                                     opened.ttl))

    # -- default mode: handshake ----------------------------------------------

    def _maybe_initiate(self) -> None:
        if (self.mode is not Mode.RATCHET or not self.connected or not self.peer_online
                or self.session is not None or self._hs is not None or self.locked
                or self._hs_failures or self._hs_timeouts >= MAX_HANDSHAKE_TIMEOUTS):
            return
        if self.initiator:
            self._initiate()
        elif self._req_at is None:
            self._req_at = self._clock()
            self._send_hs({"hs": "req", "v": 1})

    def _initiate(self) -> None:
        initiator = handshake.Initiator(prs=self._key, me=self.me, peer=self.peer, rng=self._rng)
        self._start_hs(initiator)
        self._send_hs(initiator.start())

    def _start_hs(self, hs: handshake.Initiator | handshake.Responder) -> None:
        self._hs = hs
        self._hs_started = self._clock()

    def _send_hs(self, msg: dict[str, Any]) -> None:
        body = "h1." + base64.b64encode(
            json.dumps(msg, separators=(",", ":")).encode()).decode()
        self._queue_send(Pending("hs", {"kind": "hs", "ttl": self.ttl, "body": body}))

    def _on_handshake(self, body: str) -> None:
        msg = _parse_hs(body)
        kind = msg.get("hs") if msg.get("hs") in ("abort", "req") else handshake.kind_of(msg)
        hs = self._hs
        if kind in ("resp", "share", "confirm") and hs is not None and not hs.belongs(msg):
            # From another attempt: a late answer to an earlier one (ours, or
            # a previous run's), or a replay. Dropping it keeps this attempt
            # alive; failing it would let anyone stall the handshake.
            return
        try:
            if kind == "req":
                # The peer has no session (it started or restarted): start one.
                # Ours is of no use for sending any more (it stays readable as
                # the previous one); new messages wait for the new session
                # instead of going out under the old. Not when locked.
                if self.initiator and hs is None and not self.locked:
                    if self.session is not None:
                        self._previous, self.session = self.session, None
                    self._initiate()
            elif kind == "init":
                if self.locked:
                    return
                if self.initiator:
                    self._notice(f"ignored a handshake start from {self.peer}: the name that "
                                 "sorts first starts handshakes, and that is you",
                                 "bad_handshake", "warn")
                    return
                self._req_at = None
                responder = handshake.Responder(prs=self._key, me=self.me, peer=self.peer,
                                                rng=self._rng)
                self._start_hs(responder)
                self._send_hs(responder.on_init(msg))
            elif kind == "resp" and isinstance(hs, handshake.Initiator):
                self._send_hs(hs.on_resp(msg))
            elif kind == "share" and isinstance(hs, handshake.Responder):
                reply, keys = hs.on_share(msg)
                self._send_hs(reply)
                self._establish(keys)
            elif kind == "confirm" and isinstance(hs, handshake.Initiator):
                self._establish(hs.on_confirm(msg))
            elif kind == "abort" and hs is not None:
                self._hs = None
                self._handshake_failed("the peer could not confirm the handshake: passcode "
                                       "mismatch, or someone is interfering")
            # Anything else belongs to an attempt that is over: ignore it.
        except handshake.PasscodeMismatch as err:
            self._hs = None
            if kind == "share":
                self._send_hs({"hs": "abort", "v": 1})
            self._handshake_failed(str(err))
        except (CryptoError, handshake.HandshakeStateError) as err:
            # Malformed or stale (an echo of an earlier attempt): not a guess.
            self._notice(f"ignored a bad handshake message: {err}", "bad_handshake", "warn")

    def _handshake_failed(self, reason: str) -> None:
        self._hs_failures += 1
        left = self.max_failures - self._hs_failures
        if left <= 0:
            self.locked = True
            self._notice(f"{reason}. {self._hs_failures} failed handshakes in a row: this "
                         "client no longer accepts new ones (each is a passcode guess); "
                         "check the passcode with your peer and restart", "passcode_mismatch",
                         "error")
        else:
            self._notice(f"{reason}. Not retrying by itself: check the passcode with your "
                         f"peer, then one of you restarts ({left} more failure(s) and this "
                         "client stops accepting handshakes)", "passcode_mismatch", "error")

    def _establish(self, keys: handshake.SessionKeys) -> None:
        self._hs = None
        self._req_at = None
        self._hs_failures = 0
        self._hs_timeouts = 0
        if keys.role == "initiator":
            assert keys.peer_ratchet_pub is not None
            rat = ratchet.Ratchet.initiator(keys.root_key, keys.peer_ratchet_pub, keys.ad,
                                            rng=self._rng)
        else:
            assert keys.own_ratchet_priv is not None
            rat = ratchet.Ratchet.responder(keys.root_key, keys.own_ratchet_priv, keys.ad,
                                            rng=self._rng)
        replaced = self.session is not None or self._previous is not None
        if self.session is not None:
            self._previous = self.session
        self.session = Session(keys, rat, keys.sid.hex())
        self.verified = False
        self._events.append(SessionStarted(keys.safety_number, keys.sid.hex(), replaced))
        self._say_hi()
        # Everything not yet confirmed goes out again under the new session.
        for out in self.outbox.values():
            out.state = OutState.QUEUED
        self._pump()

    def _say_hi(self) -> None:
        """Initiator: send ``hi`` through the ratchet, which lets the responder
        send (a ratchet responder cannot send first). Again each time the peer
        is seen coming online, until it is heard from: a lost
        ``hi`` (relay restart, refused, expired while the peer was away) would
        leave the responder unable to send for the rest of the session."""
        session = self.session
        if (session is not None and not session.heard and self.connected
                and session.keys.role == "initiator" and session.ratchet.can_send):
            self._seal_and_submit({"k": "hi"}, None)

    # -- default mode: messages -----------------------------------------------

    def _open_ratchet(self, body: str, expires_at: float) -> None:
        sid, data = _parse_ratchet_body(body)
        session = None
        for candidate in (self.session, self._previous):
            if candidate is not None and candidate.sid == sid:
                session = candidate
                break
        if session is None:
            self._notice(f"a message from {self.peer} belongs to an earlier session and "
                         "cannot be read; it is sent again once the new session is up",
                         "old_session")
            self._maybe_initiate()
            return
        could_send = session.ratchet.can_send
        plaintext = session.ratchet.decrypt(data)
        session.heard = True
        inner = _parse_inner(plaintext)
        kind = inner["k"]
        if kind == "msg":
            if inner["from"] != self.peer or inner["to"] != self.me:
                # The ratchet's associated data already binds both names; this
                # is the explicit check the sealed fields allow.
                raise BadBody("a message names the wrong sender or recipient; rejected")
            self._receipt(session, inner)
            key = (inner["e"], inner["n"])
            if key not in self._seen_msgs:
                _remember(self._seen_msgs, key)
                self._events.append(Received(self.peer, inner["text"], inner["ts"],
                                             expires_at, inner["ttl"]))
        elif kind == "rcpt":
            if inner["e"] == self.epoch:
                for n in inner["n"]:
                    out = self.outbox.pop(n, None)
                    if out is not None:
                        out.state = OutState.DELIVERED
                        self._events.append(Delivered(n))
        if not could_send and session.ratchet.can_send:
            self._pump()  # the responder may send from now on

    def _receipt(self, session: Session, inner: dict[str, Any]) -> None:
        # Under the session the message came in, even if a req has retired
        # it since: the peer may still have it (a req can be stale or forged).
        if session.ratchet.can_send:
            self._seal_and_submit({"k": "rcpt", "e": inner["e"], "n": [inner["n"]]}, None,
                                  session=session)

    def _pump(self) -> None:
        """Send every queued message that can go out now."""
        if not self.connected:
            return
        for out in list(self.outbox.values()):  # _submit may fail one
            if out.state is not OutState.QUEUED:
                continue
            if self.mode is Mode.STATIC:
                assert self._box is not None
                out.body = self._box.seal(out.text, out.ttl)
                self._submit(out)
                continue
            session = self.session
            if session is None or not session.ratchet.can_send:
                return
            inner = {"k": "msg", "from": self.me, "to": self.peer, "e": self.epoch, "n": out.n,
                     "ts": out.ts, "ttl": out.ttl, "text": out.text}
            self._seal_and_submit(inner, out)

    def _seal_and_submit(self, inner: dict[str, Any], out: Outgoing | None, *,
                         session: Session | None = None) -> None:
        session = session or self.session
        assert session is not None
        plaintext = json.dumps(inner, ensure_ascii=False, separators=(",", ":")).encode()
        body = ("r1." + session.sid + "."
                + base64.b64encode(session.ratchet.encrypt(plaintext)).decode())
        if out is None:
            receipt = inner["k"] == "rcpt"
            self._queue_send(Pending("rcpt" if receipt else "ctl",
                                     {"ttl": self.ttl, "body": body},
                                     inner=inner if receipt else None))
        else:
            out.body = body
            self._submit(out)

    def _submit(self, out: Outgoing) -> None:
        if out.body is not None and len(out.body) > self._max_frame - FRAME_OVERHEAD:
            # Queued before we knew this relay's frame limit, which is lower.
            self._fail(out, f"it is too large for this relay (frames of at most "
                       f"{self._max_frame:,} bytes)")
            return
        out.state = OutState.SENT
        # take_frames sets the TTL left when it goes out.
        out.ref = self._queue_send(Pending("msg", {"ttl": out.ttl, "body": out.body}, out))

    def _queue_send(self, entry: Pending) -> int:
        """Queue ``entry``'s send frame (given its fields), numbered by a fresh ref."""
        self._next_ref += 1
        ref = self._next_ref
        entry.frame = {"type": "send", "ref": ref, "to": self.peer, **entry.frame}
        self._refs[ref] = entry
        if len(self._refs) > DEDUP_MEMORY:  # answers that never came: forget the oldest
            oldest = next((r for r, e in self._refs.items() if e.sent), None)
            if oldest is not None:
                del self._refs[oldest]
        self._frames.append(entry.frame)
        return ref

    def _fail(self, out: Outgoing, reason: str) -> None:
        out.state = OutState.FAILED
        self.outbox.pop(out.n, None)
        self._failed.append(out.n)
        self._events.append(Undelivered(out.n, reason))

    def _notice(self, text: str, code: str = "info", level: str = "info") -> None:
        self._events.append(Notice(text, code, level))


#: What a rejected message means, in words a user can act on.
_REJECTIONS = {
    "replay": "rejected a replayed message (a copy of one already received): the relay or "
              "the network is repeating old messages",
    "reflected": "rejected a reflected message (one of your own, sent back to you as if "
                 "{peer} wrote it): the relay or the network is tampering",
    "forged": "rejected a message that does not authenticate: forged or tampered with on the "
              "way (or from an old session)",
    "bad_message": "rejected a malformed message: forged or corrupted on the way",
    "too_many_skipped": "rejected a message that claims too many earlier ones were lost: "
                        "forged, or far too much was dropped",
}


def _explain(err: CryptoError, peer: str) -> str:
    text = _REJECTIONS.get(err.code)
    if text is None or isinstance(err, (BadBody, e2e.SealError)):
        return str(err)
    return text.format(peer=peer) + f" ({err})"


def _unix_time(value: object, default: float) -> float:
    """A time the relay sent, as a float; ``default`` if it is not a number
    (or an integer too large for a float)."""
    if type(value) is float:
        return value  # type: ignore[return-value]
    if type(value) is int and -1e15 < value < 1e15:  # type: ignore[operator]
        return float(value)  # type: ignore[arg-type]
    return default


def _remember(memory: OrderedDict[Any, None], key: Any) -> None:
    memory[key] = None
    if len(memory) > DEDUP_MEMORY:
        memory.popitem(last=False)


class BadBody(CryptoError):
    code = "bad_message"


def _parse_hs(body: str) -> dict[str, Any]:
    if not body.startswith("h1."):
        raise BadBody("a handshake message has an unknown format")
    try:
        # Strict, depth-limited JSON (framing.decode_body): anyone who can
        # send to us writes this, before any key is known.
        return framing.decode_body(base64.b64decode(body[3:], validate=True))
    except (binascii.Error, ValueError, framing.FramingError):
        raise BadBody("a handshake message is not valid") from None


def _parse_ratchet_body(body: str) -> tuple[str, bytes]:
    if body.startswith("s1."):
        raise BadBody("the peer is in --static mode; both sides must use the same mode")
    parts = body.split(".")
    if len(parts) != 3 or parts[0] != "r1" or len(parts[1]) != 32:
        raise BadBody("a message has an unknown format")
    try:
        return parts[1], base64.b64decode(parts[2], validate=True)
    except (binascii.Error, ValueError):
        raise BadBody("a message is not valid base64") from None


def _parse_inner(plaintext: bytes) -> dict[str, Any]:
    try:
        inner = framing.decode_body(plaintext)
    except framing.FramingError:
        raise BadBody("a message decrypted but is not a valid JSON object") from None
    kind = inner.get("k")
    ok = False
    if kind == "msg":
        ok = (isinstance(inner.get("from"), str) and isinstance(inner.get("to"), str)
              and isinstance(inner.get("e"), str) and type(inner.get("n")) is int
              and type(inner.get("ts")) in (int, float) and type(inner.get("ttl")) is int
              and isinstance(inner.get("text"), str))
    elif kind == "rcpt":
        ns = inner.get("n")
        ok = (isinstance(inner.get("e"), str) and isinstance(ns, list) and len(ns) <= 1024
              and all(type(n) is int for n in ns))
    elif kind == "hi":
        ok = True
    if not ok:
        raise BadBody("a message decrypted but its fields are wrong")
    return inner
