"""Reconnect storm: how long N logged-in TLS clients take to be back in session
after a relay restart, with and without TLS session resumption.

    python -m tools.storm --clients 10000 --workers 2 --kill all
    python -m tools.storm --clients 10000 --workers 2 --kill all --no-resume
    python -m tools.storm --clients 10000 --kill relay

It starts ``msgr serve --tls`` (with ``--workers N`` and, above 1 worker, a
redis-server of its own unless ``--store URL`` names one), then ``--procs``
client processes that log in ``--clients`` clients between them: real TLS
(msgr's own TLS layer in client mode), a real ``hello`` and an Ed25519
signature over the relay's challenge, as msgr's client does; each keeps the
ticket of its TLS session in memory. Once all are in session it restarts the
relay (``--kill``):

* ``one``: SIGKILL one worker; its clients reconnect (to either worker) and
  the parent starts it again;
* ``all``: SIGKILL every worker at once; the parent starts them again (after
  its 0.1 s backoff), with the ticket keys it has held since it started;
* ``relay``: SIGTERM the whole relay (clients are told ``shutdown``) and
  start a new one on the same port: new ticket keys, so no ticket resumes.

Clients reconnect as msgr's client does (connection.py: the first wait
0.5 s shortened by up to 30% at random, doubling to 5 s after a failed
attempt) and offer their ticket unless ``--no-resume``. The result is the
time from the kill until the last client that lost its connection has its
``welcome`` again, how many resumed, and the CPU the relay's processes spent
(user+system from /proc) over the storm, and how many connections the
machine's kernel dropped for a full accept queue meanwhile (``ListenOverflows``
in /proc/net/netstat: machine-wide, so other programs' count too). One JSON
line on stdout; progress on stderr. The machine's load average is reported
with it: other work shares the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK = os.sysconf("SC_CLK_TCK")


def _say(text: str) -> None:
    print(f"storm: {text}", file=sys.stderr, flush=True)


# -- a client process -------------------------------------------------------------------

class StormClient(asyncio.Protocol):
    """One logged-in client that reconnects like msgr's (see the module)."""

    def __init__(self, gen: Gen, name: str) -> None:
        from nacl.signing import SigningKey

        import framing

        self.gen = gen
        self.name = name
        self.key = SigningKey(os.urandom(32))
        self.session: Any = None
        self.decoder = framing.FrameDecoder(max_size=1 << 20)
        self.transport: Any = None
        self.in_session = False
        self.delay = 0.5
        self.welcomed = gen.loop.create_future()

    async def connect(self) -> None:
        from msgrlib.relay import tlsconn

        gen = self.gen
        self.decoder = type(self.decoder)(max_size=1 << 20)
        self.welcomed = gen.loop.create_future()
        session = self.session if gen.resume else None
        _, proto = await gen.loop.create_connection(
            lambda: tlsconn.TLSProtocol(gen.context, self, buffer=gen.buffer,
                                        server_side=False, server_hostname="localhost",
                                        session=session, handshake_timeout=60),
            "127.0.0.1", gen.port)
        await proto.handshake
        await self.welcomed

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._send({"type": "hello", "v": 1, "user": self.name,
                    "key": base64.b64encode(bytes(self.key.verify_key)).decode()})

    def _send(self, frame: dict[str, Any]) -> None:
        import framing

        self.transport.write(framing.encode_frame(frame))

    def data_received(self, data: bytes) -> None:
        from msgrlib import protocol
        from msgrlib.tls import x509

        for frame in self.decoder.feed(data):
            kind = frame.get("type")
            if kind == "challenge":
                ssl_object = self.transport.get_extra_info("ssl_object")
                binding = protocol.tls_binding(x509.fingerprint(
                    ssl_object.getpeercert(binary_form=True)))
                nonce = base64.b64decode(frame["nonce"])
                sig = self.key.sign(protocol.auth_message(nonce, binding, self.name)).signature
                self._send({"type": "auth", "sig": base64.b64encode(sig).decode()})
            elif kind == "welcome":
                ssl_object = self.transport.get_extra_info("ssl_object")
                session = ssl_object.session
                if session is not None and session.has_ticket:
                    self.session = session  # memory only
                self.gen.welcomed(self, resumed=ssl_object.session_reused)
                self.in_session = True
                self.delay = 0.5
                if not self.welcomed.done():
                    self.welcomed.set_result(None)
            elif kind == "error" and frame.get("fatal"):
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError(f"lost before welcome: {exc}"))
        if self.in_session:
            self.in_session = False
            self.gen.lost_one(self)


