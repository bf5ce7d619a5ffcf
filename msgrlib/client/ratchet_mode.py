"""Default mode: the CPace handshake, then the double ratchet.

The handshake's life in the chat is an explicit state machine: :class:`Phase`
and the :data:`TRANSITIONS` table below are the only place that says what may
follow what (the CPace messages themselves are ``crypto/handshake.py``'s own
table). Counters (failed confirmations, timeouts in a row) and timers are
data the transitions read; nothing else decides when a handshake starts.

Roles are fixed: the name that sorts first is always the CPace initiator. An
initiator with no session starts a handshake when its peer is online; a
responder with no session asks for one with a ``req``. An initiator never
answers an ``init``, so a man in the middle cannot make both people
responders (see handshake.py). After the handshake the initiator sends a
``hi`` through the ratchet so the responder can send too.

What counts towards the lock after :data:`MAX_HANDSHAKE_FAILURES`: only a
failed key confirmation, i.e. a passcode guess: a wrong tag in ``share``
(responder) or ``confirm`` (initiator), or an ``abort`` that echoes both
nonces of an attempt in which we already sent our tag. ``abort`` and
``req`` are bound to the attempt they belong to; a stray or forged one is
dropped without effect.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import framing
from msgrlib.client.events import HandshakeRetry, Received, SessionStarted
from msgrlib.client.outbox import Outgoing, OutState, Pending
from msgrlib.client.window import Verdict
from msgrlib.crypto import handshake, ratchet
from msgrlib.errors import CryptoError
from msgrlib.transfer.errors import TransferError
from msgrlib.transfer.messages import decode_binary_plaintext, encode_chunk_plaintext

if TYPE_CHECKING:
    from msgrlib.client.core import ChatCore

#: Consecutive failed key confirmations after which a client stops
#: answering handshakes. Each is a passcode guess; three leaves room for a
#: typo on the other side, and the user is told each time.
MAX_HANDSHAKE_FAILURES = 3
#: Seconds a handshake may take before it is abandoned.
HANDSHAKE_TIMEOUT = 30.0
#: How many times in a row a timed-out handshake is started again by itself.
MAX_HANDSHAKE_TIMEOUTS = 3
#: Seconds to wait before trying again after the relay refused a handshake
#: message, when the refusal names no ``retry_after`` (an engine relay, an
#: older one; msgr's default per-pair limit lets about one attempt a minute
#: through), plus up to HANDSHAKE_RETRY_JITTER of the wait, drawn at random,
#: so two clients do not retry in lockstep.
HANDSHAKE_RETRY = 60.0
HANDSHAKE_RETRY_JITTER = 0.25
#: The range a relay's ``retry_after`` is held to (it says when its per-pair
#: limit allows a whole attempt again; a hostile relay can only refuse, as
#: it always could, or have us try once a second).
RELAY_RETRY_MIN = 1.0
RELAY_RETRY_MAX = 600.0
#: ``req`` nonces remembered, so a copy of one (a relay replaying it) does
#: not start another handshake.
REQ_MEMORY = 64
#: Numbers in one receipt (the receiver's limit, PROTOCOL.md).
MAX_RECEIPT_NUMBERS = 1024
#: Session ids of this run remembered after they were replaced.
SID_MEMORY = 64


def retry_delay(retry_after: float | None) -> float:
    """Seconds to wait (before jitter) after the relay refused a handshake
    message: what the refusal said, held to [RELAY_RETRY_MIN, RELAY_RETRY_MAX],
    or HANDSHAKE_RETRY if it said nothing usable."""
    if retry_after is None or retry_after != retry_after:  # None or NaN
        return HANDSHAKE_RETRY
    return min(max(retry_after, RELAY_RETRY_MIN), RELAY_RETRY_MAX)


class Phase(enum.Enum):
    IDLE = "idle"          # no session, no attempt: start one when the peer is online
    ASKED = "asked"        # responder: sent req, waiting for an init (timer)
    RUNNING = "running"    # a handshake attempt is under way (timer)
    UP = "up"              # a session is up, no attempt running
    STOPPED = "stopped"    # a confirmation failed: no new attempt by ourselves
    PAUSED = "paused"      # timed out too often: wait for the peer to come back
    BACKOFF = "backoff"    # the relay refused a handshake message: retry at a set time
    LOCKED = "locked"      # too many failed confirmations: for good


class Ev(enum.Enum):
    START = "start"            # initiator: we send init
    ASK = "ask"                # responder: we send req
    PEER_START = "peer_start"  # responder: an init arrived, we answer it
    ESTABLISHED = "established"
    FAILED = "failed"          # a key confirmation failed (a passcode guess)
    TIMEOUT = "timeout"
    GIVE_UP = "give_up"        # a timeout, and too many in a row
    REFUSED = "refused"        # the relay refused one of our handshake messages
    RETRY = "retry"            # the backoff is over
    RESUME = "resume"          # the peer came online again after we paused
    LOCK = "lock"

#: The only transitions. A pair of targets means (no session left, an older
#: session still up): an attempt that ends without a new session falls back
#: to the old one if there is one. Anything not listed is ignored.
TRANSITIONS: dict[tuple[Phase, Ev], Phase | tuple[Phase, Phase]] = {
    (Phase.IDLE, Ev.START): Phase.RUNNING,
    (Phase.IDLE, Ev.ASK): Phase.ASKED,
    (Phase.IDLE, Ev.PEER_START): Phase.RUNNING,
    (Phase.ASKED, Ev.PEER_START): Phase.RUNNING,
    (Phase.ASKED, Ev.TIMEOUT): Phase.IDLE,
    (Phase.ASKED, Ev.GIVE_UP): Phase.PAUSED,
    (Phase.ASKED, Ev.REFUSED): Phase.BACKOFF,
    (Phase.RUNNING, Ev.PEER_START): Phase.RUNNING,  # a newer init replaces the attempt
    (Phase.RUNNING, Ev.ESTABLISHED): Phase.UP,
    (Phase.RUNNING, Ev.FAILED): (Phase.STOPPED, Phase.UP),
    (Phase.RUNNING, Ev.TIMEOUT): (Phase.IDLE, Phase.UP),
    (Phase.RUNNING, Ev.GIVE_UP): (Phase.PAUSED, Phase.UP),
    (Phase.RUNNING, Ev.REFUSED): (Phase.BACKOFF, Phase.UP),
    (Phase.RUNNING, Ev.LOCK): Phase.LOCKED,
    (Phase.UP, Ev.START): Phase.RUNNING,          # a req: the peer lost its session
    (Phase.UP, Ev.PEER_START): Phase.RUNNING,
    (Phase.UP, Ev.REFUSED): (Phase.BACKOFF, Phase.UP),  # our confirm was refused
    (Phase.STOPPED, Ev.START): Phase.RUNNING,     # a req: the peer restarted
    (Phase.STOPPED, Ev.PEER_START): Phase.RUNNING,
    (Phase.PAUSED, Ev.START): Phase.RUNNING,
    (Phase.PAUSED, Ev.PEER_START): Phase.RUNNING,
    (Phase.PAUSED, Ev.RESUME): Phase.IDLE,
    (Phase.BACKOFF, Ev.PEER_START): Phase.RUNNING,
    (Phase.BACKOFF, Ev.RETRY): Phase.IDLE,
}


@dataclass
class Session:
    keys: handshake.SessionKeys
    ratchet: ratchet.Ratchet
    sid: str
    heard: bool = False  # a message from the peer opened under it


class BadBody(CryptoError):
    code = "bad_message"


class RatchetMode:
    """The default mode's half of :class:`ChatCore`: sessions and their handshakes."""

    kind_name = "ratchet"

    def __init__(self, core: ChatCore, *, max_failures: int, handshake_timeout: float,
                 single_use: bool = False) -> None:
        self.core = core
        #: Invite mode: one handshake, ever (PROTOCOL.md 3.6).
        self.single_use = single_use
        self.max_failures = max_failures
        self.handshake_timeout = handshake_timeout
        self.initiator = core.me < core.peer
        self.phase = Phase.IDLE
        self.session: Session | None = None
        self.previous: Session | None = None
        self.hs: handshake.Initiator | handshake.Responder | None = None
        self.since = 0.0                 # ASKED / RUNNING: when it began
        self.retry_at: float | None = None  # BACKOFF: monotonic time of the next try
        self.failures = 0
        self.timeouts = 0
        self.refusals = 0
        self._answered_reqs: OrderedDict[bytes, None] = OrderedDict()
        self._sids: OrderedDict[str, None] = OrderedDict()  # every session of this run
        self.redo_receipts: list[dict[str, Any]] = []
        # Receipts owed, sealed together when frames are next taken: a burst
        # of messages is confirmed in a few frames, not one each.
        self._owed: list[tuple[Session, str, int]] = []
        # Responder: our last confirm, the session it completed, and the
        # previous session before it (undone if the relay refuses the confirm).
        self._confirm: tuple[Pending, Session | None, Session | None] | None = None

    # -- the state machine ---------------------------------------------------------

    def _go(self, event: Ev) -> bool:
        target = TRANSITIONS.get((self.phase, event))
        if target is None:
            return False
        if isinstance(target, tuple):
            target = target[1] if self.session is not None else target[0]
        self.phase = target
        if target in (Phase.ASKED, Phase.RUNNING):
            self.since = self.core._clock()
        if target is not Phase.RUNNING:
            self.hs = None
        if target is not Phase.BACKOFF:
            self.retry_at = None
        return True

    @property
    def locked(self) -> bool:
        return self.phase is Phase.LOCKED

    def status(self) -> str:
        """One line for ``/status``: what the session is doing, truthfully."""
        phase = self.phase
        if phase is Phase.LOCKED:
            return "no session: too many failed handshakes; restart after checking the passcode"
        if phase is Phase.BACKOFF and self.retry_at is not None:
            left = max(0, round(self.retry_at - self.core._clock()))
            return f"no session: the relay limits handshakes; next try in {left} s"
        if phase is Phase.RUNNING:
            return ("starting a new secure session (the current one stays up meanwhile)"
                    if self.session is not None else "starting a secure session")
        if phase is Phase.ASKED:
            return f"asked {self.core.peer_name} to start a secure session"
        if self.session is not None:
            return "secure session up"
        if phase is Phase.STOPPED:
            return "no session: the last handshake failed (passcode mismatch?)"
        if phase is Phase.PAUSED:
            return f"no session: handshakes timed out; waiting for {self.core.peer_name} to return"
        return "no session"

    def retry_wall_time(self) -> float | None:
        if self.retry_at is None:
            return None
        return self.core._wall() + (self.retry_at - self.core._clock())

    def maybe_start(self) -> None:
        """Start (initiator) or ask for (responder) a handshake if one is due."""
        core = self.core
        if (self.phase is not Phase.IDLE or not core.connected or not core.peer_online
                or self.session is not None):
            return
        if self.initiator:
            self._initiate()
        else:
            self._go(Ev.ASK)
            self._send_hs(req_message(core._rng(16)))

    def _initiate(self) -> None:
        hs = handshake.Initiator(prs=self.core._key, me=self.core.me, peer=self.core.peer,
                                 rng=self.core._rng)
        if not self._go(Ev.START):
            return
        self.hs = hs
        self._send_hs(hs.start())

    def _send_hs(self, msg: dict[str, Any]) -> Pending:
        body = "h1." + base64.b64encode(
            json.dumps(msg, separators=(",", ":")).encode()).decode()
        entry = Pending("hs", {"kind": "hs", "ttl": self.core.ttl, "body": body})
        self.core._queue_send(entry)
        return entry

    # -- the core's hooks ----------------------------------------------------------

    def can_seal(self) -> bool:
        return self.session is not None and self.session.ratchet.can_send

    def seal(self, out: Outgoing) -> None:
        core = self.core
        self.seal_and_submit(msg_inner(core.me, core.peer, core.epoch, out), out)

    def seal_and_submit(self, inner: dict[str, Any], out: Outgoing | None, *,
                        session: Session | None = None) -> None:
        session = session or self.session
        if session is None:
            return
        if inner["k"] == "xfer.chunk":  # binary: the data is base64-encoded once, below
            plaintext = encode_chunk_plaintext(inner)
        else:
            plaintext = json.dumps(inner, ensure_ascii=False, separators=(",", ":")).encode()
        body = ("r1." + session.sid + "."
                + base64.b64encode(session.ratchet.encrypt(plaintext)).decode())
        core = self.core
        if out is None:
            receipt = inner["k"] == "rcpt"
            core._queue_send(Pending("rcpt" if receipt else "ctl",
                                     {"ttl": core.ttl, "body": body},
                                     inner=inner if receipt else None))
        else:
            out.body = body
            core._submit(out)

    def unsettled(self, outbox: dict[int, Outgoing]) -> list[Outgoing]:
        return list(outbox.values())

    def on_connected(self, restarted: bool) -> None:
        core = self.core
        for out in core.outbox.values():
            if out.state in (OutState.SENT, OutState.ACCEPTED):
                # The relay may have lost it (a frame in flight, or a relay
                # restart). Seal it again under a fresh ratchet key: the peer
                # shows each (epoch, n) once and simply confirms a copy.
                out.state = OutState.QUEUED
        # Receipts the relay may not have stored: the peer would otherwise
        # report as undelivered a message we showed. A copy is harmless.
        redo, self.redo_receipts = self.redo_receipts, []
        if self.can_seal():
            for inner in redo:
                self.seal_and_submit(inner, None)

    def on_disconnected(self, lost_receipt: dict[str, Any] | None) -> None:
        if lost_receipt is not None:
            self.redo_receipts.append(lost_receipt)

    def on_presence(self, online: bool, changed: bool) -> None:
        if online and changed:
            self.timeouts = 0
            self._go(Ev.RESUME)
            # After a reconnect of either side: our last hi may have been
            # lost with a connection, a relay restart, or expired unread.
            self._say_hi()
        self.maybe_start()

    def on_late_expired(self, relay_id: int) -> None:
        pass  # the verdict was given at the deadline; receipts, not the relay, decide

    def on_expired(self, out: Outgoing) -> None:
        # Not final: the relay is not trusted with the verdict (a hostile one
        # could say so and deliver it later). The message is reported at
        # its deadline unless a receipt comes; this only words the reason.
        out.expired_at_relay = True

    def on_send_refused(self, entry: Pending, code: str, message: str,
                        retry_after: float | None = None) -> bool:
        """The relay refused one of our sends; True if handled here.
        ``retry_after``: the refusal's own, if any (checked here)."""
        if entry.purpose != "hs":
            return False
        core = self.core
        undone = self._confirm is not None and entry is self._confirm[0]
        if undone and self._confirm is not None:
            # Our confirm never reached the initiator, so it has no session:
            # neither do we. What was sealed under it goes again under the next.
            _, half, before = self._confirm
            if self.session is half:
                self.session, self.previous = self.previous, before
                for out in core.outbox.values():
                    if out.state is not OutState.FAILED:
                        out.state = OutState.QUEUED
        self._confirm = None
        if not self._go(Ev.REFUSED):
            core._notice(f"handshake message refused by the relay: {message}", code, "warn")
            return True
        if self.phase is Phase.BACKOFF:
            self.refusals += 1
            jitter = int.from_bytes(core._rng(2), "big") / 65535 * HANDSHAKE_RETRY_JITTER
            delay = retry_delay(retry_after) * (1 + jitter)
            self.retry_at = core._clock() + delay
            core._events.append(HandshakeRetry(self.retry_wall_time(), message))
            core._notice(f"the relay refused to start a secure session now ({message}); "
                         f"trying again by itself in {round(delay)} s", code, "warn")
        else:
            core._notice(f"handshake message refused by the relay: {message}", code, "warn")
        return True

    def deadlines(self) -> list[float]:
        if self.phase in (Phase.RUNNING, Phase.ASKED):
            return [self.since + self.handshake_timeout]
        if self.phase is Phase.BACKOFF and self.retry_at is not None:
            return [self.retry_at]
        return []

    def queued_reason(self) -> str:
        if self.phase is Phase.BACKOFF:
            return (f"no secure session with {self.core.peer_name} came up to send it (the relay "
                    "limits handshakes between you; msgr retries by itself)")
        if self.phase is Phase.LOCKED:
            return (f"no secure session with {self.core.peer_name}: this client stopped accepting "
                    "handshakes after failed ones")
        if self.phase is Phase.STOPPED:
            return (f"no secure session with {self.core.peer_name}: the handshake failed (passcode "
                    "mismatch?)")
        return f"no secure session with {self.core.peer_name} came up to send it"

    def unconfirmed_reason(self, out: Outgoing) -> str:
        if out.expired_at_relay:
            return f"it expired at the relay before {self.core.peer_name} read it"
        return f"{self.core.peer_name} did not confirm it"

    def tick(self, now: float) -> None:
        if self.phase is Phase.BACKOFF and self.retry_at is not None and now >= self.retry_at:
            self._go(Ev.RETRY)
            self.core._events.append(HandshakeRetry(None, "trying again now"))
            self.maybe_start()
            return
        due = now - self.since >= self.handshake_timeout
        hs = self.hs
        if (due and self.single_use and self.phase is Phase.RUNNING
                and isinstance(hs, handshake.Initiator)
                and hs.state is handshake.State.AWAIT_CONFIRM):
            # Our tag went out and no confirm came: whoever got it could test one
            # guess of the code against it. That was the invite's one guess.
            self._failed(f"{self.core.peer_name} never confirmed the handshake")
            return
        if self.phase in (Phase.RUNNING, Phase.ASKED) and due:
            self.timeouts += 1
            # After the relay refused a handshake, a responder asks no more:
            # each req spends the pair's handshake budget the initiator's
            # own retry needs (the initiator, with no session, retries).
            give_up = self.timeouts >= MAX_HANDSHAKE_TIMEOUTS or (
                not self.initiator and self.refusals > 0)
            self._go(Ev.GIVE_UP if give_up else Ev.TIMEOUT)
            self.core._notice(f"the handshake with {self.core.peer_name} timed out",
                              "handshake_timeout", "warn")
            self.maybe_start()

    # -- deliveries ------------------------------------------------------------------

    def open(self, frame: dict[str, Any], body: str, expires_at: float) -> None:
        if frame.get("kind") == "hs":
            self._on_handshake(body)
        else:
            self._open_ratchet(body, expires_at)

    def _on_handshake(self, body: str) -> None:
        core = self.core
        msg = parse_hs(body)
        kind = msg.get("hs") if msg.get("hs") in ("abort", "req") else handshake.kind_of(msg)
        hs = self.hs
        if kind in ("resp", "share", "confirm") and hs is not None and not hs.belongs(msg):
            # From another attempt: a late answer to an earlier one (ours, or
            # a previous run's), or a replay. Dropping it keeps this attempt
            # alive; failing it would let anyone stall the handshake.
            return
        try:
            if kind == "req":
                self._on_req(msg)
            elif kind == "init":
                if self.locked or self._used_up():
                    return
                if self.initiator:
                    core._notice(f"ignored a handshake start from {core.peer_name}: the name that "
                                 "sorts first starts handshakes, and that is you",
                                 "bad_handshake", "warn")
                    return
                responder = handshake.Responder(prs=core._key, me=core.me, peer=core.peer,
                                                rng=core._rng)
                reply = responder.on_init(msg)
                if not self._go(Ev.PEER_START):
                    return
                self.hs = responder
                self._send_hs(reply)
            elif kind == "resp" and isinstance(hs, handshake.Initiator):
                self._send_hs(hs.on_resp(msg))
            elif kind == "share" and isinstance(hs, handshake.Responder):
                reply, keys = hs.on_share(msg)
                entry = self._send_hs(reply)
                before = self.previous
                self._establish(keys)
                self._confirm = (entry, self.session, before)
            elif kind == "confirm" and isinstance(hs, handshake.Initiator):
                self._establish(hs.on_confirm(msg))
            elif kind == "abort" and self._abort_is_ours(msg):
                self._failed("the peer could not confirm the handshake: passcode mismatch, "
                             "or someone is interfering")
            # Anything else belongs to an attempt that is over, or to none:
            # ignore it.
        except handshake.PasscodeMismatch as err:
            if kind == "share":
                self._send_hs(abort_message(msg["na"], msg["nb"]))
            self._failed(str(err))
        except (CryptoError, handshake.HandshakeStateError) as err:
            # Malformed or stale (an echo of an earlier attempt): not a guess.
            core._notice(f"ignored a bad handshake message: {err}", "bad_handshake", "warn")

    def _abort_is_ours(self, msg: dict[str, Any]) -> bool:
        """An abort counts only as the answer to our tag: we are the initiator,
        sent ``share`` in this attempt, and it echoes both of its nonces."""
        hs = self.hs
        return (isinstance(hs, handshake.Initiator)
                and hs.state is handshake.State.AWAIT_CONFIRM
                and set(msg) == {"hs", "v", "na", "nb"} and type(msg["v"]) is int
                and msg["v"] == 1 and hs.belongs(msg))

    def _on_req(self, msg: dict[str, Any]) -> None:
        """The peer has no session (it started or restarted) and asks for one."""
        if not self.initiator or self.locked or self._used_up():
            return
        nr = msg.get("nr")
        try:
            nonce = base64.b64decode(nr, validate=True) if isinstance(nr, str) else b""
        except (binascii.Error, ValueError):
            nonce = b""
        if (len(nonce) != 16 or set(msg) != {"hs", "v", "nr"} or type(msg["v"]) is not int
                or msg["v"] != 1):
            return  # not a req this version sends
        if nonce in self._answered_reqs:
            return  # a copy: that request was answered already
        self._answered_reqs[nonce] = None
        if len(self._answered_reqs) > REQ_MEMORY:
            self._answered_reqs.popitem(last=False)
        if self.phase is Phase.RUNNING:
            return  # our attempt is running: it answers this req too (they crossed)
        if self.phase not in (Phase.IDLE, Phase.UP, Phase.STOPPED, Phase.PAUSED):
            return  # BACKOFF: the retry comes at its time
        # Ours is of no use for sending any more (it stays readable as the
        # previous one); new messages wait for the new session instead of
        # going out under the old.
        if self.session is not None:
            self.previous, self.session = self.session, None
        self._initiate()

    def _used_up(self) -> bool:
        """Invite mode, after a session: the code is spent; no second handshake."""
        return self.single_use and bool(self._sids)

    def _failed(self, reason: str) -> None:
        core = self.core
        self.failures += 1
        if self.single_use:
            self._go(Ev.LOCK)
            core._notice(f"{reason}. The invite code did not match (mistyped, or someone "
                         "tried to guess it): this invite is burned; start a new one",
                         "invite_burned", "error")
            return
        left = self.max_failures - self.failures
        if left <= 0:
            self._go(Ev.LOCK)
            core._notice(f"{reason}. {self.failures} failed handshakes in a row: this "
                         "client no longer accepts new ones (each is a passcode guess); "
                         "check the passcode with your peer and restart", "passcode_mismatch",
                         "error")
        else:
            self._go(Ev.FAILED)
            core._notice(f"{reason}. Not retrying by itself: check the passcode with your "
                         f"peer, then one of you restarts ({left} more failure(s) and this "
                         "client stops accepting handshakes)", "passcode_mismatch", "error")

    def _establish(self, keys: handshake.SessionKeys) -> None:
        core = self.core
        self.failures = 0
        self.timeouts = 0
        self.refusals = 0
        if keys.role == "initiator":
            if keys.peer_ratchet_pub is None:
                raise BadBody("the handshake gave no ratchet key")
            rat = ratchet.Ratchet.initiator(keys.root_key, keys.peer_ratchet_pub, keys.ad,
                                            rng=core._rng)
        else:
            if keys.own_ratchet_priv is None:
                raise BadBody("the handshake gave no ratchet key")
            rat = ratchet.Ratchet.responder(keys.root_key, keys.own_ratchet_priv, keys.ad,
                                            rng=core._rng)
        replaced = self.session is not None or self.previous is not None
        if self.session is not None:
            self.previous = self.session
        sid = keys.sid.hex()
        self.session = Session(keys, rat, sid)
        self._sids[sid] = None
        if len(self._sids) > SID_MEMORY:
            self._sids.popitem(last=False)
        self._go(Ev.ESTABLISHED)
        core.verified = False
        core._events.append(SessionStarted(keys.safety_number, sid, replaced))
        self._say_hi()
        # Everything not yet confirmed goes out again under the new session.
        for out in core.outbox.values():
            if out.state is not OutState.FAILED:
                out.state = OutState.QUEUED
        core._pump()

    def _say_hi(self) -> None:
        """Initiator: send ``hi`` through the ratchet, which lets the responder
        send (a ratchet responder cannot send first). Again each time the peer
        is seen coming online, until it is heard from: a lost ``hi`` (relay
        restart, refused, expired while the peer was away) would leave the
        responder unable to send for the rest of the session."""
        session = self.session
        if (session is not None and not session.heard and self.core.connected
                and session.keys.role == "initiator" and session.ratchet.can_send):
            self.seal_and_submit({"k": "hi"}, None)

    def _open_ratchet(self, body: str, expires_at: float) -> None:
        core = self.core
        sid, data = parse_ratchet_body(body)
        session = None
        for candidate in (self.session, self.previous):
            if candidate is not None and candidate.sid == sid:
                session = candidate
                break
        if session is None:
            if self._sids and sid not in self._sids:
                # We had sessions in this run, and never this one.
                core._notice(f"could not read a message that names a session this client "
                             f"never had with {core.peer_name} (from a handshake that did not "
                             "complete, or forged); if genuine, it is sent again under the "
                             "next session", "unknown_session", "warn")
            # Otherwise: under a session we replaced, or one from before this
            # client started. Its sender still holds it unconfirmed and sends
            # it again under the new session: nothing to say.
            self.maybe_start()
            return
        could_send = session.ratchet.can_send
        plaintext = session.ratchet.decrypt(data)
        session.heard = True
        inner = parse_inner(plaintext)
        kind = inner["k"]
        if kind == "msg":
            if inner["from"] != core.peer or inner["to"] != core.me:
                # The ratchet's associated data already binds both names; this
                # is the explicit check the sealed fields allow.
                raise BadBody("a message names the wrong sender or recipient; rejected")
            verdict = core._admit(inner["e"], inner["n"], inner["ts"], inner["ttl"])
            if verdict in (Verdict.NEW, Verdict.LATE, Verdict.SEEN):
                self._receipt(session, inner)
            if verdict in (Verdict.NEW, Verdict.LATE):
                # Never past the sender's deadline (authenticated), whatever the
                # relay's expires_at says: a 5 s message does not stay a minute.
                core._events.append(Received(core.peer, inner["text"], inner["ts"],
                                             min(expires_at, inner["ts"] + inner["ttl"]),
                                             inner["ttl"],
                                             late=verdict is Verdict.LATE))
        elif kind == "rcpt":
            if inner["e"] == core.epoch:
                core._confirmed(inner["n"])
        elif kind.startswith("xfer."):
            core._on_transfer(inner)
        if not could_send and session.ratchet.can_send:
            core._pump()  # the responder may send from now on

    def _receipt(self, session: Session, inner: dict[str, Any]) -> None:
        # Under the session the message came in, even if a req has retired
        # it since: the peer may still have it (a req can be stale or forged).
        if session.ratchet.can_send:
            self._owed.append((session, inner["e"], inner["n"]))

    def flush(self) -> None:
        """Seal the receipts owed, at most MAX_RECEIPT_NUMBERS numbers each."""
        owed, self._owed = self._owed, []
        batch: list[int] = []
        for i, (session, epoch, n) in enumerate(owed):
            batch.append(n)
            nxt = owed[i + 1] if i + 1 < len(owed) else None
            if (nxt is None or nxt[0] is not session or nxt[1] != epoch
                    or len(batch) >= MAX_RECEIPT_NUMBERS):
                self.seal_and_submit({"k": "rcpt", "e": epoch, "n": batch}, None,
                                     session=session)
                batch = []


