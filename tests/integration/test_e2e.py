"""End to end: the real relay and real ``msgr.py chat`` clients as subprocesses.

Over plain TCP and TLS: delivery both ways, offline peers, wrong passcodes,
what crosses the wire, transport mismatches and certificate refusals, exit
codes of line mode.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest
from helpers import ROOT, Chat, Proxy, RawClient, relay_subprocess, run

from msgrlib.tls import contexts, x509

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Subprocess clients keep known_hosts under a fresh HOME."""
    monkeypatch.setenv("MSGR_TEST_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def tls_args(tmp_path) -> tuple[str, ...]:
    return ("--tls", "--cert", str(tmp_path / "cert.pem"), "--key", str(tmp_path / "key.pem"))


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_two_clients_chat_both_ways_and_exit_cleanly(transport, tmp_path):
    async def main():
        serve_args = tls_args(tmp_path) if transport == "tls" else ()
        async with relay_subprocess(*serve_args) as (_, port, first):
            if transport == "tls":
                assert "with TLS, certificate SHA256:" in first[0]
                client_args = ("--tls", "--cafile", str(tmp_path / "cert.pem"))
            else:
                client_args = ()
            alice = await Chat.start(port, "alice", "bob", *client_args)
            bob = await Chat.start(port, "bob", "alice", *client_args, "--json")
            await alice.wait_for("secure session with bob; safety number", stream="stderr")
            await alice.say("hello bob, it's alice")
            line = await bob.wait_for('"type": "message"')
            msg = json.loads(line)
            assert msg["from"] == "alice" and msg["text"] == "hello bob, it's alice"
            assert msg["expires_at"] > msg["sent_at"] and len(msg["safety_number"]) == 47
            await bob.say("hi alice \x1b[2J")   # a terminal escape: shown harmlessly
            shown = await alice.wait_for("^bob: ")
            assert shown == "bob: hi alice \\x1b[2J"
            safety = [json.loads(x) for x in bob.stdout if '"session"' in x][0]
            assert safety["safety_number"] in "\n".join(alice.stderr)
            await alice.end_input()
            await bob.end_input()
            assert await alice.exit_code() == 0, alice.stderr
            assert await bob.exit_code() == 0, bob.stderr
    run(main(), timeout=60)


def test_static_mode_offline_peer_gets_the_message_within_ttl_and_not_after():
    async def main():
        async with relay_subprocess() as (_, port, _):
            alice = await Chat.start(port, "alice", "bob", "--static", "--ttl", "5")
            await alice.wait_for("connected", stream="stderr")
            await alice.say("for bob, later")
            await alice.end_input()
            # Static mode exits once the relay holds the message; bob is offline.
            assert await alice.exit_code() == 0, alice.stderr
            assert any("could test passcode guesses offline" in x for x in alice.stderr)
            bob = await Chat.start(port, "bob", "alice", "--static")
            assert await bob.wait_for("^alice: ") == "alice: for bob, later"
            await bob.end_input()
            assert await bob.exit_code() == 0
            # A second message that nobody collects within its 5 s TTL is gone.
            alice = await Chat.start(port, "alice", "bob", "--static", "--ttl", "5")
            await alice.say("too late")
            await alice.end_input()
            assert await alice.exit_code() == 0
            await asyncio.sleep(6)
            bob = await Chat.start(port, "bob", "alice", "--static")
            await bob.wait_for("connected", stream="stderr")
            await asyncio.sleep(1)
            await bob.end_input()
            assert await bob.exit_code() == 0
            assert bob.stdout == []
    run(main(), timeout=60)


def test_wrong_passcode_gives_a_notice_not_a_crash():
    async def main():
        async with relay_subprocess() as (_, port, _):
            alice = await Chat.start(port, "alice", "bob", "--ttl", "5", passcode="right one")
            bob = await Chat.start(port, "bob", "alice", passcode="wrong one")
            await alice.say("secret words")
            line = await bob.wait_for("passcode mismatch, or someone is interfering",
                                      stream="stderr")
            assert "Not retrying" in line
            await alice.wait_for("passcode mismatch", stream="stderr")
            await bob.end_input()
            await alice.end_input()
            assert await bob.exit_code() == 0          # bob sent nothing: nothing owed
            assert await alice.exit_code(timeout=60) == 3  # alice's message never arrived
            assert "not delivered" in alice.stderr[-1] and "#1" in alice.stderr[-1]
            assert not any("secret words" in x for x in bob.stdout + bob.stderr)
            assert not any("Traceback" in x for x in alice.stderr + bob.stderr)
    run(main(), timeout=90)


def test_static_wrong_passcode_notice():
    async def main():
        async with relay_subprocess() as (_, port, _):
            alice = await Chat.start(port, "alice", "bob", "--static", passcode="right one")
            await alice.say("sealed")
            await alice.end_input()
            assert await alice.exit_code() == 0
            bob = await Chat.start(port, "bob", "alice", "--static", passcode="wrong one")
            await bob.wait_for("could not be decrypted: the passcodes differ", stream="stderr")
            await bob.end_input()
            assert await bob.exit_code() == 0 and bob.stdout == []
    run(main(), timeout=60)


@pytest.mark.parametrize("mode", [(), ("--static",)])
def test_the_wire_never_carries_plaintext_or_passcode(mode):
    secret = "the eagle lands at midnight"
    passcode = "orange-bicycle-42"

    async def main():
        async with relay_subprocess() as (_, relay_port, _):
            proxy = await Proxy(relay_port).start()
            alice = await Chat.start(proxy.port, "alice", "bob", *mode, passcode=passcode)
            bob = await Chat.start(proxy.port, "bob", "alice", *mode, passcode=passcode)
            await bob.wait_for("connected", stream="stderr")
            await alice.say(secret)
            await bob.wait_for(secret)
            await bob.say(secret.upper())
            await alice.wait_for(secret.upper())
            await alice.end_input()
            await bob.end_input()
            await alice.exit_code()
            await bob.exit_code()
            await proxy.close()
            wire = bytes(proxy.recorded)
            assert len(wire) > 1000
            for needle in (secret, secret.upper(), passcode, "eagle", "orange-bicycle"):
                assert needle.encode() not in wire
                assert needle.encode("utf-16-le") not in wire
    run(main(), timeout=60)


def test_transport_mismatch_gives_clear_errors(tmp_path):
    async def main():
        async with relay_subprocess(*tls_args(tmp_path)) as (_, tls_port, _), \
                relay_subprocess() as (_, plain_port, _):
            plain_on_tls = await Chat.start(tls_port, "alice", "bob")
            assert await plain_on_tls.exit_code() == 1
            assert "add --tls (with a URL: msgrs:// or wss://)" in plain_on_tls.stderr[-1]
            tls_on_plain = await Chat.start(plain_port, "alice", "bob", "--tls")
            assert await tls_on_plain.exit_code() == 1
            assert "drop --tls" in tls_on_plain.stderr[-1]
            nobody = await Chat.start(1, "alice", "bob")
            assert await nobody.exit_code() == 1
            assert "connection refused" in nobody.stderr[-1]
            for c in (plain_on_tls, tls_on_plain, nobody):
                assert not any("Traceback" in x for x in c.stderr)
    run(main(), timeout=60)


def test_certificate_pin_cafile_and_trust_on_first_use(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    contexts.ensure_certificate(other / "cert.pem", other / "key.pem")
    known = str(tmp_path / "known_hosts")

    async def session(port, *args):
        c = await Chat.start(port, "alice", "bob", "--tls", *args)
        await c.wait_for("connected|msgr: ", stream="stderr")
        await c.end_input()
        return c, await c.exit_code()

    async def main():
        async with relay_subprocess(*tls_args(tmp_path)) as (_, port, first):
            fingerprint = first[0].split("certificate ")[1].strip()
            c, code = await session(port, "--pin", fingerprint)
            assert code == 0, c.stderr
            c, code = await session(port, "--pin", x509.fingerprint(
                (other / "cert.pem").read_bytes()))
            assert code == 1 and "fingerprint" in "\n".join(c.stderr).lower()
            c, code = await session(port, "--cafile", str(other / "cert.pem"))
            assert code == 1 and "certificate" in c.stderr[-1].lower()
            c, code = await session(port, "--known-hosts", known)
            assert code == 0 and any("first use" in x for x in c.stderr)
            c, code = await session(port, "--known-hosts", known)
            assert code == 0 and not any("first use" in x for x in c.stderr)
            tofu_port = port
        # The relay comes back on the same port with a different certificate.
        (tmp_path / "cert.pem").unlink()
        (tmp_path / "key.pem").unlink()
        with open(known) as f:
            saved = f.read()
        with open(known, "w") as f:
            f.write(saved.replace(f":{tofu_port} ", ":PORT "))
        async with relay_subprocess(*tls_args(tmp_path)) as (_, port, _):
            with open(known, "w") as f:
                f.write(saved.replace(f":{tofu_port} ", f":{port} "))
            c, code = await session(port, "--known-hosts", known)
            text = "\n".join(c.stderr)
            assert code == 1 and "CHANGED" in text.upper() and known in text
    run(main(), timeout=90)


def test_line_mode_exit_code_names_undelivered_messages():
    async def main():
        async with relay_subprocess() as (_, port, _):
            alice = await Chat.start(port, "alice", "bob", "--wait", "2")
            await alice.wait_for("connected", stream="stderr")
            await alice.say("one")
            await alice.say("two")
            await alice.end_input()
            assert await alice.exit_code() == 3
            assert "#1, #2" in alice.stderr[-1]
            assert not any("one" in x.split(":")[-1] for x in alice.stderr[-1:])
    run(main(), timeout=60)


def test_lines_that_cannot_be_sent_are_named_and_the_rest_go_through():
    """Found in review: a line that is not UTF-8 ended line mode with an
    internal error (the lines after it were never sent); a line over the
    length limit was dropped with exit code 0."""
    async def main():
        async with relay_subprocess() as (_, port, _):
            bob = await Chat.start(port, "bob", "alice")
            alice = await Chat.start(port, "alice", "bob")
            await alice.wait_for("secure session", stream="stderr")
            alice.proc.stdin.write(b"before\n\xff\xfe not utf-8\n" + b"x" * 20000
                                   + b"\nafter\n")
            await alice.end_input()
            code = await alice.exit_code(timeout=60)
            await bob.wait_for("after")
            await bob.end_input()
            await bob.exit_code()
            return code, alice, bob

    code, alice, bob = run(main(), timeout=120)
    assert code == 3
    assert bob.stdout == ["alice: before", "alice: after"]
    errors = "\n".join(alice.stderr)
    assert "input line 2 not sent: it is not UTF-8 text (byte 1 is 0xff)" in errors
    assert "input line 3 not sent: it is 20,000 characters" in errors
    assert "2 input line(s) not sent: line 2, 3" in errors
    assert "internal error" not in errors


def test_ctrl_c_in_line_mode_says_bye_and_names_what_was_not_confirmed():
    """Found in review: the name stayed locked for a minute after Ctrl-C
    (no bye), and the messages in flight were not mentioned."""
    async def main():
        async with relay_subprocess() as (_, port, _):
            alice = await Chat.start(port, "alice", "bob")
            await alice.wait_for("connected", stream="stderr")
            await alice.say("nobody is there yet")
            await asyncio.sleep(0.5)
            alice.proc.send_signal(signal.SIGINT)
            code = await alice.exit_code(timeout=20)
            again = await Chat.start(port, "alice", "bob")  # a new key: the name is free
            await again.wait_for("connected", stream="stderr")
            await again.kill()
            return code, alice

    code, alice = run(main(), timeout=60)
    assert code == 130
    assert "1 message(s) not delivered" in "\n".join(alice.stderr) and "#1" in alice.stderr[-1]


def test_a_file_piped_in_at_once_is_delivered_whole():
    """More lines than the relay's burst (400 messages): the client paces
    them under the relay's rates instead of having them refused."""
    lines = [f"line {i}" for i in range(600)]

    async def main():
        async with relay_subprocess() as (_, port, _):
            bob = await Chat.start(port, "bob", "alice")
            alice = await Chat.start(port, "alice", "bob")
            await alice.wait_for("secure session", stream="stderr")
            for line in lines:
                await alice.say(line)
            await alice.end_input()
            assert await alice.exit_code(timeout=60) == 0, alice.stderr
            await bob.wait_for("line 599")
            await bob.end_input()
            await bob.exit_code()
            return alice, bob

    alice, bob = run(main(), timeout=120)
    assert bob.stdout == [f"alice: {line}" for line in lines]
    assert not [x for x in alice.stderr + bob.stderr if "too fast" in x]


def test_passcode_sources(tmp_path):
    async def main():
        async with relay_subprocess() as (_, port, _):
            c = await Chat.start(port, "alice", "bob", passcode=None)
            assert await c.exit_code() == 1 and "no passcode" in c.stderr[-1]
            secret_file = tmp_path / "pass"
            secret_file.write_text("from a file\n")
            secret_file.chmod(0o644)
            c = await Chat.start(port, "alice", "bob", "--passcode-file", str(secret_file),
                                 passcode=None)
            await c.wait_for("connected", stream="stderr")
            await c.end_input()
            assert await c.exit_code() == 0
            assert "can be read by other users (mode 0644); chmod 600" in c.stderr[0]
            secret_file.chmod(0o600)
            c = await Chat.start(port, "alice", "bob", "--passcode-file", str(secret_file),
                                 passcode=None)
            await c.wait_for("connected", stream="stderr")
            await c.end_input()
            assert await c.exit_code() == 0 and "other users" not in "\n".join(c.stderr)
            c = await Chat.start(port, "carol", "bob", "--passcode", "visible", passcode=None)
            await c.wait_for("other local users can see it", stream="stderr")
            await c.end_input()
            assert await c.exit_code() == 0
            c = await Chat.start(port, "Alice!", "bob")
            assert await c.exit_code() == 2 and "invalid --user" in c.stderr[-1]
    run(main(), timeout=60)


def test_client_reconnects_when_the_relay_restarts(tmp_path):
    async def main():
        async with relay_subprocess("--port", "0") as (relay_proc, port, _):
            alice = await Chat.start(port, "alice", "bob", "--identity",
                                     str(tmp_path / "alice.id"))
            await alice.wait_for("connected", stream="stderr")
            relay_proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(relay_proc.wait(), 10) == 0
            await alice.wait_for("shutting down|lost the relay", stream="stderr")
            await alice.wait_for("reconnecting", stream="stderr")
        await alice.kill()
    run(main(), timeout=60)


def test_relay_sigterm_tells_clients_and_exits(tmp_path):
    async def main():
        async with relay_subprocess() as (relay_proc, port, _):
            c = await RawClient.login(port, "alice")
            relay_proc.send_signal(signal.SIGTERM)
            frame = await c.recv()
            assert frame["type"] == "shutdown"
            assert await asyncio.wait_for(relay_proc.wait(), 10) == 0
            err = (await relay_proc.stderr.read()).decode()
            assert "Traceback" not in err
    run(main(), timeout=30)


def test_help_and_version():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, os.path.join(ROOT, "msgr.py"), "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("msgr ")
    for sub in ("serve", "chat"):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "msgr.py"), sub, "--help"],
                             capture_output=True, text=True, check=True)
        assert "--tls" in out.stdout

    def usage(*args: str) -> str:
        """Bad usage: exit code 2 (as README says) and one line saying why."""
        bad = subprocess.run([sys.executable, os.path.join(ROOT, "msgr.py"), *args],
                             capture_output=True, text=True, timeout=30,
                             env={**os.environ, "MSGR_PASSCODE": "x"})
        assert bad.returncode == 2, (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 or not args, bad.stderr
        return bad.stderr.strip()

    chat = ("chat", "--server", "x:1", "--user", "a", "--peer", "b")
    assert usage(*chat, "--ttl", "99") == (
        "msgr chat: --ttl 99 is out of range: use 5 to 60 seconds (see msgr chat --help)")
    bad_name = usage("chat", "--server", "x:1", "--user", "Al!ce", "--peer", "b")
    assert "--user" in bad_name and "a-z, 0-9" in bad_name   # the rules, not only a pointer
    assert "same name" in usage("chat", "--server", "x:1", "--user", "a", "--peer", "a")
    assert "only make sense with --tls" in usage(*chat, "--pin", "SHA256:" + "0" * 64)
    assert "1-65535" in usage("chat", "--server", "localhost:99999", "--user", "a",
                              "--peer", "b")
    assert "[::1]:8765" in usage("chat", "--server", "::1:8765", "--user", "a", "--peer", "b")
    assert "--wait" in usage(*chat, "--wait", "nan")
    assert "TTL bounds" in usage("serve", "--ttl-min", "3")
    assert "--port" in usage("serve", "--port", "-1")
    assert "usage:" in usage()  # no command: the help, on stderr


@pytest.mark.parametrize("level", ["info", "debug"])
def test_relay_logs_never_hold_bodies_passcodes_or_text(level):
    secret, passcode = "meet me by the old mill", "swordfish-and-chips"

    async def main():
        async with relay_subprocess("--log-level", level) as (relay_proc, port, _):
            alice = await Chat.start(port, "alice", "bob", "--static", passcode=passcode)
            bob = await Chat.start(port, "bob", "alice", "--static", passcode=passcode)
            await bob.wait_for("connected", stream="stderr")
            await alice.say(secret)
            await bob.wait_for(secret)
            await alice.end_input()
            await bob.end_input()
            await alice.exit_code()
            await bob.exit_code()
            relay_proc.send_signal(signal.SIGTERM)
            await relay_proc.wait()
            return (await relay_proc.stderr.read()).decode()

    log = run(main(), timeout=60)
    lines = log.splitlines()
    assert lines and all(line.startswith("ts=") for line in lines), log
    assert secret not in log and passcode not in log and "s1." not in log
    if level == "info":
        assert "alice" not in log and "bob" not in log      # no names at info
    else:
        assert "sender=alice to=bob" in log                  # who talks to whom: debug only


def test_chat_survives_a_relay_restart_on_the_same_port(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main():
        async with relay_subprocess("--port", str(port)) as (relay_proc, _, _):
            alice = await Chat.start(port, "alice", "bob")
            bob = await Chat.start(port, "bob", "alice")
            await alice.wait_for("secure session", stream="stderr")
            await bob.wait_for("secure session", stream="stderr")
            await alice.say("before the restart")
            await bob.wait_for("before the restart")
            relay_proc.send_signal(signal.SIGTERM)
            await relay_proc.wait()
            await alice.wait_for("reconnecting", stream="stderr")
            await alice.say("typed while the relay was down")
        async with relay_subprocess("--port", str(port)):
            await bob.wait_for("typed while the relay was down", timeout=30)
            await bob.say("after the restart")
            await alice.wait_for("after the restart", timeout=30)
            # The ratchet carried on: no second handshake, no notice about it.
            assert sum("secure session" in x for x in alice.stderr) == 1
            await alice.end_input()
            await bob.end_input()
            assert await alice.exit_code() == 0, alice.stderr
            assert await bob.exit_code() == 0, bob.stderr
            assert bob.stdout.count("alice: typed while the relay was down") == 1
    run(main(), timeout=90)
