"""test_screen, the tests that need real processes, sockets or a terminal (the
unit tests are in tests/unit/ui/test_screen.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
from helpers import PYTHON, ROOT, chat_process, relay_process
from tmuxterm import PASSCODE, Chat, Peer, needs_tmux, wait_until


def test_import_fails_cleanly_without_curses() -> None:
    """Where curses is missing, the screen's modules fail to import (msgr.py
    falls back to lines) while the view model and line mode still load."""
    code = ("import sys; sys.modules['curses'] = None\n"
            "import msgrlib.ui.view, msgrlib.ui.linemode, msgrlib.ui.options\n"
            "try:\n    import msgrlib.ui.app\nexcept ImportError:\n    print('fallback')\n")
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert out.stdout.strip() == "fallback", out.stderr


def test_the_view_model_loads_no_curses_and_ui_modules_form_no_cycle() -> None:
    """The view model is pure; the UI modules import one another one way only
    (they used to import each other: ui.py <-> screen.py)."""
    code = ("import sys\n"
            "import msgrlib.ui.view, msgrlib.ui.linemode\n"
            "print('curses' in sys.modules)\n")
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=30)
    assert out.stdout.strip() == "False", out.stderr
    import ast
    import pathlib
    folder = pathlib.Path(ROOT, "msgrlib", "ui")
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        graph[path.stem] = {name.split(".")[2] for name in names
                            if name.startswith("msgrlib.ui.") and name.count(".") >= 2}
    order = ["transfer_args", "options", "view", "terminal", "linemode", "app",  # each imports
             "transfer_cli"]                                                # only earlier ones
    for module, imports in graph.items():
        if module == "__init__":
            continue
        assert all(order.index(other) < order.index(module) for other in imports), (module,
                                                                                     imports)


# -- the real program in tmux ---------------------------------------------------------------

@needs_tmux
def test_typing_survives_incoming_messages_and_a_resize(chat_term: Chat) -> None:
    term = chat_term.term
    peer = chat_term.start_peer()
    chat_term.start()
    chat_term.wait_session()
    term.type("partial mess")
    wait_until(lambda: term.input_row() == "> partial mess", 5, "the typed text",
               term.screen)
    for i in range(1, 4):
        peer.say(f"incoming number {i}")
    shown = term.wait(r"bob: incoming number 3")
    assert "incoming number 1" in shown and "incoming number 2" in shown
    assert term.input_row() == "> partial mess"
    assert term.display("#{cursor_x},#{cursor_y}") == f"{len('> partial mess')},29"
    assert re.search(r"\d\d:\d\d:\d\d \d\ds \S+-bob: incoming number 1", shown)
    # colours follow the terminal (NO_COLOR is unset here): some SGR colour is used
    assert re.search(r"\x1b\[[0-9;]*3[0-7]m", term.screen("-e"))
    # a resize redraws for the new size, the draft intact
    term.tmux("resize-window", "-t", "t", "-x", "60", "-y", "20")
    wait_until(lambda: term.display("#{pane_width}x#{pane_height}") == "60x20"
               and "incoming number 3" in term.screen(), 5, "the resize", term.screen)
    assert all(len(row) <= 60 for row in term.screen().splitlines())
    wait_until(lambda: term.input_row() == "> partial mess", 5, "the draft after resize",
               term.screen)
    term.type("age done")
    term.press("Enter")
    peer.wait_line(f"{chat_term.me}: partial message done")
    term.wait(r"alice: partial message\s+done\s+delivered ✓")
    assert term.input_row() == ">"


@needs_tmux
def test_messages_vanish_after_their_ttl(chat_term: Chat) -> None:
    term = chat_term.term
    peer = chat_term.start_peer("--ttl", "5")
    chat_term.start("--ttl", "5")
    chat_term.wait_session()
    term.type("mine fades")
    term.press("Enter")
    peer.say("theirs fades")
    shown = term.wait(r"bob: theirs fades")
    assert re.search(r" [1-5]s \S+-bob: theirs fades", shown)
    assert re.search(r" [1-5]s \S+-alice: mine fades", shown)
    peer.wait_line(f"{chat_term.me}: mine fades")
    term.wait_gone(r"theirs fades|mine fades", timeout=10)
    assert "TTL 5s" in term.screen().splitlines()[0]


@needs_tmux
def test_quit_leaves_no_message_in_the_scrollback(chat_term: Chat) -> None:
    term = chat_term.term
    peer = chat_term.start_peer()
    chat_term.start()
    chat_term.wait_session()
    peer.say("quit-test peer words")
    term.wait("quit-test peer words")
    term.run("quit-test own words")
    term.wait(r"quit-test own words +delivered ✓")
    term.run("/quit")
    chat_term.wait_exit(0)
    history = term.history()
    assert "quit-test" not in history
    last = history.rstrip().splitlines()[-2:]
    assert last[0] == "rc=0" and last[1].strip() in ("$", "#"), history   # the prompt is back


@needs_tmux
def test_ctrl_c_restores_the_terminal(chat_term: Chat) -> None:
    term = chat_term.term
    peer = chat_term.start_peer()
    chat_term.start()
    chat_term.wait_session()
    peer.say("ctrl-c peer words")
    term.wait("ctrl-c peer words")
    term.type("ctrl-c draft words")
    wait_until(lambda: "draft words" in term.input_row(), 5, "the draft", term.screen)
    term.press("C-c")
    chat_term.wait_exit(130)
    assert "ctrl-c" not in term.history()


@needs_tmux
def test_unknown_command_is_not_sent_and_no_color(chat_term: Chat) -> None:
    term = chat_term.term
    peer = chat_term.start_peer()
    chat_term.start(prefix="NO_COLOR=1 ")
    chat_term.wait_session()
    term.run("/frobnicate secret words")
    term.wait(r"unknown command /frobnicate: nothing was sent")
    term.wait(r"/quit +leave")
    term.run("//slash words")
    peer.wait_line(f"{chat_term.me}: /slash words")
    assert [line for line in peer.lines if line.startswith(chat_term.me)] == [
        f"{chat_term.me}: /slash words"]
    assert not re.search(r"\x1b\[[0-9;]*3[0-7]m", term.screen("-e"))   # NO_COLOR: no colours
    # SIGTERM ends the chat as cleanly as Ctrl-C
    os.kill(_child_pid(int(term.display("#{pane_pid}"))), signal.SIGTERM)
    chat_term.wait_exit(130)
    assert "slash words" not in term.history()


@needs_tmux
def test_plain_line_mode_on_a_terminal_knows_the_commands_too(chat_term: Chat) -> None:
    """Found in review: with --plain, /help and /quit went to the peer as messages."""
    term = chat_term.term
    peer = chat_term.start_peer()
    chat_term.start("--plain")
    term.wait(r"secure session")
    term.run("/help")
    term.wait(r"commands: /quit ends the chat")
    term.run("/frobnicate")
    term.wait(r"unknown command /frobnicate: nothing was sent")
    term.run("//slash words")
    peer.wait_line(f"{chat_term.me}: /slash words")
    term.run("/quit")
    chat_term.wait_exit(0)
    assert [line for line in peer.lines if line.startswith(chat_term.me)] == [
        f"{chat_term.me}: /slash words"]


@needs_tmux
def test_connect_error_is_one_line_after_the_screen_is_restored(chat_term: Chat) -> None:
    import socket

    with socket.socket() as s:       # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chat_term.start(server=f"127.0.0.1:{port}")
    chat_term.wait_exit(1)
    history = chat_term.term.history()
    assert re.search(rf"msgr: connection refused by 127.0.0.1:{port}: is `msgr serve` "
                     "running there", history.replace("\n", "")), history


def _child_pid(parent: int) -> int:
    """The one child process of ``parent`` (Linux /proc)."""
    if sys.platform != "linux":
        pytest.skip("needs /proc")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                return int(entry)
    raise AssertionError(f"no child of {parent}")


@needs_tmux
def test_a_pasted_text_is_one_message_and_runs_no_command(chat_term: Chat) -> None:
    """Bracketed paste, as a real terminal (tmux) does it: the pasted lines,
    a "/quit" among them, go as one message with their newlines."""
    term = chat_term.term
    peer = chat_term.start_peer()
    chat_term.start()
    chat_term.wait_session()
    term.tmux("set-buffer", "/etc/passwd is the file\n/quit\nthird line")
    term.tmux("paste-buffer", "-p", "-t", "t")
    wait_until(lambda: term.input_row() == "> /etc/passwd is the file↵/quit↵third line", 5,
               "the paste in the input line", term.screen)
    term.press("Enter")
    peer.wait_line(f"{chat_term.me}: /etc/passwd is the file\\x0a/quit\\x0athird line")
    shown = term.wait(r"delivered")
    assert "unknown command" not in shown
    rows = shown.splitlines()
    at = next(i for i, row in enumerate(rows) if "alice: /etc/passwd is the file" in row)
    assert rows[at + 1].strip() == "/quit" and rows[at + 2].strip().startswith("third line")
    term.run("/quit")
    chat_term.wait_exit(0)


@needs_tmux
def test_a_paste_over_the_byte_limit_keeps_what_fits_and_sends_it(chat_term: Chat) -> None:
    """Found in review: 13,000 emoji were refused at Enter (52,002 bytes; the
    relay allows 48,256) and the input line was wiped. The limit is now checked
    as the paste arrives. The same with a relay of 8 KiB frames, so the paste
    stays small enough for a busy machine."""
    term = chat_term.term
    with relay_process("--max-frame", "8192", "--log-level", "warning") as (_, port):
        peer = Peer(chat_process(port, chat_term.peer, chat_term.me, passcode=PASSCODE))
        chat_term.peers.append(peer)
        term.run(f"{PYTHON} msgr.py chat --server 127.0.0.1:{port} --user {chat_term.me} "
                 f"--peer {chat_term.peer}; echo rc=$?")
        chat_term.wait_session()
        paste = os.path.join(chat_term.tmp, "emoji.txt")
        with open(paste, "w", encoding="utf-8") as f:
            f.write("😀" * 2000)   # 8,002 bytes once encoded: over what 8 KiB frames hold
        term.tmux("load-buffer", paste)
        term.tmux("paste-buffer", "-p", "-t", "t")
        term.wait(r"bytes once encoded \(the relay's limit\): the rest was not\s+added", 20)
        assert term.input_row().startswith("> 😀")
        term.press("Enter")
        wait_until(lambda: any(line.startswith(f"{chat_term.me}: 😀😀") for line in peer.lines),
                   15, "the message at the peer", lambda: "\n".join(peer.lines + peer.errors))
        got = next(line for line in peer.lines if line.startswith(f"{chat_term.me}: "))
        assert 500 < got.count("😀") < 2000
        assert "nothing was sent" not in term.screen()
        term.wait(r"delivered ✓")   # else /quit asks again: a message is unconfirmed
        term.run("/quit")
        chat_term.wait_exit(0)


@needs_tmux
def test_ctrl_c_at_the_passcode_prompt_ends_the_line(chat_term: Chat) -> None:
    """Found in review: the shell's prompt came after "passcode: " on one line."""
    term = chat_term.term
    chat_term.start(prefix="env -u MSGR_PASSCODE ")
    term.wait(r"passcode: $|passcode:\s*$")
    term.press("C-c")
    shown = term.wait(r"(?m)^rc=130$")
    assert re.search(r"(?m)^passcode: *$", shown), shown
    assert "Traceback" not in shown and "internal error" not in shown


