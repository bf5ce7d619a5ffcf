"""The client's side of one relay connection, sans-I/O: frames in, events and frames out.

:class:`RelaySession` runs what happens between a client and its relay
around the chat itself: ``hello``, the name-ownership ``challenge`` and
``auth``, ``welcome`` and its limits, heartbeats, ``shutdown`` and fatal
errors. The asyncio layer (:mod:`msgrlib.client.connection`) reads decoded
frames and passes each to :meth:`RelaySession.receive`, acts on the events it
returns, and writes what :meth:`RelaySession.frames_to_send` hands out. It owns
the clock and every timeout; this module owns no socket, clock or randomness.

Frames for the chat (``accepted``, ``deliver``, ``expired``, ``presence`` and
non-fatal ``error``) are parsed and checked once, by :mod:`msgrlib.protocol`,
and passed on as :class:`ForChat`; malformed ones as :class:`Ignored`.

States (an Enum and one table, :data:`TRANSITIONS`; CLOSED is terminal)::

    IDLE --start--> HELLO_SENT --challenge--> AUTH_SENT --welcome--> READY
    any --(fatal error | shutdown | bad frame before READY | close)--> CLOSED

Errors::

    MsgrError
    └── SessionError     local: a method called in a state that does not allow it
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from nacl.signing import SigningKey

from msgrlib import protocol
from msgrlib.errors import LocalError
from msgrlib.protocol import ErrorCode


class SessionError(LocalError):
    """The caller used the session in a state that does not allow it."""

    code = "session_state"


class SessionState(enum.Enum):
    IDLE = "idle"
    HELLO_SENT = "hello_sent"     # waiting for challenge
    AUTH_SENT = "auth_sent"       # waiting for welcome
    READY = "ready"
    CLOSED = "closed"


S = SessionState

#: Every allowed (state, input) -> next state. Inputs are the session's own
#: steps ("start", "ping", "close") and the type of each relay frame. An input
#: not listed for the current state ends the session (CLOSED; a relay frame
#: out of place is a protocol error).
TRANSITIONS: dict[tuple[SessionState, str], SessionState] = {
    (S.IDLE, "start"): S.HELLO_SENT,
    (S.HELLO_SENT, "challenge"): S.AUTH_SENT,
    (S.AUTH_SENT, "welcome"): S.READY,
    **{(S.READY, kind): S.READY
       for kind in ("accepted", "deliver", "expired", "presence", "pong", "error", "ping",
                    "allocated", "joined", "nameplate_gone")},
    (S.READY, "shutdown"): S.CLOSED,
    **{(state, "close"): S.CLOSED for state in SessionState},
}


# -- events ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Ready:
    """``welcome`` arrived: the name is ours on this connection."""

    relay: str | None            # the relay process's id
    limits: protocol.Limits


@dataclass(frozen=True)
class ForChat:
    """A checked frame for the chat core; ``raw`` is the object it came from."""

    frame: protocol.RelayFrame
    raw: dict[str, Any]


@dataclass(frozen=True)
class Ignored:
    """A frame after ``welcome`` that breaks the protocol; dropped.

    ``reason`` comes from the relay's data: escape it before showing it."""

    kind: str
    reason: str


@dataclass(frozen=True)
class Ended:
    """The connection is over (the session is CLOSED).

    ``code`` is the relay's error code (or ``protocol`` when the relay broke
    the protocol, ``shutting_down`` for a ``shutdown``); ``permanent`` if
    reconnecting with the same name and key cannot help. ``message`` is the
    relay's sentence or ours, raw: escape it before showing it.
    """

    code: ErrorCode | str
    message: str
    permanent: bool


SessionEvent = Ready | ForChat | Ignored | Ended


