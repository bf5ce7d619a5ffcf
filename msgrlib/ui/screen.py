"""The full-screen chat interface: curses on the terminal's alternate screen.

Three layers, from pure to impure:

* **The view model** (:class:`InputLine`, :class:`ChatView`, :func:`parse_command`,
  :func:`handle_key`, :func:`wrap`): messages with their expiry, the line being
  typed, scrolling, the status bar, and rendering all of it into rows of
  ``(text, style)`` segments for a given width, height and time. No curses
  calls, no clock, no I/O: ``tests/test_screen.py`` drives it directly.
* **The painter** (:class:`Painter`, :class:`Terminal`): maps styles to curses
  attributes (colours follow the terminal via ``use_default_colors``; none at
  all when ``NO_COLOR`` is set) and puts the rows on the screen. The terminal
  is restored in a ``finally`` like :func:`curses.wrapper` does.
* **The glue** (:class:`App`): one asyncio loop running the
  :class:`client.ChatClient`, a reader on the stdin fd that drains curses
  ``get_wch()``, a ticker for countdowns and expiry, and signal handlers
  (Ctrl-C, SIGTERM, SIGHUP end the chat cleanly; SIGWINCH redraws).

Everything that came over the network is passed through :func:`safe_text`
(``safetext.escape`` plus the characters curses cannot draw safely) before it is
stored in the view, so nothing a peer or relay sends can move the cursor.

A message disappears from the screen when its TTL ends (a received one at the
relay's expiry time, one of yours at its TTL from when you sent it); the chat
runs on the alternate screen, so nothing is left in the scrollback at exit.

Importing this module raises :class:`ImportError` where :mod:`curses` is
missing (stock Windows Python); ``ui.run_screen`` then falls back to lines.
"""

from __future__ import annotations

import asyncio
import curses  # ImportError where there is no curses: ui.run_screen falls back to lines
import locale
import math
import os
import re
import signal
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from msgrlib.client import core as chat
from msgrlib.client.connection import ChatClient, Status
from msgrlib.errors import MsgrError
from msgrlib.ui import lines as ui
from msgrlib.util.safetext import escape

#: The TTL range users may choose (the relay enforces the same bounds).
TTL_MIN, TTL_MAX = 5, 60
#: A received message is shown for at least this long even if the relay's
#: clock says it has (almost) expired: clocks of two machines disagree.
MIN_SHOW = 2.0
#: Non-message lines (notices, help, status) kept; older ones scroll away.
MAX_INFO_LINES = 500
#: Seconds to wait for the client to say goodbye to the relay at exit.
CLOSE_TIMEOUT = 2.0

#: Continuation rows of a message start under the sender ("HH:MM:SS 29s "),
#: those of a notice under its text ("HH:MM:SS -- ").
MESSAGE_INDENT, INFO_INDENT = 13, 12

Segment = tuple[str, str]   # (text, style)
Row = list[Segment]

# Styles the painter knows (see Painter.STYLES).
PLAIN, TEXT, TIME, TTL, TTL_LOW, PEER, ME = "plain", "text", "time", "ttl", "ttl_low", "peer", "me"
STATE, OK, BAD, INFO, WARN, ERROR, HINT, PROMPT = (
    "state", "ok", "bad", "info", "warn", "error", "hint", "prompt")
BAR, BAR_OK, BAR_WARN, BAR_BAD = "bar", "bar_ok", "bar_warn", "bar_bad"

HELP = (
    "Type a message and press Enter to send it. Commands:",
    "  /help           this help",
    "  /quit           leave (Ctrl-C, or Ctrl-D on an empty line, too)",
    "  /ttl SECONDS    how long the messages you send next live, 5-60",
    "  /status         relay, certificate, session id and safety number",
    "  /verify         show the safety number to compare with your peer",
    "  /verify ok      mark the session verified once the numbers match",
    "  /clear          wipe the messages from the screen",
    "  //text          send a message that starts with '/'",
    "Keys: Left/Right Home/End move, Backspace/Delete, Ctrl-U/Ctrl-K cut to start/end, "
    "Ctrl-W cut a word, PgUp/PgDn/Up/Down scroll, Ctrl-L redraw.",
)


# -- text: safety and width -----------------------------------------------------

def safe_text(text: str, *, unicode: bool = True) -> str:
    """``safetext.escape`` plus what curses cannot draw safely: line/paragraph
    separators, format characters (except the emoji joiner), unassigned and
    private-use code points; and everything outside ASCII when the terminal's
    encoding is not UTF-8."""
    out = []
    for ch in escape(text):
        cat = unicodedata.category(ch)
        if (cat in ("Zl", "Zp", "Cs", "Co", "Cn") or (cat == "Cf" and ch != "\u200d")
                or (not unicode and ord(ch) > 0x7E)):
            code = ord(ch)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def char_width(ch: str) -> int:
    """Terminal cells ``ch`` takes: 0 for combining marks, 2 for wide East Asian."""
    if ch == "\u200d" or unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(text: str) -> int:
    if text.isascii():
        return len(text)
    return sum(char_width(ch) for ch in text)


def row_width(row: Sequence[Segment]) -> int:
    return sum(text_width(text) for text, _ in row)


def clip(text: str, width: int) -> str:
    """The longest prefix of ``text`` that fits in ``width`` cells."""
    if text.isascii():
        return text[:max(0, width)]
    used = 0
    for i, ch in enumerate(text):
        used += char_width(ch)
        if used > width:
            return text[:i]
    return text


