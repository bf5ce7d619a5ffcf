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
