"""A stall meter: how long this machine keeps a ready process off its CPU.

``python -m bench.stalls CPU`` pins itself to CPU and asks for real-time
priority (SCHED_FIFO 1). It then wakes every millisecond and records each
wake-up that comes more than ``LATE_MS`` late. At real-time priority it
preempts any ordinary process on that CPU at once, so a late wake-up is time
the CPU was taken from every process, the relay included: the hypervisor
running another guest, interrupts. If real-time priority is refused it runs
at normal priority and says so; its late wake-ups then include waiting behind
whatever else runs there.

It costs about 1% of the CPU it watches (1,000 wake-ups per second), for
every relay measured alike. Output, flushed line by line: ``rt 1`` (or
``rt 0``), then ``MONOTONIC_S LATE_MS`` per late wake-up. It stops when its
stdin closes.

Why: on a shared virtual machine the p99 of a latency window can be set by
stalls of several milliseconds (up to 19 ms seen) that no relay causes or
can avoid. The benchmark counts them per window, shows them beside the
latencies, and measures a latency window again when one was longer than the
latency target (bench/run.py, STALL_LIMIT_MS).
"""

from __future__ import annotations

import os
import select
import sys
import time

#: A wake-up later than this (ms) is recorded.
LATE_MS = 1.0
PERIOD = 0.001


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cpu = int(args[0])
    try:
        os.sched_setaffinity(0, {cpu})
    except (OSError, AttributeError):
        pass
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        rt = True
    except (OSError, AttributeError):
        rt = False
    stdin = sys.stdin.fileno()
    out = sys.stdout
    out.write(f"rt {int(rt)}\n")
    out.flush()
    due = time.monotonic() + PERIOD
    while True:
        ready, _, _ = select.select([stdin], [], [], max(0.0, due - time.monotonic()))
        now = time.monotonic()
        if ready and not os.read(stdin, 4096):
            break  # stdin closed: report
        if now - due > LATE_MS / 1000:
            out.write(f"{due:.4f} {(now - due) * 1000:.2f}\n")
            out.flush()
        due = max(due + PERIOD, now)  # after a stall, no burst of catch-up wake-ups
    return 0


if __name__ == "__main__":
    sys.exit(main())
