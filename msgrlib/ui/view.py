"""The chat screen's view model: everything the screen shows, without curses.

:class:`InputLine` (the line being typed), :func:`parse_command`,
:func:`handle_key` (keys as characters or :class:`Key` names: the terminal
translates curses key codes), :class:`PasteDecoder` (bracketed paste),
:func:`wrap`, and :class:`ChatView`: messages with their expiry, scrolling,
the status bar, and rendering all of it into rows of ``(text, style)`` segments
for a given width, height and time. No curses, no clock, no I/O:
``tests/test_screen.py`` drives it directly, and a test checks that importing
it loads no curses.

Everything that came from outside is made safe (:func:`safe_text`:
``safetext.escape``, plus everything outside ASCII where the terminal cannot
draw it) before it is stored in the view, and :meth:`ChatView.render` passes
every row through the same sanitizer once more on its way out, so nothing a
peer or a relay sends can move the cursor whatever path it took.
"""

from __future__ import annotations

import enum
import json
import math
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from msgrlib.client import events
from msgrlib.client.events import Status
from msgrlib.limits import MAX_TEXT, TTL_MAX, TTL_MIN
from msgrlib.util.safetext import escape

#: A received message is shown for at least this long even if the relay's
#: clock says it has (almost) expired: clocks of two machines disagree.
MIN_SHOW = 2.0
#: Non-message lines (notices, help, status) kept; older ones scroll away.
MAX_INFO_LINES = 500

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
    "  /send PATH      offer a file or directory; /accept or /decline one offered to you",
    "  /invite         a new conversation by invite code, in place of this one when it is "
    "idle (no secure session in use, nothing unconfirmed); /cancel or Esc gives the code up",
    "  //text          send a message that starts with '/'",
    "A paste (several lines too) becomes one message, sent with Enter; it never runs a command.",
    "Keys: Left/Right Home/End move, Backspace/Delete, Ctrl-U/Ctrl-K cut to start/end, "
    "Ctrl-W cut a word, PgUp/PgDn/Up/Down scroll, Ctrl-L redraw, Ctrl-R reconnect now "
    "(while the relay is away).",
)


# -- text: safety and width -----------------------------------------------------

def safe_text(text: str, *, unicode: bool = True) -> str:
    """``safetext.escape`` (every control, format, separator, private-use,
    surrogate and unassigned character as a visible escape), and everything
    outside ASCII as well when the terminal cannot draw it (``unicode=False``)."""
    text = escape(text)
    if unicode or text.isascii():
        return text
    return "".join(ch if ord(ch) <= 0x7E else
                   f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"
                   for ch in text)


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


_TOKENS = re.compile(r"\n|[^\S\n]+|\S+")


def wrap(segments: Iterable[Segment], width: int, indent: int = 0) -> list[Row]:
    """Word-wrap styled text to rows of at most ``width`` cells.

    Continuation rows start with ``indent`` spaces (dropped when the terminal
    is too narrow for it); a break replaces the space it falls on; a word
    longer than a row is split; a newline ("\\n", kept in a multi-line
    message) starts a new row.
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
            if token == "\n":
                newline()
                continue
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

def encoded_size(text: str) -> int:
    """Bytes ``text`` takes in a message body (UTF-8, JSON-escaped): what the
    relay's frame limit counts (``ChatCore.send`` measures it the same way)."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "surrogatepass"))


