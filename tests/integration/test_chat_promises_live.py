"""test_chat_promises, with real processes: a real relay (``msgr serve``),
real ``msgr chat`` clients in line mode, and the attacker as a proxy between
them where the attack is the relay's (issue 13 items 2 and 12, issue 14 items
1 and 8). The in-memory halves are in tests/unit/client/test_chat_promises.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import Chat, Proxy, relay_subprocess, run

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


async def until(check: Any, what: str, timeout: float = 30.0) -> None:
    """Wait until ``check()`` is true (an event, never a fixed sleep)."""
    end = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _login(direction: str, frame: dict[str, Any], conn: dict[str, Any]) -> None:
    if direction == "up" and frame.get("type") == "hello":
        conn["user"] = frame["user"]


# -- issue 14 item 8: a restarted peer --------------------------------------------------

def test_a_restarted_peer_process_says_nothing_about_messages_that_will_be_resent():
    """A restarted bob was handed, first, what alice had sealed under the
    session his old process held: it said "a message from alice belongs to
    an earlier session and cannot be read" (sometimes twice), then showed the
    message fine when alice sent it again under the new session."""
    state: dict[str, Any] = {"held": set(), "redelivered": set(), "bob_runs": 0}

    def hook(direction: str, frame: dict[str, Any], conn: dict[str, Any]) -> list[dict]:
        _login(direction, frame, conn)
        if direction == "up" and frame.get("type") == "hello" and frame["user"] == "bob":
            state["bob_runs"] += 1
            conn["run"] = state["bob_runs"]
        if (direction == "down" and conn.get("user") == "bob" and frame.get("type") == "deliver"
                and frame.get("kind") == "msg" and state.get("armed")):
            if conn["run"] == 1:
                state["held"].add(frame["id"])  # the relay keeps it: bob never acks it
                return []
            if frame["id"] in state["held"]:
                state["redelivered"].add(frame["id"])
        return [frame]

    async def main() -> tuple[Chat, Chat, Chat]:
        async with relay_subprocess() as (_, port, _):
            proxy = await Proxy(port, hook).start()
            alice = await Chat.start(proxy.port, "alice", "bob")
            bob = await Chat.start(proxy.port, "bob", "alice")
            await alice.wait_for("secure session", stream="stderr")
            await bob.wait_for("secure session", stream="stderr")
            await alice.say("settled")
            await bob.wait_for("^alice: settled$")
            state["armed"] = True
            await alice.say("under the old session")
            await until(lambda: state["held"], "the relay to hold alice's message")
            await bob.kill()
            bob2 = await Chat.start(proxy.port, "bob", "alice")
            await bob2.wait_for("^alice: under the old session$", timeout=30)
            await alice.say("after")
            await bob2.wait_for("^alice: after$")
            await bob2.end_input()
            await alice.end_input()
            assert await alice.exit_code() == 0
            await bob2.exit_code()
            await proxy.close()
            return alice, bob, bob2

    alice, bob, bob2 = run(main(), timeout=90)
    # The old body did reach the new process (else nothing was tested)...
    assert state["redelivered"] == state["held"], state
    # ...and it showed the message once, with no notice about an earlier session.
    assert bob2.stdout == ["alice: under the old session", "alice: after"], bob2.stdout
    expected = ("deriving the key", "connecting to", "connected to", "alice is online",
                "secure session with alice")
    notices = [line for line in bob2.stderr if not any(e in line for e in expected)]
    assert not notices, bob2.stderr
