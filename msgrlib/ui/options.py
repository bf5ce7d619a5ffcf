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

from msgrlib.client import core as chat
from msgrlib.client.connection import ChatClient, TlsOptions, load_identity
from msgrlib.util.safetext import write_line

EXIT_OK, EXIT_ERROR, EXIT_UNDELIVERED, EXIT_INTERRUPTED = 0, 1, 3, 130

#: Longest message accepted from the user, in characters. Keeps every sealed
#: frame well under the relay's 64 KiB frame limit (the byte limit the relay
#: sets is checked too: ``ChatCore.max_text_bytes``).
MAX_TEXT = 16 * 1024

#: The TTL range users may choose (the relay enforces the same bounds).
TTL_MIN, TTL_MAX = 5, 60

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
        write_line(progress, f"msgr: deriving the key from the passcode (Argon2id, "
                             f"{params.memory_kib // 1024} MiB)...")
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


def address(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
