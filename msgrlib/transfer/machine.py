"""Sans-I/O state machines for one transfer: :class:`Sender` and :class:`Receiver`.

Neither touches the network or a clock. Methods take the parsed peer message and ``now``
(seconds, any monotonic origin); each queues the messages to seal and send (drain them with
``take_outgoing()``) and the events to show (``take_events()``). The content comes from an
injected :class:`Source` and goes to an injected :class:`Sink`, so a secret can live in memory
only and tests can use bytes.

Flow (docs/transfer.md has the messages)::

    sender                                   receiver
    OFFERED   --- xfer.offer ------------->  OFFERED   (the person decides)
              <-- xfer.accept {window} ----  RECEIVING    or  <-- xfer.decline --  DECLINED
    SENDING   --- xfer.chunk i ----------->  (in order: write, hash; ack every few)
              <-- xfer.ack {next} ---------
    FINISHING (all acked)                    hash checks -> sink.commit()
    DONE      <-- xfer.done ---------------  DONE
    any non-terminal state <-- xfer.fail --> FAILED (both sides; the receiver discards)

Flow control is end to end: the sender never sends a chunk ``window`` or more past the last
acknowledged one. Losses (a connection that dropped before the relay took a message) are
repaired from the receiver's side: a chunk that arrives after a missing one, or ``nudge_after``
seconds of silence (``tick()``), makes the receiver send ``xfer.ack`` with ``gap: true``, and
the sender goes back to that chunk. Since the relay delivers in order, it then holds at most
the old window (being discarded) plus the resent one: 2 x ``window`` chunks per transfer.
``resume()`` after a reconnect repeats only what cannot pile up (the receiver's position, an
unanswered offer). Terminal states (DONE, DECLINED, FAILED) never change again; peer messages
that arrive there are ignored, except that a repeated offer, or a repeated last chunk after
``xfer.done``, is answered again with our last answer (it may have been lost).

A peer message that breaks the protocol for this transfer (a chunk of the wrong length, an ack
for chunks never sent, a message only the other role sends) fails the transfer with code
``protocol`` on both sides. Calling a method in the wrong state raises
:class:`TransferStateError`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass
from typing import Protocol

from msgrlib.transfer.errors import ArchiveError, TransferError, TransferStateError, UnsafeName
from msgrlib.transfer.messages import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_WINDOW,
    KIND_SECRET,
    MAX_CHUNK_SIZE,
    MAX_REASON_LENGTH,
    MAX_WINDOW,
    Accept,
    Ack,
    Chunk,
    Decline,
    Done,
    Fail,
    Message,
    Offer,
    parse_message,
)
from msgrlib.transfer.names import check_file_name

#: Without any progress for this long (the relay's longest TTL), a transfer has failed: a
#: message older than that is gone from the relay, so waiting longer cannot help.
DEFAULT_STALL_TIMEOUT = 60.0
#: After this long without hearing from the peer, repeat our position once (a message lost
#: on a dropped connection is then sent again); again after as long, until the stall timeout.
DEFAULT_NUDGE_AFTER = 10.0
#: How long a sender waits for the person at the other end to accept or decline.
DEFAULT_ANSWER_TIMEOUT = 600.0
#: The largest file a receiver accepts unless told otherwise (a big video, not a disk image).
DEFAULT_MAX_SIZE = 64 * 1024**3
#: A secret is shown on a terminal, once: beyond this it should be a file.
DEFAULT_MAX_SECRET_SIZE = 64 * 1024


class Source(Protocol):
    def read(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset``; raise ``OSError`` if that cannot be."""
        ...


class Sink(Protocol):
    def write(self, data: bytes) -> None:
        """Append ``data``; raise :class:`SinkError` (or ``OSError``) on failure."""
        ...

    def commit(self) -> None:
        """Everything arrived and checks: make it visible. Raise :class:`TransferError`."""
        ...

    def discard(self) -> None:
        """Forget everything written; leave nothing behind. Idempotent, never raises."""
        ...


# --- events ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Accepted:
    window: int


@dataclass(frozen=True)
class Declined:
    reason: str  # from the peer: escape before showing


