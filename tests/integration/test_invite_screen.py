"""Files in the full screen (tmux, real relay, real clients): ``/send PATH`` offers a file to
the peer, ``/accept`` takes one offered, through the same ratchet session as the chat."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from helpers import PYTHON, ROOT
from tmuxterm import PASSCODE, Chat, needs_tmux

from msgrlib.ui.view import Command, parse_command


def test_file_commands_parse() -> None:
    assert parse_command("/send ~/notes.txt") == Command("file", "~/notes.txt")
    assert parse_command("/send").name == "error"
    assert parse_command("/accept") == Command("accept")
    assert parse_command("/decline now").name == "error"
    assert parse_command("//send x") == Command("send", "/send x")


def peer_cli(chat: Chat, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGR_")}
    env.update(MSGR_PASSCODE=PASSCODE, HOME=chat.tmp)
    return subprocess.run([PYTHON, os.path.join(ROOT, "msgr.py"), *args, "--user", chat.peer,
                           "--server", f"127.0.0.1:{chat.port}", *chat.tls_args()],
                          input=stdin, capture_output=True, text=True, env=env, timeout=60)


@needs_tmux
def test_send_and_accept_files_in_the_screen(chat_term: Chat, tmp_path: Any) -> None:  # noqa: F811
    term = chat_term.term
    here = tmp_path / "alice"
    here.mkdir()
    out = tmp_path / "bob"
    out.mkdir()
    (tmp_path / "report.txt").write_text("sent from the screen\n")
    args = ["chat", "--server", f"127.0.0.1:{chat_term.port}", "--user", chat_term.me,
            "--peer", chat_term.peer, *chat_term.tls_args()]
    term.run(f"cd {here} && {PYTHON} {os.path.join(ROOT, 'msgr.py')} {' '.join(args)}; "
             "echo rc=$?")
    # bob receives with the command line (a named pair: --from), answering yes.
    import threading
    result: dict[str, Any] = {}
    receiving = threading.Thread(target=lambda: result.update(r=peer_cli(
        chat_term, "receive", "--from", chat_term.me, "--dir", str(out), stdin="y\n")))
    receiving.start()
    chat_term.wait_session()
    term.run(f"/send {tmp_path / 'report.txt'}")
    term.wait(r"received report\.txt", 30)
    receiving.join(60)
    assert result["r"].returncode == 0, result["r"].stderr
    assert (out / "report.txt").read_text() == "sent from the screen\n"
    # bob offers a file back; alice accepts it in the screen.
    (tmp_path / "reply.txt").write_text("and back\n")
    sending = threading.Thread(target=lambda: result.update(s=peer_cli(
        chat_term, "send", str(tmp_path / "reply.txt"), "--to", chat_term.me, stdin="")))
    sending.start()
    term.wait(r"offers a file 'reply\.txt'", 30)
    term.run("/accept")
    term.wait(r"received .*reply\.txt", 30)
    sending.join(60)
    assert result["s"].returncode == 0, result["s"].stderr
    assert (here / "reply.txt").read_text() == "and back\n"
    term.run("/quit")
    chat_term.wait_exit(0)


@needs_tmux
def test_chat_invite_opens_the_full_screen(chat_term: Chat) -> None:  # noqa: F811
    """``chat --invite`` on a terminal: the screen shows the code; a joiner in line mode
    types it; the two talk."""
    import re
    import time

    term = chat_term.term
    server = f"127.0.0.1:{chat_term.port}"
    term.run(f"{PYTHON} msgr.py chat --invite --server {server} "
             f"{' '.join(chat_term.tls_args())}; echo rc=$?")
    shown = term.wait(r"your invite code is\s+\d+-[a-z]+-[a-z]+", 20)
    match = re.search(r"your invite code is\s+(\d+-[a-z]+-[a-z]+)", shown)
    assert match is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGR_")}
    env["HOME"] = chat_term.tmp
    joiner = subprocess.Popen(
        [PYTHON, os.path.join(ROOT, "msgr.py"), "chat", "--join", "--server", server,
         *chat_term.tls_args()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert joiner.stdin is not None and joiner.stdout is not None
        joiner.stdin.write(match.group(1) + "\n")
        joiner.stdin.flush()
        term.wait(r"secure session", 30)
        time.sleep(0.3)
        joiner.stdin.write("hello screen\n")
        joiner.stdin.flush()
        term.wait(r"peer: hello screen", 20)
        term.run("hi back")
        assert joiner.stdout.readline().strip() == "peer: hi back"
        joiner.stdin.close()
        assert joiner.wait(40) == 0, joiner.stderr.read() if joiner.stderr else ""
    finally:
        if joiner.poll() is None:
            joiner.kill()
            joiner.wait(5)
    term.run("/quit")
    chat_term.wait_exit(0)


@needs_tmux
def test_a_relay_that_ends_the_session_mid_file_leaves_nothing_in_the_screens_directory(
        tmp_path: Any) -> None:
    """A hostile relay (a proxy here) answers the screen's connection with a permanent
    refusal while a file comes in: the screen exits, and its partial ``.msgr-*.part`` file
    must not stay behind (it did: only /quit cancelled the transfers)."""
    import asyncio
    import threading
    import time

    from helpers import Proxy, relay_process
    from tmuxterm import Chat as TermChat

    here = tmp_path / "alice"
    here.mkdir()
    (tmp_path / "big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    seen = {"delivered": 0}

    def hook(way: str, frame: dict[str, Any], conn: dict[str, Any]) -> list[Any]:
        if way == "down" and frame.get("type") == "deliver":
            seen["delivered"] += 1
            if seen["delivered"] == 30:
                return [{"type": "error", "code": "name_owned", "fatal": True,
                         "message": "the name belongs to another key"}]
        return [frame]

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    with relay_process() as (_, port):
        proxy = asyncio.run_coroutine_threadsafe(Proxy(port, hook).start(), loop).result(10)
        chat = TermChat((proxy.port, "", str(tmp_path)), "midfile")
        try:
            chat.term.run(f"cd {here} && {PYTHON} {os.path.join(ROOT, 'msgr.py')} chat "
                          f"--server 127.0.0.1:{proxy.port} --user {chat.me} --peer "
                          f"{chat.peer}; echo rc=$?")
            env = {k: v for k, v in os.environ.items() if not k.startswith("MSGR_")}
            env.update(MSGR_PASSCODE=PASSCODE, HOME=str(tmp_path))
            sender = subprocess.Popen(
                [PYTHON, os.path.join(ROOT, "msgr.py"), "send", str(tmp_path / "big.bin"),
                 "--to", chat.me, "--user", chat.peer, "--server", f"127.0.0.1:{port}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, text=True)
            try:
                chat.term.wait(r"offers a file 'big\.bin'", 60)
                chat.term.run("/accept")
                chat.term.wait(r"(?m)^rc=1$", 60)
                deadline = time.monotonic() + 5
                while any(here.iterdir()) and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert seen["delivered"] >= 30
                assert list(here.iterdir()) == []
            finally:
                sender.kill()
                sender.communicate()
        finally:
            chat.close()
            asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)


@needs_tmux
def test_an_invite_waiting_for_the_other_side_shows_the_relay_connected(
        chat_term: Chat) -> None:  # noqa: F811
    """Tried as a new user: while the code waited to be typed, the status bar said
    "127.0.0.1:PORT connecting…" for minutes, though the relay had handed out the
    code (so it was connected): the wait is for the other side, not for the relay."""
    term = chat_term.term
    server = f"127.0.0.1:{chat_term.port}"
    term.run(f"{PYTHON} msgr.py chat --invite --server {server} "
             f"{' '.join(chat_term.tls_args())}; echo rc=$?")
    term.wait(r"your invite code is\s+\d+-[a-z]+-[a-z]+", 20)
    term.wait(r"waiting for the other side", 10)
    bar = term.screen().splitlines()[0]
    assert server in bar and "connecting" not in bar, bar
    term.run("/quit")
    chat_term.wait_exit(0)


@needs_tmux
def test_send_in_the_screen_fits_a_relay_with_small_frames(tmp_path: Any) -> None:
    """A relay with --max-frame 32768: the screen's /send sized its chunks for a 64 KiB frame
    whatever the relay declared, so the relay refused every chunk (found by the review); it
    now sizes them from the relay's welcome, as msgr send does, and the file arrives."""
    import threading

    from helpers import relay_process
    from tmuxterm import Chat as TermChat

    here = tmp_path / "alice"
    here.mkdir()
    out = tmp_path / "bob"
    out.mkdir()
    data = os.urandom(300 * 1024 + 3)
    (tmp_path / "big.bin").write_bytes(data)
    with relay_process("--max-frame", "32768") as (_, port):
        chat = TermChat((port, "", str(tmp_path)), "smallframe")
        try:
            chat.term.run(f"cd {here} && {PYTHON} {os.path.join(ROOT, 'msgr.py')} chat "
                          f"--server 127.0.0.1:{port} --user {chat.me} --peer {chat.peer}; "
                          "echo rc=$?")
            env = {k: v for k, v in os.environ.items() if not k.startswith("MSGR_")}
            env.update(MSGR_PASSCODE=PASSCODE, HOME=str(tmp_path))
            result: dict[str, Any] = {}

            def receive() -> None:
                result["r"] = subprocess.run(
                    [PYTHON, os.path.join(ROOT, "msgr.py"), "receive", "--from", chat.me,
                     "--user", chat.peer, "--dir", str(out), "--server", f"127.0.0.1:{port}"],
                    input="y\n", capture_output=True, text=True, env=env, timeout=60)

            receiving = threading.Thread(target=receive)
            receiving.start()
            chat.wait_session()
            chat.term.run(f"/send {tmp_path / 'big.bin'}")
            chat.term.wait(r"received big\.bin", 40)
            receiving.join(60)
            assert result["r"].returncode == 0, result["r"].stderr
            assert (out / "big.bin").read_bytes() == data
            chat.term.run("/quit")
            chat.term.wait(r"(?m)^rc=0$", 10)
        finally:
            chat.close()
