"""Invite codes on the command line: ``chat --invite`` / ``chat --join``, ``send``, ``receive``.

Each command meets the other side through a relay nameplate (``client/invite.py``), runs
the default mode's handshake with the code's secret and, for ``send`` / ``receive``, one
transfer (``msgrlib.transfer``) through the ratchet session. What reaches the terminal
from the other side (names, types, reasons, chat text) is escaped.

The relay is ``--server``, else ``MSGR_SERVER``, else ``server = ...`` in the config file
(:func:`config_path`); its certificate is pinned per address as for ``chat``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from msgrlib.errors import MsgrError, UsageError
from msgrlib.limits import TTL_MAX, TTL_MIN, ttl_in_range
from msgrlib.ui.transfer_args import (  # noqa: F401 (re-exported)
    add_commands,
    add_pair_options,
    add_relay_options,
)
from msgrlib.util.exitcodes import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNDELIVERED
from msgrlib.util.safetext import escape, json_line, write_line

#: Keys the config file may set (one ``key = value`` per line, ``#`` comments).
CONFIG_KEYS = ("server",)
#: Seconds to wait, at the end, for our last frames (``xfer.done``...) to reach the relay.
FLUSH_WAIT = 5.0
#: Progress lines per second on a terminal.
PROGRESS_RATE = 4.0
#: ``--json`` progress events per second, at most (the first is printed at once).
JSON_PROGRESS_RATE = 10.0
#: Per-recipient mailbox bytes assumed at a relay whose ``welcome`` does not declare them
#: (msgr's default).
MAILBOX_BYTES = 4 * 1024 * 1024
#: What a secret read from stdin may hold (the receiver's default limit).
MAX_SECRET = 64 * 1024


# -- where the relay is ------------------------------------------------------------------

def config_path() -> str:
    """``$XDG_CONFIG_HOME/msgr/config``, by default ``~/.config/msgr/config``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".config")
    return os.path.join(base, "msgr", "config")


def read_config(path: str | None = None) -> dict[str, str]:
    """The config file's settings; {} if it does not exist. Raises UsageError for a line
    that is not ``key = value`` with a known key."""
    path = path or config_path()
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read {path}: {err}") from None
    out: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or key not in CONFIG_KEYS or not value.strip():
            raise UsageError(f"{path} line {number}: expected 'key = value' with a key of "
                             f"{', '.join(CONFIG_KEYS)}")
        out[key] = value.strip()
    return out


def server_text(given: str | None) -> str:
    """The relay: ``--server``, else MSGR_SERVER, else the config file's ``server``."""
    text = given or os.environ.get("MSGR_SERVER") or read_config().get("server")
    if not text:
        raise UsageError("no relay given: use --server HOST:PORT (msgrs://HOST:PORT for "
                         f"TLS), set MSGR_SERVER, or write 'server = HOST:PORT' in "
                         f"{config_path()}")
    return text


def relay_target(args: argparse.Namespace) -> tuple[str, int, Any]:
    """(host, port, TlsOptions or None) from the options, MSGR_SERVER or the config file."""
    from msgrlib.client.connection import ClientError, TlsOptions, parse_server
    from msgrlib.tls import x509

    text = server_text(args.server)
    try:
        address = parse_server(text)
    except ClientError as err:
        raise UsageError(str(err)) from None
    cafile, pin = args.cafile, args.pin
    tls = bool(args.tls or address.tls)
    if address.tls is False and args.tls:
        raise UsageError(f"{text} names a relay without TLS, but --tls is given")
    if (cafile or pin) and not tls:
        raise UsageError("--cafile and --pin only make sense with TLS")
    if cafile and pin:
        raise UsageError("use either --cafile or --pin, not both")
    if pin:
        pin = x509.normalize_fingerprint(pin)
    options = TlsOptions(cafile=cafile, pin=pin, known_hosts=args.known_hosts) if tls else None
    return address.host, address.port, options