def clip_row(row: Sequence[Segment], width: int, *, ellipsis: str = "") -> Row:
    """``row`` cut to ``width`` cells, ending in ``ellipsis`` if something was cut."""
    if row_width(row) <= width:
        return list(row)
    room = max(0, width - text_width(ellipsis))
    out: Row = []
    for text, style in row:
        part = clip(text, room)
        if part:
            out.append((part, style))
        room -= text_width(part)
        if len(part) < len(text):
            break
    if ellipsis and width >= text_width(ellipsis):
        out.append((ellipsis, out[-1][1] if out else PLAIN))
    return out


def _merge(row: Row) -> Row:
    merged: Row = []
    for text, style in row:
        if merged and merged[-1][1] == style:
            merged[-1] = (merged[-1][0] + text, style)
        elif text:
            merged.append((text, style))
    return merged


_TOKENS = re.compile(r"\s+|\S+")


def wrap(segments: Iterable[Segment], width: int, indent: int = 0) -> list[Row]:
    """Word-wrap styled text to rows of at most ``width`` cells.

    Continuation rows start with ``indent`` spaces (dropped when the terminal
    is too narrow for it); a break replaces the space it falls on; a word
    longer than a row is split.
    """
    width = max(1, width)
    if indent * 2 > width:
        indent = 0
    rows: list[Row] = [[]]
    used = 0
    start = 0   # cells the current row starts with (0, or the indent)

    def newline() -> None:
        nonlocal used, start
        if used > start and rows[-1][-1][0].isspace():
            rows[-1].pop()   # no trailing space before a break
        rows.append([(" " * indent, PLAIN)] if indent else [])
        used = start = indent

    for text, style in segments:
        for token in _TOKENS.findall(text):
            w = text_width(token)
            if used + w <= width:
                rows[-1].append((token, style))
                used += w
            elif token.isspace():
                newline()
            elif w <= width - indent and used > start:
                newline()
                rows[-1].append((token, style))
                used += w
            else:
                for ch in token:
                    cw = char_width(ch)
                    if used + cw > width and used > start:
                        newline()
                    rows[-1].append((ch, style))
                    used += cw
    return [_merge(row) for row in rows]


def clock(t: float) -> str:
    """``HH:MM:SS`` local time."""
    return time.strftime("%H:%M:%S", time.localtime(t))


def short_fingerprint(fp: str) -> str:
    """``SHA256:AB:CD:EF:01…``: enough to recognise the one the relay printed."""
    return fp[:18] + "…" if len(fp) > 19 else fp


# -- the line being typed --------------------------------------------------------

class InputLine:
    """An editable line with a cursor (an index into ``text``)."""

    def __init__(self, *, limit: int = ui.MAX_TEXT) -> None:
        self.text = ""
        self.cursor = 0
        self.limit = limit

    def insert(self, chars: str) -> bool:
        """Insert printable characters at the cursor; False if none fit."""
        chars = "".join(ch for ch in chars if ch.isprintable() or ch == "\u200d")
        chars = chars[:max(0, self.limit - len(self.text))]
        if not chars:
            return False
        self.text = self.text[:self.cursor] + chars + self.text[self.cursor:]
        self.cursor += len(chars)
        return True

    def backspace(self) -> None:
        if self.cursor > 0:
            self.text = self.text[:self.cursor - 1] + self.text[self.cursor:]
            self.cursor -= 1

    def delete(self) -> None:
        self.text = self.text[:self.cursor] + self.text[self.cursor + 1:]

    def left(self) -> None:
        self.cursor = max(0, self.cursor - 1)

    def right(self) -> None:
        self.cursor = min(len(self.text), self.cursor + 1)

    def home(self) -> None:
        self.cursor = 0

    def end(self) -> None:
        self.cursor = len(self.text)

    def kill_to_start(self) -> None:
        """Ctrl-U: cut everything before the cursor."""
        self.text = self.text[self.cursor:]
        self.cursor = 0

    def kill_to_end(self) -> None:
        """Ctrl-K: cut everything from the cursor on."""
        self.text = self.text[:self.cursor]

    def kill_word(self) -> None:
        """Ctrl-W: cut the word before the cursor (and the spaces after it)."""
        i = self.cursor
        while i > 0 and self.text[i - 1].isspace():
            i -= 1
        while i > 0 and not self.text[i - 1].isspace():
            i -= 1
        self.text = self.text[:i] + self.text[self.cursor:]
        self.cursor = i

    def take(self) -> str:
        """The whole line; the input is empty afterwards."""
        text, self.text, self.cursor = self.text, "", 0
        return text

    def window(self, width: int) -> tuple[str, int]:
        """What fits in ``width`` cells, scrolled so the cursor is visible,
        and the cursor's column in it."""
        width = max(1, width)
        start = 0
        if text_width(self.text[:self.cursor]) >= width:
            start = self.cursor   # walk back from the cursor while there is room
            room = width - 1
            while start > 0 and char_width(self.text[start - 1]) <= room:
                room -= char_width(self.text[start - 1])
                start -= 1
        shown = clip(self.text[start:], width)
        return shown, text_width(self.text[start:self.cursor])


