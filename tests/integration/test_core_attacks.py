"""The chat core's promises against a hostile relay and a name squatter, with
real processes: a real relay, real ``msgr chat`` clients, and the attacker as
a proxy between them (the relay) or a raw client holding the peer's name."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest
from helpers import Chat, Proxy, RawClient, relay_subprocess, run

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def hs_body(msg: dict) -> str:
    return "h1." + base64.b64encode(json.dumps(msg).encode()).decode()


def test_a_name_squatter_answering_abort_and_req_cannot_lock_a_real_client():
    """Issue 13 item 5: three abort + req rounds made alice say 'no longer
    accepts new ones' within a second, with no passcode guess involved."""

    async def main() -> Chat:
        async with relay_subprocess() as (_, port, _):
            alice = await Chat.start(port, "alice", "bob")
            await alice.wait_for("connected", stream="stderr")
            squatter = await RawClient.login(port, "bob")
            await squatter.send({"type": "watch", "user": "alice"})
            ref = 0
            inits = 0
            end = asyncio.get_running_loop().time() + 4
            while asyncio.get_running_loop().time() < end:
                # Read everything waiting (acknowledging alice's handshake
                # starts), so the squatter never stops reading and stalls.
                try:
                    while True:
                        frame = await squatter.recv(timeout=0.2)
                        if frame.get("type") == "deliver":
                            await squatter.send({"type": "ack", "ids": [frame["id"]]})
                            inits += 1
                except asyncio.TimeoutError:
                    pass
                # Each time: abort (unbound, and with a made-up nonce pair), then req.
                for msg in ({"hs": "abort", "v": 1},
                            {"hs": "abort", "v": 1, "na": "A" * 22 + "==", "nb": "B" * 22 + "=="},
                            {"hs": "req", "v": 1,
                             "nr": base64.b64encode(os.urandom(16)).decode()}):
                    ref += 1
                    await squatter.send({"type": "send", "ref": ref, "to": "alice", "kind": "hs",
                                         "ttl": 30, "body": hs_body(msg)})
            assert inits >= 1
            await squatter.close()
            await alice.end_input()
            await alice.exit_code()
            return alice

    alice = run(main(), timeout=60)
    err = "\n".join(alice.stderr)
    assert "no longer accepts" not in err and "passcode mismatch" not in err, err
    assert "Traceback" not in err


def test_a_relay_holding_a_message_past_not_delivered_cannot_get_it_shown():
    """Issue 13 item 3: a relay held m1, delivered m2 and m3, told alice m1
    expired, and later delivered m1: it was shown last, silently, after
    alice had been told it was not delivered."""
    state: dict = {"held": None, "bob_conn": None}

    def hook(direction: str, frame: dict, conn: dict) -> list[dict]:
        if direction == "up" and frame.get("type") == "hello" and frame["user"] == "bob":
            state["bob_conn"] = conn
        if (direction == "down" and conn.get("user") == "alice"
                and frame.get("type") == "accepted" and "m1_id" not in state
                and state["held"] is not None):
            state["m1_id"] = frame["id"]
            # ...and claim at once that it expired unread.
            return [frame, {"type": "expired", "id": frame["id"], "to": "bob"}]
        if (direction == "down" and conn.get("user") == "bob" and frame.get("type") == "deliver"
                and frame.get("kind") == "msg" and state["held"] is None
                and state.get("armed")):
            state["held"] = frame
            return []
        return [frame]

    async def main() -> tuple[Chat, Chat]:
        async with relay_subprocess() as (_, port, _):
            proxy = await Proxy(port, hook).start()
            alice = await Chat.start(proxy.port, "alice", "bob", "--ttl", "5")
            bob = await Chat.start(proxy.port, "bob", "alice")
            await alice.wait_for("secure session", stream="stderr")
            await bob.wait_for("secure session", stream="stderr")
            await asyncio.sleep(0.5)  # the hi and its receipt settle
            state["armed"] = True
            await alice.say("m1")
            while state["held"] is None:
                await asyncio.sleep(0.05)
            await alice.say("m2")
            await alice.say("m3")
            await bob.wait_for("^alice: m3")
            await alice.end_input()
            await alice.wait_for("message #1 was not delivered", stream="stderr", timeout=15)
            # Now the relay hands bob the message it held.
            held = dict(state["held"], id=state["held"]["id"] + 10**6)
            from framing import encode_frame
            state["bob_conn"]["to_client"].write(encode_frame(held))
            await bob.wait_for("deadline", stream="stderr")
            await bob.end_input()
            assert await alice.exit_code() == 3
            await bob.exit_code()
            await proxy.close()
            return alice, bob

    alice, bob = run(main(), timeout=60)
    assert bob.stdout == ["alice: m2", "alice: m3"], bob.stdout
    assert any("after its deadline" in line for line in bob.stderr), bob.stderr


