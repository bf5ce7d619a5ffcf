"""``msgr serve --workers N``: one parent process supervising N relay processes.

The workers listen on one port, each with its own ``SO_REUSEPORT`` socket, so
the kernel spreads new connections over them, and share names and mailboxes
through the engine (``--store``): without an engine they could not see each
other's clients, so the CLI refuses ``--workers`` above 1 without one.

The parent does no relay work. Before the first fork it builds everything the
workers share: the relay's limits, the engine's URLs and the TLS
``SSLContext``. A worker, and a worker restarted later, is a fork of that
parent, so every worker holds a copy of the same context and therefore the
same TLS 1.3 session-ticket keys (OpenSSL makes them at random per context,
and Python cannot set them): a client resumes its TLS session with whichever
worker the kernel hands it to. The keys live as long as the parent does
(SECURITY.md, "TLS session resumption").

The parent then:

* holds one bound, not listening, ``SO_REUSEPORT`` socket per address, so a
  port given as 0 is chosen once for all workers, and an address that cannot
  be bound is one clear error before anything is forked;
* starts the workers and waits until each says it listens (a line on a
  pipe), then prints the one "listening" line;
* restarts a worker that dies, after a backoff (0.1 s doubling to 10 s; back
  to 0.1 s once a worker has run for a minute): a worker that crashed once is
  back before its clients' first retry (msgr's client waits 0.35-0.5 s);
* gives up, stopping the others and exiting with status 1 and one line, if
  workers die more than ``max_deaths`` times within ``death_window``
  seconds, or if a worker fails before it first listens (a wrong engine, say);
* passes SIGTERM and SIGINT on to every worker, each of which closes as a
  single relay does (its clients get ``shutdown``), waits for them (then
  SIGKILL after ``stop_timeout``), and exits 0.

Logs are the relays' own, each line with ``worker=N``; the parent logs
``worker_started``, ``worker_exited`` and ``workers_failed``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from msgrlib.errors import MsgrError

log = logging.getLogger("msgr.relay")

#: Signals the parent passes on to its workers (and then stops).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class WorkerFilter(logging.Filter):
    """Puts ``worker=N`` first in every log line of a worker process."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        record.fields = {"worker": self.index, **(fields if isinstance(fields, dict) else {})}
        return True


