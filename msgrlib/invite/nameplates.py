"""The relay's nameplate table, sans-I/O: short numbers that route an invite's two sides.

Ready for the relay to wire (it holds no secret and imports no crypto). As the issue asks: the
relay allocates a free number to the inviter, holds it for ``ttl`` seconds, and frees it when
the second side joins (from then on the two are routed by their names, which :meth:`join`
returns to the relay so it can tell each side the other's) or when it lapses. Numbers are the
smallest free ones, so codes stay short to read aloud; the secret is in the words, which the
relay never sees.

Errors (``remote`` is false: they answer a client's request)::

    MsgrError
    └── NameplateError       code: no_nameplate, own_nameplate, too_many_nameplates,
                             nameplates_full
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from msgrlib.errors import LocalError

#: Long enough to read a code aloud and type it, short enough that an unused one soon frees.
DEFAULT_TTL = 600.0
#: Pending invites per inviting name: a few at once is normal, thousands is squatting.
DEFAULT_MAX_PER_OWNER = 4
#: Pending invites per relay: bounds memory and keeps numbers at most 5 digits.
DEFAULT_MAX_NAMEPLATES = 10_000


class NameplateError(LocalError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Plate:
    number: int
    owner: str
    expires: float


class Nameplates:
    """Pending invites. Every method takes ``now`` (seconds, monotonic) and first forgets
    the lapsed ones."""

    def __init__(self, *, ttl: float = DEFAULT_TTL, max_per_owner: int = DEFAULT_MAX_PER_OWNER,
                 max_nameplates: int = DEFAULT_MAX_NAMEPLATES) -> None:
        self.ttl = ttl
        self.max_per_owner = max_per_owner
        self.max_nameplates = max_nameplates
        self._plates: dict[int, _Plate] = {}
        self._expiry: list[tuple[float, int]] = []  # heap; stale entries skipped
        self._stale = 0  # entries in _expiry whose nameplate was freed before it lapsed
        self._free: list[int] = []                  # heap of freed numbers below _next
        self._next = 1
        self._per_owner: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._plates)

    def allocate(self, owner: str, now: float) -> tuple[int, float]:
        """A new nameplate for ``owner``: ``(number, expires_at)``."""
        self.expire(now)
        if self._per_owner.get(owner, 0) >= self.max_per_owner:
            raise NameplateError("too_many_nameplates",
                                 f"at most {self.max_per_owner} invites may wait at once")
        if len(self._plates) >= self.max_nameplates:
            raise NameplateError("nameplates_full", "the relay has too many open invites; "
                                 "try again later")
        if self._free:
            number = heapq.heappop(self._free)
        else:
            number, self._next = self._next, self._next + 1
        plate = _Plate(number, owner, now + self.ttl)
        self._plates[number] = plate
        self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
        heapq.heappush(self._expiry, (plate.expires, number))
        return number, plate.expires

    def join(self, number: int, joiner: str, now: float) -> str:
        """The second side arrives: the nameplate is freed and its owner's name returned
        (the relay then tells each side the other's name). Raises :class:`NameplateError`
        for an unknown or lapsed number (``no_nameplate``: also what a second joiner gets,
        so a number cannot be probed) or the owner's own name (``own_nameplate``)."""
        self.expire(now)
        plate = self._plates.get(number) if type(number) is int else None
        if plate is None:
            raise NameplateError("no_nameplate", "no invite with that number is waiting; it "
                                 "was used, cancelled or has expired")
        if plate.owner == joiner:
            raise NameplateError("own_nameplate", "that is your own invite")
        self._release(number)
        return plate.owner

    def cancel(self, number: int, owner: str, now: float) -> bool:
        """The inviter gives up (or disconnects): free it. False if it was not theirs."""
        self.expire(now)
        plate = self._plates.get(number)
        if plate is None or plate.owner != owner:
            return False
        self._release(number)
        return True

    def count_for(self, owner: str) -> int:
        """How many nameplates ``owner`` holds (O(1): the relay asks at every disconnect)."""
        return self._per_owner.get(owner, 0)

    def cancel_all(self, owner: str, now: float) -> list[int]:
        """Free every nameplate of ``owner`` (their connection ended); returns the numbers."""
        self.expire(now)
        numbers = [n for n, p in self._plates.items() if p.owner == owner]
        for number in numbers:
            self._release(number)
        return numbers

    def expire(self, now: float) -> list[tuple[int, str]]:
        """Forget lapsed nameplates; returns ``(number, owner)`` of each, to tell the owner."""
        lapsed = []
        while self._expiry and self._expiry[0][0] <= now:
            expires, number = heapq.heappop(self._expiry)
            plate = self._plates.get(number)
            if plate is not None and plate.expires == expires:
                lapsed.append((number, plate.owner))
                self._release(number, lapsed=True)
            else:
                self._stale -= 1
        return lapsed

    def next_expiry(self) -> float | None:
        """When the next nameplate lapses (for the relay's timer), or ``None``."""
        while self._expiry:
            expires, number = self._expiry[0]
            plate = self._plates.get(number)
            if plate is not None and plate.expires == expires:
                return expires
            heapq.heappop(self._expiry)  # a released nameplate's entry
            self._stale -= 1
        return None

    def _release(self, number: int, *, lapsed: bool = False) -> None:
        plate = self._plates.pop(number)
        if not lapsed:
            # Its expiry entry stays behind in the heap. Allocate and cancel in a loop
            # would grow the heap for a whole TTL (millions of entries from one address
            # at the message rate): once stale entries outnumber live ones, rebuild it
            # (O(live), so amortized O(1) per release).
            self._stale += 1
            if self._stale > len(self._plates) + 64:
                self._expiry = [(p.expires, n) for n, p in self._plates.items()]
                heapq.heapify(self._expiry)
                self._stale = 0
        left = self._per_owner[plate.owner] - 1
        if left:
            self._per_owner[plate.owner] = left
        else:
            del self._per_owner[plate.owner]
        if self._plates:
            heapq.heappush(self._free, number)
        else:  # nothing open: numbers start again from 1
            self._free, self._next = [], 1


__all__ = ["DEFAULT_MAX_NAMEPLATES", "DEFAULT_MAX_PER_OWNER", "DEFAULT_TTL", "NameplateError",
           "Nameplates"]
