"""File transfer: msgr beside magic-wormhole, both through relays started here (issue 16).

    python -m bench.transfer [--mib 100] [--runs 3] [--wormhole-venv DIR]

msgr: ``tools.transfer_speed`` (``msgr send`` / ``msgr receive`` as processes, through a TLS
relay at its default limits). magic-wormhole: its mailbox server and transit relay started
locally (``twist wormhole-mailbox``, ``twist transitrelay``), then ``wormhole send
--no-listen`` (so the bytes go through the transit relay, as msgr's go through its relay)
and ``wormhole receive --accept-file``, from a separate virtual environment made by
``make bench-transfer`` from requirements-bench.txt (development only: never installed by
CI or beside msgr's own). Without it, only msgr's rows are printed.

Each run reports MB/s from the first byte written to the end, and the time from starting
the sender and the receiver to the first byte of the file written (the receiver starts as
soon as the sender printed its code, and accepts at once). A hand measurement: nothing is
asserted about speed; say the machine's load beside the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from msgrlib.relay.config import RelayConfig
from tools import transfer_speed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VENV = os.path.join(ROOT, ".venv-wormhole")
CODE = "7-crossover-clockwork"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout:g} s")


def _first_bytes(directory: str) -> bool:
    for entry in os.scandir(directory):
        try:
            if entry.is_file() and entry.stat().st_size > 0:
                return True
        except FileNotFoundError:
            continue  # renamed meanwhile
    return False


def wormhole_run(venv: str, path: str, size: int, tmp: str) -> dict[str, float]:
    """One ``wormhole send`` / ``receive`` of ``path`` through a local mailbox and transit
    relay; the receiver's directory is polled every 2 ms for the first byte."""
    bin_dir = os.path.join(venv, "bin")
    mailbox, transit = _free_port(), _free_port()
    servers = [
        subprocess.Popen([os.path.join(bin_dir, "twist"), "wormhole-mailbox",
                          f"--port=tcp:{mailbox}:interface=127.0.0.1"],
                         cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([os.path.join(bin_dir, "twist"), "transitrelay",
                          f"--port=tcp:{transit}:interface=127.0.0.1"],
                         cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    out = tempfile.mkdtemp(dir=tmp)
    try:
        _wait_port(mailbox)
        _wait_port(transit)
        common = [os.path.join(bin_dir, "wormhole"), "--relay-url",
                  f"ws://127.0.0.1:{mailbox}/v1", "--transit-helper",
                  f"tcp:127.0.0.1:{transit}"]
        t_send = time.monotonic()
        sender = subprocess.Popen([*common, "send", "--no-listen", "--hide-progress",
                                   "--code", CODE, path], cwd=tmp,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert sender.stderr is not None
        while True:  # the code is printed once the mailbox has the nameplate
            line = sender.stderr.readline()
            if not line:
                raise SystemExit("wormhole send ended before printing its code")
            if CODE in line:
                break
        t_receive = time.monotonic()
        receiver = subprocess.Popen([*common, "receive", "--accept-file", "--hide-progress",
                                     "-o", out, CODE], cwd=tmp, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = None
        while receiver.poll() is None:
            if first is None and _first_bytes(out):
                first = time.monotonic()
            time.sleep(0.002)
        done = time.monotonic()
        sender.wait(timeout=30)
        if receiver.returncode != 0 or sender.returncode != 0:
            raise SystemExit(f"wormhole failed: send {sender.returncode}, receive "
                             f"{receiver.returncode}")
        got = os.path.join(out, os.path.basename(path))
        if os.path.getsize(got) != size:
            raise SystemExit("wormhole's copy has the wrong size")
        first = first or done
        return {"seconds": done - first, "mb_per_s": size / max(done - first, 1e-6) / 1e6,
                "send_to_first_byte_s": first - t_send,
                "receive_to_first_byte_s": first - t_receive}
    finally:
        for proc in servers:
            proc.terminate()
        for proc in servers:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


def msgr_run(mib: float) -> dict[str, Any]:
    return asyncio.run(transfer_speed.measure(mib, RelayConfig()))


def _row(name: str, runs: list[dict[str, Any]]) -> str:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)
    return (f"| {name} | {len(runs)} | {med('mb_per_s'):.1f} | "
            f"{med('send_to_first_byte_s'):.2f} | {med('receive_to_first_byte_s'):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=100.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--wormhole-venv", default=os.environ.get("WORMHOLE_VENV", DEFAULT_VENV))
    args = parser.parse_args()
    size = int(args.mib * 1024 * 1024)
    args.wormhole_venv = os.path.abspath(args.wormhole_venv)  # its processes run elsewhere
    have_wormhole = os.path.exists(os.path.join(args.wormhole_venv, "bin", "wormhole"))
    msgr: list[dict[str, Any]] = []
    wormhole: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "payload.bin")
        with open(path, "wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 1 << 20))
                f.write(block)
                left -= len(block)
        for i in range(args.runs):  # alternated, so a busy moment hits both alike
            msgr.append(msgr_run(args.mib))
            print(f"msgr run {i + 1}: {msgr[-1]}", file=sys.stderr)
            if have_wormhole:
                wormhole.append(wormhole_run(args.wormhole_venv, path, size, tmp))
                print(f"wormhole run {i + 1}: {wormhole[-1]}", file=sys.stderr)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{args.mib:g} MiB, medians of {args.runs}; load average at the end {load:.1f} "
          f"on {os.cpu_count()} CPUs\n")
    print("| | runs | MB/s (first byte to end) | send to first byte (s) | "
          "receive to first byte (s) |")
    print("|---|---|---|---|---|")
    print(_row("msgr, relay at its defaults, TLS", msgr))
    if wormhole:
        print(_row("magic-wormhole 0.24 (--no-listen: via its transit relay)", wormhole))
    else:
        print(f"(magic-wormhole not measured: no {escape_path(args.wormhole_venv)}/bin/"
              "wormhole; `make bench-transfer` makes it)")


def escape_path(path: str) -> str:
    return re.sub(r"[^\w./-]", "?", path)


if __name__ == "__main__":
    main()