def tag_logs(index: int) -> None:
    """In a worker: name the worker in every line msgr's loggers write."""
    for name in ("msgr", "asyncio"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(WorkerFilter(index))


def hold_port(hosts: Sequence[str], port: int) -> tuple[list[socket.socket], int]:
    """Bind (not listen) one ``SO_REUSEPORT`` socket per host; return them and the port.

    With ``port`` 0 the first host's free port is used for all. A bound socket
    that does not listen gets no connections; it only keeps the port for the
    workers' listening sockets (which must set ``SO_REUSEPORT`` too). Raises
    ``OSError`` for an address that cannot be bound, or that anything else
    holds (another ``serve --workers`` included).
    """
    held: list[socket.socket] = []
    try:
        for host in hosts:
            family, kind, proto, _, addr = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            # First without SO_REUSEPORT: that bind fails if anything holds the
            # port, even another `serve --workers` of this user, which the
            # kernel would otherwise let us join silently.
            for reuse_port in (False, True):
                sock = socket.socket(family, kind, proto)
                held.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((addr[0], port, *addr[2:]))
                port = port or sock.getsockname()[1]
                if not reuse_port:
                    held.pop().close()
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held, port


@dataclass
class Worker:
    index: int
    pid: int
    status: int  # read end of the pipe the worker reports on
    started: float
    ready: bool = False
    lines: list[str] = field(default_factory=list)
    _partial: bytes = b""

    def read(self) -> bool:
        """Take what the worker wrote; False at end of file."""
        try:
            data = os.read(self.status, 4096)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            return False
        *done, self._partial = (self._partial + data).split(b"\n")
        for raw in done:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            if line.startswith("ready"):
                self.ready = True
        return True

    def error(self) -> str | None:
        for line in self.lines:
            if line.startswith("error "):
                return line[len("error "):]
        return None


#: A worker's body: ``target(index, report)`` runs one relay until it is told
#: to stop and returns its exit status; ``report(line)`` tells the parent
#: ``"ready"`` once it listens, or ``"error <one line>"`` if it cannot start.
Target = Callable[[int, Callable[[str], None]], int]


class Supervisor:
    """Starts, watches, restarts and stops ``count`` workers (see the module)."""

    def __init__(self, count: int, target: Target, *, max_deaths: int = 5,
                 death_window: float = 60.0, backoff: float = 0.1, backoff_max: float = 10.0,
                 healthy_after: float = 60.0, ready_timeout: float = 60.0,
                 stop_timeout: float = 15.0, keep_fds: Sequence[int] = ()) -> None:
        self.count = count
        self.target = target
        self.max_deaths = max_deaths
        self.death_window = death_window
        self.backoff_first = backoff
        self.backoff_max = backoff_max
        self.healthy_after = healthy_after
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.keep_fds = keep_fds
        self.workers: dict[int, Worker] = {}  # by pid
        self.restarts: dict[int, float] = {}  # index -> when to start it again
        self.backoff: dict[int, float] = {}
        self.deaths: list[float] = []
        self.signals: list[int] = []
        self.stopping: float | None = None
        self._dead: list[tuple[Worker, int]] = []  # reaped by start(), for run()
        self._saved: dict[int, Any] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- the parent ------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)

    def start(self) -> None:
        """Fork every worker and wait until all listen.

        Raises :class:`MsgrError` (the others stopped) if one fails first,
        or does not listen within ``ready_timeout``.
        """
        signal.set_wakeup_fd(self._wake_w)
        for signum in (*STOP_SIGNALS, signal.SIGCHLD):
            self._saved[signum] = signal.signal(signum, self._on_signal)
        for index in range(1, self.count + 1):
            self._spawn(index)
        deadline = time.monotonic() + self.ready_timeout
        listened: set[int] = set()
        while len(listened) < self.count:
            left = deadline - time.monotonic()
            if left <= 0:
                self._abandon("a worker did not start listening within "
                              f"{self.ready_timeout:g} s")
            self._wait(left)
            listened.update(w.index for w in self.workers.values() if w.ready)
            if any(s in STOP_SIGNALS for s in self.signals):
                self._abandon("stopped before every worker listened", quiet=True)
            self.signals.clear()
            for dead, status in self._reap():
                if dead.ready:  # it listened, then died: run() restarts it
                    listened.add(dead.index)
                    self._dead.append((dead, status))
                    continue
                why = dead.error() or f"worker {dead.index} exited ({_status(status)}) " \
                    "before it listened"
                self._abandon(why)

    def close(self) -> None:
        """Give back the signal handlers and descriptors (the parent is done)."""
        signal.set_wakeup_fd(-1)
        for signum in (*STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, self._saved.get(signum, signal.SIG_DFL))
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def run(self) -> int:
        """Supervise until stopped; the exit status for the parent.

        Raises :class:`MsgrError` (every worker stopped) if workers keep dying.
        """
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> int:
        while True:
            now = time.monotonic()
            due = [when for when in self.restarts.values()]
            timeout = None if not due else max(0.0, min(due) - now)
            if self.stopping is not None:
                left = self.stopping + self.stop_timeout - now
                if left <= 0:
                    for worker in self.workers.values():
                        log.warning("worker_killed", extra={"fields": {
                            "worker": worker.index, "pid": worker.pid}})
                        _kill(worker.pid, signal.SIGKILL)
                    left = 1.0
                timeout = left if timeout is None else min(timeout, left)
            self._wait(timeout)
            signals, self.signals = self.signals, []
            for signum in signals:
                if signum in STOP_SIGNALS:
                    self._stop(signum)
            dead_ones, self._dead = self._dead + self._reap(), []
            for dead, status in dead_ones:
                log_fields = {"worker": dead.index, "pid": dead.pid, "status": _status(status)}
                if self.stopping is not None:
                    log.info("worker_exited", extra={"fields": log_fields})
                    continue
                now = time.monotonic()
                self.deaths = [t for t in self.deaths if now - t < self.death_window]
                self.deaths.append(now)
                if now - dead.started >= self.healthy_after:
                    self.backoff[dead.index] = self.backoff_first
                delay = self.backoff.get(dead.index, self.backoff_first)
                self.backoff[dead.index] = min(delay * 2, self.backoff_max)
                log.warning("worker_exited", extra={"fields": {**log_fields,
                                                               "restart_in": delay}})
                if len(self.deaths) > self.max_deaths:
                    message = (f"workers died {len(self.deaths)} times within "
                               f"{self.death_window:g} s (last: worker {dead.index}, "
                               f"{_status(status)}); stopping the relay")
                    log.error("workers_failed", extra={"fields": {"deaths": len(self.deaths)}})
                    self._stop(signal.SIGTERM)
                    self._drain_workers()
                    raise MsgrError(message)
                self.restarts[dead.index] = now + delay
            if self.stopping is not None:
                if not self.workers:
                    return 0
                continue
            now = time.monotonic()
            for index, when in list(self.restarts.items()):
                if when <= now:
                    del self.restarts[index]
                    self._spawn(index)

    # -- internals -------------------------------------------------------------

    def _spawn(self, index: int) -> None:
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(read_end)
                signal.set_wakeup_fd(-1)
                for signum in (*STOP_SIGNALS, signal.SIGCHLD):
                    signal.signal(signum, signal.SIG_DFL)
                for fd in (self._wake_r, self._wake_w, *self.keep_fds,
                           *(w.status for w in self.workers.values())):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                _die_with_parent(parent)
                tag_logs(index)

                def report(line: str) -> None:
                    with contextlib.suppress(OSError):
                        os.write(write_end, (line.replace("\n", " ") + "\n").encode())

                code = self.target(index, report)
            except KeyboardInterrupt:
                code = 130
            except BaseException as err:  # noqa: BLE001 - a worker never returns into the parent
                with contextlib.suppress(BaseException):
                    log.error("worker_failed", extra={"fields": {
                        "error": f"{type(err).__name__}: {err}"}})
            finally:
                with contextlib.suppress(BaseException):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        os.close(write_end)
        os.set_blocking(read_end, False)
        self.workers[pid] = Worker(index, pid, read_end, time.monotonic())
        log.info("worker_started", extra={"fields": {"worker": index, "pid": pid}})

    def _wait(self, timeout: float | None) -> None:
        """Sleep until a signal, a worker's report, or ``timeout``."""
        fds = [self._wake_r] + [w.status for w in self.workers.values() if w.status >= 0]
        if not self.signals:
            with contextlib.suppress(InterruptedError):
                readable, _, _ = select.select(fds, [], [], timeout)
                for fd in readable:
                    if fd == self._wake_r:
                        with contextlib.suppress(OSError):
                            while os.read(self._wake_r, 512):
                                pass
        for worker in self.workers.values():
            if worker.status >= 0 and not worker.read():
                os.close(worker.status)
                worker.status = -1

    def _reap(self) -> list[tuple[Worker, int]]:
        dead = []
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            if worker.status >= 0:
                while worker.read():
                    pass
                os.close(worker.status)
                worker.status = -1
            dead.append((worker, status))
        return dead

    def _stop(self, signum: int) -> None:
        if self.stopping is None:
            self.stopping = time.monotonic()
            log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name,
                                                   "workers": len(self.workers)}})
        self.restarts.clear()
        for worker in self.workers.values():
            _kill(worker.pid, signum)

    def _drain_workers(self) -> None:
        """Wait (bounded) for every worker told to stop; SIGKILL the rest."""
        deadline = time.monotonic() + self.stop_timeout
        while self.workers:
            left = deadline - time.monotonic()
            if left <= 0:
                for worker in self.workers.values():
                    _kill(worker.pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
                left = 5.0
            self._wait(min(left, 0.2))
            self._reap()

    def _abandon(self, why: str, *, quiet: bool = False) -> None:
        self._stop(signal.SIGTERM)
        self._drain_workers()
        self.close()
        if quiet:
            raise KeyboardInterrupt
        raise MsgrError(why)


def _die_with_parent(parent: int) -> None:
    """In a worker: get SIGTERM when the parent dies (Linux), so a parent
    killed with SIGKILL leaves no relay behind holding the port."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl
        os._exit(1)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(signum).name}"
        except ValueError:
            return f"killed by signal {signum}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


__all__ = ["STOP_SIGNALS", "Supervisor", "Worker", "WorkerFilter", "hold_port", "tag_logs"]
