"""msgrlib.client.identity: one name-ownership key per relay and name, kept 0600.

Issue 14 item 2: with a key per run, `echo msg | msgr chat ...` run twice in a
row was often refused its own name (the relay still held it for the last
run's key). The key is now kept under the user's state directory.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import Chat, relay_subprocess, run

from msgrlib.client import connection as client
from msgrlib.client import core as chat
from msgrlib.client import identity


def _client(host: str, port: int, user: str = "alice") -> client.ChatClient:
    core = chat.ChatCore(me=user, peer="bob", key=bytes(32), clock=lambda: 0.0,
                         wallclock=lambda: 0.0, rng=os.urandom)
    return client.ChatClient(core, host=host, port=port)


def test_the_default_path_follows_xdg_and_separates_relays_and_names():
    env = {"XDG_STATE_HOME": "/state", "HOME": "/home/u"}
    path = identity.default_identity_path("[::1]:8765", "alice", env)
    assert str(path) == "/state/msgr/names/[__1]_8765/alice.key"
    relative = {"XDG_STATE_HOME": "state", "HOME": "/home/u"}
    assert str(identity.default_identity_dir(relative)) == "/home/u/.local/state/msgr/names"
    assert identity.default_identity_path("relay:1", "a", env) != \
        identity.default_identity_path("relay:2", "a", env)


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


def test_runs_starting_together_get_the_same_key(tmp_path):
    path = tmp_path / "ids" / "alice.key"
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: bytes(identity.load_or_create(path)), range(16)))
    assert len(set(keys)) == 1


def test_a_state_directory_that_cannot_be_written_falls_back_with_a_notice(tmp_path,
                                                                             monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocked))
    c = _client("relay", 1)
    assert c.identity is not None and "for this run only" in c._identity_notice


def test_a_file_that_is_not_an_identity_is_named(tmp_path):
    bad = tmp_path / "id"
    bad.write_text("hello")
    with pytest.raises(identity.IdentityError, match="not a msgr identity"):
        identity.load_identity(bad)
    assert identity.load_identity(None) is None


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
