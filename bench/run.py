"""Run the benchmark and print one table: msgr beside its two baselines.

``python -m bench`` (or ``python bench/run.py``) from the repository root;
``--quick`` for a shorter run. See ``--help`` and BENCHMARKS.md.

Every network figure comes from separate processes on 127.0.0.1: one relay
(msgr's ``msgr.py serve``, or a baseline from :mod:`bench.baselines`) and one
or two load generators (:mod:`bench.loadgen`). Relay CPU time and memory are
read from ``/proc/PID``. A figure is the median of ``--runs`` measurement
windows, shown with the spread (min-max). The run is bounded: sections that
would not fit in ``--budget`` seconds are skipped and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import inproc
from bench.procs import RELAY_NAMES, RESULTS, ROOT, Engine, Gen, Relay, StallMeter, raise_nofile

KIND_ORDER = ["msgr", "ws", "proto", "base", "redis1", "redis2", "redisw2"]
_CLK_TCK = os.sysconf("SC_CLK_TCK")
SECTIONS = ["throughput", "latency", "memory", "handshake", "store", "client", "cli"]
#: Sections run only when named (--only, --store redis): each takes minutes,
#: and the full run must stay within its budget.
EXTRA_SECTIONS = ["capacity", "engine"]


@dataclass
class Plan:
    runs: int = 3
    #: The p99 of one window moves most between windows (BENCHMARKS.md):
    #: more windows for the latency figures.
    latency_runs: int = 5
    warmup: float = 0.7
    window: float = 1.5
    latency_warmup: float = 0.5
    pairs: tuple[int, ...] = (1, 100, 1000)
    tls_modes: tuple[bool, ...] = (False, True)
    #: Sends in flight per pair, by pair count (same for every relay).
    inflight: dict[int, int] = field(default_factory=lambda: {1: 256, 100: 32, 1000: 8})
    rates: tuple[int, ...] = (1000, 5000)
    latency_pairs: int = 1000
    idle_steps: tuple[int, ...] = (5000, 10000)
    handshake_window: float = 1.5
    store_sizes: tuple[int, ...] = (10**3, 10**4, 10**5, 10**6)
    budget: float = 480.0
    #: capacity: the p99 a rate must keep (ms), the range searched (msg/s),
    #: windows per rate tried, and when to stop (rates this close, msg/s).
    capacity_p99_ms: float = 10.0
    capacity_range: tuple[int, int] = (2000, 16000)
    capacity_runs: int = 3
    capacity_step: int = 500
    #: engine: the offered rate of its latency figures (msg/s), pairs.
    engine_rate: int = 5000
    engine_pairs: int = 1000


QUICK = dict(runs=3, latency_runs=3, warmup=0.3, window=0.5, latency_warmup=0.3, rates=(5000,),
             tls_modes=(True,), store_sizes=(10**3, 10**6), budget=80.0, capacity_runs=1,
             capacity_step=2000)
#: What --quick leaves out (see --only to run them alone).
QUICK_SKIPS = ("memory", "handshake")


# -- results -----------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    unit: str
    values: dict[str, list[float]]          # relay kind -> samples
    higher_is_better: bool = True          # informational; the ratio is always msgr/base
    target: str = ""
    check: Callable[[Row], bool | None] | None = None
    details: dict[str, str] = field(default_factory=dict)  # a second line per relay

    def median(self, kind: str) -> float | None:
        samples = self.values.get(kind)
        return statistics.median(samples) if samples else None

    def ratio(self, kind: str) -> float | None:
        mine, base = self.median("msgr"), self.median(kind)
        if mine is None or not base:
            return None
        return mine / base


class Results:
    def __init__(self) -> None:
        self.retried = 0
        self.contaminated = 0
        self.stall_retried = 0
        self.stall_kept = 0
        self.discarded: list[dict[str, Any]] = []  # windows measured again, for the JSON
        self.rows: list[Row | str] = []
        self.raw: dict[str, Any] = {}
        self.skipped: list[str] = []
        self.problems: list[str] = []

    def section(self, title: str) -> None:
        self.rows.append(title)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "msg/s" or unit == "/s":
        return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(row: Row, kind: str) -> str:
    samples = row.values.get(kind)
    if not samples:
        return "-"
    med = statistics.median(samples)
    if len(samples) == 1:
        return _fmt(med, row.unit)
    return f"{_fmt(med, row.unit)} [{_fmt(min(samples), row.unit)}-{_fmt(max(samples), row.unit)}]"


def render(results: Results, kinds: list[str]) -> str:
    # A column per relay that any row has figures for (the engine section
    # brings its own), msgr first, each with its ratio msgr / that relay.
    shown = {k for row in results.rows if isinstance(row, Row) for k, v in row.values.items()
             if v}
    baselines = [k for k in KIND_ORDER if k != "msgr" and (k in kinds or k in shown)]
    head = ["figure", "msgr"]
    for k in baselines:
        head += [RELAY_NAMES[k], "ratio"]
    head += ["target", "met"]
    lines: list[list[str]] = []
    for row in results.rows:
        if isinstance(row, str):
            lines.append([row])
            continue
        cells = [f"{row.label} ({row.unit})" if row.unit else row.label, _cell(row, "msgr")]
        for k in baselines:
            ratio = row.ratio(k)
            cells += [_cell(row, k), "-" if ratio is None else f"{ratio:.2f}x"]
        verdict = row.check(row) if row.check else None
        cells += [row.target, "" if verdict is None else ("yes" if verdict else "NO")]
        lines.append(cells)
        if row.details:
            detail = ["", row.details.get("msgr", "")]
            for k in baselines:
                detail += [row.details.get(k, ""), ""]
            detail += ["", ""]
            lines.append(detail)
    widths = [max(len(line[i]) for line in [head, *lines] if len(line) > 1)
              for i in range(len(head))]
    out = []

    def fmt(cells: list[str]) -> str:
        last = len(cells) - 2  # the target and verdict columns are text, left-aligned
        parts = [cell.ljust(widths[i]) if i == 0 or i >= last else cell.rjust(widths[i])
                 for i, cell in enumerate(cells)]
        return "  ".join(parts).rstrip()

    out.append(fmt(head))
    out.append("  ".join("-" * w for w in widths))
    for line in lines:
        out.append(f"-- {line[0]}" if len(line) == 1 else fmt(line))
    return "\n".join(out)


# -- the machine ---------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "openssl": ssl.OPENSSL_VERSION, "kernel": platform.release(),
            "memory": _mem_total(), "load": load}


def _mem_total() -> str:
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        return f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "?"


# -- network measurements ---------------------------------------------------------------------


#: The relay runs alone on one CPU, the load generators on the other.
RELAY_CPU, GEN_CPU = 1, 0
#: A window during which processes that are not ours used more than this
#: many cores (the machine is shared) is measured again, at most MAX_RETRIES
#: times; the table says how many were.
FOREIGN_LIMIT = 0.15
MAX_RETRIES = 2
#: A latency window during which either core was taken away for longer than
#: this (ms), as seen by bench.stalls at real-time priority, is measured again
#: likewise: its p99 would be the machine's, not the relay's. It is the p99
#: target. The table shows the stalls; the JSON keeps every window.
STALL_LIMIT_MS = 2.0


def machine_busy() -> float:
    """Non-idle CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: steal (time the hypervisor
    # gave to other machines) counts as busy, hence as foreign.
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _CLK_TCK


#: msgr on a Redis engine (serve --store): kind -> (relay processes, workers
#: each). redisw2 is one `serve --workers 2`: two workers on one port, the
#: kernel spreading connections between them (both pinned to the relays' core).
ENGINE_KINDS = {"redis1": (1, 1), "redis2": (2, 1), "redisw2": (1, 2)}


@dataclass
class Setup:
    """One measured relay of an arena: its processes and their generators."""

    relays: list[Relay] = field(default_factory=list)
    gens: list[Gen] = field(default_factory=list)
    engine: Engine | None = None
    #: The engine's used_memory before any client logged in, and its growth
    #: per logged-in client after (name claim and connection entry).
    engine_idle: int = 0
    claim_bytes: float = 0.0

    def procs(self) -> list[Any]:
        return [*self.relays, *self.gens, *([self.engine] if self.engine else [])]


class Arena:
    """Every relay of one configuration, started with its generators connected,
    then measured in turn (interleaved), so slow drifts in the machine's load
    (it is shared) fall on all relays alike and connections are made once.

    While one relay is measured the others and their generators are stopped
    (SIGSTOP, then SIGCONT before their own turn). Left running, an idle
    relay still answers its clients' heartbeats on the same core, and the
    scheduler, which favours a process that has slept, ran it ahead of the
    measured relay: a kernel trace (perf sched) showed the measured relay
    kept waiting up to 6 ms while it was ready to run. Nothing of theirs is
    lost meanwhile: the kernel holds what their sockets receive, and a turn
    (a few seconds) is far shorter than any timeout of theirs.
    """

    def __init__(self, bench: Bench, tls: bool, pairs: int, *, latency: bool,
                 kinds: list[str] | None = None, stop_others: bool = True) -> None:
        self.bench = bench
        self.stop_others = stop_others
        self.tls = tls
        self.pairs = pairs
        self.latency = latency
        self.kinds = list(bench.kinds if kinds is None else kinds)
        self.setups: dict[str, Setup] = {}
        self.setup_s: dict[str, float] = {}

    def __enter__(self) -> Arena:
        try:
            for kind in self.kinds:
                self._start(kind)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self, kind: str) -> None:
        bench, pairs = self.bench, self.pairs
        ngen = 2 if pairs >= 1000 else 1
        setup = Setup()
        self.setups[kind] = setup
        tls_files = bench.tls_files if self.tls else None
        nodes, workers = ENGINE_KINDS.get(kind, (0, 1))
        if nodes:
            # msgr on a Redis engine: the engine on the generators' core (the
            # relays' core is the one measured), fresh for this arena so that
            # no claim of an earlier arena's clients is left in it.
            setup.engine = Engine(bench.tmp, cpu=GEN_CPU)
            more = ("--workers", str(workers)) if workers > 1 else ()
            setup.relays = [Relay("msgr", tls_files, cpu=RELAY_CPU, extra=(
                "--store", setup.engine.url, *more), log=f"relay-{kind}-{n}.log")
                for n in range(nodes)]
            setup.engine_idle = int(setup.engine.info("memory").get("used_memory", 0))
        elif kind == "base":
            setup.relays = [Relay("msgr", tls_files, cpu=RELAY_CPU, root=bench.base_root,
                                  log="relay-base.log")]
        else:
            setup.relays = [Relay(kind, tls_files, cpu=RELAY_CPU)]
        ports = [r.port for r in setup.relays]
        for i in range(ngen):
            # With two relays, every sender is on the first and its receiver on
            # the second: each message crosses the engine from node to node.
            setup.gens.append(Gen({"mode": "latency" if self.latency else "throughput",
                                   "port": ports[0], "recv_port": ports[-1], "tls": self.tls,
                                   "ws": kind == "ws", "pairs": pairs // ngen,
                                   "window": bench.plan.inflight.get(pairs, 8),
                                   "tag": f"g{i}"}, cpu=GEN_CPU))
        self.setup_s[kind] = max(g.expect("ready", 180)["setup_s"] for g in setup.gens)
        if setup.engine is not None:
            used = int(setup.engine.info("memory").get("used_memory", 0))
            setup.claim_bytes = (used - setup.engine_idle) / (2 * (pairs // ngen) * ngen)

    def _only(self, kind: str) -> None:
        """Let only ``kind``'s relay and generators run (see the class docstring).
        A relay on an engine, and its engine, keep running (only its generators
        stop): stopped longer than its lease (10 s), a relay is taken for dead
        and its clients are closed. Idle, it costs a lease renewal every 2.5 s
        and an expiry poll a second. Without ``stop_others`` nothing is stopped."""
        for other, setup in self.setups.items():
            if not self.stop_others:
                break
            sig = signal.SIGCONT if other == kind else signal.SIGSTOP
            procs = setup.gens if setup.engine is not None else [*setup.relays, *setup.gens]
            for proc in procs:
                proc.signal(sig)

    def __exit__(self, *exc: object) -> None:
        for setup in self.setups.values():
            for proc in setup.procs():
                proc.signal(signal.SIGCONT)
            for gen in setup.gens:
                try:
                    gen.tell({"close": True})
                except (OSError, ValueError):
                    pass
            for gen in setup.gens:
                gen.stop()
            for relay in setup.relays:
                relay.stop()
            if setup.engine is not None:
                setup.engine.stop()

    def phase(self, kind: str, warmup: float, window: float, *,
              rate: float | None = None) -> dict[str, Any]:
        """Measure one window; run it again (at most MAX_RETRIES times) if other
        processes on this shared machine took more than FOREIGN_LIMIT of a core,
        or if a latency window saw a stall longer than STALL_LIMIT_MS."""
        attempts = 0
        results = self.bench.results
        while True:
            run = self._phase(kind, warmup, window, rate=rate)
            attempts += 1
            foreign = run["foreign_cpu"] > FOREIGN_LIMIT
            stalled = run.get("longest_stall_ms", 0.0) > STALL_LIMIT_MS
            if not (foreign or stalled) or attempts > MAX_RETRIES or self.bench.left() < 30:
                run["attempts"] = attempts
                results.contaminated += foreign
                results.stall_kept += stalled
                return run
            results.discarded.append(run)
            if foreign:
                results.retried += 1
                self.bench.log(f"  other processes used {run['foreign_cpu']:.2f} core: again")
            else:
                results.stall_retried += 1
                self.bench.log(f"  the machine stalled {run['longest_stall_ms']:.1f} ms: again")

    def _ours(self) -> float:
        """CPU seconds of every process of this benchmark (them and us)."""
        total = sum(os.times()[:2])  # this process
        for setup in self.setups.values():
            total += sum(p.cpu() for p in setup.procs())
        return total

    def _phase(self, kind: str, warmup: float, window: float, *,
               rate: float | None = None, hold: bool = False) -> dict[str, Any]:
        setup = self.setups[kind]
        relays, gens, engine = setup.relays, setup.gens, setup.engine
        self._only(kind)
        start = time.monotonic() + 0.05
        bounds = [start + warmup, start + warmup + window]
        for gen in gens:
            gen.tell({"bounds": bounds, "rate": (rate or 0) / len(gens), "hold": hold})
        cpu, gcpu, ecpu, busy, ours, waited = [], [], [], [], [], []
        for bound in bounds:
            delay = bound - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            waited.append((sum(r.waited() for r in relays), sum(g.waited() for g in gens)))
            cpu.append(sum(r.cpu() for r in relays))
            gcpu.append(sum(g.cpu() for g in gens))
            ecpu.append(engine.cpu() if engine is not None else 0.0)
            busy.append(machine_busy())
            ours.append(self._ours())
        outs = [g.expect("result", 60)["result"] for g in gens]
        for relay in relays:
            _quiet(relay)
        span = bounds[1] - bounds[0]
        delivered = sum(o["counts"][0] for o in outs)
        used = cpu[1] - cpu[0]
        relay = relays[0]
        run: dict[str, Any] = {
            "msgs": delivered / span, "us_per_msg": used / delivered * 1e6 if delivered else None,
            "relay_cpu": used / span, "gen_cpu": (gcpu[1] - gcpu[0]) / span,
            "foreign_cpu": max(0.0, (busy[1] - busy[0]) - (ours[1] - ours[0])) / span,
            "window": bounds, "kind": kind, "rate": rate,
            "relay_waited_ms": (waited[1][0] - waited[0][0]) * 1000,
            "gen_waited_ms": (waited[1][1] - waited[0][1]) * 1000}
        if engine is not None:
            run["engine_cpu"] = (ecpu[1] - ecpu[0]) / span
            run["engine_us_per_msg"] = ((ecpu[1] - ecpu[0]) / delivered * 1e6
                                        if delivered else None)
        meters = self.bench.meters
        if rate and meters:
            run["stalls"] = {core: m.within(bounds[0], bounds[-1]) for core, m in meters.items()}
            run["stalls_rt"] = all(m.rt for m in meters.values())
            run["longest_stall_ms"] = max((ms for got in run["stalls"].values() for ms in got),
                                          default=0.0)
        if rate:
            samples = sorted(x for o in outs for x in o["samples"][0])
            run["n"] = len(samples)
            if samples:
                run["p50_ms"] = samples[len(samples) // 2] / 1e6
                run["p99_ms"] = samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1e6
        errors = sum(o["errors"] for o in outs)
        lost = sum(o["lost"] for o in outs)
        if errors or lost or not all(r.alive() for r in relays):
            sample = next((o["error_sample"] for o in outs if o["error_sample"]), "")
            self.bench.results.problems.append(
                f"{RELAY_NAMES[kind]} {'TLS' if self.tls else 'plain'} {self.pairs} pairs"
                f"{f' @{rate:g}/s' if rate else ''}: {errors} error frames, {lost} "
                f"connections lost, relay {'alive' if relay.alive() else 'DEAD'} {sample}")
        if hold:
            return run
        self.bench.log(f"{kind:5} {'tls' if self.tls else 'plain':5} {self.pairs:5} pairs"
                       f"{f' @{rate:g}/s' if rate else ''}: {_describe(run)}")
        return run


def _quiet(relay: Relay, timeout: float = 5.0) -> None:
    """Wait until the relay is idle (under 10% of a core over 0.1 s)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        before = relay.cpu()
        time.sleep(0.1)
        if relay.cpu() - before < 0.011:
            return


def _rotate(kinds: list[str], n: int) -> list[str]:
    n %= len(kinds)
    return kinds[n:] + kinds[:n]


class Bench:
    def __init__(self, plan: Plan, kinds: list[str], tls_files: tuple[str, str],
                 verbose: bool, *, tmp: str = "", base_root: str = "") -> None:
        self.plan = plan
        self.kinds = kinds
        self.tls_files = tls_files
        #: A directory for engine sockets; the source tree of --base.
        self.tmp = tmp
        self.base_root = base_root
        self.verbose = verbose
        self.started = time.monotonic()
        self.results = Results()
        self.meters: dict[str, StallMeter] = {}  # during latency phases

    def left(self) -> float:
        return self.plan.budget - (time.monotonic() - self.started)

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=sys.stderr,
                  flush=True)

    def arena(self, tls: bool, pairs: int, *, latency: bool = False,
              kinds: list[str] | None = None, stop_others: bool = True) -> Arena:
        return Arena(self, tls, pairs, latency=latency, kinds=kinds, stop_others=stop_others)

    # sections ------------------------------------------------------------------------------

    def network(self, throughput: bool, latency: bool) -> None:
        """Throughput and latency: one arena per (TLS, pairs); latency phases run in
        the TLS arena of ``latency_pairs`` pairs, after its throughput phases."""
        plan = self.plan
        lat_config = (True, plan.latency_pairs)
        configs = [(tls, pairs) for tls in plan.tls_modes for pairs in plan.pairs
                   ] if throughput else []
        if latency and lat_config not in configs:
            configs.append(lat_config)
        tput: dict[tuple[bool, int], dict[str, list[dict[str, Any]]]] = {}
        lat: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for tls, pairs in configs:
            do_tput = throughput and tls in plan.tls_modes and pairs in plan.pairs
            do_lat = latency and (tls, pairs) == lat_config
            # Setup (about 5 ms per TLS login on this kind of machine) plus phases.
            phase = plan.warmup + plan.window + 0.3
            need = len(self.kinds) * (1 + pairs * (0.005 if tls else 0.002))
            need += len(self.kinds) * phase * (plan.runs * do_tput
                                               + plan.latency_runs * len(plan.rates) * do_lat)
            if self.left() < need:
                self.results.skipped.append(f"{pairs} pairs tls={tls}")
                continue
            with self.arena(tls, pairs) as arena:
                if do_tput:
                    data: dict[str, list[dict[str, Any]]] = {k: [] for k in self.kinds}
                    for rep in range(plan.runs):
                        for kind in _rotate(self.kinds, rep):
                            data[kind].append(arena.phase(kind, plan.warmup, plan.window))
                    tput[(tls, pairs)] = data
                if do_lat:
                    for rate in plan.rates:
                        lat[rate] = {k: [] for k in self.kinds}
                    self.meters = {"relay": StallMeter(RELAY_CPU), "gen": StallMeter(GEN_CPU)}
                    try:
                        for rep in range(plan.latency_runs):
                            for rate in plan.rates:
                                for kind in _rotate(self.kinds, rep):
                                    lat[rate][kind].append(arena.phase(
                                        kind, plan.latency_warmup, plan.window, rate=rate))
                    finally:
                        for meter in self.meters.values():
                            meter.stop()
                        self.meters = {}
        if throughput:
            self._throughput_rows(tput)
        if latency:
            self._latency_rows(lat)

    def _throughput_rows(self, tput: dict[tuple[bool, int], dict[str, list[dict[str, Any]]]]
                         ) -> None:
        res = self.results
        for tls in self.plan.tls_modes:
            res.section(f"throughput, 251-byte messages, delivered msg/s at saturation, "
                        f"{'TLS' if tls else 'plain TCP'}")
            for pairs in self.plan.pairs:
                data = tput.get((tls, pairs))
                if data is None:
                    continue
                res.raw[f"throughput/{'tls' if tls else 'plain'}/{pairs}"] = data
                label = f"{pairs:,} pair{'s' if pairs > 1 else ''}"
                target, check = "", None
                if tls:
                    target, check = _throughput_target(pairs)
                res.add(Row(label, "msg/s", {k: [r["msgs"] for r in v] for k, v in data.items()},
                            target=target, check=check))
                cpu = Row("  relay CPU per message", "us",
                          {k: [r["us_per_msg"] for r in v if r["us_per_msg"]]
                           for k, v in data.items()}, higher_is_better=False)
                cpu.details = {k: "relay {:.0f}% gen {:.0f}% CPU".format(
                    100 * statistics.median(r["relay_cpu"] for r in v),
                    100 * statistics.median(r["gen_cpu"] for r in v)) for k, v in data.items()}
                res.add(cpu)

    def _latency_rows(self, lat: dict[int, dict[str, list[dict[str, Any]]]]) -> None:
        res = self.results
        res.section(f"latency, send to delivery, {self.plan.latency_pairs:,} pairs, TLS, "
                    "fixed offered rate")
        for rate in self.plan.rates:
            data = lat.get(rate)
            if data is None:
                continue
            res.raw[f"latency/{rate}"] = data
            for q in ("p50", "p99"):
                target, check = "", None
                if q == "p99" and rate == 5000:
                    target, check = "<= 2 ms", _at_most("msgr", 2.0)
                row = Row(f"{q} at {rate:,} msg/s offered", "ms",
                          {k: [r[f"{q}_ms"] for r in v if f"{q}_ms" in r]
                           for k, v in data.items()},
                          higher_is_better=False, target=target, check=check)
                if q == "p99":
                    row.details = {k: "relay {:.0f}% gen {:.0f}% CPU".format(
                        100 * statistics.median(r["relay_cpu"] for r in v),
                        100 * statistics.median(r["gen_cpu"] for r in v))
                        for k, v in data.items()}
                res.add(row)
            if any(d["rate"] == rate for d in res.discarded):
                res.add(Row("  p99, the windows measured again included", "ms",
                            {k: [r["p99_ms"] for r in v + [d for d in res.discarded
                                                           if (d["kind"], d["rate"]) == (k, rate)]
                                 if "p99_ms" in r] for k, v in data.items()},
                            higher_is_better=False))
            if all("stalls" in r for v in data.values() for r in v):
                stalls = Row("  machine stalls > 1 ms on the relay's core", "per window",
                             {k: [len(r["stalls"]["relay"]) for r in v] for k, v in data.items()},
                             higher_is_better=False)
                stalls.details = {k: "longest {:.1f} ms; gen core {:.0f}".format(
                    max((ms for r in v for ms in r["stalls"]["relay"]), default=0.0),
                    statistics.median(len(r["stalls"]["gen"]) for r in v))
                    for k, v in data.items()}
                res.add(stalls)

    def capacity(self) -> None:
        """The highest offered rate at which p99 stays under capacity_p99_ms with
        1,000 TLS pairs: a bisection over offered rates, each rate measured in
        capacity_runs latency windows (median p99), msgr (and --base) only."""
        plan, res = self.plan, self.results
        kinds = [k for k in self.kinds if k in ("msgr", "base")]
        limit = plan.capacity_p99_ms
        res.section(f"capacity: highest offered rate with p99 < {limit:g} ms, "
                    f"{plan.latency_pairs:,} TLS pairs (bisection)")
        if self.left() < 60:
            res.skipped.append("capacity")
            return
        tried: dict[str, dict[int, list[dict[str, Any]]]] = {k: {} for k in kinds}
        best: dict[str, list[float]] = {}
        with self.arena(True, plan.latency_pairs, kinds=kinds) as arena:
            self.meters = {"relay": StallMeter(RELAY_CPU), "gen": StallMeter(GEN_CPU)}
            try:
                for kind in kinds:
                    best[kind] = [self._bisect(arena, kind, tried[kind])]
            finally:
                for meter in self.meters.values():
                    meter.stop()
                self.meters = {}
        res.raw["capacity"] = {k: {str(r): v for r, v in t.items()} for k, t in tried.items()}
        row = res.add(Row(f"highest rate with p99 < {limit:g} ms", "msg/s", best))
        row.details = {k: f"{len(t)} rates tried" for k, t in tried.items()}
        for rate in sorted({r for t in tried.values() for r in t}):
            got = {k: [w["p99_ms"] for w in t[rate] if "p99_ms" in w]
                   for k, t in tried.items() if rate in t}
            row = res.add(Row(f"  p99 at {rate:,} msg/s offered", "ms", got,
                              higher_is_better=False))
            row.details = {k: "relay {:.0f}% gen {:.0f}% CPU".format(
                100 * statistics.median(w["relay_cpu"] for w in tried[k][rate]),
                100 * statistics.median(w["gen_cpu"] for w in tried[k][rate]))
                for k in got}

    def _bisect(self, arena: Arena, kind: str,
                tried: dict[int, list[dict[str, Any]]]) -> float:
        plan = self.plan
        limit = plan.capacity_p99_ms

        def ok(rate: int) -> bool:
            runs = [arena.phase(kind, plan.latency_warmup, plan.window, rate=rate)
                    for _ in range(plan.capacity_runs)]
            tried[rate] = runs
            p99 = statistics.median(r.get("p99_ms", float("inf")) for r in runs)
            self.log(f"{kind:5} capacity @{rate}/s: p99 {p99:.2f} ms "
                     f"({'under' if p99 < limit else 'over'} {limit:g} ms)")
            return p99 < limit

        lo, hi = plan.capacity_range
        if not ok(lo):  # below the range: halve until a rate passes
            hi, lo = lo, lo // 2
            while not ok(lo):
                if lo < 250:
                    return 0
                hi, lo = lo, lo // 2
        elif ok(hi):
            return hi  # at least: the range's top
        # Bisect until the bounds are capacity_step apart (a quarter of the
        # lower bound when that is closer: a low capacity gets a finer step).
        while hi - lo > min(plan.capacity_step, max(lo // 4, 50)) and self.left() > 20:
            mid = (lo + hi) // 2 // 50 * 50
            if ok(mid):
                lo = mid
            else:
                hi = mid
        return lo

    def engine(self) -> None:
        """msgr on a Redis engine (serve --store), 1 and 2 relay processes and
        one `serve --workers 2`,
        beside the in-memory relay in the same arena: throughput at saturation,
        relay and engine CPU per message, latency at engine_rate msg/s; then
        the engine's memory per logged-in client and per waiting message."""
        plan, res = self.plan, self.results
        pairs, rate = plan.engine_pairs, plan.engine_rate
        kinds = ["msgr", "redis1", "redis2", "redisw2"]
        res.section(f"msgr on a Redis engine (serve --store), {pairs:,} TLS pairs; "
                    "engine on the generators' core")
        if self.left() < 90:
            res.skipped.append("engine")
            return
        tput: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        lat: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        memory: dict[str, dict[str, float]] = {}
        # Nothing is stopped between turns here: a turn on the engine can
        # take long enough (a slow window measured again, its drain) that a
        # stopped generator's clients would miss the relay's 60 s heartbeat
        # timeout. The idle setups cost a ping per connection every 15 s
        # (133/s at 1,000 pairs) and, on the engine, a lease renewal every
        # 2.5 s and an expiry poll a second.
        with self.arena(True, pairs, kinds=kinds, stop_others=False) as arena:
            for rep in range(plan.runs):
                for kind in _rotate(kinds, rep):
                    tput[kind].append(arena.phase(kind, plan.warmup, plan.window))
            self.meters = {"relay": StallMeter(RELAY_CPU), "gen": StallMeter(GEN_CPU)}
            try:
                for rep in range(plan.runs):
                    for kind in _rotate(kinds, rep):
                        lat[kind].append(arena.phase(kind, plan.latency_warmup, plan.window,
                                                     rate=rate))
            finally:
                for meter in self.meters.values():
                    meter.stop()
                self.meters = {}
            for kind in kinds[1:]:
                memory[kind] = self._engine_memory(arena, kind)
        res.raw["engine"] = {"throughput": tput, "latency": lat, "memory": memory}
        row = res.add(Row("throughput at saturation", "msg/s",
                          {k: [r["msgs"] for r in v] for k, v in tput.items()}))
        row.details = {k: "relay {:.0f}% gen {:.0f}%{} CPU".format(
            100 * statistics.median(r["relay_cpu"] for r in v),
            100 * statistics.median(r["gen_cpu"] for r in v),
            "" if k == "msgr" else " engine {:.0f}%".format(
                100 * statistics.median(r["engine_cpu"] for r in v)))
            for k, v in tput.items()}
        res.add(Row("  relay CPU per message (all relays)", "us",
                    {k: [r["us_per_msg"] for r in v if r["us_per_msg"]] for k, v in tput.items()},
                    higher_is_better=False))
        res.add(Row("  engine CPU per message", "us",
                    {k: [r["engine_us_per_msg"] for r in v if r.get("engine_us_per_msg")]
                     for k, v in tput.items()}, higher_is_better=False))
        for q in ("p50", "p99"):
            row = res.add(Row(f"{q} at {rate:,} msg/s offered", "ms",
                              {k: [r[f"{q}_ms"] for r in v if f"{q}_ms" in r]
                               for k, v in lat.items()}, higher_is_better=False))
            if q == "p99":
                row.details = {k: "relay {:.0f}% gen {:.0f}%{} CPU".format(
                    100 * statistics.median(r["relay_cpu"] for r in v),
                    100 * statistics.median(r["gen_cpu"] for r in v),
                    "" if k == "msgr" else " engine {:.0f}%".format(
                        100 * statistics.median(r["engine_cpu"] for r in v)))
                    for k, v in lat.items()}
        res.add(Row(f"  relay CPU per message at {rate:,} msg/s (all relays)", "us",
                    {k: [r["us_per_msg"] for r in v if r["us_per_msg"]] for k, v in lat.items()},
                    higher_is_better=False))
        res.add(Row(f"  engine CPU per message at {rate:,} msg/s", "us",
                    {k: [r["engine_us_per_msg"] for r in v if r.get("engine_us_per_msg")]
                     for k, v in lat.items()}, higher_is_better=False))
        res.add(Row("engine memory per logged-in client", "bytes",
                    {k: [m["claim_bytes"]] for k, m in memory.items()}, higher_is_better=False))
        res.add(Row("engine memory per waiting message (251-byte send)", "bytes",
                    {k: [m["held_bytes"]] for k, m in memory.items() if m.get("held_bytes")},
                    higher_is_better=False))

    def _engine_memory(self, arena: Arena, kind: str) -> dict[str, float]:
        """The engine's used_memory per logged-in client (from the arena's
        setup) and per waiting message: one window at engine_rate whose
        receivers acknowledge nothing, so every message stays in the engine."""
        setup = arena.setups[kind]
        engine = setup.engine
        assert engine is not None
        before = int(engine.info("memory").get("used_memory", 0))
        held0 = _int_reply(engine.command("ZCARD", "msgr:exp"))
        run = arena._phase(kind, 0.0, 1.0, rate=self.plan.engine_rate, hold=True)
        time.sleep(0.2)
        after = int(engine.info("memory").get("used_memory", 0))
        held = _int_reply(engine.command("ZCARD", "msgr:exp")) - held0
        out = {"claim_bytes": setup.claim_bytes, "held": held,
               "held_bytes": (after - before) / held if held else 0.0,
               "hold_msgs": run["msgs"]}
        self.log(f"{kind:5} engine memory: {setup.claim_bytes:.0f} B per client, "
                 f"{out['held_bytes']:.0f} B per waiting message ({held} held)")
        return out

    def idle_run(self, kind: str, tls: bool) -> dict[str, Any]:
        """RSS growth of the relay per idle, logged-in connection."""
        steps = self.plan.idle_steps
        relay = Relay(kind, self.tls_files if tls else None)
        gens: list[Gen] = []
        out: dict[str, Any] = {"per_conn": {}, "rss": {}}
        try:
            warm = Gen({"mode": "idle", "port": relay.port, "tls": tls, "ws": kind == "ws",
                        "conns": 20, "tag": "w"})
            gens.append(warm)
            warm.expect("ready", 60)
            time.sleep(0.3)
            base = relay.rss()
            out["rss"][0] = base
            total = 0
            for n, step in enumerate(steps):
                need = step - total
                procs = 2
                batch = [Gen({"mode": "idle", "port": relay.port, "tls": tls,
                              "ws": kind == "ws", "conns": need // procs,
                              "tag": f"s{n}p{p}x", "concurrency": 50}) for p in range(procs)]
                gens += batch
                for g in batch:
                    g.expect("ready", 180)
                total = step
                time.sleep(0.5)
                rss = relay.rss()
                out["rss"][step] = rss
                out["per_conn"][step] = (rss - base) / step
            if not relay.alive():
                raise RuntimeError(f"{kind} relay died")
            for g in gens:
                g.tell({"close": True})
            lost = sum(g.expect("result", 30)["result"]["lost"] for g in gens)
            if lost:
                self.results.problems.append(f"{RELAY_NAMES[kind]} idle tls={tls}: "
                                             f"{lost} idle connections dropped")
        finally:
            for g in gens:
                g.stop()
            relay.stop()
        self.log(f"{kind:5} idle tls={tls}: " + ", ".join(
            f"{n}: {v / 1024:.1f} KiB/conn" for n, v in out["per_conn"].items())
            + f"; rss {out['rss'][steps[-1]] / 2**20:.0f} MiB")
        return out

    def memory(self) -> None:
        res = self.results
        steps = self.plan.idle_steps
        res.section("memory, relay RSS growth per idle logged-in connection "
                    "(baselines: one run)")
        for tls in (False, True):
            data: dict[str, list[dict[str, Any]]] = {k: [] for k in self.kinds}
            # msgr: runs times. Baselines: once; their figure is asyncio's (or
            # websockets') fixed per-connection cost and barely moves (+-1%).
            for rep in range(self.plan.runs):
                for kind in self.kinds if rep == 0 else ["msgr"]:
                    if self.left() < (40 if tls else 20):
                        res.skipped.append(f"memory {kind} tls={tls} run {rep + 1}")
                        continue
                    data[kind].append(self.idle_run(kind, tls))
            res.raw[f"memory/{'tls' if tls else 'plain'}"] = data
            limit = 40 if tls else 4
            for step in steps:
                res.add(Row(f"{'TLS' if tls else 'plain'}, {step:,} connections", "KiB/conn",
                            {k: [r["per_conn"][step] / 1024 for r in v]
                             for k, v in data.items() if v},
                            higher_is_better=False, target=f"<= {limit} KiB",
                            check=_at_most("msgr", limit)))
            if tls:
                last = steps[-1]
                res.add(Row(f"relay RSS with {last:,} TLS clients", "MiB",
                            {k: [r["rss"][last] / 2**20 for r in v]
                             for k, v in data.items() if v},
                            higher_is_better=False, target="< 500 MiB",
                            check=_at_most("msgr", 500, strict=True)))

    def handshake_run(self, kind: str) -> list[dict[str, float]]:
        plan = self.plan
        relay = Relay(kind, self.tls_files, cpu=RELAY_CPU)
        gens = []
        try:
            gens = [Gen({"mode": "handshake", "port": relay.port, "concurrency": 8},
                        cpu=GEN_CPU) for _ in range(2)]
            for g in gens:
                g.expect("ready", 30)
            start = time.monotonic() + 0.1
            bounds = [start + 0.5 + i * plan.handshake_window for i in range(plan.runs + 1)]
            for g in gens:
                g.tell({"bounds": bounds})
            cpu = []
            for bound in bounds:
                time.sleep(max(0.0, bound - time.monotonic()))
                cpu.append(relay.cpu())
            outs = [g.expect("result", 60)["result"] for g in gens]
        finally:
            for g in gens:
                g.stop()
            relay.stop()
        runs = []
        for i in range(plan.runs):
            span = bounds[i + 1] - bounds[i]
            n = sum(o["counts"][i] for o in outs)
            c = cpu[i + 1] - cpu[i]
            runs.append({"per_s": n / span, "us_each": c / n * 1e6 if n else None,
                         "relay_cpu": c / span})
        self.log(f"{kind:5} handshakes: " + "; ".join(
            f"{r['per_s']:.0f}/s relay {r['relay_cpu'] * 100:.0f}%" for r in runs))
        return runs

    def handshake(self) -> None:
        res = self.results
        res.section("TLS handshakes (TLS 1.3, Ed25519 certificate), 16 concurrent clients")
        data = {}
        for kind in self.kinds:
            if self.left() < 12:
                res.skipped.append(f"handshakes {kind}")
                continue
            data[kind] = self.handshake_run(kind)
        res.raw["handshake"] = data
        row = Row("handshakes per second", "/s", {k: [r["per_s"] for r in v]
                                                  for k, v in data.items()})
        row.details = {k: "relay {:.0f}% CPU".format(
            100 * statistics.median(r["relay_cpu"] for r in v)) for k, v in data.items()}
        res.add(row)
        res.add(Row("  relay CPU per handshake", "us",
                    {k: [r["us_each"] for r in v if r["us_each"]] for k, v in data.items()},
                    higher_is_better=False))

    # in-process ---------------------------------------------------------------------------

    def store(self) -> None:
        res = self.results
        sizes = list(self.plan.store_sizes)
        res.section("TTL store (in-process: msgr's Relay.tick over store.MemoryStore, "
                    "plus one dead heap entry per 4 stored)")
        figures = inproc.store_figures(sizes, self.plan.runs)
        res.raw["store"] = figures
        small, big = sizes[0], sizes[-1]
        for n in sizes:
            row = Row(f"idle tick, {n:,} stored", "us", {"msgr": figures[n]["idle_us"]},
                      higher_is_better=False)
            if n == big and n != small:
                row.target = f"same as at {small:,}"
                base = statistics.median(figures[small]["idle_us"])
                row.check = lambda r, base=base: (r.median("msgr") or 0) <= base * 1.5 + 0.5
            res.add(row)
        for n in sizes:
            row = Row(f"CPU per 1,000 expirations, {n:,} stored", "ms",
                      {"msgr": figures[n]["expire_ms"]}, higher_is_better=False)
            if n == 10**6:
                row.target, row.check = "<= 5 ms", _at_most("msgr", 5.0)
            res.add(row)

    def client(self) -> None:
        res = self.results
        res.section("client-side crypto (in-process)")
        try:
            import kdf
        except ImportError as err:
            res.skipped.append(f"client crypto: {err}")
            return
        p = kdf.DEFAULT_PARAMS
        a = inproc.argon2_figures(self.plan.runs)
        res.add(Row(f"Argon2id, DEFAULT_PARAMS (t={p.time_cost}, m={p.memory_kib // 1024} MiB, "
                    f"p={p.parallelism}), wall", "ms", {"msgr": a["wall_ms"]},
                    higher_is_better=False))
        res.add(Row("  same, CPU (all threads)", "ms", {"msgr": a["cpu_ms"]},
                    higher_is_better=False))
        c = inproc.cpace_figures(self.plan.runs)
        res.add(Row("CPace handshake, 4 messages, both sides, CPU", "ms", {"msgr": c["cpu_ms"]},
                    higher_is_better=False))
        r = inproc.ratchet_figures(self.plan.runs)
        res.add(Row("ratchet encrypt+decrypt, 100 B, same direction", "us",
                    {"msgr": r["one_way_us"]}, higher_is_better=False))
        res.add(Row("ratchet encrypt+decrypt, 100 B, alternating (DH step)", "us",
                    {"msgr": r["ping_pong_us"]}, higher_is_better=False))
        res.raw["client"] = {"argon2": a, "cpace": c, "ratchet": r}

    def cli(self) -> None:
        res = self.results
        res.section("command line")
        h = inproc.help_figures(max(self.plan.runs, 5))
        res.raw["cli"] = h
        res.add(Row("python msgr.py --help, wall", "ms", {"msgr": h["wall_ms"]},
                    higher_is_better=False, target="< 150 ms",
                    check=_at_most("msgr", 150, strict=True)))


def _int_reply(reply: bytes) -> int:
    """A RESP integer reply (":123\r\n"), 0 for anything else."""
    try:
        return int(reply[1:].split(b"\r\n", 1)[0]) if reply.startswith(b":") else 0
    except ValueError:
        return 0


def _describe(run: dict[str, Any]) -> str:
    text = f"{run['msgs']:.0f} msg/s"
    if run.get("us_per_msg"):
        text += f" {run['us_per_msg']:.1f}us"
    if "p99_ms" in run:
        text += f" p50 {run['p50_ms']:.2f} p99 {run['p99_ms']:.2f}ms"
    if "engine_cpu" in run:
        text += f" engine {run['engine_cpu'] * 100:.0f}%"
        if run.get("engine_us_per_msg"):
            text += f" {run['engine_us_per_msg']:.1f}us"
    return text + (f" (relay {run['relay_cpu'] * 100:.0f}% gen {run['gen_cpu'] * 100:.0f}%,"
                   f" waited: relay {run['relay_waited_ms']:.0f} ms,"
                   f" gen {run['gen_waited_ms']:.0f} ms)")


def _at_most(kind: str, limit: float, *, strict: bool = False
             ) -> Callable[[Row], bool | None]:
    def check(row: Row) -> bool | None:
        value = row.median(kind)
        if value is None:
            return None
        return value < limit if strict else value <= limit
    return check


def _throughput_target(pairs: int) -> tuple[str, Callable[[Row], bool | None]]:
    ws_min = {100: 2.5, 1000: 1.5}.get(pairs)

    def check(row: Row) -> bool | None:
        verdicts = []
        if ws_min is not None and row.ratio("ws") is not None:
            verdicts.append(row.ratio("ws") >= ws_min)  # type: ignore[operator]
        if row.ratio("proto") is not None:
            verdicts.append(row.ratio("proto") >= 0.85)  # type: ignore[operator]
        return all(verdicts) if verdicts else None

    text = (f">= {ws_min}x ws, " if ws_min else "") + ">= 0.85x proto"
    return text, check


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="msgr relay and client benchmark (loopback only, bounded in time).")
    parser.add_argument("--quick", action="store_true",
                        help="about a minute: TLS throughput, latency at 5,000 msg/s, short "
                        "windows, the store at 10^3 and 10^6; no memory or handshake sections")
    parser.add_argument("--only", metavar="SECTIONS",
                        help=f"comma-separated subset of: {','.join(SECTIONS + EXTRA_SECTIONS)} "
                        "(capacity and engine run only when named)")
    parser.add_argument("--store", choices=["redis"],
                        help="also run the engine section: msgr on a redis-server this run "
                        "starts (1 and 2 relay processes, --workers 2) beside the in-memory relay")
    parser.add_argument("--engine-rate", type=int, metavar="MSG/S",
                        help="the engine section's offered rate for p50/p99 (default 5000)")
    parser.add_argument("--base", metavar="COMMIT",
                        help="also measure msgr's relay as of COMMIT (git archive into a "
                        "temporary directory), interleaved with today's: the 'base' column")
    parser.add_argument("--relays", default="msgr,ws,proto",
                        help="relays to measure (default: msgr,ws,proto)")
    parser.add_argument("--runs", type=int,
                        help="measurement windows per figure (default 3, latency 5)")
    parser.add_argument("--budget", type=float, help="seconds the whole run may take; "
                        "sections that would not fit are skipped (default 480, quick 80)")
    parser.add_argument("--pairs", metavar="N,N",
                        help="throughput pair counts (default 1,100,1000)")
    parser.add_argument("--transport", choices=["plain", "tls", "both"],
                        help="throughput over plain TCP, TLS or both (default both; quick: tls)")
    parser.add_argument("--json", metavar="FILE", help="also write every sample here "
                        "(default bench/results/last.json)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)

    plan = Plan(**QUICK) if args.quick else Plan()  # type: ignore[arg-type]
    if args.runs:
        plan.runs = plan.latency_runs = args.runs
    if args.budget:
        plan.budget = args.budget
    if args.engine_rate:
        plan.engine_rate = args.engine_rate
    if args.pairs:
        plan.pairs = tuple(int(n) for n in args.pairs.split(","))
    if args.transport:
        plan.tls_modes = {"plain": (False,), "tls": (True,), "both": (False, True)}[
            args.transport]
    sections = args.only.split(",") if args.only else [
        s for s in SECTIONS if not (args.quick and s in QUICK_SKIPS)]
    if args.store and "engine" not in sections:
        sections.append("engine")
    unknown = set(sections) - set(SECTIONS + EXTRA_SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    kinds = [k for k in KIND_ORDER if k in args.relays.split(",")]
    if "msgr" not in kinds:
        parser.error("--relays must include msgr")
    if args.base and "base" not in kinds:
        kinds.append("base")
    elif "base" in kinds and not args.base:
        parser.error("--relays base needs --base COMMIT")
    if "ws" in kinds and _ws_version() == "(not installed)":
        print("websockets is not installed (pip install -r requirements-dev.txt): "
              "no websockets baseline", file=sys.stderr)
        kinds.remove("ws")

    raise_nofile()
    # SIGTERM (make interrupted, a CI timeout) unwinds like Ctrl-C, so every
    # relay and generator this run started is stopped by its finally block.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.chdir(ROOT)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="msgr-bench-") as tmp:
        from msgrlib.tls import contexts

        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        contexts.ensure_certificate(cert, key, hostnames=("localhost",),
                                 ip_addresses=("127.0.0.1",))
        base_root = ""
        if args.base:
            base_root = _unpack_commit(args.base, os.path.join(tmp, "base"))
            info["base"] = args.base
        bench = Bench(plan, kinds, (cert, key), verbose=not args.quiet, tmp=tmp,
                      base_root=base_root)
        if "throughput" in sections or "latency" in sections:
            bench.network("throughput" in sections, "latency" in sections)
        for name in SECTIONS[2:] + EXTRA_SECTIONS:
            if name in sections:
                bench.log(f"section {name}")
                getattr(bench, name)()
    elapsed = time.monotonic() - bench.started
    info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    res = bench.results

    print(f"msgr benchmark{' (quick)' if args.quick else ''}: {info['cpu']}, {info['cores']} "
          f"cores, {info['memory']}, Linux {info['kernel']}, Python {info['python']}, "
          f"{info['openssl']}")
    print(f"load average before {info['load']}, after {info['load_end']}; {elapsed:.0f} s; "
          f"median of {plan.runs} windows ({plan.latency_runs} for latency) [min-max]; "
          "ratio = msgr / baseline; "
          f"ws = websockets {_ws_version()}")
    print("msgr runs with its default limits except: " + " ".join(
        __import__("bench.procs", fromlist=["x"]).MSGR_BENCH_LIMITS))
    if args.base:
        print(f"base = msgr's relay at {info['base']} (same options), measured interleaved")
    print()
    print(render(res, kinds))
    if res.retried:
        print(f"{res.retried} window(s) measured again: other processes on this shared machine "
              f"used more than {FOREIGN_LIMIT} core during them; {res.contaminated} kept "
              f"after {MAX_RETRIES} retries (see foreign_cpu in the JSON)")
    if res.stall_retried:
        print(f"{res.stall_retried} latency window(s) measured again: a core was taken from "
              f"every process for more than {STALL_LIMIT_MS:g} ms (bench/stalls.py); "
              f"{res.stall_kept} kept after {MAX_RETRIES} retries (all in the JSON, "
              "under discarded)")
    for problem in res.problems:
        print(f"problem: {problem}")
    for skipped in res.skipped:
        print(f"skipped (time budget): {skipped}")

    path = args.json or os.path.join(RESULTS, "last.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": info, "plan": plan.__dict__, "elapsed_s": elapsed,
                   "raw": res.raw, "discarded": res.discarded, "problems": res.problems,
                   "skipped": res.skipped},
                  f, indent=1, default=str)
    return 1 if res.problems else 0


def _unpack_commit(commit: str, where: str) -> str:
    """The source tree of ``commit`` in ``where`` (git archive: the repository
    and its worktrees are left untouched); its full commit id in the log."""
    import subprocess

    full = subprocess.run(["git", "-C", ROOT, "rev-parse", "--verify", commit + "^{commit}"],
                          capture_output=True, text=True, check=True).stdout.strip()
    os.makedirs(where)
    archive = subprocess.Popen(["git", "-C", ROOT, "archive", full], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", where], stdin=archive.stdout, check=True)
    archive.wait()
    print(f"base: {full}", file=sys.stderr)
    return where


def _ws_version() -> str:
    try:
        import websockets
        return websockets.__version__
    except ImportError:
        return "(not installed)"


if __name__ == "__main__":
    sys.exit(main())
