"""The line interface, and what every interface shares: setup and formatting.

Line mode (stdin is not a terminal, or ``--plain``): each input line is one
message; each received message is one line ``PEER: TEXT`` on stdout (or one
JSON object with ``--json``); everything else goes to stderr. At end of input
it waits, bounded, until every message is settled, and exits 0 if all were
delivered (``--static``: accepted by the relay) or 3 naming those that were not.

The full-screen interface lives in ``screen.py``; both drive the same
:class:`client.ChatClient` and :class:`chat.ChatCore`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from msgrlib.client import core as chat
from msgrlib.client.connection import ChatClient, Status, TlsOptions, load_identity
from msgrlib.errors import MsgrError
from msgrlib.util.safetext import escape

EXIT_OK, EXIT_ERROR, EXIT_UNDELIVERED, EXIT_INTERRUPTED = 0, 1, 3, 130

#: Longest message accepted from the user, in characters. Keeps every sealed
#: frame well under the relay's 64 KiB frame limit.
MAX_TEXT = 16 * 1024

STATIC_WARNING = ("warning: --static mode: the relay (or anyone who records the traffic) "
                  "could test passcode guesses offline; use a long random passcode")


@dataclass
class ChatOptions:
    host: str
    port: int
    user: str
    peer: str
    passcode: str
    tls: TlsOptions | None = None
    ttl: int = 30
    static: bool = False
    json: bool = False
    identity: str | None = None
    wait: float | None = None
    kdf_params: Any = None


def derive_key(options: ChatOptions, progress: TextIO | None = sys.stderr) -> bytes:
    """Argon2id of the passcode for this pair of names, with a progress line."""
    import kdf

    params = options.kdf_params or kdf.DEFAULT_PARAMS
    if progress is not None:
        print(f"msgr: deriving the key from the passcode (Argon2id, "
              f"{params.memory_kib // 1024} MiB)...", file=progress, flush=True)
    key = kdf.derive_passcode_key(options.passcode, options.user, options.peer, params=params)
    options.passcode = ""  # not needed any more; do not keep it around
    return key


def make_client(options: ChatOptions, key: bytes, on_event: Any = None) -> ChatClient:
    core = chat.ChatCore(me=options.user, peer=options.peer, key=key,
                         mode=chat.Mode.STATIC if options.static else chat.Mode.RATCHET,
                         ttl=options.ttl, clock=time.monotonic, wallclock=time.time,
                         rng=os.urandom)
    return ChatClient(core, host=options.host, port=options.port, tls=options.tls,
                      identity=load_identity(options.identity), on_event=on_event)


def describe(event: Any, peer: str) -> tuple[str, str] | None:
    """(stream, text) for a non-message event: stream is "err" or None to hide."""
    if isinstance(event, Status):
        return ("err", event.detail)
    if isinstance(event, chat.Notice):
        return ("err", escape(event.text))
    if isinstance(event, chat.SessionStarted):
        what = "new secure session" if event.replaced else "secure session"
        return ("err", f"{what} with {peer}; safety number {event.safety_number} "
                "(compare it with your peer to rule out a man in the middle)")
    if isinstance(event, chat.Presence):
        return ("err", f"{peer} is {'online' if event.online else 'offline'}")
    if isinstance(event, chat.Undelivered):
        return ("err", f"message #{event.n} was not delivered: {event.reason}")
    return None


def json_line(event: Any, client: ChatClient) -> dict[str, Any] | None:
    """The --json object for an event, or None if it has none."""
    if isinstance(event, chat.Received):
        return {"type": "message", "from": event.sender, "text": event.text,
                "sent_at": event.sent_at, "expires_at": event.expires_at, "ttl": event.ttl,
                "safety_number": client.core.safety_number}
    if isinstance(event, chat.SessionStarted):
        return {"type": "session", "peer": client.core.peer,
                "safety_number": event.safety_number, "session_id": event.session_id,
                "replaced": event.replaced}
    if isinstance(event, chat.Delivered):
        return {"type": "delivered", "n": event.n}
    if isinstance(event, chat.Undelivered):
        return {"type": "undelivered", "n": event.n, "reason": event.reason}
    return None


def run_lines(options: ChatOptions, *, interactive: bool = False) -> int:
    """Run line mode until end of input (or Ctrl-C); return the exit code."""
    if options.static:
        print(f"msgr: {STATIC_WARNING}", file=sys.stderr)
    key = derive_key(options)
    try:
        return asyncio.run(_lines(options, key, interactive))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _lines(options: ChatOptions, key: bytes, interactive: bool) -> int:
    loop = asyncio.get_running_loop()
    out = sys.stdout
    peer = options.peer

    def on_event(event: Any) -> None:
        if isinstance(event, chat.Received) and not options.json:
            print(f"{peer}: {escape(event.text)}", file=out, flush=True)
        elif options.json and (obj := json_line(event, client)) is not None:
            print(json.dumps(obj, ensure_ascii=False), file=out, flush=True)
        if not isinstance(event, chat.Received):
            shown = describe(event, peer)
            if shown is not None:
                print(f"msgr: {shown[1]}", file=sys.stderr, flush=True)

    client = make_client(options, key, on_event)
    eof = asyncio.Event()
    refused: list[int] = []  # input line numbers not sent (they count as not delivered)
    count = 0

    def on_line(line: str) -> None:
        nonlocal count
        if eof.is_set():
            return  # after /quit: what is typed while we wait is not sent
        count += 1
        line = line.rstrip("\r\n")
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
            print(f"msgr: input line {count} not sent: {err}", file=sys.stderr, flush=True)

    def reader() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(on_line, line)
        except (OSError, ValueError, UnicodeDecodeError) as err:
            loop.call_soon_threadsafe(
                print, f"msgr: cannot read input: {err}", file=sys.stderr)
        loop.call_soon_threadsafe(eof.set)

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
        threading.Thread(target=reader, name="msgr-stdin", daemon=True).start()
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
        print(f"msgr: {len(failed)} message(s) not delivered (numbered in the order you "
              f"typed them): {listed}", file=sys.stderr)
    if refused:
        listed = ", ".join(str(n) for n in refused)
        print(f"msgr: {len(refused)} input line(s) not sent: line {listed}", file=sys.stderr)
    if interrupted.is_set():
        return EXIT_INTERRUPTED
    return EXIT_UNDELIVERED if failed or refused else EXIT_OK


#: Line mode on a terminal (--plain): the commands it knows.
LINE_HELP = ("commands: /quit ends the chat (like Ctrl-D), /help shows this; "
             "//text sends /text")


def _line_command(line: str, eof: asyncio.Event) -> None:
    name = line[1:].split(maxsplit=1)[0].lower() if line[1:].strip() else ""
    if name in ("quit", "q", "exit"):
        eof.set()
    elif name in ("help", "h", "?"):
        print(f"msgr: {LINE_HELP}", file=sys.stderr, flush=True)
    else:
        print(f"msgr: unknown command {escape(line[:40])!s}: nothing was sent "
              f"({LINE_HELP})", file=sys.stderr, flush=True)


def run_screen(options: ChatOptions) -> int:
    """The full-screen interface; falls back to lines where curses is missing."""
    try:
        from msgrlib.ui import screen
    except ImportError:
        return run_lines(options, interactive=True)
    return screen.run(options)
