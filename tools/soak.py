"""Soak test: 100,000 messages through a relay while clients drop at random.

Starts a relay in a child process (loopback only), then runs pairs of raw
protocol clients in this process. Senders stream messages to their peers;
every client aborts its connection at random (no goodbye) and reconnects
after up to ``--max-offline`` seconds, well within the TTL. A few messages go
to a name that never connects, to exercise expiry.

Reports, and exits non-zero unless the first two are zero:

* messages lost: accepted by the relay for a recipient that connected within
  the TTL, yet never delivered to it;
* messages left in the relay's memory after the last TTL;
* the relay's memory (RSS) before and after.

Usage: ``python -m tools.soak [--messages 100000] [--pairs 50] [--seconds 300]
[--tls]`` (``make soak``). Bounded: it gives up after ``--seconds``. With
``--tls`` every connection is TLS (a fresh self-signed certificate), so the
random drops also cut TLS records in the middle.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from typing import Any

import framing
from msgrlib import protocol
from msgrlib.relay import rules as relay
from msgrlib.tls import x509 as tls_x509

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TTL = 10


def relay_child(tls_dir: str | None) -> None:
    """Run in the child: a relay, plus a stats line for each 'stats' on stdin."""
    from msgrlib.relay import server
    from msgrlib.tls import contexts

    context = None
    if tls_dir is not None:
        cert, key = os.path.join(tls_dir, "cert.pem"), os.path.join(tls_dir, "key.pem")
        contexts.ensure_certificate(cert, key)
        context = contexts.server_context(cert, key)

    async def main() -> None:
        config = relay.RelayConfig(max_per_address=10_000, rate_messages=10_000,
                                   burst_messages=10_000, rate_bytes=1e9, burst_bytes=1e9,
                                   mailbox_messages=100_000, mailbox_bytes=10**9,
                                   claim_ttl=TTL * 3, store_share=1.0, claim_burst=1e9)
        srv = await server.start_relay(config, host="127.0.0.1", port=0, ssl_context=context)
        print(srv.address[1], flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            if line.strip() == b"stats":
                store = srv.relay.store
                print(json.dumps({"held": len(store), "bytes": store.bytes,
                                  "heap": getattr(store, "heap_size", None),
                                  "connections": len(srv.connections),
                                  "rss_kib": rss_kib(os.getpid())}), flush=True)
        await srv.close()

    asyncio.run(main())


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Peer:
    """One user: reconnects with the same key after every random drop."""

    def __init__(self, name: str, port: int, stats: Stats, ssl: Any = None) -> None:
        from nacl.signing import SigningKey

        self.name = name
        self.port = port
        self.ssl = ssl
        self.key = SigningKey.generate()
        self.stats = stats
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.received: set[int] = set()

    async def connect(self) -> asyncio.StreamReader:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.ssl, server_hostname="localhost" if self.ssl else None)
        writer.write(framing.encode_frame({
            "type": "hello", "v": 1, "user": self.name,
            "key": base64.b64encode(bytes(self.key.verify_key)).decode()}))
        challenge = await framing.read_frame(reader)
        assert challenge and challenge["type"] == "challenge", challenge
        nonce = base64.b64decode(challenge["nonce"])
        ssl_object = writer.get_extra_info("ssl_object")
        binding = (protocol.tls_binding(tls_x509.fingerprint(ssl_object.getpeercert(True)))
                   if ssl_object is not None else protocol.id_binding(challenge["relay"]))
        sig = self.key.sign(protocol.auth_message(nonce, binding, self.name)).signature
        writer.write(framing.encode_frame({"type": "auth",
                                           "sig": base64.b64encode(sig).decode()}))
        welcome = await framing.read_frame(reader)
        assert welcome and welcome["type"] == "welcome", welcome
        self.writer = writer
        self.connected.set()
        return reader

    async def run(self, stop: asyncio.Event, drop_rate: float, max_offline: float) -> None:
        rng = random.Random(self.name)
        while not stop.is_set():
            reader = await self.connect()
            reading = asyncio.create_task(self.read(reader))
            lifetime = rng.expovariate(drop_rate) if drop_rate else 1e9
            try:
                await asyncio.wait_for(stop.wait(), lifetime)
            except asyncio.TimeoutError:
                pass
            self.connected.clear()
            if not stop.is_set():
                self.stats.drops += 1
                self.writer.transport.abort()      # a crash, not a goodbye
            else:
                self.writer.close()
            reading.cancel()
            if not stop.is_set():
                await asyncio.sleep(rng.uniform(0, max_offline))

    async def read(self, reader: asyncio.StreamReader) -> None:
        decoder = framing.FrameDecoder()
        try:
            while data := await reader.read(65536):
                acks = []
                for frame in decoder.feed(data):
                    kind = frame["type"]
                    if kind == "deliver":
                        if frame["id"] in self.received:
                            self.stats.redelivered += 1
                        self.received.add(frame["id"])
                        acks.append(frame["id"])
                    elif kind == "accepted":
                        self.stats.accepted[frame["id"]] = frame["ref"]
                    elif kind == "error":
                        self.stats.errors[frame["code"]] = self.stats.errors.get(
                            frame["code"], 0) + 1
                if acks and self.writer is not None and not self.writer.is_closing():
                    self.writer.write(framing.encode_frame({"type": "ack", "ids": acks}))
        except (ConnectionError, asyncio.CancelledError):
            pass


class Stats:
    def __init__(self) -> None:
        self.accepted: dict[int, int] = {}   # relay id -> ref
        self.to: dict[int, str] = {}         # ref -> recipient
        self.sent = 0
        self.drops = 0
        self.redelivered = 0
        self.errors: dict[str, int] = {}


async def soak(args: argparse.Namespace) -> int:
    tls_dir = args.tls_dir
    child = subprocess.Popen([sys.executable, "-m", "tools.soak", "--relay-child",
                              *(["--tls", tls_dir] if tls_dir else [])], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert child.stdin is not None and child.stdout is not None
    port = int(child.stdout.readline())
    context = None
    if tls_dir is not None:
        from msgrlib.tls import contexts

        context = contexts.client_context(cafile=os.path.join(tls_dir, "cert.pem"))

    def stats() -> dict:
        child.stdin.write("stats\n")
        child.stdin.flush()
        return json.loads(child.stdout.readline())

    before = stats()
    s = Stats()
    peers = {}
    for i in range(args.pairs):
        a, b = f"a{i}", f"b{i}"
        peers[a] = Peer(a, port, s, context)
        peers[b] = Peer(b, port, s, context)
    stop = asyncio.Event()
    runners = [asyncio.create_task(p.run(stop, args.drop_rate, args.max_offline))
               for p in peers.values()]
    started = time.monotonic()
    deadline = started + args.seconds
    ref = 0
    senders = [peers[f"a{i}"] for i in range(args.pairs)] + [peers[f"b{i}"]
                                                            for i in range(args.pairs)]
    body = "s1." + "x" * 180
    while s.sent < args.messages and time.monotonic() < deadline:
        for sender in senders:
            if not sender.connected.is_set() or sender.writer is None:
                continue
            peer = ("b" if sender.name[0] == "a" else "a") + sender.name[1:]
            batch = []
            for _ in range(args.batch):
                ref += 1
                to = peer if ref % 1000 else "ghost"   # 0.1% for a name that never comes
                s.to[ref] = to
                batch.append(framing.encode_frame({"type": "send", "ref": ref, "to": to,
                                                   "ttl": TTL, "body": body}))
            sender.writer.write(b"".join(batch))
            s.sent += args.batch
            if s.sent >= args.messages:
                break
        await asyncio.sleep(0.01)
    sent_for = time.monotonic() - started
    # Let everyone reconnect and drain, then stop dropping.
    await asyncio.sleep(args.max_offline + 2)
    stop.set()
    await asyncio.gather(*runners, return_exceptions=True)
    final_peers = list(peers.values())
    for p in final_peers:                   # one last clean connection each, to drain
        reader = await p.connect()
        task = asyncio.create_task(p.read(reader))
        await asyncio.sleep(0)
        p.task = task
    await asyncio.sleep(2)
    mid = stats()
    # Lost: accepted for a real peer (who always came back within the TTL), never received.
    received = {p.name: p.received for p in final_peers}
    lost = [i for i, r in s.accepted.items()
            if s.to[r] != "ghost" and i not in received[s.to[r]]]
    ghost = sum(1 for r in s.accepted.values() if s.to[r] == "ghost")
    for p in final_peers:
        p.task.cancel()
        p.writer.close()
    await asyncio.sleep(TTL + 1)            # past the last TTL
    after = stats()
    child.stdin.close()
    child.wait(10)
    print(f"sent {s.sent:,} messages in {sent_for:.1f} s from {2 * args.pairs} clients "
          f"({s.sent / sent_for:,.0f} msg/s offered); relay accepted {len(s.accepted):,}, "
          f"refused {sum(s.errors.values()):,} {s.errors or ''}")
    print(f"random drops: {s.drops:,}; redeliveries after a drop (deduplicated by id): "
          f"{s.redelivered:,}")
    print(f"messages lost: {len(lost)}  (must be 0)")
    print(f"messages to a name that never connected: {ghost} (expire by TTL)")
    print(f"held by the relay after delivery: {mid['held']}; after the last TTL: "
          f"{after['held']} messages, {after['bytes']} bytes  (must be 0)")
    print(f"relay RSS: before {before['rss_kib'] / 1024:.1f} MiB, at peak drain "
          f"{mid['rss_kib'] / 1024:.1f} MiB, after {after['rss_kib'] / 1024:.1f} MiB")
    return 0 if not lost and after["held"] == 0 and after["bytes"] == 0 else 1


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--relay-child":
        relay_child(sys.argv[3] if sys.argv[2:3] == ["--tls"] else None)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--batch", type=int, default=5, help="messages per sender per tick")
    parser.add_argument("--drop-rate", type=float, default=0.5,
                        help="random drops per client per second")
    parser.add_argument("--max-offline", type=float, default=2.0,
                        help="longest a dropped client stays away, seconds (< TTL)")
    parser.add_argument("--seconds", type=float, default=300, help="give up after this long")
    parser.add_argument("--tls", action="store_true", help="every connection over TLS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="msgr-soak-") as tls_dir:  # the throwaway key
        args.tls_dir = tls_dir if args.tls else None
        return asyncio.run(asyncio.wait_for(soak(args), args.seconds + TTL + 60))


if __name__ == "__main__":
    sys.exit(main())
