"""The options of ``msgr send`` and ``msgr receive``, apart from the code that runs them.

``msgr --help`` builds every subcommand's parser; keeping these here, with
nothing but argparse, keeps it from importing asyncio and the transfer code
(``ui/transfer_cli.py`` runs the commands).
"""

from __future__ import annotations

import argparse
from typing import Any


def add_relay_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="HOST:PORT",
                        help="the relay (default: MSGR_SERVER, or 'server = ...' in "
                        "~/.config/msgr/config); msgrs://HOST:PORT means TLS")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--cafile", metavar="FILE", help="trust relay certificates from FILE")
    parser.add_argument("--pin", metavar="SHA256:..",
                        help="accept only the relay certificate with this fingerprint")
    parser.add_argument("--known-hosts", metavar="FILE",
                        help="where trust-on-first-use fingerprints are kept")


def add_commands(sub: Any) -> None:
    """``send`` and ``receive`` (msgr.py adds them to its subcommands)."""
    send = sub.add_parser(
        "send", help="send a file, a directory or a secret with an invite code",
        description="Send a file or directory, or with '-' a secret read from stdin (shown "
        "once at the other end, never written). Prints an invite code; the other person "
        "runs 'msgr receive' and types it. With --to NAME --user NAME, it goes to a named "
        "pair instead, keyed by your shared passcode (the other runs 'msgr receive --from').")
    send.add_argument("path", metavar="PATH", help="file or directory to send, or - for a "
                      "secret from stdin (at most 64 KiB)")
    add_relay_options(send)
    send.add_argument("--json", action="store_true",
                      help="print progress as one JSON object per line on stdout")
    add_pair_options(send, "--to", "instead of an invite code: send to NAME, a named pair "
                     "(with --user and the passcode you share, as for chat)")
    receive = sub.add_parser(
        "receive", help="receive what 'msgr send' offers",
        description="Receive a file, directory or secret. Asks for the invite code (tab "
        "completes its words); shows what is offered and asks before anything is written.",
        epilog="The code can be given as an argument, but other local users can see it "
        "there (it only works once, though).")
    receive.add_argument("code", nargs="?", metavar="CODE", help=argparse.SUPPRESS)
    add_relay_options(receive)
    receive.add_argument("--dir", default=".", metavar="DIR",
                         help="where to put what is received (default: here)")
    receive.add_argument("--json", action="store_true",
                         help="print progress as one JSON object per line on stdout")
    add_pair_options(receive, "--from", "instead of an invite code: receive from NAME, a "
                     "named pair (with --user and the passcode you share, as for chat)")


def add_pair_options(parser: argparse.ArgumentParser, option: str, text: str) -> None:
    parser.add_argument(option, dest="peer", metavar="NAME", help=text)
    parser.add_argument("--user", metavar="NAME", help=f"your name (with {option})")
    parser.add_argument("--passcode-file", metavar="FILE", help=f"with {option}: read the "
                        "passcode from FILE (else MSGR_PASSCODE, else a hidden prompt)")
    parser.add_argument("--identity", metavar="FILE", help=f"with {option}: the key that "
                        "owns your name at the relay (default: one per relay and name)")
