"""The full-screen interface: the view model without a terminal, then the real
program in a real terminal (tmux) against a real relay.

The tmux tests type into a shell in a detached tmux session, run
``msgr.py chat`` there, and read the screen with ``capture-pane``; the peer is
a line-mode ``msgr.py chat`` subprocess. They poll the screen with a timeout
instead of sleeping, and are skipped where tmux is not installed.
"""

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

from msgrlib.client import core as chat
from msgrlib.client.events import Status
from msgrlib.ui import options as ui_options
from msgrlib.ui import view as ui_view
from msgrlib.ui.view import ChatView, Command, InputLine, Key, handle_key, parse_command, wrap

NOW = 1_700_000_000.0


def make_view(**kw: Any) -> ChatView:
    options: dict[str, Any] = dict(me="alice", peer="bob", address="127.0.0.1:8765", tls=True,
                                   ttl=30)
    options.update(kw)
    return ChatView(**options)


def received(text: str, *, at: float = NOW, ttl: int = 30) -> chat.Received:
    return chat.Received("bob", text, at, at + ttl, ttl)


def screen_text(view: ChatView, width: int = 80, height: int = 20, now: float = NOW) -> str:
    return "\n".join(view.render(width, height, now).lines())


# -- the line being typed ---------------------------------------------------------

def test_input_line_editing() -> None:
    line = InputLine()
    line.insert("helo")
    line.left()
    line.insert("l")
    assert (line.text, line.cursor) == ("hello", 4)
    line.end()
    line.insert(" world")
    line.home()
    line.delete()
    assert (line.text, line.cursor) == ("ello world", 0)
    line.backspace()                       # nothing before the cursor
    assert line.text == "ello world"
    line.right()
    line.backspace()
    assert (line.text, line.cursor) == ("llo world", 0)
    line.end()
    line.kill_word()
    assert (line.text, line.cursor) == ("llo ", 4)
    line.insert("there")
    line.left()
    line.left()
    line.kill_to_end()
    assert line.text == "llo the"
    line.left()
    line.kill_to_start()                   # Ctrl-U: everything before the cursor
    assert (line.text, line.cursor) == ("e", 0)
    assert line.take() == "e"
    assert (line.text, line.cursor) == ("", 0)


def test_input_line_refuses_control_characters_and_respects_the_limit() -> None:
    line = InputLine(limit=5)
    line.insert("\x1b[2J\x07")
    assert line.text == "[2J"
    line.take()
    line.insert("abcdefgh")
    assert line.text == "abcde"
    assert not line.insert("x")


def test_a_full_input_line_says_so() -> None:
    """Found in review: a paste past the limit was cut without a word."""
    view = make_view()
    view.input.limit = 3
    assert [handle_key(view, key) for key in "abcd"] == [
        None, None, None, ("full", "a message holds at most 3 characters")]
    assert view.input.text == "abc"


def test_input_window_keeps_the_cursor_visible() -> None:
    line = InputLine()
    line.insert("0123456789abcdefghij")
    shown, col = line.window(10)
    assert len(shown) <= 10 and col <= 9
    assert shown.endswith("j") and col == len(shown)
    line.home()
    shown, col = line.window(10)
    assert (shown, col) == ("0123456789", 0)
    wide = InputLine()
    wide.insert("漢字" * 10)             # 2 cells each
    shown, col = wide.window(11)
    assert ui_view.text_width(shown) <= 11 and col <= 10


def test_keys_edit_the_line_and_submit() -> None:
    view = make_view()
    for key in "hi there":
        assert handle_key(view, key) is None
    handle_key(view, Key.LEFT)
    handle_key(view, Key.BACKSPACE)
    handle_key(view, "\x01")               # Ctrl-A: home
    handle_key(view, Key.DELETE)
    assert view.input.text == "i thee"
    handle_key(view, "\x05")               # Ctrl-E: end
    handle_key(view, "\x17")               # Ctrl-W
    assert view.input.text == "i "
    assert handle_key(view, "\n") == ("submit", "i ")
    assert view.input.text == ""
    assert handle_key(view, "\x04") == ("quit", "")    # Ctrl-D on an empty line
    handle_key(view, "x")
    assert handle_key(view, "\x04") is None            # ...otherwise delete
    assert handle_key(view, "\x0c") == ("redraw", "")
    assert handle_key(view, Key.RESIZE) == ("resize", "")
    handle_key(view, Key.PAGE_UP)
    assert view.scroll == view.page
    handle_key(view, Key.PAGE_DOWN)
    assert view.scroll == 0