@dataclass(frozen=True)
class Progress:
    done_bytes: int  # sender: acknowledged by the receiver; receiver: written
    total_bytes: int


@dataclass(frozen=True)
class Completed:
    pass


@dataclass(frozen=True)
class Failed:
    code: str
    reason: str  # ours, or the peer's (escape before showing when by_peer)
    by_peer: bool


Event = Accepted | Declined | Progress | Completed | Failed


# --- states and their transition tables -----------------------------------------------------

class SenderState(enum.Enum):
    OFFERED = "offered"      # offer sent, no answer yet
    SENDING = "sending"      # accepted: chunks flow within the window
    FINISHING = "finishing"  # every chunk acknowledged, waiting for xfer.done
    DONE = "done"
    DECLINED = "declined"
    FAILED = "failed"


class ReceiverState(enum.Enum):
    OFFERED = "offered"      # offer received; the person has not decided
    RECEIVING = "receiving"
    DONE = "done"
    DECLINED = "declined"
    FAILED = "failed"


class Input(enum.Enum):
    """What can happen to a transfer: peer messages and local decisions."""

    ACCEPT = "accept"          # peer's xfer.accept
    DECLINE = "decline"        # peer's xfer.decline
    ACK = "ack"                # peer's xfer.ack
    CHUNK = "chunk"            # peer's xfer.chunk
    PEER_DONE = "peer_done"    # peer's xfer.done
    PEER_FAIL = "peer_fail"    # peer's xfer.fail
    ALL_ACKED = "all_acked"    # sender: the last chunk is acknowledged
    LOCAL_ACCEPT = "local_accept"
    LOCAL_DECLINE = "local_decline"
    VERIFIED = "verified"      # receiver: last chunk in, hash matched, sink committed
    ABORT = "abort"            # local failure: cancel, timeout, I/O error, protocol breach


S = SenderState
R = ReceiverState

#: (state, input) -> next state. A pair missing here is a protocol breach by the peer (for
#: peer inputs) or a caller bug (for local ones); terminal states have no entries.
SENDER_TRANSITIONS: dict[tuple[SenderState, Input], SenderState] = {
    (S.OFFERED, Input.ACCEPT): S.SENDING,
    (S.OFFERED, Input.DECLINE): S.DECLINED,
    (S.SENDING, Input.ACCEPT): S.SENDING,          # a repeated accept (resume)
    (S.SENDING, Input.ACK): S.SENDING,
    (S.SENDING, Input.ALL_ACKED): S.FINISHING,
    (S.FINISHING, Input.ACCEPT): S.FINISHING,
    (S.FINISHING, Input.ACK): S.FINISHING,         # a repeated final ack
    (S.FINISHING, Input.PEER_DONE): S.DONE,
    **{(s, Input.PEER_FAIL): S.FAILED for s in (S.OFFERED, S.SENDING, S.FINISHING)},
    **{(s, Input.ABORT): S.FAILED for s in (S.OFFERED, S.SENDING, S.FINISHING)},
}

RECEIVER_TRANSITIONS: dict[tuple[ReceiverState, Input], ReceiverState] = {
    (R.OFFERED, Input.LOCAL_ACCEPT): R.RECEIVING,
    (R.OFFERED, Input.LOCAL_DECLINE): R.DECLINED,
    (R.RECEIVING, Input.CHUNK): R.RECEIVING,
    (R.RECEIVING, Input.VERIFIED): R.DONE,
    **{(s, Input.PEER_FAIL): R.FAILED for s in (R.OFFERED, R.RECEIVING)},
    **{(s, Input.ABORT): R.FAILED for s in (R.OFFERED, R.RECEIVING)},
}

SENDER_TERMINAL = frozenset({S.DONE, S.DECLINED, S.FAILED})
RECEIVER_TERMINAL = frozenset({R.DONE, R.DECLINED, R.FAILED})


def _reason(text: str) -> str:
    return text[:MAX_REASON_LENGTH]