@needs_tmux
def test_hostile_peer_text_reaches_the_real_screen_escaped(chat_term: Chat) -> None:
    """A peer's OSC title sequence, clear-screen, C1 CSI and U+2028 show as
    visible escapes on the real screen: the window title stays ours, and the
    fake line stays part of the message."""
    term = chat_term.term
    title = term.display("#{pane_title}")
    peer = chat_term.start_peer()
    chat_term.start()
    chat_term.wait_session()
    peer.say("\x1b]2;owned\x07\x1b[2J\x9b31mhi\u2028msgr: message #7 was not delivered")
    shown = term.wait(r"\\x1b\]2;owned\\x07\\x1b\[2J\\x9b31mhi\\u2028msgr: message #7")
    assert term.display("#{pane_title}") == title != "owned"
    assert not re.search(r"(?m)^msgr: message #7", shown)
    term.run("/quit")
    chat_term.wait_exit(0)


@needs_tmux
def test_ctrl_r_reconnects_at_once_while_the_relay_is_away(chat_term: Chat) -> None:
    """Issue 14 item 3: the screen reconnects now on a key, and says so."""
    term = chat_term.term
    port = _port_outside_the_ephemeral_range()
    with relay_process("--port", str(port), "--log-level", "warning"):
        term.run(f"{PYTHON} msgr.py chat --server 127.0.0.1:{port} --user {chat_term.me} "
                 f"--peer {chat_term.peer}; echo rc=$?")
        term.wait(r"connected to 127\.0\.0\.1")
        term.press("C-r")                      # connected: nothing to cut short
        term.wait(r"not\s+waiting to reconnect now")
    term.wait(r"Ctrl-R reconnects now")        # the relay is gone: the activity line says so
    with relay_process("--port", str(port), "--log-level", "warning"):
        term.press("C-r")
        term.wait(r"reconnecting now \(Ctrl-R\)")
        term.wait(r"(?s)reconnecting now \(Ctrl-R\).*connected to 127\.0\.0\.1")
        term.run("/quit")
        chat_term.wait_exit(0)


