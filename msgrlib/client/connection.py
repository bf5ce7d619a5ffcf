"""The chat client's asyncio layer: connect, check TLS, pump frames, reconnect.

Thin glue, as the relay's ``server.py`` is: it opens TCP or TLS to the relay,
checks the relay's certificate (``--cafile``, ``--pin`` or trust on first
use), runs one :class:`~msgrlib.client.session.RelaySession` per connection
(hello, the name-ownership challenge, welcome, heartbeats, shutdown and fatal
errors, sans-I/O), feeds the chat frames it passes on to the
:class:`~msgrlib.client.core.ChatCore`, sends what the core wants sent, and
reconnects with a capped, jittered backoff when the relay goes away
(:meth:`ChatClient.reconnect_now` cuts a wait short). Timeouts live here.
Events for the user come out of :meth:`ChatClient.events` (an async
iterator) or the ``on_event`` callback. Nothing here imports the relay.

Client errors (the whole tree is drawn in ``msgrlib/errors.py``)::

    LocalError
    └── ClientError           a bad --server, a TTL out of range
        ├── ConnectFailed     the relay cannot be reached (refused, DNS, timeout)
        └── WrongTransport    TLS against a plain port, or plain against TLS
    RemoteError
    └── Refused               the relay said no (name owned, bad name, version...),
                              ended the session, or broke the protocol: the same
                              class, one subclass per code, as the relay raises
    (certificate problems are msgrlib.tls.errors.TlsError; misuse of a session is
    session.SessionError)
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nacl.signing import SigningKey

import framing
from msgrlib import protocol
from msgrlib.client.core import ChatCore, Mode
from msgrlib.client.events import Event, Notice, Received, Status  # noqa: F401 (Status re-exported)
from msgrlib.client.identity import (  # noqa: F401 (load_identity: re-exported for the UI)
    IdentityError,
    default_identity_path,
    load_identity,
    load_or_create,
)
from msgrlib.client.invite import InviteError, Rendezvous, Step
from msgrlib.client.session import Ended, ForChat, Ignored, Ready, RelaySession, SessionEvent
from msgrlib.errors import ErrorCode, LocalError, MsgrError, Refused
from msgrlib.limits import TTL_DEFAULT, TTL_MAX, TTL_MIN, ttl_in_range
from msgrlib.util.netaddr import host_port
from msgrlib.util.safetext import escape

if TYPE_CHECKING:
    from msgrlib.tls.contexts import ResumingContext

#: Seconds to open the TCP connection and finish TLS.
CONNECT_TIMEOUT = 10.0
#: Reconnect backoff: the first wait, doubled after each failed attempt up to
#: the cap. The cap is well below the shortest TTL a user can pick (5 s) and
#: far below the default (30 s): a message typed while the relay restarts
#: must get there before its TTL ends (issue 14 item 3: with a 30 s cap a
#: relay down for 15 s was rejoined after 33 s). Each wait is shortened by a
#: random fraction up to the jitter, so a relay restart is not met by every
#: client in the same millisecond, and no wait ever exceeds the cap.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 5.0
BACKOFF_JITTER = 0.3
#: Seconds a connection must last for the backoff to start again from the first wait.
BACKOFF_STABLE = 5.0


def backoff_wait(delay: float, *, jitter: float = BACKOFF_JITTER,
                 rng: Callable[[float, float], float] = random.uniform) -> float:
    """The wait before the next attempt: ``delay`` shortened by a random
    fraction (at most ``jitter``); never more than ``delay``."""
    return delay * (1 - rng(0.0, jitter))
#: Largest frame read from a relay that announces a larger max_frame than
#: ours (its own limit is what a peer can send us through it).
MAX_READ_FRAME = 16 * 1024 * 1024
#: Bytes asked of the socket per read once the relay has welcomed us.
READ_SIZE = 256 * 1024
#: Relay codes after which reconnecting cannot help (defined with the protocol).
FATAL_CODES = protocol.PERMANENT_CODES


class ClientError(LocalError):
    code = "client"


class ConnectFailed(ClientError):
    code = "connect"


class WrongTransport(ClientError):
    code = "transport"


@dataclass(frozen=True)
class TlsOptions:
    cafile: str | None = None
    pin: str | None = None
    known_hosts: str | None = None   # path; None means the default file
    trust_on_first_use: bool = True


#: URL schemes --server accepts, and whether each means TLS. ws:// and wss://
#: are what the original proof of concept's users type; msgr does not speak
#: WebSocket, the scheme only chooses plain TCP or TLS.
SERVER_SCHEMES = {"msgr": False, "ws": False, "msgrs": True, "wss": True}
DEFAULT_PORT = 8765


class ServerAddress(tuple):  # type: ignore[type-arg]
    """Where the relay is: a ``(host, port)`` pair (so ``host, port =
    parse_server(text)`` works), and ``tls``: True or False when a URL scheme
    said so, None for a plain ``HOST:PORT`` (then ``--tls`` decides)."""

    tls: bool | None

    def __new__(cls, host: str, port: int, tls: bool | None = None) -> ServerAddress:
        self = super().__new__(cls, (host, port))
        self.tls = tls
        return self

    @property
    def host(self) -> str:
        return str(self[0])

    @property
    def port(self) -> int:
        return int(self[1])

    def __repr__(self) -> str:
        return f"ServerAddress(host={self.host!r}, port={self.port}, tls={self.tls})"


def parse_server(text: str, default_port: int = DEFAULT_PORT) -> ServerAddress:
    """``HOST:PORT``, ``HOST``, ``[v6]:PORT``, or a URL ``SCHEME://HOST[:PORT][/]``
    with a scheme of :data:`SERVER_SCHEMES` (``wss`` and ``msgrs`` mean TLS).

    Raises :class:`ClientError` with a one-line hint for anything else.
    """
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    tls = None
    if sep:
        tls = SERVER_SCHEMES.get(scheme.lower())
        schemes = ", ".join(f"{name}://" for name in SERVER_SCHEMES)
        if tls is None:
            raise ClientError(f"bad --server {text!r}: use HOST:PORT, or a URL starting with "
                              f"{schemes} (wss:// and msgrs:// mean TLS)")
        rest = rest[:-1] if rest.endswith("/") else rest
        if not rest or any(c in rest for c in "/?#@"):
            raise ClientError(f"bad --server {text!r}: write {scheme}://HOST:PORT and nothing "
                              "more (no user, path or query)")
        if rest.count(":") > 1 and not rest.startswith("["):
            raise ClientError(f"bad --server {text!r}: in a URL an IPv6 address goes in "
                              f"brackets: {scheme}://[ADDRESS]:PORT")
        host, port = _host_port(rest, text, default_port)
        return ServerAddress(host, port, tls)
    return ServerAddress(*_host_port(text, text, default_port))


def _host_port(text: str, shown: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ClientError(f"bad --server {shown!r}: expected [ADDRESS]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
        head, _, last = text.rpartition(":")
        if head and last.isdigit() and len(last) <= 5 and not text.endswith("::" + last):
            # "::1:8765": an IPv6 address, or one with a port? Ask.
            raise ClientError(f"bad --server {shown!r}: write an IPv6 address in brackets, "
                              f"the port after them: [{head}]:{last} (or [{text}] if all of "
                              "it is the address)")
    if not host or "/" in host:
        raise ClientError(f"bad --server {shown!r}: expected HOST:PORT")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ClientError(f"bad port in --server {shown!r}: expected a number") from None
    if not 0 < port < 65536:
        raise ClientError(f"bad port {port}: expected 1-65535")
    return host, port


class ChatClient:
    """Run a :class:`ChatCore` over a relay connection, reconnecting as needed.

    ``identity`` is the key that owns the name at the relay; None means the
    one kept for this relay and name (:mod:`msgrlib.client.identity`),
    created on first use. Pass ``SigningKey.generate()`` for one that is
    never written anywhere.
    """

    def __init__(self, core: ChatCore, *, host: str, port: int,
                 tls: TlsOptions | None = None, identity: SigningKey | None = None,
                 on_event: Callable[[Event | Status], None] | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT,
                 max_frame: int = framing.DEFAULT_MAX_FRAME,
                 backoff_first: float = BACKOFF_FIRST,
                 backoff_max: float = BACKOFF_MAX,
                 rendezvous: Rendezvous | None = None) -> None:
        self.core = core
        #: An invite's meeting at the relay, run on the first connection
        #: before the chat starts (client/invite.py).
        self.rendezvous = rendezvous
        self.host = host
        self.port = port
        self.tls = tls
        self._identity_notice: str | None = None
        self._default_key = identity is None
        if identity is None:
            identity = self._default_identity()
        self.identity = identity
        self.connect_timeout = connect_timeout
        self.max_frame = max_frame
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self._reconnect_now = False
        self.fingerprint: str | None = None
        self.heartbeat = 20.0
        self.limits: dict[str, Any] = {}
        self.relay_instance: str | None = None  # from welcome: tells a restarted relay
        self._on_event = on_event
        self._queue: asyncio.Queue[Event | Status | None] = asyncio.Queue()
        self._iterating = 0  # events() loops running
        self._writer: asyncio.StreamWriter | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self._ready = asyncio.Event()
        self._ready_at = 0.0
        #: Seconds a connection must last for the reconnect backoff to restart.
        self.stable_after = BACKOFF_STABLE
        self._read_limit = max_frame + 1024
        #: Created at the first TLS connection; keeps the relay's last session
        #: ticket, in memory only, to resume with on reconnect.
        self._ssl_context: ResumingContext | None = None
        self._session_io: RelaySession | None = None  # this connection's relay session
        self._waiting = False  # between connections (see reconnect_now)

    @classmethod
    def for_invite(cls, code: Any, *, host: str, port: int, tls: TlsOptions | None = None,
                   on_event: Callable[[Event | Status], None] | None = None,
                   transfers: Any = None, ttl: int = TTL_DEFAULT) -> ChatClient:
        """A client for an invite (PROTOCOL.md 3.6): ``code`` None invites (the
        code comes as an ``InviteReady`` event), an ``InviteCode`` joins. A fresh
        random name and a key kept only in memory: nothing to agree on, nothing
        on disk, nothing that links two invites."""
        from msgrlib.client.invite import invite_name

        rng = os.urandom
        core = ChatCore(me=invite_name(rng), peer="", key=bytes(32), ttl=ttl,
                        clock=time.monotonic, wallclock=time.time, rng=rng, invite=True,
                        transfers=transfers)
        return cls(core, host=host, port=port, tls=tls, identity=SigningKey.generate(),
                   on_event=on_event, rendezvous=Rendezvous(code, rng=rng))

    def _default_identity(self) -> SigningKey:
        """The key kept for this relay and name (created on first use), so a
        next run gets the name back at once; a key for this run only if the
        state directory cannot be written."""
        path = default_identity_path(self.address, self.core.me)
        try:
            return load_or_create(path)
        except IdentityError as err:
            self._identity_notice = (f"{err}; using a key for this run only, so the name "
                                     "may be refused for a while after it ends (--identity "
                                     "FILE chooses where to keep one)")
            return SigningKey.generate()

    def _with_key_hint(self, err: Refused) -> Refused:
        """A ``name_owned`` refusal when this user keeps a key for the same name
        under another relay address (``localhost`` and ``127.0.0.1`` and ``[::1]``
        are three): say so, as that other key may well be the one the relay knows."""
        if err.code != ErrorCode.NAME_OWNED or not self._default_key:
            return err
        ours = default_identity_path(self.address, self.core.me)
        try:
            others = sorted(p for p in ours.parent.parent.glob(f"*/{self.core.me}.key")
                            if p.parent != ours.parent)
        except OSError:
            return err
        if not others:
            return err
        return Refused(err.code, f"{err}. This computer keeps a key for {self.core.me!r} "
                       f"for another relay address ({others[0]}): if that is this relay, "
                       "connect with the --server you used then, or add --identity "
                       f"{others[0]}", permanent=err.permanent)

    @property
    def address(self) -> str:
        return host_port(self.host.lower(), self.port)

    # -- public API ------------------------------------------------------------

    def send(self, text: str) -> int:
        """Queue a message; returns its number. Sent as soon as possible."""
        n = self.core.send(text)
        self._kick()
        return n

    async def wait_connected(self) -> None:
        await self._ready.wait()

    async def events(self) -> AsyncIterator[Event | Status]:
        """Every event, in order, until the client is closed."""
        self._iterating += 1
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    self._queue.put_nowait(None)  # for any other reader
                    return
                yield item
        finally:
            # A loop that broke out (as README's example does) no longer
            # reads: with a callback, stop queueing for it.
            self._iterating -= 1

    async def messages(self) -> AsyncIterator[Received]:
        """Only the messages from the peer, each once, until the client is closed."""
        async for event in self.events():
            if isinstance(event, Received):
                yield event

    async def aclose(self) -> None:
        """Close, and wait for the connection to end (for :func:`open_chat` clients).

        Messages not yet confirmed are reported (``Undelivered``) first."""
        if not self._closed:
            self.core.give_up("the chat was closed before it was confirmed")
            self._flush_events()
        self.close()
        task = getattr(self, "_task", None)
        if task is not None:
            try:
                await task
            except MsgrError:
                pass

    def close(self) -> None:
        """Stop; run() returns soon after."""
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            session = self._session_io
            if session is not None:
                session.close()  # says bye when signed in: the relay may free our name
                if not self._writer.is_closing():
                    self._write_frames(self._writer, session.frames_to_send())
            self._writer.close()

    def poke(self) -> None:
        """Tell the client that the core changed (e.g. after a /ttl command)."""
        self._kick()

    def cancel_invite(self) -> bool:
        """Give an invite's nameplate back (the relay's ``cancel``, PROTOCOL.md 3.6)
        while it waits for the other side; ``run()`` then raises ``InviteError``
        ("cancelled") when the relay confirms. False (nothing sent) when there is
        no such nameplate now: not an inviter, no code yet, joined, or offline."""
        rendezvous, writer = self.rendezvous, self._writer
        if rendezvous is None or writer is None or writer.is_closing() \
                or not rendezvous.can_cancel:
            return False
        self._write_frames(writer, rendezvous.cancel())
        return True

    def reconnect_now(self) -> bool:
        """Try the relay again at once, if the client is waiting to reconnect.

        For a key in the chat screen: cuts the current wait short and starts
        the backoff again from its first step. Returns False (and does
        nothing) while connected, connecting or closed; call it from the
        event loop's thread.
        """
        if self._closed or not self._waiting:
            return False
        self._reconnect_now = True
        self._kick()
        return True

    async def run(self) -> None:
        """Connect and serve until :meth:`close`. Raises ClientError/TlsError
        when the first connection fails or the relay refuses us for good."""
        delay = self.backoff_first
        first = True
        if self._identity_notice is not None:
            self._emit(Notice(escape(self._identity_notice), "identity", "warn"))
            self._identity_notice = None
        try:
            while not self._closed:
                try:
                    await self._session(first)
                except Refused as err:
                    if err.permanent or (first and not self._ready.is_set()):
                        raise self._with_key_hint(err) from None
                    self._status("disconnected", f"relay: {err}")
                except (ConnectFailed, WrongTransport):
                    if first:
                        raise
                except (OSError, framing.FramingError, asyncio.IncompleteReadError) as err:
                    if first and not self._ready.is_set():
                        raise ConnectFailed(f"lost the relay at {self.address} while "
                                            f"connecting: {_reason(err)}") from None
                    self._status("disconnected", f"lost the relay at {self.address}: "
                                 f"{_reason(err)}")
                _raise_if_cancelled()
                first = False
                loop = asyncio.get_running_loop()
                if self._ready.is_set() and loop.time() - self._ready_at >= self.stable_after:
                    # We were connected for a while: start the backoff afresh.
                    # (Not after a short one: a relay that drops us at once,
                    # every time, would get a tight loop of reconnects.)
                    delay = self.backoff_first
                self._ready.clear()
                self.core.disconnected()
                self._flush_events()
                if self._closed:
                    break
                wait = backoff_wait(min(delay, self.backoff_max))
                self._status("reconnecting", f"reconnecting to {self.address} in {wait:.1f} s")
                delay = min(delay * 2, self.backoff_max)
                if await self._sleep(wait):
                    delay = self.backoff_first  # asked to try now: start the backoff afresh
        finally:
            self._closed = True
            self._queue.put_nowait(None)

    # -- one connection ------------------------------------------------------------

    async def _session(self, first: bool) -> None:
        self._status("connecting", f"connecting to {self.address}"
                     + (" with TLS" if self.tls else ""))
        reader, writer = await self._open()
        self._writer = writer
        session = RelaySession(self.core.me, self.identity,
                               tls_fingerprint=self.fingerprint if self.tls else None)
        self._session_io = session
        try:
            await self._authenticate(session, reader, writer)
            if self.rendezvous is not None and not self.rendezvous.done:
                await self._meet(self.rendezvous, session, reader, writer)
            self._ready.set()
            self._ready_at = asyncio.get_running_loop().time()
            resumed = ""
            if self._ssl_context is not None:
                # Welcomed: the relay's session tickets came before the welcome.
                ssl_object = writer.get_extra_info("ssl_object")
                self._ssl_context.remember(ssl_object)
                if ssl_object is not None and ssl_object.session_reused:
                    resumed = ", TLS session resumed"
            self._status("connected", f"connected to {self.address}"
                         + (" (TLS)" if self.tls else " (no TLS)") + resumed, self.fingerprint)
            self.core.set_limits(self.limits)
            self.core.connected_to_relay(self.relay_instance)
            await self._pump(session, reader, writer)
        finally:
            self._writer = None
            self._session_io = None
            writer.close()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        context = None
        if self.tls is not None:
            if self._ssl_context is None:
                from msgrlib.tls import contexts
                self._ssl_context = contexts.client_context(cafile=self.tls.cafile)
            context = self._ssl_context
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=context,
                                        server_hostname=self.host if context else None,
                                        limit=self.max_frame + 8),
                self.connect_timeout)
        except asyncio.TimeoutError:
            raise ConnectFailed(f"timed out connecting to {self.address} after "
                                f"{self.connect_timeout:g} s") from None
        except ssl.SSLCertVerificationError as err:
            from msgrlib.tls import contexts
            raise contexts.unknown_certificate(
                err, address=self.address,
                cafile=self.tls.cafile if self.tls else None) from None
        except ssl.SSLError as err:
            raise WrongTransport(f"TLS failed with {self.address} ({err.reason or err}): is "
                                 "the relay running without --tls? Then drop --tls") from None
        except ConnectionRefusedError:
            raise ConnectFailed(f"connection refused by {self.address}: is `msgr serve` "
                                "running there, on that port?") from None
        except ConnectionResetError:
            # Connected, then cut during the TLS handshake or before hello.
            raise WrongTransport(f"{self.address} accepted the connection, then reset it"
                                 + (" during the TLS handshake: is it a msgr relay, with "
                                    "--tls?" if context else "")) from None
        except OSError as err:
            raise ConnectFailed(f"cannot reach {self.address}: {_reason(err)}") from None
        if context is not None and self.tls is not None:
            self._check_certificate(writer)
        return reader, writer

    def _check_certificate(self, writer: asyncio.StreamWriter) -> None:
        from msgrlib.tls import contexts, known_hosts, x509
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not der:
            writer.close()
            raise WrongTransport(f"{self.address} presented no certificate")
        tls = self.tls
        assert tls is not None
        if tls.cafile:
            self.fingerprint = x509.fingerprint(der)
            return
        known = None
        if tls.pin is None and tls.trust_on_first_use:
            known = known_hosts.KnownHosts(tls.known_hosts
                                           or known_hosts.default_known_hosts_path())
        try:
            fp, how = contexts.verify_peer(der, address=self.address, pin=tls.pin,
                                           known_hosts=known)
        except MsgrError:
            writer.close()
            raise
        self.fingerprint = fp
        if how == "new":
            self._status("trust", f"trusting the relay's certificate {fp} for {self.address} "
                         "(first use; compare it with the fingerprint the relay printed)", fp)

    async def _authenticate(self, session: RelaySession, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        """hello, challenge, auth, welcome: until the session is READY."""
        session.start()
        self._write_frames(writer, session.frames_to_send())
        while not session.ready:
            frame = await self._read_before_welcome(reader)
            for event in session.receive(frame):
                self._on_session_event(event)
            self._write_frames(writer, session.frames_to_send())
            await writer.drain()

    async def _meet(self, rendezvous: Rendezvous, session: RelaySession,
                    reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """An invite's rendezvous (allocate or join, until ``joined``), then pair
        the core with the peer. Raises InviteError if the invite cannot go on;
        the connection ending on the way ends it too (its nameplate is freed)."""
        if rendezvous.step is not Step.NEW:
            raise InviteError("lost", f"lost the relay at {self.address} while waiting for "
                              "the other side: the invite is gone; start a new one")
        self._write_frames(writer, rendezvous.start())
        while not rendezvous.done:
            await writer.drain()
            try:
                frame = await asyncio.wait_for(
                    framing.read_frame(reader, max_size=self._read_limit), self.heartbeat)
            except asyncio.TimeoutError:
                session.ping()
                self._write_frames(writer, session.frames_to_send())
                continue
            if frame is None:
                raise ConnectionResetError("the relay closed the connection")
            for event in session.receive(frame):
                if isinstance(event, ForChat):
                    for news in rendezvous.handle(event.frame):
                        self._emit(news)  # type: ignore[arg-type]
                else:
                    self._on_session_event(event)
        assert rendezvous.peer is not None
        self.core.pair_with(rendezvous.peer, rendezvous.key())

    async def _read_before_welcome(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        """The next frame, with the reasons a connection fails at this stage."""
        try:
            frame = await asyncio.wait_for(framing.read_frame(reader, max_size=self.max_frame),
                                           self.connect_timeout)
        except asyncio.TimeoutError:
            raise ConnectFailed(f"the relay at {self.address} did not answer within "
                                f"{self.connect_timeout:g} s") from None
        except (framing.FramingError, ConnectionResetError, asyncio.IncompleteReadError):
            frame = None
        except ssl.SSLError:
            raise WrongTransport(f"TLS failed with {self.address}: is the relay running "
                                 "without --tls? Then drop --tls") from None
        if frame is None:
            hint = ("" if self.tls else ": if the relay runs with --tls, add --tls "
                    "(with a URL: msgrs:// or wss://)")
            raise WrongTransport(f"the relay at {self.address} closed the connection during "
                                 f"hello{hint}")
        return frame

    def _on_session_event(self, event: SessionEvent) -> None:
        """Act on what the session made of a relay frame (raises when it ended)."""
        if isinstance(event, ForChat):
            self.core.handle(event.raw)
            self._wake.set()
        elif isinstance(event, Ready):
            self.relay_instance = event.relay
            limits = event.limits
            self.limits = limits.to_json()
            if limits.max_frame is not None:
                self._read_limit = max(self.max_frame,
                                       min(limits.max_frame, MAX_READ_FRAME)) + 1024
            if limits.heartbeat is not None:
                self.heartbeat = float(limits.heartbeat)
        elif isinstance(event, Ignored):
            self._emit(Notice(f"ignored a {escape(event.kind)!r} frame from the relay that "
                              f"breaks the protocol: {escape(event.reason)[:200]}",
                              "bad_frame", "warn"))
        elif isinstance(event, Ended):
            raise Refused(event.code, escape(event.message[:300]),
                               permanent=event.permanent)

    async def _pump(self, session: RelaySession, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        """Read frames and act on them; send what the core wants; heartbeat."""
        loop = asyncio.get_running_loop()
        reading = loop.create_task(self._read_loop(session, reader))
        try:
            await self._pump_until_lost(loop, session, reading, writer)
        except (OSError, asyncio.IncompleteReadError):
            # Writing found the connection gone ("Connection lost"); what the
            # relay said last (a shutdown notice, an error) may still sit in
            # the reader's buffer: that is the better reason to give.
            if not reading.done():
                await asyncio.wait({reading}, timeout=0.5)
            if reading.done() and not reading.cancelled() and reading.exception() is not None:
                raise reading.exception() from None  # type: ignore[misc]
            raise
        finally:
            reading.cancel()
            # Wait for it without taking its outcome as ours: a cancellation
            # of this task (asyncio.run ending, aclose) must stay one, or the
            # reconnect loop would go on and the program never end.
            await asyncio.wait({reading})
            if not reading.cancelled():
                reading.exception()  # retrieved: the connection is over either way

    async def _pump_until_lost(self, loop: asyncio.AbstractEventLoop, session: RelaySession,
                               reading: asyncio.Task[None],
                               writer: asyncio.StreamWriter) -> None:
        """Send, heartbeat and tick until the connection ends (raises why)."""
        last_beat = loop.time()
        while not self._closed:
            self._send_pending(writer)
            try:
                await asyncio.wait_for(writer.drain(), self.heartbeat * 3)
            except asyncio.TimeoutError:
                raise ConnectionResetError(f"the relay took nothing we sent for "
                                           f"{self.heartbeat * 3:g} s") from None
            self._flush_events()
            now = loop.time()
            if now - last_beat >= self.heartbeat:
                session.ping()
                self._write_frames(writer, session.frames_to_send())
                last_beat = now
            wake_at = last_beat + self.heartbeat
            deadline = self.core.next_deadline()
            if deadline is not None:
                wake_at = min(wake_at, deadline)
            self._wake.clear()
            if reading.done():
                reading.result()  # raises the reason the connection ended
                raise ConnectionResetError("the relay closed the connection")
            waiter = loop.create_task(self._wake.wait())
            try:
                await asyncio.wait({waiter, reading}, timeout=max(0.0, wake_at - now),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            self.core.tick()

    async def _read_loop(self, session: RelaySession, reader: asyncio.StreamReader) -> None:
        """After welcome (which set the frame limit): whatever each read brings, all
        its frames at once, so the sends they cause (acks, file chunks) go out together
        when the pump next runs, rather than one write and one task per frame (a file
        transfer is thousands of frames)."""
        silence = self.heartbeat * 3
        decoder = framing.FrameDecoder(max_size=self._read_limit)
        while True:
            try:
                data = await asyncio.wait_for(reader.read(READ_SIZE), silence)
            except asyncio.TimeoutError:
                raise ConnectionResetError(
                    f"no answer from the relay for {silence:g} s") from None
            if not data:
                decoder.feed_eof()  # TruncatedFrame if it ended inside a frame
                raise ConnectionResetError("the relay closed the connection")
            for frame in decoder.feed(data):
                for event in session.receive(frame):
                    self._on_session_event(event)

    def _send_pending(self, writer: asyncio.StreamWriter) -> None:
        frames = self.core.take_frames()
        if frames:  # up to the frame size the relay declared (file chunks use it all)
            limit = self._read_limit - 1024
            writer.write(b"".join(framing.encode_frame(f, max_size=limit) for f in frames))

    @staticmethod
    def _write_frames(writer: asyncio.StreamWriter, frames: list[dict[str, Any]]) -> None:
        if frames:
            writer.write(b"".join(framing.encode_frame(f) for f in frames))

    def _kick(self) -> None:
        self._wake.set()

    def _flush_events(self) -> None:
        for event in self.core.take_events():
            self._emit(event)

    def _status(self, state: str, detail: str, fingerprint: str | None = None) -> None:
        self._emit(Status(state, detail, fingerprint))

    def _emit(self, item: Event | Status) -> None:
        if self._on_event is not None:
            self._on_event(item)
        # Queue only for a reader of events(): with just a callback (line
        # mode), a long session would otherwise grow the queue forever.
        if self._on_event is None or self._iterating:
            self._queue.put_nowait(item)

    async def _sleep(self, seconds: float) -> bool:
        """Wait between connections; time still passes for the core: messages
        whose TTL ends meanwhile are reported when it ends, not at reconnect.
        Returns True if :meth:`reconnect_now` cut the wait short."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        self._reconnect_now = False
        self._waiting = True
        try:
            return await self._sleep_until(loop, end)
        finally:
            self._waiting = False

    async def _sleep_until(self, loop: asyncio.AbstractEventLoop, end: float) -> bool:
        while not self._closed:
            if self._reconnect_now:
                self._reconnect_now = False
                return True
            now = loop.time()
            if now >= end:
                return False
            wake_at = end
            deadline = self.core.next_deadline()
            if deadline is not None:
                wake_at = min(end, max(deadline, now + 0.01))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wake_at - now)
            except asyncio.TimeoutError:
                pass
            _raise_if_cancelled()
            self.core.tick()
            self._flush_events()
        return False


