"""Name ownership at the relay: how long a name stays bound to its key, and
what a refused client is told (issue 13 items 6 and 13, issue 14 items 2 and 9).

A name stays bound to its key for ``claim_ttl`` seconds after its last
connection, whether that connection said ``bye`` or not, and for as long as
messages wait for it. The ``name_owned`` refusal says what happened.
"""

from __future__ import annotations

import asyncio
import json
import os

import helpers
import pytest
from helpers import RawClient, chat_argv, frame_of, relay_running, relay_subprocess, run, send_frame
from nacl.signing import SigningKey

from msgrlib.relay import config as relay_config

FAST = relay_config.RelayConfig(ttl_min=1, hello_timeout=1.0, claim_ttl=1.0)
SLOWER = relay_config.RelayConfig(ttl_min=1, hello_timeout=1.0, claim_ttl=2.0)

# Ownership is a shared step: every test runs in memory, then on a Redis engine.
pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.usefixtures("store")]


async def _refusal(port: int, user: str) -> dict:
    thief = await RawClient.connect(port)
    answer = await thief.hello(user)  # a fresh key
    assert answer["type"] == "error" and answer["code"] == "name_owned", answer
    assert await thief.closed()
    return answer


def test_a_name_stays_bound_after_bye_then_lapses():
    async def main():
        async with relay_running(FAST) as srv:
            port = srv.address[1]
            key = SigningKey.generate()
            bob = await RawClient.login(port, "bob", key)
            await bob.send({"type": "bye"})
            assert await bob.closed()
            # Nothing waits for bob, and he said bye: the name is still his.
            message = (await _refusal(port, "bob"))["message"]
            assert "said bye" in message and "without saying bye" not in message
            assert "belongs to another key (since " in message and " UTC)" in message
            assert "--identity" not in message
            # His own key gets it back at once.
            bob = await RawClient.login(port, "bob", key)
            await bob.send({"type": "bye"})
            assert await bob.closed()
            await asyncio.sleep(1.3)  # claim_ttl
            other = await RawClient.login(port, "bob")  # lapsed: anyone may take it
            await other.close()
    run(main())


def test_bye_with_a_delivered_but_unacked_message_is_still_a_bye():
    async def main():
        async with relay_running(FAST) as srv:
            port = srv.address[1]
            alice = await RawClient.login(port, "alice")
            bob = await RawClient.login(port, "bob")
            await alice.send(send_frame("bob", "s1.unacked"))
            assert (await bob.recv_type("deliver"))["body"] == "s1.unacked"
            await bob.send({"type": "bye"})  # no ack
            assert await bob.closed()
            await asyncio.sleep(1.3)  # past claim_ttl: the waiting message holds it
            message = (await _refusal(port, "bob"))["message"]
            assert "said bye" in message and "without saying bye" not in message
            assert "1 message waits for it" in message
    run(main())


def test_a_bye_sent_right_behind_a_send_and_the_close_is_still_a_bye():
    """On the engine a send is answered later, so the bye behind it waits in
    the connection's backlog when the close arrives: it still counts (the
    CI failure of 2026-12-02 said a clean line-mode exit ended "without
    saying bye")."""
    async def main():
        async with relay_running(FAST) as srv:
            port = srv.address[1]
            bob = await RawClient.login(port, "bob")
            # One write: a send, the bye, then the end of the stream.
            bob.writer.write(frame_of(json.dumps(send_frame("alice", "s1.x")).encode())
                             + frame_of(b'{"type": "bye"}'))
            bob.writer.write_eof()
            await bob.closed()
            message = (await _refusal(port, "bob"))["message"]
            assert "said bye" in message and "without saying bye" not in message
    run(main())


def test_a_lost_connection_is_named_as_such():
    async def main():
        async with relay_running(FAST) as srv:
            port = srv.address[1]
            bob = await RawClient.login(port, "bob")
            await bob.close()  # no bye
            await asyncio.sleep(0.1)
            message = (await _refusal(port, "bob"))["message"]
            assert "ended without saying bye" in message and "s more" in message
    run(main())


