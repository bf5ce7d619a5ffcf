"""Soak across several relays on one engine: real chat clients, drops, a relay killed.

Runs, on loopback only and bounded in time:

* a redis-server (on a unix socket in a temporary directory, with the
  settings msgr requires: no persistence, no eviction), stopped by pid;
* ``--relays`` (3) ``msgr.py serve --store unix://...`` processes on it;
* ``--pairs`` pairs of real chat clients in this process (the chat core and
  asyncio client msgr itself runs: ``msgrlib.client``), half in the default
  mode (CPace + double ratchet, receipts), half ``--static``. Each client
  picks a relay at random on every (re)connect; msgr's client takes one relay
  address, so the soak hands it another before each connection, as an
  operator's DNS or load balancer would;
* clients cut at random (the connection aborted, no goodbye, as the relay
  sees a killed client; the client keeps its state and comes back after its
  backoff, or, for one drop in 20, after up to 1.5 TTLs offline, so messages
  to it expire at the relay and are reported to their senders);
* ``--kills`` (1) relays SIGKILLed at a random moment while messages flow
  and started again on the same port ``--relay-down`` seconds later.

Every message gets a unique text; at the end, after the largest TTL, each is
counted once as: shown once; shown twice (or more); not shown and reported
to its sender as not delivered; not shown and its fate reported unknown
(static mode: its TTL ended while the sender was cut off from the relay);
lost WITHOUT a report. Besides: shown after its deadline; shown after its
sender was told it was not delivered; shown but reported not delivered
before (the recipient's ack or receipt, or the relay's ``accepted``, was cut
off with a connection, and the TTL ended first: wrong, but never before it
was shown). Times are taken when the chat core decides, not when the soak's
event loop gets to the event. It then waits for the engine to forget everything and
inspects its keys (msgrlib/relay/engine/scripts.py has the layout): the
mailboxes, the expiry index, the byte budgets of the shard, of each mailbox
and of each store share must all be gone or 0.

Exits non-zero unless: nothing shown twice, nothing lost without a report,
nothing shown after its sender was told it was not delivered, nothing shown
late, no relay wrote a traceback, and nothing left in the engine.

Usage: ``python -m tools.soak_cluster [--messages 100000] [--relays 3]
[--pairs 30] [--rate 400] [--kills 1] [--ttl 30]`` (``make soak-cluster``).
Needs redis-server (or valkey-server) and redis-py (``pip install
'msgr[redis]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from nacl.signing import SigningKey

from msgrlib.client.connection import ChatClient
from msgrlib.client.core import ChatCore, Mode
from msgrlib.client.events import (
    Accepted,
    Delivered,
    Notice,
    Received,
    SessionStarted,
    Status,
    Undelivered,
)
from msgrlib.client.static_mode import STATIC_GRACE
from msgrlib.client.window import CLOCK_TOLERANCE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSGR = os.path.join(ROOT, "msgr.py")
PREFIX = "msgr"

#: What msgr asks of its engine (README "Running several relays").
ENGINE_SETTINGS = ("--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction")

#: Relay limits raised above the defaults, so that the soak measures loss and
#: not refusals: every client comes from 127.0.0.1 (one address), and one
#: recipient may sit offline for 1.5 TTLs while messages pile up for it.
RELAY_LIMITS = ("--max-per-address", "100000", "--claim-rate", "1000", "--claim-burst", "100000",
                "--store-share", "1.0", "--mailbox-messages", "100000",
                "--hs-burst", "1000", "--hs-rate", "100")

#: One drop in this many keeps the client away for up to 1.5 TTLs.
LONG_OFFLINE_ONE_IN = 20
TEXT_RE = re.compile(r"^m(\d+) ")
NUMBER_RE = re.compile(r"#(\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s, unless it has already exited."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def die_with_parent() -> None:
    """In a child, before exec: SIGTERM when the soak dies (Linux), so a soak
    killed by a test's timeout leaves no relay or redis-server behind."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def engine_binary() -> str | None:
    return shutil.which("redis-server") or shutil.which("valkey-server")


