"""Test helpers: a raw protocol client, relay runners and subprocess clients.

Everything here talks to a real relay over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import struct
import subprocess
import sys
import time
import unicodedata
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

import framing
from msgrlib.relay import rules as relay
from msgrlib.relay import server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable

#: Which store relay_running and relay_process give the relay: "memory" (the
#: default), or "engine": a redis-server started for each relay. The
#: ``store`` fixture in conftest.py runs a test on both (modules opt in with
#: ``pytestmark = pytest.mark.usefixtures("store")``);
#: ``MSGR_TEST_STORE=engine`` makes the engine every other test's default.
DEFAULT_STORE = os.environ.get("MSGR_TEST_STORE", "memory")
STORE = {"mode": DEFAULT_STORE}


def engine_backend(url: str, config: relay.RelayConfig | None = None) -> Any:
    """A RedisBackend (not started) for one engine URL, with the relay's limits."""
    from msgrlib.relay.engine import EngineLimits, RedisBackend

    return RedisBackend([url], limits=EngineLimits.from_config(config or relay.RelayConfig()))


async def stored(srv: server.RelayServer) -> int:
    """Messages the relay holds, in memory or in its engine."""
    backend = srv.backend
    if backend is None:
        return len(srv.relay.store)
    return sum([await shard.redis.zcard(f"{backend.prefix}:exp") for shard in backend.shards])


async def waiting_for(srv: server.RelayServer, name: str) -> int:
    """Messages waiting for ``name``, in memory or in the engine."""
    if srv.backend is None:
        return srv.relay.store.count_for(name)
    return int(await srv.backend.count_for(name))


def connected(srv: server.RelayServer, name: str) -> bool:
    """Whether ``name`` has a connection at this relay (the claim's client)."""
    if srv.backend is None:
        claim = srv.relay.claims.get(name)
        return claim is not None and claim.client is not None
    return any(c.user == name for c in srv.relay.conns.values())  # type: ignore[attr-defined]


@contextlib.contextmanager
def _engine_for_relay() -> Iterator[str | None]:
    """An engine URL if relays run on the engine now, else None."""
    if STORE["mode"] != "engine":
        yield None
        return
    from tests.engine_helpers import engine_running

    with engine_running() as engine:
        yield engine.url