def _port_outside_the_ephemeral_range() -> int:
    """A free port below Linux's ephemeral range (32768-60999), so that no relay
    started elsewhere on "port 0" takes it while ours restarts."""
    import random
    import socket

    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 20000-31999")


@needs_tmux
def test_quit_right_after_a_message_still_sends_its_receipt(tmp_path) -> None:
    """/quit as soon as the peer's line shows: the receipt owed for it may still wait
    (paced under the relay's rates: here its byte rate, after two long lines); the
    screen closed at once, and the peer reported a message that was shown as not
    delivered (exit 3)."""
    from msgrlib.tls import x509

    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    with relay_process("--tls", "--cert", cert, "--key", key, "--log-level", "warning",
                       "--rate-bytes", "400", "--burst-bytes", "12000") as (_, port):
        with open(cert, "rb") as f:
            fp = x509.fingerprint(f.read())
        session = Chat((port, fp, str(tmp_path)), "quitreceipt")
        try:
            term = session.term
            peer = session.start_peer("--wait", "8")
            session.start()
            session.wait_session()
            for letter in "ab":
                (tmp_path / "paste").write_text(letter * 4400)
                term.tmux("load-buffer", str(tmp_path / "paste"))
                term.tmux("paste-buffer", "-p", "-t", "t")
                term.press("Enter")
            peer.wait_line(f"{session.me}: {'b' * 4400}", timeout=30)
            term.wait(r"b +delivered ✓", timeout=30)
            peer.say("last words")
            assert peer.proc.stdin is not None
            peer.proc.stdin.close()
            term.wait("last words")
            term.run("/quit")
            session.wait_exit(0)
            assert peer.proc.wait(20) == 0, "\n".join(peer.errors)
        finally:
            session.close()


@needs_tmux
def test_at_40_columns_the_real_status_bar_keeps_verified(chat_term: Chat) -> None:
    """Issue 14 item 7, in a real 40-column terminal: the status bar dropped
    "verified" before the relay address; it is kept longest, as what matters
    for safety."""
    term = chat_term.term
    term.tmux("resize-window", "-t", "t", "-x", "40", "-y", "20")
    peer = chat_term.start_peer()
    chat_term.start()
    term.wait(r"not verified")
    peer.say("hello")
    term.wait(r"hello")
    term.run("/verify ok")
    bar = term.wait(r"(?m)^.*verified ✓").splitlines()
    top = next(row for row in bar if "verified ✓" in row)
    assert len(top.rstrip()) <= 40 and "not verified" not in top, bar
    term.run("/quit")
    chat_term.wait_exit(0)