def test_a_name_connected_elsewhere_says_close_the_other_client():
    async def main():
        async with relay_running(FAST) as srv:
            port = srv.address[1]
            bob = await RawClient.login(port, "bob")
            message = (await _refusal(port, "bob"))["message"]
            assert "in use right now by another client" in message
            assert "close the other client or pick another name" in message
            assert "--identity" not in message
            await bob.send({"type": "ping"})
            assert (await bob.recv_type("pong"))["type"] == "pong"  # unaffected
    run(main())


def test_static_mailbox_cannot_be_drained_after_a_clean_exit(tmp_path):
    """Issue 13 item 6, with real processes: bob exits cleanly (bye), alice
    leaves him a static message, mallory cannot take "bob" to read it, and bob
    gets it when he comes back with his identity."""
    identity = str(tmp_path / "bob.key")

    async def chat(port: int, user: str, peer: str, stdin: bytes, *extra: str):
        proc = await asyncio.create_subprocess_exec(
            *chat_argv(port, user, peer, "--static", *extra),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "MSGR_PASSCODE": "correct horse battery staple"})
        out, err = await asyncio.wait_for(proc.communicate(stdin), 40)
        return proc.returncode, out.decode(), err.decode()

    async def main():
        async with relay_subprocess() as (_, port, _):
            code, _, err = await chat(port, "bob", "alice", b"", "--identity", identity,
                                      "--wait", "0")
            assert code == 0, err
            # Alice leaves bob a message and waits for his receipt meanwhile.
            alice = asyncio.create_task(chat(port, "alice", "bob", b"for bob only\n",
                                             "--wait", "30"))
            mallory = await RawClient.connect(port)
            for _ in range(50):  # until alice's message waits at the relay
                answer = await mallory.hello("bob")
                assert answer["code"] == "name_owned", answer
                assert "said bye" in answer["message"]
                if "1 message waits" in answer["message"]:
                    break
                await asyncio.sleep(0.2)
                mallory = await RawClient.connect(port)
            else:
                raise AssertionError("alice's message never reached the relay")
            code, out, err = await chat(port, "bob", "alice", b"", "--identity", identity,
                                        "--wait", "5")
            assert "for bob only" in out, (out, err)
            code, _, err = await alice
            assert code == 0, err  # delivered, and told so
    run(main(), timeout=60)


