"""What every interface shares: the options of one chat, the key, the client.

``msgr.py`` builds one :class:`ChatOptions` from the command line; line mode
(:mod:`msgrlib.ui.linemode`) and the chat screen (:mod:`msgrlib.ui.app`) both
derive the key with :func:`derive_key` and drive the client that
:func:`make_client` builds. Nothing here prints except :func:`derive_key`'s
progress line, on the stream it is given.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from msgrlib.client.connection import ChatClient, TlsOptions
from msgrlib.client.core import ChatCore, Mode
from msgrlib.client.identity import load_identity
from msgrlib.limits import MAX_TEXT, TTL_MAX, TTL_MIN  # noqa: F401 (re-exported)
from msgrlib.util.exitcodes import (  # noqa: F401 (re-exported)
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNDELIVERED,
)
from msgrlib.util.netaddr import host_port
from msgrlib.util.safetext import write_line

STATIC_WARNING = ("warning: --static mode: the relay (or anyone who records the traffic) "
                  "could test passcode guesses offline; use a long random passcode")


#: In --static mode the relay (or anyone recording the traffic) can test passcode
#: guesses offline, each costing one Argon2id run (64 MiB). Below this many bits of
#: estimated strength, msgr warns: 50 bits is about 10^15 guesses, which is years
#: of work even on many machines at that cost; a random 10-character passcode of
#: letters and digits, or four random words, is above it.
WEAK_PASSCODE_BITS = 50


def passcode_bits(passcode: str) -> float:
    """A rough, deliberately modest estimate of a passcode's strength in bits.

    Each character adds log2 of the size of its class pool (lower case 26, upper
    case 26, digits 10, other ASCII 33, anything else 100), as if chosen at
    random from the classes the passcode uses; a character that repeats the one
    before or continues a run (``abc``, ``321``) adds 1 bit. People do not choose
    at random, so this overestimates ordinary words: it is a floor for a warning,
    never a promise of strength."""
    import math

    pool = 0
    if any(c.islower() and c.isascii() for c in passcode):
        pool += 26
    if any(c.isupper() and c.isascii() for c in passcode):
        pool += 26
    if any(c.isdigit() and c.isascii() for c in passcode):
        pool += 10
    if any(c.isascii() and not c.isalnum() for c in passcode):
        pool += 33
    if any(not c.isascii() for c in passcode):
        pool += 100
    per_char = math.log2(pool) if pool > 1 else 0.0
    bits = 0.0
    previous: str | None = None
    for ch in passcode:
        if previous is not None and abs(ord(ch) - ord(previous)) <= 1:
            bits += 1.0   # "aaaa", "abcd", "4321": next to no choice
        else:
            bits += per_char
        previous = ch
    return bits


def weak_passcode_warning(passcode: str) -> str | None:
    """The --static warning for a weak passcode, or None."""
    bits = passcode_bits(passcode)
    if bits >= WEAK_PASSCODE_BITS:
        return None
    return (f"warning: this passcode is weak for --static mode: about {bits:.0f} bits "
            f"(estimated; at least {WEAK_PASSCODE_BITS} recommended), and the relay can test "
            "guesses offline; use a longer random passcode, e.g. four random words")


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
    #: Warnings the CLI found while reading the options (shown by either interface).
    warnings: tuple[str, ...] = ()
    #: An invite (``chat --invite`` / ``--join``, PROTOCOL.md 3.6): no names, no
    #: passcode; ``invite_code`` is the code to join, None to invite.
    invite: bool = False
    invite_code: Any = None


def derive_key(options: ChatOptions, progress: TextIO | None = sys.stderr) -> bytes:
    """Argon2id of the passcode for this pair of names, with a progress line."""
    import kdf

    params = options.kdf_params or kdf.DEFAULT_PARAMS
    if progress is not None:
        write_line(progress, f"msgr: deriving the key from the passcode (Argon2id, "
                             f"{params.memory_kib // 1024} MiB)...")
    key = kdf.derive_passcode_key(options.passcode, options.user, options.peer, params=params)
    options.passcode = ""  # not needed any more; do not keep it around
    return key


def make_client(options: ChatOptions, key: bytes, on_event: Any = None) -> ChatClient:
    core = ChatCore(me=options.user, peer=options.peer, key=key,
                    mode=Mode.STATIC if options.static else Mode.RATCHET,
                    ttl=options.ttl, clock=time.monotonic, wallclock=time.time,
                    rng=os.urandom)
    return ChatClient(core, host=options.host, port=options.port, tls=options.tls,
                      identity=load_identity(options.identity), on_event=on_event)


def address(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return host_port(host, port)
