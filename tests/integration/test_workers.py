"""``msgr serve --workers N``: N real relay processes on one port under one
parent, sharing a real redis-server. Which worker holds a connection is read
from /proc (the relay-side socket's inode among each worker's descriptors),
so the tests know when two clients really are on different workers.

They skip, saying why, without redis-server or redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import ROOT, Chat, RawClient, run, serve_argv

from tests.engine_helpers import EngineProcess, engine_binary

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc to find which worker holds a connection")


def send_frame(to: str, body: str, ref: int, ttl: int = 30) -> dict[str, Any]:
    return {"type": "send", "ref": ref, "to": to, "ttl": ttl, "body": body, "kind": "msg"}


def _inodes(pid: int) -> set[str]:
    out = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    out.add(link[8:-1])
    return out


def _tcp() -> list[tuple[int, int, str]]:
    """(local port, remote port, inode) of every established IPv4 TCP socket."""
    rows = []
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            parts = line.split()
            if parts[3] != "01":  # ESTABLISHED
                continue
            rows.append((int(parts[1].split(":")[1], 16), int(parts[2].split(":")[1], 16),
                         parts[9]))
    return rows


def worker_of(relay_port: int, client_port: int, workers: dict[int, int]) -> int | None:
    """The worker number holding the relay's end of the connection from ``client_port``."""
    for local, remote, inode in _tcp():
        if local == relay_port and remote == client_port:
            for index, pid in workers.items():
                if inode in _inodes(pid):
                    return index
    return None


def client_port_of(pid: int, relay_port: int) -> int | None:
    """The local port of process ``pid``'s connection to the relay."""
    mine = _inodes(pid)
    for local, remote, inode in _tcp():
        if remote == relay_port and inode in mine:
            return local
    return None