class _Machine:
    """What both sides share: outbox, events, timers."""

    def __init__(self, offer: Offer, now: float, *, stall_timeout: float,
                 nudge_after: float) -> None:
        if not 0 < nudge_after < stall_timeout:
            raise ValueError("nudge_after must be positive and below stall_timeout")
        self.offer = offer
        self._out: list[Message] = []
        self._events: list[Event] = []
        self._last_progress = now  # for failing: the last time the transfer moved
        self._last_nudge = now     # for nudging: the last time we heard or nudged
        self._stall_timeout = stall_timeout
        self._nudge_after = nudge_after
        self._last_sent: Message | None = None  # the terminal answer, repeated on resume

    @property
    def transfer_id(self) -> str:
        return self.offer.t

    def take_outgoing(self) -> list[Message]:
        """The messages to seal and send, in order; the queue is emptied."""
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[Event]:
        """What happened since the last call, in order; the queue is emptied."""
        events, self._events = self._events, []
        return events

    def _send(self, msg: Message) -> None:
        self._out.append(msg)

    def is_finished(self) -> bool:
        """True in a terminal state (done, declined, failed): nothing changes any more."""
        raise NotImplementedError

    def _abort(self, code: str, reason: str) -> None:
        raise NotImplementedError

    def protocol_error(self, reason: str) -> None:
        """The caller found a malformed message for this transfer: fail it with code
        ``protocol``, both sides told. Nothing happens in a terminal state."""
        if not self.is_finished():
            self._abort("protocol", reason)


