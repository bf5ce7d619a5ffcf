"""A load generator process speaking msgr's relay protocol.

Started by :mod:`bench.run` as ``python -m bench.loadgen JOB`` (JOB is JSON,
see :class:`Generator`). It connects and logs in its clients (real Ed25519
signatures over the relay's challenge), prints ``{"ready": ...}`` on stdout,
then follows ``go`` lines on stdin. A go line names window bounds in the
monotonic clock, which every process on the machine shares; each result is
printed as one JSON line.

Modes:

* ``pairs`` (``throughput``/``latency``): each pair is a sender and a receiver
  connection. Then one phase per go line until ``{"close": true}``:

  - throughput phase: a sender keeps ``window`` sends in flight (a slot frees
    when its ``accepted`` or an error frame arrives) and refills when half
    the window is free;
  - latency phase (the go line names a ``rate``): senders send that many
    messages per second in total, round robin, paced by a 1 ms ticker; each
    body starts with its send time and the receiver records delivery time
    minus send time.

  Receivers count deliveries per window and acknowledge what they got as
  msgr's client does, in every phase: one ack frame per read, naming every
  id that read brought (msgr's client reads what its socket holds, then its
  pump sends one ack frame for all of it: ``ChatCore.take_frames``). So ack
  traffic follows how a relay batches its writes, as it does for real
  clients. (Until issue 15, throughput phases acknowledged every 5 ms, which
  no client does; in a latency phase that ticker sent every receiver's ack
  in one burst, which the relay read while new sends waited.)
  A go line with ``"hold": true`` makes receivers acknowledge nothing, so
  every message of that phase stays held by the relay (the engine section
  measures the engine's memory per waiting message with it). A job's
  ``recv_port`` puts the receivers on another relay than the senders
  (``port``): two relays on one engine.
  Every connection pings every 15 s (msgr's client pings every 20 s, the
  interval its relay advertises), spread evenly over the period, a slice of
  the connections every 0.1 s, as independent users' pings are.
* ``idle``: log in ``conns`` clients and keep them open, silent, until told.
* ``handshake``: open and close TLS connections, ``concurrency`` at a time;
  counts completed handshakes.

The parser is deliberately minimal (length prefix walk, byte counts and one
regular expression per read, no per-frame ``json.loads`` on the hot path) so
that the generator costs less per message than the relays it measures.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import gc
import hashlib
import itertools
import json
import os
import re
import resource
import ssl
import struct
import sys
import time
from typing import Any

from nacl.signing import SigningKey

from msgrlib.relay import tlsconn

AUTH_LABEL = b"msgr/v1/relay-auth\x00"  # relay.AUTH_LABEL; kept here to avoid the import
#: Bytes on the wire of one send frame for msgr's framing (prefix included).
SEND_FRAME_BYTES = 251
#: Refs are 9-digit integers so that every send frame has the same length.
REF_BASE = 100_000_000
#: Ids per ack frame (msgr's relay accepts at most 1024).
ACK_CHUNK = 1024
#: Every connection pings this often (seconds; msgr's client: 20 s)...
HEARTBEAT = 15.0
#: ...a slice of the connections per tick, so that pings are spread evenly.
HEARTBEAT_TICK = 0.1

_PREFIX = struct.Struct(">I")
_unpack = _PREFIX.unpack_from
_pack = _PREFIX.pack
_WS16 = struct.Struct(">H")

DELIVER_RE = re.compile(rb'"type":"deliver","id":(\d+)')
LATENCY_RE = re.compile(rb'"type":"deliver","id":(\d+)[^{}]*?"body":"T(\d+)')
ACCEPTED = b'"type":"accepted"'
ERROR = b'"type":"error"'


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# One socket read buffer for every TLS connection of the generator (as the
# relay does), so that 10,000 idle TLS clients fit in its memory.
_TLS_BUFFER = tlsconn.ReadBuffer()


def client_context() -> ssl.SSLContext:
    # Loopback benchmark against our own self-signed certificate: no verification,
    # so the generator spends its CPU on the traffic, not on checking a chain.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- wire codecs (client side) ------------------------------------------------------


class PrefixCodec:
    """msgr's framing: 4-byte big-endian length, then the JSON."""

    ws = False

    @staticmethod
    def encode(payload: bytes) -> bytes:
        return _pack(len(payload)) + payload

    @staticmethod
    def header(size: int) -> bytes:
        return _pack(size)

    @staticmethod
    def walk(buf: bytes | bytearray, conn: Any = None) -> int:
        """Offset just past the last complete frame in ``buf``."""
        pos, end = 0, len(buf)
        while end - pos >= 4:
            stop = pos + 4 + _unpack(buf, pos)[0]
            if stop > end:
                break
            pos = stop
        return pos

    @staticmethod
    def payloads(buf: bytes | bytearray, end: int) -> list[bytes]:
        out, pos = [], 0
        while pos < end:
            (size,) = _unpack(buf, pos)
            out.append(bytes(buf[pos + 4:pos + 4 + size]))
            pos += 4 + size
        return out


