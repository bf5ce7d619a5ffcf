"""Staying connected: long-lived chats through relay restarts and name churn.

Runs, on loopback only and bounded in time:

* a relay (``msgr.py serve``) on a fixed free port, restarted ``--restarts``
  times (SIGTERM, a few seconds down, started again on the same port);
* two long-lived line-mode clients, alice and bob (``msgr.py chat --json``),
  each sending a numbered message every ``--interval`` seconds to the other;
* a third client, carol, started and ended again and again: each run sends
  one line to a peer that never comes, and must get its name every time.

At the end it waits out the TTL, then checks, and exits non-zero unless all hold:

* every message was shown exactly once, or reported to its sender as not
  delivered; none was shown twice, none lost silently;
* none was shown after its sender was told it was not delivered;
* after each restart both long-lived clients had a message delivered within
  ``--recover`` seconds (default 10) of the relay being back;
* carol was never refused her name (exit 1 is expected only while the relay is down).

Usage: ``python -m tools.churn [--minutes 10] [--restarts 2]`` (``make churn``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSGR = os.path.join(ROOT, "msgr.py")
PASSCODE = "churn test passcode, long enough"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Side:
    """One long-lived client: what it sent, what it was told, what it showed."""

    name: str
    proc: subprocess.Popen[str]
    sent: dict[int, float] = field(default_factory=dict)         # n -> time sent
    delivered: dict[int, float] = field(default_factory=dict)    # n -> time reported
    undelivered: dict[int, tuple[float, str]] = field(default_factory=dict)
    shown: dict[str, list[float]] = field(default_factory=dict)  # text -> times shown
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            try:
                obj: dict[str, Any] = json.loads(line)
            except ValueError:
                self.errors.append(f"not JSON on stdout: {line!r}")
                continue
            with self.lock:
                kind = obj.get("type")
                if kind == "message":
                    self.shown.setdefault(str(obj.get("text")), []).append(now)
                elif kind == "delivered":
                    self.delivered[int(obj["n"])] = now
                elif kind == "undelivered":
                    self.undelivered[int(obj["n"])] = (now, str(obj.get("reason")))

    def drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "Traceback" in line:
                self.errors.append(f"{self.name} stderr: {line.strip()}")

    def send(self, n: int) -> None:
        assert self.proc.stdin is not None
        with self.lock:
            self.sent[n] = time.monotonic()
        self.proc.stdin.write(f"{self.name}-{n}\n")
        self.proc.stdin.flush()


class Relay:
    def __init__(self, port: int, env: dict[str, str]) -> None:
        self.port, self.env = port, env
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> float:
        self.proc = subprocess.Popen(
            [sys.executable, MSGR, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
            env=self.env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening" not in line:
            raise SystemExit(f"churn: the relay did not start: {line!r}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        return time.monotonic()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def chat(port: int, user: str, peer: str, env: dict[str, str], *extra: str,
         stdin: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, MSGR, "chat", "--server", f"127.0.0.1:{port}", "--user", user,
         "--peer", peer, *extra],
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**env, "MSGR_PASSCODE": PASSCODE})


def churner(port: int, env: dict[str, str], stop: threading.Event, codes: list[int],
            name_lost: list[str]) -> None:
    while not stop.is_set():
        proc = chat(port, "carol", "nobody-here", env, "--json", "--wait", "1")
        try:
            _, err = proc.communicate("hello from carol\n", timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        codes.append(proc.returncode)
        # Exit 1 is expected while the relay is down (connection refused);
        # a refusal of the name itself never is.
        if proc.returncode == 1 and ("name_owned" in err or "owned by" in err):
            name_lost.append(err.strip().splitlines()[-1])
        stop.wait(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.churn", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to chat")
    parser.add_argument("--restarts", type=int, default=2, help="relay restarts, evenly spaced")
    parser.add_argument("--down", type=float, default=3.0, help="seconds the relay stays down")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between messages")
    parser.add_argument("--recover", type=float, default=10.0,
                        help="seconds allowed to be back in session after a restart")
    parser.add_argument("--ttl", type=int, default=30, help="message TTL")
    args = parser.parse_args(argv)

    home = tempfile.mkdtemp(prefix="msgr-churn-")
    env = {**os.environ, "HOME": home, "XDG_STATE_HOME": os.path.join(home, "state"),
           "XDG_CONFIG_HOME": os.path.join(home, "config")}
    port = free_port()
    relay = Relay(port, env)
    relay.start()
    sides = [Side(name, chat(port, name, peer, env, "--json", "--ttl", str(args.ttl)))
             for name, peer in (("alice", "bob"), ("bob", "alice"))]
    for side in sides:
        threading.Thread(target=side.read, daemon=True).start()
        threading.Thread(target=side.drain_stderr, daemon=True).start()
    stop = threading.Event()
    codes: list[int] = []
    name_lost: list[str] = []
    threading.Thread(target=churner, args=(port, env, stop, codes, name_lost),
                     daemon=True).start()

    duration = args.minutes * 60
    restarts_at = [duration * (i + 1) / (args.restarts + 1) for i in range(args.restarts)]
    back_at: list[float] = []
    start = time.monotonic()
    n = 0
    print(f"churn: relay on 127.0.0.1:{port}, {args.minutes:g} min, restarts at "
          f"{', '.join(f'{t:.0f} s' for t in restarts_at) or 'none'}", flush=True)
    while (elapsed := time.monotonic() - start) < duration:
        if restarts_at and elapsed >= restarts_at[0]:
            restarts_at.pop(0)
            relay.stop()
            time.sleep(args.down)
            back_at.append(relay.start())
            print(f"churn: relay restarted at {elapsed:.0f} s", flush=True)
        n += 1
        for side in sides:
            side.send(n)
        time.sleep(args.interval)

    stop.set()
    for side in sides:
        assert side.proc.stdin is not None
        side.proc.stdin.close()
    deadline = time.monotonic() + args.ttl + 15
    for side in sides:
        try:
            side.proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            side.proc.kill()
            side.errors.append(f"{side.name} did not exit after end of input")
    relay.stop()
    return report(sides, back_at, codes, name_lost, args.recover)


def report(sides: list[Side], back_at: list[float], codes: list[int], name_lost: list[str],
           recover: float) -> int:
    failures: list[str] = []
    by_name = {side.name: side for side in sides}
    for side in sides:
        other = by_name["bob" if side.name == "alice" else "alice"]
        twice = lost = late = false_report = 0
        for n in side.sent:
            shown = other.shown.get(f"{side.name}-{n}", [])
            verdict = side.undelivered.get(n)
            if len(shown) > 1:
                twice += 1
            if not shown and verdict is None:
                lost += 1
            if shown and verdict is not None:
                if shown[0] > verdict[0]:
                    late += 1
                else:
                    false_report += 1
        print(f"churn: {side.name}: {len(side.sent)} sent, {len(side.delivered)} confirmed, "
              f"{len(side.undelivered)} reported not delivered ({false_report} of them shown "
              f"before the report), {twice} shown twice, {lost} lost silently, {late} shown "
              f"after 'not delivered'", flush=True)
        if twice or lost or late:
            failures.append(f"{side.name}: {twice} twice, {lost} lost, {late} late")
        for i, back in enumerate(back_at, 1):
            after = [t for t in side.delivered.values() if t >= back]
            took = min(after) - back if after else float("inf")
            print(f"churn: {side.name}: restart {i}: a message confirmed {took:.1f} s after the "
                  "relay was back", flush=True)
            if took > recover:
                failures.append(f"{side.name}: restart {i}: no session within {recover:g} s")
        failures.extend(side.errors)
    print(f"churn: carol: {len(codes)} runs, exit codes "
          f"{ {c: codes.count(c) for c in sorted(set(codes))} }", flush=True)
    for line in name_lost:
        failures.append(f"carol lost her name: {line}")
    for failure in failures:
        print(f"churn: FAIL {failure}", flush=True)
    print("churn: " + ("FAILED" if failures else "passed"), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
