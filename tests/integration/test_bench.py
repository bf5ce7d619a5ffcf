"""The benchmark's own machinery (bench/), so that it cannot rot unseen.

Its client-side frame parsers get hypothesis tests, like every parser here,
and one small run starts real relays (msgr and both baselines, TLS) and a
real load generator, measures a throughput and a latency window each, and
checks that every relay delivered, with no error frame, no lost connection
and no relay dead. No figure is asserted: speed is for ``make bench``.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from bench import loadgen, run
from msgrlib.tls import contexts

payload_lists = st.lists(st.binary(max_size=300), max_size=8)


def _server_ws_frame(payload: bytes) -> bytes:
    """An unmasked text frame, as a websocket server sends it (RFC 6455 5.2)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x81, size))
    elif size < 65536:
        head = b"\x81\x7e" + struct.pack(">H", size)
    else:
        head = b"\x81\x7f" + struct.pack(">Q", size)
    return head + payload


def _check_walk(codec, frame, payloads, cut):
    """``walk`` ends just past the last complete frame of a cut stream, and
    ``payloads`` gives exactly those frames' payloads."""
    frames = [frame(p) for p in payloads]
    stream = b"".join(frames)
    buf = stream[:min(cut, len(stream))]
    end = codec.walk(buf)
    complete, pos = [], 0
    for framed, payload in zip(frames, payloads, strict=True):
        if pos + len(framed) > len(buf):
            break
        complete.append(payload)
        pos += len(framed)
    assert end == pos
    assert codec.payloads(buf, end) == complete


@settings(max_examples=300, deadline=None)
@given(payloads=payload_lists, cut=st.integers(min_value=0, max_value=4000))
def test_prefix_codec_finds_exactly_the_complete_frames(payloads, cut):
    _check_walk(loadgen.PrefixCodec, loadgen.PrefixCodec.encode, payloads, cut)


@settings(max_examples=300, deadline=None)
@given(payloads=payload_lists, cut=st.integers(min_value=0, max_value=4000))
def test_ws_codec_finds_exactly_the_complete_frames(payloads, cut):
    _check_walk(loadgen.WsCodec, _server_ws_frame, payloads, cut)


def test_ws_codec_client_header_sizes():
    for size in (0, 125, 126, 65535, 65536):
        head = loadgen.WsCodec.header(size)
        assert head[0] == 0x81 and head[1] & 0x80  # text, masked
        assert head.endswith(b"\0\0\0\0")
        assert len(head) == {0: 6, 125: 6, 126: 8, 65535: 8, 65536: 14}[size]


def test_a_small_run_of_every_relay_delivers_without_errors(tmp_path):
    kinds = ["msgr", "proto"]
    try:
        import websockets  # noqa: F401  (a dev dependency: the baseline needs it)
        kinds.insert(1, "ws")
    except ImportError:
        pass
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    contexts.ensure_certificate(cert, key, hostnames=("localhost",), ip_addresses=("127.0.0.1",))
    plan = run.Plan(runs=1, latency_runs=1, warmup=0.1, window=0.4, latency_warmup=0.1,
                    pairs=(4,), tls_modes=(True,), rates=(400,), latency_pairs=4,
                    budget=100.0)
    bench = run.Bench(plan, kinds, (cert, key), verbose=False)
    bench.network(throughput=True, latency=True)

    res = bench.results
    assert not res.problems and not res.skipped
    tput = res.raw["throughput/tls/4"]
    lat = res.raw["latency/400"]
    for kind in kinds:
        assert tput[kind][0]["msgs"] > 0, kind
        window = lat[kind][0]
        assert 0 < window["p50_ms"] <= window["p99_ms"], kind
        assert window["n"] > 0.5 * 400 * plan.window, kind  # most sends arrived in the window
        assert window["relay_waited_ms"] >= 0 and window["gen_waited_ms"] >= 0


def _small_bench(tmp_path, kinds, *, base_root="", **plan):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    contexts.ensure_certificate(cert, key, hostnames=("localhost",), ip_addresses=("127.0.0.1",))
    settings = dict(runs=1, latency_runs=1, warmup=0.1, window=0.4, latency_warmup=0.1,
                    pairs=(4,), tls_modes=(True,), rates=(400,), latency_pairs=4, budget=100.0)
    settings.update(plan)
    return run.Bench(run.Plan(**settings), kinds, (cert, key), verbose=False,
                     tmp=str(tmp_path), base_root=base_root)


def test_the_engine_section_runs_msgr_on_redis_with_one_and_two_relays(tmp_path):
    from tests.engine_helpers import engine_binary

    engine_binary()  # skips, saying why, without redis-server or redis-py
    bench = _small_bench(tmp_path, ["msgr"], engine_pairs=4, engine_rate=400)
    bench.engine()

    res = bench.results
    assert not res.problems and not res.skipped
    data = res.raw["engine"]
    for kind in ("msgr", "redis1", "redis2", "redisw2"):
        # With two relays every receiver is on the other relay: delivered
        # means the message crossed the engine from node to node.
        assert data["throughput"][kind][0]["msgs"] > 0, kind
        assert data["latency"][kind][0]["n"] > 0, kind
    for kind in ("redis1", "redis2", "redisw2"):
        assert data["throughput"][kind][0]["engine_us_per_msg"] > 0, kind
        # serve --workers 2: the workers' CPU counts, not the idle parent's.
        assert data["throughput"][kind][0]["us_per_msg"] > 0, kind
        memory = data["memory"][kind]
        assert memory["claim_bytes"] > 0 and memory["held"] > 0 and memory["held_bytes"] > 0


def test_capacity_bisects_over_offered_rates_and_base_runs_an_older_tree(tmp_path):
    # The base tree here is this one, unpacked from HEAD by git archive.
    root = run._unpack_commit("HEAD", str(tmp_path / "base"))
    bench = _small_bench(tmp_path, ["msgr", "base"], base_root=root,
                         capacity_range=(100, 400), capacity_runs=1, capacity_step=100,
                         capacity_p99_ms=10_000.0)
    bench.capacity()

    res = bench.results
    assert not res.problems and not res.skipped
    for kind in ("msgr", "base"):
        tried = res.raw["capacity"][kind]
        assert set(tried) == {"100", "400"}  # both bounds pass: the top is the answer
        assert all(w["n"] > 0 for runs in tried.values() for w in runs)
    best = next(r for r in res.rows if isinstance(r, run.Row) and r.label.startswith("highest"))
    assert best.values == {"msgr": [400], "base": [400]}