def _raise_if_cancelled() -> None:
    """Raise CancelledError if this task is being cancelled (Python 3.11+).

    asyncio.wait_for can lose a cancellation that arrives as the awaited
    operation ends (it then returns, or raises the operation's own error,
    e.g. a refused connection). The reconnect loop would take that for an
    ordinary failure and go on for ever, and asyncio.run would never end.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


async def open_chat(*, server: str, user: str, peer: str, passcode: str,
                    static: bool = False, ttl: int = 30, tls: TlsOptions | None = None,
                    identity: str | None = None, kdf_params: Any = None) -> ChatClient:
    """Library entry point: derive the key, connect, and return a running client.

    ``async for msg in client.messages()`` yields each :class:`chat.Received`
    (``client.events()`` yields every event, status changes included);
    ``client.send(text)`` queues a message; ``await client.aclose()`` ends it.
    The key derivation (Argon2id, ~0.2 s) runs in a thread. Raises
    :class:`errors.MsgrError` subclasses if the relay cannot be reached or
    refuses us.
    """
    import kdf
    from msgrlib.util.names import check_name

    check_name(user)
    check_name(peer, what="peer name")
    if not ttl_in_range(ttl):
        raise ClientError(f"ttl {ttl!r} is out of range: use {TTL_MIN} to {TTL_MAX} seconds")
    address = parse_server(server)
    host, port = address
    url_tls = address.tls
    if url_tls and tls is None:
        tls = TlsOptions()
    elif url_tls is False and tls is not None:
        raise ClientError(f"server {server!r} names a plain relay, but tls options were given: "
                          "use wss:// or msgrs://")
    params = kdf_params or kdf.DEFAULT_PARAMS
    key = await asyncio.to_thread(kdf.derive_passcode_key, passcode, user, peer, params=params)
    core = ChatCore(me=user, peer=peer, key=key, mode=Mode.STATIC if static else Mode.RATCHET,
                    ttl=ttl, clock=time.monotonic, wallclock=time.time, rng=os.urandom)
    client = ChatClient(core, host=host, port=port, tls=tls, identity=load_identity(identity))
    task = asyncio.get_running_loop().create_task(client.run())
    ready = asyncio.get_running_loop().create_task(client.wait_connected())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises why it could not connect
    client._task = task  # type: ignore[attr-defined]
    return client