class InputLine:
    """An editable line with a cursor (an index into ``text``).

    ``limit`` caps it in characters, ``max_bytes`` (once the relay has said
    its frame limit) in encoded bytes: both are checked as you type, so a
    message that fits is never refused afterwards. A paste may hold newlines
    (``pasted`` is then set, and the line is sent as a message as it is, never
    run as a command)."""

    def __init__(self, *, limit: int = MAX_TEXT, max_bytes: int | None = None) -> None:
        self.text = ""
        self.cursor = 0
        self.limit = limit
        self.max_bytes = max_bytes
        self.pasted = False
        self.overflow = ""       # why the last insert dropped characters, or ""

    def _fits(self, text: str) -> bool:
        if len(text) > self.limit:
            return False
        # Printable characters take at most 4 bytes each, or 2 for '"' and '\\' and
        # newlines once escaped: only a line near the byte limit is measured exactly
        # (a paste without bracketed paste comes one key at a time).
        return (self.max_bytes is None or 4 * len(text) + 2 <= self.max_bytes
                or encoded_size(text) <= self.max_bytes)

    def insert(self, chars: str, *, paste: bool = False) -> bool:
        """Insert printable characters at the cursor (and newlines from a
        paste); False if none fit. What does not fit is left out, and
        ``overflow`` says which limit it hit."""
        if paste:
            chars = chars.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
        # isprintable() is False for every unsafe category (and tabs, newlines).
        chars = "".join(ch for ch in chars if ch.isprintable() or (paste and ch == "\n"))
        self.overflow = ""
        if not chars:
            return False
        before, after = self.text[:self.cursor], self.text[self.cursor:]
        take = len(chars)
        if not self._fits(before + chars + after):
            low, high = 0, len(chars)   # the longest prefix that fits
            while low < high:
                mid = (low + high + 1) // 2
                if self._fits(before + chars[:mid] + after):
                    low = mid
                else:
                    high = mid - 1
            take = low
            if len(before) + len(chars) + len(after) > self.limit:
                self.overflow = f"a message holds at most {self.limit:,} characters"
            else:
                self.overflow = (f"a message holds at most {self.max_bytes:,} bytes once "
                                 "encoded (the relay's limit)")
        if not take:
            return False
        self.text = before + chars[:take] + after
        self.cursor += take
        self.pasted = self.pasted or paste
        return True

    def restore(self, text: str) -> None:
        """Put back a line that could not be sent, in front of anything typed since."""
        self.text = text + self.text
        self.cursor += len(text)

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
        text, self.text, self.cursor, self.pasted = self.text, "", 0, False
        return text

    def window(self, width: int, *, newline: str = "↵") -> tuple[str, int]:
        """What fits in ``width`` cells, scrolled so the cursor is visible,
        and the cursor's column in it. A newline shows as ``newline``."""
        width = max(1, width)
        start = 0
        if text_width(self.text[:self.cursor]) >= width:
            start = self.cursor   # walk back from the cursor while there is room
            room = width - 1
            while start > 0 and char_width(self.text[start - 1]) <= room:
                room -= char_width(self.text[start - 1])
                start -= 1
        shown = clip(self.text[start:], width)
        return shown.replace("\n", newline), text_width(self.text[start:self.cursor])


# -- commands and keys -------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """What a submitted line asks for: ``send`` (arg is the text), ``help``,
    ``quit``, ``ttl`` (arg: seconds or "" to show), ``status``, ``clear``,
    ``file`` (``/send PATH``; arg: the path), ``accept``, ``decline``, ``invite``,
    ``cancel`` (the invite waiting for the other side),
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
    if name in ("status", "clear", "accept", "decline", "invite", "cancel") and not rest:
        return Command(name)
    if name == "send":
        if rest:
            return Command("file", rest)
        return Command("error", "/send PATH offers a file or directory to your peer")
    if name == "verify":
        if rest.lower() in ("", "ok"):
            return Command("verify", rest.lower())
        return Command("error", "use /verify to see the safety number, then /verify ok "
                                "once it matches on both screens")
    if name in ("status", "clear", "accept", "decline", "invite", "cancel"):
        return Command("error", f"/{name} takes no arguments")
    return Command("unknown", word)


class Key(enum.Enum):
    """Keys that are not characters; the terminal maps its key codes to these."""

    LEFT = "left"
    RIGHT = "right"
    UP = "up"
    DOWN = "down"
    HOME = "home"
    END = "end"
    BACKSPACE = "backspace"
    DELETE = "delete"
    ENTER = "enter"
    PAGE_UP = "page_up"
    PAGE_DOWN = "page_down"
    RESIZE = "resize"


@dataclass(frozen=True)
class Paste:
    """Text the terminal said was pasted (bracketed paste), in one piece."""

    text: str


#: Ctrl-R: reconnect to the relay now instead of waiting for the next retry.
RECONNECT_KEY = "\x12"

_KEYS_LEFT = {Key.LEFT, "\x02"}             # Ctrl-B
_KEYS_RIGHT = {Key.RIGHT, "\x06"}           # Ctrl-F
_KEYS_HOME = {Key.HOME, "\x01"}             # Ctrl-A
_KEYS_END = {Key.END, "\x05"}               # Ctrl-E
_KEYS_BACKSPACE = {Key.BACKSPACE, "\x7f", "\x08"}
_KEYS_ENTER = {Key.ENTER, "\n", "\r"}


