"""A real Redis engine for tests: started per test on a unix socket (or a free
TCP port), with the settings msgr requires, and stopped by pid.

Tests that need it skip, saying why, when ``redis-server`` or redis-py is
missing on this machine; ``.ci/run`` installs both, so CI runs them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

#: What msgr asks of its engine (README "Running several relays").
ENGINE_SETTINGS = ("--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction")


def engine_binary() -> str:
    """The redis-server (or valkey-server) to run, or skip the test."""
    path = shutil.which("redis-server") or shutil.which("valkey-server")
    if path is None:
        pytest.skip("redis-server is not installed here (.ci/run installs it: "
                    "apt-get install redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("redis-py is not installed here (pip install 'redis[hiredis]'; "
                    "requirements-dev.txt has it)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EngineProcess:
    """One redis-server process. ``url`` is what RedisBackend takes."""

    def __init__(self, *extra: str, tcp: bool = False, directory: str | None = None) -> None:
        self.binary = engine_binary()
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="msgr-engine-")
        self.dir = directory or self._tmp.name  # type: ignore[union-attr]
        self.socket = os.path.join(self.dir, "engine.sock")
        self.port = free_port() if tcp else 0  # port 0: no TCP listener at all
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if self.port else f"unix://{self.socket}"

    def start(self) -> EngineProcess:
        argv = [self.binary, "--port", str(self.port), "--unixsocket", self.socket,
                "--unixsocketperm", "700", "--dir", self.dir, *ENGINE_SETTINGS,
                "--loglevel", "warning", *self.extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace")  # type: ignore[union-attr]
                raise AssertionError(f"redis-server exited: {out[-2000:]}")
            if self.ping():
                return self
            time.sleep(0.01)
        self.stop()
        raise AssertionError("redis-server did not answer within 10 s")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1)
                sock.connect(self.socket)
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command over the unix socket; the raw reply (for tests)."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(self.socket)
            sock.sendall(b"".join(parts))
            return sock.recv(1 << 16)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def kill(self) -> None:
        """SIGKILL, as a crash: everything it held is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


@contextlib.contextmanager
def engine_running(*extra: str, tcp: bool = False) -> Iterator[EngineProcess]:
    engine = EngineProcess(*extra, tcp=tcp).start()
    try:
        yield engine
    finally:
        engine.cleanup()