def req_message(nonce: bytes) -> dict[str, Any]:
    """B asks A for a handshake; ``nonce`` (16 random bytes) tells copies apart."""
    return {"hs": "req", "v": 1, "nr": base64.b64encode(nonce).decode()}


def abort_message(na: str, nb: str) -> dict[str, Any]:
    """B's answer to a ``share`` whose tag is wrong, bound to that attempt."""
    return {"hs": "abort", "v": 1, "na": na, "nb": nb}


def msg_inner(me: str, peer: str, epoch: str, out: Outgoing) -> dict[str, Any]:
    """The plaintext of a chat message; its deadline is ``ts + ttl``."""
    return {"k": "msg", "from": me, "to": peer, "e": epoch, "n": out.n, "ts": out.ts,
            "ttl": out.ttl, "text": out.text}


def parse_hs(body: str) -> dict[str, Any]:
    if not body.startswith("h1."):
        raise BadBody("a handshake message has an unknown format")
    try:
        # Strict, depth-limited JSON (framing.decode_body): anyone who can
        # send to us writes this, before any key is known.
        return framing.decode_body(base64.b64decode(body[3:], validate=True))
    except (binascii.Error, ValueError, framing.FramingError):
        raise BadBody("a handshake message is not valid") from None


def parse_ratchet_body(body: str) -> tuple[str, bytes]:
    if body.startswith("s1."):
        raise BadBody("the peer is in --static mode; both sides must use the same mode")
    # "r1." + 32 characters + "." + base64 (which holds no "."): sliced, not split, as
    # a file chunk's body is 64 KiB.
    if body[:3] != "r1." or body[35:36] != "." or "." in body[3:35] or "." in body[36:100]:
        raise BadBody("a message has an unknown format")
    try:
        return body[3:35], base64.b64decode(body[36:], validate=True)
    except (binascii.Error, ValueError):
        raise BadBody("a message is not valid base64") from None


