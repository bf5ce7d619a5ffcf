"""The relay's protocol logic, sans-I/O: decoded frames in, encoded frames out.

This module owns who is connected, who owns which name, the limits, and the
routing of opaque ciphertext between mailboxes. It never touches a socket, a
clock or a random source of its own: ``server.py`` (the asyncio layer) feeds it
decoded frames with :meth:`Relay.receive`, gives it a :class:`Link` per
connection to write encoded frames to, and calls :meth:`Relay.tick` when the
deadline it asked for arrives. It never imports the end-to-end crypto: bodies
are strings it stores and forwards without looking inside.

Relay errors are :class:`msgrlib.errors.Refused`, one subclass per error
code, sent to the client as ``{"type": "error", ...}``: ``ProtocolViolation``
(a malformed request: error frame, connection closed), or any other code (a
well-formed request the relay will not serve: rate, mailbox, name taken...).
The client raises the same classes when it reads such a frame.

Per-connection states (failure is terminal)::

    HELLO --hello--> AUTH --auth ok--> READY --(bye / error / lost)--> CLOSED

Backends: what must be shared between relay processes (who owns a name, the
mailboxes, the handshake buckets, presence) goes through a few *backend
steps*, methods of :class:`Relay`: ``_take_name``, ``_store``, ``_ack_ids``,
``_is_online`` and ``_release``. Here they use the in-memory store and claim
table and answer at once (the default, and the fast path). The engine
backend (:mod:`msgrlib.relay.cluster`) overrides them to ask Redis/Valkey,
which answers later: a step then calls :meth:`Relay._later`, and the
connection's next frames wait in ``Client.backlog`` until it answers, so
every connection's frames are still answered in the order they came.
Everything else (validation, states, signature checks, buckets, frame
formatting, timeouts, backpressure) stays here, for both.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import framing
from msgrlib import protocol
from msgrlib.errors import MsgrError, ProtocolViolation, Refused  # noqa: F401 (re-exported)
from msgrlib.invite.nameplates import NameplateError, Nameplates
from msgrlib.protocol import AUTH_LABEL, PROTOCOL_VERSION, ErrorCode  # noqa: F401 (re-exported)
from msgrlib.ratelimit import TokenBucket
from msgrlib.relay.config import RelayConfig
from msgrlib.relay.store import MemoryStore, MessageStore, StoreError
from msgrlib.speedups import accepted_json, deliver_json
from msgrlib.util.names import is_valid_name

log = logging.getLogger("msgr.relay")

#: Nameplate joins one address (an IPv6 /64) may make: a burst of 10, then one
#: every 6 s. A person joins once per code; each join uses an invite up, so
#: without a limit one client could burn every waiting invite in a second.
JOIN_BURST = 10.0
JOIN_RATE = 1 / 6

#: Handshake messages one attempt may send (the responder's req, then init,
#: resp, share, confirm): a ``handshake_limited`` refusal's ``retry_after`` is
#: when the pair's bucket holds that many again (or its whole burst, if
#: smaller), so the retry is not refused halfway.
HS_ATTEMPT_FRAMES = 5

#: Frames waiting behind an unanswered backend step (engine backend only)
#: past which the connection is no longer read from until they are answered.
BACKLOG_PAUSE = 64
#: A safety net: past this many, the connection is closed (reading pauses
#: long before, so only a link that cannot pause gets here).
MAX_BACKLOG = 65536


class Link(Protocol):
    """What the relay needs from a connection's transport."""

    address: str

    def write(self, data: bytes) -> None:
        """Queue encoded frames; they are flushed after the current batch."""

    def close(self) -> None:
        """Flush what is queued, then close."""


class State(enum.Enum):
    HELLO = "hello"
    AUTH = "auth"
    READY = "ready"
    CLOSED = "closed"


class Client:
    """The relay's view of one connection."""

    __slots__ = ("link", "state", "user", "key", "nonce", "msgs", "bytes", "watching",
                 "paused", "origin", "backlog", "steps", "conn", "said_bye", "__weakref__")

    def __init__(self, link: Link, now: float, config: RelayConfig) -> None:
        self.link = link
        self.state = State.HELLO
        self.user: str | None = None
        self.key: bytes | None = None
        self.nonce: bytes | None = None
        self.msgs = TokenBucket(config.rate_messages, config.burst_messages, now)
        self.bytes = TokenBucket(config.rate_bytes, config.burst_bytes, now)
        self.watching: set[str] = set()
        #: True while the client's write buffer is over the limit: deliveries
        #: wait in the store instead of piling up in memory.
        self.paused = False
        #: Whose allowance its messages count against (see :func:`origin_of`).
        self.origin = origin_of(getattr(link, "host", link.address))
        #: Not None while a backend step for this connection is unanswered:
        #: the frames that came meanwhile, answered once it is.
        self.backlog: deque[dict[str, Any]] | None = None
        #: Backend steps unanswered for this connection (a step's answer
        #: may start the next one: the backlog waits for both).
        self.steps = 0
        #: The connection's id at the engine backend (None in memory).
        self.conn: str | None = None
        #: Set when the connection ends: whether the client said ``bye``.
        self.said_bye = False

    def __repr__(self) -> str:
        return f"<Client {self.user or '?'} {self.state.value} {self.link.address}>"


