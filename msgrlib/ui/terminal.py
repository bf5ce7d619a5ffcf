"""The curses side of the chat screen: the painter and the terminal.

:class:`Painter` maps the view model's styles to curses attributes (colours
follow the terminal via ``use_default_colors``; none at all when ``NO_COLOR`` is
set) and puts a :class:`~msgrlib.ui.view.Frame` on the screen. :class:`Terminal`
sets curses up and tears it down like :func:`curses.wrapper` does, turns
bracketed paste on and off, and translates curses key codes into the view
model's :class:`~msgrlib.ui.view.Key` names.

Importing this module raises :class:`ImportError` where :mod:`curses` is
missing (stock Windows Python); ``msgr.py`` then falls back to line mode.
"""

from __future__ import annotations

import curses  # ImportError where there is no curses: msgr.py falls back to lines
import os
import sys
from typing import Any

from msgrlib.ui.view import (
    BAD,
    BAR,
    BAR_BAD,
    BAR_OK,
    BAR_WARN,
    ERROR,
    HINT,
    INFO,
    ME,
    OK,
    PEER,
    PLAIN,
    PROMPT,
    STATE,
    TEXT,
    TIME,
    TTL,
    TTL_LOW,
    WARN,
    Frame,
    Key,
    clip_row,
    text_width,
)

#: curses key codes -> the view model's names for them.
KEYS = {
    curses.KEY_LEFT: Key.LEFT, curses.KEY_RIGHT: Key.RIGHT, curses.KEY_UP: Key.UP,
    curses.KEY_DOWN: Key.DOWN, curses.KEY_HOME: Key.HOME, curses.KEY_END: Key.END,
    curses.KEY_BACKSPACE: Key.BACKSPACE, curses.KEY_DC: Key.DELETE,
    curses.KEY_ENTER: Key.ENTER, curses.KEY_PPAGE: Key.PAGE_UP,
    curses.KEY_NPAGE: Key.PAGE_DOWN, curses.KEY_RESIZE: Key.RESIZE,
}

#: Ask the terminal to mark pastes (xterm's bracketed paste mode), and stop.
BRACKETED_PASTE_ON, BRACKETED_PASTE_OFF = "\x1b[?2004h", "\x1b[?2004l"


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
            self._write(BRACKETED_PASTE_ON)
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
                 curses.nocbreak, curses.endwin, lambda: self._write(BRACKETED_PASTE_OFF))
        for step in steps:
            try:
                step()
            except (curses.error, OSError):
                pass   # e.g. the terminal is gone (SIGHUP); do the rest regardless

    @staticmethod
    def _write(sequence: str) -> None:
        os.write(sys.stdout.fileno(), sequence.encode("ascii"))

    def read_keys(self) -> list[str | Key]:
        """Every key waiting, without blocking: characters, and the keys curses
        knows as :class:`Key` names (others are dropped)."""
        keys: list[str | Key] = []
        while True:
            try:
                key = self.stdscr.get_wch()
            except curses.error:
                return keys
            if isinstance(key, str):
                keys.append(key)
            elif key in KEYS:
                keys.append(KEYS[key])

    def resize(self) -> None:
        try:
            size = os.get_terminal_size(sys.stdout.fileno())
            curses.resizeterm(size.lines, size.columns)
        except (OSError, curses.error):
            pass


