"""msgrlib.client.identity: one name-ownership key per relay and name, kept 0600.

Issue 14 item 2: with a key per run, `echo msg | msgr chat ...` run twice in a
row was often refused its own name (the relay still held it for the last
run's key). The key is now kept under the user's state directory.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from msgrlib.client import identity


def test_the_default_path_follows_xdg_and_separates_relays_and_names():
    env = {"XDG_STATE_HOME": "/state", "HOME": "/home/u"}
    path = identity.default_identity_path("[::1]:8765", "alice", env)
    assert str(path) == "/state/msgr/names/[__1]_8765/alice.key"
    relative = {"XDG_STATE_HOME": "state", "HOME": "/home/u"}
    assert str(identity.default_identity_dir(relative)) == "/home/u/.local/state/msgr/names"
    assert identity.default_identity_path("relay:1", "a", env) != \
        identity.default_identity_path("relay:2", "a", env)


def test_runs_starting_together_get_the_same_key(tmp_path):
    path = tmp_path / "ids" / "alice.key"
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: bytes(identity.load_or_create(path)), range(16)))
    assert len(set(keys)) == 1


def test_a_file_that_is_not_an_identity_is_named(tmp_path):
    bad = tmp_path / "id"
    bad.write_text("hello")
    bad.chmod(0o600)
    with pytest.raises(identity.IdentityError, match="not a msgr identity"):
        identity.load_identity(bad)
    assert identity.load_identity(None) is None



@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_other_users_can_read_or_write_is_refused_as_ssh_does(tmp_path, mode):
    path = tmp_path / "alice.key"
    key = identity.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(mode)
    with pytest.raises(identity.IdentityError, match="chmod 600"):
        identity.load_or_create(path)
    path.chmod(0o600)
    assert bytes(identity.load_or_create(path)) == bytes(key)
