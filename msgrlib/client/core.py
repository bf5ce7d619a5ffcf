"""A chat between two people, sans-I/O: relay frames in, frames and events out.

:class:`ChatCore` holds everything a chat client decides, and delegates what
differs between the two modes to one of two objects behind one interface:
:class:`~msgrlib.client.ratchet_mode.RatchetMode` (default: the CPace
handshake and the double ratchet, with the session's states and transitions
as a table) or :class:`~msgrlib.client.static_mode.StaticMode` (``--static``:
the passcode box). What both share lives here: the outbox of messages not yet
confirmed (``outbox.py``), the paced queue of sends, receipts, the receive
window that shows each message once, in order and before its deadline
(``window.py``), and what to tell the user (``events.py``). The asyncio
layer feeds it relay frames and the passage of time, and sends what
:meth:`ChatCore.take_frames` returns; a UI shows what
:meth:`ChatCore.take_events` returns. Nothing here reads a clock, draws
randomness or touches a socket on its own.

Each message stays in the outbox until its fate is known: default mode,
until the peer's client returns a receipt through the ratchet (when a new
session replaces the old one, unconfirmed messages are sent again under it);
static mode, until the relay holds it. A message carries its deadline (the
time it was typed plus its TTL) inside its authenticated body; the receiver
refuses it past that, and the sender reports an unconfirmed one as not
delivered shortly after it (``window.VERDICT_DELAY``), so the two never
disagree while the clocks agree within ``window.CLOCK_TOLERANCE``.
"""

from __future__ import annotations

import base64
import enum
import json
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import framing
from msgrlib.client import window as window_mod
from msgrlib.client.events import (  # noqa: F401 - re-exported: the UI imports them from here
    Accepted,
    Delivered,
    Event,
    HandshakeRetry,
    Notice,
    Presence,
    Received,
    SessionStarted,
    TransferEvent,
    Undelivered,
)
from msgrlib.client.outbox import (  # noqa: F401 - re-exported
    RATE_MARGIN,
    Outgoing,
    OutState,
    Pacer,
    Pending,
    SendQueue,
    number,
)
from msgrlib.client.ratchet_mode import (  # noqa: F401 - re-exported
    HANDSHAKE_TIMEOUT,
    MAX_HANDSHAKE_FAILURES,
    MAX_HANDSHAKE_TIMEOUTS,
    BadBody,
    Phase,
    RatchetMode,
    Session,
)
from msgrlib.client.ratchet_mode import parse_hs as _parse_hs  # noqa: F401 - tests use it
from msgrlib.client.static_mode import STATIC_GRACE, StaticMode
from msgrlib.client.window import ReceiveWindow, Verdict
from msgrlib.crypto import staticbox as e2e
from msgrlib.errors import CryptoError, MsgrError
from msgrlib.limits import TTL_MAX
from msgrlib.transfer.errors import TransferError

#: Relay ids remembered to drop a delivery handed out again after a
#: reconnect before opening it (an optimisation: the receive window is what
#: guarantees a message is shown once).
DEDUP_MEMORY = 4096
#: Times a send refused as too fast (``rate_limited``) is tried again.
RATE_RETRIES = 3
#: Most ids in one ``ack`` frame (the relay's limit, PROTOCOL.md).
MAX_ACK_IDS = 1024
#: Bytes kept free in a frame for everything around a message's text
#: (see ChatCore.max_text_bytes).
FRAME_OVERHEAD = 512
#: Seconds between transfer ticks while one runs (their nudges and stalls
#: are measured in seconds).
TRANSFER_TICK = 1.0


class Mode(enum.Enum):
    RATCHET = "ratchet"
    STATIC = "static"