def handle_key(view: ChatView, key: str | Key | Paste) -> tuple[str, str] | None:
    """Apply one key (a character, a :class:`Key` or a :class:`Paste`) to the view.

    Returns what the caller must do: ``("submit", line)`` (typed: may be a
    command), ``("send", line)`` (holds a paste: always a message),
    ``("quit", "")``, ``("redraw", "")``, ``("resize", "")``, ``("reconnect", "")``,
    ``("full", why)`` (some characters did not fit), or None (just redraw).
    """
    line = view.input
    if isinstance(key, Paste):
        line.insert(key.text, paste=True)
        return ("full", line.overflow) if line.overflow else None
    if key in _KEYS_ENTER:
        pasted = line.pasted
        return ("send" if pasted else "submit", line.take())
    if key in _KEYS_BACKSPACE:
        line.backspace()
    elif key == Key.DELETE:
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
    elif key == RECONNECT_KEY:
        return ("reconnect", "")
    elif key == Key.PAGE_UP:
        view.scroll_by(view.page)
    elif key == Key.PAGE_DOWN:
        view.scroll_by(-view.page)
    elif key == Key.UP:
        view.scroll_by(1)
    elif key == Key.DOWN:
        view.scroll_by(-1)
    elif key == Key.RESIZE:
        return ("resize", "")
    elif isinstance(key, str):
        # Ignores other control characters; says when the line is full.
        line.insert(key)
        if line.overflow:
            return ("full", line.overflow)
    return None


#: Seconds with no key after an ``ESC`` before it counts as the Esc key alone.
ESC_PAUSE = 0.1


class PasteDecoder:
    """Finds bracketed pastes in the stream of keys.

    With bracketed paste on (``ESC [ ? 2004 h``), the terminal wraps pasted text
    in ``ESC [ 200 ~`` ... ``ESC [ 201 ~``; curses hands those over as single
    characters. :meth:`feed` takes one key and returns the keys to act on, a
    whole paste as one :class:`Paste`. A paste longer than ``max_chars`` keeps
    its start (the input line refuses more anyway). Keys that are not
    characters inside a paste are dropped."""

    START, END = "\x1b[200~", "\x1b[201~"

    def __init__(self, *, max_chars: int = 4 * MAX_TEXT) -> None:
        self.max_chars = max_chars
        self._pending = ""                   # the start of a marker, maybe
        self._paste: list[str] | None = None  # inside a paste: its characters
        self._size = 0

    @property
    def in_paste(self) -> bool:
        return self._paste is not None

    def _release(self, chars: str, out: list[str | Key | Paste]) -> None:
        if self._paste is None:
            out.extend(chars)
        elif self._size < self.max_chars:
            chars = chars[:self.max_chars - self._size]
            self._paste.append(chars)
            self._size += len(chars)

    @property
    def pending(self) -> str:
        """Characters held back as the possible start of a marker."""
        return self._pending

    def lone_escape(self) -> bool:
        """After a pause with no key: a held ``ESC`` (the start of a marker, maybe)
        was the Esc key alone. True (and it is dropped) if so; the glue asks this
        :data:`ESC_PAUSE` seconds after the last key, so a marker split across two
        reads (a slow link) is never taken for Esc."""
        if self._pending == "\x1b" and self._paste is None:
            self._pending = ""
            return True
        return False

    def feed(self, key: str | Key) -> list[str | Key | Paste]:
        out: list[str | Key | Paste] = []
        if not isinstance(key, str):
            self._release(self._pending, out)
            self._pending = ""
            if self._paste is None:
                out.append(key)
            return out
        for ch in key:
            marker = self.END if self._paste is not None else self.START
            candidate = self._pending + ch
            if marker.startswith(candidate):
                self._pending = candidate
                if candidate == marker:
                    self._pending = ""
                    if self._paste is None:
                        self._paste, self._size = [], 0
                    else:
                        out.append(Paste("".join(self._paste)))
                        self._paste = None
                continue
            if ch == "\x1b":   # a new marker may start here
                self._release(self._pending, out)
                self._pending = ch
            else:
                self._release(candidate, out)
                self._pending = ""
        return out


# -- an invite in the screen ------------------------------------------------------------

