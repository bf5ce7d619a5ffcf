"""msgr's benchmark: the relay against two baselines, and the client's crypto.

Run ``python -m bench`` (about 7 minutes) or ``python -m bench --quick``
(about a minute) from the repository root; ``python -m bench --help`` lists
the options. What each module does:

* :mod:`bench.run`       the orchestrator: starts relays and load generators
                         as separate processes, samples their CPU and memory
                         from ``/proc``, prints the table.
* :mod:`bench.loadgen`   a load generator process speaking msgr's protocol
                         (length-prefixed JSON, or the same JSON in websocket
                         messages for the websockets baseline).
* :mod:`bench.baselines` the two baseline relays: the original websockets
                         design and a bare ``asyncio.Protocol`` relay.
* :mod:`bench.inproc`    in-process figures: the TTL store, Argon2id, CPace,
                         the ratchet, and ``msgr.py --help`` start-up time.

Everything is loopback only (127.0.0.1) and bounded in time.
"""