class ChatCore:
    """Decide everything a chat client does; see the module docstring."""

    def __init__(self, *, me: str, peer: str, key: bytes, mode: Mode = Mode.RATCHET,
                 ttl: int = 30, clock: Callable[[], float], wallclock: Callable[[], float],
                 rng: Callable[[int], bytes],
                 max_failures: int = MAX_HANDSHAKE_FAILURES,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 invite: bool = False, transfers: Any = None) -> None:
        if mode is Mode.STATIC and (invite or transfers is not None):
            raise MsgrError("invites and transfers need the default mode, not --static")
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
        self._frames: list[dict[str, Any]] = []   # frames that never wait (watch...)
        self._events: list[Event] = []
        self._acks: list[int] = []
        self._sends = SendQueue()
        self._pacer: Pacer | None = None
        self._relay: str | None = None  # the relay instance of the last welcome
        self._max_frame = framing.DEFAULT_MAX_FRAME  # the relay's, once welcomed
        self._ttl_min = 0.0  # the relay's shortest TTL, once welcomed
        self._next_n = 0
        # Messages whose fate is open. Settled ones leave it at once, so their
        # text does not linger in memory for the rest of the session.
        self.outbox: dict[int, Outgoing] = {}
        self._failed: list[int] = []
        #: relay id -> whether it is acknowledged when handed out again.
        self._seen_relay_ids: OrderedDict[int, bool] = OrderedDict()
        self._refused_late = False  # the delivery being opened came past its deadline
        self._window = ReceiveWindow()
        self.epoch = base64.b64encode(rng(8)).decode()
        self.connected = False
        self.peer_online: bool | None = None
        self.verified = False
        #: Invite mode (PROTOCOL.md 3.6): one handshake attempt, the key from the code.
        self.invite = invite
        #: Files and secrets (msgrlib.transfer.Transfers), or None: offers are ignored.
        self.transfers = transfers
        self._max_failures = 1 if invite else max_failures
        self._handshake_timeout = handshake_timeout
        self._mode: RatchetMode | StaticMode = (
            StaticMode(self) if mode is Mode.STATIC else
            RatchetMode(self, max_failures=self._max_failures,
                        handshake_timeout=handshake_timeout, single_use=invite))

    def pair_with(self, peer: str, key: bytes) -> None:
        """Invite mode: the relay named the other side (``joined``) and the code
        gave the key. Only before the first connection's chat starts."""
        if not self.invite or self.connected or self.session is not None:
            raise MsgrError("pair_with is for an invite, before the chat starts")
        if peer == self.me:
            raise MsgrError("the relay paired this invite with our own name")
        self.peer = peer
        self._key = key
        self._mode = RatchetMode(self, max_failures=self._max_failures,
                                 handshake_timeout=self._handshake_timeout, single_use=True)

    # -- what the mode knows ----------------------------------------------------

    @property
    def peer_name(self) -> str:
        """The peer as sentences name them: an invite's peer has only the relay's
        random routing name, which nobody chose or saw, so it is "the other side"."""
        return "the other side" if self.invite else self.peer

    @property
    def session(self) -> Session | None:
        return self._mode.session

    @property
    def locked(self) -> bool:
        return self._mode.locked

    @property
    def initiator(self) -> bool:
        return self._mode.initiator

    @property
    def phase(self) -> Phase | None:
        """Default mode: the session's state (ratchet_mode.Phase)."""
        return self._mode.phase if isinstance(self._mode, RatchetMode) else None

    @property
    def session_status(self) -> str:
        """One line saying what the session is doing (for ``/status``)."""
        return self._mode.status()

    @property
    def handshake_retry_at(self) -> float | None:
        """Unix time of the next handshake try after the relay refused one, or None."""
        return self._mode.retry_wall_time()

    @property
    def _box(self) -> e2e.StaticBox | None:
        return self._mode.box if isinstance(self._mode, StaticMode) else None

    @property
    def safety_number(self) -> str | None:
        session = self.session
        return session.keys.safety_number if session else None

    def _seal_and_submit(self, inner: dict[str, Any], out: Outgoing | None) -> None:
        if isinstance(self._mode, RatchetMode):
            self._mode.seal_and_submit(inner, out)

    # -- outputs --------------------------------------------------------------

    def take_frames(self) -> list[dict[str, Any]]:
        """Frames to send to the relay now. Sends beyond the relay's rates
        (see :meth:`set_limits`) wait, in order, until :meth:`next_deadline`;
        other frames (acks, watch) never wait behind them. A message's send
        carries what is left of its TTL, and is dropped if the message was
        settled meanwhile (reported undelivered: it must not arrive after)."""
        self._mode.flush()
        self._flush_transfers()
        acks, self._acks = self._acks, []
        frames = [{"type": "ack", "ids": acks[i:i + MAX_ACK_IDS]}
                  for i in range(0, len(acks), MAX_ACK_IDS)]
        frames += self._frames
        self._frames = []
        pacer = self._pacer
        now = self._clock()
        queue = self._sends
        while (entry := queue.peek()) is not None:
            frame = entry.frame
            out = entry.out
            if out is not None:
                if self.outbox.get(out.n) is not out or out.state is not OutState.SENT:
                    queue.forget(entry.ref)  # settled while it waited
                    continue
                left = math.ceil(out.deadline - now)  # the relay counts whole seconds
                if left < max(self._ttl_min, 1):
                    # The relay would keep it for its minimum TTL, past the
                    # time we report it undelivered.
                    queue.forget(entry.ref)
                    if not out.ever_sent:
                        self._fail(out, f"too little of its {out.ttl} s TTL was left to send it")
                    # else: a copy may still reach the peer; tick reports it.
                    continue
                frame["ttl"] = min(out.ttl, left)
            if pacer is not None and not pacer.take(len(frame["body"]), now):
                break  # in order: the rest wait behind the first that must
            queue.pop()
            queue.mark_sent(entry)
            if out is not None:
                out.ever_sent = True
            frames.append(frame)
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
        ttl_min = number(limits.get("ttl_min"))
        if ttl_min is not None and 0 <= ttl_min <= TTL_MAX:
            self._ttl_min = ttl_min

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

    def unsettled(self) -> list[Outgoing]:
        """Messages whose fate is not known yet (static mode: not yet held by the relay)."""
        return self._mode.unsettled(self.outbox)

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
        """Report every unsettled message as not delivered (used at exit); one
        that never left says why it did not (no session, no relay), as at its TTL."""
        for out in self.unsettled():
            if out.state is OutState.QUEUED and not out.ever_sent:
                why = (self._mode.queued_reason() if self.connected
                       else "the relay could not be reached to send it")
                self._fail(out, f"{reason}; {why}")
            else:
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
        self._mode.on_connected(restarted)
        if self.transfers is not None:
            self.transfers.resume(self._clock())
        self._pump()

    def disconnected(self) -> None:
        self.connected = False
        self.peer_online = None
        # Sends handed out on that connection get no answer on another one.
        # Messages are resent from the outbox (so their sends still waiting
        # here are dropped, not sent twice); receipts are sealed anew.
        lost: list[dict[str, Any]] = []
        queue = self._sends
        for ref, entry in list(queue.refs.items()):
            if entry.sent or entry.purpose == "msg":
                queue.forget(ref)
                if entry.sent and entry.purpose == "rcpt" and entry.inner is not None:
                    lost.append(entry.inner)
        self._mode.on_disconnected(None)
        for inner in lost:
            self._mode.on_disconnected(inner)

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
        """When to call :meth:`tick` and :meth:`take_frames` next (monotonic);
        now if frames are ready."""
        self._mode.flush()  # owed receipts become sends the pacer can time
        if self._acks or self._frames:
            return self._clock()
        times = [self._verdict_time(o) for o in self.outbox.values()]
        times += self._mode.deadlines()
        if self.transfers is not None and self.transfers.active:
            times.append(self._clock() + TRANSFER_TICK)
        if self._pacer is not None and self.connected:
            held = self._sends.peek()
            if held is not None:
                times.append(self._pacer.ready_at(len(held.frame["body"]), self._clock()))
        return min(times) if times else None

    def _verdict_time(self, out: Outgoing) -> float:
        if self.mode is Mode.STATIC:
            if out.state is OutState.ACCEPTED:
                return out.deadline + (window_mod.VERDICT_DELAY if out.expired_at_relay
                                       else STATIC_GRACE)
            return out.deadline
        # A copy handed to the relay may reach the peer until the deadline
        # (its clock): the verdict waits for the clocks' tolerance.
        return out.deadline + (window_mod.VERDICT_DELAY if out.ever_sent else 0.0)

    def tick(self) -> None:
        """Time passed: expire unconfirmed messages and stalled handshakes."""
        now = self._clock()
        if self.transfers is not None:
            self.transfers.tick(now)
            self._flush_transfers()
        for out in list(self.outbox.values()):
            if now < out.deadline:
                continue
            if isinstance(self._mode, StaticMode) and out.state is OutState.ACCEPTED:
                self._mode.settle_accepted(out, now)
                continue
            if now < self._verdict_time(out):
                continue
            if out.state is not OutState.QUEUED or out.ever_sent:
                why = self._mode.unconfirmed_reason(out)
            elif not self.connected:
                why = "the relay could not be reached to send it"
            else:
                why = self._mode.queued_reason()
            self._fail(out, f"{why} within its {out.ttl} s TTL")
        self._mode.tick(now)

    # -- transfers (msgrlib.transfer) ------------------------------------------------

    def send_transfer(self, offer: Any, source: Any) -> None:
        """Start offering a file or secret (``files.prepare_*``) to the peer."""
        if self.transfers is None:
            raise MsgrError("this chat takes no transfers")
        self.transfers.send(offer, source, self._clock())
        self._flush_transfers()

    def cancel_transfers(self, reason: str) -> None:
        """Stop every running transfer, telling the peer (the program is ending)."""
        if self.transfers is not None:
            self.transfers.cancel_all(reason, self._clock())
            self._flush_transfers()

    def quiet(self) -> bool:
        """Nothing waits to go to the relay, and the relay answered every send."""
        return not (self._acks or self._frames or self._sends.refs)

    def transfer_answered(self, transfer_id: str) -> None:
        """Call after accept/decline/cancel on a transfer's machine."""
        if self.transfers is not None:
            self.transfers.after_local(transfer_id, self._clock())
            self._flush_transfers()

    def _on_transfer(self, inner: dict[str, Any]) -> None:
        """An opened ``xfer.*`` plaintext: never a chat message, never receipted."""
        if self.transfers is None:
            self._notice(f"ignored a file or secret from {self.peer_name}: this chat does not take "
                         "them (use msgr receive)", "transfer_ignored", "warn")
            return
        try:
            self.transfers.handle(inner, self._clock())
        except TransferError as err:
            self._notice(f"ignored a malformed transfer message: {err}", "bad_transfer", "warn")
        self._flush_transfers()

    def _flush_transfers(self) -> None:
        """Seal what the transfers want sent (once the session can send), and pass
        their events on. Sealed as control messages: paced under the relay's
        rates with everything else, outside the outbox, never receipted; the
        transfers' own windows and acks bound and repair them."""
        transfers = self.transfers
        if transfers is None:
            return
        if self.connected and self._mode.can_seal():
            for obj in transfers.take_outgoing():
                self._seal_and_submit(obj, None)
        for tid, event in transfers.take_events():
            self._events.append(TransferEvent(tid, event))

    # -- shared by both modes -----------------------------------------------------

    def _admit(self, run: str, n: int, ts: float, ttl: int) -> Verdict:
        """Whether message ``n`` of the peer's ``run`` is shown (see window.py);
        says so to the user when it is not, or shown out of order."""
        now = self._wall()
        deadline = ts + ttl
        verdict = self._window.check(run, n, ts, deadline, now)
        if verdict in (Verdict.NEW, Verdict.LATE):
            self._window.record(run, n, ts)
        if verdict is Verdict.LATE:
            self._notice(f"the next message from {self.peer_name} arrived late: it was written "
                         "before one already shown", "late", "info")
        elif verdict is Verdict.UNKNOWN:
            self._notice(f"dropped a message from {self.peer_name} that may have been shown "
                         "already (too many arrived out of order to tell)", "maybe_repeat",
                         "warn")
        elif verdict is Verdict.EXPIRED:
            self._refused_late = True
            self._notice(f"refused a message from {self.peer_name} that arrived after its "
                         f"deadline ({max(0, round(now - deadline))} s ago): {self.peer_name} is "
                         "told it was not delivered (if this repeats, check both clocks)",
                         "past_deadline", "warn")
        elif verdict is Verdict.FUTURE:
            self._notice(f"refused a message from {self.peer_name} dated in the future or with an "
                         "impossible TTL (check both clocks)", "bad_deadline", "warn")
        return verdict

    def _confirmed(self, numbers: list[int]) -> None:
        for n in numbers:
            out = self.outbox.pop(n, None)
            if out is not None:
                out.state = OutState.DELIVERED
                self._events.append(Delivered(n))

    def _pump(self) -> None:
        """Send every queued message that can go out now."""
        if not self.connected:
            return
        mode = self._mode
        for out in list(self.outbox.values()):  # _submit may fail one
            if out.state is not OutState.QUEUED:
                continue
            if not mode.can_seal():
                return
            mode.seal(out)

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
        return self._sends.add(entry, self.peer)

    def _fail(self, out: Outgoing, reason: str) -> None:
        out.state = OutState.FAILED
        self.outbox.pop(out.n, None)
        self._failed.append(out.n)
        self._events.append(Undelivered(out.n, reason))

    def _notice(self, text: str, code: str = "info", level: str = "info") -> None:
        self._events.append(Notice(text, code, level))

    # -- relay frames -------------------------------------------------------------

    def _on_deliver(self, frame: dict[str, Any]) -> None:
        relay_id = frame.get("id")
        body = frame.get("body")
        if type(relay_id) is not int or not isinstance(body, str):
            return
        seen = self._seen_relay_ids.get(relay_id)
        if seen is not None:
            # Handed out again after a reconnect; already handled.
            if seen:
                self._acks.append(relay_id)
            return
        self._seen_relay_ids[relay_id] = True
        if len(self._seen_relay_ids) > DEDUP_MEMORY:
            self._seen_relay_ids.popitem(last=False)
        if frame.get("from") != self.peer:
            self._acks.append(relay_id)
            self._notice(f"ignored a message from {str(frame.get('from'))[:32]!r}, who is "
                         "not the peer of this chat", "stranger", "warn")
            return
        expires_at = _unix_time(frame.get("expires_at"), self._wall() + self.ttl)
        self._refused_late = False
        try:
            self._mode.open(frame, body, expires_at)
        except CryptoError as err:
            self._notice(_explain(err, self.peer_name), err.code, "warn")
        if self._refused_late:
            # Refused past its deadline: left unacknowledged, so the relay
            # reports it to its sender as expired when its TTL ends (which is
            # never before the deadline: a send carries what is left of it,
            # rounded up). Static mode has no other report; acknowledged, it
            # would count as read and be lost silently.
            self._seen_relay_ids[relay_id] = False
        else:
            self._acks.append(relay_id)

    def _on_accepted(self, frame: dict[str, Any]) -> None:
        entry = self._sends.take_answered(frame.get("ref"))
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
        entry = self._sends.take_answered(frame.get("ref"))
        if (entry is not None and code == "rate_limited" and entry.retries < RATE_RETRIES
                and (entry.out is None or entry.out.n in self.outbox)):
            # Not stored by the relay: the same frame goes again, in its
            # place among those waiting, once the budget allows (the peer
            # never saw it, so it is no replay).
            entry.retries += 1
            self._sends.requeue(entry)
            if self._pacer is not None:
                self._pacer.empty(self._clock())
            return
        if entry is not None and entry.out is not None and entry.out.n in self.outbox:
            self._fail(entry.out, f"the relay refused it: {message}")
        elif entry is not None and self._mode.on_send_refused(
                entry, code, message, number(frame.get("retry_after"))):
            pass
        else:
            self._notice(f"relay: {message}", code, "warn")

    def _on_expired(self, frame: dict[str, Any]) -> None:
        relay_id = frame.get("id")
        if relay_id is None:
            return
        for out in self.outbox.values():
            if out.relay_id == relay_id:
                self._mode.on_expired(out)
                return
        if type(relay_id) is int:
            self._mode.on_late_expired(relay_id)

    def _on_presence(self, frame: dict[str, Any]) -> None:
        if frame.get("user") != self.peer:
            return
        online = frame.get("online") is True
        changed = online != self.peer_online
        if changed:
            self.peer_online = online
            self._events.append(Presence(online))
        self._mode.on_presence(online, changed)


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
