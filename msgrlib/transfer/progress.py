"""Progress for people (bytes, rate, time left) and for scripts (``--json`` events).

Pure: the caller passes ``now`` (``time.monotonic()``); nothing is printed here.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from msgrlib.transfer.machine import Accepted, Completed, Declined, Event, Failed, Progress

#: The rate is measured over the last few seconds, so "time left" follows a changing link
#: without jumping at every chunk.
DEFAULT_RATE_WINDOW = 5.0

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``; whole bytes below 1 KiB."""
    value = float(n)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1 min 15 s"``; ``3700`` -> ``"1 h 1 min"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


class ProgressMeter:
    """Bytes done out of ``total``, the recent rate and the time left."""

    def __init__(self, total: int, now: float, *,
                 rate_window: float = DEFAULT_RATE_WINDOW) -> None:
        self.total = total
        self.done = 0
        self.started = now
        self._window = rate_window
        self._samples: deque[tuple[float, int]] = deque([(now, 0)])

    def update(self, done: int, now: float) -> None:
        self.done = done
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()

    @property
    def rate(self) -> float:
        """Bytes per second over the last ``rate_window`` seconds (0 until measurable)."""
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, or ``None`` while the rate is unknown."""
        rate = self.rate
        if self.done >= self.total:
            return 0.0
        return (self.total - self.done) / rate if rate > 0 else None

    def line(self) -> str:
        """``"12.0 MiB of 100.0 MiB, 8.0 MiB/s, 11 s left"``: one terminal line."""
        parts = [f"{format_bytes(self.done)} of {format_bytes(self.total)}"]
        if self.rate > 0:
            parts.append(f"{format_bytes(int(self.rate))}/s")
        eta = self.eta
        if eta is not None and self.done < self.total:
            parts.append(f"{format_duration(eta)} left")
        return ", ".join(parts)


def event_json(event: Event, transfer_id: str, now: float,
               meter: ProgressMeter | None = None) -> dict[str, Any]:
    """One ``--json`` line for a machine event (``json.dumps`` it); ``now`` is its
    ``time``, seconds since the epoch (scripts compare it with other clocks). Peer text (``reason``)
    is carried as is: JSON escapes control characters; a terminal printer must still use
    ``safetext.escape``."""
    out: dict[str, Any] = {"t": transfer_id, "time": now}
    if isinstance(event, Accepted):
        out.update(event="accepted", window=event.window)
    elif isinstance(event, Declined):
        out.update(event="declined", reason=event.reason)
    elif isinstance(event, Progress):
        out.update(event="progress", bytes=event.done_bytes, total=event.total_bytes)
        if meter is not None:
            out.update(rate=round(meter.rate, 1), eta=None if meter.eta is None
                       else round(meter.eta, 1))
    elif isinstance(event, Completed):
        out.update(event="completed")
    elif isinstance(event, Failed):
        out.update(event="failed", code=event.code, reason=event.reason, by_peer=event.by_peer)
    return out


__all__ = ["DEFAULT_RATE_WINDOW", "ProgressMeter", "event_json", "format_bytes",
           "format_duration"]
