"""Every limit of the relay, in one frozen dataclass, with the reason for each.

The CLI builds one :class:`RelayConfig` from ``serve`` options and passes it
down; the README's limits table lists the same fields (``tests/test_docs.py``
keeps the two in sync).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import framing
from msgrlib.errors import UsageError
from msgrlib.limits import TTL_DEFAULT, TTL_MAX, TTL_MIN

__all__ = ["RelayConfig"]


#: The smallest ``max_frame`` a relay may run with: below it handshake
#: messages and file chunks (PROTOCOL.md 3.4) would be refused.
MIN_MAX_FRAME = 4096


@dataclass(frozen=True)
class RelayConfig:
    """Every limit of the relay, with its default and the reason for it.

    The CLI builds one of these from ``serve`` options; the README lists them.
    """

    #: Largest frame accepted, in bytes of JSON body. A chat line sealed and
    #: base64-encoded is far below this; 64 KiB leaves room for long pastes.
    max_frame: int = framing.DEFAULT_MAX_FRAME
    #: Largest frame before ``welcome``: ``hello`` and ``auth`` need about 150
    #: bytes, so an unauthenticated connection can make the relay buffer at
    #: most this much (not ``max_frame``) however slowly it sends.
    login_max_frame: int = 1024
    #: Bytes of partly received frames the relay holds across all connections
    #: (each connection at most one frame's worth). Past it, the connection
    #: that would add more is closed with ``relay_full``: thousands of
    #: connections each sending most of a 64 KiB frame cannot exhaust memory.
    read_buffers: int = 64 * 1024 * 1024
    #: TTL bounds in seconds: a message lives at least 5 s so a reconnecting
    #: peer can catch it, at most 60 s because the relay is not a mailbox
    #: (msgrlib/limits.py; a relay may narrow the range, never widen it).
    ttl_min: int = TTL_MIN
    ttl_max: int = TTL_MAX
    ttl_default: int = TTL_DEFAULT
    #: Messages / bytes one recipient may have waiting.
    mailbox_messages: int = 1000
    mailbox_bytes: int = 4 * 1024 * 1024
    #: Total stored ciphertext (plus per-message overhead): the memory budget.
    store_bytes: int = 256 * 1024 * 1024
    #: Largest fraction of ``store_bytes`` that the waiting messages sent by one
    #: name (so also one connection), sent from one address (an IPv6 /64
    #: counts as one), or waiting for one recipient may hold. At 5% nobody
    #: fills the relay alone: it takes 20 addresses, and the 64 connections
    #: one address may open share one allowance.
    store_share: float = 0.05
    #: Fraction of ``store_bytes`` ordinary messages leave free for handshake
    #: messages (kind "hs"), so a store full of messages never stops two people
    #: from starting a session. Handshakes are few and small (per-pair limits
    #: below); 5% is about 30,000 of them with the default budget.
    hs_reserve: float = 0.05
    #: Per-connection token buckets: how much of the relay's CPU and bandwidth
    #: one connection may take, not its memory (the mailbox and store shares
    #: above bound what anyone can make it hold, at any rate). Set so that a
    #: file transfer through a relay left at its defaults is not throttled
    #: (about 110 MB/s of file is 3,000 frames and 150 MB a second; issue 16,
    #: docs/transfer.md section 8), still a ceiling on one connection: a
    #: connection faster than that waits for tokens. An operator sharing a
    #: relay among many users lowers them (SECURITY.md "Limits").
    rate_messages: float = 4000.0
    burst_messages: float = 8000.0
    rate_bytes: float = 256 * 1024 * 1024.0
    burst_bytes: float = 512 * 1024 * 1024.0
    #: Handshake frames per pair of names: a burst of 40 frames (10 attempts of
    #: 4 frames), then one frame every 15 s (one attempt a minute). Each failed
    #: attempt is an online passcode guess, so they must stay rare.
    hs_burst: float = 40.0
    hs_per_second: float = 1 / 15
    #: Names a single connection may watch for presence.
    max_watch: int = 16
    #: How long a name stays owned by its key after its last connection ends
    #: (seconds), bye or not; it is also kept while messages wait for it, so
    #: nobody can claim a name to drain what is waiting there. The CLI keeps it
    #: at least ``ttl_max``: a message sent just before the owner left (or just
    #: after) can still be waiting that long.
    claim_ttl: float = 60.0
    #: Names owned at once (each costs ~200 bytes); new names are refused past it.
    max_names: int = 100_000
    #: New names one address (an IPv6 /64) may claim: a burst of 30, then one
    #: every 2 s. Enough for a household behind one NAT starting clients;
    #: far below the ~1,400 names/s one client could claim without it, which
    #: would fill the name table (and the handshake table) in a minute.
    claim_rate: float = 0.5
    claim_burst: float = 30.0
    #: Per-pair handshake buckets kept at once. A bucket is dropped only once
    #: it has refilled (it then means the same as no bucket), never to make
    #: room: when the table is full of partly used buckets, handshakes between
    #: new pairs wait, and nobody can reset a pair's limit by making new pairs.
    max_hs_pairs: int = 100_000
    #: Heartbeat interval the relay asks clients to use, and how long a
    #: connection may stay silent before it is considered dead (3 beats).
    heartbeat: float = 20.0
    idle_timeout: float = 60.0
    #: Seconds allowed for the TLS handshake and for hello + auth.
    tls_handshake_timeout: float = 10.0
    hello_timeout: float = 10.0
    #: Bytes queued to one client before it counts as not reading (the relay
    #: then stops reading from it, and drops it after ``stall_timeout`` s).
    write_buffer: int = 256 * 1024
    stall_timeout: float = 10.0
    #: Seconds an invite's nameplate waits for the other side (issue 16):
    #: long enough to read a code aloud and type it, short enough that an
    #: unused number soon frees.
    nameplate_ttl: float = 600.0
    #: Connections in total and from one address.
    max_connections: int = 20_000
    max_per_address: int = 64

    def __post_init__(self) -> None:
        if self.max_frame < MIN_MAX_FRAME:
            raise UsageError(f"--max-frame must be at least {MIN_MAX_FRAME} bytes (a handshake "
                             f"message and a file chunk must fit), not {self.max_frame}")
        if not 0 < self.store_share <= 1:
            raise UsageError(f"--store-share must be a fraction in (0, 1], not {self.store_share}")
        if not 0 <= self.hs_reserve < 1:
            raise UsageError(f"--hs-reserve must be a fraction in [0, 1), not {self.hs_reserve}")

    @property
    def share_bytes(self) -> int:
        """Bytes one name, address or recipient may have waiting (``store_share``)."""
        return int(self.store_bytes * self.store_share)

    @property
    def hs_reserve_bytes(self) -> int:
        """Bytes of the store only handshake messages may use (``hs_reserve``)."""
        return int(self.store_bytes * self.hs_reserve)

    def clamp_ttl(self, ttl: int) -> int:
        # Comparisons, not min(max()): this runs once per message.
        if ttl < self.ttl_min:
            return self.ttl_min
        return ttl if ttl <= self.ttl_max else self.ttl_max

    def limits_table(self) -> dict[str, Any]:
        """The limits a client may want to know, sent in ``welcome``."""
        return {
            "max_frame": self.max_frame,
            "ttl_min": self.ttl_min, "ttl_max": self.ttl_max, "ttl_default": self.ttl_default,
            "heartbeat": self.heartbeat, "mailbox_messages": self.mailbox_messages,
            "mailbox_bytes": self.mailbox_bytes,
            "rate_messages": self.rate_messages, "burst_messages": self.burst_messages,
            "rate_bytes": self.rate_bytes, "burst_bytes": self.burst_bytes,
        }