@pytest.mark.parametrize("line, command", [
    ("hello", Command("send", "hello")),
    ("  spaced  ", Command("send", "  spaced  ")),
    ("", None),
    ("   ", None),
    ("//etc/passwd is a path", Command("send", "/etc/passwd is a path")),
    ("/help", Command("help")),
    ("/HELP", Command("help")),
    ("/quit", Command("quit")),
    ("/ttl", Command("ttl")),
    ("/ttl 5", Command("ttl", "5")),
    ("/ttl 60", Command("ttl", "60")),
    ("/status", Command("status")),
    ("/clear", Command("clear")),
    ("/verify", Command("verify")),
    ("/verify OK", Command("verify", "ok")),
    ("/frobnicate secret text", Command("unknown", "frobnicate")),
    ("/", Command("unknown", "")),
    ("/ hello", Command("unknown", "")),
])
def test_parse_command(line: str, command: Command | None) -> None:
    assert parse_command(line) == command


@pytest.mark.parametrize("line", ["/ttl 4", "/ttl 61", "/ttl x", "/ttl -5", "/ttl 5.5",
                                  "/verify maybe", "/clear all"])
def test_bad_command_arguments_are_errors_not_messages(line: str) -> None:
    command = parse_command(line)
    assert command is not None and command.name == "error"


# -- wrapping and text safety --------------------------------------------------------

def test_wrap_fits_the_width_breaks_at_spaces_and_splits_long_words() -> None:
    segments = [("12:00:00 ", "time"), ("the quick brown fox " * 5, "text"),
                ("x" * 50, "text"), ("漢字かな" * 6, "text")]
    for width in (7, 20, 33, 80):
        rows = wrap(segments, width, indent=4)
        assert all(ui_view.row_width(row) <= width for row in rows), width
        joined = "".join(text for row in rows for text, _ in row)
        assert joined.replace(" ", "") == "".join(t for t, _ in segments).replace(" ", "")
    rows = wrap([("aaa bbb ccc", "text")], 8, indent=2)
    assert ["".join(t for t, _ in row) for row in rows] == ["aaa bbb", "  ccc"]


def test_hostile_peer_text_is_neutralised() -> None:
    view = make_view()
    view.apply(received("\x1b[2J\x1b]0;pwned\x07gotcha\u202eevil\u2028x\r"), now=NOW)
    shown = screen_text(view)
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\u2028" not in shown and "\r" not in shown
    assert "\\x1b[2J" in shown and "\\u202e" in shown and "\\u2028" in shown
    ascii_view = make_view(unicode=False)
    ascii_view.apply(received("café ✓"), now=NOW)
    assert screen_text(ascii_view).isascii()


# -- messages, expiry and states -------------------------------------------------------

def test_received_message_shows_time_sender_and_countdown_then_vanishes() -> None:
    view = make_view()
    view.apply(received("see you", ttl=20), now=NOW)
    assert re.search(r"\d\d:\d\d:\d\d 20s bob: see you", screen_text(view))
    assert re.search(r" 8s bob: see you", screen_text(view, now=NOW + 12.5))
    assert view.next_expiry() == NOW + 20
    assert not view.expire(NOW + 19.9)
    assert view.expire(NOW + 20)
    assert "see you" not in screen_text(view, now=NOW + 20)


def test_received_expiry_is_clamped_against_clock_skew() -> None:
    view = make_view()
    view.apply(chat.Received("bob", "late", NOW, NOW - 100, 30), now=NOW)
    view.apply(chat.Received("bob", "future", NOW, NOW + 10_000, 10_000), now=NOW)
    view.apply(chat.Received("bob", "nan", float("nan"), float("nan"), 30), now=NOW)
    assert "late" in screen_text(view, now=NOW + 1)
    view.expire(NOW + ui_view.MIN_SHOW)
    assert "late" not in screen_text(view, now=NOW + ui_view.MIN_SHOW)
    view.expire(NOW + ui_options.TTL_MAX)
    assert view.lines == []


