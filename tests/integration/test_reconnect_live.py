"""Reconnecting after the relay went away, with real processes: a real relay
(``msgr serve``) stopped and started again on the same port, and real
``msgr chat`` clients in line mode (issue 14 item 3). The screen's Ctrl-R is in
tests/integration/test_screen_live.py; the wait's bounds in test_client.py."""

from __future__ import annotations

import asyncio
import random
import re
import socket

import pytest
from helpers import Chat, relay_subprocess, run

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _free_port() -> int:
    """A free port below Linux's ephemeral range, so that no relay started
    elsewhere on "port 0" takes it while ours is away."""
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 20000-31999")


def test_a_relay_away_for_12_s_is_retried_every_5_s_at_most_and_nothing_typed_is_lost():
    """The wait between attempts doubled up to 30 s (the default TTL): a relay
    down for 15 s was rejoined after 33 s, and a message typed during the
    outage was reported as not delivered. Here the relay is away for 12 s;
    every wait alice's process says it takes is at most 5 s, and what she typed
    meanwhile (TTL 30 s) reaches bob once both are back."""
    port = _free_port()

    async def main() -> tuple[Chat, Chat]:
        async with relay_subprocess("--port", str(port)) as (relay, _, _):
            alice = await Chat.start(port, "alice", "bob")
            bob = await Chat.start(port, "bob", "alice")
            await alice.wait_for("secure session", stream="stderr")
            await bob.wait_for("secure session", stream="stderr")
        # The relay has stopped (SIGTERM): both clients wait and try again.
        await alice.wait_for("reconnecting to", stream="stderr")
        await alice.say("typed while the relay was away")
        await asyncio.sleep(12)
        async with relay_subprocess("--port", str(port)):
            await bob.wait_for("^alice: typed while the relay was away$", timeout=20)
            await alice.end_input()
            code = await alice.exit_code(timeout=30)
            await bob.kill()
        assert code == 0, alice.stderr  # confirmed by bob: nothing undelivered
        return alice, bob

    alice, bob = run(main(), timeout=90)
    waits = [float(m.group(1)) for line in alice.stderr
             if (m := re.search(r"reconnecting to \S+ in ([0-9.]+) s", line))]
    # 0.5, 1, 2, 4, then 5 s at most (less by up to 30 % jitter): at least
    # four attempts in 12 s, none waiting longer than 5 s.
    assert len(waits) >= 4 and max(waits) <= 5.0, waits
    assert bob.stdout == ["alice: typed while the relay was away"], bob.stdout