class RelaySession:
    """One connection's session with the relay, from ``hello`` to its end.

    ``tls_fingerprint`` is the relay certificate's fingerprint when the
    connection is TLS (checked by the caller): the ownership signature is
    bound to it. Without TLS it is bound to the id the relay's ``challenge``
    advertises.
    """

    def __init__(self, user: str, identity: SigningKey, *,
                 tls_fingerprint: str | None = None) -> None:
        self.user = user
        self.identity = identity
        self.tls_fingerprint = tls_fingerprint
        self.state = SessionState.IDLE
        self.relay: str | None = None
        self.limits = protocol.Limits()
        self._out: list[dict[str, Any]] = []

    # -- the caller's steps ----------------------------------------------------------------

    def start(self) -> None:
        """Queue ``hello``."""
        self._step("start")
        key = bytes(self.identity.verify_key)
        self._out.append(protocol.Hello(user=self.user, key=key).to_json())

    def ping(self) -> None:
        """Queue a heartbeat (READY only)."""
        self._step("ping")
        self._out.append(protocol.Ping().to_json())

    def close(self) -> None:
        """End the session; a READY one says ``bye`` (frees the name at the relay)."""
        if self.state is SessionState.READY:
            self._out.append(protocol.Bye().to_json())
        self.state = SessionState.CLOSED

    def frames_to_send(self) -> list[dict[str, Any]]:
        """The frames queued since the last call, in order."""
        out, self._out = self._out, []
        return out

    @property
    def ready(self) -> bool:
        return self.state is SessionState.READY

    # -- the relay's frames ------------------------------------------------------------------

    def receive(self, obj: dict[str, Any]) -> list[SessionEvent]:
        """One decoded frame from the relay; returns what it means.

        Never raises on the frame's content: a frame that breaks the protocol
        ends the session before ``welcome`` (:class:`Ended`, code
        ``protocol``) and is dropped after it (:class:`Ignored`). Raises
        :class:`SessionError` if the session has not started or has ended.
        """
        if self.state in (SessionState.IDLE, SessionState.CLOSED):
            raise SessionError(f"no frame is expected in state {self.state.value}")
        try:
            frame = protocol.parse_relay_frame(obj)
        except protocol.FrameError as err:
            if self.state is SessionState.READY and err.kind is not None:
                return [Ignored(err.kind[:20], str(err))]
            return [self._end(ErrorCode.PROTOCOL, f"the relay sent a malformed frame ({err})")]
        kind = obj["type"]
        if isinstance(frame, protocol.Error) and (frame.fatal or not self.ready):
            permanent = frame.code in protocol.PERMANENT_CODES
            return [self._end(frame.code, frame.message or str(frame.code), permanent)]
        if isinstance(frame, protocol.Shutdown):
            return [self._end(ErrorCode.SHUTTING_DOWN,
                              frame.message or "the relay is shutting down", False)]
        nxt = TRANSITIONS.get((self.state, kind))
        if nxt is None:
            expected = {SessionState.HELLO_SENT: "challenge",
                        SessionState.AUTH_SENT: "welcome"}.get(self.state, "another frame")
            return [self._end(ErrorCode.PROTOCOL,
                              f"the relay sent {kind[:20]!r} instead of {expected!r}")]
        if isinstance(frame, protocol.Challenge):
            return self._on_challenge(frame, nxt)
        if isinstance(frame, protocol.Welcome):
            if frame.user != self.user:
                return [self._end(ErrorCode.PROTOCOL, "the relay welcomed another name")]
            self.state = nxt
            self.relay, self.limits = frame.relay, frame.limits
            return [Ready(frame.relay, frame.limits)]
        self.state = nxt
        if isinstance(frame, protocol.Pong):
            return []
        return [ForChat(frame, obj)]

    def _on_challenge(self, frame: protocol.Challenge,
                      nxt: SessionState) -> list[SessionEvent]:
        if self.tls_fingerprint is not None:
            binding = protocol.tls_binding(self.tls_fingerprint)
        elif frame.relay is not None:
            binding = protocol.id_binding(frame.relay)
        else:
            return [self._end(ErrorCode.PROTOCOL, "the relay's challenge names no relay id "
                              "(a relay older than this client: upgrade it)")]
        self.state = nxt
        message = protocol.auth_message(frame.nonce, binding, self.user)
        self._out.append(protocol.Auth(sig=self.identity.sign(message).signature).to_json())
        return []

    # -- internals ----------------------------------------------------------------------

    def _step(self, what: str) -> None:
        nxt = TRANSITIONS.get((self.state, what))
        if nxt is None:
            raise SessionError(f"cannot {what} in state {self.state.value}")
        self.state = nxt

    def _end(self, code: ErrorCode | str, message: str, permanent: bool = True) -> Ended:
        self.state = SessionState.CLOSED
        self._out.clear()
        return Ended(code, message, permanent)


__all__ = ["Ended", "ForChat", "Ignored", "Ready", "RelaySession", "SessionError",
           "SessionEvent", "SessionState", "TRANSITIONS"]
