"""Which received messages to show: once each, in order, before their deadline.

A message is named by its sender's run (``e``, random per client run) and
its number ``n`` in that run (1, 2, 3... in the order they were typed). Per
run, :class:`ReceiveWindow` keeps the highest number shown and the ranges of
lower numbers not seen yet (the gaps), instead of a fixed number of recent
names: however many copies a relay resends, and in whatever order, a number
at or below the high-water mark that is not in a gap was shown already.

What bounds it: a message carries its deadline (time typed plus TTL, inside
the authenticated body) and is refused once the receiver's clock is past it
(:data:`RECEIVE_MARGIN`). Once the latest date among the run's messages
shown, plus the longest TTL (:data:`MAX_TTL`), has passed, no copy of them
can still be shown, and the run is forgotten (the latest date, not the date
of the message at the mark: a sender's clock can step back). The gaps are
kept as ranges (a jump adds one range); at most :data:`MAX_GAPS` ranges per
run are kept, and a number below what was dropped to stay under that is
refused with a notice, since a repeat cannot be ruled out.

Pure logic: times are passed in.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field

#: The longest TTL a relay allows (PROTOCOL.md, ``ttl`` 5..60 s). A message
#: whose deadline is further than this from the time it was typed is
#: malformed.
MAX_TTL = 60
#: Seconds before its deadline (receiver's clock) a message is refused. The
#: sender reports an unconfirmed message as not delivered
#: :data:`VERDICT_DELAY` seconds after the deadline (its own clock); with
#: both, the two clocks may differ by up to CLOCK_TOLERANCE seconds and a
#: message is still never shown after its sender was told it was not
#: delivered.
RECEIVE_MARGIN = 1.0
VERDICT_DELAY = 1.0
CLOCK_TOLERANCE = RECEIVE_MARGIN + VERDICT_DELAY
#: A message dated further than this in the future (receiver's clock) is
#: refused: the clocks are far apart. It also bounds how long a run is kept.
MAX_FUTURE = 120.0
#: Ranges of missing numbers kept per run. Each message that arrives out of
#: order splits at most one range into two, so this is reached only after
#: thousands of messages arrived out of order within one TTL.
MAX_GAPS = 4096
#: Sender runs remembered at once (each expires MAX_TTL after its last
#: message). A peer that restarts more often than this within a minute
#: gets its oldest runs' late messages refused with a notice.
MAX_RUNS = 256


class Verdict(enum.Enum):
    NEW = "new"              # show it
    LATE = "late"            # show it, marked late: a later one was shown first
    SEEN = "seen"            # shown already: drop quietly (and confirm again)
    UNKNOWN = "unknown"      # cannot rule out a repeat: drop with a notice
    EXPIRED = "expired"      # past its deadline: refuse with a notice
    FUTURE = "future"        # dated too far ahead: refuse with a notice


@dataclass
class _Run:
    high: int = 0
    floor: int = 0        # numbers at or below it, not in gaps, are unknown
    gaps: list[list[int]] = field(default_factory=list)  # sorted [lo, hi] ranges
    last_ts: float = 0.0  # the latest sender's time among the messages shown


class ReceiveWindow:
    """Decide, per (run, number), whether a received message is shown."""

    def __init__(self, *, max_gaps: int = MAX_GAPS, max_runs: int = MAX_RUNS) -> None:
        self.max_gaps = max_gaps
        self.max_runs = max_runs
        self._runs: dict[str, _Run] = {}
        self._forgotten_until = 0.0  # runs dropped for space: sent up to this time

    def check(self, run: str, n: int, ts: float, deadline: float, now: float) -> Verdict:
        """What to do with message ``n`` of ``run``, typed at ``ts`` with
        ``deadline`` (sender's Unix times); ``now`` is ours. Changes nothing
        (see :meth:`record`)."""
        self._expire(now)
        state = self._runs.get(run)
        if state is not None and n <= state.high and not self._in_gap(state, n):
            return Verdict.SEEN if n > state.floor else Verdict.UNKNOWN
        if deadline - ts > MAX_TTL or deadline < ts or ts > now + MAX_FUTURE:
            return Verdict.FUTURE
        if now > deadline - RECEIVE_MARGIN:
            return Verdict.EXPIRED
        if state is None:
            if ts <= self._forgotten_until and n > 1:
                return Verdict.UNKNOWN
            return Verdict.NEW
        return Verdict.NEW if n > state.high else Verdict.LATE

    def record(self, run: str, n: int, ts: float) -> None:
        """Message ``n`` of ``run`` was shown."""
        state = self._runs.get(run)
        if state is None:
            if len(self._runs) >= self.max_runs:
                oldest = min(self._runs, key=lambda r: self._runs[r].last_ts)
                self._forgotten_until = max(self._forgotten_until, self._runs[oldest].last_ts)
                del self._runs[oldest]
            state = self._runs[run] = _Run()
        if n > state.high:
            if n > state.high + 1:
                state.gaps.append([state.high + 1, n - 1])
            state.high = n
        else:
            self._fill(state, n)
        # Of every message shown, late ones too: a late one may be dated after
        # the mark (the sender's clock stepped back), and the run must outlive
        # its deadline, or a copy of it would be new again.
        state.last_ts = max(state.last_ts, ts)
        while len(state.gaps) > self.max_gaps:
            state.floor = state.gaps.pop(0)[1]

    def runs(self) -> int:
        return len(self._runs)

    def _in_gap(self, state: _Run, n: int) -> bool:
        i = bisect.bisect_right(state.gaps, [n, float("inf")]) - 1
        return i >= 0 and state.gaps[i][0] <= n <= state.gaps[i][1]

    def _fill(self, state: _Run, n: int) -> None:
        gaps = state.gaps
        i = bisect.bisect_right(gaps, [n, float("inf")]) - 1
        if i < 0 or not gaps[i][0] <= n <= gaps[i][1]:
            return
        lo, hi = gaps[i]
        pieces = [r for r in ([lo, n - 1], [n + 1, hi]) if r[0] <= r[1]]
        gaps[i:i + 1] = pieces

    def _expire(self, now: float) -> None:
        # Nothing of a run can be shown once its latest message's time plus
        # the longest TTL has passed (see the module docstring).
        if not self._runs:
            return
        dead = [r for r, s in self._runs.items() if s.last_ts + MAX_TTL < now - RECEIVE_MARGIN]
        for r in dead:
            del self._runs[r]