class Engine:
    """One redis-server on a unix socket, no TCP listener; stopped by pid."""

    def __init__(self, directory: str) -> None:
        binary = engine_binary()
        if binary is None:
            raise SystemExit("soak_cluster: redis-server (or valkey-server) is not installed "
                             "(apt-get install redis-server)")
        self.binary = binary
        self.dir = directory
        self.socket = os.path.join(directory, "engine.sock")
        self.url = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
             "--dir", self.dir, *ENGINE_SETTINGS, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self.client = redis.Redis(unix_socket_path=self.socket, socket_timeout=10)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("soak_cluster: redis-server did not start") from None
                time.sleep(0.02)

    def cpu_seconds(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def leftovers(self) -> dict[str, int]:
        """What the engine still holds of messages (must all be 0)."""
        r = self.client
        out = {"mailboxes": 0, "queued": 0, "mailbox_bytes": 0, "share_bytes": 0,
               "expiry_index": int(r.zcard(f"{PREFIX}:exp")),
               "shard_bytes": int(r.get(f"{PREFIX}:bytes") or 0), "expiry_reports": 0}
        for key in r.scan_iter(match=f"{PREFIX}:{{*}}:q", count=1000):
            out["mailboxes"] += 1
            out["queued"] += int(r.zcard(key))
        for key in r.scan_iter(match=f"{PREFIX}:{{*}}:b", count=1000):
            out["mailbox_bytes"] += int(r.get(key) or 0)
        for key in r.scan_iter(match=f"{PREFIX}:share:*", count=1000):
            out["share_bytes"] += int(r.get(key) or 0)
        for key in r.scan_iter(match=f"{PREFIX}:{{*}}:x", count=1000):
            out["expiry_reports"] += int(r.llen(key))
        return out

    def stop(self) -> None:
        stop_process(self.proc)


class Relay:
    """``msgr.py serve --store`` on a fixed port, so it can start again on it."""

    def __init__(self, index: int, url: str, log_dir: str, extra: tuple[str, ...]) -> None:
        self.index = index
        self.port = free_port()
        self.url = url
        self.log_path = os.path.join(log_dir, f"relay{index}.log")
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.alive = False
        self.cpu = 0.0  # seconds of CPU of the processes that ended

    async def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, MSGR, "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--store", self.url, "--log-level", "warning", *RELAY_LIMITS, *self.extra],
            stdout=log, stderr=log, cwd=ROOT, preexec_fn=die_with_parent)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"soak_cluster: relay {self.index} exited at start; see "
                                 f"{self.log_path}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                self.alive = True
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise SystemExit(f"soak_cluster: relay {self.index} did not listen within 20 s")

    def proc_cpu(self) -> float:
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """SIGKILL, as a crash: its connections and pub/sub simply vanish."""
        assert self.proc is not None
        self.cpu += self.proc_cpu()
        self.alive = False
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.cpu += self.proc_cpu()
            stop_process(self.proc)
        self.alive = False

    def tracebacks(self) -> list[str]:
        with open(self.log_path, errors="replace") as f:
            text = f.read()
        return [part.splitlines()[-1] if part.splitlines() else part
                for part in text.split("Traceback (most recent call last):")[1:]]


@dataclass
class Message:
    sender: str
    to: str
    sent_at: float          # time.time() when typed
    ttl: int
    shown: list[float] = field(default_factory=list)
    late: int = 0
    reported: float | None = None   # when the sender was told "not delivered"
    reason: str = ""
    unknown: bool = False           # static mode: "cannot tell whether ... read it"
    confirmed: bool = False         # default mode: the peer's receipt came
    relay_ids: list[int] = field(default_factory=list)  # as the sender's accepted said