def test_own_message_states_and_expiry() -> None:
    view = make_view()
    view.add_own(1, "first", now=NOW, ttl=10)
    view.add_own(2, "second", now=NOW, ttl=10)
    assert re.search(r"10s alice: first +sending", screen_text(view))
    view.apply(chat.Accepted(1, NOW + 10), now=NOW)
    assert re.search(r"alice: first +sent", screen_text(view))
    view.apply(chat.Delivered(1), now=NOW)
    assert re.search(r"alice: first +delivered ✓", screen_text(view))
    view.apply(chat.Undelivered(2, "bob did not confirm it"), now=NOW + 10)
    assert re.search(r"alice: second +not delivered ✗: bob did not confirm it",
                     screen_text(view))
    view.expire(NOW + 10)
    shown = screen_text(view, now=NOW + 10)
    assert "first" not in shown and "second" not in shown
    # what is left says a message failed, without its text
    assert "your message sent at" in shown and "was not delivered: bob did not confirm" in shown
    view.apply(chat.Undelivered(7, "the relay refused it"), now=NOW + 11)
    assert "message #7 was not delivered: the relay refused it" in screen_text(
        view, width=120, now=NOW + 11)


def test_events_update_the_status_bar() -> None:
    view = make_view()
    bar = screen_text(view).splitlines()[0]
    assert "127.0.0.1:8765 starting" in bar and "bob ?" in bar and "TTL 30s" in bar
    fp = "SHA256:" + ":".join(["AB"] * 32)
    view.apply(Status("connected", "connected to 127.0.0.1:8765 (TLS)", fp), now=NOW)
    view.apply(chat.Presence(True), now=NOW)
    view.apply(chat.SessionStarted("1234 5678", "ab" * 16, False), now=NOW)
    bar = screen_text(view, width=100).splitlines()[0]
    assert "TLS SHA256:AB:AB:AB:AB…" in bar and "bob online" in bar
    assert "not verified" in bar and "connecting" not in bar
    view.verified = True
    assert "verified ✓" in screen_text(view, width=100).splitlines()[0]
    view.apply(chat.SessionStarted("9999", "cd" * 16, True), now=NOW)
    assert "not verified" in screen_text(view, width=100).splitlines()[0]
    view.apply(Status("disconnected", "lost the relay"), now=NOW)
    assert "bob ?" in screen_text(view, width=100).splitlines()[0]
    for width in (20, 40, 60):
        assert len(screen_text(view, width=width).splitlines()[0]) == width
    assert "no TLS" in screen_text(make_view(tls=False)).splitlines()[0]
    assert "static key" in screen_text(make_view(static=True)).splitlines()[0]


def test_a_failed_handshake_stops_the_spinner_and_says_what_to_do() -> None:
    """Found in review: after 'Not retrying by itself' the screen kept
    spinning 'starting a secure session'."""
    view = make_view()
    view.apply(Status("connected", "connected to 127.0.0.1:8765 (TLS)"), now=NOW)
    view.apply(chat.Presence(True), now=NOW)
    assert view.busy and "starting a secure session" in view_text(view.activity_row(100))
    view.apply(chat.Notice("the passcodes differ. Not retrying by itself", "passcode_mismatch",
                           "error"), now=NOW)
    assert not view.busy
    assert "check the passcode with bob" in view_text(view.activity_row(100))
    view.apply(chat.SessionStarted("1234 5678", "ab" * 16, False), now=NOW)
    assert "check the passcode" not in view_text(view.activity_row(100))


def view_text(row) -> str:
    return "".join(text for text, _ in row)


def test_render_fills_exactly_the_screen_and_scrolls() -> None:
    view = make_view()
    for i in range(40):
        view.apply(received(f"message {i}"), now=NOW)
    view.input.insert("draft")
    frame = view.render(50, 12, NOW)
    assert len(frame.rows) == 12
    assert all(ui_view.row_width(row) <= 50 for row in frame.rows)
    lines = frame.lines()
    assert lines[-1] == "> draft" and frame.cursor == (11, 7)
    assert "message 39" in lines[-3] and "message 30" not in "".join(lines)
    view.scroll_by(view.page)
    lines = view.render(50, 12, NOW).lines()
    assert "message 39" not in "".join(lines) and "PgDn" in lines[-2]
    view.scroll_by(1000)                    # clamped to the oldest
    assert "message 0" in view.render(50, 12, NOW).lines()[1]
    view.clear()
    assert "message" not in screen_text(view)
    for width, height in ((1, 1), (5, 2), (10, 3)):
        assert len(view.render(width, height, NOW).rows) == height