# -- commands and keys -------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """What a submitted line asks for: ``send`` (arg is the text), ``help``,
    ``quit``, ``ttl`` (arg: seconds or "" to show), ``status``, ``clear``,
    ``verify`` (arg: "" or "ok"), ``unknown`` (arg: the word) or ``error``
    (arg: what was wrong)."""

    name: str
    arg: str = ""


def parse_command(line: str) -> Command | None:
    """A submitted line -> Command; None for a blank line. A line starting with
    "/" is never sent as a message: "//text" sends "/text"."""
    if not line.strip():
        return None
    if line.startswith("//"):
        return Command("send", line[1:])
    if not line.startswith("/"):
        return Command("send", line)
    word, _, rest = line[1:].partition(" ")
    name, rest = word.lower(), rest.strip()
    if name in ("help", "h", "?"):
        return Command("help")
    if name in ("quit", "q", "exit"):
        return Command("quit")
    if name == "ttl":
        if not rest:
            return Command("ttl")
        if rest.isdigit() and TTL_MIN <= int(rest) <= TTL_MAX:
            return Command("ttl", str(int(rest)))
        return Command("error", f"/ttl takes whole seconds from {TTL_MIN} to {TTL_MAX}, "
                                "for example /ttl 20")
    if name in ("status", "clear") and not rest:
        return Command(name)
    if name == "verify":
        if rest.lower() in ("", "ok"):
            return Command("verify", rest.lower())
        return Command("error", "use /verify to see the safety number, then /verify ok "
                                "once it matches on both screens")
    if name in ("status", "clear"):
        return Command("error", f"/{name} takes no arguments")
    return Command("unknown", word)


_KEYS_LEFT = {curses.KEY_LEFT, "\x02"}             # Ctrl-B
_KEYS_RIGHT = {curses.KEY_RIGHT, "\x06"}           # Ctrl-F
_KEYS_HOME = {curses.KEY_HOME, "\x01"}             # Ctrl-A
_KEYS_END = {curses.KEY_END, "\x05"}               # Ctrl-E
_KEYS_BACKSPACE = {curses.KEY_BACKSPACE, "\x7f", "\x08"}
_KEYS_ENTER = {curses.KEY_ENTER, "\n", "\r"}


def handle_key(view: ChatView, key: str | int) -> tuple[str, str] | None:
    """Apply one key (a ``get_wch()`` result) to the view.

    Returns what the caller must do: ``("submit", line)``, ``("quit", "")``,
    ``("redraw", "")``, ``("resize", "")``, or None (just redraw as usual).
    """
    line = view.input
    if key in _KEYS_ENTER:
        return ("submit", line.take())
    if key in _KEYS_BACKSPACE:
        line.backspace()
    elif key == curses.KEY_DC:
        line.delete()
    elif key == "\x04":                            # Ctrl-D
        if not line.text:
            return ("quit", "")
        line.delete()
    elif key in _KEYS_LEFT:
        line.left()
    elif key in _KEYS_RIGHT:
        line.right()
    elif key in _KEYS_HOME:
        line.home()
    elif key in _KEYS_END:
        line.end()
    elif key == "\x15":                            # Ctrl-U
        line.kill_to_start()
    elif key == "\x0b":                            # Ctrl-K
        line.kill_to_end()
    elif key == "\x17":                            # Ctrl-W
        line.kill_word()
    elif key == "\x0c":                            # Ctrl-L
        return ("redraw", "")
    elif key == curses.KEY_PPAGE:
        view.scroll_by(view.page)
    elif key == curses.KEY_NPAGE:
        view.scroll_by(-view.page)
    elif key == curses.KEY_UP:
        view.scroll_by(1)
    elif key == curses.KEY_DOWN:
        view.scroll_by(-1)
    elif key == curses.KEY_RESIZE:
        return ("resize", "")
    elif isinstance(key, str):
        # Ignores other control characters; says when the line is full.
        if not line.insert(key) and len(line.text) >= line.limit:
            return ("full", "")
    return None


# -- the view model ------------------------------------------------------------------

@dataclass(eq=False)
class Line:
    """One entry in the message area.

    ``kind`` is "in" (from the peer), "out" (yours) or "info" (anything else).
    Messages have an ``expires_at`` (Unix time); info lines do not.
    ``text`` is already safe to draw.
    """

    kind: str
    text: str
    at: float
    expires_at: float | None = None
    sender: str = ""
    n: int | None = None
    state: str = "sending"      # "out" only: sending, sent, delivered, failed
    reason: str = ""
    level: str = INFO           # "info" only: info, warn or error
    more: bool = False          # "info" only: continues the line before (no time shown)
    _cache: tuple[Any, list[Row]] | None = field(default=None, repr=False)


@dataclass
class Frame:
    """A rendered screen: exactly ``height`` rows and the cursor position."""

    rows: list[Row]
    cursor: tuple[int, int]

    def lines(self) -> list[str]:
        return ["".join(text for text, _ in row) for row in self.rows]


_SPINNER_UNICODE = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_SPINNER_ASCII = "|/-\\"


class ChatView:
    """Everything the screen shows, independent of curses and of the clock:
    methods that need the time take ``now`` (Unix seconds)."""

    def __init__(self, *, me: str, peer: str, address: str, tls: bool, ttl: int,
                 static: bool = False, unicode: bool = True) -> None:
        self.me = me
        self.peer = peer
        self.address = address
        self.tls = tls
        self.ttl = ttl
        self.static = static
        self.unicode = unicode
        self.lines: list[Line] = []
        self.input = InputLine()
        self.scroll = 0            # rows scrolled back from the newest
        self.page = 10             # rows PgUp/PgDn move; set by render()
        # status, kept in step with the client by the glue
        self.connection = "starting"   # starting, connecting, connected, reconnecting, ...
        self.detail = ""               # the latest connection sentence
        self.progress = ""             # a slow step in progress (key derivation)
        self.hs_failed = False         # the last handshake failed: no retry by itself
        self.fingerprint: str | None = None
        self.peer_online: bool | None = None
        self.session_id: str | None = None
        self.safety_number: str | None = None
        self.verified = False
        self.ticks = 0                 # advances the spinner
        self._sent: dict[int, float] = {}   # own message number -> when sent
        self.check, self.cross = ("✓", "✗") if unicode else ("v", "x")

    # -- adding and removing lines --------------------------------------------------

    def info(self, text: str, level: str = INFO, *, now: float) -> None:
        """A non-message line (notices, help, status). Text is made safe here."""
        for i, part in enumerate(text.split("\n")):
            self.lines.append(Line("info", self.safe(part), now, level=level, more=i > 0))
        infos = [line for line in self.lines if line.kind == "info"]
        for old in infos[:max(0, len(infos) - MAX_INFO_LINES)]:
            self.lines.remove(old)

    def add_own(self, n: int, text: str, *, now: float, ttl: int) -> None:
        """A message you sent: it leaves the screen ``ttl`` seconds from now."""
        self._sent[n] = now
        self.lines.append(Line("out", self.safe(text), now, now + ttl, self.me, n))
        self.scroll = 0

    def add_received(self, event: chat.Received, *, now: float) -> None:
        expires = event.expires_at
        if not math.isfinite(expires):
            expires = now + TTL_MAX
        # Never longer than the longest TTL, never too short to read (clock skew).
        expires = max(now + MIN_SHOW, min(expires, now + TTL_MAX))
        sent = event.sent_at
        shown_at = sent if math.isfinite(sent) and abs(sent - now) <= 2 * TTL_MAX else now
        self.lines.append(Line("in", self.safe(event.text), shown_at, expires,
                               self.safe(event.sender)))

    def clear(self) -> None:
        self.lines.clear()
        self.scroll = 0

    def expire(self, now: float) -> bool:
        """Drop every message whose TTL has ended; True if any was dropped.
        One of yours that was not delivered leaves a line saying so (no text)."""
        keep: list[Line] = []
        changed = False
        for line in self.lines:
            if line.expires_at is not None and line.expires_at <= now:
                changed = True
                if line.kind == "out" and line.state == "failed":
                    keep.append(Line("info", self._own_fate(line.at, line.reason),
                                     now, level=WARN))
            else:
                keep.append(line)
        self.lines = keep
        return changed

    def next_expiry(self) -> float | None:
        times = [line.expires_at for line in self.lines if line.expires_at is not None]
        return min(times) if times else None

    def scroll_by(self, rows: int) -> None:
        self.scroll = max(0, self.scroll + rows)

    def safe(self, text: str) -> str:
        return safe_text(text, unicode=self.unicode)

    # -- events ----------------------------------------------------------------------

    def apply(self, event: Any, *, now: float) -> None:
        """Show one ChatClient event (chat.* or client.Status)."""
        if isinstance(event, chat.Received):
            self.add_received(event, now=now)
        elif isinstance(event, chat.Accepted):
            line = self._own(event.n)
            if line is not None and line.state == "sending":
                line.state = "sent"
        elif isinstance(event, chat.Delivered):
            line = self._own(event.n)
            if line is not None:
                line.state, line.reason = "delivered", ""
            elif event.n in self._sent:
                self.info(f"your message sent at {clock(self._sent[event.n])} was delivered "
                          "(after it left your screen)", now=now)
        elif isinstance(event, chat.Undelivered):
            line = self._own(event.n)
            if line is not None:
                line.state, line.reason = "failed", self.safe(event.reason)
            elif event.n in self._sent:
                self.info(self._own_fate(self._sent[event.n], event.reason), WARN, now=now)
            else:
                self.info(f"message #{event.n} was not delivered: {event.reason}", WARN,
                          now=now)
        elif isinstance(event, chat.Presence):
            self.peer_online = event.online
            self.info(f"{self.peer} is {'online' if event.online else 'offline'}", now=now)
        elif isinstance(event, chat.SessionStarted):
            self.hs_failed = False
            self.session_id = event.session_id
            self.safety_number = event.safety_number
            self.verified = False
            if event.replaced:
                self.info(f"new secure session with {self.peer} (one of you restarted): "
                          "compare the safety number again (/verify)", WARN, now=now)
            else:
                self.info(f"secure session with {self.peer}; type /verify to compare the "
                          "safety number", now=now)
        elif isinstance(event, chat.Notice):
            if event.code == "passcode_mismatch":
                self.hs_failed = True
            self.info(event.text, event.level if event.level in (WARN, ERROR) else INFO,
                      now=now)
        elif isinstance(event, Status):
            self._apply_status(event, now)

    def _apply_status(self, status: Status, now: float) -> None:
        if status.fingerprint:
            self.fingerprint = status.fingerprint
        if status.state == "trust":
            self.info(status.detail, WARN, now=now)
            return
        self.connection = status.state
        self.detail = self.safe(status.detail)
        if status.state == "connected":
            self.info(status.detail, now=now)
        elif status.state == "disconnected":
            self.peer_online = None
            self.info(status.detail, WARN, now=now)

    def _own(self, n: int) -> Line | None:
        for line in self.lines:
            if line.kind == "out" and line.n == n:
                return line
        return None

    def _own_fate(self, at: float, reason: str) -> str:
        return f"your message sent at {clock(at)} was not delivered: {reason}"

    # -- rendering -------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A slow step is under way (the spinner turns, the screen redraws often)."""
        return bool(self.progress) or self.connection in ("starting", "connecting",
                                                           "reconnecting") \
            or (not self.static and self.connection == "connected"
                and self.peer_online is True and self.session_id is None
                and not self.hs_failed)

    def render(self, width: int, height: int, now: float) -> Frame:
        """The whole screen: status bar, messages, activity line, input line."""
        width, height = max(1, width), max(1, height)
        prompt = "> "
        shown, col = self.input.window(max(1, width - 1 - len(prompt)))
        input_row = clip_row([(prompt, PROMPT), (shown, TEXT)], width - 1)
        cursor = (height - 1, min(width - 1, len(prompt) + col))
        if height < 4:
            rows: list[Row] = [[] for _ in range(height - 1)] + [input_row]
            return Frame(rows, cursor)
        area = height - 3
        self.page = max(1, area - 1)
        body: list[Row] = []
        for line in self.lines:
            body.extend(self._line_rows(line, width, now))
        self.scroll = min(self.scroll, max(0, len(body) - area))
        end = len(body) - self.scroll
        visible = body[max(0, end - area):end]
        visible = [[] for _ in range(area - len(visible))] + visible  # newest at the bottom
        rows = [self.status_row(width), *visible, self.activity_row(width), input_row]
        return Frame(rows, cursor)

    def _line_rows(self, line: Line, width: int, now: float) -> list[Row]:
        key = (width, line.state, line.reason)
        if line._cache is None or line._cache[0] != key:
            indent = INFO_INDENT if line.kind == "info" else MESSAGE_INDENT
            line._cache = (key, wrap(self._segments(line), width, indent=indent))
        rows = line._cache[1]
        if line.expires_at is None:
            return rows
        left = max(0, min(99, math.ceil(line.expires_at - now)))
        countdown = (f"{left:>2}s", TTL_LOW if left <= 5 else TTL)
        return [[countdown if style == TTL else (text, style) for text, style in rows[0]],
                *rows[1:]]

    def _segments(self, line: Line) -> list[Segment]:
        if line.kind == "info":
            lead = (" " * INFO_INDENT, PLAIN) if line.more else (clock(line.at) + " -- ", TIME)
            return [lead, (line.text, line.level)]
        who = PEER if line.kind == "in" else ME
        segments = [(clock(line.at) + " ", TIME), ("??s", TTL), (" ", PLAIN),
                    (line.sender, who), (": ", PLAIN), (line.text, TEXT)]
        if line.kind == "out":
            if line.state == "delivered":
                segments.append((f"  delivered {self.check}", OK))
            elif line.state == "failed":
                segments.append((f"  not delivered {self.cross}: {line.reason}", BAD))
            else:
                segments.append(("  sending…" if line.state == "sending" and self.unicode
                                  else f"  {line.state}", STATE))
        return segments

    def status_row(self, width: int) -> Row:
        """The status bar: relay, TLS, peer presence, verification, TTL.
        Parts are dropped, least important first, to fit the width."""
        sep = (" │ " if self.unicode else " | ", BAR)
        state = {"connected": ("", BAR), "connecting": (" connecting…", BAR_WARN),
                 "starting": (" starting…", BAR_WARN),
                 "reconnecting": (" reconnecting…", BAR_WARN)}.get(
            self.connection, (f" {self.connection}", BAR_BAD))
        if not self.unicode:
            state = (state[0].replace("…", "..."), state[1])
        if not self.tls:
            tls = ("no TLS", BAR_WARN)
        elif self.fingerprint:
            fp = short_fingerprint(self.fingerprint)
            tls = ("TLS " + (fp if self.unicode else fp.replace("…", "...")), BAR)
        else:
            tls = ("TLS", BAR)
        peer = {True: (f"{self.peer} online", BAR_OK), False: (f"{self.peer} offline", BAR_WARN),
                None: (f"{self.peer} ?", BAR)}[self.peer_online]
        if self.static:
            session = ("static key", BAR_WARN)
        elif self.session_id is None:
            session = ("no session", BAR)
        elif self.verified:
            session = (f"verified {self.check}", BAR_OK)
        else:
            session = ("not verified", BAR)
        arrow = " → " if self.unicode else " -> "
        # (priority, segments): the lowest priority goes first when space is short
        parts: list[tuple[int, list[Segment]]] = [
            (1, [(self.me + arrow + self.peer, BAR)]),
            (6, [(self.address, BAR), state]),
            (2, [tls]),
            (5, [peer]),
            (4, [session]),
            (3, [(f"TTL {self.ttl}s", BAR)]),
        ]

        def assemble(chosen: list[tuple[int, list[Segment]]]) -> Row:
            row: Row = [(" ", BAR)]
            for i, (_, segments) in enumerate(chosen):
                if i:
                    row.append(sep)
                row.extend(segments)
            return row

        row = assemble(parts)
        while row_width(row) > width and len(parts) > 1:
            parts.remove(min(parts, key=lambda part: part[0]))
            row = assemble(parts)
        row = clip_row(row, width, ellipsis="…" if self.unicode else ">")
        row.append((" " * (width - row_width(row)), BAR))
        return _merge(row)

    def activity_row(self, width: int) -> Row:
        """Progress of a slow step, where the view is scrolled, or a hint."""
        spinner = _SPINNER_UNICODE if self.unicode else _SPINNER_ASCII
        spin = spinner[self.ticks % len(spinner)] + " "
        if self.progress:
            row: Row = [(spin + self.progress, WARN)]
        elif self.scroll:
            row = [(f"-- scrolled back {self.scroll} rows: PgDn to see the newest --", HINT)]
        elif self.connection in ("starting", "connecting", "reconnecting", "disconnected"):
            row = [(spin + (self.detail or "starting"), WARN)]
        elif not self.static and self.peer_online is False:
            row = [(f"waiting for {self.peer} to come online; what you type is sent once "
                    "a secure session starts", HINT)]
        elif not self.static and self.hs_failed:
            row = [(f"no secure session: check the passcode with {self.peer}, then one of "
                    "you restarts", ERROR)]
        elif not self.static and self.peer_online and self.session_id is None:
            row = [(spin + f"starting a secure session with {self.peer}", WARN)]
        else:
            row = [("/help for commands · PgUp/PgDn scroll · /quit or Ctrl-C to leave"
                    if self.unicode else "/help for commands, PgUp/PgDn scroll, /quit or "
                    "Ctrl-C to leave", HINT)]
        if not self.unicode:
            row = [(text.replace("…", "..."), style) for text, style in row]
        return clip_row(row, width, ellipsis="…" if self.unicode else ">")

    # -- command output ------------------------------------------------------------------

    def status_lines(self, *, mode: str, pending: int) -> list[str]:
        """What /status shows."""
        lines = [f"relay        {self.address}, {self.connection}, "
                 + ("TLS" if self.tls else "no TLS: the relay link is not encrypted "
                    "(messages still are, end to end)")]
        if self.tls:
            lines.append(f"certificate  {self.fingerprint or 'not seen yet'}")
        lines.append(f"you          {self.me}, chatting with {self.peer} ("
                     + {True: "online", False: "offline", None: "presence unknown"}[
                         self.peer_online] + ")")
        lines.append(f"mode         {mode}")
        if self.static:
            lines.append("session      none in --static mode: messages are sealed with the "
                         "passcode key (no forward secrecy, no safety number)")
        elif self.session_id is None:
            lines.append("session      none yet: it starts when both of you are online")
        else:
            lines.append(f"session      {self.session_id}, "
                         + ("verified" if self.verified else "not verified (/verify)"))
            lines.append(f"safety no.   {self.safety_number}")
        lines.append(f"TTL          {self.ttl} s for the messages you send next")
        lines.append(f"outbox       {pending} message(s) not yet confirmed")
        return lines