def read_pair(args: argparse.Namespace) -> tuple[str, str, str] | None:
    """``(user, peer, passcode)`` for a named pair, or None for an invite."""
    from msgrlib.util.names import check_name

    if args.peer is None:
        if args.user or args.passcode_file or args.identity:
            raise UsageError("--user, --passcode-file and --identity go with --to / --from")
        return None
    if not args.user:
        raise UsageError("a named pair needs --user (your name) too")
    try:
        check_name(args.user, what="--user")
        check_name(args.peer, what="the peer's name")
    except MsgrError as err:
        raise UsageError(str(err)) from None
    if args.user == args.peer:
        raise UsageError("your name and the peer's are the same")
    if args.passcode_file:
        try:
            with open(args.passcode_file, encoding="utf-8") as f:
                passcode = f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as err:
            raise MsgrError(f"cannot read --passcode-file: {err}") from None
    elif os.environ.get("MSGR_PASSCODE"):
        passcode = os.environ.pop("MSGR_PASSCODE")  # nothing we start inherits it
    else:
        import getpass
        try:
            passcode = getpass.getpass("passcode: ")
        except (EOFError, OSError):
            passcode = ""
    if not passcode:
        raise MsgrError("no passcode: set MSGR_PASSCODE, use --passcode-file, or type it")
    return args.user, args.peer, passcode


# -- the code ----------------------------------------------------------------------------

def read_code(given: str | None, *, stdin: Any = None, err: Any = None) -> Any:
    """The invite code: from the argument (with a note), else a prompt (tab completion on a
    terminal), else one line of stdin. Raises UsageError for a bad code."""
    from msgrlib.invite import InviteCodeError, parse_code

    stdin = stdin or sys.stdin
    err = err or sys.stderr
    if given:
        text = given
    elif stdin.isatty():
        text = _prompt_code()
    else:
        text = _read_code_line(stdin)
        if not text:
            raise UsageError("no invite code: type it at the prompt, or give it on stdin")
    try:
        code = parse_code(text)
    except InviteCodeError as error:
        raise UsageError(f"bad invite code: {error}") from None
    if given:  # a bad code gets its one error line, not this note first
        print("msgr: note: a code on the command line is visible to other local users; it "
              "works only once", file=err, flush=True)
    return code


def _read_code_line(stdin: Any) -> str:
    """One line of stdin, read byte by byte from its descriptor when it has one: nothing
    after the code is buffered away from what reads stdin next (chat's lines, which are read
    as bytes), and the locale's decoding plays no part."""
    from msgrlib.invite.code import MAX_CODE_LENGTH

    try:
        fd = stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return str(stdin.readline()).strip()
    raw = bytearray()
    while len(raw) <= MAX_CODE_LENGTH + 2 and (byte := os.read(fd, 1)) and byte != b"\n":
        raw += byte
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UsageError("bad invite code: it is not UTF-8 text") from None


def _prompt_code() -> str:
    from msgrlib.invite import complete

    try:
        import readline
    except ImportError:  # no readline here: a plain prompt
        readline = None  # type: ignore[assignment]
    if readline is not None:
        matches: list[str] = []

        def completer(text: str, state: int) -> str | None:
            nonlocal matches
            if state == 0:
                matches = complete(readline.get_line_buffer())
            return matches[state] if state < len(matches) else None

        readline.set_completer_delims(" \t\n")
        readline.set_completer(completer)
        readline.parse_and_bind("tab: complete")
    try:
        return input("Invite code (tab completes the words): ").strip()
    except EOFError:
        raise UsageError("no invite code was typed") from None
    finally:
        if readline is not None:
            readline.set_completer(None)


# -- one invite session -----------------------------------------------------------------------

def _make_client(target: tuple[str, int, Any], code: Any, on_event: Callable[[Any], None], *,
                 transfers: Any = None, ttl: int = 30) -> Any:
    from msgrlib.client.connection import ChatClient

    host, port, tls = target
    return ChatClient.for_invite(code, host=host, port=port, tls=tls, on_event=on_event,
                                 transfers=transfers, ttl=ttl)


def _client_for(target: tuple[str, int, Any], pair: tuple[str, str, str] | None, code: Any,
                on_event: Callable[[Any], None], *, transfers: Any,
                identity: str | None = None) -> Any:
    """An invite's client, or with ``pair`` a named pair's (the passcode's Argon2id key,
    the name's kept identity), as ``chat`` makes it."""
    if pair is None:
        return _make_client(target, code, on_event, transfers=transfers)
    import kdf
    from msgrlib.client.connection import ChatClient, load_identity
    from msgrlib.client.core import ChatCore

    user, peer, passcode = pair
    _say("deriving the key from the passcode (Argon2id)...")
    key = kdf.derive_passcode_key(passcode, user, peer, params=kdf.DEFAULT_PARAMS)
    host, port, tls = target
    core = ChatCore(me=user, peer=peer, key=key, clock=time.monotonic, wallclock=time.time,
                    rng=os.urandom, transfers=transfers)
    return ChatClient(core, host=host, port=port, tls=tls,
                      identity=load_identity(identity),
                      on_event=on_event)


