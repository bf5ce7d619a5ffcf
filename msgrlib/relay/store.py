"""The relay's message store: hold, hand out, acknowledge, expire.

The relay talks to the store only through :class:`MessageStore`, so another
backend can replace the in-memory one without touching connection code.

:class:`MemoryStore` keeps ciphertext in memory only. Expiry is driven by a
``heapq`` keyed on expiry time with *lazy deletion*: acknowledging a message
removes it from its mailbox at once and leaves a dead heap entry behind, which
is dropped when it reaches the top of the heap. No operation ever walks all
stored messages: ``pop_expired`` costs O(k log n) for k expired messages, and
``next_expiry`` is O(1) once dead entries are popped. Dead entries cannot pile
up: once they outnumber live ones twice over (plus :data:`COMPACT_SLACK`),
``ack`` rebuilds the heap without them, an O(n) pass paid for by the 2n/3 or
more acks since the previous one (O(1) amortized per ack; the heap stays
under three entries per live message). Without it a busy relay whose
clients read everything would keep one dead entry per message for up to 60 s:
at 20,000 messages/s, over a million entries and their ``Held`` objects
(hundreds of MB), then a pause of a second or more when they reach the top.

A heap entry names its message, ``(expires_at, id, recipient)``, and does not
hold it: an acknowledged message is freed at once, and an entry made of a
float, an int and a str is a tuple the garbage collector stops tracking. When
entries held the ``Held`` itself, every message outlived its acknowledgement
and reached the collector's oldest generation, two objects per message, so
full collections (over every object of every connection) came often enough
to set the relay's p99 latency: 30-190 ms at 5,000 msg/s over 1,000 TLS
pairs in bench/, against 4-7 ms with the collector off; now both are alike.

Store errors::

    MsgrError
    └── StoreError            the message was refused; nothing was stored
        ├── MailboxFull       the recipient has too many messages waiting
        ├── ShareFull         the sender's name or address holds its whole share
        └── StoreFull         the relay's memory budget for ciphertext is spent

Shares: with ``share_bytes``, the messages one sender name, one origin (the
sender's address) or one recipient has waiting may hold at most that many
bytes, so no single party can fill the store. With ``hs_reserve_bytes``,
ordinary messages stop that far short of ``store_bytes``: the rest is kept for
handshake messages (kind ``"hs"``), so a store full of messages never stops two
people from starting a session.

Time is a parameter (``now``), never read here, so tests drive the clock.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections.abc import Iterator
from typing import NamedTuple, Protocol

from msgrlib.errors import LocalError

#: Messages one recipient may have waiting. A person reading a chat does not
#: fall 1,000 messages behind; a flood does.
DEFAULT_MAILBOX_MESSAGES = 1000
#: Ciphertext bytes one recipient may have waiting (4 MiB).
DEFAULT_MAILBOX_BYTES = 4 * 1024 * 1024
#: Ciphertext bytes the whole relay may hold (256 MiB): the memory budget.
DEFAULT_STORE_BYTES = 256 * 1024 * 1024
#: Fixed bookkeeping cost charged per message on top of its body, so that
#: millions of empty messages cannot slip under the byte budget.
OVERHEAD_BYTES = 200
#: Dead heap entries allowed beyond twice the number of live ones before
#: ``ack`` compacts the heap; keeps tiny heaps from being rebuilt every few acks.
COMPACT_SLACK = 1024


#: Relay ids stay at most 2^53 - 1, so JSON numbers are exact in every language
#: (PROTOCOL.md 3.4).
MAX_ID = 2**53 - 1

class StoreError(LocalError):
    """The store refused a message; the sender is told, nothing was kept."""

    code = "store"


class MailboxFull(StoreError):
    code = "mailbox_full"


class ShareFull(StoreError):
    code = "store_share"


class StoreFull(StoreError):
    code = "relay_full"


class Held(NamedTuple):
    """One message waiting at the relay. ``body`` is opaque ciphertext.

    The store keeps each message as ``tuple(held)``, an exact tuple of str,
    int and float, and hands out ``Held`` views of it. The garbage collector
    stops tracking such a tuple the first time it sees it; an instance of a
    class (even with ``__slots__``) or of a NamedTuple stays tracked for
    life. That matters because messages are made in bursts (one socket read
    can carry hundreds of sends) and live until acknowledged: tracked, each
    burst triggered a young collection that promoted the messages in flight,
    and the promotions triggered full collections, 30-48 ms each with 2,000
    TLS connections, about once a second under load, freeing nothing.
    """

    id: int
    sender: str
    recipient: str
    body: str
    kind: str
    ttl: int
    expires_at: float    # monotonic seconds: drives expiry
    expires_wall: float  # Unix time: shown to clients
    size: int            # what it counts against the limits
    origin: str = ""     # the sender's address key: what per-address shares count

    def __repr__(self) -> str:  # never the body
        return f"<Held id={self.id} {self.sender}->{self.recipient} ttl={self.ttl}>"


# Fields of the stored tuple the store itself reads.
_ID, _SENDER, _RECIPIENT, _SIZE, _ORIGIN = 0, 1, 2, 8, 9
# A Held view of a stored tuple, made in C (Held._make and Held() run Python).
_view = functools.partial(tuple.__new__, Held)


class MessageStore(Protocol):
    """What the relay needs from a store. Bodies are opaque strings."""

    def add(self, sender: str, recipient: str, body: str, kind: str, ttl: int,
            now: float, wall: float, origin: str = "") -> Held:
        """Hold a message until ``now + ttl``; raise StoreError if refused.

        ``origin`` names the sender's address for per-address shares."""

    def waiting(self, recipient: str) -> Iterator[Held]:
        """Messages held for ``recipient``, oldest first."""

    def ack(self, recipient: str, msg_id: int) -> Held | None:
        """Delete a message on delivery; None if unknown, expired or not theirs."""

    def pop_expired(self, now: float) -> list[Held]:
        """Delete and return every message whose expiry is <= ``now``."""

    def next_expiry(self) -> float | None:
        """Earliest expiry among held messages, or None when empty."""

    def count_for(self, recipient: str) -> int:
        """How many messages wait for ``recipient``."""

    def __len__(self) -> int:
        """Messages held."""


