"""Token buckets, used by both sides: the relay enforces its rates with them,
the client paces its sends under the rates the relay advertised.

Sans-I/O: the caller passes the time (seconds on any monotonic clock).
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """A token bucket: ``rate`` tokens per second up to ``burst``."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def level(self, now: float) -> float:
        """The tokens there are at ``now``, without taking any."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        return tokens if tokens < self.burst else self.burst

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if there are that many; False (nothing taken) if not."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens < amount:
            self.tokens = tokens
            return False
        self.tokens = tokens - amount
        return True
