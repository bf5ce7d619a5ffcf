"""The relay's nameplate table (sans-I/O): allocation, join, expiry, limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgrlib.invite.nameplates import NameplateError, Nameplates


def test_numbers_are_the_smallest_free_ones_and_are_reused():
    plates = Nameplates()
    assert [plates.allocate(f"u{i}", 0.0)[0] for i in range(3)] == [1, 2, 3]
    assert plates.join(2, "bob", 1.0) == "u1"
    assert plates.allocate("u9", 2.0)[0] == 2
    assert plates.allocate("u8", 2.0)[0] == 4


def test_join_frees_the_number_and_a_second_joiner_learns_nothing():
    plates = Nameplates()
    number, expires = plates.allocate("alice", 10.0)
    assert expires == 10.0 + plates.ttl
    assert plates.join(number, "bob", 11.0) == "alice"
    with pytest.raises(NameplateError) as info:
        plates.join(number, "mallory", 11.0)
    assert info.value.code == "no_nameplate"
    with pytest.raises(NameplateError) as info:
        plates.join(999, "bob", 11.0)
    assert info.value.code == "no_nameplate"
    assert len(plates) == 0


def test_the_owner_cannot_join_their_own_invite():
    plates = Nameplates()
    number, _ = plates.allocate("alice", 0.0)
    with pytest.raises(NameplateError) as info:
        plates.join(number, "alice", 0.0)
    assert info.value.code == "own_nameplate"
    assert plates.join(number, "bob", 0.0) == "alice"


def test_nameplates_lapse_after_their_ttl_and_the_owner_is_named():
    plates = Nameplates(ttl=5)
    number, _ = plates.allocate("alice", 0.0)
    assert plates.next_expiry() == 5.0
    assert plates.expire(4.9) == []
    assert plates.expire(5.0) == [(number, "alice")]
    assert plates.next_expiry() is None
    with pytest.raises(NameplateError):
        plates.join(number, "bob", 5.0)


def test_limits_per_owner_and_per_relay():
    plates = Nameplates(max_per_owner=2, max_nameplates=3)
    plates.allocate("alice", 0.0)
    plates.allocate("alice", 0.0)
    with pytest.raises(NameplateError) as info:
        plates.allocate("alice", 0.0)
    assert info.value.code == "too_many_nameplates"
    plates.allocate("bob", 0.0)
    with pytest.raises(NameplateError) as info:
        plates.allocate("carol", 0.0)
    assert info.value.code == "nameplates_full"


def test_cancel_only_by_the_owner_and_cancel_all_on_disconnect():
    plates = Nameplates()
    a1, _ = plates.allocate("alice", 0.0)
    a2, _ = plates.allocate("alice", 0.0)
    b1, _ = plates.allocate("bob", 0.0)
    assert not plates.cancel(a1, "bob", 0.0)
    assert plates.cancel(a1, "alice", 0.0)
    assert plates.cancel_all("alice", 0.0) == [a2]
    assert len(plates) == 1 and plates.join(b1, "carol", 0.0) == "bob"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "join", "cancel", "tick"]),
                          st.sampled_from(["a", "b", "c"]), st.integers(1, 6)), max_size=60))
def test_two_open_invites_never_share_a_number(ops):
    plates = Nameplates(ttl=10, max_per_owner=3)
    now = 0.0
    open_: dict[int, str] = {}
    for op, who, n in ops:
        if op == "tick":
            now += n
            for number, owner in plates.expire(now):
                assert open_.pop(number) == owner
        elif op == "alloc":
            try:
                number, _ = plates.allocate(who, now)
            except NameplateError:
                continue
            assert number not in open_
            open_[number] = who
        elif op == "join":
            try:
                owner = plates.join(n, who, now)
            except NameplateError as exc:
                assert exc.code in ("no_nameplate", "own_nameplate")
                continue
            assert open_.pop(n) == owner != who
        else:
            if plates.cancel(n, who, now):
                assert open_.pop(n) == who
        assert len(plates) == len(open_)


def test_allocate_and_cancel_in_a_loop_does_not_grow_the_table() -> None:
    """Found attacking the relay: each cancelled or joined nameplate left its expiry entry
    in a heap until its TTL ended; one address allocating and cancelling at the message rate
    (64 connections x 200 frames/s) grew the relay's memory by millions of entries, counted
    nowhere. Stale entries are now bounded by the live ones."""
    plates = Nameplates(ttl=600.0)
    keep, _ = plates.allocate("holder", 0.0)  # a live one at the heap's top
    for i in range(20_000):
        number, _ = plates.allocate("looper", i * 0.001)
        if i % 2:
            assert plates.cancel(number, "looper", i * 0.001)
        else:
            assert plates.join(number, "joiner", i * 0.001) == "looper"
    assert len(plates._expiry) <= 2 * len(plates) + 66
    assert plates.next_expiry() == 600.0
    assert plates.expire(600.0) == [(keep, "holder")]
    assert len(plates) == 0 and plates.next_expiry() is None
