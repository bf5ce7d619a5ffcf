"""What the chat core tells a UI: one frozen dataclass per kind of event.

:meth:`msgrlib.client.core.ChatCore.take_events` returns them in order. Every
string in them that a peer or the relay chose is raw: the UI escapes it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Received:
    """A message from the peer, shown once.

    ``late`` is True when a message the peer wrote after this one was shown
    first (it arrived out of order): the UI marks it as such.
    """

    sender: str
    text: str
    sent_at: float      # sender's Unix time
    expires_at: float   # Unix time the UI hides it: the relay's, never past sent_at + ttl
    ttl: int
    late: bool = False


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


@dataclass(frozen=True)
class HandshakeRetry:
    """The relay refused to start a handshake now (its per-pair limit);
    the client tries again by itself at Unix time ``at`` (sender's clock).
    ``at`` is None once a try is under way again."""

    at: float | None
    reason: str


@dataclass(frozen=True)
class TransferEvent:
    """News of a file or secret transfer (``msgrlib.transfer``): ``event`` is a
    machine event (Accepted, Declined, Progress, Completed, Failed) or an
    ``Offered`` carrying the ``Receiver`` to accept or decline. Names and
    reasons in it are the peer's: escape them."""

    transfer_id: str
    event: object


Event = (Received | Notice | Accepted | Delivered | Undelivered | Presence | SessionStarted
         | HandshakeRetry | TransferEvent)


@dataclass(frozen=True)
class Status:
    """Connection news for the UI, from the asyncio layer: ``state`` is
    connecting, connected, disconnected or reconnecting; ``detail`` is a
    sentence."""

    state: str
    detail: str
    fingerprint: str | None = None
