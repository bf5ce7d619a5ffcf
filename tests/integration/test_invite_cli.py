"""Invite codes end to end: real relay (in this process), real ``msgr.py`` client processes.

``chat --invite`` / ``--join``, ``send`` / ``receive``: the code routes the two sides through
a nameplate, the words key the handshake, one failed confirmation burns the invite on both
sides, and a file arrives byte-identical over TLS while the relay holds a bounded window.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from typing import Any

import pytest
from helpers import PYTHON, ROOT, Chat, relay_running, run, tls_contexts

import framing
from msgrlib.invite import parse_code
from msgrlib.invite.code import words_for_position
from msgrlib.relay.config import RelayConfig
from msgrlib.transfer.messages import chunk_frame_size, chunk_size_for
from msgrlib.ui import transfer_cli

CODE_RE = r"your invite code is\s+(\S+)"


async def start(args: list[str], home: str, port: int, *, env: dict[str, str] | None = None,
                name: str = "msgr") -> Chat:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MSGR_")}
    environ.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
                   MSGR_SERVER=f"127.0.0.1:{port}")
    environ.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        PYTHON, os.path.join(ROOT, "msgr.py"), *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=home, env=environ)
    return Chat(proc, name)


async def code_of(inviter: Chat) -> str:
    line = await inviter.wait_for(CODE_RE, stream="stderr")
    match = re.search(CODE_RE, line)
    assert match is not None
    return match.group(1)


async def send_and_join(home: Any, what: str, out: Any, port: int, *,
                        send: tuple[str, ...] = (), receive: tuple[str, ...] = (),
                        receive_port: int | None = None) -> tuple[Chat, Chat]:
    """``msgr send WHAT`` and ``msgr receive --dir OUT`` (each with its extra
    options), the receiver typing the sender's code: (sender, receiver)."""
    sender = await start(["send", what, *send], str(home), port, name="sender")
    code = await code_of(sender)
    receiver = await start(["receive", "--dir", str(out), *receive], str(home),
                           port if receive_port is None else receive_port, name="receiver")
    await receiver.say(code)
    return sender, receiver


def wrong_words(code: str) -> str:
    parsed = parse_code(code)
    first = words_for_position(0)
    other = first[(first.index(parsed.words[0]) + 1) % len(first)]
    return f"{parsed.nameplate}-{other}-{parsed.words[1]}"


def test_chat_invite_and_join_with_a_generated_code(tmp_path: Any) -> None:
    """Two commands, no names, no passcode: the joiner types the code (stdin here)."""
    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            inviter = await start(["chat", "--invite"], str(tmp_path), port, name="inviter")
            code = await code_of(inviter)
            assert re.fullmatch(r"1-[a-z]+-[a-z]+", code)
            await inviter.wait_for(r"msgr chat --join", stream="stderr")
            joiner = await start(["chat", "--join"], str(tmp_path), port, name="joiner")
            await joiner.say(code)  # not in argv
            for side in (inviter, joiner):
                await side.wait_for(r"secure session up; safety number", stream="stderr")
            await joiner.say("hello from the joiner")
            await inviter.wait_for(r"^peer: hello from the joiner$")
            await inviter.say("and back")
            await joiner.wait_for(r"^peer: and back$")
            await inviter.end_input()
            await joiner.end_input()
            assert await inviter.exit_code() == 0, inviter.stderr
            assert await joiner.exit_code() == 0, joiner.stderr
            assert not any("visible to other local users" in line for line in joiner.stderr)
            assert len(srv.relay.nameplates) == 0
    run(main(), timeout=60)


def test_a_wrong_code_burns_the_invite_and_both_sides_say_so(tmp_path: Any) -> None:
    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            inviter = await start(["send", "-"], str(tmp_path), port, name="sender")
            assert inviter.proc.stdin is not None
            inviter.proc.stdin.write(b"the launch code")
            await inviter.end_input()
            code = await code_of(inviter)
            guesser = await start(["receive", wrong_words(code)], str(tmp_path), port,
                                  name="guesser")
            await guesser.end_input()
            for side in (inviter, guesser):
                await side.wait_for(r"this invite is burned", stream="stderr")
                assert await side.exit_code() == 1, side.stderr
            # The number was used by the wrong guess: the right words no longer help.
            late = await start(["receive", code], str(tmp_path), port, name="late")
            await late.end_input()
            await late.wait_for(r"no invite with that number is waiting", stream="stderr")
            assert await late.exit_code() == 1
            assert not any("the launch code" in line for side in (guesser, late)
                           for line in side.stdout + side.stderr)
    run(main(), timeout=60)