class Sender(_Machine):
    """Sends one offer's content from ``source``. Construct, then send ``take_outgoing()``
    (the offer); feed each peer message for this transfer id to :meth:`handle`."""

    def __init__(self, offer: Offer, source: Source, now: float, *,
                 max_window: int = MAX_WINDOW,
                 stall_timeout: float = DEFAULT_STALL_TIMEOUT,
                 nudge_after: float = DEFAULT_NUDGE_AFTER,
                 answer_timeout: float = DEFAULT_ANSWER_TIMEOUT) -> None:
        super().__init__(offer, now, stall_timeout=stall_timeout, nudge_after=nudge_after)
        if not 1 <= max_window <= MAX_WINDOW:
            raise ValueError(f"max_window must be 1..{MAX_WINDOW}")
        self.state = S.OFFERED
        self._source = source
        self._max_window = max_window
        self._answer_timeout = answer_timeout
        self.window = 0
        self.acked = 0       # chunks 0..acked-1 are written at the receiver
        self.next_chunk = 0  # the next chunk to send
        self._sent_high = 0  # one past the highest chunk ever sent
        #: (position, when) of the last go-back: an honest receiver asks once per gap,
        #: then once per ``nudge_after`` at most.
        self._went_back: tuple[int, float] | None = None
        self._send(offer)

    def is_finished(self) -> bool:
        return self.state in SENDER_TERMINAL

    @property
    def acked_bytes(self) -> int:
        return min(self.acked * self.offer.chunk, self.offer.size)

    def _go(self, event: Input) -> None:
        self.state = SENDER_TRANSITIONS[(self.state, event)]

    def handle(self, msg: Message, now: float) -> None:
        """React to a peer message for this transfer (``msg.t == self.transfer_id``)."""
        if msg.t != self.offer.t:
            raise TransferStateError("a message for another transfer")
        if self.state in SENDER_TERMINAL:
            return
        self._last_nudge = now
        if isinstance(msg, Accept):
            if self.state is S.OFFERED:
                self.window = min(msg.window, self._max_window)
                self._go(Input.ACCEPT)
                self._events.append(Accepted(self.window))
                self._last_progress = now
                if self.offer.chunks == 0:
                    self._go(Input.ALL_ACKED)
            self._pump()
        elif isinstance(msg, Decline):
            if self.state is not S.OFFERED:
                return self._abort("protocol", "the receiver declined after accepting")
            self._go(Input.DECLINE)
            self._events.append(Declined(msg.reason))
        elif isinstance(msg, Ack):
            self._on_ack(msg, now)
        elif isinstance(msg, Done):
            if self.state is S.OFFERED and self.offer.chunks == 0:
                # Nothing to send: the receiver accepted and finished; its accept was lost.
                self._go(Input.ACCEPT)
                self._go(Input.ALL_ACKED)
            if self.state is S.SENDING and self._sent_high == self.offer.chunks:
                # xfer.done also acknowledges the last chunks (the receiver sends no ack then).
                self.acked = self.offer.chunks
                self._events.append(Progress(self.acked_bytes, self.offer.size))
                self._go(Input.ALL_ACKED)
            if self.state is not S.FINISHING:
                return self._abort("protocol", "the receiver finished before every chunk "
                                   "was sent")
            self._go(Input.PEER_DONE)
            self._events.append(Completed())
        elif isinstance(msg, Fail):
            self._go(Input.PEER_FAIL)
            self._events.append(Failed(msg.code, msg.reason, by_peer=True))
        else:
            self._abort("protocol", f"the receiver sent {msg.K}, which only a sender sends")

    def _on_ack(self, msg: Ack, now: float) -> None:
        if self.state is S.OFFERED and msg.gap and msg.next == 0:
            return  # the receiver's nudge crossed its lost accept; our offer nudge repairs it
        if (self.state, Input.ACK) not in SENDER_TRANSITIONS:
            return self._abort("protocol", "an acknowledgement before the transfer started")
        # next_chunk may have gone back (a gap); what was ever sent is the high-water mark.
        if msg.next > self._sent_high:
            return self._abort("protocol", "the receiver acknowledged chunks never sent")
        if msg.next > self.acked:
            self.acked = msg.next
            self._last_progress = now
            self._events.append(Progress(self.acked_bytes, self.offer.size))
        self.next_chunk = max(self.next_chunk, self.acked)
        if msg.gap and self.state is S.SENDING and msg.next == self.acked:
            # Go back N: resend from the first missing chunk. Not again for the same
            # position within half the nudge interval: a hostile receiver repeating one
            # tiny gap ack would otherwise make us seal and queue a whole window per ack.
            last = self._went_back
            if last is None or last[0] != msg.next or now - last[1] >= self._nudge_after / 2:
                self._went_back = (msg.next, now)
                self.next_chunk = msg.next
        if self.acked == self.offer.chunks and self.state is S.SENDING:
            self._go(Input.ALL_ACKED)
        self._pump()

    def _pump(self) -> None:
        """Queue every chunk the window allows."""
        if self.state is not S.SENDING:
            return
        limit = min(self.offer.chunks, self.acked + self.window)
        while self.next_chunk < limit:
            i = self.next_chunk
            length = self.offer.chunk_length(i)
            try:
                data = self._source.read(i * self.offer.chunk, length)
            except OSError as exc:
                return self._abort("read_failed", f"could not read the file: {_why(exc)}")
            if len(data) != length:
                return self._abort("read_failed", "the file changed while it was being sent")
            self._send(Chunk(self.offer.t, i, bytes(data)))
            self.next_chunk = i + 1
            self._sent_high = max(self._sent_high, self.next_chunk)

    def resume(self, now: float) -> None:
        """Our connection came back. Chunks the relay accepted are still there for the
        receiver, so they are not sent again (that would pile windows up at the relay); the
        receiver asks for anything lost (a gap, or its nudge). Only an unanswered offer and
        our own failure report are repeated."""
        self._last_nudge = now
        if self.state is S.OFFERED:
            self._send(self.offer)
        elif self.state is S.FAILED and isinstance(self._last_sent, Fail):
            self._send(self._last_sent)

    def cancel(self, reason: str = "the sender cancelled") -> None:
        """Stop: the receiver is told (``cancelled``) and discards what it has."""
        if self.state in SENDER_TERMINAL:
            raise TransferStateError(f"the transfer is already {self.state.value}")
        self._abort("cancelled", reason)

    def tick(self, now: float) -> None:
        """Call every second or so. Fails with ``timeout`` (both sides told) when nothing
        moved for ``stall_timeout`` (``answer_timeout`` while the person decides). After
        ``nudge_after`` of silence from the receiver, repeats the offer (no answer yet) or,
        when every chunk is out, the last chunk: the receiver answers with where it is (or
        ``xfer.done`` again)."""
        if self.state in SENDER_TERMINAL:
            return
        limit = self._answer_timeout if self.state is S.OFFERED else self._stall_timeout
        if now - self._last_progress > limit:
            return self._abort("timeout", f"no answer from the receiver for {limit:.0f} s")
        all_out = self._sent_high == self.offer.chunks
        if ((self.state is S.OFFERED or (self.state is S.FINISHING and not self.offer.chunks))
                and now - self._last_nudge > self._nudge_after):
            # The receiver ignores a repeated offer while the person decides, and repeats
            # its answer if it gave one (the answer, or xfer.done, may have been lost).
            self._last_nudge = now
            self._send(self.offer)
        elif (self.state is S.SENDING and all_out
                and now - self._last_nudge > self._nudge_after):
            self._last_nudge = now
            last = self.offer.chunks - 1
            try:
                data = self._source.read(last * self.offer.chunk, self.offer.chunk_length(last))
            except OSError as exc:
                return self._abort("read_failed", f"could not read the file: {_why(exc)}")
            self._send(Chunk(self.offer.t, last, bytes(data)))

    def _abort(self, code: str, reason: str) -> None:
        self._go(Input.ABORT)
        fail = Fail(self.offer.t, code, _reason(reason))
        self._last_sent = fail
        self._send(fail)
        self._events.append(Failed(code, reason, by_peer=False))