def _say(text: str) -> None:
    # Through the one sanitizer, whatever the caller escaped already (escape
    # is idempotent): a reason or path a peer or relay chose never leaves raw.
    write_line(sys.stderr, f"msgr: {text}")


def _common_event(event: Any, command: str, as_json: bool = False) -> int | None:
    """Print what every invite command prints; an exit code if the event ends the run.
    With ``as_json``, the code is also one JSON line on stdout (for scripts)."""
    from msgrlib.client.events import Notice, SessionStarted, Status
    from msgrlib.client.invite import InviteReady, PeerJoined

    if isinstance(event, InviteReady):
        if as_json:
            print(json.dumps({"event": "code", "code": event.code, "ttl": event.ttl}),
                  flush=True)
        how = {"chat": "msgr chat --join", "send": "msgr receive"}[command]
        _say(f"your invite code is  {event.code}")
        _say(f"on the other side run  {how}  and type the code (it works once, for "
             f"{event.ttl:g} s)")
    elif isinstance(event, PeerJoined):
        _say("the other side is here; starting the secure session")
    elif isinstance(event, SessionStarted):
        _say(f"secure session up; safety number {event.safety_number} (compare it with the "
             "other side to rule out a man in the middle)")
    elif isinstance(event, Notice):
        _say(escape(event.text))
        if event.code in ("invite_burned", "passcode_mismatch"):
            return EXIT_ERROR
    elif isinstance(event, Status) and event.state in ("disconnected", "reconnecting", "trust"):
        _say(event.detail)
    return None


