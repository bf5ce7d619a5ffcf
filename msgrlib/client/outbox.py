"""The sending side of the chat core: messages whose fate is open, and the
queue of send frames held back to stay under the relay's rates.

Nothing here reads a clock: times are passed in.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from msgrlib.ratelimit import TokenBucket

#: Share of the relay's per-connection rates (from ``welcome``) the client
#: allows itself, so that its sends are not refused as too fast.
RATE_MARGIN = 0.9
#: Sends handed to the relay and not answered yet that are remembered (to
#: match ``accepted`` and ``error`` answers); past this, the oldest
#: unanswered is forgotten (a relay that never answers cannot grow it).
MAX_UNANSWERED = 4096
#: Receipts and control messages (not chat messages, which the outbox
#: bounds by their TTL) that may wait for the relay's rate budget. A relay
#: that advertises tiny rates and floods us cannot make us hold more: the
#: oldest waiting one is dropped (a lost receipt makes the peer report a
#: message it could not confirm, never show one twice).
MAX_WAITING_CONTROL = 4096


def number(value: object) -> float | None:
    """A JSON number (not a bool) as a float, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer too large for a float
            return None
    return None


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
    expired_at_relay: bool = False  # the relay said so (final only after the deadline: see core)
    ever_sent: bool = False         # handed to the relay at least once (it may reach the peer)


@dataclass
class Pending:
    """A send frame, from when it is queued until the relay answers it."""

    purpose: str                         # msg, ctl (hi), rcpt (receipt) or hs
    frame: dict[str, Any]
    out: Outgoing | None = None          # msg: the message it carries
    inner: dict[str, Any] | None = None  # rcpt: sealed again after a reconnect
    sent: bool = False                   # handed to the I/O layer
    retries: int = 0
    cancelled: bool = False              # dropped before it was sent
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> int:
        return self.frame["ref"]  # type: ignore[no-any-return]


class Pacer:
    """Keeps sends under the relay's per-connection message and byte rates."""

    def __init__(self, limits: dict[str, Any], now: float) -> None:
        def rate(name: str, default: float) -> float:
            value = number(limits.get(name))
            if value is not None and 0 < value < float("inf"):
                return value * RATE_MARGIN
            return default

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


class SendQueue:
    """Send frames by ``ref``: those waiting to go out (in ref order) and those
    handed out and not yet answered.

    Work per event is O(1) amortized: fresh sends get increasing refs, so
    they wait in a FIFO; a send the relay refused as too fast waits in a
    second FIFO (the relay answers in order, so those come in ref order
    too) and the next to go is the lower of the two heads. Removals are
    lazy (an entry no longer in :attr:`refs`, or cancelled, is skipped when
    it reaches a head), and the FIFOs are swept when dead entries outnumber
    live ones.
    """

    def __init__(self, *, max_unanswered: int = MAX_UNANSWERED,
                 max_waiting_control: int = MAX_WAITING_CONTROL) -> None:
        self.max_unanswered = max_unanswered
        self.max_waiting_control = max_waiting_control
        self.refs: dict[int, Pending] = {}
        self._fresh: deque[Pending] = deque()
        self._again: deque[Pending] = deque()
        self._dead = 0
        self._sent_order: deque[int] = deque()
        self._control: deque[Pending] = deque()  # waiting non-msg entries, oldest first
        self._last_hs: Pending | None = None
        self._next_ref = 0

    def add(self, entry: Pending, to: str) -> int:
        """Queue ``entry``'s send frame (given its fields), numbered by a fresh ref."""
        self._next_ref += 1
        ref = self._next_ref
        entry.frame = {"type": "send", "ref": ref, "to": to, **entry.frame}
        self.refs[ref] = entry
        self._fresh.append(entry)
        if entry.purpose == "hs":
            # A handshake message still waiting belongs to an attempt this
            # one replaces: it would only make the peer fail the new one.
            last = self._last_hs
            if last is not None and not last.sent:
                self.cancel(last)
            self._last_hs = entry
        elif entry.purpose != "msg":
            self._control.append(entry)
            while len(self._control) > self.max_waiting_control:
                old = self._control.popleft()
                if not old.sent and not old.cancelled:
                    self.cancel(old)
        return ref

    def cancel(self, entry: Pending) -> None:
        """Drop a waiting entry (lazily)."""
        if entry.sent or entry.cancelled:
            return
        entry.cancelled = True
        self.refs.pop(entry.ref, None)
        self._bury()

    def requeue(self, entry: Pending) -> None:
        """A send the relay refused as too fast waits again, in its place."""
        entry.sent = False
        self.refs[entry.ref] = entry
        again = self._again
        if again and again[-1].ref > entry.ref:
            # Answers out of order (not what a relay does): keep it sorted.
            at = next(i for i, e in enumerate(again) if e.ref > entry.ref)
            again.insert(at, entry)
        else:
            again.append(entry)

    def _live(self, entry: Pending) -> bool:
        return (not entry.cancelled and not entry.sent
                and self.refs.get(entry.ref) is entry)

    def _head(self, fifo: deque[Pending]) -> Pending | None:
        while fifo and not self._live(fifo[0]):
            fifo.popleft()
            self._dead = max(0, self._dead - 1)
        return fifo[0] if fifo else None

    def peek(self) -> Pending | None:
        """The first waiting entry, or None."""
        fresh, again = self._head(self._fresh), self._head(self._again)
        if fresh is None or (again is not None and again.ref < fresh.ref):
            return again
        return fresh

    def pop(self) -> Pending:
        """Remove the entry :meth:`peek` returned."""
        entry = self.peek()
        if entry is None:
            raise IndexError("no waiting send")
        if self._again and self._again[0] is entry:
            return self._again.popleft()
        return self._fresh.popleft()

    def mark_sent(self, entry: Pending) -> None:
        entry.sent = True
        self._sent_order.append(entry.ref)
        while len(self._sent_order) > 2 * self.max_unanswered:
            self._sent_order.popleft()  # answered long ago, most of them
        if len(self.refs) > self.max_unanswered:
            # Answers that never came: forget the oldest sent.
            while self._sent_order:
                old = self._sent_order.popleft()
                found = self.refs.get(old)
                if found is not None and found.sent:
                    del self.refs[old]
                    break

    def forget(self, ref: int) -> None:
        entry = self.refs.pop(ref, None)
        if entry is not None and not entry.sent:
            self._bury()

    def take_answered(self, ref: object) -> Pending | None:
        """The sent entry an answer with ``ref`` is for, removed; None if not ours."""
        entry = self.refs.get(ref) if type(ref) is int else None  # type: ignore[arg-type]
        if entry is None or not entry.sent:
            return None  # not ours, or not sent yet: a hostile relay's answer
        del self.refs[entry.ref]
        return entry

    def waiting(self) -> int:
        """Live waiting entries (O(n): for tests and status)."""
        return sum(1 for e in (*self._fresh, *self._again) if self._live(e))

    def held(self) -> int:
        """Entries kept in the FIFOs, dead or alive (O(1))."""
        return len(self._fresh) + len(self._again)

    def _bury(self) -> None:
        self._dead += 1
        if self._dead > 64 and self._dead > self.held() // 2:
            self._fresh = deque(e for e in self._fresh if self._live(e))
            self._again = deque(e for e in self._again if self._live(e))
            self._dead = 0
