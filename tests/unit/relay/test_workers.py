"""The ``serve --workers`` supervisor with real forked workers (tiny bodies
instead of relays, so each test takes well under a second): restarts with a
backoff, gives up when workers keep dying, fails fast when one cannot start,
stops them all on SIGTERM. The relay workers themselves:
tests/integration/test_workers.py."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time

import pytest

from msgrlib.errors import MsgrError
from msgrlib.relay.workers import Supervisor, WorkerFilter

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux",
                                reason="the supervisor forks (POSIX)")


def quick(count: int, target, **kwargs) -> Supervisor:
    kwargs = {"backoff": 0.01, "backoff_max": 0.02, "ready_timeout": 10.0, **kwargs}
    return Supervisor(count, target, **kwargs)


def test_workers_that_keep_dying_stop_the_parent_with_one_clear_error():
    def dies_soon(index, report):
        report("ready")
        time.sleep(0.05)
        return 3

    sup = quick(2, dies_soon, max_deaths=4)
    sup.start()
    started = time.monotonic()
    with pytest.raises(MsgrError, match=r"workers died 5 times within 60 s .*exit status 3"):
        sup.run()
    assert time.monotonic() - started < 10
    assert not sup.workers  # every one reaped
    assert signal.getsignal(signal.SIGTERM) is not sup._on_signal  # handlers given back


def test_a_worker_that_cannot_start_stops_the_others_and_says_why():
    def second_fails(index, report):
        if index == 2:
            report("error cannot reach the engine: no such file")
            return 1
        report("ready")
        time.sleep(30)
        return 0

    sup = quick(2, second_fails)
    started = time.monotonic()
    with pytest.raises(MsgrError, match="^cannot reach the engine: no such file$"):
        sup.start()
    assert time.monotonic() - started < 10  # worker 1 was stopped, not waited out
    assert not sup.workers


def test_a_dead_worker_is_restarted_and_sigterm_stops_every_worker():
    def serve(index, report):
        report("ready")
        while True:
            time.sleep(1)

    sup = quick(2, serve)
    sup.start()
    first = {w.index: w.pid for w in sup.workers.values()}
    os.kill(first[1], signal.SIGKILL)
    # The parent runs in this process: stop it from outside once worker 1 is back.
    child = os.fork()
    if child == 0:
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.05)
                with open(f"/proc/{os.getppid()}/task/{os.getppid()}/children") as kids:
                    pids = {int(p) for p in kids.read().split()}
                if len(pids - {first[1], os.getpid()}) >= 2:
                    break
            os.kill(os.getppid(), signal.SIGTERM)
        finally:
            os._exit(0)
    assert sup.run() == 0
    with contextlib.suppress(ChildProcessError):  # the supervisor may have reaped it
        os.waitpid(child, 0)
    assert not sup.workers
    restarted = sup.backoff.get(1)
    assert restarted is not None  # worker 1 died once and came back


def test_worker_log_lines_name_the_worker_first():
    import logging

    record = logging.LogRecord("msgr.relay", logging.INFO, __file__, 1, "listening", None, None)
    record.fields = {"addr": "127.0.0.1:1"}
    assert WorkerFilter(2).filter(record)
    assert list(record.fields.items()) == [("worker", 2), ("addr", "127.0.0.1:1")]


def test_the_port_is_held_for_the_workers_and_never_shared_with_another_relay():
    from msgrlib.relay.workers import hold_port

    held, port = hold_port(["127.0.0.1"], 0)
    try:
        assert port > 0
        # A worker's listening socket joins the held port...
        worker = socket.socket()
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))
        worker.listen()
        # ...but a second `serve --workers` on that port is refused, though
        # the kernel would let its SO_REUSEPORT sockets join.
        with pytest.raises(OSError):
            hold_port(["127.0.0.1"], port)
        worker.close()
    finally:
        for sock in held:
            sock.close()
