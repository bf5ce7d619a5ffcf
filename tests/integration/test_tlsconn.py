"""The relay's own TLS layer (tlsconn.py), against a real relay on loopback.

Most TLS traffic in the suite goes through it already (test_e2e, test_certs,
test_screen); these tests aim at what an ordinary client never does: records
cut into tiny TCP segments, many records in one segment, forged records,
garbage instead of a ClientHello, close_notify, TLS 1.2, and a shutdown
while handshakes are half done. (A TLS client that stops reading is in
test_relay.py, beside the plain one.) The last tests use its client mode,
as the benchmark's load generator does.

:class:`RecordClient` speaks TLS through an ``ssl.SSLObject`` over a plain
socket, so a test decides exactly which ciphertext bytes go out and when.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import weakref

import pytest
from helpers import RawClient, relay_running, run, send_frame, tls_contexts
from nacl.signing import SigningKey

import framing
from msgrlib.relay import rules as relay
from msgrlib.relay import tlsconn


@pytest.fixture
def tls(tmp_path):
    """(server context, client context) for a fresh self-signed certificate."""
    return tls_contexts(tmp_path)


class RecordClient(RawClient):
    """A TLS client whose ciphertext the test controls, byte by byte."""

    def __init__(self, reader, writer, context: ssl.SSLContext) -> None:
        super().__init__(reader, writer)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.decoder = framing.FrameDecoder(max_size=1 << 20)
        self.frames: list = []

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext) -> RecordClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer, context)
        while True:
            try:
                client.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await client.send_raw(client.outgoing.read())
                data = await asyncio.wait_for(reader.read(65536), 5)
                assert data, "the relay closed during the handshake"
                client.incoming.write(data)
        await client.send_raw(client.outgoing.read())
        return client

    @classmethod
    async def logged_in(cls, port: int, context: ssl.SSLContext, user: str,
                        key: SigningKey | None = None) -> RecordClient:
        """open(), then hello and the challenge answered: welcomed as ``user``."""
        client = await cls.open(port, context)
        assert (await client.hello(user, key))["type"] == "welcome"
        return client

    async def read_until_closed(self, timeout: float = 3.0) -> None:
        """Feed everything the relay sends until it closes, then EOF, into
        the TLS object, so a test can read its last records (an alert, a
        close_notify)."""
        while chunk := await asyncio.wait_for(self.reader.read(4096), timeout):
            self.incoming.write(chunk)
        self.incoming.write_eof()

    def seal(self, frame: dict) -> bytes:
        """The ciphertext of one frame (one or more TLS records), not yet sent."""
        self.tls.write(framing.encode_frame(frame))
        return self.outgoing.read()

    async def send(self, frame: dict) -> None:
        await self.send_raw(self.seal(frame))

    async def recv(self, timeout: float = 5.0) -> dict:
        while not self.frames:
            try:
                plain = self.tls.read(65536)
            except ssl.SSLWantReadError:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                assert data, "connection closed"
                self.incoming.write(data)
                continue
            self.frames.extend(self.decoder.feed(plain))
        return self.frames.pop(0)


def test_records_cut_into_tiny_segments_and_many_records_per_segment(tls):
    server_ctx, client_ctx = tls

    async def main():
        async with relay_running(relay.RelayConfig(), ssl_context=server_ctx) as srv:
            port = srv.address[1]
            alice = await RawClient.login(port, "alice", ssl=client_ctx)
            bob = await RecordClient.logged_in(port, client_ctx, "bob")
            # A frame near the size limit is four TLS records; send its
            # ciphertext 7 bytes at a time, so the relay sees every record
            # arrive in pieces, headers included.
            body = "s1." + "x" * 60_000
            cipher = bob.seal(send_frame("alice", body, ref=1))
            for i in range(0, len(cipher), 7):
                await bob.send_raw(cipher[i:i + 7])
                if i % 700 == 0:
                    await asyncio.sleep(0.001)  # let the relay read a partial record
            assert (await bob.recv_type("accepted"))["ref"] == 1
            assert (await alice.recv_type("deliver"))["body"] == body
            # Then 50 records in one segment: each frame is its own record.
            burst = b"".join(bob.seal(send_frame("alice", f"s1.m{i}", ref=10 + i))
                             for i in range(50))
            await bob.send_raw(burst)
            refs = [(await bob.recv_type("accepted"))["ref"] for _ in range(50)]
            assert refs == list(range(10, 60))
            bodies = [(await alice.recv_type("deliver"))["body"] for _ in range(50)]
            assert bodies == [f"s1.m{i}" for i in range(50)]
    run(main())


def test_a_forged_record_closes_only_that_connection(tls):
    server_ctx, client_ctx = tls

    async def main():
        async with relay_running(relay.RelayConfig(), ssl_context=server_ctx) as srv:
            port = srv.address[1]
            alice = await RawClient.login(port, "alice", ssl=client_ctx)
            mallory = await RecordClient.logged_in(port, client_ctx, "mallory")
            conn = next(c for c in srv.connections if c.client.user == "mallory")
            sslobj = weakref.ref(conn.transport.get_extra_info("ssl_object"))
            del conn
            record = bytearray(mallory.seal({"type": "ping"}))
            record[-1] ^= 1  # the last byte of the authentication tag
            gc.disable()  # OpenSSL's state must go by reference counting, not a collection
            try:
                await mallory.send_raw(bytes(record))
                await mallory.read_until_closed()
                # The relay said why before closing: a bad_record_mac alert.
                with pytest.raises(ssl.SSLError, match="BAD_RECORD_MAC"):
                    mallory.tls.read(4096)
                await asyncio.sleep(0.05)
                assert sslobj() is None
            finally:
                gc.enable()
            await alice.send({"type": "ping"})
            assert (await alice.recv())["type"] == "pong"
            await asyncio.sleep(0.05)
            assert "mallory" not in {c.client.user for c in srv.connections}
    run(main())


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n",
    framing.encode_frame({"type": "hello", "v": 1, "user": "alice"}),  # plain msgr
    b"\x16\x03\x01\x00\x05hello",  # a handshake record that is no ClientHello
])
def test_garbage_instead_of_a_client_hello_is_cut_at_once(tls, garbage):
    server_ctx, client_ctx = tls
    # The handshake timeout is long: the cut must come from the failed handshake.
    config = relay.RelayConfig(tls_handshake_timeout=30)

    async def main():
        async with relay_running(config, ssl_context=server_ctx) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.address[1])
            writer.write(garbage)
            loop = asyncio.get_running_loop()
            started = loop.time()
            while await asyncio.wait_for(reader.read(4096), 5):
                pass  # maybe a TLS alert first
            assert loop.time() - started < 2
            writer.close()
            assert not srv.handshaking and not srv.connections
            ok = await RawClient.login(srv.address[1], "alice", ssl=client_ctx)
            await ok.send({"type": "ping"})
            assert (await ok.recv())["type"] == "pong"
    run(main())


def test_close_notify_frees_the_connection_at_once(tls):
    server_ctx, client_ctx = tls

    async def main():
        async with relay_running(relay.RelayConfig(), ssl_context=server_ctx) as srv:
            port = srv.address[1]
            alice = await RecordClient.logged_in(port, client_ctx, "alice")
            try:
                alice.tls.unwrap()
            except ssl.SSLWantReadError:
                pass  # our close_notify is out; the relay's comes back
            await alice.send_raw(alice.outgoing.read())
            await alice.read_until_closed()
            # The relay answered with its close_notify (a bare TCP close would
            # raise SSLEOFError here).
            with pytest.raises(ssl.SSLZeroReturnError):
                alice.tls.read(1024)
            assert not srv.connections
            assert srv.relay.claims.get("alice") is None or \
                srv.relay.claims["alice"].client is None
    run(main())


def test_tls_1_2_clients_are_served(tls):
    server_ctx, client_ctx = tls
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    async def main():
        async with relay_running(relay.RelayConfig(), ssl_context=server_ctx) as srv:
            alice = await RawClient.login(srv.address[1], "alice", ssl=client_ctx)
            version = alice.writer.get_extra_info("ssl_object").version()
            assert version == "TLSv1.2"
            await alice.send({"type": "ping"})
            assert (await alice.recv())["type"] == "pong"
    run(main())


def test_shutdown_aborts_half_done_handshakes(tls):
    server_ctx, _ = tls
    config = relay.RelayConfig(tls_handshake_timeout=30)

    async def main():
        async with relay_running(config, ssl_context=server_ctx) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.address[1])
            writer.write(b"\x16\x03\x01")  # the start of a ClientHello, then silence
            for _ in range(100):
                await asyncio.sleep(0.01)
                if srv.handshaking:
                    break
            assert srv.handshaking
            loop = asyncio.get_running_loop()
            started = loop.time()
            await srv.close(timeout=5)
            assert loop.time() - started < 2
            assert await asyncio.wait_for(reader.read(100), 2) == b""
            writer.close()
    run(main())


@pytest.mark.parametrize("limits", [{"max_connections": 3}, {"max_per_address": 3}],
                         ids=["total", "per-address"])
def test_half_open_handshakes_are_capped_by_the_connection_limits(tls, limits):
    server_ctx, client_ctx = tls
    config = relay.RelayConfig(tls_handshake_timeout=30, **limits)

    async def main():
        async with relay_running(config, ssl_context=server_ctx) as srv:
            port = srv.address[1]
            stalled = []
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"\x16\x03\x01")  # a ClientHello that never ends
                stalled.append((reader, writer))
            for _ in range(100):
                await asyncio.sleep(0.01)
                if len(srv.handshaking) == 3:
                    break
            assert len(srv.handshaking) == 3
            # One more is dropped at once, before OpenSSL does any work for it.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 3)
            writer.close()
            for _, w in stalled:
                w.close()
            for _ in range(100):
                await asyncio.sleep(0.01)
                if not srv.handshaking:
                    break
            alice = await RawClient.login(port, "alice", ssl=client_ctx)
            await alice.send({"type": "ping"})
            assert (await alice.recv())["type"] == "pong"
    run(main())


# -- client mode (the benchmark's load generator uses it) ------------------------------


class Recorder(asyncio.Protocol):
    """An application protocol that notes what the TLS layer tells it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.data = bytearray()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.calls.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")

    def connection_lost(self, exc) -> None:
        self.calls.append("lost")