def parse_inner(plaintext: bytes) -> dict[str, Any]:
    if plaintext[:1] == b"\x00":  # a binary file chunk (docs/transfer.md section 2)
        try:
            return decode_binary_plaintext(plaintext)
        except TransferError:
            raise BadBody("a message decrypted but is not a valid file chunk") from None
    try:
        inner = framing.decode_body(plaintext)
    except framing.FramingError:
        raise BadBody("a message decrypted but is not a valid JSON object") from None
    kind = inner.get("k")
    ok = False
    if kind == "msg":
        ok = (isinstance(inner.get("from"), str) and isinstance(inner.get("to"), str)
              and isinstance(inner.get("e"), str) and type(inner.get("n")) is int
              and inner["n"] >= 1
              and type(inner.get("ts")) in (int, float) and type(inner.get("ttl")) is int
              and isinstance(inner.get("text"), str))
    elif kind == "rcpt":
        ns = inner.get("n")
        ok = (isinstance(inner.get("e"), str) and isinstance(ns, list)
              and len(ns) <= MAX_RECEIPT_NUMBERS
              and all(type(n) is int for n in ns))
    elif kind == "hi":
        ok = True
    elif isinstance(kind, str) and kind.startswith("xfer."):
        ok = True  # checked strictly by msgrlib.transfer.messages.parse_message
    if not ok:
        raise BadBody("a message decrypted but its fields are wrong")
    return inner
