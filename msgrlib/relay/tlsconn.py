"""TLS for one asyncio connection, over memory BIOs.

:class:`TLSProtocol` sits between a plain socket transport and an
application protocol: ciphertext from the socket goes into an
``ssl.SSLObject`` through a ``MemoryBIO``; plaintext comes out and is handed
to the application's ``data_received``. The application sees an ordinary
transport (``write``, ``close``, ``pause_reading``, write-buffer limits and
flow-control callbacks), so it cannot tell this layer from asyncio's own.

Why not asyncio's TLS layer (``loop.create_server(ssl=...)``)? The relay
measured three costs there (bench/, BENCHMARKS.md):

* memory: every connection gets its own 256 KiB socket read buffer, about
  283 KiB per idle TLS client. Here every connection of a server reads into
  one shared buffer (:class:`ReadBuffer`), copied into the connection's BIO
  at once, so an idle connection holds only OpenSSL's state.
* CPU per message: asyncio reads the SSLObject until it raises
  ``SSLWantReadError``, an exception object built and caught per socket read,
  and passes each write through a backlog and two layers of bookkeeping.
  Here a read stops when the incoming BIO is empty, and a write is one
  ``SSLObject.write`` and one socket-transport write.
* the earlier way around the first point reached into asyncio's private
  ``sslproto`` attributes, which differ between Python versions.

The relay uses it for every TLS connection. Its client mode serves the
benchmark's load generator, which must spend less CPU per message than the
relays it measures; msgr's chat client keeps asyncio's TLS (one connection,
one person's traffic). What this layer does not do: TLS renegotiation
(refused: see ``certs.server_context``).

Errors from OpenSSL (a bad handshake, a forged record) close the connection.
Before the handshake completes the application never hears of it (a server's
application has not been made yet); a client learns why from
:attr:`TLSProtocol.handshake`. After, the application gets ``connection_lost``
with the ``ssl.SSLError``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("msgr.relay")

#: Plaintext asked of OpenSSL per read. One call returns at most one TLS
#: record, which carries at most 16 KiB.
TLS_RECORD = 16 * 1024
#: Size of the read buffer every connection of a server shares: large
#: reads under load, nothing per idle connection.
SHARED_READ_BUFFER = 256 * 1024


class ReadBuffer:
    """The socket read buffer shared by every connection of one server.

    Sharing is safe because the bytes live in it only between the socket's
    ``recv_into`` and the first statement of ``buffer_updated``, which copies
    them into the connection's incoming BIO; both run in one callback of the
    (single-threaded) event loop, so no two connections have data in it at
    the same time.
    """

    def __init__(self, size: int = SHARED_READ_BUFFER) -> None:
        self.view = memoryview(bytearray(size))


class Handshakes:
    """The connections of one server still in their TLS handshake, with caps.

    A handshake costs the server CPU and OpenSSL state before any limit of
    the application applies, so a flood of half-open handshakes is capped
    here: at most ``max_total`` at once (0: no cap), and ``max_per_host``
    from one address. A server shutting down aborts the ones left.
    """

    def __init__(self, *, max_total: int = 0, max_per_host: int = 0) -> None:
        self.max_total = max_total
        self.max_per_host = max_per_host
        self._pending: set[TLSProtocol] = set()
        self._per_host: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self) -> Iterator[TLSProtocol]:
        return iter(list(self._pending))

    def admit(self, proto: TLSProtocol, host: str) -> bool:
        count = self._per_host.get(host, 0)
        if (self.max_total and len(self._pending) >= self.max_total
                or self.max_per_host and count >= self.max_per_host):
            return False
        self._pending.add(proto)
        self._per_host[host] = count + 1
        return True

    def done(self, proto: TLSProtocol, host: str) -> None:
        if proto in self._pending:
            self._pending.discard(proto)
            count = self._per_host[host] - 1
            if count:
                self._per_host[host] = count
            else:
                del self._per_host[host]


class TLSProtocol(asyncio.BufferedProtocol, asyncio.Transport):
    """TLS between a socket transport and ``app``, an ``asyncio.Protocol``.

    ``app.connection_made`` is called with this object as its transport once
    the handshake succeeds; a peer that does not finish it within
    ``handshake_timeout`` seconds is disconnected. With ``server_side=False``
    it is the client end (``server_hostname`` as for ``SSLContext.wrap_bio``).

    While the handshake runs the connection is counted in ``handshakes`` (if
    given), which may refuse it (see :class:`Handshakes`): it is then dropped
    at once. Once closing, the peer has ``shutdown_timeout`` seconds to take
    what is queued (as asyncio's ``ssl_shutdown_timeout``), then the socket
    is aborted: a peer that stops reading cannot hold a closed connection open.

    In client mode, ``session`` (an ``ssl.SSLSession`` from an earlier
    connection's ``get_extra_info("ssl_object").session``, made with the same
    context) is offered for TLS 1.3 resumption; the server may refuse it and
    run a full handshake.

    In client mode, :attr:`handshake` is a future that completes when the
    handshake does, or carries why it failed (the ``ssl.SSLError``, a
    ``TimeoutError``, or a ``ConnectionError`` if the socket closed first).
    Server mode has none: a server has no one to tell, and 10,000
    connections would each carry one.
    """

    def __init__(self, context: ssl.SSLContext, app: asyncio.Protocol, *,
                 buffer: ReadBuffer, handshake_timeout: float = 10.0,
                 handshakes: Handshakes | None = None, shutdown_timeout: float = 10.0,
                 server_side: bool = True, server_hostname: str | None = None,
                 session: ssl.SSLSession | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        asyncio.Transport.__init__(self)
        self._context = context
        self._server_side = server_side
        self._server_hostname = server_hostname
        self._session = session
        self._app = app
        self._view = buffer.view
        self._handshake_timeout = handshake_timeout
        self._loop = loop
        self._raw: asyncio.Transport | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj: ssl.SSLObject | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._app_connected = False  # app.connection_made was called
        self._closing = False
        self._error: Exception | None = None
        self._handshakes = handshakes
        self._host = "?"
        self._shutdown_timeout = shutdown_timeout
        self._write_raw: Callable[[bytes], None] | None = None
        self._write_paused = False  # the socket's buffer is over its limit
        self._app_paused = False  # and the application was told so
        #: Client mode: done when the handshake is (see the class docstring).
        self.handshake: asyncio.Future[None] | None = None

    # -- the socket side (asyncio calls these) ---------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._raw = transport
        self._write_raw = transport.write
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        if not self._server_side:
            self.handshake = loop.create_future()
        handshakes = self._handshakes
        if handshakes is not None:
            peer = transport.get_extra_info("peername")
            self._host = peer[0] if isinstance(peer, tuple) else str(peer)
            if not handshakes.admit(self, self._host):
                log.info("tls_busy", extra={"fields": {"addr": self._peer(),
                                                       "handshaking": len(handshakes)}})
                self._closing = True
                transport.abort()
                return
        self._sslobj = self._context.wrap_bio(self._incoming, self._outgoing,
                                              server_side=self._server_side,
                                              server_hostname=self._server_hostname,
                                              session=self._session)
        self._timer = loop.call_later(self._handshake_timeout, self._handshake_expired)
        self._handshake()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self._closing:
            return  # we said close_notify, or failed: nothing more is read
        self._incoming.write(self._view[:nbytes])
        if self._app_connected:
            self._read()
        else:
            self._handshake()

    def eof_received(self) -> bool:
        self._incoming.write_eof()
        if self._app_connected and not self._closing:
            self._app.eof_received()
        return False  # close the socket

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._handshakes is not None:
            self._handshakes.done(self, self._host)
        error, self._error = self._error, None
        self._handshake_failed(error or exc or ConnectionResetError(
            "the connection closed during the TLS handshake"))
        if self._app_connected:
            self._app_connected = False
            self._app.connection_lost(exc or error)
        self._sslobj = None  # OpenSSL's state, and the cycle through the app
        self._app = None  # type: ignore[assignment]

    def pause_writing(self) -> None:
        # Remembered: a pause that comes during the handshake is passed on
        # once the application is connected (see _handshake).
        self._write_paused = True
        self._tell_app_paused()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._app_paused:
            self._app_paused = False
            self._app.resume_writing()

    def _tell_app_paused(self) -> None:
        if self._write_paused and self._app_connected and not self._app_paused:
            self._app_paused = True
            self._app.pause_writing()

    # -- the TLS machinery -------------------------------------------------------

    def _handshake(self) -> None:
        sslobj = self._sslobj
        assert sslobj is not None
        try:
            sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._send_pending()
            return
        except (ssl.SSLError, ValueError) as err:
            self._fail(err, "tls_failed")  # sends the alert, if OpenSSL made one
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._handshakes is not None:
            self._handshakes.done(self, self._host)
        self._send_pending()  # the last flight, and TLS 1.3 session tickets
        self._app_connected = True
        self._app.connection_made(self)
        if not self._closing:
            self._tell_app_paused()  # if the socket went over its limit before
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_result(None)
        if self._incoming.pending and not self._closing:
            self._read()  # the client's first data came with its Finished

    def _read(self) -> None:
        sslobj = self._sslobj
        incoming = self._incoming
        assert sslobj is not None
        chunks = []
        eof = False
        try:
            # Stop when the BIO is empty, instead of asking OpenSSL once more
            # and catching SSLWantReadError: that exception was the largest
            # single cost of a small read in asyncio's TLS layer.
            while incoming.pending:
                data = sslobj.read(TLS_RECORD)
                if not data:
                    eof = True  # the peer's close_notify
                    break
                chunks.append(data)
        except ssl.SSLWantReadError:
            pass  # a partial record, or a record without data; the rest comes later
        except ssl.SSLError as err:
            self._deliver(chunks)
            self._fail(err, "tls_error")
            return
        if self._outgoing.pending:
            self._send_pending()  # whatever OpenSSL queued while reading
        self._deliver(chunks)
        if eof and self._app_connected and not self._closing:
            self._app.eof_received()
            self.close()

    def _deliver(self, chunks: list[bytes]) -> None:
        if chunks and self._app_connected and not self._closing:
            self._app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _send_pending(self) -> None:
        data = self._outgoing.read()
        if data and self._raw is not None and not self._raw.is_closing():
            self._raw.write(data)

    def _handshake_expired(self) -> None:
        self._timer = None
        if not self._app_connected and self._raw is not None:
            log.debug("tls_timeout", extra={"fields": {"addr": self._peer()}})
            self._handshake_failed(TimeoutError(
                f"the TLS handshake did not complete within {self._handshake_timeout:g} s"))
            self._closing = True
            self._raw.abort()

    def _handshake_failed(self, err: BaseException) -> None:
        """Tell a client why its handshake failed (no-op once it is done)."""
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(err)

    def _fail(self, err: Exception, event: str) -> None:
        reason = getattr(err, "reason", None) or type(err).__name__
        log.debug(event, extra={"fields": {"addr": self._peer(), "reason": reason}})
        # Without its traceback: that would hold this frame, hence self and
        # OpenSSL's state, in a cycle until a full garbage collection.
        self._error = err.with_traceback(None)
        if not self._app_connected:
            self._handshake_failed(self._error)
        self._send_pending()  # the alert OpenSSL queued tells the peer why
        self._closing = True
        self._close_raw()

    def _close_raw(self) -> None:
        """Close the socket once what is queued is sent, within shutdown_timeout."""
        raw = self._raw
        if raw is None or raw.is_closing():
            return
        raw.close()
        if self._loop is not None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_later(self._shutdown_timeout, raw.abort)

    def _peer(self) -> str:
        peer = self._raw.get_extra_info("peername") if self._raw is not None else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    # -- the transport the application sees -------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._sslobj is None or not data:
            return
        # A memory BIO never blocks, so write() takes everything at once
        # (renegotiation, which could make it wait for the peer, is off).
        self._sslobj.write(data)
        self._write_raw(self._outgoing.read())  # type: ignore[misc]

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def close(self) -> None:
        """Send close_notify after what is queued, then close the socket."""
        if self._closing:
            return
        self._closing = True
        if self._sslobj is not None:
            try:
                self._sslobj.unwrap()
            except ssl.SSLError:
                pass  # SSLWantReadError: we do not wait for the peer's reply
            self._send_pending()
        self._close_raw()

    def abort(self) -> None:
        self._closing = True
        if self._raw is not None:
            self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._raw is None or self._raw.is_closing()

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sslobj = self._sslobj
        if sslobj is not None:
            if name == "ssl_object":
                return sslobj
            if name == "peercert":
                return sslobj.getpeercert()
            if name == "cipher":
                return sslobj.cipher()
            if name == "compression":
                return sslobj.compression()
        if self._raw is None:
            return default
        return self._raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        if self._raw is not None:
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if self._raw is not None:
            self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw is not None and self._raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        # Counted in ciphertext: within a few percent of the plaintext for
        # all but tiny writes, and what actually sits in memory.
        if self._raw is not None:
            self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size() if self._raw is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits() if self._raw is not None else (0, 0)


__all__ = ["Handshakes", "ReadBuffer", "TLSProtocol", "TLS_RECORD", "SHARED_READ_BUFFER"]
