"""All the transfers of one conversation: routes ``xfer.*`` plaintexts to their machines.

This is the one object the chat core holds for transfers (sans-I/O, like the machines):

* an opened ratchet plaintext whose ``k`` starts with ``xfer.`` goes to :meth:`Transfers.handle`
  (the decoded JSON object, as is);
* :meth:`Transfers.take_outgoing` gives the plaintext objects to seal and send, in order;
* :meth:`Transfers.take_events` gives ``(transfer id, event)`` pairs for the screen or
  ``--json``; a new incoming offer is an :class:`Offered` event carrying its
  :class:`Receiver`, on which the UI calls ``accept(sink, now)`` or ``decline(reason)``;
* :meth:`tick` every second or so, :meth:`resume` after each reconnect.

A finished transfer is kept for ``linger`` seconds (so a repeated last chunk still gets its
``xfer.done``), then forgotten. At most ``max_active`` transfers run at once; an offer beyond
that is declined at once. Messages for unknown transfer ids are dropped (a forgotten transfer,
or garbage): they cannot change anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from msgrlib.transfer.errors import TransferProtocolError, TransferStateError
from msgrlib.transfer.machine import (
    DEFAULT_STALL_TIMEOUT,
    Event,
    Receiver,
    Sender,
    Source,
)
from msgrlib.transfer.messages import Offer, parse_message

#: Transfers running at once, both directions together: enough for a few files in parallel;
#: a peer flooding offers gets declines, not memory.
DEFAULT_MAX_ACTIVE = 8


@dataclass(frozen=True)
class Offered:
    """The peer offers something: show ``receiver.offer`` (escaped) and ``receiver.problem``,
    then accept or decline it."""

    receiver: Receiver


Machine = Sender | Receiver


class Transfers:
    def __init__(self, *, max_active: int = DEFAULT_MAX_ACTIVE,
                 linger: float = DEFAULT_STALL_TIMEOUT,
                 receiver_options: dict[str, Any] | None = None) -> None:
        self._machines: dict[str, Machine] = {}
        self._finished_at: dict[str, float] = {}
        self._max_active = max_active
        self._linger = linger
        self._receiver_options = receiver_options or {}
        self._out: list[dict[str, Any]] = []
        self._events: list[tuple[str, Event | Offered]] = []

    def __contains__(self, transfer_id: str) -> bool:
        return transfer_id in self._machines

    def get(self, transfer_id: str) -> Machine | None:
        return self._machines.get(transfer_id)

    @property
    def active(self) -> int:
        return sum(1 for m in self._machines.values() if not _terminal(m))

    def send(self, offer: Offer, source: Source, now: float, **sender_options: Any) -> Sender:
        """Start sending: the offer goes out with the next :meth:`take_outgoing`. Raises
        :class:`TransferStateError` if ``max_active`` transfers run or the id is taken."""
        if offer.t in self._machines:
            raise TransferStateError("that transfer id is already in use")
        if self.active >= self._max_active:
            raise TransferStateError(f"{self._max_active} transfers are already running; "
                                     "wait for one to finish")
        sender = Sender(offer, source, now, **sender_options)
        self._machines[offer.t] = sender
        self._collect(offer.t, sender, now)
        return sender

    def handle(self, obj: dict[str, Any], now: float) -> None:
        """An opened ``xfer.*`` plaintext from the peer. Raises
        :class:`TransferProtocolError` if it is malformed and names no transfer we know (a
        malformed message for a known transfer fails that transfer, both sides told)."""
        try:
            msg = parse_message(obj)
        except TransferProtocolError as exc:
            tid = obj.get("t") if isinstance(obj, dict) else None
            machine = self._machines.get(tid) if isinstance(tid, str) else None
            if machine is None or _terminal(machine):
                raise
            machine.protocol_error(str(exc))
            self._collect(machine.transfer_id, machine, now)
            return
        machine = self._machines.get(msg.t)
        if machine is None:
            if isinstance(msg, Offer):
                self._new_offer(msg, now)
            return
        machine.handle(msg, now)
        self._collect(msg.t, machine, now)

    def _new_offer(self, offer: Offer, now: float) -> None:
        receiver = Receiver(offer, now, **self._receiver_options)
        self._machines[offer.t] = receiver
        if self.active > self._max_active:
            receiver.decline("too many transfers at once; try again later")
        else:
            self._events.append((offer.t, Offered(receiver)))
        self._collect(offer.t, receiver, now)

    def after_local(self, transfer_id: str, now: float) -> None:
        """Call after ``accept``/``decline``/``cancel`` on a machine, to queue what it sends."""
        machine = self._machines.get(transfer_id)
        if machine is not None:
            self._collect(transfer_id, machine, now)

    def cancel_all(self, reason: str, now: float) -> None:
        """Stop every running transfer (the program is ending): each peer is told
        (``cancelled``), and a receiver discards what it wrote."""
        for tid, machine in self._machines.items():
            if not _terminal(machine):
                machine.cancel(reason)
                self._collect(tid, machine, now)

    def tick(self, now: float) -> None:
        for tid, machine in list(self._machines.items()):
            machine.tick(now)
            self._collect(tid, machine, now)
            done_at = self._finished_at.get(tid)
            if done_at is not None and now - done_at > self._linger:
                del self._machines[tid]
                del self._finished_at[tid]

    def resume(self, now: float) -> None:
        for tid, machine in self._machines.items():
            machine.resume(now)
            self._collect(tid, machine, now)

    def take_outgoing(self) -> list[dict[str, Any]]:
        """Plaintext objects to seal (as JSON) and send, in order; the queue is emptied."""
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[tuple[str, Event | Offered]]:
        events, self._events = self._events, []
        return events

    def _collect(self, tid: str, machine: Machine, now: float) -> None:
        self._out += [msg.to_obj() for msg in machine.take_outgoing()]
        self._events += [(tid, e) for e in machine.take_events()]
        if _terminal(machine):
            self._finished_at.setdefault(tid, now)


def _terminal(machine: Machine) -> bool:
    return machine.is_finished()


__all__ = ["DEFAULT_MAX_ACTIVE", "Offered", "Transfers"]
