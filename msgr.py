"""msgr: end-to-end encrypted, ephemeral chat for the terminal.

This file is the command line: ``python msgr.py serve`` runs a relay,
``python msgr.py chat`` a client. It parses options, reads the passcode from a
safe place, and turns every error into one line and an exit code. The work is
done by the modules it imports lazily (so ``--help`` starts fast):

    msgr.py -> msgrlib.relay.server          (serve)
            -> msgrlib.ui.linemode | app     (chat: line mode, or the screen:
               app -> terminal (curses) -> view (no curses) -> options)
            -> msgrlib.client, crypto, tls, framing.py, kdf.py -> msgrlib.errors

Exit codes: 0 success; 1 an error (one line on stderr says which); 2 bad usage;
3 some messages were not delivered (named on stderr); 130 interrupted.

Library use: see ``msgr.open_chat`` and ``msgr.start_relay``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from typing import Any

__version__ = "0.1.0"

from msgrlib.limits import TTL_DEFAULT, TTL_MAX, TTL_MIN, ttl_in_range
from msgrlib.util.exitcodes import (  # noqa: F401 (part of msgr's API)
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNDELIVERED,
    EXIT_USAGE,
)

# The library API, imported on first use so that `msgr --help` stays fast.
_LAZY = {
    "start_relay": ("msgrlib.relay.server", "start_relay"),
    "RelayServer": ("msgrlib.relay.server", "RelayServer"),
    "RelayConfig": ("msgrlib.relay.config", "RelayConfig"),
    "open_chat": ("msgrlib.client.connection", "open_chat"),
    "ChatClient": ("msgrlib.client.connection", "ChatClient"),
    "TlsOptions": ("msgrlib.client.connection", "TlsOptions"),
    "Received": ("msgrlib.client.core", "Received"),
    "MsgrError": ("msgrlib.errors", "MsgrError"),
}
__all__ = ["main", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'msgr' has no attribute {name!r}")

_LIMIT_OPTIONS = [
    # (option, RelayConfig field, type, help)
    ("--max-frame", "max_frame", int, "largest frame in bytes (at least 4096)"),
    ("--ttl-max", "ttl_max", int, f"longest message TTL in seconds (at most {TTL_MAX})"),
    ("--ttl-min", "ttl_min", int, f"shortest message TTL in seconds (at least {TTL_MIN})"),
    ("--mailbox-messages", "mailbox_messages", int, "messages waiting per recipient"),
    ("--mailbox-bytes", "mailbox_bytes", int, "bytes waiting per recipient"),
    ("--store-bytes", "store_bytes", int, "total bytes of stored ciphertext (memory budget)"),
    ("--store-share", "store_share", float,
     "largest fraction of the store one name, address or recipient may hold"),
    ("--hs-reserve", "hs_reserve", float,
     "fraction of the store kept for handshake messages"),
    ("--rate-messages", "rate_messages", float, "messages per second per connection"),
    ("--burst-messages", "burst_messages", float, "message burst per connection"),
    ("--rate-bytes", "rate_bytes", float, "bytes per second per connection"),
    ("--burst-bytes", "burst_bytes", float, "byte burst per connection"),
    ("--max-connections", "max_connections", int, "connections in total"),
    ("--max-per-address", "max_per_address", int, "connections from one IP address"),
    ("--read-buffers", "read_buffers", int,
     "bytes of partly received frames held across all connections"),
    ("--hello-timeout", "hello_timeout", float, "seconds to say hello and prove the name"),
    ("--tls-timeout", "tls_handshake_timeout", float, "seconds for the TLS handshake"),
    ("--idle-timeout", "idle_timeout", float, "seconds of silence before a client is dropped"),
    ("--heartbeat", "heartbeat", float, "heartbeat interval asked of clients, seconds"),
    ("--max-names", "max_names", int, "names owned at once"),
    ("--claim-rate", "claim_rate", float, "new names per second one address may claim"),
    ("--claim-burst", "claim_burst", float, "new names one address may claim at once"),
    ("--hs-burst", "hs_burst", float, "handshake messages per pair of names at once"),
    ("--hs-rate", "hs_per_second", float, "handshake messages per second per pair of names"),
    ("--max-hs-pairs", "max_hs_pairs", int, "pairs of names with a handshake limit kept"),
    ("--claim-ttl", "claim_ttl", float,
     "seconds a name stays owned by its key after its last connection ends"),
    ("--write-buffer", "write_buffer", int,
     "bytes queued to a client before it counts as not reading"),
    ("--stall-timeout", "stall_timeout", float,
     "seconds a client may stay not reading before it is dropped"),
]


#: The name rules as --help states them (msgrlib.util.names enforces them).
NAME_RULES = ("1-32 characters from a-z, 0-9, '.', '_' and '-', starting with a letter "
              "or digit; capitals are taken as lower case")


def _number(value: float) -> str:
    return f"{int(value):,}" if value == int(value) and value >= 1 else f"{value:g}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msgr", description="End-to-end encrypted, ephemeral chat through a relay "
        "that never sees plaintext.",
        epilog="Run 'msgr serve --help' or 'msgr chat --help' for the options of each.")
    parser.add_argument("--version", action="version", version=f"msgr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{serve,chat,send,receive}")

    serve = sub.add_parser(
        "serve", help="run a relay", description="Run a relay. It stores ciphertext in memory "
        "only, for at most its TTL, and never sees plaintext or passcodes.")
    serve.add_argument("--host", action="append", default=None,
                       help="address to listen on; repeat for several (default: every "
                       "address, IPv4 and IPv6)")
    serve.add_argument("--port", type=int, default=8765,
                       help="port to listen on, 0 for any free port (default: 8765)")
    serve.add_argument("--tls", action="store_true",
                       help="serve TLS; creates a self-signed certificate if --cert and "
                       "--key do not exist, and prints its fingerprint")
    serve.add_argument("--cert", default="cert.pem",
                       help="TLS certificate file, PEM (default: cert.pem)")
    serve.add_argument("--key", default="key.pem",
                       help="TLS private key file, PEM (default: key.pem)")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"],
                       help="log detail on stderr (default: info); who talks to whom is "
                       "logged only at debug")
    serve.add_argument("--store", action="append", default=None, metavar="URL",
                       help="share names and messages with other relays through a Redis/"
                       "Valkey engine: redis://HOST:PORT/DB, rediss:// (TLS) or "
                       "unix:///PATH; repeat for several shards (every relay lists the same "
                       "URLs in the same order). Needs pip install 'msgr[redis]'. A password "
                       "comes from ?password_env=VARIABLE in the URL, --store-password-file "
                       "or MSGR_STORE_PASSWORD, never from the command line (default: in "
                       "this process's memory)")
    serve.add_argument("--store-password-file", default=None, metavar="FILE",
                       help="file whose first line is the engine's password")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="run N relay processes on one port (SO_REUSEPORT), sharing "
                       "the engine, so every core is used; needs --store. A parent process "
                       "starts them, restarts one that dies (with a backoff), stops them all "
                       "on SIGTERM or Ctrl-C, and exits with status 1 if they keep dying. "
                       "All workers share one TLS context, so a client resumes its TLS "
                       "session with any of them (default: 1, no parent process)")
    from msgrlib.relay.config import RelayConfig  # light: no crypto imports

    defaults = RelayConfig()
    limits = serve.add_argument_group("limits (README.md explains each)")
    for option, field, kind, text in _LIMIT_OPTIONS:
        limits.add_argument(option, dest=field, type=kind, default=None, metavar="N",
                            help=f"{text} (default: {_number(getattr(defaults, field))})")

    chat = sub.add_parser(
        "chat", help="chat with one person",
        description="Chat with one person who knows the same passcode. Interactive on a "
        "terminal; with stdin from a pipe, each input line is one message and each received "
        "message is printed as one line.",
        epilog="The passcode is read, in order, from --passcode-file, MSGR_PASSCODE, or a "
        "hidden prompt. --passcode VALUE works but other local users can see it.")
    chat.add_argument("--server", metavar="HOST:PORT", help="the relay (default: MSGR_SERVER, "
                      "or 'server = ...' in ~/.config/msgr/config)")
    chat.add_argument("--user", metavar="NAME", help=f"your name: {NAME_RULES}")
    chat.add_argument("--peer", metavar="NAME", help="who you chat with (same rules)")
    chat.add_argument("--invite", action="store_true", help="no names or passcode: print an "
                      "invite code for the other person to type with --join")
    chat.add_argument("--join", nargs="?", const="", metavar="CODE", help="join the chat of "
                      "an invite code (asked for, with tab completion, if not given)")
    chat.add_argument("--tls", action="store_true", help="connect with TLS")
    chat.add_argument("--cafile", metavar="FILE",
                      help="trust relay certificates signed by this CA (or this self-signed "
                      "certificate) instead of trust on first use")
    chat.add_argument("--pin", metavar="SHA256:..",
                      help="accept only the relay certificate with this SHA-256 fingerprint")
    chat.add_argument("--known-hosts", metavar="FILE",
                      help="where trust-on-first-use fingerprints are kept "
                      "(default ~/.config/msgr/known_hosts; /dev/null: remember nothing)")
    chat.add_argument("--ttl", type=int, default=TTL_DEFAULT, metavar="SECONDS",
                      help=f"how long the relay keeps your messages ({TTL_MIN}-{TTL_MAX}, "
                           f"default {TTL_DEFAULT})")
    chat.add_argument("--static", action="store_true",
                      help="the original passcode-key mode: messages can wait for a peer who "
                      "is not online yet, but the relay could test weak passcodes offline")
    chat.add_argument("--json", action="store_true",
                      help="line mode: print one JSON object per line")
    chat.add_argument("--passcode-file", metavar="FILE",
                      help="read the passcode from the first line of FILE")
    chat.add_argument("--passcode", metavar="VALUE", help=argparse.SUPPRESS)
    chat.add_argument("--identity", metavar="FILE",
                      help="keep the key that owns your name at the relay in FILE (created if "
                      "missing; default: one per relay and name under "
                      "~/.local/state/msgr/names), so the name stays yours across runs")
    chat.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                      help="line mode: at end of input, how long to wait for messages to be "
                      "confirmed (default: TTL + 5)")
    chat.add_argument("--plain", action="store_true",
                      help="on a terminal, use the simple line interface instead of the "
                      "full screen")
    from msgrlib.ui import transfer_args
    transfer_args.add_commands(sub)
    return parser


def _say(line: str) -> None:
    """One line on stderr, through the one sanitizer all output passes."""
    from msgrlib.util.safetext import write_line

    write_line(sys.stderr, line)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from msgrlib.errors import MsgrError, UsageError
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command in ("send", "receive"):
            from msgrlib.ui import transfer_cli
            return (transfer_cli.run_send if args.command == "send"
                    else transfer_cli.run_receive)(args)
        return _chat(args)
    except UsageError as err:
        _say(f"msgr {args.command}: {err} (see msgr {args.command} --help)")
        return EXIT_USAGE
    except MsgrError as err:
        # The sentence may quote what a relay or peer chose: escaped like all output.
        _say(f"msgr: {err}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - a bug: one line, the details on request
        if os.environ.get("MSGR_DEBUG"):
            raise
        print(f"msgr: internal error ({type(err).__name__}); please report it. Run again with "
              "MSGR_DEBUG=1 to see the details.", file=sys.stderr)
        return EXIT_ERROR


# -- serve ------------------------------------------------------------------------

def _relay_config(args: argparse.Namespace) -> Any:
    import dataclasses

    from msgrlib.errors import UsageError
    from msgrlib.relay.config import RelayConfig

    overrides = {field: getattr(args, field) for _, field, _, _ in _LIMIT_OPTIONS
                 if getattr(args, field) is not None}
    config = RelayConfig(**overrides)
    if not TTL_MIN <= config.ttl_min <= config.ttl_max <= TTL_MAX:
        raise UsageError(f"TTL bounds must satisfy {TTL_MIN} <= --ttl-min <= --ttl-max "
                         f"<= {TTL_MAX}")
    if config.claim_ttl < config.ttl_max:  # a name outlives any message sent to it
        raise UsageError(f"--claim-ttl must be at least --ttl-max ({config.ttl_max} s)")
    # A client that names no TTL gets 30 s, or the nearest bound.
    config = dataclasses.replace(
        config, ttl_default=min(max(config.ttl_default, config.ttl_min), config.ttl_max))
    for _, field, _, _ in _LIMIT_OPTIONS:
        if not getattr(config, field) > 0:  # also refuses nan
            raise UsageError(f"--{field.replace('_', '-')} must be positive")
    return config


def _certificate_names(hosts: list[str] | None) -> dict[str, tuple[str, ...]]:
    """Names a new self-signed certificate covers, so --cafile works for them."""
    import ipaddress
    import socket

    hostnames = ["localhost", socket.gethostname()]
    ips = ["127.0.0.1", "::1"]
    for host in hosts or ():
        if host in ("0.0.0.0", "::", ""):
            continue
        try:
            ipaddress.ip_address(host)
            ips.append(host)
        except ValueError:
            hostnames.append(host)
    return {"hostnames": tuple(dict.fromkeys(hostnames)),
            "ip_addresses": tuple(dict.fromkeys(ips))}


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from msgrlib.errors import MsgrError, UsageError
    from msgrlib.util import logfmt

    logfmt.setup(args.log_level)
    config = _relay_config(args)
    if not 0 <= args.port < 65536:
        raise UsageError(f"bad --port {args.port}: expected 0-65535")
    context = None
    fingerprint = None
    created = False
    if args.tls:
        from msgrlib.tls import contexts
        created, fingerprint = contexts.ensure_certificate(args.cert, args.key,
                                                        **_certificate_names(args.host))
        context = contexts.server_context(args.cert, args.key)

    if args.workers < 1:
        raise UsageError(f"bad --workers {args.workers}: expected 1 or more")
    if args.workers > 1 and not args.store:
        raise UsageError("--workers above 1 needs --store: relays that keep names and "
                         "messages in their own memory cannot see each other's clients")

    backend = None
    make_backend = None
    if args.store:
        from msgrlib.relay.cluster import store_settings
        from msgrlib.relay.engine import EngineLimits, RedisBackend

        urls, password = store_settings(args.store, password_file=args.store_password_file)

        def make_backend() -> Any:
            return RedisBackend(urls, limits=EngineLimits.from_config(config),
                                password=password)
        if args.workers == 1:
            backend = make_backend()
    elif args.store_password_file:
        raise UsageError("--store-password-file needs --store")
    if args.workers > 1:
        return _serve_workers(args, config, context, fingerprint, created, make_backend)

    async def run() -> None:
        from msgrlib.relay import server
        from msgrlib.util.netaddr import host_port
        try:
            relay_server = await server.start_relay(config, host=args.host, port=args.port,
                                                    ssl_context=context, backend=backend)
        except OSError as err:
            if created:  # made for this run, which never served: leave nothing behind
                for path in (args.cert, args.key):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
            where = " and ".join(host_port(h, args.port) for h in args.host or ("*",))
            raise MsgrError(f"cannot listen on {where}: {err.strerror or err}") from None
        if created:
            print(f"msgr: created a self-signed certificate {args.cert} and key {args.key} "
                  "(owner-only)", file=sys.stderr)
        shown = " and ".join(host_port(h, p) for h, p in relay_server.addresses)
        line = f"msgr relay listening on {shown}"
        line += f" with TLS, certificate {fingerprint}" if context else " without TLS"
        print(line, flush=True)
        fields: dict[str, Any] = {"addr": shown, "tls": bool(context)}
        if backend is not None:  # (its warnings, a persisting engine, are logged already)
            fields.update(store="engine", shards=len(backend.shards), epoch=backend.epoch)
        logging.getLogger("msgr.relay").info("listening", extra={"fields": fields})
        await server.serve_forever(relay_server)
        stopped = relay_server.stopped or {"connections": 0, "messages": 0}
        kept = ("messages stay in the engine" if backend is not None
                else f"{stopped['messages']} message(s) dropped")
        print(f"msgr relay stopped: {stopped['connections']} connection(s) closed, {kept}",
              flush=True)  # stdout, as "listening"

    asyncio.run(run())
    return EXIT_OK


def _serve_workers(args: argparse.Namespace, config: Any, context: Any, fingerprint: Any,
                   created: bool, make_backend: Any) -> int:
    """``serve --workers N``: a parent supervising N relays (msgrlib.relay.workers)."""
    import asyncio

    from msgrlib.errors import MsgrError
    from msgrlib.relay import server, workers
    from msgrlib.util.netaddr import host_port

    hosts = list(args.host or server.ALL_HOSTS)
    held: list[Any] = []
    port = args.port
    for host in hosts:
        try:
            socks, port = workers.hold_port([host], port)
        except OSError as err:
            if args.host is None and err.errno in server._NO_FAMILY and host != hosts[0]:
                continue
            for sock in held:
                sock.close()
            if created:  # made for this run, which never served: leave nothing behind
                for path in (args.cert, args.key):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
            where = host_port(host, port)
            raise MsgrError(f"cannot listen on {where}: {err.strerror or err}") from None
        held.extend(socks)
    hosts = [sock.getsockname()[0] for sock in held]

    def worker(index: int, report: Any) -> int:
        async def run() -> int:
            backend = make_backend()
            try:
                relay_server = await server.start_relay(
                    config, host=hosts, port=port, ssl_context=context, backend=backend,
                    reuse_port=True)
            except OSError as err:
                report(f"error cannot listen on port {port}: {err.strerror or err}")
                return 1
            except MsgrError as err:
                report(f"error {err}")
                return 1
            report("ready")
            await server.serve_forever(relay_server, ignore_repeats=True)
            stopped = relay_server.stopped or {"connections": 0, "messages": 0}
            report(f"stopped {stopped['connections']}")
            return 0
        return asyncio.run(run())

    supervisor = workers.Supervisor(args.workers, worker,
                                    keep_fds=[sock.fileno() for sock in held])
    try:
        supervisor.start()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if created:
        print(f"msgr: created a self-signed certificate {args.cert} and key {args.key} "
              "(owner-only)", file=sys.stderr)
    shown = " and ".join(host_port(h, port) for h in hosts)
    line = f"msgr relay listening on {shown}"
    line += f" with TLS, certificate {fingerprint}" if context else " without TLS"
    print(f"{line}, {args.workers} workers", flush=True)
    status = supervisor.run()
    print(f"msgr relay stopped: {args.workers} workers, messages stay in the engine",
          flush=True)
    for sock in held:
        sock.close()
    return status


# -- chat -------------------------------------------------------------------------

def _warn_if_others_can_read(path: str | None, what: str) -> None:
    """A secret in a file other users can read is not secret (as ssh says of keys)."""
    if not path or os.name != "posix":
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing (an identity is then created 0600) or unreadable: said later
    if stat.S_ISREG(mode) and mode & 0o077:   # not a directory: that is said on its own
        _say(f"msgr: warning: {what} {path} can be read by other users (mode "
             f"{mode & 0o777:04o}); chmod 600 {path}")


def _read_passcode(args: argparse.Namespace, interactive: bool) -> str:
    from msgrlib.errors import MsgrError

    if args.passcode_file and os.path.isdir(args.passcode_file):
        # Said first: advice about its permissions would be beside the point.
        raise MsgrError(f"--passcode-file {args.passcode_file} is a directory: give the "
                        "file whose first line is the passcode")
    _warn_if_others_can_read(args.passcode_file, "--passcode-file")
    _warn_if_others_can_read(args.identity, "--identity")
    if args.passcode_file:
        try:
            with open(args.passcode_file, encoding="utf-8") as f:
                passcode = f.readline().rstrip("\r\n")
        except OSError as err:
            raise MsgrError(f"cannot read --passcode-file {args.passcode_file}: "
                            f"{err.strerror}") from None
        except UnicodeDecodeError:
            raise MsgrError(f"--passcode-file {args.passcode_file} is not UTF-8 text") from None
    elif args.passcode is not None:
        print("msgr: warning: --passcode puts the passcode where other local users can see "
              "it (ps, shell history); prefer the prompt, MSGR_PASSCODE or --passcode-file",
              file=sys.stderr)
        passcode = args.passcode
        args.passcode = None
    elif os.environ.get("MSGR_PASSCODE"):
        # Take it out of the environment, so nothing we start inherits it.
        passcode = os.environ.pop("MSGR_PASSCODE")
    elif interactive:
        import getpass
        try:
            passcode = getpass.getpass("passcode: ")
        except (KeyboardInterrupt, EOFError) as stop:
            # The prompt left the cursor after "passcode: ": end that line, so
            # the shell's prompt (or our error) starts on its own.
            print(file=sys.stderr, flush=True)
            if isinstance(stop, EOFError):
                raise MsgrError("no passcode: the prompt reached end of input") from None
            raise
    else:
        raise MsgrError("no passcode: stdin is not a terminal, so set MSGR_PASSCODE or use "
                        "--passcode-file FILE")
    if not passcode:
        raise MsgrError("the passcode is empty")
    return passcode


def _chat(args: argparse.Namespace) -> int:
    from msgrlib.client.connection import TlsOptions, parse_server
    from msgrlib.errors import MsgrError, UsageError
    from msgrlib.ui import linemode
    from msgrlib.ui.options import ChatOptions
    from msgrlib.util.names import check_name, is_valid_name

    if args.invite or args.join is not None:
        from msgrlib.ui import transfer_cli
        return transfer_cli.run_invite_chat(args)
    if not (args.user and args.peer):
        raise UsageError("give --user and --peer (and the passcode), or use --invite")
    from msgrlib.ui.transfer_cli import server_text
    args.server = server_text(args.server)  # or MSGR_SERVER, or the config file
    notes: list[str] = []
    try:
        for option in ("user", "peer"):
            name = getattr(args, option)
            if name != name.lower() and is_valid_name(name.lower()):
                # Names are lower case so that "Bob" and "bob" cannot be two people.
                notes.append(f"--{option} {name} is taken as {name.lower()} (names are "
                             "lower case)")
                setattr(args, option, name.lower())
        check_name(args.user, what="--user")
        check_name(args.peer, what="--peer")
        if args.user == args.peer:
            raise UsageError("--user and --peer are the same name")
        if not ttl_in_range(args.ttl):
            raise UsageError(f"--ttl {args.ttl} is out of range: use {TTL_MIN} to {TTL_MAX} "
                             "seconds")
        if args.wait is not None and not 0 <= args.wait < 86400:
            raise UsageError(f"--wait {args.wait:g} is out of range: use 0 to 86399 seconds")
        server = parse_server(args.server)
        host, port = server
        url_tls = server.tls  # wss:// and msgrs:// mean --tls, ws:// and msgr:// not
        if url_tls is False and args.tls:
            raise UsageError(f"--server {args.server} names a relay without TLS, but --tls is "
                             "given: use wss:// or msgrs://, or drop --tls")
        args.tls = args.tls or bool(url_tls)
        if (args.cafile or args.pin) and not args.tls:
            raise UsageError("--cafile and --pin only make sense with --tls")
        if args.cafile and args.pin:
            raise UsageError("use either --cafile or --pin, not both")
        if args.pin:
            from msgrlib.tls import x509
            args.pin = x509.normalize_fingerprint(args.pin)
    except UsageError:
        raise
    except MsgrError as err:
        raise UsageError(str(err)) from None
    for note in notes:
        _say(f"msgr: {note}")
    interactive = sys.stdin.isatty() and not args.json
    passcode = _read_passcode(args, sys.stdin.isatty())
    warnings: tuple[str, ...] = ()
    if args.static:
        from msgrlib.ui.options import weak_passcode_warning
        warning = weak_passcode_warning(passcode)
        warnings = (warning,) if warning else ()
    tls = TlsOptions(cafile=args.cafile, pin=args.pin, known_hosts=args.known_hosts) \
        if args.tls else None
    options = ChatOptions(host=host, port=port, user=args.user, peer=args.peer,
                          passcode=passcode, tls=tls, ttl=args.ttl, static=args.static,
                          json=args.json, identity=args.identity, wait=args.wait,
                          warnings=warnings)
    del passcode
    if interactive and not args.plain:
        try:
            from msgrlib.ui import app
        except ImportError:   # no curses here (stock Windows Python): lines instead
            return linemode.run_lines(options, interactive=True)
        return app.run(options)
    return linemode.run_lines(options, interactive=interactive)


def main_entry() -> None:
    """Console-script entry point (``msgr`` after ``pip install .``)."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