class Gen:
    def __init__(self, job: dict[str, Any]) -> None:
        from msgrlib.relay import tlsconn
        from msgrlib.tls import contexts

        self.loop = asyncio.get_running_loop()
        self.port = job["port"]
        self.resume = job["resume"]
        self.context = contexts.client_context()  # a loopback test: no verification
        self.buffer = tlsconn.ReadBuffer()
        self.clients = [StormClient(self, f"{job['prefix']}{i}") for i in range(job["count"])]
        self.lost = 0
        self.back = 0
        self.resumed = 0
        self.full = 0
        self.failures = 0
        self.last = 0.0
        self.counting = False

    def welcomed(self, client: StormClient, *, resumed: bool) -> None:
        if self.counting:
            self.back += 1
            self.last = time.monotonic()
            if resumed:
                self.resumed += 1
            else:
                self.full += 1

    def lost_one(self, client: StormClient) -> None:
        if self.counting:
            self.lost += 1
            self.loop.create_task(self.reconnect(client))

    async def reconnect(self, client: StormClient) -> None:
        while True:
            wait = client.delay * (1 - random.uniform(0.0, 0.3))
            client.delay = min(client.delay * 2, 5.0)
            await asyncio.sleep(wait)
            try:
                await asyncio.wait_for(client.connect(), 60)
                return
            except (OSError, asyncio.TimeoutError, ConnectionError, Exception):  # noqa: BLE001
                self.failures += 1
                if client.transport is not None:
                    client.transport.abort()

    async def login_all(self, concurrency: int = 50) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(client: StormClient) -> None:
            async with sem:
                for attempt in range(5):
                    try:
                        await asyncio.wait_for(client.connect(), 60)
                        return
                    except (OSError, asyncio.TimeoutError, ConnectionError):
                        if client.transport is not None:
                            client.transport.abort()
                        await asyncio.sleep(0.5 * (attempt + 1))
                raise RuntimeError(f"{client.name} could not log in")

        await asyncio.gather(*(one(c) for c in self.clients))

    async def main(self) -> None:
        await self.login_all()
        self.counting = True
        _out({"ready": len(self.clients)})
        reader = asyncio.StreamReader()
        await self.loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                          sys.stdin)
        while line := await reader.readline():
            if json.loads(line).get("status"):
                _out({"lost": self.lost, "back": self.back, "last": self.last,
                      "resumed": self.resumed, "full": self.full, "failures": self.failures,
                      "cpu_s": time.process_time()})


def _out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def gen_main(job: dict[str, Any]) -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def run() -> None:
        await Gen(job).main()

    asyncio.run(run())
    return 0


# -- one handshake's CPU at the relay -----------------------------------------------------

