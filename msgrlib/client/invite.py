"""The client's side of an invite's rendezvous at the relay, sans-I/O (PROTOCOL.md 3.6).

Before the chat of an invite can start, the two sides must learn each other's
routing name. Each connects under a fresh random name (:func:`invite_name`);
the inviter sends ``allocate`` and makes its code from the nameplate it gets
(:class:`InviteReady`: show it), the joiner sends ``join`` with the number of
the code it was given, and the relay answers both with ``joined``. Then
:attr:`Rendezvous.peer` is the other side's name and :meth:`Rendezvous.key`
the CPace PRS from the code (``msgrlib.invite.invite_prs``): the chat core is
paired with them (:meth:`ChatCore.pair_with`) and runs as for a named pair.

States (one table; DONE and FAILED are terminal)::

    NEW --start--> WAITING --allocated (inviter)--> WAITING --joined--> DONE
    WAITING --nameplate_gone | nameplate error--> FAILED
    WAITING --cancel (inviter, code known)--> CANCELLING
    CANCELLING --nameplate_gone | joined | error--> FAILED  (InviteError "cancelled")

:meth:`Rendezvous.cancel` gives the nameplate back with the relay's ``cancel``
frame (the screen's ``/cancel``); the relay's ``nameplate_gone`` ends it. A
``joined`` that crossed the cancel (the other side typed the code just then)
ends it too: the user asked to stop, so the chat does not start.

Errors::

    MsgrError
    └── LocalError
        └── InviteError  the invite cannot go on (lapsed, cancelled, no such
                         number, the relay refused); ``code`` says which
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msgrlib import protocol
from msgrlib.errors import LocalError
from msgrlib.invite import InviteCode, invite_prs, make_code
from msgrlib.util.safetext import escape

#: Random bytes in an invite's routing name: two invites never pick the same name.
NAME_BYTES = 8


class InviteError(LocalError):
    """``code``: expired, cancelled, lost, protocol, or the relay's nameplate code."""

    code = "invite"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def invite_name(rng: Callable[[int], bytes]) -> str:
    """A fresh routing name for one invite: ``i-`` and 16 hex digits."""
    return "i-" + rng(NAME_BYTES).hex()


@dataclass(frozen=True)
class InviteReady:
    """The inviter's code: show it, and what the other person types."""

    code: str
    ttl: float


@dataclass(frozen=True)
class PeerJoined:
    """The other side arrived; the chat starts under ``peer``'s routing name."""

    peer: str


class Step(enum.Enum):
    NEW = "new"
    WAITING = "waiting"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"


TRANSITIONS: dict[tuple[Step, str], Step] = {
    (Step.NEW, "start"): Step.WAITING,
    (Step.WAITING, "allocated"): Step.WAITING,
    (Step.WAITING, "joined"): Step.DONE,
    (Step.WAITING, "fail"): Step.FAILED,
    (Step.WAITING, "cancel"): Step.CANCELLING,
    (Step.CANCELLING, "fail"): Step.FAILED,
}


class Rendezvous:
    """One invite's meeting at the relay: ``code`` given means join it, None
    means invite (``rng`` draws the code's words)."""

    def __init__(self, code: InviteCode | None = None, *,
                 rng: Callable[[int], bytes]) -> None:
        self.code = code
        self.inviter = code is None
        self.rng = rng
        self.step = Step.NEW
        self.peer: str | None = None

    @property
    def done(self) -> bool:
        return self.step is Step.DONE

    def _go(self, what: str) -> None:
        nxt = TRANSITIONS.get((self.step, what))
        if nxt is None:
            raise InviteError("protocol", f"the relay sent {what!r} out of place")
        self.step = nxt

    def start(self) -> list[dict[str, Any]]:
        """The frame to send once the relay welcomed us."""
        self._go("start")
        if self.code is None:
            return [protocol.Allocate().to_json()]
        return [protocol.Join(self.code.nameplate).to_json()]

    @property
    def can_cancel(self) -> bool:
        """An inviter whose nameplate the relay gave and nobody has joined yet."""
        return self.inviter and self.step is Step.WAITING and self.code is not None

    def cancel(self) -> list[dict[str, Any]]:
        """The frame that gives the nameplate back (nothing if :attr:`can_cancel` is
        false); the relay answers ``nameplate_gone`` and :meth:`handle` then raises
        ``InviteError("cancelled")``."""
        if not self.can_cancel:
            return []
        assert self.code is not None
        self._go("cancel")
        return [protocol.Cancel(self.code.nameplate).to_json()]

    def handle(self, frame: protocol.RelayFrame) -> list[InviteReady | PeerJoined]:
        """A relay frame while waiting; other frames (presence...) are ignored.
        Raises :class:`InviteError` when the invite cannot go on."""
        if self.step is Step.CANCELLING and (
                isinstance(frame, protocol.Error)
                or (isinstance(frame, (protocol.Joined, protocol.NameplateGone))
                    and self.code is not None and frame.nameplate == self.code.nameplate)):
            self._go("fail")
            if isinstance(frame, protocol.Joined):
                raise InviteError("cancelled", "the invite was cancelled (the other side "
                                  "typed the code just as you cancelled; the chat did not "
                                  "start)")
            raise InviteError("cancelled", "the invite was cancelled: the relay freed its "
                              "number")
        if isinstance(frame, protocol.Allocated) and self.inviter and self.code is None:
            self._go("allocated")
            self.code = make_code(frame.nameplate, self.rng)
            return [InviteReady(str(self.code), frame.ttl)]
        if isinstance(frame, protocol.Joined) and self.code is not None \
                and frame.nameplate == self.code.nameplate:
            self._go("joined")
            self.peer = frame.peer
            return [PeerJoined(frame.peer)]
        if isinstance(frame, protocol.NameplateGone) and self.code is not None \
                and frame.nameplate == self.code.nameplate:
            self._go("fail")
            if frame.reason == "expired":
                raise InviteError("expired", "nobody used the invite code before it expired; "
                                  "start a new one")
            raise InviteError("cancelled", "the invite was cancelled")
        if isinstance(frame, protocol.Error):
            # Before the chat, whatever the relay refuses is about the invite.
            self._go("fail")
            if frame.code == protocol.ErrorCode.NO_NAMEPLATE:
                raise InviteError(str(frame.code), "no invite with that number is waiting at "
                                  "this relay: it was used, cancelled or has expired (or the "
                                  "number is mistyped); ask for a new code")
            raise InviteError(str(frame.code), f"relay: {escape(frame.message)}")
        return []

    def key(self) -> bytes:
        """CPace's PRS for this invite (after the code is known)."""
        if self.code is None:
            raise InviteError("protocol", "no code yet")
        return invite_prs(self.code)


__all__ = ["InviteError", "InviteReady", "PeerJoined", "Rendezvous", "Step",
           "TRANSITIONS", "invite_name"]