class WsCodec:
    """One websocket text message per frame (client frames masked with a zero key,
    which RFC 6455 allows and which costs the server the same unmasking work)."""

    ws = True

    @staticmethod
    def header(size: int) -> bytes:
        if size < 126:
            return bytes((0x81, 0x80 | size)) + b"\0\0\0\0"
        if size < 65536:
            return b"\x81\xfe" + _WS16.pack(size) + b"\0\0\0\0"
        return b"\x81\xff" + struct.pack(">Q", size) + b"\0\0\0\0"

    @classmethod
    def encode(cls, payload: bytes) -> bytes:
        return cls.header(len(payload)) + payload

    @staticmethod
    def _frame(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int, int] | None:
        if end - pos < 2:
            return None
        b0, b1 = buf[pos], buf[pos + 1]
        size = b1 & 0x7F
        start = pos + 2
        if size == 126:
            if end - pos < 4:
                return None
            size = _WS16.unpack_from(buf, start)[0]
            start += 2
        elif size == 127:
            if end - pos < 10:
                return None
            size = struct.unpack_from(">Q", buf, start)[0]
            start += 8
        if start + size > end:
            return None
        return b0 & 0x0F, start, start + size

    @classmethod
    def walk(cls, buf: bytes | bytearray, conn: Any = None) -> int:
        pos, end = 0, len(buf)
        frame = cls._frame
        while True:
            got = frame(buf, pos, end)
            if got is None:
                return pos
            opcode, start, stop = got
            if opcode == 9 and conn is not None:  # ping: answer with a masked pong
                data = bytes(buf[start:stop])
                conn.transport.write(bytes((0x8A, 0x80 | len(data))) + b"\0\0\0\0" + data)
            pos = stop

    @classmethod
    def payloads(cls, buf: bytes | bytearray, end: int) -> list[bytes]:
        out, pos = [], 0
        while pos < end:
            opcode, start, stop = cls._frame(buf, pos, end)  # type: ignore[misc]
            if opcode in (1, 2):
                out.append(bytes(buf[start:stop]))
            pos = stop
        return out


# -- connections -----------------------------------------------------------------------


class Conn(asyncio.Protocol):
    """One logged-in client. Login is slow-path JSON; running is the fast path."""

    def __init__(self, gen: Generator, name: str) -> None:
        self.gen = gen
        self.codec = gen.codec
        self.name = name
        self.key = SigningKey(os.urandom(32))
        self.buf = bytearray()
        self.state = "connect"
        self.ready: asyncio.Future[None] = gen.loop.create_future()
        self.transport: Any = None
        self.lost = False

    # login --------------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.codec.ws:
            self.state = "upgrade"
            key = base64.b64encode(os.urandom(16))
            transport.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                            b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        else:
            self._hello()

    def _hello(self) -> None:
        self.state = "hello"
        self.send_obj({"type": "hello", "v": 1, "user": self.name,
                       "key": base64.b64encode(bytes(self.key.verify_key)).decode()})

    def _auth_message(self, nonce: bytes, relay_id: Any) -> bytes:
        """PROTOCOL.md 3.2: the signature names the relay (certificate or id)."""
        ssl_object = self.transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            digest = hashlib.sha256(der).hexdigest().upper()
            binding = "tls:SHA256:" + ":".join(digest[i:i + 2] for i in range(0, 64, 2))
        else:
            binding = f"id:{relay_id}"
        bound = binding.encode()
        return AUTH_LABEL + nonce + struct.pack(">I", len(bound)) + bound + self.name.encode()

    def send_obj(self, obj: dict[str, Any]) -> None:
        self.transport.write(self.codec.encode(
            json.dumps(obj, separators=(",", ":")).encode()))

    def data_received(self, data: bytes) -> None:
        if self.state == "run":
            self.on_run(data)
            return
        buf = self.buf
        buf += data
        if self.state == "upgrade":
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._fail(f"upgrade refused: {bytes(buf[:80])!r}")
                return
            del buf[:head_end + 4]
            self._hello()
        end = self.codec.walk(buf, self)
        for payload in self.codec.payloads(buf, end):
            msg = json.loads(payload)
            kind = msg.get("type")
            if kind == "challenge" and self.state == "hello":
                nonce = base64.b64decode(msg["nonce"])
                sig = self.key.sign(self._auth_message(nonce, msg.get("relay"))).signature
                self.state = "auth"
                self.send_obj({"type": "auth", "sig": base64.b64encode(sig).decode()})
            elif kind == "welcome" and self.state == "auth":
                self.state = "run"
                if not self.ready.done():
                    self.ready.set_result(None)
            elif kind == "error":
                self._fail(f"{msg.get('code')}: {msg.get('message')}")
                return
        del buf[:end]

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"{self.name}: {why}"))
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.name}: lost during login ({exc})"))
        elif self.state == "run" and not self.gen.stopping:
            self.gen.lost += 1

    # running: overridden ---------------------------------------------------------------

    def on_run(self, data: bytes) -> None:
        pass

    def _region(self, data: bytes) -> bytes | bytearray:
        """The complete frames now available (consumed from the buffer)."""
        buf = self.buf
        if not buf:
            end = self.codec.walk(data, self)
            if end == len(data):
                return data
            buf += data[end:]
            return data[:end]
        buf += data
        end = self.codec.walk(buf, self)
        region = buf[:end]
        del buf[:end]
        return region