async def _client(port: int, context: ssl.SSLContext, app: asyncio.Protocol,
                  **kwargs) -> tlsconn.TLSProtocol:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: tlsconn.TLSProtocol(context, app, buffer=tlsconn.ReadBuffer(), server_side=False,
                                    server_hostname="localhost", **kwargs),
        "127.0.0.1", port)
    return proto


def test_client_mode_says_when_its_handshake_is_done(tls):
    server_ctx, client_ctx = tls

    async def main():
        async with relay_running(ssl_context=server_ctx) as srv:
            app = Recorder()
            proto = await _client(srv.address[1], client_ctx, app)
            await asyncio.wait_for(proto.handshake, 5)
            assert app.calls == ["made"]
            app.transport.write(framing.encode_frame({"type": "hello", "v": 1}))
            while not app.data:
                await asyncio.sleep(0.01)
            assert framing.FrameDecoder().feed(bytes(app.data))[0]["type"] == "error"
            proto.close()
    run(main())


def test_client_mode_reports_why_its_handshake_failed(tls, tmp_path):
    server_ctx, _ = tls
    _, stranger = tls_contexts(tmp_path / "other")  # trusts another certificate

    async def main():
        async with relay_running(ssl_context=server_ctx) as srv:
            app = Recorder()
            proto = await _client(srv.address[1], stranger, app)
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.wait_for(proto.handshake, 5)
            assert app.calls == []  # the application was never connected
        async with relay_running() as plain:  # not TLS at all
            proto = await _client(plain.address[1], stranger, app)
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await asyncio.wait_for(proto.handshake, 5)
        # A server that never answers: the handshake timeout, as a TimeoutError.
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        async with silent:
            port = silent.sockets[0].getsockname()[1]
            proto = await _client(port, stranger, app, handshake_timeout=0.2)
            with pytest.raises(TimeoutError, match="did not complete within 0.2 s"):
                await asyncio.wait_for(proto.handshake, 5)
        assert app.calls == []
    run(main())