class Receiver(_Machine):
    """Receives one offer. Construct from the peer's :class:`Offer`; if :attr:`problem` is
    set, the offer must be declined (tell the person why); else ask the person, then call
    :meth:`accept` with a sink, or :meth:`decline`."""

    def __init__(self, offer: Offer, now: float, *,
                 max_size: int = DEFAULT_MAX_SIZE,
                 max_secret_size: int = DEFAULT_MAX_SECRET_SIZE,
                 stall_timeout: float = DEFAULT_STALL_TIMEOUT,
                 nudge_after: float = DEFAULT_NUDGE_AFTER) -> None:
        super().__init__(offer, now, stall_timeout=stall_timeout, nudge_after=nudge_after)
        self.state = R.OFFERED
        self.problem = self._check(offer, max_size=max_size, max_secret_size=max_secret_size)
        self._sink: Sink | None = None
        self._hash = hashlib.sha256()
        self.expected = 0        # the next chunk index wanted
        self._acked = 0          # the last ``next`` we sent
        self._ack_every = 1
        self._window = 0
        self._repeated_for = -1  # the ``expected`` value already answered with a repeat ack

    @staticmethod
    def _check(offer: Offer, *, max_size: int, max_secret_size: int) -> str | None:
        """Why this offer cannot be accepted, or ``None``. The sentence may name the offered
        file name, escaped."""
        if offer.kind == KIND_SECRET:
            if offer.size > max_secret_size:
                return (f"the secret is {offer.size} bytes; at most {max_secret_size} are "
                        "accepted (send it as a file)")
        else:
            try:
                check_file_name(offer.name, what=f"{offer.kind} name")
            except UnsafeName as exc:
                return str(exc)
            if offer.size > max_size:
                return f"the {offer.kind} is {offer.size} bytes; at most {max_size} accepted"
        return None

    def is_finished(self) -> bool:
        return self.state in RECEIVER_TERMINAL

    @property
    def received_bytes(self) -> int:
        return min(self.expected * self.offer.chunk, self.offer.size)

    def _go(self, event: Input) -> None:
        self.state = RECEIVER_TRANSITIONS[(self.state, event)]

    def accept(self, sink: Sink, now: float, *, window: int = DEFAULT_WINDOW,
               ack_every: int | None = None) -> None:
        """The person said yes: data goes to ``sink`` (a file sink, or memory for a secret).

        ``window`` (1..MAX_WINDOW) bounds the chunks in flight; an ack goes out every
        ``ack_every`` chunks (default a quarter of the window); ``xfer.done`` acknowledges
        the last ones.
        Raises :class:`TransferStateError` if the offer was already answered or has a
        :attr:`problem`.
        """
        if (self.state, Input.LOCAL_ACCEPT) not in RECEIVER_TRANSITIONS:
            raise TransferStateError(f"the offer is already {self.state.value}")
        if self.problem:
            raise TransferStateError(f"this offer cannot be accepted: {self.problem}")
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be 1..{MAX_WINDOW}")
        every = ack_every if ack_every is not None else max(1, window // 4)
        if not 1 <= every <= window:
            raise ValueError("ack_every must be 1..window, or the sender would stall")
        self._sink, self._window, self._ack_every = sink, window, every
        self._go(Input.LOCAL_ACCEPT)
        self._last_progress = now
        self._send(Accept(self.offer.t, window))
        if self.offer.chunks == 0:
            self._finish()

    def decline(self, reason: str = "the receiver declined") -> None:
        """The person said no (or :attr:`problem` is set): the sender is told ``reason``."""
        if (self.state, Input.LOCAL_DECLINE) not in RECEIVER_TRANSITIONS:
            raise TransferStateError(f"the offer is already {self.state.value}")
        self._go(Input.LOCAL_DECLINE)
        decline = Decline(self.offer.t, _reason(reason))
        self._last_sent = decline
        self._send(decline)

    def handle(self, msg: Message, now: float) -> None:
        """React to a peer message for this transfer (``msg.t == self.transfer_id``)."""
        if msg.t != self.offer.t:
            raise TransferStateError("a message for another transfer")
        self._last_nudge = now
        if self.state in RECEIVER_TERMINAL:
            # Our last answer may have been lost: the sender repeating its offer, or (after
            # xfer.done) its last chunk, gets that answer again. Anything else is ignored.
            repeat = msg == self.offer or (self.state is R.DONE and isinstance(msg, Chunk)
                                           and msg.i == self.offer.chunks - 1)
            if repeat and self._last_sent is not None:
                self._send(self._last_sent)
            return
        if isinstance(msg, Fail):
            self._go(Input.PEER_FAIL)
            self._discard()
            self._events.append(Failed(msg.code, msg.reason, by_peer=True))
        elif isinstance(msg, Offer):
            if msg != self.offer:
                self._abort("protocol", "a second, different offer with the same id")
            elif self.state is R.RECEIVING and self.expected == 0:
                self._send(Accept(self.offer.t, self._window))  # our accept was lost
            # else: still up to the person, or chunks came, so the accept arrived.
        elif isinstance(msg, Chunk):
            if self.state is not R.RECEIVING:
                return self._abort("protocol", "a chunk before the offer was accepted")
            self._on_chunk(msg, now)
        else:
            self._abort("protocol", f"the sender sent {msg.K}, which only a receiver sends")

    def _on_chunk(self, msg: Chunk, now: float) -> None:
        total = self.offer.chunks
        if msg.i >= total:
            return self._abort("protocol", f"chunk {msg.i} is past the end ({total} chunks)")
        if len(msg.data) != self.offer.chunk_length(msg.i):
            return self._abort("protocol", f"chunk {msg.i} has the wrong length")
        if msg.i < self.expected:
            # A repeat (the sender went back after a reconnect): tell it where we are, once.
            if self._repeated_for != self.expected:
                self._repeated_for = self.expected
                self._send(Ack(self.offer.t, self.expected))
            return
        if msg.i > self.expected:
            # One before it was lost: ask the sender to go back, once per gap.
            if self._repeated_for != self.expected:
                self._repeated_for = self.expected
                self._send(Ack(self.offer.t, self.expected, gap=True))
            return
        try:
            self._require_sink().write(msg.data)
        except (OSError, TransferError) as exc:
            return self._abort("write_failed", f"could not write the file: {_why(exc)}",
                               tell_peer="the receiver could not write the file")
        self._hash.update(msg.data)
        self.expected += 1
        self._last_progress = now
        self._events.append(Progress(self.received_bytes, self.offer.size))
        if self.expected == total:
            self._finish()
        elif self.expected - self._acked >= self._ack_every:
            self._acked = self.expected
            self._send(Ack(self.offer.t, self.expected))

    def _finish(self) -> None:
        """Every chunk is in: check the whole-content hash, then commit."""
        digest = self._hash.hexdigest()
        if not hmac.compare_digest(digest, self.offer.sha256):
            return self._abort("hash_mismatch", "the received data does not match the "
                               "sender's hash; nothing was kept")
        try:
            self._require_sink().commit()
        except ArchiveError as exc:
            return self._abort("refused", f"the directory was refused: {exc}")
        except (OSError, TransferError) as exc:
            return self._abort("write_failed", f"could not save the file: {_why(exc)}",
                               tell_peer="the receiver could not save the file")
        self._acked = self.expected
        self._go(Input.VERIFIED)
        done = Done(self.offer.t)
        self._last_sent = done
        self._send(done)
        self._events.append(Completed())

    def resume(self, now: float) -> None:
        """Our connection came back: tell the sender where we are (it may have missed our
        last ack or our answer). What the relay still holds for us arrives by itself."""
        self._last_nudge = now
        if self.state is R.RECEIVING:
            if self.expected:
                self._acked = self.expected
                self._send(Ack(self.offer.t, self.expected))
            # else: a lost accept is repeated when the sender repeats its offer.
        elif self._last_sent is not None:
            self._send(self._last_sent)

    def cancel(self, reason: str = "the receiver cancelled") -> None:
        """Stop: nothing is kept, the sender is told (``cancelled``)."""
        if self.state in RECEIVER_TERMINAL:
            raise TransferStateError(f"the transfer is already {self.state.value}")
        self._abort("cancelled", reason)

    def tick(self, now: float) -> None:
        """Call every second or so. While receiving: fails with ``timeout`` (both sides
        told, nothing kept) when no chunk came for ``stall_timeout``; after ``nudge_after``
        of silence, asks the sender to go back to the first missing chunk (a chunk lost on a
        dropped connection is sent again). An offer waiting for the person never times out
        here (the sender gives up after its ``answer_timeout``)."""
        if self.state is not R.RECEIVING:
            return
        if now - self._last_progress > self._stall_timeout:
            return self._abort("timeout",
                               f"no data from the sender for {self._stall_timeout:.0f} s")
        if now - self._last_nudge > self._nudge_after:
            self._last_nudge = now
            self._send(Ack(self.offer.t, self.expected, gap=True))

    def _require_sink(self) -> Sink:
        if self._sink is None:  # RECEIVING always has one (set in accept)
            raise TransferStateError("no sink")
        return self._sink

    def _discard(self) -> None:
        if self._sink is not None:
            self._sink.discard()

    def _abort(self, code: str, reason: str, *, tell_peer: str | None = None) -> None:
        """Fail: ``reason`` is shown here; the sender is told ``tell_peer`` instead when the
        reason names local things (our directory, our file system's error)."""
        self._go(Input.ABORT)
        self._discard()
        fail = Fail(self.offer.t, code, _reason(tell_peer or reason))
        self._last_sent = fail
        self._send(fail)
        self._events.append(Failed(code, reason, by_peer=False))


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def make_offer(transfer_id: str, *, kind: str, name: str, size: int, mime: str, sha256: str,
               chunk: int = DEFAULT_CHUNK_SIZE) -> Offer:
    """An offer, checked as the receiver will check it (so a sender fails early and locally).

    Raises :class:`TransferProtocolError` for a field the receiver would refuse to parse.
    """
    if not 1 <= chunk <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk must be 1..{MAX_CHUNK_SIZE}")
    msg = parse_message(Offer(transfer_id, kind, name, size, mime, sha256, chunk).to_obj())
    if not isinstance(msg, Offer):  # parse_message keeps the kind; this cannot happen
        raise TransferStateError("not an offer")
    return msg


__all__ = [
    "DEFAULT_ANSWER_TIMEOUT", "DEFAULT_MAX_SECRET_SIZE", "DEFAULT_MAX_SIZE",
    "DEFAULT_STALL_TIMEOUT", "RECEIVER_TRANSITIONS", "SENDER_TRANSITIONS", "Accepted",
    "Completed", "Declined", "Event", "Failed", "Input", "Progress", "Receiver",
    "ReceiverState", "Sender", "SenderState", "Sink", "Source", "make_offer",
]
