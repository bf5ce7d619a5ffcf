"""test_screen, the tests that need real processes, sockets or a terminal (the
unit tests are in tests/unit/ui/test_screen.py)."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import PYTHON, ROOT, chat_process, relay_process

NOW = 1_700_000_000.0


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
    order = ["options", "view", "terminal", "linemode", "app",  # each imports only earlier ones
             "transfer_cli"]
    for module, imports in graph.items():
        if module == "__init__":
            continue
        assert all(order.index(other) < order.index(module) for other in imports), (module,
                                                                                     imports)


# -- the real program in tmux ---------------------------------------------------------------

PASSCODE = "tmux tests passcode"
_sockets = itertools.count()
needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def wait_until(check: Callable[[], Any], timeout: float, what: str,
               show: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{show()}")
        time.sleep(0.05)


class Tmux:
    """A detached tmux server of our own, 100x30, running an interactive sh."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"msgr-test-{os.getpid()}-{next(_sockets)}"
        self.env = env
        self.tmux("-f", "/dev/null", "new-session", "-d", "-x", "100", "-y", "30", "-s", "t",
                  "-c", ROOT, "sh")
        self.socket_path = self.display("#{socket_path}")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], env=self.env, check=True,
                              capture_output=True, text=True, timeout=10).stdout

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", text)

    def press(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def run(self, command: str) -> None:
        self.type(command)
        self.press("Enter")

    def screen(self, *flags: str) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t", *flags)

    def history(self) -> str:
        """Scrollback and screen: what remains in the terminal."""
        return self.tmux("capture-pane", "-p", "-t", "t", "-S", "-", "-E", "-")

    def display(self, fmt: str) -> str:
        return self.tmux("display-message", "-p", "-t", "t", fmt).strip()

    def input_row(self) -> str:
        rows = [row for row in self.screen().splitlines() if row == ">" or row.startswith("> ")]
        return rows[-1] if rows else ""

    def wait(self, pattern: str, timeout: float = 10.0) -> str:
        """Wait until the visible screen matches the regex ``pattern``."""
        def matched() -> str:
            shown = self.screen()
            return shown if re.search(pattern, shown) else ""

        shown: str = wait_until(matched, timeout, repr(pattern), self.screen)
        return shown

    def wait_gone(self, pattern: str, timeout: float) -> None:
        wait_until(lambda: not re.search(pattern, self.screen()), timeout,
                   f"{pattern!r} to disappear", self.screen)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], env=self.env,
                       capture_output=True, timeout=10)
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)   # tmux leaves the socket file behind


class Peer:
    """A line-mode ``msgr.py chat`` subprocess; its stdout lines are collected."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.errors: list[str] = []
        for stream, into in ((proc.stdout, self.lines), (proc.stderr, self.errors)):
            threading.Thread(target=self._collect, args=(stream, into), daemon=True).start()

    @staticmethod
    def _collect(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait_line(self, line: str, timeout: float = 10.0) -> None:
        wait_until(lambda: line in self.lines, timeout, f"the peer to print {line!r}",
                   lambda: "\n".join(self.lines + self.errors))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture(scope="module")
def tls_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str, str]]:
    """A TLS relay for the module: (port, certificate fingerprint, scratch dir)."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    from msgrlib.tls import x509

    tmp = tmp_path_factory.mktemp("screen")
    cert, key = str(tmp / "cert.pem"), str(tmp / "key.pem")
    with relay_process("--tls", "--cert", cert, "--key", key, "--log-level", "warning") as (
            _, port):
        with open(cert, "rb") as f:
            fp = x509.fingerprint(f.read())
        yield port, fp, str(tmp)


class Chat:
    """One test's setup: a tmux terminal, and a line-mode peer on demand."""

    def __init__(self, relay: tuple[int, str, str], name: str) -> None:
        self.port, self.fp, self.tmp = relay
        self.me, self.peer = f"{name}-alice", f"{name}-bob"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")
               and k != "NO_COLOR"}
        env.update(MSGR_PASSCODE=PASSCODE, LC_ALL="C.UTF-8", LANG="C.UTF-8", PS1="$ ")
        self.term = Tmux(env)
        self.peers: list[Peer] = []

    def tls_args(self) -> list[str]:
        return ["--tls", "--pin", self.fp, "--known-hosts", os.path.join(self.tmp, "kh")]

    def start(self, *extra: str, prefix: str = "", server: str | None = None) -> None:
        """Run the screen client in the tmux shell; ``echo rc=$?`` shows its exit code."""
        args = ["chat", "--server", server or f"127.0.0.1:{self.port}", "--user", self.me,
                "--peer", self.peer, *self.tls_args(), *extra]
        self.term.run(f"{prefix}{PYTHON} msgr.py {' '.join(args)}; echo rc=$?")

    def start_peer(self, *extra: str) -> Peer:
        peer = Peer(chat_process(self.port, self.peer, self.me, *self.tls_args(), *extra,
                                 passcode=PASSCODE))
        self.peers.append(peer)
        return peer

    def wait_session(self) -> None:
        self.term.wait(rf"{self.peer} online .*not verified")

    def wait_exit(self, code: int) -> None:
        self.term.wait(rf"(?m)^rc={code}$")
        assert self.term.display("#{alternate_on}") == "0"

    def close(self) -> None:
        for peer in self.peers:
            peer.stop()
        self.term.kill()


@pytest.fixture
def chat_term(tls_relay: tuple[int, str, str], request: pytest.FixtureRequest) -> Iterator[Chat]:
    name = re.sub(r"[^a-z0-9]", "", request.node.name.lower().replace("test_", ""))[:20]
    session = Chat(tls_relay, name)
    try:
        yield session
    finally:
        session.close()


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