class Workers:
    """A ``serve --workers`` parent process; ``workers`` maps number -> live pid."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.workers: dict[int, int] = {}
        loop = asyncio.get_running_loop()
        self._err = loop.create_task(self._drain())

    async def _drain(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode("utf-8", "replace").rstrip("\n")
            self.stderr.append(text)
            match = re.search(r"event=worker_started worker=(\d+) pid=(\d+)", text)
            if match:
                self.workers[int(match.group(1))] = int(match.group(2))

    async def started(self, index: int, other_than: int, timeout: float = 20.0) -> int:
        """Wait until worker ``index`` runs with a pid other than ``other_than``."""
        for _ in range(int(timeout / 0.05)):
            pid = self.workers.get(index)
            if pid is not None and pid != other_than:
                return pid
            await asyncio.sleep(0.05)
        raise AssertionError(f"worker {index} was not restarted: {self.stderr}")


@contextlib.asynccontextmanager
async def workers_running(count: int = 2, *extra: str) -> AsyncIterator[tuple[EngineProcess,
                                                                               Workers]]:
    engine_binary()  # or skip
    engine = EngineProcess().start()
    proc = await asyncio.create_subprocess_exec(
        *serve_argv("--store", engine.url, "--workers", str(count), *extra),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        match = re.search(r"listening on \S+:(\d+)", line)
        assert match, line
        assert f", {count} workers" in line
        relay = Workers(proc, int(match.group(1)))
        relay.stdout.append(line)
        for _ in range(100):
            if len(relay.workers) == count:
                break
            await asyncio.sleep(0.05)
        assert len(relay.workers) == count, relay.stderr
        yield engine, relay
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        engine.cleanup()


async def on_both(relay: Workers, count: int = 40) -> dict[int, list[tuple[str, RawClient]]]:
    """Log clients in until both workers hold some; returns them by worker."""
    by_worker: dict[int, list[tuple[str, RawClient]]] = {}
    for i in range(count):
        name = f"user{i}"
        client = await RawClient.login(relay.port, name)
        port = client.writer.get_extra_info("sockname")[1]
        index = worker_of(relay.port, port, relay.workers)
        assert index is not None
        by_worker.setdefault(index, []).append((name, client))
        if len(by_worker) == 2 and i >= 3:
            return by_worker
    raise AssertionError(f"the kernel put {count} connections on one worker: {by_worker}")


def test_workers_above_one_need_an_engine_and_say_so_in_one_line():
    proc = subprocess.run(serve_argv("--workers", "2"), capture_output=True, text=True,
                          cwd=ROOT, timeout=30)
    assert proc.returncode == 2
    assert "--workers above 1 needs --store" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    help_text = subprocess.run(serve_argv("--help"), capture_output=True, text=True,
                               cwd=ROOT, timeout=30).stdout
    assert "--workers N" in help_text and "SO_REUSEPORT" in help_text


def test_two_workers_on_one_port_serve_clients_that_chat_across_workers():
    async def main():
        async with workers_running(2) as (engine, relay):
            by_worker = await on_both(relay)
            (alice_name, alice), (bob_name, bob) = by_worker[1][0], by_worker[2][0]
            await alice.send({"type": "watch", "user": bob_name})
            assert (await alice.recv_type("presence"))["online"] is True
            await bob.send({"type": "watch", "user": alice_name})
            assert (await bob.recv_type("presence"))["online"] is True
            await alice.send(send_frame(bob_name, "s1.from-worker-1", ref=1))
            accepted = await alice.recv_type("accepted")
            got = await bob.recv_type("deliver")
            assert got["id"] == accepted["id"] and got["body"] == "s1.from-worker-1"
            await bob.send({"type": "ack", "id": got["id"]})
            await bob.send(send_frame(alice_name, "s1.from-worker-2", ref=1))
            assert (await bob.recv_type("accepted"))["ref"] == 1
            assert (await alice.recv_type("deliver"))["body"] == "s1.from-worker-2"
            # One relay as clients see it: the same relay id from either worker.
            other = await RawClient.connect(relay.port)
            first = await other.hello("carol")
            assert first["relay"] == engine.command("GET", "msgr:epoch").split(
                b"\r\n")[1].decode()
    run(main(), timeout=90)


def test_a_killed_worker_is_restarted_and_its_chat_clients_reconnect():
    async def plain():
        async with workers_running(2) as (_engine, relay):
            alice = await Chat.start(relay.port, "alice", "bob")
            bob = await Chat.start(relay.port, "bob", "alice")
            try:
                await alice.wait_for("secure session", stream="stderr")
                await bob.wait_for("secure session", stream="stderr")
                await alice.say("before")
                await bob.wait_for("before")
                port = client_port_of(bob.proc.pid, relay.port)
                assert port is not None
                index = worker_of(relay.port, port, relay.workers)
                assert index is not None
                old = relay.workers[index]
                os.kill(old, signal.SIGKILL)
                new = await relay.started(index, other_than=old)
                assert new != old
                assert any(f"worker={index}" in line and "killed by SIGKILL" in line
                           for line in relay.stderr)
                # bob reconnects (to either worker), and the chat goes on.
                await bob.wait_for(r"connected to .*", stream="stderr", timeout=20)
                await alice.say("after")
                await bob.wait_for("after", timeout=30)
                await bob.say("back")
                await alice.wait_for("back", timeout=30)
                for chat in (alice, bob):
                    await chat.end_input()
                    assert await chat.exit_code() == 0, chat.stderr
                assert len([line for line in bob.stdout if "before" in line]) == 1
                assert relay.proc.returncode is None  # the parent carries on
            finally:
                await alice.kill()
                await bob.kill()
    run(plain(), timeout=120)


def test_sigterm_stops_every_worker_and_their_clients_hear_shutdown():
    async def main():
        async with workers_running(2) as (_engine, relay):
            by_worker = await on_both(relay)
            clients = [by_worker[1][0][1], by_worker[2][0][1]]
            pids = list(relay.workers.values())
            relay.proc.send_signal(signal.SIGTERM)
            for client in clients:
                assert (await client.recv_type("shutdown", timeout=10))["type"] == "shutdown"
                assert await client.closed()
            assert await asyncio.wait_for(relay.proc.wait(), 20) == 0
            assert relay.proc.stdout is not None
            rest = (await relay.proc.stdout.read()).decode()
            assert "msgr relay stopped: 2 workers" in rest
            for pid in pids:
                assert not os.path.exists(f"/proc/{pid}") or \
                    "zombie" in open(f"/proc/{pid}/status").read()
            await relay._err
            assert "Traceback" not in "\n".join(relay.stderr)
    run(main(), timeout=90)


def test_tls_sessions_resume_on_any_worker_even_one_restarted(tmp_path):
    """Every worker is a fork of the parent that built the TLS context, so all
    hold the same ticket keys: a chat client whose worker is killed resumes
    its TLS session where it lands, and a raw client's ticket is accepted by
    the restarted worker too."""
    from msgrlib.tls import contexts

    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    known = ("--tls", "--known-hosts", str(tmp_path / "known_hosts"))

    async def main():
        async with workers_running(2, "--tls", "--cert", cert, "--key", key) as (_e, relay):
            alice = await Chat.start(relay.port, "alice", "bob", *known)
            bob = await Chat.start(relay.port, "bob", "alice", *known)
            try:
                await alice.wait_for("secure session", stream="stderr")
                await bob.wait_for("secure session", stream="stderr")
                assert not any("resumed" in line for line in bob.stderr)
                port = client_port_of(bob.proc.pid, relay.port)
                index = worker_of(relay.port, port, relay.workers)
                assert index is not None
                old = relay.workers[index]
                os.kill(old, signal.SIGKILL)
                await bob.wait_for(r"connected to .*\(TLS\), TLS session resumed",
                                   stream="stderr", timeout=30)
                await alice.say("after the restart")
                await bob.wait_for("after the restart", timeout=30)
                await relay.started(index, other_than=old)
                # A ticket from one connection, offered to the restarted worker.
                context = contexts.client_context(cafile=cert)
                first = await RawClient.login(relay.port, "carol", ssl=context)
                context.remember(first.writer.get_extra_info("ssl_object"))
                assert context.session is not None
                for i in range(40):
                    probe = await RawClient.login(relay.port, f"probe{i}", ssl=context)
                    ssl_object = probe.writer.get_extra_info("ssl_object")
                    where = worker_of(relay.port, probe.writer.get_extra_info("sockname")[1],
                                      relay.workers)
                    if where == index:
                        assert ssl_object.session_reused
                        break
                    await probe.close()
                else:
                    raise AssertionError("no connection reached the restarted worker")
                for chat in (alice, bob):
                    await chat.end_input()
                    assert await chat.exit_code() == 0, chat.stderr
            finally:
                await alice.kill()
                await bob.kill()
    run(main(), timeout=120)


def test_the_storm_tool_brings_every_client_back_resumed_after_all_workers_die():
    """tools/storm.py at a small size (BENCHMARKS.md runs it at 10,000)."""
    engine_binary()  # or skip
    proc = subprocess.run([sys.executable, "-m", "tools.storm", "--clients", "60", "--workers",
                           "2", "--kill", "all", "--settle", "0.2", "--timeout", "60"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import json

    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["lost"] == result["back"] == 60
    assert result["resumed"] == 60 and result["full"] == 0  # the restarted workers' keys


def test_invites_join_across_workers_every_time():
    """Nameplates live in the engine: an invite made on one worker is joined
    from the other, four times in a row, each way, and a lapsed one is told
    to its inviter on its own worker."""
    async def main():
        async with workers_running(2) as (_engine, relay):
            by_worker = await on_both(relay)
            (one_name, one), (two_name, two) = by_worker[1][0], by_worker[2][0]
            for attempt in range(4):
                (inviter, inviter_name), (joiner, joiner_name) = (
                    ((one, one_name), (two, two_name)) if attempt % 2 == 0
                    else ((two, two_name), (one, one_name)))
                await inviter.send({"type": "allocate"})
                number = (await inviter.recv_type("allocated"))["nameplate"]
                await joiner.send({"type": "join", "nameplate": number})
                assert await joiner.recv_type("joined") == {
                    "type": "joined", "nameplate": number, "peer": inviter_name}
                assert await inviter.recv_type("joined") == {
                    "type": "joined", "nameplate": number, "peer": joiner_name}
            # The inviter leaves: its invite is gone for the other worker's joiner.
            await one.send({"type": "allocate"})
            number = (await one.recv_type("allocated"))["nameplate"]
            await one.close()
            await asyncio.sleep(0.3)
            await two.send({"type": "join", "nameplate": number})
            assert (await two.recv_type("error"))["code"] == "no_nameplate"
    run(main(), timeout=90)
