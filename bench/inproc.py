"""In-process figures: the TTL store, the client's crypto, CLI start-up.

Each function returns a list of samples (one per run); :mod:`bench.run` takes
the median and the spread. Times are CPU time of this process
(``time.process_time``) unless the name says wall.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from typing import Any

from bench.procs import PYTHON, ROOT

# -- TTL store ------------------------------------------------------------------------------


def _filled_relay(n: int, seed: int = 1) -> tuple[Any, list[float], list[float]]:
    """A Relay whose store holds ``n`` live messages and ``n/4`` dead heap entries.

    Messages arrive over 5 s of clock with TTLs drawn from 5 to 60 s, to 10,000
    recipients, and one in five is acknowledged at once: a dead heap entry
    (lazy deletion), as on a relay whose clients read their mail. Nothing has
    expired yet when measuring starts. The store's memory budget is raised so
    that 10**6 fit; every other rule is the relay's own.
    """
    from msgrlib.relay import rules as relay
    from msgrlib.relay import store

    clock = [0.0]
    mem = store.MemoryStore(mailbox_messages=10**6, mailbox_bytes=10**12,
                            store_bytes=10**12)
    config = relay.RelayConfig()
    rel = relay.Relay(config, clock=lambda: clock[0], wallclock=lambda: 1.7e9 + clock[0],
                      rng=os.urandom, store=mem)
    rng = random.Random(seed)
    body = "x" * 200  # one shared string: the figure is about the index, not the bodies
    recipients = [f"u{i}" for i in range(10_000)]
    total = n + n // 4
    step = 5.0 / total
    expiries = []
    for i in range(total):
        now = i * step
        held = mem.add("sender", recipients[i % 10_000], body, "msg",
                       rng.randint(config.ttl_min, config.ttl_max), now, 1.7e9 + now)
        if i % 5 == 4:
            mem.ack(held.recipient, held.id)  # read at once: a dead entry
        else:
            expiries.append(held.expires_at)
    expiries.sort()
    return rel, clock, expiries


def store_figures(sizes: list[int], runs: int) -> dict[int, dict[str, list[float]]]:
    """Per size: CPU us of a tick with nothing due, and CPU ms per 1,000 expirations
    (batches of 1,000, or n/(runs+1) when fewer are stored, scaled to 1,000)."""
    out: dict[int, dict[str, list[float]]] = {}
    for n in sizes:
        rel, clock, expiries = _filled_relay(n)
        idle, expire = [], []
        cursor = 0
        batch = min(1000, n // (runs + 1))
        for _ in range(runs):
            clock[0] = expiries[cursor] - 1e-6  # nothing due yet
            rel.tick()
            reps = 2000
            t0 = time.process_time()
            for _ in range(reps):
                rel.tick()
            idle.append((time.process_time() - t0) / reps * 1e6)
            clock[0] = expiries[cursor + batch - 1]
            before = len(rel.store)
            t0 = time.process_time()
            rel.tick()
            spent = time.process_time() - t0
            gone = before - len(rel.store)
            expire.append(spent * 1e3 * 1000 / max(gone, 1))
            cursor += gone
        out[n] = {"idle_us": idle, "expire_ms": expire}
        del rel
    return out


# -- client crypto ------------------------------------------------------------------------


def argon2_figures(runs: int) -> dict[str, list[float]]:
    import kdf

    wall, cpu = [], []
    for i in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        kdf.derive_passcode_key(f"correct horse battery staple {i}", "alice", "bob",
                                params=kdf.DEFAULT_PARAMS)
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return {"wall_ms": wall, "cpu_ms": cpu}


def cpace_figures(runs: int, reps: int = 20) -> dict[str, list[float]]:
    """A full 4-message CPace exchange, both sides, CPU ms (no Argon2id)."""
    from msgrlib.crypto import handshake

    out = []
    prs = os.urandom(handshake.PRS_BYTES)
    for _ in range(runs):
        t0 = time.process_time()
        for _ in range(reps):
            a = handshake.Initiator(prs=prs, me="alice", peer="bob")
            b = handshake.Responder(prs=prs, me="bob", peer="alice")
            m2 = b.on_init(a.start())
            m4, keys_b = b.on_share(a.on_resp(m2))
            keys_a = a.on_confirm(m4)
            if keys_a.isk != keys_b.isk:
                raise RuntimeError("CPace sides disagree")
        out.append((time.process_time() - t0) / reps * 1e3)
    return {"cpu_ms": out}


def _ratchet_pair() -> tuple[Any, Any]:
    from msgrlib.crypto import handshake, ratchet

    prs = os.urandom(handshake.PRS_BYTES)
    a = handshake.Initiator(prs=prs, me="alice", peer="bob")
    b = handshake.Responder(prs=prs, me="bob", peer="alice")
    m4, kb = b.on_share(a.on_resp(b.on_init(a.start())))
    ka = a.on_confirm(m4)
    assert ka.peer_ratchet_pub is not None and kb.own_ratchet_priv is not None
    alice = ratchet.Ratchet.initiator(ka.root_key, ka.peer_ratchet_pub, ka.ad)
    bob = ratchet.Ratchet.responder(kb.root_key, kb.own_ratchet_priv, kb.ad)
    return alice, bob


def ratchet_figures(runs: int, reps: int = 2000) -> dict[str, list[float]]:
    """Encrypt + decrypt of a 100-byte message, CPU us: one way (symmetric
    chain step) and alternating (a DH ratchet step every message)."""
    one_way, ping_pong = [], []
    plaintext = b"m" * 100
    for _ in range(runs):
        alice, bob = _ratchet_pair()
        t0 = time.process_time()
        for _ in range(reps):
            bob.decrypt(alice.encrypt(plaintext))
        one_way.append((time.process_time() - t0) / reps * 1e6)
        t0 = time.process_time()
        for i in range(reps // 4):
            if i & 1:
                alice.decrypt(bob.encrypt(plaintext))
            else:
                bob.decrypt(alice.encrypt(plaintext))
        ping_pong.append((time.process_time() - t0) / (reps // 4) * 1e6)
    return {"one_way_us": one_way, "ping_pong_us": ping_pong}


# -- CLI start-up ----------------------------------------------------------------------------


def help_figures(runs: int) -> dict[str, list[float]]:
    """Wall ms of ``python msgr.py --help`` (interpreter start included), in
    this environment (so with or without .pyc files as PYTHONDONTWRITEBYTECODE says)."""
    out = []
    cmd = [PYTHON, os.path.join(ROOT, "msgr.py"), "--help"]
    subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, check=True)
        out.append((time.perf_counter() - t0) * 1e3)
    return {"wall_ms": out}