def handshake_cpu(count: int) -> dict[str, Any]:
    """The relay's CPU (this thread's clock, around the server's calls only)
    for a full and for a resumed TLS 1.3 handshake, in memory: the relay's
    own context and certificate (Ed25519), msgr's client context, ``count``
    of each, alternated so that other load on the machine weighs on both
    alike. Medians of 10 batches, in microseconds."""
    import ssl
    import statistics

    from msgrlib.tls import contexts

    with tempfile.TemporaryDirectory(prefix="msgr-hs-") as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        contexts.ensure_certificate(cert, key)
        server = contexts.server_context(cert, key)
    client = contexts.client_context()

    def one(session: Any) -> tuple[float, Any, bool]:
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        cli = client.wrap_bio(c_in, c_out, server_side=False, session=session)
        srv = None
        srv_cpu = 0.0
        cli_done = srv_done = False
        for _ in range(8):
            if not cli_done:
                try:
                    cli.do_handshake()
                    cli_done = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            t0 = time.thread_time()
            if srv is None:
                srv = server.wrap_bio(s_in, s_out, server_side=True)
            if not srv_done:
                try:
                    srv.do_handshake()
                    srv_done = True
                except ssl.SSLWantReadError:
                    pass
            out = s_out.read()  # the server's flight; after Finished, its ticket
            srv_cpu += time.thread_time() - t0
            c_in.write(out)
            if cli_done and srv_done:
                break
        with contextlib.suppress(ssl.SSLWantReadError):
            cli.read(1)  # take the ticket
        return srv_cpu, cli.session, cli.session_reused

    _, ticket, _ = one(None)
    full: list[float] = []
    resumed: list[float] = []
    for _ in range(10):
        f = r = 0.0
        for _ in range(count // 10):
            cpu, _, reused = one(None)
            assert not reused
            f += cpu
            cpu, _, reused = one(ticket)
            assert reused, "the relay did not resume the session"
            r += cpu
        full.append(f / (count // 10) * 1e6)
        resumed.append(r / (count // 10) * 1e6)
    return {"handshakes": count, "full_us": round(statistics.median(full)),
            "resumed_us": round(statistics.median(resumed)),
            "openssl": ssl.OPENSSL_VERSION, "loadavg": [round(x, 2) for x in os.getloadavg()]}


# -- the orchestrator ---------------------------------------------------------------------

def _cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def _listen_overflows() -> int:
    """The machine's count of connections dropped for a full accept queue."""
    try:
        with open("/proc/net/netstat") as netstat:
            lines = netstat.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as kids:
            return [int(p) for p in kids.read().split()]
    except OSError:
        return []


class Relay:
    def __init__(self, args: argparse.Namespace, tmp: str, store: str | None) -> None:
        self.args = args
        self.tmp = tmp
        self.store = store
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        args = self.args
        argv = [sys.executable, os.path.join(ROOT, "msgr.py"), "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--tls", "--cert", os.path.join(self.tmp, "cert.pem"),
                "--key", os.path.join(self.tmp, "key.pem"), "--log-level", "warning",
                "--max-connections", str(args.clients * 2), "--max-per-address",
                str(args.clients * 2), "--claim-rate", str(args.clients),
                "--claim-burst", str(args.clients * 2), "--idle-timeout", "3600",
                "--hello-timeout", "60", "--tls-timeout", "60"]
        if args.workers > 1:
            argv += ["--workers", str(args.workers)]
        if self.store:
            argv += ["--store", self.store]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise SystemExit(f"storm: the relay did not start: {line!r}")
        self.port = int(line.split("listening on ", 1)[1].split()[0].rsplit(":", 1)[1].rstrip(","))

    def pids(self) -> list[int]:
        """The relay's processes: the workers (or the single relay)."""
        assert self.proc is not None
        return _children(self.proc.pid) if self.args.workers > 1 else [self.proc.pid]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _engine(tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        raise SystemExit("storm: --workers above 1 needs an engine: install redis-server or "
                         "pass --store URL")
    path = os.path.join(tmp, "engine.sock")
    proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", path, "--unixsocketperm",
                             "700", "--dir", tmp, "--save", "", "--appendonly", "no",
                             "--maxmemory-policy", "noeviction", "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)
            return proc, f"unix://{path}"
        time.sleep(0.01)
    raise SystemExit("storm: redis-server did not start")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.kill in ("one", "all") and args.workers < 2:
        raise SystemExit("storm: --kill one/all needs --workers 2 or more (a parent to "
                         "restart them); use --kill relay")
    with tempfile.TemporaryDirectory(prefix="msgr-storm-") as tmp:
        engine = None
        store = args.store
        if store is None and args.workers > 1:
            engine, store = _engine(tmp)
        relay = Relay(args, tmp, store)
        gens: list[subprocess.Popen[str]] = []
        try:
            relay.start()
            _say(f"relay on port {relay.port}, {args.workers} worker(s); logging in "
                 f"{args.clients} clients from {args.procs} processes")
            per = [args.clients // args.procs + (i < args.clients % args.procs)
                   for i in range(args.procs)]
            started = time.monotonic()
            for i, count in enumerate(per):
                job = {"port": relay.port, "count": count, "prefix": f"s{i}x",
                       "resume": not args.no_resume}
                gens.append(subprocess.Popen(
                    [sys.executable, "-m", "tools.storm", "--gen", json.dumps(job)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
            for gen in gens:
                assert gen.stdout is not None
                line = gen.stdout.readline()
                if not line or "ready" not in json.loads(line):
                    raise SystemExit(f"storm: a client process failed: {line!r}")
            _say(f"all {args.clients} in session after {time.monotonic() - started:.1f} s")
            time.sleep(args.settle)

            def status() -> list[dict[str, Any]]:
                out = []
                for gen in gens:
                    assert gen.stdin is not None and gen.stdout is not None
                    gen.stdin.write('{"status": true}\n')
                    gen.stdin.flush()
                for gen in gens:
                    assert gen.stdout is not None
                    out.append(json.loads(gen.stdout.readline()))
                return out

            gen_cpu0 = sum(s["cpu_s"] for s in status())
            load0 = os.getloadavg()
            victims = relay.pids()
            cpu_before = {pid: _cpu(pid) for pid in victims}
            kept_cpu0 = 0.0
            overflows0 = _listen_overflows()
            killed_at = time.monotonic()
            if args.kill == "one":
                victims = victims[:1]
                os.kill(victims[0], signal.SIGKILL)
                kept_cpu0 = sum(c for p, c in cpu_before.items() if p not in victims)
            elif args.kill == "all":
                for pid in victims:
                    os.kill(pid, signal.SIGKILL)
            else:
                relay.stop()
                relay.start()  # the same port
            _say(f"killed ({args.kill}); waiting for every client to be back")
            deadline = killed_at + args.timeout
            quiet_since = None
            while True:
                time.sleep(0.25)
                states = status()
                lost = sum(s["lost"] for s in states)
                back = sum(s["back"] for s in states)
                now = time.monotonic()
                if lost and back >= lost:
                    quiet_since = quiet_since or now
                    if now - quiet_since >= 1.0:
                        break
                else:
                    quiet_since = None
                if now > deadline:
                    _say(f"gave up: {back} of {lost} back after {args.timeout:g} s")
                    break
            last = max(s["last"] for s in states)
            pids_now = relay.pids()
            relay_cpu = sum(_cpu(p) for p in pids_now if p not in cpu_before)
            if args.kill == "one":
                relay_cpu += sum(_cpu(p) for p in pids_now if p in cpu_before) - kept_cpu0
            result = {
                "clients": args.clients, "workers": args.workers, "kill": args.kill,
                "resume": not args.no_resume, "lost": lost, "back": back,
                "seconds": round(last - killed_at, 2) if back else None,
                "resumed": sum(s["resumed"] for s in states),
                "full": sum(s["full"] for s in states),
                "failed_attempts": sum(s["failures"] for s in states),
                "relay_cpu_s": round(relay_cpu, 2),
                "relay_cpu_ms_per_reconnect": round(relay_cpu / back * 1000, 3) if back else None,
                "clients_cpu_s": round(sum(s["cpu_s"] for s in states) - gen_cpu0, 2),
                "listen_overflows": _listen_overflows() - overflows0,
                "loadavg_before": [round(x, 2) for x in load0],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            }
            return result
        finally:
            for gen in gens:
                if gen.stdin is not None:
                    with contextlib.suppress(OSError):
                        gen.stdin.close()
                gen.terminate()
            for gen in gens:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    gen.wait(10)
            relay.stop()
            if engine is not None:
                engine.terminate()
                engine.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.storm", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--store", default=None, metavar="URL",
                        help="an engine to use (default above 1 worker: one of our own)")
    parser.add_argument("--kill", choices=("one", "all", "relay"), default=None,
                        help="what to restart (default: all with --workers, else relay)")
    parser.add_argument("--no-resume", action="store_true",
                        help="clients do not offer their TLS session tickets")
    parser.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds between the last login and the kill")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--handshakes", type=int, default=0, metavar="N",
                        help="instead: the relay's CPU for N full and N resumed TLS "
                        "handshakes, in memory")
    parser.add_argument("--gen", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.handshakes:
        print(json.dumps(handshake_cpu(args.handshakes)), flush=True)
        return 0
    if args.gen:
        return gen_main(json.loads(args.gen))
    if args.kill is None:
        args.kill = "all" if args.workers > 1 else "relay"
    result = run(args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
