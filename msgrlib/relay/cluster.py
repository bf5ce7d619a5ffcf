"""The relay's rules over the engine backend: several relay processes as one relay.

:class:`EngineRelay` is :class:`rules.Relay` with its backend steps
(``_take_name``, ``_store``, ``_ack_ids``, ``_is_online``, ``_release``,
``_unwatch``) asking a :class:`~msgrlib.relay.engine.RedisBackend` instead of
the in-memory store and claim table. Everything per connection (validation,
states, the signature check, buckets, frame formatting, timeouts,
backpressure) is the in-memory relay's code, unchanged. A step answers later;
:meth:`rules.Relay._later` keeps each connection's frames in order meanwhile.

This node keeps only its own connections (``conns``: engine connection id ->
client) and its local watchers; the engine holds the truth and its events
(:meth:`on_event`) wake this node: a delivery for one of its connections, an
expiry report, a replaced connection, a presence change, a resync after
pub/sub reconnected, or a reset (the engine was wiped, or this node's lease
lapsed: every connection is told ``shutdown`` and reconnects).

Losses and how each is reported (SECURITY.md): a step the engine did not
answer (:class:`EngineUnavailable`) may or may not have happened, so the
connection is closed with ``shutdown`` as a relay restart would, never
answered with an error (the sender would call a stored message
undelivered); the client reconnects and resends what was not ``accepted``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from msgrlib import protocol
from msgrlib.invite.nameplates import NameplateError
from msgrlib.relay import engine
from msgrlib.relay.config import RelayConfig
from msgrlib.relay.rules import (
    HS_ATTEMPT_FRAMES,
    JOIN_BURST,
    JOIN_RATE,
    Client,
    Refused,
    Relay,
    State,
    _utc_time,
)
from msgrlib.relay.store import StoreError

log = logging.getLogger("msgr.relay")


@dataclass(frozen=True)
class _HsLimited:
    """A handshake message the pair's shared bucket refused: ``wait`` is the
    seconds until it holds a whole attempt (None: it never refills)."""

    wait: float | None


class EngineRelay(Relay):
    """The relay core on a shared engine (see the module docstring)."""

    def __init__(self, config: RelayConfig | None, backend: engine.RedisBackend, *,
                 clock: Callable[[], float], wallclock: Callable[[], float],
                 rng: Callable[[int], bytes],
                 spawn: Callable[[Awaitable[Any], Callable[[Any, BaseException | None], None]],
                                 None],
                 arm: Callable[[float], None] = lambda deadline: None,
                 tls_fingerprint: str | None = None,
                 after_event: Callable[[], None] = lambda: None) -> None:
        super().__init__(config, clock=clock, wallclock=wallclock, rng=rng, arm=arm,
                         tls_fingerprint=tls_fingerprint, spawn=spawn)
        self.backend = backend
        #: This node's READY connections by their engine connection id.
        self.conns: dict[str, Client] = {}
        #: Names signed in through this node and their keys (the oldest
        #: forgotten past max_names): a sign-in with another key, or of a
        #: name this node has not seen, counts against the per-address claim
        #: rate, which each node keeps for its own connections.
        self._seen: dict[str, bytes] = {}
        #: Connections signing in (claimed, fetching what waits): the engine
        #: events for them, replayed after ``welcome``.
        self._early: dict[str, list[engine.Event]] = {}
        #: This node's connections that allocated a nameplate (their end
        #: cancels what they hold in the engine).
        self._inviters: set[str] = set()
        #: Called after each engine event (the I/O layer flushes writes).
        self._after_event = after_event
        backend.on_event = self.on_event

    @property
    def relay_id(self) -> str:
        """The engine's epoch: the same on every node; new when it was wiped."""
        return self.backend.epoch

    # -- backend steps ---------------------------------------------------------

    def _take_name(self, client: Client, user: str, key: bytes) -> None:
        if self.closing:
            raise Refused("shutting_down", "the relay is shutting down", fatal=True)
        if self._seen.get(user) != key and not self._claim_allowed(client.origin):
            # (The engine alone knows whether the name is new; this node
            # counts every name it has not seen signed in with this key.)
            raise self._too_many_names()
        conn = self.backend.connection_id()

        def then(claimed: Any, error: BaseException | None) -> None:
            if error is not None:
                if isinstance(error, engine.NameOwned):
                    raise Refused("name_owned", self._engine_owned_reason(user, error),
                                  fatal=True)
                if isinstance(error, engine.TooManyNames):
                    raise Refused("relay_full", "the relay has too many names registered; "
                                  "try again later", fatal=True)
                self._engine_failed(client, error)
                return
            if client.state is State.CLOSED:  # gone while the engine answered
                self._spawn_quiet(self.backend.release(user, conn, bye=client.said_bye))
                return
            if claimed.replaced is not None:
                old = self.conns.get(claimed.replaced)
                if old is not None:
                    self.fail(old, Refused("replaced", "this name signed in from another "
                                           "connection", fatal=True))
            client.conn = conn
            self.conns[conn] = client
            seen = self._seen
            seen.pop(user, None)
            seen[user] = key
            if len(seen) > self.config.max_names:
                del seen[next(iter(seen))]
            # Welcome together with what waits, as the in-memory relay does
            # (a client reading once after welcome, then leaving, gets it).
            self._early[conn] = []
            self._later(client, self.backend.fetch(user, conn),
                        lambda held, error: self._signed_in(client, user, conn, held, error))

        self._later(client, self.backend.claim(user, key, conn), then)

    def _signed_in(self, client: Client, user: str, conn: str, held: Any,
                   error: BaseException | None) -> None:
        early = self._early.pop(conn, [])
        if client.state is State.CLOSED:  # gone meanwhile (it was never READY)
            client.conn = None
            if self.conns.get(conn) is client:
                del self.conns[conn]
            self._spawn_quiet(self.backend.release(user, conn, bye=client.said_bye))
            return
        if error is not None:
            self._engine_failed(client, error)
            return
        if held is None:  # the name went to another connection meanwhile
            raise Refused("replaced", "this name signed in from another connection",
                          fatal=True)
        self._welcome(client, user)
        ids = set()
        for each in held:
            ids.add(each.id)
            self._deliver(client, each)
        for event in early:
            if isinstance(event, engine.Deliver) and event.held.id in ids:
                continue
            self.on_event(event)

    def _engine_owned_reason(self, user: str, owned: engine.NameOwned) -> str:
        """``name_owned``'s sentence from what the engine says (as _owned_reason)."""
        since = _utc_time(owned.since)
        if owned.connected:
            return (f"the name {user!r} is in use right now by another client, with another "
                    f"key (it has held the name since {since}); close the other client or "
                    "pick another name")
        ago = max(owned.now - owned.released_at, 0.0)
        how = "said bye" if owned.said_bye else "ended without saying bye"
        text = (f"the name {user!r} belongs to another key (since {since}); its last "
                f"connection {how} {ago:.0f} s ago")
        claim_ttl = self.config.claim_ttl
        left = claim_ttl - ago
        if left > 0:
            text += (f", and a name stays bound to its key for {claim_ttl:g} s "
                     f"after its last connection ({max(left, 1):.0f} s more)")
        waiting = owned.waiting
        if waiting:
            text += (f"; {waiting} message{' waits' if waiting == 1 else 's wait'} for it, "
                     "and it stays bound until they are read or expire")
        return text + ". Wait, or pick another name"

    def _store(self, client: Client, user: str, to: str, body: str, kind: str, ttl: int,
               ref: int | None, now: float) -> None:
        backend = self.backend

        async def step() -> Any:
            if kind == "hs":
                taken = await backend.handshake_take(user, to, HS_ATTEMPT_FRAMES)
                if taken is not True:
                    return _HsLimited(taken)
            return await backend.send(user, to, body, kind, ttl, origin=client.origin)

        def then(held: Any, error: BaseException | None) -> None:
            if error is not None:
                if isinstance(error, StoreError):
                    self.stats.refused += 1
                    raise Refused(error.code, str(error))
                self._engine_failed(client, error)
                return
            if isinstance(held, _HsLimited):
                self.stats.refused += 1
                retry = None if held.wait is None else max(1, math.ceil(held.wait))
                after = "a minute" if retry is None else f"{retry} s"
                raise Refused("handshake_limited", f"too many handshake attempts between "
                              f"{user} and {to}; wait {after} before trying again",
                              retry_after=retry)
            if client.state is not State.CLOSED:
                self._accepted(client, held, ref)
            # The recipient's node (maybe this one) delivers on the engine's Deliver.

        self._later(client, step(), then, ref=ref)

    def _ack_ids(self, client: Client, user: str, ids: list[int]) -> None:
        conn = client.conn
        assert conn is not None

        def then(count: Any, error: BaseException | None) -> None:
            if error is not None:
                self._engine_failed(client, error)
            elif count is None and client.state is not State.CLOSED:
                raise Refused("replaced", "this name signed in from another connection",
                              fatal=True)

        self._later(client, self.backend.ack(user, conn, ids), then)

    def _is_online(self, client: Client, name: str, first: bool) -> None:
        step = self.backend.watch(name) if first else self.backend.online(name)

        def then(online: Any, error: BaseException | None) -> None:
            if error is not None:
                self._engine_failed(client, error)
                return
            if client.state is not State.CLOSED:  # (if closed, disconnect unwatched it)
                self._write(client, {"type": "presence", "user": name, "online": bool(online)})

        self._later(client, step, then)

    def _unwatch(self, client: Client) -> None:
        for name in client.watching:
            self._spawn_quiet(self.backend.unwatch(name))

    def _abandon(self, client: Client, user: str, queued: Any) -> None:
        # The acks the client sent before it went still count (else what it
        # read comes again at its next sign-in); they run before the release.
        conn = client.conn
        if conn is None:
            return
        for frame in queued:
            if frame.get("type") != "ack":
                continue
            ids = frame.get("ids")
            if ids is None:
                ids = [frame.get("id")]
            if type(ids) is list and len(ids) <= 1024 and all(type(i) is int for i in ids):
                self._spawn_quiet(self.backend.ack(user, conn, ids))

    # Invites (nameplates) live in the engine (shard 0), so an inviter and the
    # invited may be on different nodes; the inviter's node hears InviteJoined.

    def _on_allocate(self, client: Client, msg: dict[str, Any]) -> None:
        user: str = client.user  # type: ignore[assignment]
        conn = client.conn
        assert conn is not None
        ttl = self.config.nameplate_ttl

        # An inviter from the moment it asks: its end then cancels what it holds,
        # queued on shard 0 behind this allocate, even if it closes before the
        # answer or the answer is lost (the engine failed after allocating).
        self._inviters.add(conn)

        def then(got: Any, error: BaseException | None) -> None:
            if isinstance(error, NameplateError):
                raise Refused(error.code, str(error))
            if error is not None:
                self._engine_failed(client, error)
                return
            if client.state is State.CLOSED:  # gone meanwhile: its end cancelled it
                return
            self._event(logging.DEBUG, "allocate", user=user, nameplate=got[0])
            self._write(client, protocol.Allocated(got[0], ttl).to_json())

        self._later(client, self.backend.allocate_nameplate(user, conn, ttl), then)

    def _on_join(self, client: Client, msg: dict[str, Any]) -> None:
        frame: protocol.Join = self._nameplate_frame(msg)
        user: str = client.user  # type: ignore[assignment]
        self._check_join_rate(client)

        def then(owner: Any, error: BaseException | None) -> None:
            if isinstance(error, NameplateError):
                raise Refused(error.code, str(error))
            if error is not None:
                self._engine_failed(client, error)
                return
            if client.state is not State.CLOSED:
                self._write(client, protocol.Joined(frame.nameplate, owner).to_json())

        # The address's join budget is kept in the engine too, shared by every
        # node: with N relays (or workers) it would otherwise be N times larger.
        self._later(client, self.backend.join_nameplate(
            frame.nameplate, user, origin=client.origin, rate=JOIN_RATE, burst=JOIN_BURST), then)

    def _on_cancel(self, client: Client, msg: dict[str, Any]) -> None:
        frame: protocol.Cancel = self._nameplate_frame(msg)
        user: str = client.user  # type: ignore[assignment]

        def then(cancelled: Any, error: BaseException | None) -> None:
            if error is not None:
                self._engine_failed(client, error)
                return
            if not cancelled:
                raise Refused("no_nameplate", "you have no invite with that number waiting")
            if client.state is not State.CLOSED:
                self._write(client,
                            protocol.NameplateGone(frame.nameplate, "cancelled").to_json())

        self._later(client, self.backend.cancel_nameplate(frame.nameplate, user), then)

    def _connected(self, name: str) -> Client | None:
        for client in self.conns.values():
            if client.user == name and client.state is State.READY:
                return client
        return None

    def _release(self, client: Client, user: str, said_bye: bool) -> None:
        conn = client.conn
        if conn is None:
            return
        client.conn = None
        if self.conns.get(conn) is client:
            del self.conns[conn]
        if conn in self._inviters:  # (as in memory: its invites end with it)
            self._inviters.discard(conn)
            self._spawn_quiet(self.backend.cancel_nameplates(user, conn))
        self._spawn_quiet(self.backend.release(user, conn, bye=said_bye))

    def resume(self, client: Client) -> None:
        client.paused = False
        if client.state is State.READY:
            self._fetch(client)

    def shutdown(self) -> None:
        self.closing = True
        self._close_all("the relay is shutting down")

    # -- helpers -----------------------------------------------------------------

    def _fetch(self, client: Client) -> None:
        """Hand out what waits for the client (sign-in, resume, resync)."""
        conn, user = client.conn, client.user
        if conn is None or user is None:
            return

        def done(held: Any, error: BaseException | None) -> None:
            if error is not None:
                self._engine_failed(client, error)
            elif held is None:  # the connection lost its name meanwhile
                if client.state is not State.CLOSED:
                    self.fail(client, Refused("replaced", "this name signed in from another "
                                              "connection", fatal=True))
            elif client.state is State.READY and not client.paused:
                for each in held:
                    self._deliver(client, each)
            self._after_event()

        assert self.spawn is not None
        self.spawn(self.backend.fetch(user, conn), done)

    def _engine_failed(self, client: Client, error: BaseException) -> None:
        """The engine did not answer (or was wiped): the step may have
        happened, so close as a relay restart does; the client resends what
        was not accepted."""
        if not isinstance(error, engine.EngineError):
            raise error
        log.warning("engine-step-failed", extra={"fields": {"error": str(error)}})
        if client.state is not State.CLOSED:
            self._write(client, {"type": "shutdown",
                                 "message": "the relay lost its engine for a moment; "
                                 "reconnect"})
            client.link.close()
            self.disconnect(client)

    def _close_all(self, message: str) -> None:
        for client in list(self.conns.values()):
            if client.state is not State.CLOSED:
                self._write(client, {"type": "shutdown", "message": message})
                client.link.close()
                self.disconnect(client)

    def _spawn_quiet(self, step: Awaitable[Any]) -> None:
        """Run a step nobody waits for (release, unwatch); failures are logged."""
        def done(_result: Any, error: BaseException | None) -> None:
            if error is not None:
                log.info("engine-step-dropped", extra={"fields": {"error": str(error)}})
        assert self.spawn is not None
        self.spawn(step, done)

    # -- engine events -------------------------------------------------------------

    def on_event(self, event: engine.Event) -> None:
        """An event from the engine (called in the event loop)."""
        conn = getattr(event, "conn", None)
        if conn is not None and conn in self._early and not isinstance(event, engine.Replaced):
            self._early[conn].append(event)  # signing in: after its welcome
            return
        if isinstance(event, engine.Deliver):
            client = self.conns.get(event.conn)
            if client is not None and client.state is State.READY and not client.paused:
                self._deliver(client, event.held)
        elif isinstance(event, engine.Expired):
            client = self.conns.get(event.conn)
            if client is not None and client.state is State.READY:
                self.stats.expired += 1
                self._write(client, {"type": "expired", "id": event.msg_id,
                                     "to": event.recipient})
        elif isinstance(event, engine.Replaced):
            client = self.conns.get(event.conn)
            if client is not None:
                self.fail(client, Refused("replaced", "this name signed in from another "
                                          "connection", fatal=True))
        elif isinstance(event, engine.InviteJoined):
            client = self.conns.get(event.conn)
            if client is not None and client.state is State.READY:
                self._write(client, protocol.Joined(event.nameplate, event.joiner).to_json())
        elif isinstance(event, engine.InviteLapsed):
            client = self.conns.get(event.conn)
            if client is not None and client.state is State.READY:
                self._write(client,
                            protocol.NameplateGone(event.nameplate, "expired").to_json())
        elif isinstance(event, engine.Presence):
            self._presence(event.name, event.online)
        elif isinstance(event, engine.Resync):
            self._resync(event.shard)
        elif isinstance(event, (engine.Reset, engine.Reaped)):
            log.warning("engine-reset", extra={"fields": {"event": type(event).__name__}})
            self._close_all("the relay's engine restarted; reconnect")
        self._after_event()

    def _resync(self, shard: int) -> None:
        backend = self.backend
        for client in list(self.conns.values()):
            if client.user is not None and backend.shard_of(client.user) == shard:
                self._fetch(client)
        for name in list(self.watchers):
            if backend.shard_of(name) == shard:
                def done(online: Any, error: BaseException | None, name: str = name) -> None:
                    if error is None:
                        self._presence(name, bool(online))
                        self._after_event()
                assert self.spawn is not None
                self.spawn(backend.online(name), done)