def test_progress_and_status_command_lines() -> None:
    view = make_view()
    view.progress = "deriving the key"
    assert "deriving the key" in screen_text(view).splitlines()[-2] and view.busy
    view.progress = ""
    view.apply(Status("connected", "connected"), now=NOW)
    view.apply(chat.Presence(False), now=NOW)
    assert "waiting for bob" in screen_text(view).splitlines()[-2]
    view.apply(chat.SessionStarted("1111 2222", "ef" * 16, False), now=NOW)
    lines = view.status_lines(mode="ratchet", pending=2)
    assert any("ef" * 16 in line for line in lines)
    assert any("1111 2222" in line for line in lines)
    assert any("2 message(s)" in line for line in lines)


# -- paste, limits, order, status (the chat screen review) -------------------------------

def feed_all(decoder: ui_view.PasteDecoder, keys: list[Any]) -> list[Any]:
    return [item for key in keys for item in decoder.feed(key)]


def test_a_paste_is_one_message_with_its_newlines_and_never_a_command() -> None:
    """Found in review: a pasted multi-line text sent each line at once, and a
    pasted line starting with "/" ran as a command."""
    decoder = ui_view.PasteDecoder()
    keys = feed_all(decoder, list("\x1b[200~/quit\rsecond\tline\r\n/verify ok\x1b[201~"))
    assert keys == [ui_view.Paste("/quit\rsecond\tline\r\n/verify ok")]
    view = make_view()
    assert handle_key(view, keys[0]) is None
    assert view.input.text == "/quit\nsecond    line\n/verify ok"
    assert "> /quit↵second    line↵/verify ok" in screen_text(view, width=100)
    assert handle_key(view, "\n") == ("send", "/quit\nsecond    line\n/verify ok")
    # typed, the same words are a command
    for key in "/quit":
        handle_key(view, key)
    assert handle_key(view, "\n") == ("submit", "/quit")
    # markers split across reads, other escape sequences and keys pass through
    assert feed_all(decoder, ["\x1b", "[", "2", "0", "0"]) == []
    assert feed_all(decoder, ["~", "a", "\x1b[201", "~", "\x1b", "[", "A", Key.LEFT]) == [
        ui_view.Paste("a"), "\x1b", "[", "A", Key.LEFT]
    # a message with newlines shows them as rows, under its sender
    view.add_own(1, "first row\nsecond row", now=NOW, ttl=30)
    rows = screen_text(view).splitlines()
    at = next(i for i, row in enumerate(rows) if "alice: first row" in row)
    assert rows[at + 1].startswith(" " * ui_view.MESSAGE_INDENT + "second row")


def test_the_byte_limit_is_checked_as_you_type_and_the_text_is_never_wiped() -> None:
    """Found in review: 13,000 emoji were refused at Enter (52,002 bytes, the
    relay allows 48,256) and the typed text was gone."""
    view = make_view()
    view.input.max_bytes = 100
    action = handle_key(view, ui_view.Paste("😀" * 30))
    assert view.input.text == "😀" * 24                    # 24 * 4 + 2 quotes = 98 bytes
    assert action == ("full", "a message holds at most 100 bytes once encoded "
                              "(the relay's limit)")
    assert handle_key(view, "😀") == ("full", action[1])
    assert [handle_key(view, key) for key in "xyz"] == [None, None, ("full", action[1])]
    assert handle_key(view, Key.BACKSPACE) is None and handle_key(view, "a") is None
    assert view.input.text == "😀" * 24 + "xa"              # exactly 100 bytes
    line = InputLine()
    line.insert("typed after")
    line.home()
    line.restore("could not be sent ")                     # put back, never lost
    assert line.text == "could not be sent typed after"


