"""Measure one file transfer: ``msgr send`` / ``msgr receive`` through a local TLS relay.

    python -m tools.transfer_speed [--mib 100] [--rate-bytes N --burst-bytes N]
                                   [--rate-messages N --burst-messages N] [--max-frame N]
                                   [--profile DIR]

Starts a relay in this process (TLS, a fresh self-signed certificate, the limits given or
msgr's defaults), writes a random file of ``--mib`` MiB, runs ``msgr.py send`` and
``msgr.py receive`` as processes (pinned with ``--cafile``), and prints the MB/s from the
receiver's first byte written to the end (``mb_per_s``, over ``seconds``), the time from
starting ``msgr receive`` to the end, from starting ``msgr send`` and ``msgr receive`` to
the first byte written (the receiver answers the code and "y" at once: this is connect,
TLS, handshake, offer, accept and the first chunk), and the relay's peak stored bytes
(sampled every 10 ms), after checking the copy is byte-identical. ``clients_cpu_s`` (sender
and receiver, user + system) and ``relay_cpu_s`` (this process: the relay and the sampler)
say what the transfer cost, which a loaded machine changes less than the MB/s.
``--profile DIR`` writes cProfile stats of the three (``sender.prof``, ``receiver.prof``,
``relay.prof``: the relay runs in this process). A hand measurement, not a test: nothing
is asserted about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import resource
import sys
import tempfile
import time

from msgrlib.relay import server
from msgrlib.relay.config import RelayConfig
from msgrlib.tls import contexts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def measure(mib: float, config: RelayConfig, profile: str | None = None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        contexts.ensure_certificate(cert, key)
        path = os.path.join(tmp, "payload.bin")
        size = int(mib * 1024 * 1024)
        with open(path, "wb") as f:
            left = size
            while left:
                block = os.urandom(min(left, 1 << 20))
                f.write(block)
                left -= len(block)
        out = os.path.join(tmp, "out")
        os.mkdir(out)
        srv = await server.start_relay(config, host="127.0.0.1", port=0,
                                       ssl_context=contexts.server_context(cert, key))
        env = {**os.environ, "HOME": tmp, "MSGR_SERVER": f"127.0.0.1:{srv.address[1]}"}
        tls = ["--tls", "--cafile", cert]
        msgr = [sys.executable, os.path.join(ROOT, "msgr.py")]

        def prof(role: str) -> list[str]:
            if profile is None:
                return msgr
            return [sys.executable, "-m", "cProfile", "-o",
                    os.path.join(profile, f"{role}.prof"), msgr[1]]
        try:
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            relay_cpu = time.process_time()
            t_send = time.monotonic()
            sender = await asyncio.create_subprocess_exec(
                *prof("sender"), "send", path, *tls, stderr=asyncio.subprocess.PIPE, env=env,
                cwd=tmp)
            assert sender.stderr is not None
            code = None
            while code is None:
                line = (await sender.stderr.readline()).decode()
                if not line:
                    raise SystemExit("the sender ended before printing a code")
                match = re.search(r"invite code is\s+(\S+)", line)
                code = match.group(1) if match else None
            t_receive = time.monotonic()
            receiver = await asyncio.create_subprocess_exec(
                *prof("receiver"), "receive", "--dir", out, "--json", *tls,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, env=env, cwd=tmp)
            assert receiver.stdin is not None and receiver.stdout is not None
            receiver.stdin.write(f"{code}\ny\n".encode())
            await receiver.stdin.drain()
            peak = 0
            first = done = None
            stdout = receiver.stdout

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, srv.memory()["store"])
                    await asyncio.sleep(0.01)

            sampler = asyncio.get_running_loop().create_task(sample())
            while (line := (await stdout.readline()).decode()):
                now = time.monotonic()
                if '"event": "progress"' in line and first is None:
                    first = now
                elif '"event": "completed"' in line:
                    done = now
            sampler.cancel()
            await receiver.wait()
            await sender.wait()
            relay_cpu = time.process_time() - relay_cpu
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            clients_cpu = (after.ru_utime + after.ru_stime
                           - children.ru_utime - children.ru_stime)
            assert done is not None and first is not None, "the transfer did not complete"
            with open(path, "rb") as a, open(os.path.join(out, "payload.bin"), "rb") as b:
                same = hashlib.sha256(a.read()).digest() == hashlib.sha256(b.read()).digest()
            assert same, "the copy differs"
            spent = done - first
            return {"mib": mib, "seconds": spent, "mb_per_s": size / spent / 1e6,
                    "receive_to_end_s": done - t_receive,
                    "send_to_first_byte_s": first - t_send,
                    "receive_to_first_byte_s": first - t_receive,
                    "clients_cpu_s": clients_cpu, "relay_cpu_s": relay_cpu,
                    "peak_store_bytes": peak}
        finally:
            await srv.close(timeout=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=100.0)
    parser.add_argument("--rate-bytes", type=float, default=None)
    parser.add_argument("--burst-bytes", type=float, default=None)
    parser.add_argument("--rate-messages", type=float, default=None)
    parser.add_argument("--burst-messages", type=float, default=None)
    parser.add_argument("--max-frame", type=int, default=None,
                        help="the relay's max_frame (the sender's chunks follow it)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="write cProfile stats of sender, receiver and relay into DIR")
    args = parser.parse_args()
    overrides = {k: getattr(args, k) for k in ("rate_bytes", "burst_bytes", "rate_messages",
                                               "burst_messages", "max_frame")
                 if getattr(args, k) is not None}
    profiler = None
    if args.profile is not None:
        import cProfile

        os.makedirs(args.profile, exist_ok=True)
        profiler = cProfile.Profile()
        profiler.enable()
    result = asyncio.run(measure(args.mib, RelayConfig(**overrides), args.profile))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(os.path.join(args.profile, "relay.prof"))
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in result.items()))


if __name__ == "__main__":
    main()