# -- curses: painting and the terminal ------------------------------------------------

class Painter:
    """Map styles to curses attributes and put a Frame on the screen."""

    def __init__(self, stdscr: Any, *, colours: bool) -> None:
        self.stdscr = stdscr
        green = yellow = red = cyan = 0
        if colours:
            try:
                curses.start_color()
                curses.use_default_colors()   # -1: the terminal's own background
                for number, colour in enumerate((curses.COLOR_GREEN, curses.COLOR_YELLOW,
                                                 curses.COLOR_RED, curses.COLOR_CYAN), 1):
                    curses.init_pair(number, colour, -1)
                green, yellow, red, cyan = (curses.color_pair(i) for i in range(1, 5))
            except curses.error:
                pass   # a terminal without (default) colours: attributes only
        dim, bold, reverse = curses.A_DIM, curses.A_BOLD, curses.A_REVERSE
        self.styles = {
            PLAIN: 0, TEXT: 0, TIME: dim, TTL: dim, TTL_LOW: red | bold, PEER: cyan | bold,
            ME: green | bold, STATE: dim, OK: green, BAD: red | bold, INFO: dim,
            WARN: yellow, ERROR: red | bold, HINT: dim, PROMPT: bold,
            BAR: reverse, BAR_OK: reverse | green, BAR_WARN: reverse | yellow,
            BAR_BAD: reverse | red | bold,
        }

    def paint(self, frame: Frame, *, full: bool = False) -> None:
        scr = self.stdscr
        if full:
            scr.clear()
        else:
            scr.erase()
        height, width = scr.getmaxyx()
        for y, row in enumerate(frame.rows[:height]):
            x = 0
            for text, style in clip_row(row, width):
                try:
                    scr.addstr(y, x, text, self.styles.get(style, 0))
                except curses.error:
                    pass   # the bottom-right cell, or a terminal that shrank meanwhile
                x += text_width(text)
        try:
            scr.move(min(frame.cursor[0], height - 1), min(frame.cursor[1], width - 1))
        except curses.error:
            pass
        scr.refresh()