def test_lines_are_in_time_order_whatever_the_senders_clock_says() -> None:
    """Found in review: notices appeared out of time order around messages
    stamped with the sender's clock."""
    view = make_view()
    view.info("bob is online", now=NOW)
    view.apply(chat.Received("bob", "from a slow clock", NOW - 90, NOW + 30, 30), now=NOW + 1)
    view.apply(chat.Received("bob", "from a fast clock", NOW + 90, NOW + 30, 30), now=NOW + 2)
    view.info("later notice", now=NOW + 3)
    stamps = re.findall(r"^(\d\d:\d\d:\d\d) ", screen_text(view, now=NOW + 3), re.M)
    assert len(stamps) == 4 and stamps == sorted(stamps)
    # a message of yours that failed leaves its notice at the bottom when it expires
    mine = make_view()
    mine.add_own(1, "lost", now=NOW, ttl=10)
    mine.apply(chat.Undelivered(1, "the relay went away"), now=NOW + 1)
    mine.info("a notice after it", now=NOW + 5)
    mine.expire(NOW + 10)
    shown = screen_text(mine, now=NOW + 10)
    stamps = re.findall(r"^(\d\d:\d\d:\d\d) ", shown, re.M)
    assert stamps == sorted(stamps) and shown.rstrip().splitlines()[-3].endswith(
        "was not delivered: the relay went away"), shown


def test_status_values_wrap_under_their_column() -> None:
    """Found in review: the fingerprint in /status wrapped out of alignment."""
    view = make_view(tls=True)
    view.fingerprint = "SHA256:" + ":".join(["AB"] * 32)
    view.info("\n".join(view.status_lines(mode="ratchet", pending=0)), now=NOW,
              hang=ui_view.STATUS_LABEL)
    rows = screen_text(view, width=60, height=30).splitlines()
    at = next(i for i, row in enumerate(rows) if "certificate  SHA256:" in row)
    column = rows[at].index("SHA256:")
    assert column == ui_view.INFO_INDENT + ui_view.STATUS_LABEL
    assert rows[at + 1].startswith(" " * column) and rows[at + 1][column] != " "


def test_the_status_bar_keeps_verified_longest() -> None:
    """Found in review: at 40 columns the bar dropped "verified" before the
    relay address."""
    view = make_view()
    view.apply(Status("connected", "connected", "SHA256:" + "AB:" * 31 + "AB"), now=NOW)
    view.apply(chat.Presence(True), now=NOW)
    view.apply(chat.SessionStarted("1 2 3", "abcd", False), now=NOW)
    view.verified = True
    for width in (40, 30, 14):
        bar = view_text(view.status_row(width))
        assert "verified ✓" in bar, (width, bar)
        assert len(bar) == width
    assert "bob online" in view_text(view.status_row(40))
    view.apply(Status("reconnecting", "the relay went away"), now=NOW)
    bar = view_text(view.status_row(40))
    assert "verified ✓" in bar and "reconnecting" in bar, bar


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


def test_ctrl_r_asks_to_reconnect_and_the_activity_line_says_so() -> None:
    view = make_view()
    assert handle_key(view, ui_view.RECONNECT_KEY) == ("reconnect", "")
    view.apply(Status("reconnecting", "the relay went away; next try in 4 s"), now=NOW)
    assert "Ctrl-R" not in view_text(view.activity_row(100))   # only where it works
    view.can_reconnect = True
    row = view_text(view.activity_row(100))
    assert row.startswith("Ctrl-R reconnects now") and "next try in 4 s" in row


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


def test_a_late_message_is_marked_and_a_refused_handshake_counts_down() -> None:
    """The chat core shows a message written before one already shown marked
    late (issue 13 item 3), and says when it tries a refused handshake again
    (issue 14 item 1): the screen, line mode's JSON and the activity line say so."""
    from types import SimpleNamespace

    from msgrlib.ui import linemode

    late = chat.Received("bob", "old news", NOW, NOW + 30, 30, late=True)
    view = make_view()
    view.apply(late, now=NOW)
    view.apply(received("fresh"), now=NOW)
    shown = screen_text(view)
    assert "bob (late): old news" in shown and "bob: fresh" in shown
    client = SimpleNamespace(core=SimpleNamespace(safety_number=None, peer="bob"))
    assert linemode.json_line(late, client)["late"] is True   # type: ignore[arg-type]
    assert linemode.json_line(received("x"), client)["late"] is False  # type: ignore[arg-type]
    view.apply(Status("connected", "connected"), now=NOW)
    view.apply(chat.Presence(True), now=NOW)
    view.apply(chat.HandshakeRetry(NOW + 9.5, "rate_limited"), now=NOW)
    assert "the relay limits handshakes between you; next try in 10 s" in screen_text(view)
    assert "next try in 4 s" in screen_text(view, now=NOW + 6)
    view.apply(chat.HandshakeRetry(None, "trying again now"), now=NOW + 10)
    assert "starting a secure session with bob" in screen_text(view, now=NOW + 10)


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
