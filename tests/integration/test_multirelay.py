"""Several ``msgr serve --store ...`` processes on one real redis-server act as
one relay: real clients on different relays chat, see each other's presence,
names are owned across relays, messages wait for people who join another
relay, expiry reaches the sender wherever it is, and a relay killed mid-chat
loses nothing its clients had not been told about.

Each test starts its own engine (tests/engine_helpers.py) and three relay
processes on it; they skip, saying why, without redis-server or redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import PYTHON, ROOT, Chat, RawClient, relay_subprocess, run, serve_argv
from nacl.signing import SigningKey

from tests.engine_helpers import EngineProcess, engine_binary

#: Relays log only warnings: nobody reads their stderr pipe during a test.
QUIET = ("--log-level", "warning")


def send_frame(to: str, body: str, ref: int, ttl: int = 30) -> dict[str, Any]:
    return {"type": "send", "ref": ref, "to": to, "ttl": ttl, "body": body, "kind": "msg"}


@contextlib.asynccontextmanager
async def cluster(count: int = 3, *extra: str,
                  engine: EngineProcess | None = None) -> AsyncIterator[tuple[EngineProcess,
                                                                          list[Any]]]:
    """An engine and ``count`` relays on it; yields (engine, [(process, port)])."""
    engine_binary()  # or skip
    own = engine is None
    engine = engine or EngineProcess().start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            relays = []
            for _ in range(count):
                proc, port, _line = await stack.enter_async_context(
                    relay_subprocess("--store", engine.url, *QUIET, *extra))
                relays.append((proc, port))
            yield engine, relays
    finally:
        if own:
            engine.cleanup()


def test_a_relay_refuses_an_evicting_engine_and_says_why():
    async def main():
        engine_binary()
        engine = EngineProcess("--maxmemory-policy", "allkeys-lru").start()
        try:
            proc = await asyncio.create_subprocess_exec(
                *serve_argv("--store", engine.url),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 1, (out, err)
            text = err.decode()
            assert "noeviction" in text and "Traceback" not in text
            assert text.count("\n") == 1  # one line
        finally:
            engine.cleanup()
    run(main(), timeout=60)


def test_a_persisting_engine_is_warned_about_and_a_password_never_comes_from_argv(tmp_path):
    """The relay still starts on a persisting engine, warning on stderr (the
    engine layer's check, tested there); the password is never in argv."""
    async def main():
        engine_binary()
        engine = EngineProcess("--appendonly", "yes", "--requirepass", "s3cret pass").start()
        try:
            # A password in the URL is refused before anything is tried.
            proc = await asyncio.create_subprocess_exec(
                *serve_argv("--store", "redis://:pw@127.0.0.1:1/0"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 1 and b"no password in the URL" in err, err
            # From a variable the URL names:
            url = engine.url + "?password_env=ENGINE_PW"
            async with relay_subprocess("--store", url,
                                        env={"ENGINE_PW": "s3cret pass"}) as (proc, port, lines):
                alice = await RawClient.connect(port)
                assert (await alice.hello("alice"))["type"] == "welcome"
            # From a file:
            secret = tmp_path / "pw"
            secret.write_text("s3cret pass\n")
            async with relay_subprocess("--store", engine.url, "--store-password-file",
                                        str(secret)) as (proc, port, lines):
                carol = await RawClient.connect(port)
                assert (await carol.hello("carol"))["type"] == "welcome"
        finally:
            engine.cleanup()
    run(main(), timeout=60)


def test_every_relay_says_the_same_relay_epoch_and_names_are_owned_across_relays():
    async def main():
        async with cluster() as (engine, relays):
            (_, p1), (_, p2), (_, p3) = relays
            key = SigningKey.generate()
            alice = await RawClient.connect(p1)
            welcome = await alice.hello("alice", key)
            assert welcome["type"] == "welcome"
            epoch = engine.command("GET", "msgr:epoch").split(b"\r\n")[1].decode()
            assert welcome["relay"] == epoch
            # Another key cannot take alice's name on another relay.
            thief = await RawClient.connect(p2)
            refused = await thief.hello("alice", SigningKey.generate())
            assert refused["type"] == "error" and refused["code"] == "name_owned"
            assert "in use right now" in refused["message"]
            # Her own key on relay 3 replaces her connection on relay 1.
            again = await RawClient.connect(p3)
            assert (await again.hello("alice", key))["relay"] == epoch
            replaced = await alice.recv_type("error")
            assert replaced["code"] == "replaced" and replaced["fatal"]
            assert await alice.closed()
    run(main(), timeout=60)


def test_presence_and_raw_delivery_across_relays_and_the_sender_told_of_expiry():
    async def main():
        async with cluster() as (_engine, relays):
            (_, p1), (_, p2), (_, p3) = relays
            alice = await RawClient.login(p1, "alice")
            await alice.send({"type": "watch", "user": "bob"})
            assert (await alice.recv_type("presence"))["online"] is False
            bob = await RawClient.login(p2, "bob")
            assert (await alice.recv_type("presence")) == {"type": "presence", "user": "bob",
                                                           "online": True}
            await alice.send(send_frame("bob", "s1.hello", ref=1))
            accepted = await alice.recv_type("accepted")
            got = await bob.recv_type("deliver")
            assert got["id"] == accepted["id"] and got["body"] == "s1.hello"
            await bob.send({"type": "ack", "id": got["id"]})
            await bob.send({"type": "bye"})
            assert (await alice.recv_type("presence"))["online"] is False
            # Waiting for bob: delivered when he joins relay 3 within its TTL.
            await alice.send(send_frame("bob", "s1.later", ref=2, ttl=30))
            later = await alice.recv_type("accepted")
            # And one that expires unread: alice, on relay 1, is told.
            await alice.send(send_frame("carol", "s1.lost", ref=3, ttl=5))
            lost = await alice.recv_type("accepted")
            bob3 = await RawClient.login(p3, "bob", bob.key)
            got = await bob3.recv_type("deliver")
            assert got["id"] == later["id"] and got["body"] == "s1.later"
            expired = await alice.recv_type("expired", timeout=10)
            assert expired == {"type": "expired", "id": lost["id"], "to": "carol"}
            # Sent from relay 1, expired while its sender is on relay 2: told there.
            await alice.send(send_frame("carol", "s1.lost too", ref=4, ttl=5))
            lost = await alice.recv_type("accepted")
            await alice.send({"type": "bye"})
            alice2 = await RawClient.login(p2, "alice", alice.key)
            # (The first report may come again: kept for the sender's next
            # sign-in in case it was missed; clients ignore a repeat.)
            for _ in range(3):
                expired = await alice2.recv_type("expired", timeout=10)
                if expired["id"] == lost["id"]:
                    break
            assert expired == {"type": "expired", "id": lost["id"], "to": "carol"}
    run(main(), timeout=60)


@pytest.mark.parametrize("mode", ["session", "static"])
def test_alice_on_one_relay_and_bob_on_another_chat(mode, tmp_path):
    extra = ("--static",) if mode == "static" else ()

    async def main():
        async with cluster(2) as (_engine, relays):
            (_, p1), (_, p2) = relays
            alice = await Chat.start(p1, "alice", "bob", *extra)
            bob = await Chat.start(p2, "bob", "alice", *extra)
            try:
                if mode == "session":
                    await alice.wait_for("secure session", stream="stderr")
                    await bob.wait_for("secure session", stream="stderr")
                for i in range(3):
                    await alice.say(f"alice says {i}")
                    await bob.say(f"bob says {i}")
                await bob.wait_for("alice says 2")
                await alice.wait_for("bob says 2")
                for chat in (alice, bob):
                    await chat.end_input()
                    assert await chat.exit_code() == 0, chat.stderr
                for chat, peer in ((alice, "bob"), (bob, "alice")):
                    shown = [line for line in chat.stdout if f"{peer} says" in line]
                    assert len(shown) == 3, chat.stdout  # each once
            finally:
                await alice.kill()
                await bob.kill()
    run(main(), timeout=90)


def test_a_relay_killed_mid_chat_loses_nothing_unacked(tmp_path):
    """SIGKILL relay 2 while bob is on it: bob restarted against relay 3 (with
    his key) gets every message alice sent him exactly once, and alice on
    relay 1 never hears it was not delivered."""
    async def main():
        async with cluster(3, "--claim-ttl", "60") as (_engine, relays):
            (_, p1), (proc2, p2), (_, p3) = relays
            identity = str(tmp_path / "bob.key")
            alice = await Chat.start(p1, "alice", "bob", "--static", "--ttl", "60")
            bob = await Chat.start(p2, "bob", "alice", "--static", "--identity", identity)
            try:
                await alice.say("before 0")
                await bob.wait_for("before 0")
                proc2.send_signal(signal.SIGKILL)
                await proc2.wait()
                for i in range(5):
                    await alice.say(f"during {i}")
                await bob.kill()
                bob = await Chat.start(p3, "bob", "alice", "--static", "--identity", identity)
                await bob.wait_for("during 4", timeout=30)
                await asyncio.sleep(1)
                for i in range(5):
                    assert sum(f"during {i}" in line for line in bob.stdout) == 1, bob.stdout
                assert not any("before 0" in line for line in bob.stdout)  # acked: not again
                assert not any("not delivered" in line for line in alice.stderr), alice.stderr
            finally:
                await alice.kill()
                await bob.kill()
    run(main(), timeout=120)


async def _chat_pair(p_alice: int, p_bob: int, tmp_path: Any) -> tuple[Chat, Chat]:
    alice = await Chat.start(p_alice, "alice", "bob", "--static", "--ttl", "60",
                             "--identity", str(tmp_path / "alice.key"))
    bob = await Chat.start(p_bob, "bob", "alice", "--static", "--ttl", "60",
                           "--identity", str(tmp_path / "bob.key"))
    await alice.say("hello 0")
    await bob.wait_for("hello 0")
    return alice, bob


def _settled(alice: Chat, bob: Chat, texts: list[str]) -> None:
    """Each text shown to bob at most once, and every one not shown reported
    to alice as not delivered."""
    for text in texts:
        shown = sum(text in line for line in bob.stdout)
        assert shown <= 1, bob.stdout
        if not shown:
            assert any("not delivered" in line for line in alice.stderr + alice.stdout), (
                text, alice.stderr)


def test_the_engine_killed_and_restarted_empty_both_clients_recover(tmp_path):
    async def main():
        async with cluster(2) as (engine, relays):
            (_, p1), (_, p2) = relays
            alice, bob = await _chat_pair(p1, p2, tmp_path)
            try:
                engine.kill()
                await alice.say("while the engine is down")
                await asyncio.sleep(1)
                engine.start()  # empty: a new epoch
                await alice.say("after the restart")
                await bob.wait_for("after the restart", timeout=40)
                await bob.say("bob is back")
                await alice.wait_for("bob is back", timeout=40)
                await asyncio.sleep(1)
                _settled(alice, bob, ["hello 0", "while the engine is down",
                                      "after the restart"])
            finally:
                await alice.kill()
                await bob.kill()
    run(main(), timeout=120)


def test_the_engine_stopped_for_five_seconds_relays_and_clients_recover(tmp_path):
    async def main():
        async with cluster(2) as (engine, relays):
            (_, p1), (_, p2) = relays
            alice, bob = await _chat_pair(p1, p2, tmp_path)
            try:
                engine.signal(signal.SIGSTOP)
                try:
                    await alice.say("while the engine is stopped")
                    await asyncio.sleep(5)
                finally:
                    engine.signal(signal.SIGCONT)
                await alice.say("after it woke")
                await bob.wait_for("after it woke", timeout=40)
                await bob.say("bob too")
                await alice.wait_for("bob too", timeout=40)
                await asyncio.sleep(1)
                _settled(alice, bob, ["hello 0", "while the engine is stopped",
                                      "after it woke"])
            finally:
                await alice.kill()
                await bob.kill()
    run(main(), timeout=120)


def test_messages_bob_had_not_acked_when_his_relay_died_come_again_once_elsewhere():
    """bob read two messages on relay 2 and acknowledged one; relay 2 is
    SIGKILLed. The other one, and one sent meanwhile, wait for him: on relay
    3 he gets exactly those, each once. alice, watching him from relay 1,
    sees him go offline when relay 2's lease lapses (10 s)."""
    async def main():
        async with cluster() as (_engine, relays):
            (_, p1), (proc2, p2), (_, p3) = relays
            alice = await RawClient.login(p1, "alice")
            bob = await RawClient.login(p2, "bob")
            await alice.send({"type": "watch", "user": "bob"})
            assert (await alice.recv_type("presence"))["online"] is True
            ids = []
            for ref, body in ((1, "s1.acked"), (2, "s1.unacked")):
                await alice.send(send_frame("bob", body, ref=ref))
                ids.append((await alice.recv_type("accepted"))["id"])
                assert (await bob.recv_type("deliver"))["id"] == ids[-1]
            await bob.send({"type": "ack", "id": ids[0]})
            await bob.send({"type": "ping"})
            await bob.recv_type("pong")  # the ack ran before this answer
            proc2.send_signal(signal.SIGKILL)
            await proc2.wait()
            await alice.send(send_frame("bob", "s1.meanwhile", ref=3))
            ids.append((await alice.recv_type("accepted"))["id"])
            gone = await alice.recv_type("presence", timeout=20)  # the lease lapsed
            assert gone == {"type": "presence", "user": "bob", "online": False}
            bob3 = await RawClient.login(p3, "bob", bob.key)
            got = [await bob3.recv_type("deliver") for _ in range(2)]
            assert [m["id"] for m in got] == ids[1:]
            await bob3.send({"type": "ping"})
            assert (await bob3.recv())["type"] == "pong"  # nothing else, nothing twice
    run(main(), timeout=60)


async def _msgr(args: list[str], home: str, port: int, name: str) -> Chat:
    """A real ``msgr.py`` client process whose relay is ``port`` (MSGR_SERVER)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MSGR_")}
    environ.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
                   MSGR_SERVER=f"127.0.0.1:{port}")
    proc = await asyncio.create_subprocess_exec(
        PYTHON, os.path.join(ROOT, "msgr.py"), *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=home, env=environ)
    return Chat(proc, name)


def test_an_invite_made_on_one_relay_is_joined_from_another(tmp_path):
    """Nameplates live in the engine: ``chat --invite`` on relay 1, ``chat
    --join`` on relay 2, real client processes; then a file with ``send`` on
    relay 2 and ``receive`` on relay 1."""
    async def main():
        async with cluster(2) as (_engine, relays):
            (_p1, port1), (_p2, port2) = relays
            home = str(tmp_path)
            inviter = await _msgr(["chat", "--invite"], home, port1, "inviter")
            line = await inviter.wait_for(r"your invite code is\s+\S+", stream="stderr")
            code = re.search(r"your invite code is\s+(\S+)", line).group(1)
            joiner = await _msgr(["chat", "--join"], home, port2, "joiner")
            await joiner.say(code)
            for side in (inviter, joiner):
                await side.wait_for(r"secure session up; safety number", stream="stderr")
            await joiner.say("hello across relays")
            await inviter.wait_for(r"^peer: hello across relays$")
            await inviter.end_input()
            await joiner.end_input()
            assert await inviter.exit_code() == 0, inviter.stderr
            assert await joiner.exit_code() == 0, joiner.stderr
            # send / receive: the sender's invite on relay 2, received on relay 1.
            src = tmp_path / "note.txt"
            src.write_bytes(b"across relays\n" * 100)
            out = tmp_path / "out"
            out.mkdir()
            sender = await _msgr(["send", str(src)], home, port2, "sender")
            line = await sender.wait_for(r"your invite code is\s+\S+", stream="stderr")
            code = re.search(r"your invite code is\s+(\S+)", line).group(1)
            receiver = await _msgr(["receive", "--dir", str(out)], home, port1, "receiver")
            await receiver.say(code)  # not in argv
            await receiver.say("y")
            assert await receiver.exit_code() == 0, receiver.stderr
            assert await sender.exit_code() == 0, sender.stderr
            assert (out / "note.txt").read_bytes() == src.read_bytes()
    run(main(), timeout=120)


def test_an_address_has_one_budget_of_invite_codes_across_relays():
    """Each join uses an invite up, right code or not, so an address may try
    10 codes in a burst (then one every 6 s). With the budget kept by each
    relay alone, a client on two relays had 20; it is kept in the engine."""
    async def main():
        async with cluster(2) as (_engine, relays):
            (_p1, port1), (_p2, port2) = relays
            clients = [await RawClient.login(port, f"mallory{n}")
                       for n, port in enumerate((port1, port2))]
            codes = []
            for n in range(11):  # alternating relays: 6 on one, 5 on the other
                guesser = clients[n % 2]
                await guesser.send({"type": "join", "nameplate": 900_000 + n})
                answer = await guesser.recv_type("error")
                codes.append(answer["code"])
                assert "\x1b" not in answer["message"]
            assert codes == ["no_nameplate"] * 10 + ["rate_limited"], codes
            for c in clients:
                await c.close()
    run(main(), timeout=60)