@dataclass
class Claim:
    """A name bound to the Ed25519 key that first used it.

    ``since`` is the Unix time the key took the name (shown in ``name_owned``);
    ``released_at`` (clock seconds) and ``said_bye`` describe its last
    connection once none is left.
    """

    key: bytes
    since: float
    client: Client | None = None
    released_at: float = 0.0
    said_bye: bool = False
    #: The name has its one entry in the claim heap (so reconnecting in a loop
    #: cannot grow the heap: one entry per name, moved on when it comes due).
    queued: bool = False


@dataclass
class Stats:
    connections: int = 0
    accepted: int = 0
    delivered: int = 0
    expired: int = 0
    refused: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def origin_of(host: str) -> str:
    """The key per-address store shares count by: the IP address, or for IPv6
    its /64, since one host usually gets a whole /64 to pick addresses from."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return host
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


def _utc_time(wall: float) -> str:
    """``2026-12-02 13:52:07 UTC``: a relay time shown in an error sentence."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


def deliver_frame(msg_id: int, sender: str, kind: str, ttl: int, expires_at: str, body: str,
                  *, max_size: int = framing.DEFAULT_MAX_FRAME) -> bytes:
    """The deliver frame (formatted directly: ``speedups.deliver_json``)."""
    return framing.frame_body(deliver_json(msg_id, sender, kind, ttl, expires_at, body).encode(),
                              max_size=max_size)


def accepted_frame(ref: int, msg_id: int, ttl: int, expires_at: str) -> bytes:
    """The accepted frame for an integer ``ref`` (``speedups.accepted_json``)."""
    return framing.frame_body(accepted_json(ref, msg_id, ttl, expires_at).encode())


