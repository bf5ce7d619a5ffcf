"""Test helpers: a raw protocol client, relay runners and subprocess clients.

Everything here talks to a real relay over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from nacl.signing import SigningKey

import framing
import relay
import server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


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
        nonce = base64.b64decode(challenge["nonce"])
        sig = self.key.sign(relay.AUTH_LABEL + nonce + user.encode()).signature
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


@contextlib.asynccontextmanager
async def relay_running(config: relay.RelayConfig | None = None,
                        ssl_context: Any = None) -> AsyncIterator[server.RelayServer]:
    srv = await server.start_relay(config or relay.RelayConfig(), host="127.0.0.1", port=0,
                                   ssl_context=ssl_context)
    try:
        yield srv
    finally:
        await srv.close(timeout=2)


@contextlib.contextmanager
def relay_process(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[Any, int]]:
    """``msgr.py serve`` as a subprocess on a free port; yields (process, port)."""
    proc = subprocess.Popen(
        [PYTHON, os.path.join(ROOT, "msgr.py"), "serve", "--host", "127.0.0.1", "--port", "0",
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, **(env or {})})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on \S+:(\d+)", line)
        if not match:
            proc.kill()
            raise AssertionError(f"relay did not start: {line!r} {proc.stderr.read()!r}")
        yield proc, int(match.group(1))
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
        [PYTHON, os.path.join(ROOT, "msgr.py"), "chat", "--server", f"127.0.0.1:{port}",
         "--user", user, "--peer", peer, *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, env={**os.environ, "MSGR_PASSCODE": passcode, **(env or {})})