class InviteState(enum.Enum):
    """Where the screen's invite is (``/invite``, or ``chat --invite`` / ``--join``)."""

    NONE = "none"              # no invite: a named chat
    ASKING = "asking"          # allocate (or join) sent, the relay has not answered
    WAITING = "waiting"        # the code is shown; the other side has not typed it yet
    CANCELLING = "cancelling"  # /cancel sent the relay's cancel; its answer is awaited
    JOINED = "joined"          # the other side is here; the handshake runs
    TALKING = "talking"        # a secure session: an ordinary chat from now on
    CANCELLED = "cancelled"    # ended: the nameplate was given back
    EXPIRED = "expired"        # ended: nobody typed the code in time
    BURNED = "burned"          # ended: a wrong code was tried (one guess per invite)
    FAILED = "failed"          # ended: the relay refused, or the connection was lost


#: Every move the screen's invite makes; anything else is a bug (``InviteFlow.go`` raises).
INVITE_TRANSITIONS: dict[tuple[InviteState, str], InviteState] = {
    **{(s, "invite"): InviteState.ASKING for s in (
        InviteState.NONE, InviteState.TALKING, InviteState.CANCELLED, InviteState.EXPIRED,
        InviteState.BURNED, InviteState.FAILED)},
    (InviteState.ASKING, "allocated"): InviteState.WAITING,
    (InviteState.ASKING, "joined"): InviteState.JOINED,        # a joiner meets at once
    (InviteState.ASKING, "cancel"): InviteState.CANCELLED,     # no number yet: hang up
    (InviteState.WAITING, "cancel"): InviteState.CANCELLING,
    (InviteState.WAITING, "joined"): InviteState.JOINED,
    (InviteState.WAITING, "expired"): InviteState.EXPIRED,
    (InviteState.CANCELLING, "cancelled"): InviteState.CANCELLED,
    (InviteState.JOINED, "session"): InviteState.TALKING,
    (InviteState.JOINED, "burned"): InviteState.BURNED,
    **{(s, "cancelled"): InviteState.CANCELLED for s in (
        InviteState.ASKING, InviteState.WAITING)},
    **{(s, "failed"): InviteState.FAILED for s in (
        InviteState.ASKING, InviteState.WAITING, InviteState.CANCELLING,
        InviteState.JOINED)},
}

#: States in which the invite is over and the screen has no conversation.
INVITE_ENDED = frozenset({InviteState.CANCELLED, InviteState.EXPIRED, InviteState.BURNED,
                          InviteState.FAILED})


class InviteFlow:
    """The screen's invite: its state (:data:`INVITE_TRANSITIONS`), its code, when the
    relay frees the code, and the sentence the activity line shows for it."""

    def __init__(self) -> None:
        self.state = InviteState.NONE
        self.code = ""
        self.expires_at: float | None = None
        self.reason = ""     # why it ended (already escaped)
        self.joining = False  # this side typed a code (chat --join), not made one

    def can(self, event: str) -> bool:
        return (self.state, event) in INVITE_TRANSITIONS

    def go(self, event: str, *, code: str = "", expires_at: float | None = None,
           reason: str = "", joining: bool = False) -> InviteState:
        nxt = INVITE_TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise ValueError(f"invite: {event!r} in state {self.state.value}")
        self.state = nxt
        if event == "invite":
            self.code, self.expires_at, self.reason = "", None, ""
            self.joining = joining
        if code:
            self.code = code
        if expires_at is not None:
            self.expires_at = expires_at
        if reason:
            self.reason = escape(reason)
        return nxt

    @property
    def active(self) -> bool:
        """The activity line is about the invite (it waits for something)."""
        return self.state in (InviteState.ASKING, InviteState.WAITING,
                              InviteState.CANCELLING, InviteState.JOINED)

    @property
    def ended(self) -> bool:
        return self.state in INVITE_ENDED

    def activity(self, now: float | None) -> str:
        """What the activity line says (the screen adds a spinner while :attr:`active`)."""
        state = self.state
        if state is InviteState.ASKING:
            return ("joining the invite at the relay" if self.joining
                    else "asking the relay for an invite code")
        if state is InviteState.WAITING:
            left = ("" if self.expires_at is None or now is None else
                    f"; it expires in {max(0, math.ceil(min(self.expires_at - now, 1e9)))} s")
            return (f"waiting for the other side to type the code {self.code}{left} "
                    "(/cancel gives it up)")
        if state is InviteState.CANCELLING:
            return ("cancelling the invite: waiting for the relay to free its number "
                    "(/cancel again hangs up)")
        if state is InviteState.JOINED:
            return "the other side is here; starting the secure session"
        what = {InviteState.CANCELLED: "invite cancelled",
                InviteState.EXPIRED: "invite expired unused",
                InviteState.BURNED: "invite burned: a wrong code was tried",
                InviteState.FAILED: "invite failed"}.get(state)
        if what is None:
            return ""
        return f"{what}; no conversation now: /invite starts a new one, /quit leaves"


