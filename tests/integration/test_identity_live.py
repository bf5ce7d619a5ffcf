"""test_identity, the tests that need real processes, sockets or a terminal (the
unit tests are in tests/unit/client/test_identity.py)."""

from __future__ import annotations

import os
import stat

from helpers import Chat, relay_subprocess, run

from msgrlib.client import connection as client
from msgrlib.client import core as chat
from msgrlib.client import identity


def _client(host: str, port: int, user: str = "alice") -> client.ChatClient:
    core = chat.ChatCore(me=user, peer="bob", key=bytes(32), clock=lambda: 0.0,
                         wallclock=lambda: 0.0, rng=os.urandom)
    return client.ChatClient(core, host=host, port=port)


def test_a_client_keeps_one_key_per_relay_and_name(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    first = _client("Relay.example", 8765)  # ChatClient.address lower-cases the host
    again = _client("relay.example", 8765)
    assert bytes(first.identity) == bytes(again.identity)
    assert bytes(_client("relay.example", 8766).identity) != bytes(first.identity)
    assert bytes(_client("relay.example", 8765, "carol").identity) != bytes(first.identity)
    path = identity.default_identity_path("relay.example:8765", "alice")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"msgr-identity-v1 ")
    assert sorted(p.name for p in path.parent.iterdir()) == ["alice.key", "carol.key"]


def test_a_state_directory_that_cannot_be_written_falls_back_with_a_notice(tmp_path,
                                                                             monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocked))
    c = _client("relay", 1)
    assert c.identity is not None and "for this run only" in c._identity_notice


def test_the_same_user_run_twice_in_a_row_always_gets_the_name():
    """The README's CI example, four times in a row against a real relay
    process, with the peer online (its receipts are what the relay holds the
    name for): each run exits 0 and its message arrives."""
    async def main():
        async with relay_subprocess("--port", "0") as (_, port, _):
            r5 = await Chat.start(port, "r5", "s5")
            await r5.wait_for("connected", stream="stderr")
            for i in range(4):
                s5 = await Chat.start(port, "s5", "r5")
                await s5.say(f"build {i} finished")
                await s5.end_input()
                code = await s5.exit_code(timeout=40)
                assert code == 0, (i, s5.stderr)
                await r5.wait_for(f"build {i} finished")
            await r5.kill()
    run(main(), timeout=120)



def test_the_same_relay_under_another_address_says_which_key_was_used(tmp_path):
    """Tried as a new user: `--server localhost:8765`, then `--server [::1]:8765` (the
    same relay) was refused with "the name 'alice' belongs to another key ... Wait, or
    pick another name", though that other key was the user's own, kept for the other
    spelling of the address. The refusal now names the key kept for the other address."""
    from helpers import relay_running

    env = {"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}

    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            first = await Chat.start(port, "alice", "bob", "--wait", "1", env=env)
            await first.wait_for(r"connected to", stream="stderr")
            await first.end_input()
            assert await first.exit_code() == 0, first.stderr
            again = await Chat.start(port, "alice", "bob", "--wait", "1", env=env,
                                     host="localhost")
            assert await again.exit_code() == 1, again.stderr
            said = "\n".join(again.stderr)
            assert "belongs to another key" in said, said
            assert f"127.0.0.1_{port}" in said and "--identity" in said, said

    run(main(), timeout=60)
