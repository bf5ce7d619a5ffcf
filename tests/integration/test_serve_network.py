"""Where the relay listens, and what it says when it stops (issue 14 items 4 and 11).

By default the relay listens on every address of both families (one socket
each, same port), ``--host`` may be repeated, IPv6 addresses are written in
brackets, and a relay stopped by SIGTERM or Ctrl-C prints one line saying
how many connections it closed and how many messages it dropped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from helpers import ROOT, RawClient, listening_port, run, send_frame, serve_argv

from msgrlib.relay import server
from msgrlib.util.netaddr import host_port


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")


def test_host_port_brackets_ipv6_once():
    assert host_port("127.0.0.1", 8765) == "127.0.0.1:8765"
    assert host_port("::1", 8765) == "[::1]:8765"
    assert host_port("[::1]", 8765) == "[::1]:8765"
    assert host_port("fe80::1%eth0", 1) == "[fe80::1%eth0]:1"
    assert host_port("relay.example", "443") == "relay.example:443"


@needs_ipv6
def test_the_default_listens_on_ipv4_and_ipv6_on_one_port():
    async def main():
        srv = await server.start_relay(host=None, port=0)
        try:
            addresses = srv.addresses
            assert {h for h, _ in addresses} == {"0.0.0.0", "::"}
            assert len({p for _, p in addresses}) == 1
            port = addresses[0][1]
            four = await RawClient.login(port, "four", host="127.0.0.1")
            six = await RawClient.login(port, "six", host="::1")
            await four.send(send_frame("six", "s1.over-both"))
            assert (await six.recv_type("deliver"))["body"] == "s1.over-both"
            # The relay writes the IPv6 peer's address in brackets.
            shown = sorted(c.address for c in srv.connections)
            assert any(a.startswith("[::1]:") for a in shown), shown
            assert any(a.startswith("127.0.0.1:") for a in shown), shown
        finally:
            await srv.close(timeout=2)
    run(main())


@needs_ipv6
def test_several_hosts_share_the_port_picked_for_the_first():
    async def main():
        srv = await server.start_relay(host=["127.0.0.1", "::1"], port=0)
        try:
            assert [h for h, _ in srv.addresses] == ["127.0.0.1", "::1"]
            assert srv.addresses[0][1] == srv.addresses[1][1]
        finally:
            await srv.close(timeout=2)
    run(main())


@needs_ipv6
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_cli_serves_both_families_and_says_what_it_dropped_when_stopped(how):
    argv = [sys.executable, os.path.join(ROOT, "msgr.py"), "serve", "--port", "0",
            "--host", "127.0.0.1", "--host", "::1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = listening_port(line)
        assert port is not None, line
        assert f"listening on 127.0.0.1:{port} and [::1]:{port} without TLS" in line

        async def clients():
            six = await RawClient.login(port, "alice", host="::1")
            await six.send(send_frame("bob", "s1.waiting"))  # bob is offline: it waits
            await six.recv_type("accepted")
            return six

        async def main():
            six = await clients()
            proc.send_signal(how)
            assert (await six.recv_type("shutdown"))["type"] == "shutdown"
        run(main())
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert out == "msgr relay stopped: 1 connection(s) closed, 1 message(s) dropped\n"
        assert all(line.startswith("ts=") for line in err.splitlines()), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_tls_on_a_busy_port_leaves_no_certificate_behind(tmp_path):
    """Tried as a new user: `msgr serve --tls` with the port taken printed "created a
    self-signed certificate cert.pem and key key.pem", then "cannot listen": the failed
    command left two files (one a private key) in the directory it was run in."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, os.path.join(ROOT, "msgr.py"), "serve", "--tls", "--host",
             "127.0.0.1", "--port", str(port)], cwd=tmp_path, capture_output=True, text=True,
            timeout=30, stdin=subprocess.DEVNULL)
    finally:
        busy.close()
    assert done.returncode == 1, done.stderr
    assert "cannot listen on 127.0.0.1:" in done.stderr, done.stderr
    assert "created" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)


def test_a_frame_limit_too_small_for_the_protocol_is_refused_in_one_line():
    """`serve --max-frame 1000` used to start a relay that refused every file
    chunk and some handshakes; it is now a usage error (exit 2), one line."""
    proc = subprocess.run(serve_argv("--max-frame", "1000"), capture_output=True, text=True,
                          cwd=ROOT, timeout=30)
    assert proc.returncode == 2, proc
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "--max-frame must be at least 4096 bytes" in proc.stderr
