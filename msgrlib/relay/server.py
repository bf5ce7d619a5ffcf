"""The relay's asyncio layer: sockets, TLS, timers and batching around relay.py.

Thin glue, as the protocol logic lives in :mod:`relay`: each connection is an
``asyncio.Protocol`` that feeds bytes to a :class:`framing.FrameDecoder`,
passes each frame to :class:`relay.Relay`, and collects what the relay writes.
Writes are batched: everything queued for a connection while one chunk of
input is handled goes out in a single ``transport.write`` when the chunk is
done ("one write per destination per read").

Backpressure: when a client stops reading and its send buffer passes
``write_buffer`` bytes, the relay stops reading from it and stops handing it
deliveries (they wait in the store); if it is still stalled after
``stall_timeout`` seconds it is dropped, and what it had not acknowledged
waits in the store until its TTL.

We use ``loop.create_server`` with a Protocol rather than ``start_server``
with streams: it is the same stdlib layer start_server is built on, without a
task and a StreamReader per connection, and it exposes pause_reading and
write-buffer limits, which backpressure needs. TLS is terminated by
:mod:`tlsconn` (an ``ssl.SSLObject`` over memory BIOs, one read buffer shared
by all connections) rather than by asyncio's TLS layer; the reasons, measured,
are in that module.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import framing
from msgrlib.errors import ErrorCode
from msgrlib.relay import tlsconn
from msgrlib.relay.config import RelayConfig
from msgrlib.relay.rules import Client, Refused, Relay, State
from msgrlib.util.netaddr import host_port

log = logging.getLogger("msgr.relay")

# A family the machine lacks: skipped when listening on every address.
_NO_FAMILY = {errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, getattr(errno, "EPROTONOSUPPORT", -1)}

def _timeout(message: str) -> Refused:
    """A ``timeout`` refusal, which closes the connection."""
    return Refused(ErrorCode.TIMEOUT, message, fatal=True)


class Connection(asyncio.Protocol):
    """One client connection: bytes in, frames to the relay, batched bytes out."""

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self.relay = server.relay
        self.address = "?"
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        # Small frames only until welcome (login_max_frame); see data_received.
        self.decoder = framing.FrameDecoder(max_size=server.relay.config.login_max_frame)
        self._logged_in = False
        self._buffered = 0  # this connection's part of server.read_buffered
        self.out: list[bytes] = []
        self.last_rx = 0.0
        self.closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._stalled_at: float | None = None

    # -- asyncio callbacks ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else str(peer)
        self.address = host_port(host, peer[1]) if isinstance(peer, tuple) else host
        server = self.server
        config = self.relay.config
        if server.closing:
            transport.abort()
            return
        if len(server.connections) >= config.max_connections:
            self._refuse("relay_full", "the relay has too many connections; try again later")
            return
        count = server.per_address.get(host, 0)
        if count >= config.max_per_address:
            self._refuse("too_many_connections",
                         f"too many connections from your address (limit {config.max_per_address})")
            return
        server.per_address[host] = count + 1
        self.host = host
        server.connections.add(self)
        transport.set_write_buffer_limits(high=config.write_buffer)
        self.client = self.relay.connect(self)
        loop = server.loop
        self.last_rx = loop.time()
        self._timer = loop.call_at(self.last_rx + config.hello_timeout, self._on_timer)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None or self.closing:
            return
        self.last_rx = self.server.loop.time()
        if not self._logged_in and client.state is State.READY and not self.decoder.buffered:
            # Welcomed since the last read (an engine answers the sign-in later).
            self._logged_in = True
            self.decoder = framing.FrameDecoder(max_size=self.relay.config.max_frame)
        try:
            frames = self.decoder.feed(data)
        except framing.FramingError as err:
            self.relay.fail(client, err)
            self.server.flush()
            return
        receive = self.relay.receive
        for frame in frames:
            receive(client, frame)
            if self.closing:
                break
        if not self.closing:
            decoder = self.decoder
            if not self._logged_in and client.state is State.READY and not decoder.buffered:
                # Welcomed, at a frame boundary: full-size frames from now on.
                self._logged_in = True
                self.decoder = decoder = framing.FrameDecoder(
                    max_size=self.relay.config.max_frame)
            self._account(decoder.buffered)
        self.server.flush()

    def _account(self, buffered: int) -> None:
        """Count this connection's partial frame in the relay's read buffers."""
        server = self.server
        grew = buffered > self._buffered
        server.read_buffered += buffered - self._buffered
        self._buffered = buffered
        if grew and server.read_buffered > self.relay.config.read_buffers:
            assert self.client is not None
            self.relay.fail(self.client, Refused(
                "relay_full", "the relay's memory for partly received frames is spent; "
                "try again shortly", fatal=True))
            self._account(0)

    def eof_received(self) -> bool | None:
        if self.client is not None and not self.closing:
            try:
                self.decoder.feed_eof()
            except framing.FramingError as err:
                # The peer is gone; nobody will read this, but the log shows why.
                log.info("truncated", extra={"fields": {"addr": self.address,
                                                        "reason": str(err)}})
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.read_buffered -= self._buffered
        self._buffered = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        server = self.server
        if self in server.connections:
            server.connections.discard(self)
            count = server.per_address.get(self.host, 1) - 1
            if count:
                server.per_address[self.host] = count
            else:
                server.per_address.pop(self.host, None)
        if self.client is not None:
            self.relay.disconnect(self.client)
            # Client.link points back here: without this the pair would wait
            # for a full garbage collection (now rare; see store.Held).
            self.client = None
        server.flush()
        if not server.connections:
            server.idle.set()

    def pause_writing(self) -> None:
        # The client is not reading what we send: stop reading what it sends,
        # and let deliveries wait in the store rather than in our memory.
        if self.client is not None:
            self.client.paused = True
        loop = self.server.loop
        self._stalled_at = now = loop.time()
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(now + self.relay.config.stall_timeout, self._on_timer)

    def resume_writing(self) -> None:
        self._stalled_at = None
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()
        if self.client is not None:
            self.relay.resume(self.client)
            self.server.flush()

    # -- Link interface used by relay.Relay -------------------------------------

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.out:
            self.server.dirty.append(self)
        self.out.append(data)

    def pause_reading(self) -> None:
        """Stop reading: frames wait for an engine's answers (rules.BACKLOG_PAUSE)."""
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self._flush()
        transport = self.transport
        if transport is not None:
            transport.close()
            # close() waits for the buffer to drain; a client that stopped
            # reading gets stall_timeout to take it, then is cut.
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.server.loop.call_later(self.relay.config.stall_timeout,
                                                      transport.abort)

    # -- internals ----------------------------------------------------------

    def _flush(self) -> None:
        out = self.out
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def _refuse(self, code: str, message: str) -> None:
        assert self.transport is not None
        frame = {"type": "error", "code": code, "message": message, "fatal": True}
        self.transport.write(framing.encode_frame(frame))
        self.closing = True
        self.transport.close()
        log.info("refused", extra={"fields": {"addr": self.address, "code": code}})

    def _on_timer(self) -> None:
        """One timer per connection: hello deadline, then idle and stall checks."""
        self._timer = None
        client = self.client
        if self.closing or client is None:
            return
        loop = self.server.loop
        now = loop.time()
        config = self.relay.config
        if client.state.value != "ready":
            self.relay.fail(client, _timeout("no hello within "
                                             f"{config.hello_timeout:g} s; closing"))
            self.server.flush()
            return
        if self._stalled_at is not None and now - self._stalled_at >= config.stall_timeout:
            self.relay.fail(client, _timeout("you stopped reading; closing"))
            self.server.flush()
            if self.transport is not None:
                self.transport.abort()  # its buffer will never drain
            return
        if now - self.last_rx >= config.idle_timeout:
            self.relay.fail(client, _timeout(f"no heartbeat for {config.idle_timeout:g} s"))
            self.server.flush()
            return
        deadline = self.last_rx + config.idle_timeout
        if self._stalled_at is not None:
            deadline = min(deadline, self._stalled_at + config.stall_timeout)
        self._timer = loop.call_at(deadline, self._on_timer)