class MemoryStore:
    """In-memory :class:`MessageStore` with a TTL heap and lazy deletion."""

    def __init__(self, *, mailbox_messages: int = DEFAULT_MAILBOX_MESSAGES,
                 mailbox_bytes: int = DEFAULT_MAILBOX_BYTES,
                 store_bytes: int = DEFAULT_STORE_BYTES, first_id: int = 1,
                 share_bytes: int | None = None, hs_reserve_bytes: int = 0) -> None:
        self.mailbox_messages = mailbox_messages
        self.mailbox_bytes = (mailbox_bytes if share_bytes is None
                              else min(mailbox_bytes, share_bytes))
        self.store_bytes = store_bytes
        self.share_bytes = share_bytes
        self.hs_reserve_bytes = hs_reserve_bytes
        #: Bytes held per sender name and per origin (only with share_bytes).
        self.by_sender: dict[str, int] = {}
        self.by_origin: dict[str, int] = {}
        # Ids must not repeat across relay restarts: clients drop ids they
        # have seen, so a restarted relay counting from 1 again would have its
        # messages silently discarded. The relay passes a random first_id.
        self._ids = itertools.count(first_id)
        # recipient -> {id: tuple(Held)}; dicts keep insertion order = arrival order.
        self._boxes: dict[str, dict[int, tuple]] = {}
        self._box_bytes: dict[str, int] = {}
        self._heap: list[tuple[float, int, str]] = []  # (expires_at, id, recipient)
        self._count = 0
        self._dead = 0  # heap entries of acknowledged messages
        self.bytes = 0

    def __len__(self) -> int:
        return self._count

    @property
    def heap_size(self) -> int:
        """Heap entries, live and dead (for tests and benchmarks)."""
        return len(self._heap)

    def add(self, sender: str, recipient: str, body: str, kind: str, ttl: int,
            now: float, wall: float, origin: str = "") -> Held:
        box = self._boxes.get(recipient)
        size = len(body) + OVERHEAD_BYTES
        count = len(box) if box is not None else 0
        if count >= self.mailbox_messages:
            raise MailboxFull(
                f"{recipient} has {count} messages waiting, the most this relay "
                "holds for one person; try again after they read some")
        waiting = self._box_bytes[recipient] if box is not None else 0
        if waiting + size > self.mailbox_bytes:
            raise MailboxFull(
                f"{recipient} has {waiting} bytes waiting; this message would pass "
                f"the {self.mailbox_bytes}-byte mailbox limit")
        share = self.share_bytes
        if share is not None:
            held = self.by_sender.get(sender, 0)
            if held + size > share:
                raise ShareFull(
                    f"messages from {sender} already hold {held} bytes at this relay, the "
                    f"most one name may hold ({share} bytes); try again as they are read")
            held = self.by_origin.get(origin, 0)
            if held + size > share:
                raise ShareFull(
                    f"messages from your address already hold {held} bytes at this relay, "
                    f"the most one address may hold ({share} bytes); try again as they "
                    "are read")
        # Handshakes may use the whole store; other messages leave the reserve.
        limit = self.store_bytes if kind == "hs" else self.store_bytes - self.hs_reserve_bytes
        if self.bytes + size > limit:
            raise StoreFull("the relay is full (memory budget reached); try again shortly")
        msg_id = next(self._ids)
        if msg_id > MAX_ID:  # 2^53 - 2^48 messages later: start low again
            self._ids = itertools.count(1)
            msg_id = next(self._ids)
        expires_at = now + ttl
        # An exact tuple, untracked by the garbage collector: see Held.
        record = (msg_id, sender, recipient, body, kind, ttl, expires_at, wall + ttl, size,
                  origin)
        if share is not None:
            self.by_sender[sender] = self.by_sender.get(sender, 0) + size
            self.by_origin[origin] = self.by_origin.get(origin, 0) + size
        if box is None:
            box = self._boxes[recipient] = {}
            self._box_bytes[recipient] = 0
        box[msg_id] = record
        self._box_bytes[recipient] += size
        self.bytes += size
        self._count += 1
        heapq.heappush(self._heap, (expires_at, msg_id, recipient))
        return _view(record)

    def waiting(self, recipient: str) -> Iterator[Held]:
        box = self._boxes.get(recipient)
        return iter([_view(record) for record in box.values()]) if box else iter(())

    def count_for(self, recipient: str) -> int:
        box = self._boxes.get(recipient)
        return len(box) if box else 0

    def _forget(self, record: tuple) -> None:
        recipient = record[_RECIPIENT]
        box = self._boxes[recipient]
        del box[record[_ID]]  # the last reference: the ciphertext is freed now
        size = record[_SIZE]
        if box:
            self._box_bytes[recipient] -= size
        else:
            del self._boxes[recipient]
            del self._box_bytes[recipient]
        self.bytes -= size
        self._count -= 1
        if self.share_bytes is not None:
            for table, key in ((self.by_sender, record[_SENDER]),
                               (self.by_origin, record[_ORIGIN])):
                left = table[key] - size
                if left:
                    table[key] = left
                else:
                    del table[key]

    def ack(self, recipient: str, msg_id: int) -> Held | None:
        box = self._boxes.get(recipient)
        record = box.get(msg_id) if box else None
        if record is None:
            return None
        self._forget(record)  # its heap entry is now dead; popped at its expiry
        self._dead += 1
        if self._dead > 2 * self._count + COMPACT_SLACK:
            self._compact()
        return _view(record)

    def _compact(self) -> None:
        """Rebuild the heap from its live entries (see the module docstring)."""
        boxes = self._boxes
        self._heap = [entry for entry in self._heap
                      if (box := boxes.get(entry[2])) is not None and entry[1] in box]
        heapq.heapify(self._heap)
        self._dead = 0

    def pop_expired(self, now: float) -> list[Held]:
        heap = self._heap
        boxes = self._boxes
        out = []
        while heap and heap[0][0] <= now:
            _, msg_id, recipient = heapq.heappop(heap)
            box = boxes.get(recipient)
            record = box.get(msg_id) if box is not None else None
            if record is not None:  # ids never repeat: still there means still live
                self._forget(record)
                out.append(_view(record))
            else:
                self._dead -= 1
        return out

    def next_expiry(self) -> float | None:
        heap = self._heap
        boxes = self._boxes
        while heap:
            _, msg_id, recipient = heap[0]
            box = boxes.get(recipient)
            if box is not None and msg_id in box:
                return heap[0][0]
            heapq.heappop(heap)  # lazy deletion of acknowledged messages
            self._dead -= 1
        return None