# -- the view model ------------------------------------------------------------------

@dataclass(eq=False)
class Line:
    """One entry in the message area.

    ``kind`` is "in" (from the peer), "out" (yours) or "info" (anything else).
    Messages have an ``expires_at`` (Unix time); info lines do not.
    ``text`` is already safe to draw; a message's may hold newlines (a paste).
    ``at`` is when it reached this screen, so the lines are in time order.
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
    hang: int = 0               # "info" only: extra indent of its continuation rows
    late: bool = False          # "in" only: written before a message already shown
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


def _sanitized(rows: list[Row]) -> list[Row]:
    """Every row once more through the sanitizer on its way to the terminal:
    whatever path a string took into the view, nothing unsafe leaves it. Text
    stored in the view is already escaped, so this changes nothing (escaping
    is idempotent) unless something skipped that."""
    return [[(escape(text), style) for text, style in row] for row in rows]


#: Width of the label column of /status ("certificate  ").
STATUS_LABEL = 13


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
        self.can_reconnect = False     # the client can be told to reconnect now (Ctrl-R)
        self.hs_retry_at: float | None = None   # the relay refused a handshake: next try
        self.fingerprint: str | None = None
        self.peer_online: bool | None = None
        self.session_id: str | None = None
        self.safety_number: str | None = None
        self.verified = False
        self.ticks = 0                 # advances the spinner
        #: The screen's invite (/invite, chat --invite / --join): its state and code.
        self.invite = InviteFlow()
        self._sent: dict[int, float] = {}   # own message number -> when sent
        self.check, self.cross = ("✓", "✗") if unicode else ("v", "x")

    # -- adding and removing lines --------------------------------------------------

    def info(self, text: str, level: str = INFO, *, now: float, hang: int = 0,
             multiline: bool = False) -> None:
        """A non-message line (notices, help, status). Text is made safe here:
        a newline in it is shown escaped, since such text often holds what a
        peer or relay chose (an offered file name, a refusal's reason) and a
        row of its own would look like a real message. Only our own tables
        (``multiline``: help, /status) start a row at each newline. Each line
        wraps ``hang`` cells further in than usual (a table's value column)."""
        parts = text.split("\n") if multiline else [text]
        for i, part in enumerate(parts):
            self.lines.append(Line("info", self.safe(part), now, level=level, more=i > 0,
                                   hang=hang))
        infos = [line for line in self.lines if line.kind == "info"]
        for old in infos[:max(0, len(infos) - MAX_INFO_LINES)]:
            self.lines.remove(old)

    def add_own(self, n: int, text: str, *, now: float, ttl: int) -> None:
        """A message you sent: it leaves the screen ``ttl`` seconds from now."""
        self._sent[n] = now
        self.lines.append(Line("out", self.safe_lines(text), now, now + ttl, self.me, n))
        self.scroll = 0

    def add_received(self, event: events.Received, *, now: float) -> None:
        expires = event.expires_at
        if not math.isfinite(expires):
            expires = now + TTL_MAX
        # Never longer than the longest TTL, never too short to read (clock skew).
        expires = max(now + MIN_SHOW, min(expires, now + TTL_MAX))
        # Shown at the time it arrived, not the sender's clock: the screen stays in
        # time order whatever the two clocks say.
        # A message written before one already shown (the core says so) is marked late.
        self.lines.append(Line("in", self.safe_lines(event.text), now, expires,
                               self.safe(event.sender),
                               late=event.late))

    def clear(self) -> None:
        self.lines.clear()
        self.scroll = 0

    def new_conversation(self, *, me: str, peer: str) -> None:
        """Another conversation takes the screen (``/invite``): forget the old one's
        peer, session and presence; the lines already shown stay until they expire."""
        self.me, self.peer = me, peer
        self.static = False
        self.connection, self.detail, self.progress = "starting", "", ""
        self.hs_failed, self.hs_retry_at = False, None
        self.peer_online = None
        self.session_id = self.safety_number = None
        self.verified = False
        self.can_reconnect = False
        # The new conversation numbers its messages from 1 again: the old lines no
        # longer answer to a number (a "delivered" there is never about them).
        for line in self.lines:
            line.n = None
        self._sent.clear()

    def expire(self, now: float) -> bool:
        """Drop every message whose TTL has ended; True if any was dropped.
        One of yours that was not delivered leaves a line saying so (no text),
        at the bottom: it is news now, and the lines stay in time order."""
        keep: list[Line] = []
        fates: list[Line] = []
        changed = False
        for line in self.lines:
            if line.expires_at is not None and line.expires_at <= now:
                changed = True
                if line.kind == "out" and line.state == "failed":
                    fates.append(Line("info", self._own_fate(line.at, line.reason),
                                      now, level=WARN))
            else:
                keep.append(line)
        self.lines = keep + fates
        return changed

    def next_expiry(self) -> float | None:
        times = [line.expires_at for line in self.lines if line.expires_at is not None]
        return min(times) if times else None

    def scroll_by(self, rows: int) -> None:
        self.scroll = max(0, self.scroll + rows)

    def safe(self, text: str) -> str:
        return safe_text(text, unicode=self.unicode)

    def safe_lines(self, text: str) -> str:
        """A message made safe, its newlines kept (each starts a row)."""
        return "\n".join(self.safe(part) for part in text.split("\n"))

    # -- events ----------------------------------------------------------------------

    def apply(self, event: Any, *, now: float) -> None:
        """Show one ChatClient event (client.events.* or connection.Status)."""
        if isinstance(event, events.Received):
            self.add_received(event, now=now)
        elif isinstance(event, events.Accepted):
            line = self._own(event.n)
            if line is not None and line.state == "sending":
                line.state = "sent"
        elif isinstance(event, events.Delivered):
            line = self._own(event.n)
            if line is not None:
                line.state, line.reason = "delivered", ""
            elif event.n in self._sent:
                self.info(f"your message sent at {clock(self._sent[event.n])} was delivered "
                          "(after it left your screen)", now=now)
        elif isinstance(event, events.Undelivered):
            line = self._own(event.n)
            if line is not None:
                line.state, line.reason = "failed", self.safe(event.reason)
            elif event.n in self._sent:
                self.info(self._own_fate(self._sent[event.n], event.reason), WARN, now=now)
            else:
                self.info(f"message #{event.n} was not delivered: {event.reason}", WARN,
                          now=now)
        elif isinstance(event, events.Presence):
            self.peer_online = event.online
            self.info(f"{self.peer} is {'online' if event.online else 'offline'}", now=now)
        elif isinstance(event, events.HandshakeRetry):
            # The relay refused a handshake: the activity line counts down to the next try.
            at = event.at
            self.hs_retry_at = at if at is not None and math.isfinite(at) else None
        elif isinstance(event, events.SessionStarted):
            self.hs_failed = False
            self.hs_retry_at = None
            self.session_id = event.session_id
            self.safety_number = event.safety_number
            self.verified = False
            if event.replaced:
                self.info(f"new secure session with {self.peer} (one of you restarted): "
                          "compare the safety number again (/verify)", WARN, now=now)
            else:
                self.info(f"secure session with {self.peer}; type /verify to compare the "
                          "safety number", now=now)
        elif isinstance(event, events.Notice):
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
        return bool(self.progress) or self.invite.active \
            or self.connection in ("starting", "connecting",
                                                           "reconnecting") \
            or (not self.static and self.connection == "connected"
                and self.peer_online is True and self.session_id is None
                and not self.hs_failed)

    def render(self, width: int, height: int, now: float) -> Frame:
        """The whole screen: status bar, messages, activity line, input line."""
        width, height = max(1, width), max(1, height)
        prompt = "> "
        shown, col = self.input.window(max(1, width - 1 - len(prompt)),
                                       newline="↵" if self.unicode else "|")
        input_row = clip_row([(prompt, PROMPT), (shown, TEXT)], width - 1)
        cursor = (height - 1, min(width - 1, len(prompt) + col))
        if height < 4:
            rows: list[Row] = [[] for _ in range(height - 1)] + [input_row]
            return Frame(_sanitized(rows), cursor)
        area = height - 3
        self.page = max(1, area - 1)
        body: list[Row] = []
        for line in self.lines:
            body.extend(self._line_rows(line, width, now))
        self.scroll = min(self.scroll, max(0, len(body) - area))
        end = len(body) - self.scroll
        visible = body[max(0, end - area):end]
        visible = [[] for _ in range(area - len(visible))] + visible  # newest at the bottom
        rows = [self.status_row(width), *visible, self.activity_row(width, now), input_row]
        return Frame(_sanitized(rows), cursor)

    def _line_rows(self, line: Line, width: int, now: float) -> list[Row]:
        key = (width, line.state, line.reason)
        if line._cache is None or line._cache[0] != key:
            indent = INFO_INDENT + line.hang if line.kind == "info" else MESSAGE_INDENT
            if line.kind == "info" and indent * 2 > width:
                # Too narrow for the label column too (wrap would drop the whole
                # indent): keep the notices' own column, clear of the time stamps.
                indent = INFO_INDENT
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
                    (line.sender, who)]
        if line.late:
            segments.append((" (late)", WARN))
        segments += [(": ", PLAIN), (line.text, TEXT)]
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
        # What matters for safety stays longest: whether the session is verified,
        # then whether we are connected at all, then the peer's presence.
        parts: list[tuple[int, list[Segment]]] = [
            (1, [(self.me + arrow + self.peer, BAR)]),
            (3, [(self.address, BAR), state]),
            (4, [tls]),
            (5, [peer]),
            (7, [session]),
            (2, [(f"TTL {self.ttl}s", BAR)]),
        ]
        if state[0]:
            # Connecting, reconnecting...: still said when the address has to go.
            parts.append((6, [(state[0].strip(), state[1])]))

        def assemble(chosen: list[tuple[int, list[Segment]]]) -> Row:
            row: Row = [(" ", BAR)]
            for i, (_, segments) in enumerate(chosen):
                if i:
                    row.append(sep)
                row.extend(segments)
            return row

        shown = [part for part in parts if part[0] != 6]   # the address says the state
        row = assemble(shown)
        while row_width(row) > width and len(shown) > 1:
            lowest = min(shown, key=lambda part: part[0])
            shown.remove(lowest)
            if lowest[0] == 3 and state[0]:
                shown.append(parts[-1])
                shown.sort(key=lambda part: [p[0] for p in parts].index(part[0]))
            row = assemble(shown)
        row = clip_row(row, width, ellipsis="…" if self.unicode else ">")
        row.append((" " * (width - row_width(row)), BAR))
        return _merge(row)

    def activity_row(self, width: int, now: float | None = None) -> Row:
        """Progress of a slow step, where the view is scrolled, or a hint."""
        spinner = _SPINNER_UNICODE if self.unicode else _SPINNER_ASCII
        spin = spinner[self.ticks % len(spinner)] + " "
        flow = self.invite
        if flow.active and not self.progress:
            row: Row = [(spin + flow.activity(now), WARN)]
        elif flow.ended and not self.scroll:
            row = [(flow.activity(now), ERROR if flow.state is not InviteState.CANCELLED
                    else HINT)]
        elif self.progress:
            row = [(spin + self.progress, WARN)]
        elif self.scroll:
            row = [(f"-- scrolled back {self.scroll} rows: PgDn to see the newest --", HINT)]
        elif self.connection in ("starting", "connecting", "reconnecting", "disconnected"):
            row = [(spin + (self.detail or "starting"), WARN)]
            if self.can_reconnect and self.connection in ("reconnecting", "disconnected"):
                row.insert(0, ("Ctrl-R reconnects now · " if self.unicode else
                               "Ctrl-R reconnects now | ", HINT))
        elif not self.static and self.peer_online is False:
            row = [(f"waiting for {self.peer} to come online; what you type is sent once "
                    "a secure session starts", HINT)]
        elif not self.static and self.hs_failed:
            row = [(f"no secure session: check the passcode with {self.peer}, then one of "
                    "you restarts", ERROR)]
        elif (not self.static and self.peer_online and self.session_id is None
              and self.hs_retry_at is not None):
            wait = max(0, math.ceil(self.hs_retry_at - now)) if now is not None else None
            row = [("no secure session yet: the relay limits handshakes between you; "
                    + (f"next try in {wait} s" if wait is not None else "msgr tries again by "
                       "itself"), WARN)]
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
        """What /status shows: a label column :data:`STATUS_LABEL` cells wide,
        then the value (show with ``info(..., hang=STATUS_LABEL)``)."""
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


