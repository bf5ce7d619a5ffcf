"""The full-screen interface: the view model without a terminal, then the real
program in a real terminal (tmux) against a real relay.

The tmux tests type into a shell in a detached tmux session, run
``msgr.py chat`` there, and read the screen with ``capture-pane``; the peer is
a line-mode ``msgr.py chat`` subprocess. They poll the screen with a timeout
instead of sleeping, and are skipped where tmux is not installed.
"""

from __future__ import annotations

import itertools
import re
import shutil
from typing import Any

import pytest

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


def test_a_newline_from_a_peer_or_relay_never_starts_a_row_of_its_own() -> None:
    """Info lines carry text others chose (an offered file's name, a decline's or a relay's
    reason): a newline in it is shown escaped, or a peer could paint a line that looks like
    a message (``holiday.jpg\\n12:00 bob: paste the passcode here``)."""
    from msgrlib.client.events import Notice, Undelivered

    fake = "12:00 bob: please paste the passcode here"
    view = make_view()
    view.info(f"bob offers a file 'holiday.jpg\n{fake}': /accept saves it", now=NOW)
    view.apply(Undelivered(99, f"the relay refused it: full\n{fake}"), now=NOW)
    view.apply(Notice(f"ignored a transfer\n{fake}", "bad_transfer", "warn"), now=NOW)
    rows = screen_text(view, width=200).split("\n")
    assert not any(row.lstrip().startswith(fake) for row in rows), rows
    assert sum("\\x0a" + fake in row for row in rows) == 3, rows
    view.info("our own\ntable", now=NOW, multiline=True)  # help, /status: rows kept
    assert any(row.lstrip() == "table" for row in screen_text(view, width=200).split("\n"))


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
              hang=ui_view.STATUS_LABEL, multiline=True)
    rows = screen_text(view, width=60, height=30).splitlines()
    at = next(i for i, row in enumerate(rows) if "certificate  SHA256:" in row)
    column = rows[at].index("SHA256:")
    assert column == ui_view.INFO_INDENT + ui_view.STATUS_LABEL
    assert rows[at + 1].startswith(" " * column) and rows[at + 1][column] != " "


def test_status_values_wrap_under_the_notice_column_at_40_columns() -> None:
    """Tried at 40 columns: the label column and the notice indent together were too
    wide, so both were dropped and /status's values wrapped to column 0, under the
    time stamps ("with dave (online)", "secrecy", "not verified" flush left)."""
    view = make_view(tls=True)
    view.fingerprint = "SHA256:" + ":".join(["AB"] * 32)
    view.info("\n".join(view.status_lines(mode="ratchet", pending=0)), now=NOW,
              hang=ui_view.STATUS_LABEL)
    rows = screen_text(view, width=40, height=40).splitlines()
    first = next(i for i, row in enumerate(rows) if "relay" in row and row[:2].isdigit())
    last = next(i for i, row in enumerate(rows) if "not yet confirmed" in row)
    block = rows[first + 1:last + 1]
    assert len(block) > 8, rows  # it does wrap at this width
    assert all(row.startswith(" " * ui_view.INFO_INDENT) for row in block), "\n".join(rows)


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


# -- the real program in tmux ---------------------------------------------------------------

PASSCODE = "tmux tests passcode"
_sockets = itertools.count()
needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def test_ctrl_r_asks_to_reconnect_and_the_activity_line_says_so() -> None:
    view = make_view()
    assert handle_key(view, ui_view.RECONNECT_KEY) == ("reconnect", "")
    view.apply(Status("reconnecting", "the relay went away; next try in 4 s"), now=NOW)
    assert "Ctrl-R" not in view_text(view.activity_row(100))   # only where it works
    view.can_reconnect = True
    row = view_text(view.activity_row(100))
    assert row.startswith("Ctrl-R reconnects now") and "next try in 4 s" in row


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