def test_a_line_mode_run_that_exited_0_gets_its_name_at_once_when_run_again(tmp_path):
    """Issue 14 item 2: the client keeps its name key per relay and name
    (0600, under the state directory), so names bound after bye do not lock
    out the same user's next run."""
    state = tmp_path / "state"
    env = {**os.environ, "XDG_STATE_HOME": str(state),
           "MSGR_PASSCODE": "correct horse battery staple"}

    async def once(port: int) -> tuple[int | None, str]:
        proc = await asyncio.create_subprocess_exec(
            *chat_argv(port, "s5", "r5", "--static", "--wait", "0"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        _, err = await asyncio.wait_for(proc.communicate(b""), 30)
        return proc.returncode, err.decode()

    async def main():
        async with relay_subprocess() as (_, port, _):
            for _ in range(3):
                code, err = await once(port)
                assert code == 0 and "name_owned" not in err and "another key" not in err, err
            return port

    port = run(main(), timeout=90)
    keys = list(state.glob("msgr/names/*/s5.key"))
    assert len(keys) == 1 and keys[0].parent.name == f"127.0.0.1_{port}"
    assert keys[0].stat().st_mode & 0o777 == 0o600


def test_new_names_per_address_are_rate_limited():
    """Issue 13 item 9: one client claimed ~1,400 names/s; now a burst, then a rate."""
    config = relay_config.RelayConfig(claim_burst=5, claim_rate=0.001)

    async def main():
        async with relay_running(config) as srv:
            port = srv.address[1]
            keys = [SigningKey.generate() for _ in range(5)]
            for i, key in enumerate(keys):
                c = await RawClient.login(port, f"n{i}", key)
                await c.close()
            c = await RawClient.connect(port)
            answer = await c.hello("n5")
            assert answer["code"] == "too_many_names" and answer["fatal"], answer
            assert "n5" not in srv.relay.claims
            # A name already owned is not a new claim: its owner gets back in.
            again = await RawClient.login(port, "n0", keys[0])
            await again.close()
            # Another address has its own allowance.
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                          local_addr=("127.0.0.2", 0))
            other = RawClient(reader, writer)
            assert (await other.hello("m0"))["type"] == "welcome"
    run(main())


def test_handshake_buckets_cannot_be_evicted_by_fresh_pairs():
    """Issue 13 item 9: the per-pair buckets lived in an LRU that fresh names
    could flush, resetting a pair's handshake limit."""
    config = relay_config.RelayConfig(hs_burst=2, hs_per_second=0.001, max_hs_pairs=4)
    if helpers.STORE["mode"] == "engine":
        pytest.skip("the engine keeps every pair's bucket (as a key that expires once full): "
                    "no --max-hs-pairs table to evict from")

    async def main():
        async with relay_running(config) as srv:
            port = srv.address[1]
            alice = await RawClient.login(port, "alice")
            codes = []
            for i in range(3):
                await alice.send(send_frame("bob", "h1.x", ref=i, kind="hs"))
                codes.append((await alice.recv()).get("code", "ok"))
            assert codes == ["ok", "ok", "handshake_limited"]
            mallory = await RawClient.login(port, "mallory")
            refused = []
            for i in range(10):  # fresh pairs until the table is full, and more
                await mallory.send(send_frame(f"x{i}", "h1.x", ref=i, kind="hs"))
                answer = await mallory.recv()
                if answer["type"] == "error":
                    refused.append(answer)
            assert refused and all(a["code"] == "handshake_limited" for a in refused)
            assert "too many handshakes" in refused[0]["message"]
            # Alice and bob's limit still holds.
            await alice.send(send_frame("bob", "h1.x", ref=99, kind="hs"))
            assert (await alice.recv()).get("code") == "handshake_limited"
    run(main())


def test_reconnecting_in_a_loop_does_not_grow_the_relays_claim_table():
    """Found attacking the relay: every disconnect pushed an entry onto the claim heap, kept
    for claim_ttl; one process reconnecting 20 names in a loop (about 2,000 a second) grew
    it by 120,000 entries a minute, counted nowhere. Now one entry per name; the name still
    lapses claim_ttl after its last connection."""
    if helpers.STORE["mode"] == "engine":
        pytest.skip("the claim heap is the in-memory relay's; the engine keeps one claim "
                    "key per name")

    async def main():
        async with relay_running(SLOWER) as srv:
            port = srv.address[1]
            keys = [SigningKey.generate() for _ in range(5)]

            async def churn(i: int) -> None:
                for _ in range(40):
                    client = await RawClient.login(port, f"churn{i}", keys[i])
                    await client.send({"type": "bye"})
                    assert await client.closed()

            await asyncio.gather(*(churn(i) for i in range(5)))
            assert len(srv.relay._claim_heap) <= len(srv.relay.claims) == 5
            await asyncio.sleep(1.0)
            # Reconnected and left again late: still bound claim_ttl after that.
            client = await RawClient.login(port, "churn0", keys[0])
            await client.send({"type": "bye"})
            assert await client.closed()
            await asyncio.sleep(1.3)  # the first entry comes due: moved on, not lapsed
            assert "belongs to another key" in (await _refusal(port, "churn0"))["message"]
            await asyncio.sleep(1.5)
            other = await RawClient.login(port, "churn0")  # lapsed: anyone may take it
            await other.close()
            assert len(srv.relay._claim_heap) <= len(srv.relay.claims)
    run(main())