# -- serve --store ------------------------------------------------------------------

#: The environment variable a password is read from when no URL names one.
PASSWORD_ENV = "MSGR_STORE_PASSWORD"


def store_settings(urls: list[str], *, password_file: str | None = None,
                   environ: dict[str, str] | None = None) -> tuple[list[str], str | None]:
    """``serve --store`` URLs -> (URLs for RedisBackend, password or None).

    A password never comes from argv: a URL may name the environment
    variable holding it (``redis://host:6379/0?password_env=NAME``; the
    query item is removed before the URL reaches redis-py), else
    ``--store-password-file`` gives a file whose first line is it, else
    :data:`PASSWORD_ENV` if set. Every shard takes the same password. Raises
    EngineConfigError for a bad URL, a password in a URL, a missing variable
    or an unreadable file.
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    environ = dict(os.environ) if environ is None else environ
    cleaned: list[str] = []
    names: set[str] = set()
    for url in urls:
        engine.check_url(url)
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        for key, value in query:
            if key == "password_env":
                if not value:
                    raise engine.EngineConfigError(f"engine URL {url!r}: password_env= needs "
                                                   "a variable name")
                names.add(value)
            elif key == "password":
                raise engine.EngineConfigError(
                    "engine URL: no password in the URL (argv is visible to other users); "
                    "name an environment variable with ?password_env=NAME or use "
                    "--store-password-file")
        rest = [(k, v) for k, v in query if k != "password_env"]
        if len(rest) == len(query):
            cleaned.append(url)  # untouched (its query is redis-py's: ssl_ca_certs=...)
        else:
            cleaned.append(urlunsplit(parts._replace(query=urlencode(rest))))
    if len(names) > 1:
        raise engine.EngineConfigError("every shard takes the same password: name one "
                                       "password_env for all --store URLs")
    password: str | None = None
    if names:
        name = names.pop()
        if name not in environ:
            raise engine.EngineConfigError(f"the engine password variable {name} is not set")
        password = environ[name]
    elif password_file is not None:
        try:
            with open(password_file, encoding="utf-8") as handle:
                password = handle.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as err:
            raise engine.EngineConfigError(
                f"cannot read the engine password file {password_file}: "
                f"{getattr(err, 'strerror', None) or err}") from None
    elif environ.get(PASSWORD_ENV):
        password = environ[PASSWORD_ENV]
    return cleaned, password or None