class Terminal:
    """curses set up and torn down like :func:`curses.wrapper` (cbreak, no echo,
    keypad, non-blocking reads), the alternate screen included."""

    def __init__(self) -> None:
        self.stdscr: Any = None
        self.fd = sys.stdin.fileno()

    def start(self) -> None:
        self.stdscr = curses.initscr()
        try:
            curses.noecho()
            curses.cbreak()   # Ctrl-C stays a signal: see App._on_signal
            self.stdscr.keypad(True)
            self.stdscr.nodelay(True)
            try:
                curses.curs_set(1)
            except curses.error:
                pass
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.stdscr is None:
            return
        scr, self.stdscr = self.stdscr, None
        # Wipe first: on a terminal without an alternate screen this is what
        # keeps the messages from staying visible after exit.
        steps = (scr.erase, scr.refresh, lambda: scr.keypad(False), curses.echo,
                 curses.nocbreak, curses.endwin)
        for step in steps:
            try:
                step()
            except curses.error:
                pass   # e.g. the terminal is gone (SIGHUP); do the rest regardless

    def read_keys(self) -> list[str | int]:
        """Every key waiting, without blocking."""
        keys: list[str | int] = []
        while True:
            try:
                keys.append(self.stdscr.get_wch())
            except curses.error:
                return keys

    def resize(self) -> None:
        try:
            size = os.get_terminal_size(sys.stdout.fileno())
            curses.resizeterm(size.lines, size.columns)
        except (OSError, curses.error):
            pass