class Relay:
    """The relay's state and rules. One instance serves every connection.

    ``clock`` is monotonic seconds (expiry, rates), ``wallclock`` Unix seconds
    (only shown to clients), ``rng(n)`` returns n random bytes, and
    ``arm(deadline)`` asks the I/O layer to call :meth:`tick` at ``deadline``
    (clock seconds); it is called only when the earliest deadline moves earlier.
    """

    def __init__(self, config: RelayConfig | None = None, *,
                 clock: Callable[[], float], wallclock: Callable[[], float],
                 rng: Callable[[int], bytes],
                 arm: Callable[[float], None] = lambda deadline: None,
                 store: MessageStore | None = None,
                 tls_fingerprint: str | None = None,
                 spawn: Callable[[Awaitable[Any], Callable[[Any, BaseException | None], None]],
                                 None] | None = None) -> None:
        self.config = config = config or RelayConfig()
        self.clock = clock
        self.wallclock = wallclock
        self.rng = rng
        self._arm_cb = arm
        #: ``spawn(step, done)``: run an awaitable backend step and call
        #: ``done(result, error)`` in the loop (given by the I/O layer; only
        #: backends that answer later use it).
        self.spawn = spawn
        self._armed: float | None = None
        self.store: MessageStore = store or MemoryStore(
            mailbox_messages=config.mailbox_messages,
            mailbox_bytes=config.mailbox_bytes, store_bytes=config.store_bytes,
            share_bytes=config.share_bytes, hs_reserve_bytes=config.hs_reserve_bytes,
            # A random start in [1, 2**48]: ids stay unique across restarts and
            # below 2**53, so any JSON implementation reads them exactly.
            first_id=1 + int.from_bytes(rng(6), "big"))
        self.claims: dict[str, Claim] = {}
        self._claim_heap: list[tuple[float, str]] = []
        self.watchers: dict[str, set[Client]] = {}
        self._hs_buckets: dict[tuple[str, str], TokenBucket] = {}
        self._claim_buckets: dict[str, TokenBucket] = {}
        self._join_buckets: dict[str, TokenBucket] = {}
        self._prune_at: dict[str, float] = {}  # table -> no pruning before (clock s)
        self.stats = Stats()
        self.closing = False
        self._handlers: dict[str, Callable[[Client, dict[str, Any]], None]] = {
            "send": self._on_send, "ack": self._on_ack, "ping": self._on_ping,
            "watch": self._on_watch, "bye": self._on_bye,
            "allocate": self._on_allocate, "join": self._on_join, "cancel": self._on_cancel,
        }
        #: Invites waiting for their second side (PROTOCOL.md 3.6); each
        #: owner is a connected name (a connection's end frees its nameplates).
        self.nameplates = Nameplates(ttl=config.nameplate_ttl)
        self._encode = framing.encode_frame
        self._max_out = config.max_frame + 1024  # our frames: a full body plus fields
        #: Told to clients in welcome: a client that reconnects to a
        #: different one knows the messages it left here are gone.
        self.instance = rng(8).hex()
        #: What a client's name-ownership signature names this relay by: the
        #: certificate's fingerprint with TLS, else the id in ``challenge``.
        self.binding = (protocol.tls_binding(tls_fingerprint) if tls_fingerprint
                        else protocol.id_binding(self.instance))
        self._expiry_ms = -1  # see _expiry_json
        self._expiry_text = ""

    # -- connection lifecycle -------------------------------------------------

    def connect(self, link: Link) -> Client:
        """A new connection; it must say hello within the hello timeout."""
        self.stats.connections += 1
        client = Client(link, self.clock(), self.config)
        self._event(logging.DEBUG, "connect", addr=link.address)
        return client

    def disconnect(self, client: Client, *, said_bye: bool = False) -> None:
        """The connection ended; ``said_bye`` if the client closed it cleanly."""
        if client.state is State.CLOSED:
            return
        was_ready = client.state is State.READY
        client.state = State.CLOSED
        for name in client.watching:
            watchers = self.watchers.get(name)
            if watchers is not None:
                watchers.discard(client)
                if not watchers:
                    del self.watchers[name]
        self._unwatch(client)
        client.watching.clear()
        queued, client.backlog = client.backlog, None
        # A bye still waiting behind an unanswered backend step was said: the
        # client closed cleanly, whatever the relay had got round to.
        if queued and not said_bye:
            said_bye = any(frame.get("type") == "bye" for frame in queued)
        client.said_bye = said_bye
        user = client.user
        if user is not None and was_ready:
            if queued:
                self._abandon(client, user, queued)
            self._release(client, user, said_bye)
        self._event(logging.INFO, "disconnect", addr=client.link.address)

    def _release(self, client: Client, user: str, said_bye: bool) -> None:
        """Backend step: ``client`` no longer holds ``user``."""
        claim = self.claims.get(user)
        if claim is not None and claim.client is client:
            # Bye or not, the name stays bound to its key for claim_ttl: a
            # message may still be on its way to it, and whoever took the
            # name next could read and ack it (issue: mailbox draining).
            claim.client = None
            claim.said_bye = said_bye
            claim.released_at = now = self.clock()
            if not claim.queued:
                claim.queued = True
                heapq.heappush(self._claim_heap, (now + self.config.claim_ttl, user))
                self._arm(now + self.config.claim_ttl)
            self._presence(user, False)
            if self.nameplates.count_for(user):  # O(n): only for an inviter
                self.nameplates.cancel_all(user, now)

    def _connected(self, name: str) -> Client | None:
        """This relay's connection that holds ``name``, if any."""
        claim = self.claims.get(name)
        return claim.client if claim is not None else None

    def _abandon(self, client: Client, user: str, queued: deque[dict[str, Any]]) -> None:
        """Backend step: the connection ended with frames still waiting
        behind an unanswered step (only a backend that answers later has
        any). Their sends get no ``accepted`` (the client resends them)."""

    def _unwatch(self, client: Client) -> None:
        """Backend step: a closing connection stops watching its names
        (``client.watching``); nothing to do in memory."""

    def receive(self, client: Client, msg: dict[str, Any]) -> None:
        """Handle one decoded frame from ``client``."""
        if client.state is State.CLOSED:
            return
        backlog = client.backlog
        if backlog is not None:  # a backend step is unanswered: keep the order
            backlog.append(msg)
            if len(backlog) >= BACKLOG_PAUSE:
                if len(backlog) >= MAX_BACKLOG:
                    self.fail(client, Refused("rate_limited", "you are sending faster than "
                                              "the relay can answer; slow down", fatal=True))
                    return
                pause = getattr(client.link, "pause_reading", None)
                if pause is not None:
                    pause()
            return
        try:
            kind = msg.get("type")
            if type(kind) is not str:
                raise ProtocolViolation("every frame needs a string 'type'")
            if client.state is State.READY:
                handler = self._handlers.get(kind)
                if handler is None:
                    raise ProtocolViolation(f"unknown message type {str(kind)[:32]!r}")
                handler(client, msg)
            elif client.state is State.HELLO:
                if kind != "hello":
                    raise ProtocolViolation("say hello first")
                self._on_hello(client, msg)
            else:
                if kind != "auth":
                    raise ProtocolViolation("answer the challenge with auth first")
                self._on_auth(client, msg)
        except Refused as err:
            self.fail(client, err, ref=msg.get("ref"))

    def _later(self, client: Client, step: Awaitable[Any],
               then: Callable[[Any, BaseException | None], None], *, ref: object = None) -> None:
        """Run a backend step that answers later; ``then(result, error)``
        continues the frame. The connection's next frames wait until then."""
        assert self.spawn is not None, "this backend answers at once"
        if client.backlog is None:
            client.backlog = deque()
        client.steps += 1

        def done(result: Any, error: BaseException | None) -> None:
            try:
                then(result, error)
            except Refused as err:
                if client.state is not State.CLOSED:
                    self.fail(client, err, ref=ref)
            client.steps -= 1
            if not client.steps:  # else a step ``then`` started waits first
                self._drain(client)

        self.spawn(step, done)

    def _drain(self, client: Client) -> None:
        """Answer the frames that waited behind a backend step, until one
        waits again."""
        queued = client.backlog
        client.backlog = None
        while queued and client.backlog is None and client.state is not State.CLOSED:
            self.receive(client, queued.popleft())
        if client.backlog is not None and queued:
            queued.extend(client.backlog)
            client.backlog = queued
        elif client.backlog is None and not client.paused:
            resume = getattr(client.link, "resume_reading", None)
            if resume is not None:
                resume()

    def fail(self, client: Client, err: MsgrError, *, ref: object = None) -> None:
        """Send ``err`` as an error frame; close the connection if it is fatal.

        Also used by the I/O layer for framing errors and timeouts.
        """
        fatal = getattr(err, "fatal", True)
        frame: dict[str, Any] = {"type": "error", "code": err.code, "message": str(err),
                                 "fatal": fatal}
        if type(ref) is int:
            frame["ref"] = ref
        retry_after = getattr(err, "retry_after", None)
        if retry_after is not None:
            frame["retry_after"] = retry_after
        self.stats.errors[err.code] = self.stats.errors.get(err.code, 0) + 1
        self._event(logging.INFO if fatal else logging.DEBUG, "error", code=err.code,
                    fatal=fatal, addr=client.link.address)
        self._write(client, frame)
        if fatal:
            client.link.close()
            self.disconnect(client)

    def shutdown(self) -> None:
        """Tell every connected client the relay is going away, then close them."""
        self.closing = True
        for claim in list(self.claims.values()):
            client = claim.client
            if client is not None:
                self._write(client, {"type": "shutdown",
                                     "message": "the relay is shutting down"})
                client.link.close()
                self.disconnect(client)

    # -- timers ------------------------------------------------------------------

    def _arm(self, deadline: float) -> None:
        if self._armed is None or deadline < self._armed:
            self._armed = deadline
            self._arm_cb(deadline)

    def next_deadline(self) -> float | None:
        """The earliest moment :meth:`tick` has work to do."""
        candidates = [t for t in (self.store.next_expiry(),
                                  self._claim_heap[0][0] if self._claim_heap else None,
                                  self.nameplates.next_expiry())
                      if t is not None]
        return min(candidates) if candidates else None

    def tick(self) -> float | None:
        """Expire messages and lapsed name claims; return the next deadline.

        Work is proportional to what expires, never to what is stored.
        """
        now = self.clock()
        self._armed = None
        expired = self.store.pop_expired(now)
        if expired:
            self.stats.expired += len(expired)
            for held in expired:
                claim = self.claims.get(held.sender)
                if claim is not None and claim.client is not None:
                    self._write(claim.client, {"type": "expired", "id": held.id,
                                               "to": held.recipient})
            self._event(logging.DEBUG, "expire", count=len(expired))
        for number, owner in self.nameplates.expire(now):
            owner_client = self._connected(owner)
            if owner_client is not None:
                self._write(owner_client, protocol.NameplateGone(number, "expired").to_json())
        heap = self._claim_heap
        while heap and heap[0][0] <= now:
            _, name = heapq.heappop(heap)
            claim = self.claims.get(name)
            if claim is None:
                continue
            claim.queued = False
            if claim.client is not None:
                continue  # connected again: its next disconnect queues it anew
            if now - claim.released_at < self.config.claim_ttl:
                # Reconnected and left again since: due later (one entry per name).
                claim.queued = True
                heapq.heappush(heap, (claim.released_at + self.config.claim_ttl, name))
                continue
            if self.store.count_for(name):
                # Messages still wait for this name: keep it owned until they
                # are gone, so nobody else can claim it and drain them.
                retry = now + self.config.ttl_max
                claim.queued = True
                heapq.heappush(heap, (retry, name))
                continue
            del self.claims[name]
        deadline = self.next_deadline()
        if deadline is not None:
            self._arm(deadline)
        return deadline

    # -- handlers --------------------------------------------------------------

    def _on_hello(self, client: Client, msg: dict[str, Any]) -> None:
        try:
            hello = protocol.parse_hello(msg)
        except protocol.FrameError as err:
            raise Refused(err.code, str(err), fatal=True) from None
        if self.closing:
            raise Refused("shutting_down", "the relay is shutting down", fatal=True)
        client.key = hello.key
        client.user = hello.user
        client.nonce = self.rng(32)
        client.state = State.AUTH
        self._write(client, protocol.Challenge(client.nonce, self.instance).to_json())

    def _on_auth(self, client: Client, msg: dict[str, Any]) -> None:
        try:
            sig = protocol.parse_auth(msg).sig
        except protocol.FrameError as err:
            raise Refused(err.code, str(err), fatal=True) from None
        user, key, nonce = client.user, client.key, client.nonce
        assert user is not None and key is not None and nonce is not None  # set by hello
        from nacl.exceptions import BadSignatureError
        from nacl.signing import VerifyKey

        try:
            VerifyKey(key).verify(protocol.auth_message(nonce, self.binding, user), sig)
        except (BadSignatureError, ValueError, TypeError):
            raise Refused("bad_signature", "the name-ownership signature does not verify",
                          fatal=True) from None
        client.nonce = None
        self._take_name(client, user, key)

    @property
    def relay_id(self) -> str:
        """What ``welcome.relay`` says: this process (a new one is a restart)."""
        return self.instance

    def _take_name(self, client: Client, user: str, key: bytes) -> None:
        """Backend step: bind ``user`` to ``key`` for ``client`` (or refuse),
        then welcome it and hand out what waits."""
        claim = self.claims.get(user)
        if claim is not None and claim.key != key:
            if claim.client is None and self._claim_lapsed(user, claim):
                del self.claims[user]
                claim = None
            else:
                raise Refused("name_owned", self._owned_reason(user, claim), fatal=True)
        if claim is None:
            if len(self.claims) >= self.config.max_names:
                raise Refused("relay_full", "the relay has too many names registered; "
                              "try again later", fatal=True)
            if not self._claim_allowed(client.origin):
                raise self._too_many_names()
            claim = self.claims[user] = Claim(key, since=self.wallclock())
        elif claim.client is not None:
            # Same key: the owner reconnected. Replace the stale connection now
            # instead of waiting for its heartbeat to time out.
            old = claim.client
            self.fail(old, Refused("replaced", "this name signed in from another connection",
                                   fatal=True))
        claim.client = client
        self._welcome(client, user)
        self._hand_out(client)
        self._presence(user, True)

    def _welcome(self, client: Client, user: str) -> None:
        client.state = State.READY
        self._event(logging.INFO, "ready", addr=client.link.address)
        self._event(logging.DEBUG, "ready-user", user=user)
        self._write(client, {"type": "welcome", "user": user, "v": PROTOCOL_VERSION,
                             "relay": self.relay_id,
                             "limits": self.config.limits_table()})

    def _owned_reason(self, user: str, claim: Claim) -> str:
        """What a ``name_owned`` refusal says: what happened, never advice the
        user already follows (a client with a kept key never sees this for its
        own name)."""
        since = _utc_time(claim.since)
        if claim.client is not None:
            return (f"the name {user!r} is in use right now by another client, with another "
                    f"key (it has held the name since {since}); close the other client or "
                    "pick another name")
        ago = max(self.clock() - claim.released_at, 0.0)
        how = "said bye" if claim.said_bye else "ended without saying bye"
        text = (f"the name {user!r} belongs to another key (since {since}); its last "
                f"connection {how} {ago:.0f} s ago")
        left = self.config.claim_ttl - ago
        if left > 0:
            text += (f", and a name stays bound to its key for {self.config.claim_ttl:g} s "
                     f"after its last connection ({max(left, 1):.0f} s more)")
        waiting = self.store.count_for(user)
        if waiting:
            text += (f"; {waiting} message{' waits' if waiting == 1 else 's wait'} for it, "
                     "and it stays bound until they are read or expire")
        return text + ". Wait, or pick another name"

    def _claim_lapsed(self, user: str, claim: Claim) -> bool:
        return (self.clock() - claim.released_at >= self.config.claim_ttl
                and not self.store.count_for(user))

    def _on_send(self, client: Client, msg: dict[str, Any]) -> None:
        config = self.config
        to = msg.get("to")
        body = msg.get("body")
        ttl = msg.get("ttl", config.ttl_default)
        kind = msg.get("kind", "msg")
        if type(body) is not str:
            raise ProtocolViolation("send needs a string body")
        # Performance: a claimed name passed is_valid_name when it was claimed,
        # so only names nobody holds need the regular expression (the type
        # check first: a list or dict cannot be looked up in a dict).
        if not (type(to) is str and to in self.claims) and not is_valid_name(to):
            raise Refused("bad_name", "invalid recipient name")
        if to == client.user:
            raise Refused("bad_recipient", "you cannot send messages to yourself")
        if type(ttl) is not int:
            raise ProtocolViolation("ttl must be an integer number of seconds")
        if kind != "msg" and kind != "hs":
            raise ProtocolViolation("kind must be 'msg' or 'hs'")
        ref = msg.get("ref")
        if ref is not None and type(ref) is not int:
            # Echoed in `accepted`: an integer, as PROTOCOL.md says. Any JSON
            # value would let a client make the echo larger than a frame.
            raise ProtocolViolation("ref must be an integer")
        now = self.clock()
        if not client.msgs.take(1.0, now) or not client.bytes.take(len(body), now):
            self.stats.refused += 1
            raise Refused("rate_limited", "you are sending too fast; slow down and resend")
        self._store(client, client.user, to, body, kind,  # type: ignore[arg-type]
                    config.clamp_ttl(ttl), ref, now)

    def _store(self, client: Client, user: str, to: str, body: str, kind: str, ttl: int,
               ref: int | None, now: float) -> None:
        """Backend step: the shared handshake bucket, then store the message,
        answer ``accepted`` and deliver it if its recipient is connected."""
        if kind == "hs":
            refusal = self._hs_refusal(user, to, now)
            if refusal is not None:
                self.stats.refused += 1
                raise refusal
        try:
            held = self.store.add(user, to, body, kind, ttl, now, self.wallclock(),
                                  client.origin)
        except StoreError as err:
            self.stats.refused += 1
            raise Refused(err.code, str(err)) from None
        # As _accepted, inlined: this is the relay's hottest path.
        self.stats.accepted += 1
        if log.isEnabledFor(logging.DEBUG):  # who talks to whom: debug only, never the body
            self._event(logging.DEBUG, "send", sender=user, to=to, kind=kind, size=len(body),
                        ttl=held.ttl)
        self._arm(held.expires_at)
        expires_at = self._expiry_json(held.expires_wall)  # once for both frames
        if ref is not None:  # an int: the frame formatted directly
            client.link.write(accepted_frame(ref, held.id, held.ttl, expires_at))
        else:
            self._write(client, {"type": "accepted", "id": held.id, "ttl": held.ttl,
                                 "expires_at": float(expires_at)})
        claim = self.claims.get(to)
        if claim is not None and claim.client is not None and not claim.client.paused:
            self._deliver(claim.client, held, expires_at)

    def _accepted(self, client: Client, held: Any, ref: int | None) -> str:
        """Answer ``accepted`` for ``held``; returns its expiry's JSON text."""
        self.stats.accepted += 1
        if log.isEnabledFor(logging.DEBUG):  # who talks to whom: debug only, never the body
            self._event(logging.DEBUG, "send", sender=held.sender, to=held.recipient,
                        kind=held.kind, size=len(held.body), ttl=held.ttl)
        expires_at = self._expiry_json(held.expires_wall)  # once for both frames
        if ref is not None:  # an int: the frame formatted directly
            client.link.write(accepted_frame(ref, held.id, held.ttl, expires_at))
        else:
            self._write(client, {"type": "accepted", "id": held.id, "ttl": held.ttl,
                                 "expires_at": float(expires_at)})
        return expires_at

    def _hs_refusal(self, a: str, b: str, now: float) -> Refused | None:
        """Why a handshake message between ``a`` and ``b`` is refused now, or None.
        The refusal's ``retry_after`` is when the pair's bucket holds a whole
        attempt again (PROTOCOL.md 3.5)."""
        pair = (a, b) if a < b else (b, a)
        config = self.config
        bucket = self._bucket(self._hs_buckets, pair, "hs", config.max_hs_pairs,
                              config.hs_per_second, config.hs_burst, now)
        if bucket is None:
            return Refused("handshake_limited", "the relay is limiting too many handshakes at "
                           "once to start a new one; try again in a minute")
        if not bucket.take(1.0, now):
            need = min(float(HS_ATTEMPT_FRAMES), bucket.burst)
            wait = (need - bucket.level(now)) / bucket.rate if bucket.rate > 0 else None
            retry = None if wait is None else max(1, math.ceil(wait))
            after = "a minute" if retry is None else f"{retry} s"
            return Refused("handshake_limited", f"too many handshake attempts between {a} and "
                           f"{b}; wait {after} before trying again", retry_after=retry)
        return None

    def _too_many_names(self) -> Refused:
        return Refused("too_many_names", "too many new names from your address; try "
                       f"again in {1 / self.config.claim_rate:g} s", fatal=True)

    def _claim_allowed(self, origin: str) -> bool:
        config = self.config
        now = self.clock()
        bucket = self._bucket(self._claim_buckets, origin, "claim", config.max_connections,
                              config.claim_rate, config.claim_burst, now)
        return bucket is not None and bucket.take(1.0, now)

    def _bucket(self, table: dict[Any, TokenBucket], key: Any, name: str, size: int,
                rate: float, burst: float, now: float) -> TokenBucket | None:
        """``table[key]``, made if missing; None if the table is full.

        Only refilled buckets are dropped to make room (one that has refilled
        means the same as none), so a flood of new keys never resets a used
        bucket. The O(n) sweep runs only when the table is full, and at most
        once per second while it frees less than a tenth of it.
        """
        bucket = table.get(key)
        if bucket is not None:
            return bucket
        if len(table) >= size:
            if now < self._prune_at.get(name, 0.0):
                return None
            for k in [k for k, b in table.items() if b.level(now) >= b.burst]:
                del table[k]
            if len(table) > size - size // 10:
                self._prune_at[name] = now + 1.0
            if len(table) >= size:
                return None
        bucket = table[key] = TokenBucket(rate, burst, now)
        return bucket

    def _expiry_json(self, wall: float) -> str:
        """The JSON text of a message's expiry shown to clients: Unix seconds,
        to the millisecond below. Messages sent in the same millisecond with
        the same TTL share it, so it is formatted once for them (``round``
        and ``repr`` of a float were 1 us per message, 4% of the relay)."""
        ms = int(wall * 1000)
        if ms != self._expiry_ms:
            self._expiry_ms = ms
            self._expiry_text = repr(ms / 1000)
        return self._expiry_text

    def _deliver(self, client: Client, held: Any, expires_at: str | None = None) -> None:
        self.stats.delivered += 1
        if expires_at is None:
            expires_at = self._expiry_json(held.expires_wall)
        client.link.write(deliver_frame(held.id, held.sender, held.kind, held.ttl, expires_at,
                                        held.body, max_size=self._max_out))

    def _hand_out(self, client: Client) -> None:
        for held in self.store.waiting(client.user):  # type: ignore[arg-type]
            self._deliver(client, held)

    def resume(self, client: Client) -> None:
        """The client's write buffer drained: hand out what waited meanwhile.

        Messages it was sent already are sent again; clients drop relay ids
        they have seen, so this never shows a message twice.
        """
        client.paused = False
        if client.state is State.READY:
            self._hand_out(client)

    def _on_ack(self, client: Client, msg: dict[str, Any]) -> None:
        ids = msg.get("ids")
        if ids is None:
            ids = [msg.get("id")]
        if type(ids) is not list or len(ids) > 1024:
            raise ProtocolViolation("ack needs an id or a list of at most 1024 ids")
        user: str = client.user  # type: ignore[assignment]
        if self.spawn is None:  # in memory: one pass, as the hot path it is
            ack = self.store.ack
            for msg_id in ids:
                if type(msg_id) is not int:
                    raise ProtocolViolation("message ids are integers")
                ack(user, msg_id)
            return
        for msg_id in ids:
            if type(msg_id) is not int:
                raise ProtocolViolation("message ids are integers")
        self._ack_ids(client, user, ids)

    def _ack_ids(self, client: Client, user: str, ids: list[int]) -> None:
        """Backend step: drop acknowledged messages (unknown ids are ignored;
        the in-memory relay does this inline in _on_ack)."""
        ack = self.store.ack
        for msg_id in ids:
            ack(user, msg_id)

    def _on_ping(self, client: Client, msg: dict[str, Any]) -> None:
        frame: dict[str, Any] = {"type": "pong"}
        if "t" in msg:
            frame["t"] = msg["t"] if type(msg["t"]) in (int, float) else None
        self._write(client, frame)

    def _on_watch(self, client: Client, msg: dict[str, Any]) -> None:
        name = msg.get("user")
        if type(name) is not str or not is_valid_name(name):
            raise Refused("bad_name", "invalid name to watch")
        if name not in client.watching:
            if len(client.watching) >= self.config.max_watch:
                raise Refused("too_many_watches",
                              f"a connection may watch at most {self.config.max_watch} names")
            client.watching.add(name)
            self.watchers.setdefault(name, set()).add(client)
            self._is_online(client, name, True)
        else:
            self._is_online(client, name, False)

    def _is_online(self, client: Client, name: str, first: bool) -> None:
        """Backend step: answer ``presence`` for ``name`` (``first``: the
        connection just started watching it)."""
        claim = self.claims.get(name)
        online = claim is not None and claim.client is not None
        self._write(client, {"type": "presence", "user": name, "online": online})

    def _nameplate_frame(self, msg: dict[str, Any]) -> Any:
        try:
            return protocol.parse_client_frame(msg)
        except protocol.FrameError as err:
            raise ProtocolViolation(str(err)) from None

    def _on_allocate(self, client: Client, msg: dict[str, Any]) -> None:
        user: str = client.user  # type: ignore[assignment]
        now = self.clock()
        try:
            number, expires = self.nameplates.allocate(user, now)
        except NameplateError as err:
            raise Refused(err.code, str(err)) from None
        self._arm(expires)
        self._event(logging.DEBUG, "allocate", user=user, nameplate=number)
        self._write(client, protocol.Allocated(number, self.config.nameplate_ttl)
                    .to_json())

    def _on_join(self, client: Client, msg: dict[str, Any]) -> None:
        frame: protocol.Join = self._nameplate_frame(msg)
        user: str = client.user  # type: ignore[assignment]
        self._check_join_rate(client)
        try:
            owner = self.nameplates.join(frame.nameplate, user, self.clock())
        except NameplateError as err:
            raise Refused(err.code, str(err)) from None
        # An owner's nameplates are freed when its connection ends, so it is here.
        owner_client = self._connected(owner)
        if owner_client is not None:
            self._write(owner_client, protocol.Joined(frame.nameplate, user).to_json())
        self._write(client, protocol.Joined(frame.nameplate, owner).to_json())

    def _check_join_rate(self, client: Client) -> None:
        """Refuse a join past the per-address rate (kept by each relay node)."""
        now = self.clock()
        bucket = self._bucket(self._join_buckets, client.origin, "join",
                              self.config.max_connections, JOIN_RATE, JOIN_BURST, now)
        if bucket is None or not bucket.take(1.0, now):
            # Each join uses up an invite, right code or not: whoever tries numbers
            # in a row would burn everyone's invites.
            raise Refused("rate_limited", "too many invite codes tried from your address; "
                          "wait a minute")

    def _on_cancel(self, client: Client, msg: dict[str, Any]) -> None:
        frame: protocol.Cancel = self._nameplate_frame(msg)
        if not self.nameplates.cancel(frame.nameplate, client.user,  # type: ignore[arg-type]
                                      self.clock()):
            raise Refused("no_nameplate", "you have no invite with that number waiting")
        self._write(client, protocol.NameplateGone(frame.nameplate, "cancelled").to_json())

    def _on_bye(self, client: Client, msg: dict[str, Any]) -> None:
        # Messages delivered and not yet acked stay in the store (they keep the
        # name bound); the claim still records that this connection said bye.
        client.link.close()
        self.disconnect(client, said_bye=True)

    # -- helpers ---------------------------------------------------------------

    def _presence(self, user: str, online: bool) -> None:
        watchers = self.watchers.get(user)
        if watchers:
            frame = self._encode({"type": "presence", "user": user, "online": online})
            for watcher in watchers:
                watcher.link.write(frame)

    def _write(self, client: Client, frame: dict[str, Any]) -> None:
        client.link.write(self._encode(frame, max_size=self._max_out))

    def _event(self, level: int, event: str, **fields: Any) -> None:
        if log.isEnabledFor(level):
            log.log(level, event, extra={"fields": fields})