def run(coro: Any, timeout: float = 30.0) -> Any:
    """Run a coroutine in a fresh loop with an overall timeout."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class RawClient:
    """Speaks the wire protocol frame by frame, for relay tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.key: SigningKey | None = None

    @classmethod
    async def connect(cls, port: int, *, ssl: Any = None, host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl, server_hostname="localhost" if ssl else None)
        return cls(reader, writer)

    @classmethod
    async def login(cls, port: int, user: str, key: SigningKey | None = None,
                    **kwargs: Any) -> RawClient:
        client = await cls.connect(port, **kwargs)
        welcome = await client.hello(user, key)
        assert welcome["type"] == "welcome", welcome
        return client

    async def hello(self, user: str, key: SigningKey | None = None) -> dict[str, Any]:
        self.key = key or SigningKey.generate()
        await self.send({"type": "hello", "v": 1, "user": user,
                         "key": base64.b64encode(bytes(self.key.verify_key)).decode()})
        challenge = await self.recv()
        if challenge["type"] != "challenge":
            return challenge
        tls = getattr(self, "tls", None)  # test_tlsconn's client runs its own TLS object
        ssl_object = tls if tls is not None else self.writer.get_extra_info("ssl_object")
        sig = self.key.sign(auth_message(challenge, user, ssl_object)).signature
        await self.send({"type": "auth", "sig": base64.b64encode(sig).decode()})
        return await self.recv()

    async def send(self, frame: dict[str, Any]) -> None:
        self.writer.write(framing.encode_frame(frame))
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        frame = await asyncio.wait_for(framing.read_frame(self.reader, max_size=1 << 20),
                                       timeout)
        assert frame is not None, "connection closed"
        return frame

    async def recv_type(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """Skip presence/pong frames until one of type ``kind`` arrives."""
        end = time.monotonic() + timeout
        while True:
            frame = await self.recv(max(0.01, end - time.monotonic()))
            if frame["type"] == kind:
                return frame
            if frame["type"] not in ("presence", "pong", "accepted", "expired"):
                raise AssertionError(f"expected {kind}, got {frame}")

    async def closed(self, timeout: float = 5.0) -> bool:
        """True if the relay closes the connection within ``timeout``."""
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def auth_message(challenge: dict[str, Any], user: str, ssl_object: Any = None) -> bytes:
    """What a client signs to answer ``challenge``: bound to the relay's
    certificate when ``ssl_object`` (the connection's TLS) is given, else to its id."""
    from msgrlib import protocol
    from msgrlib.tls import x509

    nonce = base64.b64decode(challenge["nonce"])
    if ssl_object is not None:
        binding = protocol.tls_binding(x509.fingerprint(ssl_object.getpeercert(True)))
    else:
        binding = protocol.id_binding(challenge["relay"])
    return protocol.auth_message(nonce, binding, user)


def tls_contexts(directory: Any) -> tuple[Any, Any]:
    """(server, client) SSL contexts for a fresh self-signed certificate in ``directory``."""
    from msgrlib.tls import contexts

    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    contexts.ensure_certificate(cert, key)
    return contexts.server_context(cert, key), contexts.client_context(cafile=cert)


@contextlib.asynccontextmanager
async def relay_running(config: relay.RelayConfig | None = None, ssl_context: Any = None,
                        port: int = 0) -> AsyncIterator[server.RelayServer]:
    """A relay in this loop, on the store the ``store`` fixture chose."""
    config = config or relay.RelayConfig()
    with _engine_for_relay() as url:
        backend = engine_backend(url, config) if url else None
        srv = await server.start_relay(config, host="127.0.0.1", port=port,
                                       ssl_context=ssl_context, backend=backend)
        try:
            yield srv
        finally:
            await srv.close(timeout=2)


def serve_argv(*args: str) -> list[str]:
    """``msgr.py serve`` on 127.0.0.1, any free port, with ``args``."""
    return [PYTHON, os.path.join(ROOT, "msgr.py"), "serve", "--host", "127.0.0.1", "--port", "0",
            *args]


def chat_argv(port: int, user: str, peer: str, *extra: str, host: str = "127.0.0.1") -> list[str]:
    return [PYTHON, os.path.join(ROOT, "msgr.py"), "chat", "--server", f"{host}:{port}",
            "--user", user, "--peer", peer, *extra]


def listening_port(line: str) -> int | None:
    """The port in the relay's "listening on HOST:PORT" line, or None."""
    match = re.search(r"listening on \S+:(\d+)", line)
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def relay_process(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[Any, int]]:
    """``msgr.py serve`` as a subprocess on a free port; yields (process, port)."""
    with _engine_for_relay() as url:
        store = ("--store", url) if url else ()
        with _relay_process(*args, *store, env=env) as running:
            yield running


@contextlib.contextmanager
def _relay_process(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[Any, int]]:
    proc = subprocess.Popen(serve_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = listening_port(line)
        if port is None:
            proc.kill()
            raise AssertionError(f"relay did not start: {line!r} {proc.stderr.read()!r}")
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def chat_process(port: int, user: str, peer: str, *extra: str, passcode: str = "correct horse",
                 env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``msgr.py chat`` in line mode as a subprocess (stdin/stdout/stderr pipes)."""
    return subprocess.Popen(
        chat_argv(port, user, peer, *extra), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "MSGR_PASSCODE": passcode, **(env or {})})


class Chat:
    """A ``msgr.py chat`` subprocess in line mode, driven from asyncio."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._out = asyncio.get_running_loop().create_task(self._drain(proc.stdout, self.stdout))
        self._err = asyncio.get_running_loop().create_task(self._drain(proc.stderr, self.stderr))

    @classmethod
    async def start(cls, port: int, user: str, peer: str, *extra: str,
                    passcode: str | None = "correct horse battery",
                    env: dict[str, str] | None = None, host: str = "127.0.0.1") -> Chat:
        environ = {k: v for k, v in os.environ.items() if k != "MSGR_PASSCODE"}
        if passcode is not None:
            environ["MSGR_PASSCODE"] = passcode
        environ["HOME"] = environ.get("MSGR_TEST_HOME", environ.get("HOME", "/tmp"))
        environ.update(env or {})
        proc = await asyncio.create_subprocess_exec(
            *chat_argv(port, user, peer, *extra, host=host), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=environ)
        return cls(proc, user)

    @staticmethod
    async def _drain(stream: Any, into: list[str]) -> None:
        while True:
            line = await stream.readline()
            if not line:
                return
            into.append(line.decode("utf-8", "replace").rstrip("\n"))

    async def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def end_input(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    async def wait_for(self, pattern: str, *, stream: str = "stdout",
                       timeout: float = 15.0) -> str:
        """Wait until a line of ``stream`` matches the regex ``pattern``."""
        lines = self.stdout if stream == "stdout" else self.stderr
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in lines:
                if regex.search(line):
                    return line
            if self.proc.returncode is not None and self._out.done() and self._err.done():
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name}: no {stream} line matching {pattern!r}\n"
                             f"stdout: {self.stdout}\nstderr: {self.stderr}")

    async def exit_code(self, timeout: float = 30.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.gather(self._out, self._err)
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await asyncio.gather(self._out, self._err, return_exceptions=True)


class Proxy:
    """A TCP man in the middle between clients and the relay.

    Decodes frames in both directions and passes each through ``hook(direction,
    frame, conn) -> list of frames`` ("up" is client->relay); the default
    forwards unchanged; a returned frame with ``"_back": True`` is sent back
    the way it came. ``conn["user"]`` names the connection's user from its
    ``hello`` on (set before the hook sees that frame). Records every byte
    that crosses it.
    """

    def __init__(self, relay_port: int, hook: Any = None) -> None:
        self.relay_port = relay_port
        self.hook = hook or (lambda direction, frame, conn: [frame])
        self.recorded = bytearray()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter):
        r_reader, r_writer = await asyncio.open_connection("127.0.0.1", self.relay_port)
        conn: dict[str, Any] = {"to_client": c_writer, "to_relay": r_writer}

        async def pipe(reader, writer, direction, back):
            decoder = framing.FrameDecoder(max_size=1 << 20)
            try:
                while data := await reader.read(65536):
                    self.recorded.extend(data)
                    for frame in decoder.feed(data):
                        if direction == "up" and frame.get("type") == "hello":
                            conn["user"] = frame.get("user")
                        for out in self.hook(direction, frame, conn):
                            # A frame marked "_back" goes back where it came from.
                            target = back if out.pop("_back", False) else writer
                            target.write(framing.encode_frame(out, max_size=1 << 20))
            except (ConnectionError, framing.FramingError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pipe(c_reader, r_writer, "up", c_writer),
                             pipe(r_reader, c_writer, "down", r_writer))


@contextlib.asynccontextmanager
async def relay_subprocess(
        *args: str, env: dict[str, str] | None = None,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, list[str]]]:
    """``msgr.py serve`` as an asyncio subprocess; yields (process, port, first line).
    On the engine when STORE says so and ``args`` name no ``--store``."""
    with _engine_for_relay() if "--store" not in args else contextlib.nullcontext() as url:
        if url:
            args = (*args, "--store", url)
        async with _relay_subprocess(*args, env=env) as running:
            yield running


@contextlib.asynccontextmanager
async def _relay_subprocess(
        *args: str, env: dict[str, str] | None = None,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, list[str]]]:
    proc = await asyncio.create_subprocess_exec(
        *serve_argv(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=ROOT, env={**os.environ, **(env or {})})
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        port = listening_port(line)
        if port is None:
            err = (await proc.stderr.read()).decode() if proc.stderr else ""
            raise AssertionError(f"relay did not start: {line!r} {err!r}")
        yield proc, port, [line]
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


def send_frame(to: str, body: str = "s1.opaque", ref: int = 1, ttl: int = 30,
               kind: str = "msg") -> dict:
    return {"type": "send", "ref": ref, "to": to, "ttl": ttl, "body": body, "kind": kind}


#: Published test vectors (RFC 9106, the CFRG CPace draft), with their sources.
VECTORS = Path(__file__).resolve().parent / "vectors"


# -- shared by the unit and integration halves of a module's tests ---------------------------

#: Frames of every shape the framing tests round-trip.
SAMPLE_FRAMES = [
    {"type": "hello", "user": "alice", "version": 1},
    {"type": "send", "to": "bob", "ttl": 30, "ref": 17, "body": "QUJD" * 40},
    {"type": "ack", "ref": 17, "ok": True, "error": None},
    {"type": "text", "body": "héllo wörld ✓ 😀", "nested": {"a": [1, 2, {"b": []}]}},
    {},
]
#: The largest length a 4-byte prefix can declare.
BIGGEST = 0xFFFF_FFFF


def prefix(size: int) -> bytes:
    """The 4-byte big-endian length prefix."""
    return struct.pack(">I", size)


def frame_of(body: bytes) -> bytes:
    return prefix(len(body)) + body


def nested_object(depth: int) -> bytes:
    """A body whose nesting depth is exactly ``depth`` (top-level object = 1)."""
    assert depth >= 1
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


# A tiny DER reader, to check structure without trusting the encoder under test.
def tlvs(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    i = 0
    while i < len(data):
        tag, n = data[i], data[i + 1]
        i += 2
        if n & 0x80:
            k = n & 0x7F
            assert 1 <= k <= 4 and data[i] != 0, "non-minimal long form"
            n = int.from_bytes(data[i : i + k], "big")
            assert n >= 0x80, "long form for a short length"
            i += k
        out.append((tag, data[i : i + n]))
        i += n
    assert i == len(data)
    return out


def one(data: bytes) -> tuple[int, bytes]:
    (item,) = tlvs(data)
    return item


def unsafe(text: str) -> list[str]:
    """The characters of ``text`` that must never reach a terminal raw."""
    from msgrlib.util.safetext import UNSAFE_CATEGORIES
    return [c for c in text if unicodedata.category(c) in UNSAFE_CATEGORIES]