# -- the glue --------------------------------------------------------------------------

class App:
    """Run one chat on a started :class:`Terminal`; see the module docstring."""

    def __init__(self, options: ui.ChatOptions, terminal: Terminal, *,
                 unicode: bool, colours: bool,
                 wallclock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.terminal = terminal
        self.now = wallclock
        self.view = ChatView(me=options.user, peer=options.peer,
                             address=_address(options.host, options.port),
                             tls=options.tls is not None, ttl=options.ttl,
                             static=options.static, unicode=unicode)
        self.painter = Painter(terminal.stdscr, colours=colours)
        self.client: ChatClient | None = None
        self.pending: list[str] = []      # typed before the client existed
        self._told_full = False           # the input line is full: said once
        self.exit_code = ui.EXIT_OK
        self.quit_warned = False
        self._quit: asyncio.Event | None = None
        self._draw_scheduled = False
        self._full_redraw = False

    # -- main ---------------------------------------------------------------------------

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        self._quit = asyncio.Event()
        loop.set_exception_handler(self._on_loop_error)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal)
        loop.add_signal_handler(signal.SIGWINCH, self._on_resize)
        loop.add_reader(self.terminal.fd, self._on_keys)
        ticker = loop.create_task(self._ticker())
        try:
            return await self._chat()
        finally:
            ticker.cancel()
            loop.remove_reader(self.terminal.fd)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH):
                loop.remove_signal_handler(sig)

    async def _chat(self) -> int:
        import kdf

        assert self._quit is not None
        loop = asyncio.get_running_loop()
        now = self.now()
        if self.options.static:
            self.view.info(ui.STATIC_WARNING, WARN, now=now)
        params = self.options.kdf_params or kdf.DEFAULT_PARAMS
        self.view.progress = (f"deriving the key from the passcode (Argon2id, "
                              f"{params.memory_kib // 1024} MiB)")
        self.draw()
        quitting = loop.create_task(self._quit.wait())
        deriving = loop.create_task(asyncio.to_thread(ui.derive_key, self.options, None))
        await asyncio.wait({deriving, quitting}, return_when=asyncio.FIRST_COMPLETED)
        if not deriving.done():
            return self.exit_code   # the thread ends on its own within a second
        key = deriving.result()
        self.view.progress = ""
        client = self.client = ui.make_client(self.options, key)
        client.core.ttl = self.view.ttl
        running = loop.create_task(client.run())
        events = loop.create_task(self._events(client))
        for text in self.pending:
            self._send(text)
        self.pending.clear()
        self.draw()
        try:
            await asyncio.wait({running, quitting}, return_when=asyncio.FIRST_COMPLETED)
            if running.done():
                running.result()   # the reason it stopped: an error for msgr.py to print
                return ui.EXIT_ERROR
            client.close()
            try:
                await asyncio.wait_for(running, CLOSE_TIMEOUT)
            except (asyncio.TimeoutError, MsgrError):
                pass
            return self.exit_code
        finally:
            quitting.cancel()
            events.cancel()
            if not running.done():
                client.close()
                running.cancel()

    async def _events(self, client: ChatClient) -> None:
        async for event in client.events():
            self.view.apply(event, now=self.now())
            self.draw()

    async def _ticker(self) -> None:
        """Redraw for countdowns and the spinner; wake exactly when a message expires."""
        while True:
            delay = 0.1 if self.view.busy else 0.5 if self.view.lines else 1.0
            expiry = self.view.next_expiry()
            if expiry is not None:
                delay = min(delay, max(0.01, expiry - self.now()))
            await asyncio.sleep(delay)
            self.view.ticks += 1
            self.draw()

    # -- drawing ------------------------------------------------------------------------

    def draw(self) -> None:
        """Redraw soon (several requests in one loop iteration draw once)."""
        if not self._draw_scheduled:
            self._draw_scheduled = True
            asyncio.get_running_loop().call_soon(self._draw_now)

    def _draw_now(self) -> None:
        self._draw_scheduled = False
        if self.terminal.stdscr is None:
            return
        self._sync()
        now = self.now()
        self.view.expire(now)
        height, width = self.terminal.stdscr.getmaxyx()
        self.painter.paint(self.view.render(width, height, now), full=self._full_redraw)
        self._full_redraw = False

    def _sync(self) -> None:
        """Copy what the status bar shows from the client."""
        if self.client is None:
            return
        core, view = self.client.core, self.view
        view.peer_online = core.peer_online
        view.verified = core.verified
        view.ttl = core.ttl
        if self.client.fingerprint:
            view.fingerprint = self.client.fingerprint
        if core.session is not None:
            view.session_id = core.session.sid
            view.safety_number = core.safety_number

    # -- input --------------------------------------------------------------------------

    def _on_keys(self) -> None:
        for key in self.terminal.read_keys():
            action = handle_key(self.view, key)
            if action is None:
                continue
            what, text = action
            if what == "submit":
                self._submit(text)
            elif what == "quit":
                self._request_quit()
            elif what in ("redraw", "resize"):
                if what == "resize":
                    self.terminal.resize()
                self._full_redraw = True
            elif what == "full" and not self._told_full:
                self._told_full = True  # once per message (a paste is many keys)
                self.view.info(f"a message holds at most {self.view.input.limit:,} "
                               "characters: the rest was not added", WARN, now=self.now())
        self.draw()

    def _submit(self, line: str) -> None:
        self._told_full = False
        command = parse_command(line)
        if command is None:
            return
        now = self.now()
        view, client = self.view, self.client
        name, arg = command.name, command.arg
        if name != "quit":
            self.quit_warned = False
        if name == "send":
            if client is None:
                self.pending.append(arg)
            else:
                self._send(arg)
        elif name == "quit":
            self._request_quit()
        elif name == "help":
            view.info("\n".join(HELP), now=now)
        elif name == "unknown":
            view.info(f"unknown command /{arg}: nothing was sent", ERROR, now=now)
            view.info("\n".join(HELP), now=now)
        elif name == "error":
            view.info(arg + ": nothing was sent", ERROR, now=now)
        elif name == "ttl":
            if arg:
                view.ttl = int(arg)
                if client is not None:
                    client.core.ttl = view.ttl
                    client.poke()
                view.info(f"messages you send from now on last {arg} s", now=now)
            else:
                view.info(f"messages you send last {view.ttl} s; /ttl SECONDS "
                          f"({TTL_MIN}-{TTL_MAX}) changes it", now=now)
        elif name == "status":
            self._sync()
            pending = len(client.core.unsettled()) if client is not None else 0
            mode = ("static: one key from the passcode" if self.options.static
                    else "ratchet: a fresh handshake per session, forward secrecy")
            view.info("\n".join(view.status_lines(mode=mode, pending=pending)), now=now)
        elif name == "clear":
            view.clear()
        elif name == "verify":
            self._verify(arg, now)

    def _send(self, text: str) -> None:
        assert self.client is not None
        try:
            n = self.client.send(text)
        except MsgrError as err:
            self.view.info(f"{err}: nothing was sent", ERROR, now=self.now())
            return
        self.view.add_own(n, text, now=self.now(), ttl=self.client.core.ttl)

    def _verify(self, arg: str, now: float) -> None:
        self._sync()
        view = self.view
        if self.options.static:
            view.info("--static mode has no session and no safety number to compare",
                      WARN, now=now)
        elif view.session_id is None or view.safety_number is None:
            view.info(f"no secure session yet: it starts when {view.peer} is online; "
                      "then /verify shows the safety number", WARN, now=now)
        elif arg == "ok":
            assert self.client is not None
            self.client.core.mark_verified()
            view.verified = True
            view.info("session marked verified (until the session changes)", now=now)
        else:
            view.info(f"safety number: {view.safety_number}\n"
                      f"compare it with {view.peer}'s screen over another channel (in "
                      "person, or a call where you know the voice). If it is the same, type "
                      "/verify ok. If not, someone may be in the middle: stop, and check the "
                      "passcode and the relay.", now=now)

    def _request_quit(self) -> None:
        """/quit or Ctrl-D: leave, but ask once if messages are still unconfirmed."""
        client = self.client
        pending = len(client.core.unsettled()) if client is not None else len(self.pending)
        if pending and not self.quit_warned:
            self.quit_warned = True
            self.view.info(f"{pending} message(s) not confirmed yet: /quit again (or "
                           "Ctrl-C) to leave anyway", WARN, now=self.now())
            return
        self.exit_code = ui.EXIT_OK
        assert self._quit is not None
        self._quit.set()

    def _on_signal(self) -> None:
        self.exit_code = ui.EXIT_INTERRUPTED
        assert self._quit is not None
        self._quit.set()

    def _on_resize(self) -> None:
        self.terminal.resize()
        self._full_redraw = True
        self.draw()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # Tracebacks on stderr would scribble over the screen; show one line instead.
        error = context.get("exception")
        self.view.info(f"internal error: {context.get('message')}"
                       + (f": {error!r}" if error else ""), ERROR, now=self.now())
        self.draw()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _utf8(stdscr: Any) -> bool:
    """Whether curses can draw non-ASCII text. Not locale.getpreferredencoding():
    Python's UTF-8 mode says "utf-8" in the C locale, where curses cannot."""
    try:
        import codecs
        return codecs.lookup(stdscr.encoding).name == "utf-8"
    except (AttributeError, LookupError):
        return False


def run(options: ui.ChatOptions) -> int:
    """The full-screen chat; returns the exit code (0 after /quit, 130 after
    Ctrl-C or a signal). Errors (:class:`MsgrError`) propagate after the
    terminal is restored, for ``msgr.py`` to print as one line.

    Falls back to the line interface when stdin or stdout is not a terminal.
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return ui.run_lines(options, interactive=sys.stdin.isatty())
    try:
        locale.setlocale(locale.LC_ALL, "")   # so curses draws UTF-8
    except locale.Error:
        pass   # an unknown locale in the environment: ASCII only (see _utf8)
    os.environ.setdefault("ESCDELAY", "25")   # Esc sequences: do not wait a whole second
    colours = not os.environ.get("NO_COLOR")
    terminal = Terminal()
    terminal.start()
    try:
        app = App(options, terminal, unicode=_utf8(terminal.stdscr), colours=colours)
        return asyncio.run(app.main())
    except KeyboardInterrupt:
        return ui.EXIT_INTERRUPTED
    finally:
        terminal.stop()