def test_a_static_relay_reporting_an_early_expiry_cannot_get_a_message_shown_after():
    """--static, real processes: the relay accepted alice's message, told her
    at once that it expired unread, held it, and delivered it once she had
    printed "not delivered": bob showed it. The report now counts only at the
    deadline (plus the clocks' tolerance), when bob refuses the message too."""
    state: dict = {"held": None, "bob_conn": None}

    def hook(direction: str, frame: dict, conn: dict) -> list[dict]:
        if direction == "up" and frame.get("type") == "hello" and frame["user"] == "bob":
            state["bob_conn"] = conn
        if (direction == "down" and conn.get("user") == "alice"
                and frame.get("type") == "accepted"):
            return [frame, {"type": "expired", "id": frame["id"], "to": "bob"}]
        if (direction == "down" and conn.get("user") == "bob" and frame.get("type") == "deliver"
                and state["held"] is None):
            state["held"] = frame
            return []
        return [frame]

    async def main() -> tuple[Chat, Chat]:
        async with relay_subprocess() as (_, port, _):
            proxy = await Proxy(port, hook).start()
            bob = await Chat.start(proxy.port, "bob", "alice", "--static")
            await bob.wait_for("connected", stream="stderr")
            alice = await Chat.start(proxy.port, "alice", "bob", "--static", "--ttl", "5")
            await alice.wait_for("bob is online", stream="stderr")
            await alice.say("m1")   # alice's input stays open: she waits for the verdict
            await alice.wait_for("message #1 was not delivered", stream="stderr", timeout=20)
            from framing import encode_frame
            while state["held"] is None:
                await asyncio.sleep(0.05)
            state["bob_conn"]["to_client"].write(encode_frame(state["held"]))
            await bob.wait_for("deadline", stream="stderr")
            await alice.kill()
            await bob.kill()
            await proxy.close()
            return alice, bob

    alice, bob = run(main(), timeout=60)
    assert bob.stdout == [], bob.stdout
    assert any("after its deadline" in line for line in bob.stderr), bob.stderr


@pytest.mark.parametrize("mode", ["session", "static"])
def test_a_relay_cannot_keep_a_message_on_screen_past_its_senders_ttl(mode):
    """The receiver took a message's expiry (the time its screen hides it, and
    ``expires_at`` in --json) from the relay's ``deliver`` frame: a relay that
    said an hour kept a 5 s message on the screen for a minute. It is now never
    past the sender's deadline, sealed in the message."""
    extra = ("--static",) if mode == "static" else ()

    def hook(direction: str, frame: dict, conn: dict) -> list[dict]:
        if direction == "down" and frame.get("type") == "deliver":
            return [{**frame, "expires_at": frame.get("expires_at", 0) + 3600}]
        return [frame]

    async def main() -> Chat:
        async with relay_subprocess() as (_, port, _):
            proxy = await Proxy(port, hook).start()
            bob = await Chat.start(proxy.port, "bob", "alice", "--json", *extra)
            await bob.wait_for("connected", stream="stderr")
            alice = await Chat.start(proxy.port, "alice", "bob", "--ttl", "5", *extra)
            await alice.say("gone in 5 s")
            await alice.end_input()
            await bob.wait_for('"type": "message"', timeout=20)
            await alice.exit_code()
            await bob.kill()
            await proxy.close()
            return bob

    bob = run(main(), timeout=60)
    (shown,) = [json.loads(line) for line in bob.stdout if '"type": "message"' in line]
    assert shown["text"] == "gone in 5 s" and shown["ttl"] == 5
    assert shown["expires_at"] <= shown["sent_at"] + 5, shown


def test_a_relay_reordering_two_messages_gets_the_first_shown_marked_late():
    """Issue 13 item 3's other half, with real processes: a relay holds m1
    back and delivers it after m2. bob shows m1 marked late (``"late": true``
    in --json, and a notice on stderr), never silently out of order."""
    state: dict = {"held": None, "bob_conn": None}

    def hook(direction: str, frame: dict, conn: dict) -> list[dict]:
        if (direction == "down" and conn.get("user") == "bob" and frame.get("type") == "deliver"
                and frame.get("kind") == "msg" and state.get("armed")):
            if state["held"] is None:
                state["held"] = frame
                return []
            if state["held"] is not False:
                held, state["held"] = state["held"], False
                return [frame, held]
        return [frame]

    async def main() -> Chat:
        async with relay_subprocess() as (_, port, _):
            proxy = await Proxy(port, hook).start()
            alice = await Chat.start(proxy.port, "alice", "bob")
            bob = await Chat.start(proxy.port, "bob", "alice", "--json")
            await alice.wait_for("secure session", stream="stderr")
            await bob.wait_for("secure session", stream="stderr")
            await asyncio.sleep(0.5)  # the hi and its receipt settle
            state["armed"] = True
            await alice.say("m1")
            while state["held"] is None:
                await asyncio.sleep(0.05)
            await alice.say("m2")
            await alice.end_input()
            assert await alice.exit_code() == 0  # both confirmed
            await bob.end_input()
            await bob.exit_code()
            await proxy.close()
            return bob

    bob = run(main(), timeout=60)
    shown = [json.loads(line) for line in bob.stdout]
    shown = [(o["text"], o["late"]) for o in shown if o["type"] == "message"]
    assert shown == [("m2", False), ("m1", True)], bob.stdout
    assert any("arrived late" in line for line in bob.stderr), bob.stderr
