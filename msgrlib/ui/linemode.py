"""The line interface (stdin is not a terminal, or ``--plain``).

Each input line is one message; each received message is one line
``PEER: TEXT`` on stdout (or one JSON object with ``--json``); everything else
goes to stderr. At end of input it waits, bounded, until every message is
settled, and exits 0 if all were delivered (``--static``: accepted by the relay)
or 3 naming those that were not.

Input is read as bytes and decoded here, line by line, as UTF-8: what happens
does not depend on the locale. A line that is not UTF-8 is named on stderr and
not sent; the lines around it go (exit code 3).

Output leaves only through :func:`safetext.write_line` (text) and
:func:`safetext.json_line` (``--json``): nothing a peer or a relay chose reaches
the terminal unescaped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from msgrlib.client import events
from msgrlib.client.connection import ChatClient
from msgrlib.client.events import Status
from msgrlib.errors import MsgrError
from msgrlib.ui.options import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNDELIVERED,
    MAX_TEXT,
    STATIC_WARNING,
    ChatOptions,
    derive_key,
    make_client,
)
from msgrlib.util.safetext import json_line as dumps_line
from msgrlib.util.safetext import write_line


def describe(event: Any, peer: str) -> str | None:
    """The stderr sentence for a non-message event, or None to say nothing.
    Not yet escaped: :func:`notice` does that on the way out."""
    if isinstance(event, Status):
        return event.detail
    if isinstance(event, events.Notice):
        return event.text
    if isinstance(event, events.SessionStarted):
        what = "new secure session" if event.replaced else "secure session"
        return (f"{what} with {peer}; safety number {event.safety_number} "
                "(compare it with your peer to rule out a man in the middle)")
    if isinstance(event, events.Presence):
        return f"{peer} is {'online' if event.online else 'offline'}"
    if isinstance(event, events.Undelivered):
        return f"message #{event.n} was not delivered: {event.reason}"
    return None


def json_line(event: Any, client: ChatClient) -> dict[str, Any] | None:
    """The --json object for an event, or None if it has none."""
    if isinstance(event, events.Received):
        return {"type": "message", "from": event.sender, "text": event.text,
                "sent_at": event.sent_at, "expires_at": event.expires_at, "ttl": event.ttl,
                "safety_number": client.core.safety_number,
                # written before a message already shown (the core says so on stderr too)
                "late": event.late}
    if isinstance(event, events.SessionStarted):
        return {"type": "session", "peer": client.core.peer,
                "safety_number": event.safety_number, "session_id": event.session_id,
                "replaced": event.replaced}
    if isinstance(event, events.Delivered):
        return {"type": "delivered", "n": event.n}
    if isinstance(event, events.Undelivered):
        return {"type": "undelivered", "n": event.n, "reason": event.reason}
    return None


def notice(text: str, stream: TextIO | None = None) -> None:
    """One ``msgr: ...`` line on stderr, escaped."""
    write_line(stream or sys.stderr, f"msgr: {text}")


class Output:
    """Where line mode's events go: messages on ``out`` (text or JSON lines),
    everything else on ``err`` as notices. The only writer line mode has."""

    def __init__(self, *, peer: str, json: bool, out: TextIO, err: TextIO) -> None:
        self.peer = peer
        self.json = json
        self.out = out
        self.err = err

    def event(self, event: Any, client: ChatClient) -> None:
        if isinstance(event, events.Received) and not self.json:
            write_line(self.out, f"{self.peer}: {event.text}")
        elif self.json and (obj := json_line(event, client)) is not None:
            self.out.write(dumps_line(obj) + "\n")
            self.out.flush()
        if not isinstance(event, events.Received):
            shown = describe(event, self.peer)
            if shown is not None:
                notice(shown, self.err)


#: Longest input line kept, in bytes: a line longer than this has more than
#: MAX_TEXT characters (UTF-8 takes at most 4 bytes each), so it would be refused
#: anyway; the rest of it is skipped instead of buffered.
MAX_LINE_BYTES = 4 * MAX_TEXT + 2


class LineSplitter:
    """Bytes in, complete lines out (sans-I/O). A line over ``max_bytes`` comes
    out as None (its bytes are dropped as they arrive)."""

    def __init__(self, *, max_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._overlong = False

    def feed(self, data: bytes) -> list[bytes | None]:
        lines: list[bytes | None] = []
        while data:
            end = data.find(b"\n")
            part, data = (data, b"") if end < 0 else (data[:end + 1], data[end + 1:])
            if not self._overlong:
                self._buffer += part
                if len(self._buffer) > self.max_bytes:
                    self._overlong = True
                    self._buffer.clear()
            if end >= 0:
                lines.append(None if self._overlong else bytes(self._buffer))
                self._buffer.clear()
                self._overlong = False
        return lines

    def feed_eof(self) -> list[bytes | None]:
        """The last line, if input did not end with a line break."""
        if self._overlong:
            return [None]
        return [bytes(self._buffer)] if self._buffer else []


def decode_line(raw: bytes) -> str:
    """One input line (bytes, with or without its line break) as text.
    Raises :class:`UnicodeDecodeError` if it is not UTF-8."""
    return raw.decode("utf-8").rstrip("\r\n")


def line_text(raw: bytes | None) -> str:
    """An input line from :func:`start_reader` as text, or :class:`MsgrError`
    saying why it cannot be sent (too long to have been kept, not UTF-8)."""
    if raw is None:
        raise MsgrError(f"it is longer than {MAX_LINE_BYTES:,} bytes")
    try:
        return decode_line(raw)
    except UnicodeDecodeError as err:
        raise MsgrError(f"it is not UTF-8 text (byte {err.start + 1} is "
                        f"0x{raw[err.start]:02x})") from None


def start_reader(loop: asyncio.AbstractEventLoop, on_line: Callable[[bytes | None], Any],
                 on_error: Callable[[OSError], Any], on_eof: Callable[[], Any]) -> None:
    """Read stdin as bytes in a daemon thread and call back on ``loop``: ``on_line``
    per line (None for one too long to keep), ``on_error`` if reading fails, then
    ``on_eof``. os.read, not sys.stdin: no locale decoding, and no lock of
    Python's buffered reader held while blocked (a daemon thread holding it
    aborts the interpreter at exit)."""
    fd = sys.stdin.fileno()

    def reader() -> None:
        splitter = LineSplitter()
        try:
            while data := os.read(fd, 65536):
                for raw in splitter.feed(data):
                    loop.call_soon_threadsafe(on_line, raw)
            for raw in splitter.feed_eof():
                loop.call_soon_threadsafe(on_line, raw)
        except OSError as err:
            loop.call_soon_threadsafe(on_error, err)
        loop.call_soon_threadsafe(on_eof)

    threading.Thread(target=reader, name="msgr-stdin", daemon=True).start()


def run_lines(options: ChatOptions, *, interactive: bool = False) -> int:
    """Run line mode until end of input (or Ctrl-C); return the exit code."""
    if options.static:
        notice(STATIC_WARNING)
    for warning in options.warnings:
        notice(warning)
    key = derive_key(options)
    try:
        return asyncio.run(_lines(options, key, interactive))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _lines(options: ChatOptions, key: bytes, interactive: bool) -> int:
    loop = asyncio.get_running_loop()
    output = Output(peer=options.peer, json=options.json, out=sys.stdout, err=sys.stderr)

    def on_event(event: Any) -> None:
        output.event(event, client)

    client = make_client(options, key, on_event)
    eof = asyncio.Event()
    refused: list[int] = []  # input line numbers not sent (they count as not delivered)
    count = 0

    def on_line(raw: bytes | None) -> None:
        nonlocal count
        if eof.is_set():
            return  # after /quit: what is typed while we wait is not sent
        count += 1
        try:
            line = line_text(raw)
        except MsgrError as err:
            refused.append(count)
            notice(f"input line {count} not sent: {err}")
            return
        if not line:
            return
        if interactive and line.startswith("/"):
            if not line.startswith("//"):
                _line_command(line, eof)  # as in the full screen: never sent
                return
            line = line[1:]
        try:
            if len(line) > MAX_TEXT:
                raise MsgrError(f"it is {len(line):,} characters, more than {MAX_TEXT:,}")
            client.send(line)
        except MsgrError as err:
            refused.append(count)
            notice(f"input line {count} not sent: {err}")

    read_failed = False

    def cannot_read(err: OSError) -> None:
        nonlocal read_failed
        read_failed = True
        notice(f"cannot read input: {err.strerror or err}")


    # Ctrl-C or SIGTERM: say bye (so the name is free at once) and name the
    # messages whose fate is open, instead of a bare exit.
    interrupted = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, interrupted.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or not supported here: default handling
    stop = loop.create_task(interrupted.wait())
    running = loop.create_task(client.run())
    ready = loop.create_task(client.wait_connected())
    await asyncio.wait({running, ready, stop}, return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        ready.cancel()
        stop.cancel()
        running.result()  # raises the reason we could not connect
    if not interrupted.is_set():
        start_reader(loop, on_line, cannot_read, eof.set)
        ending = loop.create_task(eof.wait())
        await asyncio.wait({running, ending, stop}, return_when=asyncio.FIRST_COMPLETED)
        ending.cancel()
    if running.done():
        stop.cancel()
        running.result()
        return EXIT_ERROR
    core = client.core
    if interrupted.is_set():
        core.give_up("interrupted before it was confirmed")
    else:
        # End of input: wait, bounded, for every message to be settled.
        wait = options.wait if options.wait is not None else options.ttl + 5.0
        deadline = loop.time() + wait
        while (core.unsettled() and loop.time() < deadline and not running.done()
               and not interrupted.is_set()):
            await asyncio.sleep(0.05)
        if core.unsettled():
            core.give_up("interrupted before it was confirmed" if interrupted.is_set() else
                         f"not confirmed within {wait:g} s of the end of input")
        else:
            # Our messages are settled, but receipts we owe for lines just printed
            # may still wait to go out (paced under the relay's rates): saying bye
            # before them would have the peer report a shown message as not delivered.
            while (not core.quiet() and core.connected and loop.time() < deadline
                   and not running.done() and not interrupted.is_set()):
                await asyncio.sleep(0.05)
    stop.cancel()
    client._flush_events()
    client.close()
    try:
        await asyncio.wait_for(running, 5)
    except (asyncio.TimeoutError, MsgrError):
        pass
    failed = core.failed()
    if failed:
        # Numbers only: stderr may be a file, and message text never goes to disk.
        listed = ", ".join(f"#{n}" for n in failed)
        notice(f"{len(failed)} message(s) not delivered (numbered in the order you "
               f"typed them): {listed}")
    if refused:
        listed = ", ".join(str(n) for n in refused)
        notice(f"{len(refused)} input line(s) not sent: line {listed}")
    if interrupted.is_set():
        return EXIT_INTERRUPTED
    if read_failed:
        return EXIT_ERROR
    return EXIT_UNDELIVERED if failed or refused else EXIT_OK


#: Line mode on a terminal (--plain): the commands it knows.
LINE_HELP = ("commands: /quit ends the chat (like Ctrl-D), /help shows this; "
             "//text sends /text")


def _line_command(line: str, eof: asyncio.Event) -> None:
    name = line[1:].split(maxsplit=1)[0].lower() if line[1:].strip() else ""
    if name in ("quit", "q", "exit"):
        eof.set()
    elif name in ("help", "h", "?"):
        notice(LINE_HELP)
    else:
        notice(f"unknown command {line[:40]}: nothing was sent ({LINE_HELP})")