class Sender(Conn):
    """Keeps ``window`` sends in flight (throughput) or is paced (latency)."""

    def __init__(self, gen: Generator, name: str, peer: str) -> None:
        super().__init__(gen, name)
        self.inflight = 0
        self.ref = REF_BASE
        # A fixed-size frame: header + '{"type":"send","ref":' + 9 digits + tail.
        fixed = (len(b'{"type":"send","ref":') + 9
                 + len(f',"to":"{peer}","ttl":30,"body":"'.encode()) + len(b'"}'))
        pad = SEND_FRAME_BYTES - 4 - fixed
        self.pad = pad
        self.payload_size = fixed + pad
        self.head = self.codec.header(self.payload_size) + b'{"type":"send","ref":'
        self.tail_to = f',"to":"{peer}","ttl":30,"body":"'.encode()
        self.tail = self.tail_to + b"x" * pad + b'"}'

    def on_run(self, data: bytes) -> None:
        region = self._region(data)
        if not region:
            return
        done = region.count(ACCEPTED)
        errors = region.count(ERROR)
        if errors:
            self.gen.note_errors(region, errors)
        self.gen.accepted += done
        self.inflight -= done + errors
        # Refill when half the window is free: sends go out in batches, as a
        # busy client's would, rather than one frame per accepted.
        if self.gen.pumping and self.inflight <= self.gen.window >> 1:
            self.pump()

    def pump(self) -> None:
        want = self.gen.window - self.inflight
        if want <= 0 or self.lost:
            return
        ref = self.ref
        head, tail = self.head, self.tail
        frames = [head + b"%d" % r + tail for r in range(ref, ref + want)]
        self.ref = ref + want
        self.inflight += want
        self.transport.write(b"".join(frames))

    def send_timed(self) -> None:
        """One send whose body starts with T<monotonic ns> (latency mode)."""
        stamp = b"T%d" % time.monotonic_ns()
        body = stamp + b"x" * (self.pad - len(stamp))
        self.ref += 1
        self.inflight += 1
        self.transport.write(self.head + b"%d" % self.ref + self.tail_to + body + b'"}')


class Receiver(Conn):
    """Counts deliveries and acknowledges them, one ack frame per read."""

    def __init__(self, gen: Generator, name: str) -> None:
        super().__init__(gen, name)
        self.pending: list[bytes] = []

    def on_run(self, data: bytes) -> None:
        region = self._region(data)
        if not region:
            return
        gen = self.gen
        now = time.monotonic()
        if gen.latency:
            found = LATENCY_RE.findall(region)
            ids = [i for i, _ in found]
            if found:
                idx = gen.window_index(now)
                if idx >= 0:
                    now_ns = time.monotonic_ns()
                    gen.samples[idx].extend(now_ns - int(t) for _, t in found)
        else:
            ids = DELIVER_RE.findall(region)
        if not ids:
            if ERROR in region:
                gen.note_errors(region, region.count(ERROR))
            return
        idx = gen.window_index(now)
        if idx >= 0:
            gen.counts[idx] += len(ids)
        gen.delivered += len(ids)
        if gen.hold:  # a hold phase: what was delivered stays held by the relay
            return
        self.pending += ids
        self.flush_acks()  # one ack frame per read, as msgr's client

    def flush_acks(self) -> None:
        ids, self.pending = self.pending, []
        if self.lost or not ids:
            return
        encode = self.codec.encode
        self.transport.write(b"".join(
            encode(b'{"type":"ack","ids":[' + b",".join(ids[i:i + ACK_CHUNK]) + b"]}")
            for i in range(0, len(ids), ACK_CHUNK)))