class Tally:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.by_number: dict[tuple[str, int], int] = {}
        self.drops = 0
        self.long_offline = 0
        self.statuses: collections.Counter[str] = collections.Counter()
        self.notices: collections.Counter[str] = collections.Counter()
        self.sessions = 0
        self.max_lag = 0.0
        self.out_of_order = 0  # shown after a later one of the same sender (marked late)
        self.strays = 0  # events for a number the soak did not send
        self.log: list[tuple[float, str, str]] = []  # (time, client, what): notices, kills


class Stamped(list):  # type: ignore[type-arg]
    """A core's event list that notes when each event was decided: the
    client hands events out later, when the loop gets to it, and the soak
    judges "shown after reported" and "shown late" by the core's moment."""

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        self.times = {id(item): time.time() for item in self}

    def append(self, item: Any) -> None:
        super().append(item)
        self.times[id(item)] = time.time()


class SoakCore(ChatCore):
    frames_log: list[tuple[float, str, Any]]
    stamps: dict[int, float]

    @property  # type: ignore[override]
    def _events(self) -> Stamped:
        return self.__dict__["_stamped"]  # type: ignore[no-any-return]

    @_events.setter
    def _events(self, value: list[Any]) -> None:
        self.__dict__["_stamped"] = Stamped(value)

    def handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind in ("expired", "deliver"):
            self.frames_log.append((time.time(), kind, frame.get("id")))
        super().handle(frame)

    def take_events(self) -> list[Any]:
        events = self._events
        self.stamps = events.times
        self._events = []
        return events


class SoakClient(ChatClient):
    """msgr's asyncio client, handed a relay at random before each connection,
    and kept away from all of them while ``offline_until`` lies ahead."""

    def __init__(self, name: str, peer: str, key: bytes, mode: Mode, ttl: int,
                 soak: Soak) -> None:
        core = SoakCore(me=name, peer=peer, key=key, mode=mode, ttl=ttl, clock=time.monotonic,
                        wallclock=time.time, rng=os.urandom)
        self.soak = soak
        core.frames_log = []
        self.soak_core = core
        self.offline_until = 0.0
        super().__init__(core, host="127.0.0.1", port=soak.pick_port(),
                         identity=SigningKey.generate(), on_event=self.on_event)

    async def _open(self) -> Any:
        self.port = self.soak.pick_port()
        return await super()._open()

    async def _sleep(self, seconds: float) -> bool:
        away = self.offline_until - time.monotonic()
        return await super()._sleep(max(seconds, away))

    def drop(self, offline: float) -> None:
        """Cut the connection as a crash would: no bye, an aborted socket."""
        self.offline_until = time.monotonic() + offline
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.transport.abort()

    def on_event(self, event: Any) -> None:
        self.soak.on_event(self, event)