def test_two_invites_at_once_never_cross(tmp_path: Any) -> None:
    """Two secrets offered at the same time; each receiver gets the one of its code,
    shown once on stdout and written nowhere."""
    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            senders, codes = [], []
            for secret in (b"secret number one", b"secret number two"):
                sender = await start(["send", "-"], str(tmp_path), port, name="sender")
                assert sender.proc.stdin is not None
                sender.proc.stdin.write(secret)
                await sender.end_input()
                senders.append(sender)
            for sender in senders:
                codes.append(await code_of(sender))
            assert {parse_code(c).nameplate for c in codes} == {1, 2}
            out = tmp_path / "out"
            out.mkdir()
            receivers = []
            for i, code in enumerate(reversed(codes)):  # joined in the other order
                receiver = await start(["receive", "--dir", str(out), *(["--json"] if i else [])],
                                       str(tmp_path), port, name="receiver")
                await receiver.say(code)
                await receiver.say("y")
                receivers.append(receiver)
            for receiver in receivers:
                assert await receiver.exit_code() == 0, receiver.stderr
            for sender in senders:
                assert await sender.exit_code() == 0, "\n".join(sender.stderr)
            assert receivers[0].stdout == ["secret number two"]
            assert receivers[1].stdout[-1] == '{"event": "secret", "text": "secret number one"}'
            assert list(out.iterdir()) == []
    run(main(), timeout=60)