# -- the generator --------------------------------------------------------------------


class Generator:
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.loop = asyncio.get_running_loop()
        self.codec = WsCodec if job.get("ws") else PrefixCodec
        self.window = int(job.get("window", 32))
        self.latency = False  # per phase: a go with a rate is a latency phase
        self.hold = False  # per phase: receivers acknowledge nothing (engine memory)
        self.pumping = False
        self.stopping = False
        self.accepted = 0
        self.delivered = 0
        self.lost = 0
        self.errors = 0
        self.error_sample: str | None = None
        self.bounds: list[float] = []
        self.counts: list[int] = []
        self.samples: list[list[int]] = []
        self.context = client_context() if job.get("tls") else None

    def window_index(self, now: float) -> int:
        idx = bisect.bisect_right(self.bounds, now) - 1
        return idx if 0 <= idx < len(self.counts) else -1

    def note_errors(self, region: bytes | bytearray, n: int) -> None:
        self.errors += n
        if self.error_sample is None:
            at = region.find(ERROR)
            self.error_sample = bytes(region[at:at + 160]).decode("utf-8", "replace")

    async def connect(self, conn: Conn) -> Conn:
        # TLS through msgr's own layer in client mode (tlsconn.py), for every
        # relay measured: the generators' core went from 73% to 56% busy at
        # 5,000 msg/s (medians of 4 windows), so their own queueing weighs
        # less in the latency figures.
        context = self.context
        factory: Any = (lambda: conn) if context is None else (
            lambda: tlsconn.TLSProtocol(context, conn, buffer=_TLS_BUFFER, server_side=False,
                                        server_hostname="localhost", handshake_timeout=30))
        # Receivers may be on another relay (recv_port: several relays on one engine).
        port = self.job.get("recv_port", self.job["port"]) if isinstance(conn, Receiver) \
            else self.job["port"]
        _, proto = await self.loop.create_connection(factory, "127.0.0.1", port)
        if context is not None:
            await proto.handshake  # raises why the handshake failed, if it did
        await conn.ready
        return conn

    async def connect_all(self, conns: list[Conn], concurrency: int = 64) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(conn: Conn) -> None:
            async with sem:
                await asyncio.wait_for(self.connect(conn), 30)

        await asyncio.gather(*(one(c) for c in conns))

    async def wait_go(self) -> dict[str, Any]:
        line = await self.loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            raise SystemExit("stdin closed before go")
        return json.loads(line)

    async def sleep_until(self, when: float) -> None:
        delay = when - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    # modes ---------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any] | None:
        mode = self.job["mode"]
        if mode == "handshake":
            return await self.run_handshake()
        if mode == "idle":
            return await self.run_idle()
        await self.run_pairs()
        return None

    async def run_pairs(self) -> None:
        """Connect, then run one phase per ``go`` line until ``close``."""
        job = self.job
        tag = job.get("tag", "g")
        pairs = [(Sender(self, f"{tag}s{i}", f"{tag}r{i}"), Receiver(self, f"{tag}r{i}"))
                 for i in range(job["pairs"])]
        started = time.monotonic()
        await self.connect_all([c for pair in pairs for c in pair][::-1])  # receivers first
        report({"ready": True, "setup_s": round(time.monotonic() - started, 3)})
        senders = [s for s, _ in pairs]
        conns = [c for pair in pairs for c in pair]
        beat = asyncio.ensure_future(self.heartbeat(conns))
        while True:
            go = await self.wait_go()
            if go.get("close"):
                break
            result = await self.phase(senders, go)
            report({"result": result})
        beat.cancel()
        self.stopping = True
        for conn in conns:
            conn.transport.abort()

    async def phase(self, senders: list[Sender], go: dict[str, Any]) -> dict[str, Any]:
        """Load from now until the last bound; count per window between bounds."""
        self.bounds = go["bounds"]
        self.counts = [0] * (len(self.bounds) - 1)
        self.samples = [[] for _ in self.counts]
        self.errors, self.error_sample, self.delivered, self.accepted = 0, None, 0, 0
        self.latency = bool(go.get("rate"))
        self.hold = bool(go.get("hold"))
        lost = self.lost
        # The generator's own pauses would count as relay latency: no garbage
        # collection during a phase (it runs between phases instead).
        gc.disable()
        cpu0 = time.process_time()
        if self.latency:
            # Senders leave their "accepted" frames in the socket until the end
            # of the phase: they are not on the measured path, and reading each
            # one (a TLS read per message) would load the generator's core,
            # whose queueing would count as relay latency.
            for sender in senders:
                sender.transport.pause_reading()
            await self.pace(senders, float(go["rate"]), self.bounds[-1])
            for sender in senders:
                if not sender.lost:
                    sender.transport.resume_reading()
        else:
            self.pumping = True
            for sender in senders:
                sender.pump()
            await self.sleep_until(self.bounds[-1])
            self.pumping = False
        cpu = time.process_time() - cpu0
        # Drain: the next phase (maybe another relay) must not share the machine
        # with this relay's backlog. Every send is answered (accepted or error).
        deadline = time.monotonic() + 15
        while any(s.inflight > 0 and not s.lost for s in senders):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the last deliveries arrive and are acknowledged
        gc.enable()
        gc.collect()
        result: dict[str, Any] = {"counts": self.counts, "cpu_s": cpu,
                                  "errors": self.errors, "error_sample": self.error_sample,
                                  "lost": self.lost - lost, "delivered": self.delivered,
                                  "accepted": self.accepted}
        if self.latency:
            result["samples"] = self.samples
        return result

    async def heartbeat(self, conns: list[Conn]) -> None:
        """A ping per connection every HEARTBEAT s (msgr's relay times out a
        silent client after 60 s), spread evenly over the period as
        independent users' pings are.

        All at once, 2,000 TLS pings cost the relay 60-150 ms of CPU in one
        burst every 15 s; any latency window it fell in (or that of another
        relay pinned to the same core) measured the burst, not the relay.
        """
        ping = self.codec.encode(b'{"type":"ping"}')
        ticks = round(HEARTBEAT / HEARTBEAT_TICK)
        for tick in itertools.cycle(range(ticks)):
            await asyncio.sleep(HEARTBEAT_TICK)
            for conn in conns[tick::ticks]:
                if not conn.lost:
                    conn.transport.write(ping)

    async def pace(self, senders: list[Sender], rate: float, until: float) -> None:
        """Send ``rate`` messages per second in total, round robin over the senders."""
        start = time.monotonic()
        sent = 0
        i = 0
        n = len(senders)
        while True:
            now = time.monotonic()
            if now >= until:
                return
            due = int((now - start) * rate) - sent
            for _ in range(due):
                senders[i].send_timed()
                i = i + 1 if i + 1 < n else 0
            sent += max(due, 0)
            await asyncio.sleep(0.001)

    async def run_idle(self) -> dict[str, Any]:
        job = self.job
        tag = job.get("tag", "i")
        conns = [Conn(self, f"{tag}{i}") for i in range(job["conns"])]
        started = time.monotonic()
        await self.connect_all(conns, concurrency=int(job.get("concurrency", 100)))
        report({"ready": True, "setup_s": round(time.monotonic() - started, 3)})
        await self.wait_go()  # "close"
        lost = sum(c.lost for c in conns)
        self.stopping = True
        for conn in conns:
            conn.transport.abort()
        return {"lost": lost}

    async def run_handshake(self) -> dict[str, Any]:
        job = self.job
        context = self.context or client_context()
        loop = self.loop
        report({"ready": True})
        go = await self.wait_go()
        self.bounds = go["bounds"]
        self.counts = [0] * (len(self.bounds) - 1)
        until = self.bounds[-1]
        failures = 0

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                transport.close()

        async def worker() -> None:
            nonlocal failures
            while time.monotonic() < until:
                try:
                    await loop.create_connection(Probe, "127.0.0.1", job["port"],
                                                 ssl=context, server_hostname="localhost")
                except OSError:
                    failures += 1
                    await asyncio.sleep(0.01)
                    continue
                idx = self.window_index(time.monotonic())
                if idx >= 0:
                    self.counts[idx] += 1

        cpu0 = time.process_time()
        await asyncio.gather(*(worker() for _ in range(int(job.get("concurrency", 16)))))
        return {"counts": self.counts, "failures": failures,
                "cpu_s": time.process_time() - cpu0}


def report(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main_async(job: dict[str, Any]) -> None:
    gen = Generator(job)
    try:
        result = await gen.run()
    except Exception as err:  # noqa: BLE001 - reported to the orchestrator, which fails
        report({"error": f"{type(err).__name__}: {err}"})
        return
    if result is not None:
        report({"result": result})


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.loadgen '{"mode": ..., "port": ..., ...}'``."""
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(argv[0])
    raise_nofile()
    asyncio.run(main_async(job))
    return 0


if __name__ == "__main__":
    sys.exit(main())