class Soak:
    def __init__(self, args: argparse.Namespace, relays: list[Relay]) -> None:
        self.args = args
        self.relays = relays
        self.rng = random.Random(args.seed)
        self.tally = Tally()
        self.clients: list[SoakClient] = []

    def pick_port(self) -> int:
        return self.rng.choice(self.relays).port

    def on_event(self, client: SoakClient, event: Any) -> None:
        t = self.tally
        stamps = getattr(client.core, "stamps", {})
        now = stamps.get(id(event)) or time.time()
        if isinstance(event, Received):
            match = TEXT_RE.match(event.text)
            if match is None or int(match.group(1)) >= len(t.messages):
                t.strays += 1
                return
            msg = t.messages[int(match.group(1))]
            msg.shown.append(now)
            if now > msg.sent_at + msg.ttl:
                msg.late += 1
            if event.late:
                t.out_of_order += 1
            return
        if isinstance(event, Status):
            t.statuses[event.state] += 1
            t.log.append((time.time(), client.core.me, f"status {event.state}: {event.detail}"))
            return
        if isinstance(event, SessionStarted):
            t.sessions += 1
            return
        number = None
        if isinstance(event, (Undelivered, Delivered, Accepted)):
            number = event.n
        elif isinstance(event, Notice):
            t.notices[event.code] += 1
            t.log.append((time.time(), client.core.me, f"{event.code}: {event.text[:150]}"))
            if event.code == "fate_unknown" and (m := NUMBER_RE.search(event.text)):
                number = int(m.group(1))
        if number is None:
            return
        index = t.by_number.get((client.core.me, number))
        if index is None:
            t.strays += 1
            return
        msg = t.messages[index]
        if isinstance(event, Undelivered):
            if msg.reported is None:
                msg.reported = now
                msg.reason = event.reason
        elif isinstance(event, Delivered):
            msg.confirmed = True
        elif isinstance(event, Accepted):
            out = client.core.outbox.get(number)
            if out is not None and out.relay_id is not None:
                msg.relay_ids.append(out.relay_id)
        else:
            msg.unknown = True

    def send(self, client: SoakClient, ttl: int) -> None:
        t = self.tally
        index = len(t.messages)
        t.messages.append(Message(client.core.me, client.core.peer, time.time(), ttl))
        n = client.send(f"m{index} " + "x" * self.args.size)
        t.by_number[(client.core.me, n)] = index

    def settled(self) -> bool:
        return all(m.shown or m.reported is not None or m.unknown
                   for m in self.tally.messages) and all(not c.core.outbox for c in self.clients)


async def drops(soak: Soak, stop: asyncio.Event) -> None:
    """Cut clients at random: each about every 1/drop_rate seconds."""
    args, rng = soak.args, soak.rng
    total = args.drop_rate * len(soak.clients)
    while not stop.is_set() and total > 0:
        try:
            await asyncio.wait_for(stop.wait(), rng.expovariate(total))
            return
        except asyncio.TimeoutError:
            pass
        client = rng.choice(soak.clients)
        if rng.randrange(args.long_offline_one_in) == 0:
            offline = rng.uniform(args.ttl * 0.5, args.ttl * 1.5)
            soak.tally.long_offline += 1
        else:
            offline = 0.0  # back after the client's own backoff
        soak.tally.drops += 1
        client.drop(offline)