async def _drive(client: Any, finished: asyncio.Future[int]) -> int:
    """Run ``client`` until ``finished`` has an exit code, the run fails or Ctrl-C."""
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    # SIGHUP too: a closed terminal window must not kill a receiver outright, which
    # would leave its partial temporary file on disk and the other side uninformed.
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)):
        try:
            loop.add_signal_handler(sig, interrupted.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    stop = loop.create_task(interrupted.wait())
    running = loop.create_task(client.run())
    core = client.core
    try:
        await asyncio.wait({running, finished, stop}, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()  # raises why it could not go on
            return EXIT_ERROR
        code = EXIT_INTERRUPTED if interrupted.is_set() else finished.result()
        # A transfer still running is cancelled (the other side is told, a receiver
        # keeps nothing); our last frames (xfer.done, a decline...) reach the relay.
        core.cancel_transfers("the other side stopped")
        client.poke()
        end = loop.time() + (1.0 if interrupted.is_set() else FLUSH_WAIT)
        while not core.quiet() and loop.time() < end and not running.done():
            await asyncio.sleep(0.02)
        return code
    finally:
        stop.cancel()
        core.cancel_transfers("the other side stopped")
        client.close()
        try:
            await asyncio.wait_for(running, 5)
        except (asyncio.TimeoutError, MsgrError):
            pass


def _finish(finished: asyncio.Future[int], code: int) -> None:
    if not finished.done():
        finished.set_result(code)


# -- send ---------------------------------------------------------------------------------

def run_send(args: argparse.Namespace) -> int:
    import functools

    import framing
    from msgrlib.transfer import files
    from msgrlib.transfer.messages import chunk_size_for, new_transfer_id
    from msgrlib.transfer.names import check_file_name

    target = relay_target(args)
    pair = read_pair(args)
    tid = new_transfer_id(os.urandom)
    chunk = chunk_size_for(framing.DEFAULT_MAX_FRAME, name_length=18)
    prepared: Any  # files.Prepared, or a function that makes one
    if args.path == "-":
        data = sys.stdin.buffer.read(MAX_SECRET + 1)
        if len(data) > MAX_SECRET:
            raise UsageError(f"a secret is at most {MAX_SECRET // 1024} KiB; send it as a file")
        if not data:
            raise UsageError("nothing to send: stdin was empty")
        prepared = files.prepare_secret(data, tid, chunk=chunk)
        del data
    else:
        try:
            if os.path.isdir(args.path):
                prepared = files.prepare_directory(args.path, tid, chunk=chunk)
            else:
                # A plain file: its name and that it opens are checked now; hashing it
                # (a second per 100 MiB here) overlaps connecting and the handshake
                # rather than delaying the code, and the first byte, by that much.
                check_file_name(os.path.basename(os.path.abspath(args.path)))
                with open(args.path, "rb"):
                    pass
                prepared = functools.partial(files.prepare_file, args.path, tid, chunk=chunk)
        except OSError as err:
            raise MsgrError(f"cannot read {escape(args.path)}: {err.strerror or err}") from None
        for skipped in getattr(prepared, "skipped", ()):
            _say(f"left out (not a plain file or directory): {escape(skipped)}")
    try:
        return asyncio.run(_send(args, target, prepared, pair))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _send(args: argparse.Namespace, target: Any, prepared: Any,
                pair: tuple[str, str, str] | None = None) -> int:
    import dataclasses

    from msgrlib.client.events import SessionStarted, TransferEvent
    from msgrlib.transfer import Transfers
    from msgrlib.transfer.messages import chunk_size_for_relay

    loop = asyncio.get_running_loop()
    finished: asyncio.Future[int] = loop.create_future()
    # ``prepared`` is ready, or (a plain file) a function that hashes it: in a thread.
    ready: asyncio.Future[Any]
    if callable(prepared):
        ready = loop.run_in_executor(None, prepared)
    else:
        ready = loop.create_future()
        ready.set_result(prepared)
    state: dict[str, Any] = {}

    async def offer_when_ready() -> None:
        try:
            done = await ready
        except OSError as err:
            _say(f"cannot read {escape(args.path)}: {err.strerror or err}")
            _finish(finished, EXIT_ERROR)
            return
        except MsgrError as err:
            _say(str(err))
            _finish(finished, EXIT_ERROR)
            return
        offer = done.offer
        state["show"] = _Progress(offer.size, args.json)
        # The largest chunk this relay's frames carry (its welcome said max_frame).
        sent = dataclasses.replace(offer, chunk=chunk_size_for_relay(client.limits))
        client.core.send_transfer(sent, done.source)
        client.poke()
        what = "a secret" if offer.kind == "secret" else escape(offer.name)
        _say(f"offering {what} ({_size(offer.size)}); waiting for the other side to "
             "accept")

    def on_event(event: Any) -> None:
        code = _common_event(event, "send", args.json)
        if code is not None:
            _finish(finished, code)
        if isinstance(event, SessionStarted) and "offering" not in state:
            state["offering"] = loop.create_task(offer_when_ready())
        elif isinstance(event, TransferEvent) and "show" in state:
            code = state["show"].event(event)
            if code is not None:
                _finish(finished, code)

    client = _client_for(target, pair, None, on_event, transfers=Transfers(),
                         identity=args.identity)
    if pair is not None:
        del pair
        _say(f"waiting for {client.core.peer} (msgr receive --from {client.core.me})")
    try:
        return await _drive(client, finished)
    finally:
        offering = state.get("offering")
        if offering is not None and not offering.done():
            offering.cancel()
        if ready.done() and not ready.cancelled() and ready.exception() is None:
            close = getattr(ready.result().source, "close", None)  # a secret's has none
            if close is not None:
                close()


# -- receive ------------------------------------------------------------------------------

def run_receive(args: argparse.Namespace) -> int:
    target = relay_target(args)
    if not os.path.isdir(args.dir):
        raise UsageError(f"--dir {escape(args.dir)} is not a directory")
    pair = read_pair(args)
    if pair is not None and args.code:
        raise UsageError("give either an invite code or --from, not both")
    code = read_code(args.code) if pair is None else None
    try:
        return asyncio.run(_receive(args, target, code, pair))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _receive(args: argparse.Namespace, target: Any, code: Any,
                   pair: tuple[str, str, str] | None = None) -> int:
    from msgrlib.client.events import TransferEvent
    from msgrlib.transfer import Offered, Transfers

    loop = asyncio.get_running_loop()
    finished: asyncio.Future[int] = loop.create_future()
    transfers = Transfers()
    state: dict[str, Any] = {}

    def on_event(event: Any) -> None:
        code = _common_event(event, "receive")
        if code is not None:
            _finish(finished, code)
        if isinstance(event, TransferEvent) and isinstance(event.event, Offered):
            if "receiver" in state:  # one transfer per receive
                event.event.receiver.decline("this receiver takes one transfer")
                client.core.transfer_answered(event.transfer_id)
                return
            state["receiver"] = event.event.receiver
            state["task"] = loop.create_task(_answer(args, client, event.transfer_id,
                                                     event.event.receiver, state, finished))
        elif isinstance(event, TransferEvent) and "show" in state:
            code = state["show"].event(event)
            if code is not None:
                if code == EXIT_OK:
                    _received(state)
                _finish(finished, code)

    client = _client_for(target, pair, code, on_event, transfers=transfers,
                         identity=args.identity)
    del pair
    try:
        return await _drive(client, finished)
    finally:
        receiver = state.get("receiver")
        if receiver is not None and not receiver.is_finished():
            receiver.cancel("the receiver stopped")  # discards what was written
        sink = state.get("sink")
        if sink is not None and not getattr(sink, "committed", False):
            sink.discard()


async def _answer(args: argparse.Namespace, client: Any, tid: str, receiver: Any,
                  state: dict[str, Any], finished: asyncio.Future[int]) -> None:
    """Show the offer; ask; accept into a sink, or decline."""
    from msgrlib.transfer import TargetExists
    from msgrlib.transfer.files import DirectorySink, FileSink, MemorySink
    from msgrlib.transfer.messages import fit_window, mailbox_bytes_of

    offer = receiver.offer
    core = client.core
    if offer.kind == "secret":
        what = f"a secret ({_size(offer.size)})"
    else:
        what = f"a {offer.kind} named '{escape(offer.name)}' ({_size(offer.size)}, " \
               f"{escape(offer.mime)})"
    _say(f"the other side offers {what}")
    if receiver.problem:
        receiver.decline(receiver.problem)
        core.transfer_answered(tid)
        client.poke()
        _say(f"refused: {escape(receiver.problem)}")
        _finish(finished, EXIT_ERROR)
        return
    target = "" if offer.kind == "secret" else f" into {escape(os.path.abspath(args.dir))}"
    yes = await _ask(f"accept it{target}? [y/N] ")
    overwrite = False
    sink: Any = None
    while yes and sink is None:
        try:
            if offer.kind == "secret":
                sink = MemorySink(max_size=offer.size)
            elif offer.kind == "directory":
                sink = DirectorySink(args.dir, offer.name, size=offer.size)
            else:
                sink = FileSink(args.dir, offer.name, size=offer.size, overwrite=overwrite)
        except TargetExists as err:
            if offer.kind == "directory" or overwrite:
                _say(f"{escape(err.path)} already exists; a directory is never replaced")
                yes = False
            else:
                yes = overwrite = await _ask(f"{escape(err.path)} exists; replace it? [y/N] ")
        except MsgrError as err:
            _say(str(err))
            yes = False
    if receiver.is_finished():  # the sender gave up while we asked
        if sink is not None:
            sink.discard()
        return
    if not yes:
        receiver.decline("the receiver declined")
        core.transfer_answered(tid)
        client.poke()
        _say("declined; nothing was written")
        _finish(finished, EXIT_ERROR)
        return
    state["sink"] = sink
    state["show"] = _Progress(offer.size, args.json)
    limits = client.limits
    messages = limits.get("mailbox_messages") if isinstance(limits, dict) else None
    window = fit_window(offer.chunk, mailbox_bytes=mailbox_bytes_of(limits, MAILBOX_BYTES),
                        mailbox_messages=messages if isinstance(messages, int) else 1000)
    receiver.accept(sink, time.monotonic(), window=window)
    core.transfer_answered(tid)
    client.poke()


def _received(state: dict[str, Any]) -> None:
    receiver, sink = state["receiver"], state["sink"]
    if receiver.offer.kind == "secret":
        data = sink.take()
        if state["show"].json:  # one more JSON line, not raw bytes among them
            try:
                shown: dict[str, str] = {"text": data.decode("utf-8")}
            except UnicodeDecodeError:
                shown = {"base64": base64.b64encode(data).decode()}
            print(json.dumps({"event": "secret", **shown}), flush=True)
        elif sys.stdout.isatty():
            # Escaped line by line: a multi-line secret keeps its lines.
            text = data.decode("utf-8", "replace")
            print("\n".join(escape(line) for line in text.split("\n")), flush=True)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
    else:
        _say(f"received {escape(sink.path)} ({_size(receiver.offer.size)}); its SHA-256 "
             "matched")


def _settle(future: asyncio.Future[str], value: str) -> None:
    if not future.done():
        future.set_result(value)


async def _ask(question: str) -> bool:
    """A yes/no question on stderr, answered on stdin (no answer: no). A daemon thread
    reads, so a program that ends meanwhile does not wait for a line."""
    import threading

    loop = asyncio.get_running_loop()
    reply: asyncio.Future[str] = loop.create_future()

    def ask() -> None:
        print(question, end="", file=sys.stderr, flush=True)
        try:
            line = sys.stdin.readline()
        except (OSError, ValueError, UnicodeDecodeError):
            line = ""
        loop.call_soon_threadsafe(_settle, reply, line)

    threading.Thread(target=ask, name="msgr-ask", daemon=True).start()
    answer = await reply
    if not answer:
        print(file=sys.stderr)
    return answer.strip().lower() in ("y", "yes")


def _size(n: int) -> str:
    from msgrlib.transfer.progress import format_bytes

    return f"{n:,} bytes" if n < 1024 else f"{format_bytes(n)}, {n:,} bytes"


class _Progress:
    """Progress on stderr (a terminal only), or JSON lines; the exit code at the end."""

    def __init__(self, total: int, as_json: bool) -> None:
        from msgrlib.transfer.progress import ProgressMeter

        self.meter = ProgressMeter(total, time.monotonic())
        self.json = as_json
        self.tty = sys.stderr.isatty()
        self.shown_at = 0.0
        self.json_at: float | None = None
        self.started = time.monotonic()

    def event(self, news: Any) -> int | None:
        from msgrlib.transfer.machine import Accepted, Completed, Declined, Failed, Progress
        from msgrlib.transfer.progress import event_json, format_bytes

        event, now = news.event, time.monotonic()
        if isinstance(event, Accepted):
            self.started = now  # the rate counts from the answer, not the waiting
        if isinstance(event, Progress):
            self.meter.update(event.done_bytes, now)
        # JSON progress: the first, then at most JSON_PROGRESS_RATE a second (one per
        # chunk cost the receiver a tenth of its time); the last is "completed".
        quiet = (isinstance(event, Progress) and self.json_at is not None
                 and now - self.json_at < 1 / JSON_PROGRESS_RATE)
        if self.json and not hasattr(event, "receiver") and not quiet:
            if isinstance(event, Progress):
                self.json_at = now
            # Seconds since the epoch, as chat's --json lines: a script cannot use
            # the monotonic clock the meter runs on.
            print(json.dumps(event_json(event, news.transfer_id, time.time(), self.meter)),
                  flush=True)
        if isinstance(event, Progress) and self.tty and now - self.shown_at >= 1 / PROGRESS_RATE:
            self.shown_at = now
            print(f"\r{self.meter.line()}\x1b[K", end="", file=sys.stderr, flush=True)
        if isinstance(event, Completed):
            spent = max(now - self.started, 1e-6)
            if self.tty:
                print("\r\x1b[K", end="", file=sys.stderr)
            took = f"{spent:.2f} s" if spent < 10 else f"{spent:.1f} s"
            # A rate over a few milliseconds says nothing (a tiny file showed
            # "0.00 MB/s"): shown only for transfers that took a while.
            rate = (f" ({self.meter.total / spent / 1e6:.1f} MB/s)"
                    if spent >= 0.2 and self.meter.total >= 1e6 else "")
            _say(f"done: {format_bytes(self.meter.total)} in {took}{rate}")
            return EXIT_OK
        if isinstance(event, Declined):
            _say(f"the other side declined: {escape(event.reason)}")
            return EXIT_ERROR
        if isinstance(event, Failed):
            if self.tty:
                print(file=sys.stderr)
            who = "the other side reports" if event.by_peer else "failed"
            _say(f"transfer {who}: {escape(event.reason)} ({escape(event.code)}); nothing "
                 "partial was kept")
            return EXIT_ERROR
        return None


# -- chat --invite / --join -----------------------------------------------------------------

def run_invite_chat(args: argparse.Namespace) -> int:
    """``msgr chat --invite`` or ``--join [CODE]``: the full screen on a terminal (unless
    --plain or --json), else line mode."""
    if args.invite and args.join is not None:
        raise UsageError("use either --invite or --join, not both")
    if args.static:
        raise UsageError("invites use the default mode, not --static")
    given = [flag for flag, attr in (("--user", "user"), ("--peer", "peer"),
                                     ("--passcode-file", "passcode_file"),
                                     ("--passcode", "passcode"), ("--identity", "identity"))
             if getattr(args, attr, None)]
    if given:
        # Taken silently, they would be ignored: an invite has no names and no passcode.
        raise UsageError(f"an invite uses no names and no passcode: drop {', '.join(given)} "
                         "(or drop --invite/--join to chat as a named pair)")
    if not ttl_in_range(args.ttl):
        raise UsageError(f"--ttl {args.ttl} is out of range: use {TTL_MIN} to {TTL_MAX} "
                         "seconds")
    target = relay_target(args)
    code = read_code(args.join) if args.join is not None else None
    if sys.stdin.isatty() and sys.stdout.isatty() and not (args.plain or args.json):
        try:
            from msgrlib.ui import app
        except ImportError:  # no curses here: line mode
            pass
        else:
            from msgrlib.ui.options import ChatOptions
            host, port, tls = target
            return app.run(ChatOptions(host=host, port=port, user="", peer="", passcode="",
                                       tls=tls, ttl=args.ttl, invite=True, invite_code=code))
    try:
        return asyncio.run(_invite_chat(args, target, code))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _invite_chat(args: argparse.Namespace, target: Any, code: Any) -> int:
    from msgrlib.client.events import Received, SessionStarted, Undelivered
    from msgrlib.ui.linemode import line_text, start_reader

    loop = asyncio.get_running_loop()
    finished: asyncio.Future[int] = loop.create_future()
    up = asyncio.Event()

    def on_event(event: Any) -> None:
        result = _common_event(event, "chat", args.json)
        if result is not None:
            _finish(finished, result)
        if isinstance(event, SessionStarted):
            up.set()
        elif isinstance(event, Received):
            # The one sanitizer, as in line mode: \u escapes in JSON, visible escapes else.
            if args.json:
                print(json_line({"type": "message", "text": event.text,
                                 "sent_at": event.sent_at}), flush=True)
            else:
                write_line(sys.stdout, f"peer: {event.text}")
        elif isinstance(event, Undelivered):
            _say(f"message #{event.n} was not delivered: {escape(event.reason)}")

    client = _make_client(target, code, on_event, ttl=args.ttl)

    async def chat() -> None:
        await up.wait()
        _say("type a line to send it; end of input (Ctrl-D) ends the chat")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        # Bytes, decoded per line below (as line mode does): the locale plays no
        # part, and a line that is not UTF-8 cannot end the reader.
        start_reader(loop, queue.put_nowait,
                     lambda err: _say(f"cannot read input: {err.strerror or err}"),
                     lambda: queue.put_nowait(b""))
        refused: list[int] = []
        count = 0
        while (raw := await queue.get()) != b"":
            count += 1
            try:
                line = line_text(raw)
                if line:
                    client.send(line)
            except MsgrError as err:
                refused.append(count)
                _say(f"input line {count} not sent: {escape(str(err))}")
        end = loop.time() + args.ttl + 5
        while client.core.unsettled() and loop.time() < end:
            await asyncio.sleep(0.05)
        client.core.give_up("not confirmed before the chat ended")
        if refused:
            _say(f"{len(refused)} input line(s) not sent: line "
                 f"{', '.join(map(str, refused))}")
        _finish(finished, EXIT_UNDELIVERED if client.core.failed() or refused else EXIT_OK)

    talking = loop.create_task(chat())
    try:
        return await _drive(client, finished)
    finally:
        talking.cancel()


__all__ = ["add_commands", "add_relay_options", "config_path", "read_code", "read_config",
           "relay_target", "run_invite_chat", "run_receive", "run_send"]