def test_a_pause_during_the_handshake_reaches_the_application(tls):
    """The socket may ask us to stop writing before the application exists
    (asyncio calls pause_writing on the TLS layer): it is told once connected."""
    server_ctx, client_ctx = tls

    async def main():
        async with relay_running(ssl_context=server_ctx) as srv:
            app = Recorder()
            proto = await _client(srv.address[1], client_ctx, app)
            assert not proto.handshake.done()
            proto.pause_writing()  # as the socket transport would
            await asyncio.wait_for(proto.handshake, 5)
            assert app.calls == ["made", "pause"]
            proto.pause_writing()  # told once only
            proto.resume_writing()
            assert app.calls == ["made", "pause", "resume"]
            proto.resume_writing()  # nothing to resume
            assert app.calls == ["made", "pause", "resume"]
            proto.close()
    run(main())


def test_client_mode_offers_a_kept_session_and_the_relay_resumes_it(tls):
    """TLS 1.3 resumption through this layer on both ends: the ticket from one
    connection, offered on the next, is accepted (no certificate exchange),
    and the resumed connection still names the relay's certificate."""
    server_ctx, client_ctx = tls

    async def main():
        async with relay_running(ssl_context=server_ctx) as srv:
            app = Recorder()
            first = await _client(srv.address[1], client_ctx, app)
            await asyncio.wait_for(first.handshake, 5)
            ssl_object = first.get_extra_info("ssl_object")
            assert not ssl_object.session_reused
            for _ in range(500):  # the tickets follow the handshake
                if ssl_object.session is not None and ssl_object.session.has_ticket:
                    break
                await asyncio.sleep(0.01)
            session = ssl_object.session
            cert = ssl_object.getpeercert(binary_form=True)
            assert session is not None and session.has_ticket
            first.close()
            again = Recorder()
            second = await _client(srv.address[1], client_ctx, again, session=session)
            await asyncio.wait_for(second.handshake, 5)
            resumed = second.get_extra_info("ssl_object")
            assert resumed.session_reused and resumed.version() == "TLSv1.3"
            assert resumed.getpeercert(binary_form=True) == cert
            second.close()
    run(main())