def test_a_file_over_tls_arrives_byte_identical_within_the_window(tmp_path: Any) -> None:
    """100 MiB (issue 16) through a TLS relay at its default limits (pinned with --cafile);
    the relay never holds more than two windows of chunks (plus a few small messages) for
    the transfer. (At the old default byte rate, 1 MiB/s, this took over three minutes.)"""
    size = 100 * 1024 * 1024 + 123
    digest = hashlib.sha256()
    with open(tmp_path / "big.bin", "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            digest.update(block)
            f.write(block)
            left -= len(block)
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> None:
        server_ctx, _ = tls_contexts(str(tmp_path))
        async with relay_running(ssl_context=server_ctx) as srv:
            port = srv.address[1]
            tls = ["--tls", "--cafile", str(tmp_path / "cert.pem")]
            sender, receiver = await send_and_join(tmp_path, "big.bin", out, port,
                                                   send=(*tls,), receive=("--json", *tls))
            await receiver.wait_for(r"offers a file named 'big.bin' \(100\.0 MiB",
                                    stream="stderr")
            await receiver.say("y")
            peak = 0
            while receiver.proc.returncode is None:
                peak = max(peak, srv.memory()["store"])
                await asyncio.sleep(0.01)
            assert await receiver.exit_code() == 0, receiver.stderr
            assert await sender.exit_code() == 0, sender.stderr
            assert '"event": "completed"' in receiver.stdout[-1]
            assert sorted(p.name for p in out.iterdir()) == ["big.bin"]
            chunk = chunk_size_for(framing.DEFAULT_MAX_FRAME)  # the relay's default frame
            bound = 2 * 16 * chunk_frame_size(chunk) + 64 * 1024
            assert 0 < peak <= bound, (peak, bound)
    run(main(), timeout=240)
    copy = hashlib.sha256()
    with open(out / "big.bin", "rb") as f:
        while block := f.read(1 << 20):
            copy.update(block)
    assert copy.digest() == digest.digest()
    assert os.path.getsize(out / "big.bin") == size


def test_a_relay_with_larger_frames_gets_larger_chunks(tmp_path: Any) -> None:
    """The sender sizes its chunks from the max_frame the relay's welcome declares (here
    256 KiB): fewer, larger chunk messages than a default relay's 47 KiB ones, which both
    clients can send and read; the file arrives byte-identical."""
    data = os.urandom(4 * 1024 * 1024 + 5)
    (tmp_path / "big.bin").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> None:
        async with relay_running(RelayConfig(max_frame=256 * 1024)) as srv:
            port = srv.address[1]
            sender, receiver = await send_and_join(tmp_path, "big.bin", out, port)
            await receiver.say("y")
            assert await receiver.exit_code() == 0, receiver.stderr
            assert await sender.exit_code() == 0, sender.stderr
            default_chunks = len(data) // chunk_size_for(framing.DEFAULT_MAX_FRAME)
            # Every message of the transfer (handshake, offer, chunks, acks) is fewer
            # than the chunks alone would be at the default frame size.
            assert srv.relay.stats.accepted < default_chunks, srv.relay.stats
    run(main(), timeout=90)
    assert (out / "big.bin").read_bytes() == data


def test_a_relay_whose_frames_outgrow_its_mailbox_still_carries_a_file(tmp_path: Any) -> None:
    """``serve --max-frame 1048576 --mailbox-bytes 524288``: chunks sized from max_frame
    alone were each larger than the mailbox, so the relay refused every one as
    mailbox_full and the transfer never moved (found by the review). The welcome's
    mailbox_bytes now bounds the chunk (and the receiver's window): the file arrives."""
    data = os.urandom(2 * 1024 * 1024 + 7)
    (tmp_path / "big.bin").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> None:
        config = RelayConfig(max_frame=1024 * 1024, mailbox_bytes=512 * 1024)
        async with relay_running(config) as srv:
            port = srv.address[1]
            sender, receiver = await send_and_join(tmp_path, "big.bin", out, port)
            await receiver.say("y")
            assert await receiver.exit_code() == 0, receiver.stderr
            assert await sender.exit_code() == 0, sender.stderr
            assert not any("mailbox limit" in line for line in sender.stderr), sender.stderr
    run(main(), timeout=90)
    assert (out / "big.bin").read_bytes() == data


def test_a_receiver_that_declines_leaves_nothing_on_disk(tmp_path: Any) -> None:
    (tmp_path / "f.txt").write_text("not wanted\n")
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            sender, receiver = await send_and_join(tmp_path, "f.txt", out, port)
            await receiver.say("n")
            await receiver.wait_for(r"declined; nothing was written", stream="stderr")
            assert await receiver.exit_code() == 1
            await sender.wait_for(r"the other side declined", stream="stderr")
            assert await sender.exit_code() == 1
            assert list(out.iterdir()) == []
    run(main(), timeout=60)


def test_the_relay_comes_from_the_config_file(tmp_path: Any) -> None:
    """No --server and no MSGR_SERVER: 'server = ...' in ~/.config/msgr/config."""
    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            config = tmp_path / ".config" / "msgr"
            config.mkdir(parents=True)
            (config / "config").write_text(f"# my relay\nserver = 127.0.0.1:{port}\n")
            inviter = await start(["chat", "--invite"], str(tmp_path), port,
                                  env={"MSGR_SERVER": ""}, name="inviter")
            await code_of(inviter)
            await inviter.kill()
    run(main(), timeout=30)


def test_config_file_errors_and_no_relay(tmp_path: Any, monkeypatch: Any) -> None:
    from msgrlib.errors import UsageError

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("MSGR_SERVER", raising=False)
    args = type("A", (), {"server": None, "tls": False, "cafile": None, "pin": None,
                          "known_hosts": None})()
    with pytest.raises(UsageError, match="no relay given"):
        transfer_cli.relay_target(args)
    (tmp_path / "msgr").mkdir()
    (tmp_path / "msgr" / "config").write_text("colour = blue\n")
    with pytest.raises(UsageError, match="line 1"):
        transfer_cli.relay_target(args)
    (tmp_path / "msgr" / "config").write_text("server = msgrs://relay.example:9000\n")
    host, port, tls = transfer_cli.relay_target(args)
    assert (host, port, tls is not None) == ("relay.example", 9000, True)


def test_a_bad_code_is_one_clear_line(tmp_path: Any) -> None:
    async def main() -> None:
        async with relay_running(RelayConfig()) as srv:
            receiver = await start(["receive", "7-notaword-clockwork"], str(tmp_path),
                                   srv.address[1])
            assert await receiver.exit_code() == 2
            # one line: not first a note that the (unusable) code is visible to others
            assert len(receiver.stderr) == 1, receiver.stderr
            assert receiver.stderr[-1].startswith("msgr receive: bad invite code")
    run(main(), timeout=30)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGHUP"])
def test_a_receiver_stopped_mid_file_keeps_nothing_and_the_sender_is_told(
        tmp_path: Any, signame: str) -> None:
    """Ctrl-C, or the terminal closing (SIGHUP: it used to kill the receiver outright,
    leaving its partial .msgr-*.part file and a sender that waited for the stall timeout)."""
    import signal

    (tmp_path / "big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    out = tmp_path / "out"
    out.mkdir()

    # A relay at 1 MiB/s per connection (the old default) keeps the 4 MiB
    # in flight for seconds: at today's defaults it was done before the signal.
    slow = RelayConfig(rate_bytes=1024 * 1024, burst_bytes=1024 * 1024)

    async def main() -> None:
        async with relay_running(slow) as srv:
            port = srv.address[1]
            sender, receiver = await send_and_join(tmp_path, "big.bin", out, port,
                                                   receive=("--json",))
            await receiver.say("y")
            await receiver.wait_for(r'"event": "progress"')
            assert any(p.name.endswith(".part") for p in out.iterdir())
            receiver.proc.send_signal(getattr(signal, signame))
            assert await receiver.exit_code() == 130
            await sender.wait_for(r"the other side reports: the other side stopped "
                                  r"\(cancelled\)", stream="stderr")
            assert await sender.exit_code() == 1
            assert list(out.iterdir()) == []
    run(main(), timeout=60)


@pytest.mark.parametrize("side", ["receiver", "sender"])
def test_a_connection_cut_mid_file_resumes(tmp_path: Any, side: str) -> None:
    """One side's connection is cut once, mid-file: it reconnects under the same invite
    name and key, and the transfer goes on from the last acknowledged chunk (what the
    relay held is handed out again; what it never got is asked for again by a gap ack)."""
    from helpers import Proxy

    data = os.urandom(2 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    seen = {"count": 0, "cut": False}
    direction, kind = ("down", "deliver") if side == "receiver" else ("up", "send")

    def hook(way: str, frame: dict[str, Any], conn: dict[str, Any]) -> list[Any]:
        if way == direction and frame.get("type") == kind:
            seen["count"] += 1
            if seen["count"] == 25 and not seen["cut"]:
                seen["cut"] = True
                conn["to_client"].close()
                conn["to_relay"].close()
                return []
        return [frame]

    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            proxy = await Proxy(port, hook).start()
            ports = (proxy.port, port) if side == "sender" else (port, proxy.port)
            sender, receiver = await send_and_join(tmp_path, "big.bin", out, ports[0],
                                                   receive_port=ports[1])
            await receiver.say("y")
            assert await receiver.exit_code() == 0, "\n".join(receiver.stderr)
            assert await sender.exit_code() == 0, "\n".join(sender.stderr)
            assert seen["cut"]
            cut = receiver if side == "receiver" else sender
            assert any("reconnecting" in line for line in cut.stderr)
            assert (out / "big.bin").read_bytes() == data
            await proxy.close()
    run(main(), timeout=90)


def test_a_hostile_offer_is_shown_escaped_and_refused(tmp_path: Any) -> None:
    """A sender (our own client, driven by hand) offers '../' plus a screen-clearing escape:
    the receiver shows it escaped, refuses it without asking, writes nothing, and the
    sender is told why. ``send --json`` prints the code as a JSON line."""
    import hashlib as _hashlib
    import json as _json

    from msgrlib.client.events import SessionStarted, TransferEvent
    from msgrlib.client.invite import InviteReady
    from msgrlib.transfer import Transfers
    from msgrlib.transfer.files import BytesSource
    from msgrlib.transfer.machine import Declined, make_offer

    out = tmp_path / "out"
    out.mkdir()
    hostile = "../\x1b[2Jevil"

    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            codes: asyncio.Queue[str] = asyncio.Queue()
            declined: list[str] = []

            def on_event(event: Any) -> None:
                if isinstance(event, InviteReady):
                    codes.put_nowait(event.code)
                elif isinstance(event, SessionStarted):
                    offer = make_offer("ee" * 16, kind="file", name=hostile, size=5,
                                       mime="text/plain",
                                       sha256=_hashlib.sha256(b"hello").hexdigest())
                    client.core.send_transfer(offer, BytesSource(b"hello"))
                    client.poke()
                elif isinstance(event, TransferEvent) and isinstance(event.event, Declined):
                    declined.append(event.event.reason)

            client = transfer_cli._make_client(("127.0.0.1", port, None), None, on_event,
                                               transfers=Transfers())
            running = asyncio.get_running_loop().create_task(client.run())
            code = await asyncio.wait_for(codes.get(), 10)
            receiver = await start(["receive", "--dir", str(out)], str(tmp_path), port,
                                   name="receiver")
            await receiver.say(code)
            assert await receiver.exit_code() == 1
            shown = "\n".join(receiver.stderr)
            assert "\x1b" not in shown and "'../\\x1b[2Jevil'" in shown, shown
            assert "refused:" in shown and "accept it" not in shown
            for _ in range(100):
                if declined:
                    break
                await asyncio.sleep(0.05)
            assert declined and "path separator" in declined[0]
            assert list(out.iterdir()) == []
            client.close()
            await asyncio.wait_for(running, 5)
            # --json: the code is a JSON line on stdout too.
            sender = await start(["send", "-", "--json"], str(tmp_path), port, name="sender")
            assert sender.proc.stdin is not None
            sender.proc.stdin.write(b"x")
            await sender.end_input()
            line = await sender.wait_for(r'"event": "code"')
            assert _json.loads(line)["code"] == await code_of(sender)
            await sender.kill()
    run(main(), timeout=60)


def test_a_named_chat_takes_its_relay_from_msgr_server(tmp_path: Any) -> None:
    async def main() -> None:
        async with relay_running() as srv:
            chat = await start(["chat", "--user", "alice", "--peer", "bob"], str(tmp_path),
                               srv.address[1], env={"MSGR_PASSCODE": "a long passcode here"})
            await chat.wait_for(r"connected to 127\.0\.0\.1", stream="stderr", timeout=20)
            await chat.end_input()
            assert await chat.exit_code() == 0, chat.stderr
    run(main(), timeout=40)


def test_receive_on_a_terminal_completes_the_words_with_tab(tmp_path: Any) -> None:
    """In a real terminal (tmux): the code prompt completes a word with Tab (readline),
    the offer is shown, 'y' accepts, the file arrives."""
    import shutil

    from tmuxterm import Tmux

    from msgrlib.invite import complete

    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    (tmp_path / "note.txt").write_text("typed by hand\n")
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            sender = await start(["send", "note.txt"], str(tmp_path), port, name="sender")
            code = parse_code(await code_of(sender))
            word = code.words[0]
            prefix = next(word[:n] for n in range(1, len(word) + 1)
                          if complete(f"{code.nameplate}-{word[:n]}") == [
                              f"{code.nameplate}-{word}-"])
            env = {k: v for k, v in os.environ.items() if not k.startswith(("TMUX", "MSGR_"))}
            env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", PS1="$ ", HOME=str(tmp_path),
                       MSGR_SERVER=f"127.0.0.1:{port}")
            term = Tmux(env)
            try:
                term.run(f"{PYTHON} msgr.py receive --dir {out}")
                await asyncio.to_thread(term.wait, r"Invite code \(tab completes")
                term.type(f"{code.nameplate}-{prefix}")
                term.press("Tab")
                await asyncio.to_thread(term.wait, re.escape(f"{code.nameplate}-{word}-"))
                term.type(code.words[1])
                term.press("Enter")
                await asyncio.to_thread(term.wait, r"accept it into .*\[y/N\]", 20)
                term.run("y")
                await asyncio.to_thread(term.wait, r"received .*note\.txt", 20)
                assert await sender.exit_code() == 0
                assert (out / "note.txt").read_text() == "typed by hand\n"
            finally:
                term.kill()
    run(main(), timeout=60)


def test_a_directory_arrives_as_a_directory(tmp_path: Any) -> None:
    src = tmp_path / "album"
    (src / "inner").mkdir(parents=True)
    (src / "a.txt").write_text("first\n")
    (src / "inner" / "b.bin").write_bytes(os.urandom(70_000))
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            sender, receiver = await send_and_join(tmp_path, "album", out, port)
            await receiver.wait_for(r"offers a directory named 'album'", stream="stderr")
            await receiver.say("y")
            assert await receiver.exit_code() == 0, receiver.stderr
            assert await sender.exit_code() == 0, sender.stderr
    run(main(), timeout=60)
    assert (out / "album" / "a.txt").read_text() == "first\n"
    assert (out / "album" / "inner" / "b.bin").read_bytes() == \
        (src / "inner" / "b.bin").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["album"]


def test_an_invite_nobody_uses_expires_with_one_clear_line(tmp_path: Any) -> None:
    async def main() -> None:
        async with relay_running(RelayConfig(nameplate_ttl=1.0)) as srv:
            sender = await start(["send", "-"], str(tmp_path), srv.address[1], name="sender")
            assert sender.proc.stdin is not None
            sender.proc.stdin.write(b"never read")
            await sender.end_input()
            await code_of(sender)
            assert await sender.exit_code(timeout=15) == 1
            assert sender.stderr[-1] == ("msgr: nobody used the invite code before it "
                                         "expired; start a new one")
            assert len(srv.relay.nameplates) == 0
    run(main(), timeout=30)


def test_send_to_a_named_pair_with_their_passcode(tmp_path: Any) -> None:
    """``send --to`` / ``receive --from``: the same transfer for two people who already
    share names and a passcode; a wrong passcode ends both with one line, nothing written."""
    out = tmp_path / "out"
    out.mkdir()

    async def pair_run(passcode_b: str) -> tuple[Chat, Chat]:
        async with relay_running() as srv:
            port = srv.address[1]
            sender = await start(["send", "-", "--to", "bob", "--user", "alice"], str(tmp_path),
                                 port, env={"MSGR_PASSCODE": "shared passcode 1"}, name="alice")
            assert sender.proc.stdin is not None
            sender.proc.stdin.write(b"for bob only")
            await sender.end_input()
            receiver = await start(["receive", "--from", "alice", "--user", "bob", "--dir",
                                    str(out)], str(tmp_path), port,
                                   env={"MSGR_PASSCODE": passcode_b}, name="bob")
            await receiver.say("y")
            await receiver.exit_code(timeout=40)
            await sender.exit_code(timeout=40)
            return sender, receiver

    sender, receiver = run(pair_run("shared passcode 1"), timeout=60)
    assert receiver.proc.returncode == 0, receiver.stderr
    assert sender.proc.returncode == 0, sender.stderr
    assert receiver.stdout == ["for bob only"]
    sender, receiver = run(pair_run("another passcode"), timeout=60)
    for side in (sender, receiver):
        assert side.proc.returncode == 1, side.stderr
        assert any("passcode" in line for line in side.stderr), side.stderr
    assert receiver.stdout == [] and list(out.iterdir()) == []


def test_invite_chat_line_mode_escapes_json_and_survives_a_line_that_is_not_utf8(
        tmp_path: Any) -> None:
    """``chat --invite --json`` writes a hostile peer's C1 controls, bidi overrides and line
    separators as \\u escapes (the one sanitizer, every output mode); ``chat --join`` reads
    stdin as bytes whatever the locale's strictness: a line that is not UTF-8 is named, the
    lines around it go, exit 3 (it used to kill the reader and hang the client)."""
    import json as _json

    from msgrlib.util.safetext import is_unsafe

    hostile = "red \u009b31m alarm \u202eevil\u202c \u2028msgr: message #7 was not delivered"

    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            inviter = await start(["chat", "--invite", "--json"], str(tmp_path), port,
                                  name="inviter")
            code = await code_of(inviter)
            joiner = await start(["chat", "--join"], str(tmp_path), port, name="joiner",
                                 env={"PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"})
            await joiner.say(code)
            await joiner.wait_for(r"secure session up", stream="stderr")
            assert joiner.proc.stdin is not None
            joiner.proc.stdin.write(b"first line\n\xff\xfe not utf-8\n"
                                    + hostile.encode() + b"\n")
            await joiner.end_input()
            assert await joiner.exit_code() == 3, joiner.stderr
            assert any("input line 2 not sent" in line for line in joiner.stderr), joiner.stderr
            await inviter.wait_for(r"first line")
            await inviter.wait_for(r"alarm")
            await inviter.end_input()
            await inviter.exit_code()
            texts = []
            for line in inviter.stdout:
                assert not any(is_unsafe(ch) for ch in line), repr(line)
                obj = _json.loads(line)
                if obj.get("type") == "message":
                    texts.append(obj["text"])
            assert texts == ["first line", hostile]
    run(main(), timeout=90)


def test_notices_about_the_other_side_never_show_its_random_routing_name(
        tmp_path: Any) -> None:
    """A joiner's line the inviter left too early to read was reported as "it expired at
    the relay before i-0d08234af853c465 read it": the relay's random routing name, which
    the person never chose or saw, where every other line says "the other side"."""
    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            inviter = await start(["chat", "--invite", "--ttl", "5"], str(tmp_path), port,
                                  name="inviter")
            code = await code_of(inviter)
            joiner = await start(["chat", "--join", "--ttl", "5", "--wait", "10"],
                                 str(tmp_path), port, name="joiner")
            await joiner.say(code)
            for side in (inviter, joiner):
                await side.wait_for(r"secure session up", stream="stderr")
            await inviter.end_input()
            assert await inviter.exit_code() == 0, inviter.stderr
            await joiner.say("too late")
            await joiner.end_input()
            assert await joiner.exit_code() == 3, joiner.stderr
            said = "\n".join(joiner.stderr)
            assert "message #1 was not delivered" in said, said
            assert not re.search(r"\bi-[0-9a-f]{6,}", said), said
            assert "the other side" in said.split("message #1 was not delivered")[1], said
    run(main(), timeout=60)


def test_json_events_carry_the_wall_clock_time(tmp_path: Any) -> None:
    """`msgr receive --json` printed "time": 7624.93, seconds of the machine's monotonic
    clock, meaningless to a script; chat's --json lines use seconds since the epoch."""
    import json
    import time

    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            source = tmp_path / "note.txt"
            source.write_bytes(b"some bytes")
            sender = await start(["send", str(source), "--json"], str(tmp_path), port,
                                 name="sender")
            code = await code_of(sender)
            out = tmp_path / "out"
            out.mkdir()
            receiver = await start(["receive", "--dir", str(out), "--json"], str(tmp_path),
                                   port, name="receiver")
            await receiver.say(code)
            await receiver.say("y")
            assert await receiver.exit_code() == 0, receiver.stderr
            assert await sender.exit_code() == 0, sender.stderr
            events = [json.loads(line) for line in receiver.stdout + sender.stdout]
            times = [e["time"] for e in events if "time" in e]
            assert times, events
            assert all(abs(t - time.time()) < 120 for t in times), events
    run(main(), timeout=60)


def test_names_or_a_passcode_given_with_an_invite_are_refused_not_ignored(
        tmp_path: Any) -> None:
    """`msgr chat --invite --user bob` printed a code and went on as "you" and "peer",
    --user silently ignored (so were --peer, --passcode-file and --identity)."""
    import subprocess

    for extra in (["--invite", "--user", "bob"], ["--join", "1-abacus-aardvark", "--peer",
                                                  "ann", "--passcode-file", "x"]):
        done = subprocess.run([PYTHON, os.path.join(ROOT, "msgr.py"), "chat", *extra,
                               "--server", "127.0.0.1:9"], capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL, cwd=tmp_path,
                              env={**os.environ, "HOME": str(tmp_path)})
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "an invite uses no names and no passcode" in lines[0], lines
        assert extra[-2] in lines[0], lines
