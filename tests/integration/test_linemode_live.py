"""test_linemode, the tests that need real processes, sockets or a terminal (the
unit tests are in tests/unit/ui/test_linemode.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from helpers import ROOT, chat_argv, relay_running, run

PASSCODE = "line mode tests passcode"


# -- real processes, two locales ----------------------------------------------------------

@pytest.fixture(scope="module")
def strict_locale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """en_US.UTF-8, built with localedef if the system lacks it."""
    probe = "import sys; print(sys.stdin.errors)"
    env = {**os.environ, "LC_ALL": "en_US.UTF-8", "LANG": "en_US.UTF-8"}
    env.pop("PYTHONUTF8", None)
    env.pop("PYTHONIOENCODING", None)
    out = subprocess.run([os.sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL)
    if out.stdout.strip() != "strict":
        if shutil.which("localedef") is None:
            pytest.skip("no en_US.UTF-8 locale and no localedef to build one")
        path = tmp_path_factory.mktemp("locale")
        made = subprocess.run(["localedef", "-i", "en_US", "-f", "UTF-8",
                               str(path / "en_US.UTF-8")], capture_output=True)
        env["LOCPATH"] = str(path)
        out = subprocess.run([os.sys.executable, "-c", probe], env=env, capture_output=True,
                             text=True, stdin=subprocess.DEVNULL)
        if out.stdout.strip() != "strict":
            pytest.skip(f"cannot build en_US.UTF-8: {made.stderr[-200:]!r}")
    yield {k: env[k] for k in ("LC_ALL", "LANG", "LOCPATH") if k in env}


async def _chat(port: int, user: str, peer: str, stdin: bytes | int, env: dict[str, str],
                *, wait_for: bytes | None = None) -> tuple[int, bytes, bytes]:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("LC_ALL", "LANG", "PYTHONUTF8", "PYTHONIOENCODING")}
    environ.update(env, MSGR_PASSCODE=PASSCODE,
                   HOME=os.environ.get("MSGR_TEST_HOME", os.environ.get("HOME", "/tmp")))
    pipe = isinstance(stdin, bytes)
    proc = await asyncio.create_subprocess_exec(
        *chat_argv(port, user, peer, "--static", "--ttl", "10", "--wait", "5"),
        stdin=asyncio.subprocess.PIPE if pipe else stdin, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=environ)
    assert proc.stdout is not None and proc.stderr is not None
    if wait_for is None:
        out, err = await asyncio.wait_for(proc.communicate(stdin if pipe else None), 60)
        return await proc.wait(), out, err
    # A receiver: keep stdin open until the expected text arrived.
    seen = b""
    while wait_for not in seen:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, seen
        seen += line
    assert proc.stdin is not None
    proc.stdin.close()
    rest, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
    return await proc.wait(), seen + rest, err


@pytest.mark.parametrize("where", ["C.UTF-8", "strict en_US.UTF-8"])
def test_a_line_that_is_not_utf8_is_named_and_the_others_go(
        where: str, strict_locale: dict[str, str]) -> None:
    env = ({"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"} if where == "C.UTF-8"
           else strict_locale)
    text = "first ✓\n".encode() + b"caf\xe9 latin-1\n" + "third ✓\n".encode()

    async def main() -> tuple[tuple[int, bytes, bytes], tuple[int, bytes, bytes]]:
        async with relay_running() as srv:
            port = srv.address[1]
            sender = await _chat(port, "alice", "bob", text, env)
            receiver = await _chat(port, "bob", "alice", b"", env,
                                   wait_for="alice: third ✓".encode())
            return sender, receiver

    (code, _, err), (_, out, _) = run(main(), timeout=120)
    assert code == 3, err
    assert b"input line 2 not sent: it is not UTF-8 text (byte 4 is 0xe9)" in err
    assert b"1 input line(s) not sent: line 2" in err
    assert "alice: first ✓\n".encode() in out and "alice: third ✓\n".encode() in out
    assert b"caf" not in out
    assert b"Traceback" not in err


def test_input_that_cannot_be_read_is_one_line_and_exit_1() -> None:
    """The old reader hit call_soon_threadsafe(print, ..., file=...) here: a
    TypeError in its thread, and the client never exited."""
    reading_end, fd = os.pipe()       # the writing end as stdin: read() fails, EBADF
    os.close(reading_end)

    async def main() -> tuple[int, bytes, bytes]:
        async with relay_running() as srv:
            return await _chat(srv.address[1], "carol", "dave", fd, {"LC_ALL": "C.UTF-8"})

    try:
        code, _, err = run(main(), timeout=60)
    finally:
        os.close(fd)
    assert code == 1, err
    assert b"msgr: cannot read input: Bad file descriptor" in err
    assert b"Traceback" not in err



# -- end of input right after a message arrives ---------------------------------------------

def test_a_client_that_ends_right_after_a_message_still_sends_its_receipt(tmp_path) -> None:
    """make demo, and any script that closes the receiver's input once it printed the
    last line: the receiver's own messages were all confirmed, so it said bye at once,
    before the receipt it owed for the line it had just printed went out (here the
    relay's byte rate holds that receipt back a while); the sender then waited out
    --wait and exited 3, "not delivered", for a message that was shown."""
    from helpers import Chat

    from msgrlib.relay.config import RelayConfig

    async def main() -> None:
        # bob's handshake and his two long lines use the byte burst up (the second
        # line waits for bytes), so his receipt for alice's "bye" waits a second or two.
        config = RelayConfig(rate_bytes=400, burst_bytes=12_000)
        async with relay_running(config) as srv:
            port = srv.address[1]
            home = {"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}
            alice = await Chat.start(port, "alice", "bob", "--wait", "8", env=home)
            bob = await Chat.start(port, "bob", "alice", "--wait", "8", env=home)
            try:
                await bob.say("a" * 4400)
                await bob.say("b" * 4400)
                await alice.wait_for(r"^bob: b+$", timeout=30)
                await alice.say("bye")
                await alice.end_input()
                try:
                    await bob.wait_for(r"^alice: bye$")
                except AssertionError:
                    raise AssertionError(alice.stderr) from None
                await bob.end_input()  # at once, as make demo does
                codes = await alice.exit_code(), await bob.exit_code()
                assert codes == (0, 0), (alice.stderr, bob.stderr)
            finally:
                await alice.kill()
                await bob.kill()

    run(main(), timeout=60)


def test_a_line_never_sent_for_a_wrong_passcode_says_so_when_given_up(tmp_path) -> None:
    """Tried with two different passcodes: both sides reported their line as "not
    confirmed within 3 s of the end of input", as if the peer had been slow, while
    it never left for want of a session (the handshake had failed)."""
    from helpers import Chat

    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            home = {"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}
            ivy = await Chat.start(port, "ivy", "jon", "--wait", "1", env=home,
                                   passcode="the first passcode")
            jon = await Chat.start(port, "jon", "ivy", "--wait", "1", env=home,
                                   passcode="another passcode")
            try:
                for side in (ivy, jon):
                    await side.wait_for(r"passcode mismatch", stream="stderr")
                    await side.say("hi")
                    await side.end_input()
                    assert await side.exit_code() == 3, side.stderr
                    line = next(x for x in side.stderr if "#1 was not delivered" in x)
                    assert "end of input" in line and "passcode mismatch" in line, line
            finally:
                await ivy.kill()
                await jon.kill()

    run(main(), timeout=60)
