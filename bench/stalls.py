"""A stall meter: how long this machine keeps a ready process off its CPU.

``python -m bench.stalls CPU`` pins itself to CPU and asks for real-time
priority (SCHED_FIFO 1). It then wakes every ``PERIOD`` (2 ms) and records
each wake-up that comes more than ``LATE_MS`` late. At real-time priority it
preempts any ordinary process on that CPU at once, so a late wake-up is time
the CPU was taken from every process, the relay included: the hypervisor
running another guest, interrupts. If real-time priority is refused it runs
at normal priority and says so; its late wake-ups then include waiting behind
whatever else runs there.

It costs about 2.5% of the CPU it watches (500 wake-ups per second, about
50 us each on this VM), for every relay measured alike. Output, flushed line by line: ``rt 1`` (or
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
import sys
import time

#: A wake-up later than this (ms) is recorded.
LATE_MS = 1.0
#: How often it wakes (s). Each wake-up costs its core about 50 us on this
#: VM (a timer interrupt and a context switch each way, mostly in the
#: kernel): at 1 ms that was 5% of the relay's core, now 2.5%. A stall of
#: S ms shows as S - 2 to S ms late, so any stall over 4 ms passes the 2 ms
#: limit bench/run.py re-measures at.
PERIOD = 0.002
#: stdin is looked at every this many wake-ups (one read system call less
#: per wake-up).
STDIN_EVERY = 100


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
    os.set_blocking(stdin, False)
    out = sys.stdout
    out.write(f"rt {int(rt)}\n")
    out.flush()
    late = LATE_MS / 1000
    monotonic, sleep = time.monotonic, time.sleep
    due = monotonic() + PERIOD
    count = 0
    while True:
        delay = due - monotonic()
        if delay > 0:
            sleep(delay)
        now = monotonic()
        if now - due > late:
            out.write(f"{due:.4f} {(now - due) * 1000:.2f}\n")
            out.flush()
        due = max(due + PERIOD, now)  # after a stall, no burst of catch-up wake-ups
        count += 1
        if count >= STDIN_EVERY:
            count = 0
            try:
                if not os.read(stdin, 4096):
                    break  # stdin closed: done
            except BlockingIOError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