async def lag(soak: Soak) -> None:
    """The longest the soak's own event loop was late (its clients share it)."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(0.05)
        soak.tally.max_lag = max(soak.tally.max_lag, time.monotonic() - before - 0.05)


async def kills(soak: Soak, at: list[float], started: float) -> list[str]:
    """SIGKILL a relay at each of the moments ``at`` (seconds after start);
    start it again on its port ``--relay-down`` seconds later."""
    log = []
    for moment in at:
        await asyncio.sleep(max(0.0, started + moment - time.monotonic()))
        relay = soak.rng.choice(soak.relays)
        relay.kill()
        soak.tally.log.append((time.time(), "-", f"relay {relay.index} killed"))
        sent = len(soak.tally.messages)
        await asyncio.sleep(soak.args.relay_down)
        await relay.start()
        log.append(f"relay {relay.index} SIGKILLed at {moment:.1f} s (after {sent:,} messages), "
                   f"back {soak.args.relay_down:g} s later")
    return log


def explain(soak: Soak, silent: list[int]) -> None:
    """What the clients were told around a few of the messages that failed a check."""
    t = soak.tally
    msgs = t.messages
    client_modes = {c.core.me: c.core.mode.value for c in soak.clients}
    by_name = {c.core.me: c for c in soak.clients}
    for i in [i for i, m in enumerate(msgs) if m.shown and m.reported is not None
              and m.reported < max(m.shown)][:3]:
        m = msgs[i]
        print(f"  m{i} {m.sender}->{m.to} ({client_modes[m.sender]}) shown "
              f"{[round(x - m.sent_at, 2) for x in m.shown]} s after it was typed, reported "
              f"{(m.reported or 0) - m.sent_at:.2f} s after: {m.reason}")
    for i in [i for i, m in enumerate(msgs) if m.shown and m.reported is not None][:2]:
        m = msgs[i]
        print(f"  m{i} {m.sender}->{m.to} shown {[round(x - m.sent_at, 2) for x in m.shown]}, "
              f"reported {(m.reported or 0) - m.sent_at:.2f} s after it was typed; "
              f"accepted as {m.relay_ids}")
        for name in (m.sender, m.to):
            for when, kind, ident in by_name[name].soak_core.frames_log:
                if ident in m.relay_ids:
                    print(f"    {when - m.sent_at:+.2f} s: {name} got {kind} {ident}")
        for when, who, what in t.log:
            if who == m.to and m.sent_at <= when <= m.sent_at + m.ttl + 8 \
                    and what.startswith("status"):
                print(f"    {when - m.sent_at:+.2f} s: {who}: {what[:100]}")
    for i in [i for i, m in enumerate(msgs) if m.late][:3]:
        m = msgs[i]
        print(f"  m{i} {m.sender}->{m.to} ({client_modes[m.sender]}) shown "
              f"{[round(x - m.sent_at, 2) for x in m.shown]} s after it was typed (TTL {m.ttl})")
    for i in silent[:3]:
        m = msgs[i]
        print(f"  silent m{i} {m.sender}->{m.to} sent at {m.sent_at:.2f}, deadline "
              f"{m.sent_at + m.ttl:.2f}; what both sides were told around it:")
        near = [(when, who, what) for when, who, what in t.log
                if who in (m.to, "-") and m.sent_at + m.ttl - 3 <= when <= m.sent_at + m.ttl + 3]
        for when, who, what in near[:4]:
            print(f"    {when - m.sent_at - m.ttl:+.2f} s after its deadline, {who}: {what}")
        print(f"    accepted as {m.relay_ids}")
        for name in (m.sender, m.to):
            for when, kind, ident in by_name[name].soak_core.frames_log:
                if ident in m.relay_ids:
                    print(f"    {when - m.sent_at - m.ttl:+.2f} s: {name} got {kind} {ident}")
        for when, who, what in t.log:
            if who == m.sender and m.sent_at + m.ttl - 3 <= when <= m.sent_at + m.ttl + 8 \
                    and what.startswith("status"):
                print(f"    {when - m.sent_at - m.ttl:+.2f} s after its deadline, {who}: {what}")


async def run_soak(args: argparse.Namespace, workdir: str) -> int:
    engine = Engine(workdir)
    engine.start()
    relays = [Relay(i + 1, engine.url, workdir, tuple(args.serve)) for i in range(args.relays)]
    soak = Soak(args, relays)
    t = soak.tally
    try:
        await asyncio.gather(*(r.start() for r in relays))
        engine_cpu0 = engine.cpu_seconds()
        for i in range(args.pairs):
            key = os.urandom(32)  # what the passcode would derive: not under test here
            mode = Mode.STATIC if i % 2 else Mode.RATCHET
            soak.clients.append(SoakClient(f"a{i}", f"b{i}", key, mode, args.ttl, soak))
            soak.clients.append(SoakClient(f"b{i}", f"a{i}", key, mode, args.ttl, soak))
        tasks = [asyncio.create_task(c.run()) for c in soak.clients]
        lagging = asyncio.create_task(lag(soak))
        ratchet = sum(1 for c in soak.clients if c.core.mode is Mode.RATCHET)
        deadline = time.monotonic() + 60
        while t.sessions < ratchet and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if t.sessions < ratchet:
            print(f"soak_cluster: only {t.sessions} of {ratchet} secure sessions started "
                  "within 60 s", file=sys.stderr)
            return 2
        started = time.monotonic()
        duration = args.messages / args.rate
        moments = sorted(soak.rng.uniform(0.2, 0.7) * duration for _ in range(args.kills))
        stop = asyncio.Event()
        dropping = asyncio.create_task(drops(soak, stop))
        killing = asyncio.create_task(kills(soak, moments, started))
        tick = 0.02
        while len(t.messages) < args.messages:
            due = min(args.messages, int((time.monotonic() - started) * args.rate) + 1)
            while len(t.messages) < due:
                soak.send(soak.rng.choice(soak.clients), args.ttl)
            await asyncio.sleep(tick)
            if time.monotonic() - started > args.seconds:
                print("soak_cluster: gave up sending after --seconds", file=sys.stderr)
                break
        sent_for = time.monotonic() - started
        last_sent = time.monotonic()
        at_end = engine.leftovers()  # shows the count sees the keys while they exist
        stop.set()
        await dropping
        kill_log = await killing
        for c in soak.clients:            # everyone comes back now
            c.offline_until = 0.0
            c.reconnect_now()
        # Every message's fate is known by its TTL plus the static grace (the
        # longest a sender waits for an "expired" report) and the verdict
        # delay; a relay that is behind may report later still (a static
        # sender reports that late, for LATE_REPORT_WINDOW): wait that long
        # only while some message has no fate yet.
        settle_by = last_sent + args.ttl + STATIC_GRACE + CLOCK_TOLERANCE + 60
        while not soak.settled() and time.monotonic() < settle_by:
            await asyncio.sleep(0.5)
        await asyncio.sleep(1)  # a second copy, if one were coming
        relay_cpu = sum(r.cpu + r.proc_cpu() for r in relays)
        engine_cpu = engine.cpu_seconds() - engine_cpu0
        unsettled_outbox = sum(len(c.core.outbox) for c in soak.clients)
        lagging.cancel()
        for c in soak.clients:
            c.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The engine must forget everything once the last TTL is over (the
        # relays' expirers run about every second).
        forget_by = last_sent + args.ttl + 15
        left = engine.leftovers()
        while time.monotonic() < forget_by:
            left = engine.leftovers()
            if not any(v for k, v in left.items() if k != "expiry_reports"):
                break
            await asyncio.sleep(0.5)
        tracebacks = [f"relay {r.index}: {line}" for r in relays for line in r.tracebacks()]
    finally:
        for r in relays:
            r.stop()
        engine.stop()

    msgs = t.messages
    once = sum(1 for m in msgs if len(m.shown) == 1)
    twice = sum(1 for m in msgs if len(m.shown) > 1)
    late = sum(1 for m in msgs if m.late)
    reported = sum(1 for m in msgs if not m.shown and m.reported is not None)
    unknown = sum(1 for m in msgs if not m.shown and m.reported is None and m.unknown)
    silent = [i for i, m in enumerate(msgs)
              if not m.shown and m.reported is None and not m.unknown]
    # Shown, but what would have told its sender died with a connection (the
    # recipient's ack or receipt, or the relay's accepted) and the TTL ended
    # first: the sender was told "not delivered", wrongly but never before
    # it was shown. No protocol can tell these apart from a loss in time.
    shown_yet_reported = sum(1 for m in msgs if m.shown and m.reported is not None
                             and m.reported >= max(m.shown))
    shown_after_report = sum(1 for m in msgs if m.shown and m.reported is not None
                             and m.reported < max(m.shown))
    reasons = collections.Counter(re.sub(r"\d+", "N", m.reason) for m in msgs
                                  if not m.shown and m.reported is not None)
    client_modes = {c.core.me: c.core.mode.value for c in soak.clients}
    leftover = {k: v for k, v in left.items() if k != "expiry_reports"}
    print(f"{len(msgs):,} messages in {sent_for:.1f} s ({len(msgs) / sent_for:,.0f} msg/s) "
          f"between {len(soak.clients)} clients ({ratchet} default mode, "
          f"{len(soak.clients) - ratchet} --static) on {args.relays} relays, TTL {args.ttl} s")
    print(f"client drops: {t.drops:,} ({t.long_offline} kept away up to 1.5 TTLs); "
          f"reconnects: {t.statuses['connected']:,}")
    for line in kill_log:
        print(line)
    print(f"shown once: {once:,}")
    print(f"shown twice or more: {twice}  (must be 0)")
    print(f"not shown, reported to the sender as not delivered: {reported:,}"
          + (f"  {dict(reasons.most_common(4))}" if reasons else ""))
    print(f"not shown, fate reported unknown to the sender: {unknown:,}")
    print(f"lost WITHOUT a report: {len(silent)}  (must be 0)"
          + (f"  e.g. {[(i, msgs[i].sender, msgs[i].to) for i in silent[:5]]}" if silent else ""))
    print(f"shown after the sender was told it was not delivered: {shown_after_report}  "
          "(must be 0)")
    print(f"shown, yet reported not delivered (its ack, accepted or receipt was cut off): "
          f"{shown_yet_reported}")
    print(f"shown after its deadline: {late}  (must be 0); shown out of order, marked late "
          f"(allowed): {t.out_of_order}")
    print(f"left unsettled in the senders' outboxes at the end: {unsettled_outbox}")
    print(f"held by the engine when sending stopped: {at_end['queued']:,} messages in "
          f"{at_end['mailboxes']} mailboxes, {at_end['shard_bytes']:,} bytes")
    print(f"left in the engine after the last TTL: {leftover}  (all must be 0); expiry "
          f"reports not yet fetched by their senders: {left['expiry_reports']}")
    print(f"CPU: relays {relay_cpu:.1f} s ({relay_cpu / len(msgs) * 1e6:,.0f} us/message), "
          f"engine {engine_cpu:.1f} s ({engine_cpu / len(msgs) * 1e6:,.0f} us/message)")
    print(f"the soak's event loop (all clients) was at most {t.max_lag:.2f} s late")
    if t.notices:
        print(f"client notices: {dict(t.notices)}")
    if t.strays:
        print(f"events for unknown messages: {t.strays}")
    for line in tracebacks[:10]:
        print(f"TRACEBACK in {line}")
    syr = collections.Counter((client_modes[m.sender], re.sub(r"[ab]?\d+", "N", m.reason))
                              for m in msgs if m.shown and m.reported is not None)
    if syr:
        print(f"  shown yet reported, by mode and reason: {dict(syr)}")
    ok = (not twice and not silent and not shown_after_report and not late
          and not any(leftover.values()) and not tracebacks)
    if not ok or args.explain:
        explain(soak, silent)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--relays", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=30,
                        help="pairs of clients; even ones default mode, odd ones --static")
    parser.add_argument("--rate", type=float, default=400, help="messages per second offered")
    parser.add_argument("--size", type=int, default=100, help="bytes of text per message")
    parser.add_argument("--ttl", type=int, default=30, help="every message's TTL, seconds")
    parser.add_argument("--drop-rate", type=float, default=0.05,
                        help="random drops per client per second")
    parser.add_argument("--long-offline-one-in", type=int, default=LONG_OFFLINE_ONE_IN,
                        help="one drop in this many keeps its client away up to 1.5 TTLs")
    parser.add_argument("--kills", type=int, default=1, help="relays SIGKILLed while sending")
    parser.add_argument("--relay-down", type=float, default=3.0,
                        help="seconds a killed relay stays down")
    parser.add_argument("--explain", action="store_true",
                        help="trace a few messages of each kind even when all checks pass")
    parser.add_argument("--seed", type=int, default=None, help="for the random choices")
    parser.add_argument("--seconds", type=float, default=900, help="give up sending after this")
    parser.add_argument("--serve", nargs=argparse.REMAINDER, default=[],
                        help="further options for every msgr.py serve (last)")
    args = parser.parse_args(argv)
    try:
        import redis  # noqa: F401
    except ImportError:
        print("soak_cluster: redis-py is not installed (pip install 'msgr[redis]')",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="msgr-soak-cluster-") as workdir:
        return asyncio.run(run_soak(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
