"""The TTL store: holds, hands out, acknowledges and expires in order, never by scanning."""

from __future__ import annotations

import gc
import heapq
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgrlib.relay import store
from msgrlib.relay.store import MailboxFull, MemoryStore, StoreFull


def add(s: MemoryStore, to: str, ttl: int, now: float, body: str = "x") -> store.Held:
    return s.add("alice", to, body, "msg", ttl, now, 1_000_000.0 + now)


def test_holds_hands_out_in_order_and_acks():
    s = MemoryStore()
    a = add(s, "bob", 30, 0)
    b = add(s, "bob", 10, 1)
    add(s, "carol", 30, 2)
    assert [h.id for h in s.waiting("bob")] == [a.id, b.id]
    assert s.ack("bob", a.id) == a
    assert s.ack("bob", a.id) is None           # twice: gone
    assert s.ack("carol", b.id) is None          # not theirs: refused
    assert [h.id for h in s.waiting("bob")] == [b.id]
    assert len(s) == 2


def test_expires_in_expiry_order_not_arrival_order():
    s = MemoryStore()
    late = add(s, "bob", 60, 0)
    early = add(s, "bob", 5, 0)
    mid = add(s, "carol", 30, 0)
    assert s.next_expiry() == 5
    assert s.pop_expired(4.999) == []
    assert s.pop_expired(5) == [early]
    assert s.pop_expired(100) == [mid, late]
    assert len(s) == 0 and s.bytes == 0 and s.next_expiry() is None
    assert list(s.waiting("bob")) == []


def test_acked_message_never_expires_and_the_store_lets_go_of_it():
    s = MemoryStore()
    body = "".join(["secret-", "ciphertext"])  # a string of its own
    held = add(s, "bob", 5, 0, body=body)
    before = sys.getrefcount(body)
    assert s.ack("bob", held.id) == held
    assert sys.getrefcount(body) == before - 1   # the stored copy is freed at once
    assert s.next_expiry() is None               # the dead heap entry is gone
    assert s.pop_expired(10) == []


def test_held_messages_cost_the_garbage_collector_nothing():
    """Messages waiting in the store must not reach the collector's old
    generation, whose full collections walk every object (see store.Held).

    Stored as class instances, about 20,000 of these 20,000 messages were
    promoted there; as exact tuples of scalars the collector drops them.
    """
    s = MemoryStore(mailbox_messages=10**6, mailbox_bytes=10**9)
    old = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        gc.collect()
        before = len(gc.get_objects(generation=2))
        for i in range(20_000):
            add(s, f"u{i % 100}", 30, 0)
        gc.collect(1)  # what a young collection would promote, promoted now
        grown = len(gc.get_objects(generation=2)) - before
    finally:
        gc.set_threshold(*old)
    assert grown < 1_000, grown
    assert len(s) == 20_000


def test_expiry_work_is_proportional_to_what_expires(monkeypatch):
    """With 20,000 held, expiring 10 touches ~10 heap entries, not 20,000."""
    s = MemoryStore(mailbox_messages=10**6, mailbox_bytes=10**9)
    for i in range(20_000):
        add(s, f"u{i % 100}", 5 + (i % 50), 0)
    pops = 0
    real_pop = heapq.heappop

    def counting_pop(heap):
        nonlocal pops
        pops += 1
        return real_pop(heap)

    monkeypatch.setattr(store.heapq, "heappop", counting_pop)
    # Nothing due: an idle tick pops nothing, whatever is stored.
    assert s.pop_expired(4.9) == [] and pops == 0
    assert s.next_expiry() == 5 and pops == 0
    expired = s.pop_expired(5)                   # the 400 messages with ttl 5
    assert len(expired) == 400 and pops == 400


def test_mailbox_and_store_limits_refuse_instead_of_growing():
    s = MemoryStore(mailbox_messages=2, mailbox_bytes=10_000, store_bytes=10_000)
    add(s, "bob", 30, 0)
    add(s, "bob", 30, 0)
    with pytest.raises(MailboxFull) as err:
        add(s, "bob", 30, 0)
    assert "bob" in str(err.value)
    with pytest.raises(MailboxFull):
        add(s, "carol", 30, 0, body="x" * 10_000)
    s2 = MemoryStore(store_bytes=3 * (store.OVERHEAD_BYTES + 1))
    for name in ("a", "b", "c"):
        add(s2, name, 30, 0)
    with pytest.raises(StoreFull):
        add(s2, "d", 30, 0)
    assert len(s2) == 3                          # nothing stored on refusal


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "ack", "tick"]),
                          st.integers(0, 60), st.integers(0, 5)), max_size=80))
def test_model(ops):
    """Against a dict model: every message is acked once or expires once, never both."""
    s = MemoryStore()
    now = 0.0
    model: dict[int, tuple[str, float]] = {}
    rng = random.Random(1)
    for op, value, who in ops:
        name = f"u{who}"
        if op == "add":
            held = add(s, name, max(1, value), now)
            model[held.id] = (name, now + max(1, value))
        elif op == "ack" and model:
            msg_id = rng.choice(sorted(model))
            owner, _ = model[msg_id]
            assert s.ack(owner, msg_id) is not None
            del model[msg_id]
        else:
            now += value
            gone = {h.id for h in s.pop_expired(now)}
            due = {i for i, (_, t) in model.items() if t <= now}
            assert gone == due
            for i in due:
                del model[i]
        assert len(s) == len(model)
        for who_ in {n for n, _ in model.values()}:
            assert [h.id for h in s.waiting(who_)] == sorted(
                i for i, (n, _) in model.items() if n == who_)


def test_acknowledged_messages_do_not_pile_up_in_the_heap():
    """A relay whose readers ack everything keeps O(live) heap entries, not O(rate x TTL)."""
    s = MemoryStore(mailbox_messages=10**6, mailbox_bytes=10**9, store_bytes=10**9)
    keep = [add(s, "bob", 60, 0) for _ in range(100)]
    for i in range(50_000):
        held = add(s, "bob", 60, i / 1000)
        assert s.ack("bob", held.id) == held
    assert s.heap_size <= 3 * len(s) + store.COMPACT_SLACK + 1
    assert len(s) == 100
    assert s.pop_expired(1000) == keep           # still expires exactly the live ones
    assert s.next_expiry() is None and s.heap_size == 0


def test_relay_ids_never_pass_2_to_the_53():
    """PROTOCOL.md 3.4: ids are at most 2^53 - 1, exact as JSON numbers anywhere."""
    s = MemoryStore(first_id=store.MAX_ID - 1)
    ids = [s.add("alice", "bob", "x", "msg", 30, 0.0, 1_000_000.0).id for _ in range(3)]
    assert ids == [store.MAX_ID - 1, store.MAX_ID, 1]
