"""Processes the benchmark starts: relays and load generators, with /proc sampling.

Every process is started by us, tracked by its pid and stopped by that pid
(SIGTERM, then SIGKILL after a bound); nothing here looks for processes by name.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import shutil
import socket
import subprocess
import sys
import time
from typing import IO, Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
RESULTS = os.path.join(ROOT, "bench", "results")
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")

#: msgr's limits for throughput runs. The defaults (200 msg/s and 1 MiB/s per
#: connection, 64 connections per address) exist to stop one client drowning
#: others; every load-generator client shares 127.0.0.1, so they are raised,
#: as are the per-address share of the store and the new-name rate.
#: Every other limit, check and TTL rule keeps its default.
MSGR_BENCH_LIMITS = ["--rate-messages", "1e9", "--burst-messages", "1e9",
                     "--rate-bytes", "1e12", "--burst-bytes", "1e12",
                     "--max-per-address", "20000", "--store-share", "1",
                     "--claim-burst", "1e9"]

RELAY_NAMES = {"msgr": "msgr", "ws": "websockets", "proto": "bare Protocol",
               "base": "msgr before the engine", "redis1": "msgr on Redis, 1 relay",
               "redis2": "msgr on Redis, 2 relays", "redisw2": "msgr on Redis, --workers 2"}


def pin(pid: int, cpu: int | None) -> None:
    """Keep a process on one CPU (relay on one, generators on the other), so the
    relay never shares its core with the load it is measured under."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return
    if cpu < (os.cpu_count() or 1):
        try:
            os.sched_setaffinity(pid, {cpu})
        except OSError:
            pass


def waited_seconds(pid: int) -> float:
    """Time the process's main thread spent ready to run but not running,
    waiting for its CPU to be free (/proc/PID/schedstat, nanoseconds)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (10 ms resolution)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (``serve --workers``' workers)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def _log_file(name: str) -> IO[bytes]:
    os.makedirs(RESULTS, exist_ok=True)
    return open(os.path.join(RESULTS, name), "ab")


def _stop(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _readline(proc: subprocess.Popen[Any], timeout: float) -> str:
    """One stdout line within ``timeout`` seconds, or an error naming the process."""
    assert proc.stdout is not None
    end = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"process {proc.args!r} did not answer within {timeout:g} s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"process {proc.args!r} exited (code {proc.poll()})")
            return line.decode() if isinstance(line, bytes) else line


class _Child:
    """What the benchmark reads of, and does to, a relay or generator process."""

    proc: subprocess.Popen[Any]
    pid: int
    log: IO[bytes]

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def waited(self) -> float:
        return waited_seconds(self.pid)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


class Relay(_Child):
    """A relay process on 127.0.0.1, port chosen by the kernel."""

    def __init__(self, kind: str, tls: tuple[str, str] | None, *, limits: bool = True,
                 cpu: int | None = None, root: str = ROOT, extra: tuple[str, ...] = (),
                 log: str | None = None) -> None:
        """``kind`` msgr (or any msgr relay: ``root`` is the source tree whose
        msgr.py runs, ``extra`` more ``serve`` options, e.g. ``--store URL``),
        or a baseline of :mod:`bench.baselines`."""
        self.kind = kind
        if kind == "msgr" or root != ROOT or extra:
            cmd = [PYTHON, os.path.join(root, "msgr.py"), "serve", "--host", "127.0.0.1",
                   "--port", "0"]
            if tls:
                cmd += ["--tls", "--cert", tls[0], "--key", tls[1]]
            if limits:
                cmd += MSGR_BENCH_LIMITS
            cmd += extra
        else:
            cmd = [PYTHON, "-m", "bench.baselines", kind]
            if tls:
                cmd += ["--tls", *tls]
        self.log = _log_file(log or f"relay-{kind}.log")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, cwd=root,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        pin(self.pid, cpu)
        try:
            line = _readline(self.proc, 30)
            match = re.search(r"listening on \S*?:(\d+)", line)
            if not match:
                raise RuntimeError(f"relay {kind} did not start: {line!r}")
            self.port = int(match.group(1))
        except BaseException:
            self.stop()
            raise

    def cpu(self) -> float:
        # With serve --workers the parent only supervises: its workers' CPU
        # counts (a worker is never waited for while it runs, so it is not in
        # the parent's figures).
        total = cpu_seconds(self.pid)
        for child in children(self.pid):
            try:
                total += cpu_seconds(child)
            except OSError:
                pass  # a worker just exited
        return total

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None


class Gen(_Child):
    """A load generator process running one job (see bench.loadgen)."""

    def __init__(self, job: dict[str, Any], *, cpu: int | None = None) -> None:
        self.log = _log_file("loadgen.log")
        self.proc = subprocess.Popen([PYTHON, "-m", "bench.loadgen", json.dumps(job)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, cwd=ROOT)
        self.pid = self.proc.pid
        pin(self.pid, cpu)

    def expect(self, key: str, timeout: float) -> dict[str, Any]:
        line = _readline(self.proc, timeout)
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"load generator failed: {msg['error']}")
        if key not in msg:
            raise RuntimeError(f"load generator said {line!r}, expected {key}")
        return msg

    def tell(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()



class StallMeter:
    """bench.stalls on one CPU (see that module): late wake-ups as they come."""

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.proc = subprocess.Popen([PYTHON, "-m", "bench.stalls", str(cpu)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        self.rt = _readline(self.proc, 10).strip() == "rt 1"
        self.late: list[tuple[float, float]] = []  # (monotonic s, ms late)
        self._partial = b""

    def within(self, start: float, end: float) -> list[float]:
        """How late (ms) each late wake-up between ``start`` and ``end`` was."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            lines = (self._partial + chunk).split(b"\n")
            self._partial = lines.pop()
            self.late += [(float(t), float(ms)) for t, ms in (line.split() for line in lines)]
        return [ms for t, ms in self.late if start <= t < end]

    def stop(self) -> None:
        _stop(self.proc)


#: What msgr asks of its engine (README "Running several relays").
ENGINE_SETTINGS = ("--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction")


class Engine(_Child):
    """A redis-server (or valkey-server) for ``serve --store``: on a unix socket
    in ``directory`` (``--port 0``: no TCP listener), with msgr's settings,
    stopped by its pid. ``url`` is what ``serve --store`` takes."""

    def __init__(self, directory: str, *, cpu: int | None = None) -> None:
        binary = shutil.which("redis-server") or shutil.which("valkey-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.socket = os.path.join(directory, f"engine-{time.monotonic_ns()}.sock")
        self.url = f"unix://{self.socket}"
        self.log = _log_file("engine.log")
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
             "--dir", directory, *ENGINE_SETTINGS, "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        self.pid = self.proc.pid
        pin(self.pid, cpu)
        deadline = time.monotonic() + 10
        while not self.command("PING").startswith(b"+PONG"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start (bench/results/engine.log)")
            time.sleep(0.02)

    def command(self, *args: str) -> bytes:
        """One command over the unix socket; the raw reply (b"" if it cannot connect)."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(self.socket)
                sock.sendall(b"".join(parts))
                reply = b""
                while True:  # bulk replies ($len) may come in several reads
                    chunk = sock.recv(1 << 16)
                    reply += chunk
                    if not chunk or not reply.startswith(b"$"):
                        return reply
                    head, _, rest = reply.partition(b"\r\n")
                    if len(rest) >= int(head[1:]) + 2:
                        return reply
        except OSError:
            return b""

    def info(self, section: str) -> dict[str, str]:
        """``INFO section`` as a dict of its fields."""
        out = {}
        for line in self.command("INFO", section).decode(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
        return out