class RelayServer:
    """A relay listening on a socket. Use :func:`start_relay` to make one."""

    def __init__(self, config: RelayConfig, *, loop: asyncio.AbstractEventLoop,
                 tls_fingerprint: str | None = None, backend: Any = None) -> None:
        self.loop = loop
        #: The engine backend (a started RedisBackend), or None: in memory.
        self.backend = backend
        self._steps: set[asyncio.Future[Any]] = set()
        self.relay: Relay
        if backend is None:
            self.relay = Relay(config, clock=loop.time, wallclock=time.time, rng=os.urandom,
                               arm=self._arm, tls_fingerprint=tls_fingerprint)
        else:
            from msgrlib.relay.cluster import EngineRelay
            self.relay = EngineRelay(config, backend, clock=loop.time, wallclock=time.time,
                                     rng=os.urandom, arm=self._arm,
                                     tls_fingerprint=tls_fingerprint, spawn=self._spawn,
                                     after_event=self.flush)
        self.connections: set[Connection] = set()
        self.per_address: dict[str, int] = {}
        #: Bytes of partly received frames held by all connections.
        self.read_buffered = 0
        self.dirty: list[Connection] = []
        self.idle = asyncio.Event()
        self.closing = False
        #: One listening server per address (IPv4 and IPv6 by default).
        self.servers: list[asyncio.Server] = []
        #: After :meth:`close`: what the shutdown did (connections closed,
        #: messages dropped), for the one line the CLI prints.
        self.stopped: dict[str, int] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at: float | None = None
        self.tls = False
        #: TLS connections still in their handshake (see tlsconn.Handshakes).
        self.handshaking = tlsconn.Handshakes(max_total=config.max_connections,
                                              max_per_host=config.max_per_address)

    @property
    def server(self) -> asyncio.Server | None:
        """The first listening server (the library's single-address case)."""
        return self.servers[0] if self.servers else None

    @property
    def address(self) -> tuple[str, int]:
        """The first listening ``(host, port)``."""
        return self.addresses[0]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every listening ``(host, port)``, in the order the hosts were given."""
        out = []
        for srv in self.servers:
            for sock in srv.sockets:
                host, port = sock.getsockname()[:2]
                out.append((host, port))
        return out

    def memory(self) -> dict[str, int]:
        """Bytes the relay holds for clients, by kind: stored ciphertext
        (``store``, capped by store_bytes), partly received frames
        (``read_buffers``, capped by read_buffers) and output not yet taken by
        the kernel (``write_buffers``, at most about write_buffer per
        connection, which then stops being read from). O(connections)."""
        write = 0
        for conn in self.connections:
            write += sum(map(len, conn.out))
            if conn.transport is not None:
                write += conn.transport.get_write_buffer_size()
        return {"store": getattr(self.relay.store, "bytes", 0),
                "read_buffers": self.read_buffered, "write_buffers": write}

    def flush(self) -> None:
        """Write out everything queued during this batch, one write per connection."""
        dirty = self.dirty
        if dirty:
            for conn in dirty:
                conn._flush()
            dirty.clear()

    def _spawn(self, step: Any,
               done: Callable[[Any, BaseException | None], None]) -> None:
        """Run a backend step; ``done(result, error)`` then flush the writes."""
        future = asyncio.ensure_future(step)
        self._steps.add(future)

        def finished(fut: asyncio.Future[Any]) -> None:
            self._steps.discard(fut)
            if fut.cancelled():
                from msgrlib.relay.engine import EngineUnavailable
                done(None, EngineUnavailable("the relay is closing"))
            else:
                error = fut.exception()
                done(None if error is not None else fut.result(), error)
            self.flush()

        future.add_done_callback(finished)

    def _arm(self, deadline: float) -> None:
        if self._expiry is not None:
            if self._expiry_at is not None and self._expiry_at <= deadline:
                return
            self._expiry.cancel()
        self._expiry_at = deadline
        self._expiry = self.loop.call_at(deadline, self._tick)

    def _tick(self) -> None:
        self._expiry = None
        self._expiry_at = None
        self.relay.tick()  # re-arms through _arm with the next deadline
        self.flush()

    async def close(self, *, timeout: float = 5.0) -> None:
        """Stop accepting, tell clients, and wait (bounded) for them to go."""
        if self.closing:
            return
        self.closing = True
        for srv in self.servers:
            srv.close()
        if self.servers:
            # Sockets accepted just before get connection_made in the next
            # loop iteration: let that run, so they are counted below.
            await asyncio.sleep(0)
        self.stopped = {"connections": len(self.connections) + len(self.handshaking),
                        "messages": len(self.relay.store)}
        log.info("stopped", extra={"fields": dict(self.stopped)})
        self.relay.shutdown()
        for tls in self.handshaking:
            tls.abort()  # mid-handshake: not a client of the relay yet
        for conn in list(self.connections):
            conn.close()
        self.flush()
        if self.connections:
            try:
                await asyncio.wait_for(self.idle.wait(), timeout)
            except asyncio.TimeoutError:
                for conn in list(self.connections):
                    if conn.transport is not None:
                        conn.transport.abort()
        if self._expiry is not None:
            self._expiry.cancel()
        for srv in self.servers:
            await srv.wait_closed()
        if self.backend is not None:
            # Releases this node's names at once (else they lapse with its lease).
            await self.backend.close()


#: Connections the kernel may hold for the relay before it accepts them
#: (``listen()``'s backlog; Linux caps it at ``net.core.somaxconn``, 4096 by
#: default). A relay restart is met by every client at once: with 1024, a
#: storm of 10,000 reconnects overflowed the queue, and each dropped
#: connection waited for TCP's own retry (1 s, then 3 s, 7 s...) however
#: fast the relay was (BENCHMARKS.md, "Reconnect storms"). Queued
#: connections cost the kernel only their socket until accepted.
BACKLOG = 4096

#: What ``host=None`` listens on: every address of both families, one
#: socket each (asyncio makes the IPv6 one IPv6-only, so they never clash).
ALL_HOSTS = ("0.0.0.0", "::")


async def start_relay(config: RelayConfig | None = None, *,
                      host: str | Sequence[str] | None = "127.0.0.1",
                      port: int = 0, ssl_context: ssl.SSLContext | None = None,
                      backlog: int = BACKLOG, backend: Any = None,
                      reuse_port: bool = False) -> RelayServer:
    """Start a relay in the running loop and return it once it listens.

    The library entry point: ``server = await start_relay(port=0)``, then
    ``server.address`` is the real ``(host, port)``; ``await server.close()``.

    ``host`` is one address, several (one socket each, all on the same port:
    with ``port=0`` the first one's free port is used for the others), or
    None for :data:`ALL_HOSTS`, IPv4 and IPv6; there a family this machine
    lacks (no IPv6) is skipped, but not both. Raises ``OSError`` if an
    address cannot be listened on.

    ``backend``: a :class:`~msgrlib.relay.engine.RedisBackend` (not started)
    to share names and mailboxes with other relay processes; it is started
    here before listening (raising its EngineConfigError or
    EngineUnavailable) and closed by :meth:`RelayServer.close`.

    ``reuse_port``: listen with ``SO_REUSEPORT``, beside other processes
    doing the same on the same port (``serve --workers``, :mod:`workers`).
    """
    loop = asyncio.get_running_loop()
    config = config or RelayConfig()
    fingerprint = None
    if ssl_context is not None:
        from msgrlib.tls import contexts  # signatures name the relay by its certificate
        fingerprint = contexts.served_fingerprint(ssl_context)
    if backend is not None:
        await backend.start()
    relay_server = RelayServer(config, loop=loop, tls_fingerprint=fingerprint,
                               backend=backend)
    relay_server.tls = ssl_context is not None
    factory: Callable[[], asyncio.BaseProtocol]
    if ssl_context is None:
        def factory() -> asyncio.BaseProtocol:
            return Connection(relay_server)
    else:
        context, buffer = ssl_context, tlsconn.ReadBuffer()

        def factory() -> asyncio.BaseProtocol:
            return tlsconn.TLSProtocol(
                context, Connection(relay_server), buffer=buffer, loop=loop,
                handshake_timeout=config.tls_handshake_timeout,
                handshakes=relay_server.handshaking, shutdown_timeout=config.stall_timeout)
    hosts = [host] if isinstance(host, str) else list(host or ALL_HOSTS)
    try:
        for each in hosts:
            try:
                srv = await loop.create_server(factory, host=each, port=port,
                                               backlog=backlog, reuse_address=True,
                                               reuse_port=reuse_port or None)
            except OSError as err:
                if host is None and err.errno in _NO_FAMILY and each != hosts[0]:
                    log.info("skipped", extra={"fields": {"addr": host_port(each, port),
                                                          "reason": err.strerror}})
                    continue
                raise
            relay_server.servers.append(srv)
            port = port or srv.sockets[0].getsockname()[1]
    except BaseException:
        for opened in relay_server.servers:
            opened.close()
        if backend is not None:
            await backend.close(timeout=0)
        raise
    return relay_server


async def serve_forever(relay_server: RelayServer, *,
                        on_signal: Callable[[str], Any] | None = None,
                        ignore_repeats: bool = False) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly within a bound.

    A second signal during the shutdown interrupts it (KeyboardInterrupt, or
    SIGTERM's default), unless ``ignore_repeats``: a worker of ``serve
    --workers`` gets Ctrl-C from the terminal and SIGTERM from its parent at
    once, and its parent enforces the bound.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for signame in ("SIGINT", "SIGTERM"):
        signum = getattr(signal, signame, None)
        if signum is None:
            continue
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            pass
    try:
        await stop.wait()
    finally:
        for signum in installed:
            if ignore_repeats:
                loop.add_signal_handler(signum, _ignore)  # replaced: never the default
            else:
                loop.remove_signal_handler(signum)
        if on_signal is not None:
            on_signal("stopping")
        await relay_server.close()
        if ignore_repeats:
            for signum in installed:
                loop.remove_signal_handler(signum)


def _ignore() -> None:
    pass


__all__ = ["BACKLOG", "Connection", "RelayServer", "start_relay", "serve_forever"]
