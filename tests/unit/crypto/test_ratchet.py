"""Tests for ratchet.py: the Double Ratchet, after the spec's own scenarios.

Run as a module from the repository root (``python -m tests.test_ratchet``)
to print the per-message cost. ``MSGR_FUZZ_EXAMPLES`` scales the property tests (default 100).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import os
import random
import timeit
from collections.abc import Callable
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base, crypto_secretbox

from msgrlib.crypto import ratchet
from msgrlib.crypto.ratchet import (
    DEFAULT_MAX_SKIP,
    DEFAULT_MAX_STORED,
    HEADER_LEN,
    MIN_MESSAGE_LEN,
    DecryptionFailed,
    DuplicateMessage,
    MalformedMessage,
    Ratchet,
    RatchetError,
    RatchetStateError,
    ReflectedMessage,
    TooManySkipped,
)
from msgrlib.errors import CryptoError, MsgrError

FUZZ_EXAMPLES = int(os.environ.get("MSGR_FUZZ_EXAMPLES", "100"))
AD = b"msgr-test|alice-identity|bob-identity"

# Small-order u-coordinates of Curve25519 and its twist: 0, 1, the two points
# of order 8, p - 1, p, p + 1; and the same with bit 255 set, which X25519
# ignores. Every one gives an all-zero shared secret.
_LOW_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]
LOW_ORDER = [bytes.fromhex(h) for h in _LOW_ORDER] + [
    bytes.fromhex(h)[:31] + bytes([bytes.fromhex(h)[31] | 0x80]) for h in _LOW_ORDER
]


# -- helpers ----------------------------------------------------------------


def det_rng(seed: bytes) -> Callable[[int], bytes]:
    """A deterministic rng: SHAKE-256 of seed and a counter."""
    counter = itertools.count()

    def rng(n: int) -> bytes:
        return hashlib.shake_256(seed + next(counter).to_bytes(8, "big")).digest(n)

    return rng


def make_pair(
    seed: bytes = b"pair", ad: bytes = AD, *, deterministic: bool = True, **limits: int
) -> tuple[Ratchet, Ratchet]:
    """Alice (initiator) and Bob (responder) sharing a root key."""
    setup = det_rng(b"setup" + seed)
    root_key = setup(32)
    bob_priv = setup(32)
    rng_a = det_rng(b"alice" + seed) if deterministic else os.urandom
    rng_b = det_rng(b"bob" + seed) if deterministic else os.urandom
    alice = Ratchet.initiator(root_key, crypto_scalarmult_base(bob_priv), ad, rng=rng_a, **limits)
    bob = Ratchet.responder(root_key, bob_priv, ad, rng=rng_b, **limits)
    return alice, bob


def snapshot(r: Ratchet) -> dict[str, object]:
    """Everything a Ratchet holds except its rng: equal means same state."""
    return copy.deepcopy({k: v for k, v in vars(r).items() if k != "_rng"})


def fields(message: bytes) -> tuple[int, int, bytes, int, int]:
    """(version, role, dh_pub, pn, n) of a message's header."""
    return (
        message[0],
        message[1],
        message[2:34],
        int.from_bytes(message[34:38], "big"),
        int.from_bytes(message[38:42], "big"),
    )


def flip(message: bytes, index: int, mask: int = 0x01) -> bytes:
    return message[:index] + bytes([message[index] ^ mask]) + message[index + 1 :]


def refused(r: Ratchet, message: bytes, error: type[RatchetError] = RatchetError) -> RatchetError:
    """Assert that ``r`` refuses ``message`` with ``error`` and is unchanged."""
    before = snapshot(r)
    with pytest.raises(error) as info:
        r.decrypt(message)
    assert snapshot(r) == before
    return info.value


def converse(alice: Ratchet, bob: Ratchet, rounds: int = 1) -> None:
    for i in range(rounds):
        assert bob.decrypt(alice.encrypt(b"a%d" % i)) == b"a%d" % i
        assert alice.decrypt(bob.encrypt(b"b%d" % i)) == b"b%d" % i


# -- basic exchange ---------------------------------------------------------


def test_basic_exchange_both_ways() -> None:
    alice, bob = make_pair()
    assert alice.role == "initiator" and bob.role == "responder"
    assert alice.can_send and not bob.can_send
    assert bob.decrypt(alice.encrypt(b"hello bob")) == b"hello bob"
    assert bob.can_send
    assert alice.decrypt(bob.encrypt(b"hello alice")) == b"hello alice"
    assert bob.decrypt(alice.encrypt(b"")) == b""
    big = bytes(range(256)) * 300
    assert alice.decrypt(bob.encrypt(big)) == big


def test_responder_cannot_send_first() -> None:
    _, bob = make_pair()
    with pytest.raises(RatchetStateError) as info:
        bob.encrypt(b"too early")
    assert not info.value.remote
    assert isinstance(info.value, MsgrError) and not isinstance(info.value, CryptoError)


def test_error_codes() -> None:
    assert RatchetError.code == "ratchet" and RatchetError.remote
    assert MalformedMessage.code == "bad_message"
    assert ReflectedMessage.code == "reflected"
    assert DuplicateMessage.code == "replay"
    assert DecryptionFailed.code == "forged"
    assert TooManySkipped.code == "too_many_skipped"
    for cls in (
        MalformedMessage,
        ReflectedMessage,
        DuplicateMessage,
        DecryptionFailed,
        TooManySkipped,
    ):
        assert issubclass(cls, RatchetError) and issubclass(cls, CryptoError)


def test_wire_format() -> None:
    alice, bob = make_pair()
    m = alice.encrypt(b"abc")
    assert len(m) == HEADER_LEN + 16 + 3 == MIN_MESSAGE_LEN + 3
    version, role, dh, pn, n = fields(m)
    assert (version, role, dh, pn, n) == (1, 0, alice._dhs_pub, 0, 0)
    assert fields(alice.encrypt(b"abc"))[4] == 1
    bob.decrypt(m)
    assert fields(bob.encrypt(b"x"))[1] == 1


def test_alternating_runs_step_the_dh_ratchet() -> None:
    alice, bob = make_pair()
    parties = {"A": (alice, bob), "B": (bob, alice)}
    runs = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    seen_keys: set[bytes] = set()
    last_run_length = {"A": 0, "B": 0}
    for i, length in enumerate(runs):
        who = "AB"[i % 2]
        sender, receiver = parties[who]
        messages = [sender.encrypt(b"%s%d-%d" % (who.encode(), i, k)) for k in range(length)]
        keys = {fields(m)[2] for m in messages}
        assert len(keys) == 1, "one ratchet key per sending chain"
        (key,) = keys
        assert key not in seen_keys, "a new ratchet key each time the direction flips"
        seen_keys.add(key)
        assert [fields(m)[4] for m in messages] == list(range(length))
        assert {fields(m)[3] for m in messages} == {last_run_length[who]}
        last_run_length[who] = length
        for k, m in enumerate(messages):
            assert receiver.decrypt(m) == b"%s%d-%d" % (who.encode(), i, k)


def test_one_sided_runs_stay_on_one_chain() -> None:
    alice, bob = make_pair()
    messages = [alice.encrypt(b"%d" % i) for i in range(300)]
    assert len({fields(m)[2] for m in messages}) == 1
    for i, m in enumerate(messages):
        assert bob.decrypt(m) == b"%d" % i
    replies = [bob.encrypt(b"r%d" % i) for i in range(50)]
    for i, m in enumerate(reversed(replies)):
        assert alice.decrypt(m) == b"r%d" % (49 - i)
    assert alice.skipped_count == 0 and bob.skipped_count == 0


def test_out_of_order_and_lost_messages_across_a_dh_step() -> None:
    # The spec's section 2.6 picture: B's first chain partly lost and late.
    alice, bob = make_pair()
    converse(alice, bob)
    a_chain1 = [alice.encrypt(b"a1-%d" % i) for i in range(4)]
    assert bob.decrypt(a_chain1[1]) == b"a1-1"  # 0 skipped
    assert bob.skipped_count == 1
    reply = bob.encrypt(b"reply")
    assert alice.decrypt(reply) == b"reply"
    a_chain2 = [alice.encrypt(b"a2-%d" % i) for i in range(3)]
    assert fields(a_chain2[0])[3] == 4  # pn: four sent on the previous chain
    assert bob.decrypt(a_chain2[2]) == b"a2-2"  # stores a1-2, a1-3, a2-0, a2-1
    assert bob.skipped_count == 5
    for i in (3, 0, 2):
        assert bob.decrypt(a_chain1[i]) == b"a1-%d" % i
    assert bob.decrypt(a_chain2[0]) == b"a2-0"
    assert bob.skipped_count == 1  # a2-1 is still lost
    refused(bob, a_chain1[0], DuplicateMessage)
    refused(bob, a_chain2[2], DuplicateMessage)
    assert bob.decrypt(a_chain2[1]) == b"a2-1"
    assert bob.skipped_count == 0


# -- replay, tampering, reflection, other sessions, garbage -----------------


def test_duplicates_are_replays() -> None:
    alice, bob = make_pair()
    m0 = alice.encrypt(b"m0")
    m1 = alice.encrypt(b"m1")
    bob.decrypt(m0)
    refused(bob, m0, DuplicateMessage)  # current chain, older than Nr
    bob.decrypt(m1)
    refused(bob, m1, DuplicateMessage)
    converse(alice, bob, 2)
    refused(bob, m0, DuplicateMessage)  # closed chain
    refused(bob, m1, DuplicateMessage)


def test_tampering_any_byte_is_refused_and_changes_nothing() -> None:
    alice, bob = make_pair()
    converse(alice, bob)
    assert bob.decrypt(alice.encrypt(b"opens a chain")) == b"opens a chain"
    skipped_target = alice.encrypt(b"will be skipped")
    assert bob.decrypt(alice.encrypt(b"skips one")) == b"skips one"
    assert bob.skipped_count == 1
    current = alice.encrypt(b"next in the current chain")
    other_alice, other_bob = make_pair(b"tamper-new-chain")
    first_message = other_alice.encrypt(b"first message of the session")

    cases = [
        (bob, skipped_target, b"will be skipped"),
        (bob, current, b"next in the current chain"),
        (other_bob, first_message, b"first message of the session"),
    ]
    for receiver, message, plaintext in cases:
        for index in range(len(message)):
            for mask in (0x01, 0x80):
                refused(receiver, flip(message, index, mask))
        assert receiver.decrypt(message) == plaintext


def test_tampering_error_classes() -> None:
    alice, bob = make_pair()
    m = alice.encrypt(b"hello")
    refused(bob, flip(m, 0), MalformedMessage)  # version
    refused(bob, flip(m, 1), ReflectedMessage)  # role 0 -> 1: Bob's own role
    refused(bob, flip(m, 1, 0x02), MalformedMessage)  # role 2: unknown
    refused(bob, flip(m, 5), DecryptionFailed)  # dh_pub
    refused(bob, flip(m, 41), DecryptionFailed)  # n: 0 -> 1, key differs
    refused(bob, flip(m, HEADER_LEN), DecryptionFailed)  # MAC
    refused(bob, flip(m, len(m) - 1), DecryptionFailed)  # body
    refused(bob, flip(m, 38, 0x80), TooManySkipped)  # n: 2**31
    refused(bob, flip(m, 34, 0x80), TooManySkipped)  # pn: 2**31
    assert bob.decrypt(m) == b"hello"


def test_reflection() -> None:
    alice, bob = make_pair()
    mine = alice.encrypt(b"to bob")
    refused(alice, mine, ReflectedMessage)
    # Hiding the reflection by flipping the role byte fails the MAC instead.
    refused(alice, flip(mine, 1), DecryptionFailed)
    assert bob.decrypt(mine) == b"to bob"
    reply = bob.encrypt(b"to alice")
    refused(bob, reply, ReflectedMessage)
    refused(bob, flip(reply, 1), DecryptionFailed)
    assert alice.decrypt(reply) == b"to alice"


@pytest.mark.parametrize("what", ["root_key", "ad"])
def test_message_from_another_session_fails(what: str) -> None:
    alice, bob = make_pair()
    other_alice, other_bob = make_pair(
        b"other" if what == "root_key" else b"pair", AD if what == "root_key" else AD + b"!"
    )
    refused(bob, other_alice.encrypt(b"first"), DecryptionFailed)
    converse(alice, bob, 2)
    converse(other_alice, other_bob, 2)
    refused(bob, other_alice.encrypt(b"mid-session"), DecryptionFailed)
    refused(alice, other_bob.encrypt(b"mid-session"), DecryptionFailed)
    converse(alice, bob)


def test_other_session_with_same_ratchet_key_pair_fails() -> None:
    # Same Bob key pair, other root key: the MAC, not the DH, tells them apart.
    alice, _ = make_pair()
    setup = det_rng(b"setuppair")
    setup(32)
    bob_priv = setup(32)
    stranger = Ratchet.responder(b"\x07" * 32, bob_priv, AD)
    refused(stranger, alice.encrypt(b"x"), DecryptionFailed)


def test_truncated_messages_are_malformed() -> None:
    alice, bob = make_pair()
    m = alice.encrypt(b"")
    assert len(m) == MIN_MESSAGE_LEN
    for length in range(MIN_MESSAGE_LEN):
        err = refused(bob, m[:length], MalformedMessage)
        assert str(length) in str(err)
    assert bob.decrypt(m) == b""


def test_wrong_version_is_malformed() -> None:
    alice, bob = make_pair()
    m = alice.encrypt(b"x")
    for version in (0, 2, 255):
        refused(bob, bytes([version]) + m[1:], MalformedMessage)


def test_low_order_ratchet_key_is_malformed() -> None:
    alice, bob = make_pair()
    m = alice.encrypt(b"x")
    for point in LOW_ORDER:
        refused(bob, m[:2] + point + m[34:], MalformedMessage)
    assert bob.decrypt(m) == b"x"
    converse(alice, bob)
    m = bob.encrypt(b"y")
    for point in LOW_ORDER:
        refused(alice, m[:2] + point + m[34:], MalformedMessage)
    with pytest.raises(MalformedMessage):
        Ratchet.initiator(b"\x01" * 32, LOW_ORDER[2], AD)


def test_initiator_first_dhr_never_has_a_chain() -> None:
    # The responder's initial key never sends; a message under it is refused.
    setup = det_rng(b"setuppair")
    setup(32)
    bob_priv = setup(32)
    alice, _ = make_pair()
    m = alice.encrypt(b"x")
    fake = m[:1] + b"\x01" + crypto_scalarmult_base(bob_priv) + m[34:]
    refused(alice, fake, DecryptionFailed)


def test_non_bytes_is_a_type_error() -> None:
    alice, bob = make_pair()
    with pytest.raises(TypeError):
        bob.decrypt("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        alice.encrypt(5)  # type: ignore[arg-type]
    m = alice.encrypt(b"views are fine")
    assert bob.decrypt(memoryview(bytearray(m))) == b"views are fine"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Ratchet.initiator(b"short", b"\x09" * 32, AD)
    with pytest.raises(ValueError):
        Ratchet.responder(b"\x00" * 32, b"short", AD)
    with pytest.raises(ValueError):
        Ratchet.responder(b"\x00" * 32, b"\x01" * 32, AD, max_skip=-1)
    with pytest.raises(ValueError):
        Ratchet.initiator(b"\x00" * 32, b"\x09" * 32, AD, rng=lambda n: b"\x00" * (n - 1))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(garbage=st.binary(max_size=200))
def test_fuzz_garbage_raises_only_ratchet_errors(garbage: bytes) -> None:
    alice, bob = make_pair()
    converse(alice, bob)
    for r in (alice, bob):
        before = snapshot(r)
        try:
            r.decrypt(garbage)
        except RatchetError:
            pass
        else:
            pytest.fail("garbage decrypted")
        assert snapshot(r) == before


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(
    role=st.integers(0, 1),
    dh=st.binary(min_size=32, max_size=32),
    pn=st.integers(0, 2**32 - 1) | st.integers(0, 3),
    n=st.integers(0, 2**32 - 1) | st.integers(0, 3),
    body=st.binary(min_size=16, max_size=64),
    reuse_dh=st.booleans(),
)
def test_fuzz_well_formed_headers(
    role: int, dh: bytes, pn: int, n: int, body: bytes, reuse_dh: bool
) -> None:
    alice, bob = make_pair()
    converse(alice, bob)
    real = alice.encrypt(b"real")
    if reuse_dh:
        dh = real[2:34]
    message = bytes([1, role]) + dh + pn.to_bytes(4, "big") + n.to_bytes(4, "big") + body
    before = snapshot(bob)
    with pytest.raises(RatchetError):
        bob.decrypt(message)
    assert snapshot(bob) == before
    assert bob.decrypt(real) == b"real"


# -- limits -------------------------------------------------------------------


def test_defaults() -> None:
    assert DEFAULT_MAX_SKIP == 1000 and DEFAULT_MAX_STORED == 2000


@pytest.mark.parametrize("limit", [0, 1, 10])
def test_skip_limit_in_current_chain_at_max_and_max_plus_one(limit: int) -> None:
    alice, bob = make_pair(max_skip=limit)
    converse(alice, bob)
    assert bob.decrypt(alice.encrypt(b"sync")) == b"sync"
    messages = [alice.encrypt(b"%d" % i) for i in range(limit + 2)]
    err = refused(bob, messages[limit + 1], TooManySkipped)
    assert isinstance(err, TooManySkipped)
    assert (err.skip, err.limit) == (limit + 1, limit)
    assert bob.decrypt(messages[limit]) == b"%d" % limit  # exactly max_skip skipped
    assert bob.skipped_count == limit
    assert bob.decrypt(messages[limit + 1]) == b"%d" % (limit + 1)


@pytest.mark.parametrize("limit", [0, 3])
def test_skip_limit_in_new_chain(limit: int) -> None:
    alice, bob = make_pair(max_skip=limit)
    messages = [alice.encrypt(b"%d" % i) for i in range(limit + 2)]
    refused(bob, messages[limit + 1], TooManySkipped)
    assert bob.decrypt(messages[limit]) == b"%d" % limit


def test_skip_limit_on_previous_chain_pn() -> None:
    # A new chain whose pn says we missed more than max_skip of the old one.
    limit = 5
    alice, bob = make_pair(max_skip=limit)
    converse(alice, bob)
    assert bob.decrypt(alice.encrypt(b"0")) == b"0"  # Bob's Nr = 1 on this chain
    tail = [alice.encrypt(b"t%d" % i) for i in range(limit + 1)]  # n = 1..limit+1
    assert alice.decrypt(bob.encrypt(b"flip")) == b"flip"
    new = alice.encrypt(b"new chain")
    assert fields(new)[3] == limit + 2
    refused(bob, new, TooManySkipped)
    assert bob.decrypt(tail[0]) == b"t0"  # now pn - Nr == limit
    assert bob.decrypt(new) == b"new chain"
    assert bob.skipped_count == limit
    for i, m in enumerate(tail[1:], start=1):
        assert bob.decrypt(m) == b"t%d" % i


def test_total_stored_keys_capped_oldest_evicted_first() -> None:
    alice, bob = make_pair(max_skip=10, max_stored=6)
    converse(alice, bob)
    chain = [alice.encrypt(b"%d" % i) for i in range(20)]
    assert bob.decrypt(chain[4]) == b"4"  # skips 0..3
    assert bob.skipped_count == 4
    assert bob.decrypt(chain[9]) == b"9"  # skips 5..8: 8 > 6, evicts 0 and 1
    assert bob.skipped_count == 6
    refused(bob, chain[0], DuplicateMessage)
    refused(bob, chain[1], DuplicateMessage)
    for i in (2, 3, 5, 6, 7, 8):
        assert bob.decrypt(chain[i]) == b"%d" % i
    assert bob.skipped_count == 0
    assert bob.decrypt(chain[19]) == b"19"  # skips 10..18: keeps 13..18
    assert bob.skipped_count == 6
    refused(bob, chain[12], DuplicateMessage)
    assert bob.decrypt(chain[13]) == b"13"


def test_replays_older_than_max_retired_read_as_forged() -> None:
    alice, bob = make_pair(max_retired=2)
    old = []
    for i in range(4):
        old.append(alice.encrypt(b"%d" % i))
        assert bob.decrypt(old[-1]) == b"%d" % i
        converse(alice, bob)
    # Alice's chains 0-2 are closed, Bob remembers 1 and 2; chain 3 is current.
    assert len(bob._retired) == 2
    for message in old[1:]:
        refused(bob, message, DuplicateMessage)
    refused(bob, old[0], DecryptionFailed)
    converse(alice, bob)  # closes chain 3, forgets chain 1
    refused(bob, old[1], DecryptionFailed)
    refused(bob, old[2], DuplicateMessage)


def test_max_stored_zero_keeps_nothing() -> None:
    alice, bob = make_pair(max_stored=0)
    chain = [alice.encrypt(b"%d" % i) for i in range(3)]
    assert bob.decrypt(chain[2]) == b"2"
    assert bob.skipped_count == 0
    refused(bob, chain[0], DuplicateMessage)


# -- property tests: lossy, duplicating, reordering network -----------------


class Conversation(RuleBasedStateMachine):
    """Alice and Bob over a network that loses, duplicates and reorders.

    With the default limits every delivered message that was not delivered
    before decrypts exactly once to its plaintext; every redelivery raises
    DuplicateMessage. Every refusal leaves the receiver's state unchanged.
    """

    LIMITS: ClassVar[dict[str, int]] = {}
    #: With small limits, a fresh message may also be refused as too far
    #: ahead or as evicted; it must still never decrypt wrongly or twice.
    STRICT = True

    def __init__(self) -> None:
        super().__init__()
        self.alice, self.bob = make_pair(b"machine", **self.LIMITS)
        self.parties = {"A": self.alice, "B": self.bob}
        self.in_flight: list[tuple[str, bytes, bytes]] = []
        self.delivered: dict[bytes, str] = {}
        self.sent = 0
        self.max_stored = self.LIMITS.get("max_stored", DEFAULT_MAX_STORED)

    @rule(sender=st.sampled_from("AB"), count=st.integers(1, 4), size=st.integers(0, 40))
    def send(self, sender: str, count: int, size: int) -> None:
        party = self.parties[sender]
        if not party.can_send:
            return
        for _ in range(count):
            plaintext = b"%s%d:" % (sender.encode(), self.sent) + b"x" * size
            self.sent += 1
            to = "B" if sender == "A" else "A"
            self.in_flight.append((to, party.encrypt(plaintext), plaintext))

    @precondition(lambda self: self.in_flight)
    @rule(
        pick=st.integers(0, 2**16),
        what=st.sampled_from(["deliver"] * 4 + ["deliver and keep a copy", "lose"]),
    )
    def network(self, pick: int, what: str) -> None:
        index = pick % len(self.in_flight)
        if what == "lose":
            del self.in_flight[index]
            return
        to, message, plaintext = self.in_flight[index]
        if what == "deliver":
            del self.in_flight[index]
        self.deliver(to, message, plaintext)

    def deliver(self, to: str, message: bytes, plaintext: bytes) -> None:
        receiver = self.parties[to]
        if message in self.delivered:
            refused(receiver, message, DuplicateMessage)
        elif self.STRICT:
            assert receiver.decrypt(message) == plaintext
            self.delivered[message] = to
        else:
            before = snapshot(receiver)
            try:
                result = receiver.decrypt(message)
            except (DuplicateMessage, TooManySkipped):
                assert snapshot(receiver) == before
            else:
                assert result == plaintext
                self.delivered[message] = to

    @rule(
        pick=st.integers(0, 2**16),
        what=st.sampled_from(["replay", "tamper", "reflect"]),
        position=st.integers(0, 2**16),
        mask=st.integers(1, 255),
    )
    def attack(self, pick: int, what: str, position: int, mask: int) -> None:
        if what == "replay":
            if self.delivered:
                messages = sorted(self.delivered)
                message = messages[pick % len(messages)]
                refused(self.parties[self.delivered[message]], message, DuplicateMessage)
            return
        if not self.in_flight:
            return
        to, message, _ = self.in_flight[pick % len(self.in_flight)]
        if what == "tamper":
            refused(self.parties[to], flip(message, position % len(message), mask))
        else:
            sender = "B" if to == "A" else "A"
            refused(self.parties[sender], message, ReflectedMessage)

    @invariant()
    def stored_keys_capped(self) -> None:
        assert self.alice.skipped_count <= self.max_stored
        assert self.bob.skipped_count <= self.max_stored

    def teardown(self) -> None:
        # Whatever was lost, everything still in flight arrives, and the
        # conversation goes on in both directions.
        for to, message, plaintext in self.in_flight:
            self.deliver(to, message, plaintext)
        if self.STRICT:
            converse(self.alice, self.bob, 2)


class SmallLimitsConversation(Conversation):
    LIMITS: ClassVar[dict[str, int]] = {"max_skip": 3, "max_stored": 4}
    STRICT = False


Conversation.TestCase.settings = settings(
    max_examples=FUZZ_EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SmallLimitsConversation.TestCase.settings = settings(
    max_examples=max(1, FUZZ_EXAMPLES // 2),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestConversation = Conversation.TestCase
TestSmallLimitsConversation = SmallLimitsConversation.TestCase


@settings(max_examples=max(1, FUZZ_EXAMPLES // 4), deadline=None)
@given(
    schedule=st.lists(st.tuples(st.integers(1, 30), st.booleans()), min_size=1, max_size=12),
    seed=st.binary(min_size=1, max_size=8),
)
def test_long_runs_with_loss_and_reordering(schedule: list[tuple[int, bool]], seed: bytes) -> None:
    """Runs of messages per direction, each run shuffled and a third lost."""
    shuffle = random.Random(seed)
    alice, bob = make_pair(seed)
    sender, receiver = alice, bob
    for length, flip_direction in schedule:
        messages = [(sender.encrypt(b"%d" % i), b"%d" % i) for i in range(length)]
        shuffle.shuffle(messages)
        kept = messages[: max(1, (2 * length) // 3)]
        for message, plaintext in kept:
            assert receiver.decrypt(message) == plaintext
        for message, _ in kept:
            refused(receiver, message, DuplicateMessage)
        if flip_direction:
            sender, receiver = receiver, sender


# -- forward secrecy and post-compromise security ---------------------------


def test_forward_secrecy_snapshot_cannot_decrypt_earlier_messages() -> None:
    alice, bob = make_pair()
    earlier = []
    for i in range(4):
        m = alice.encrypt(b"old%d" % i)
        earlier.append(m)
        bob.decrypt(m)
        alice.decrypt(bob.encrypt(b"ack"))
    same_chain = [alice.encrypt(b"same%d" % i) for i in range(3)]
    for m in same_chain:
        bob.decrypt(m)
    earlier += same_chain

    stolen = copy.deepcopy(bob)  # everything Bob holds at time t
    for m in earlier:
        with pytest.raises((DuplicateMessage, DecryptionFailed)):
            copy.deepcopy(stolen).decrypt(m)
    # Even an attacker who ignores the bookkeeping and re-derives from the
    # stolen chain and root keys gets nothing: those keys have moved on.
    forced = copy.deepcopy(stolen)
    forced._retired.clear()
    forced._nr = 0
    for m in earlier:
        with pytest.raises(DecryptionFailed):
            copy.deepcopy(forced).decrypt(m)
    # No message key of a decrypted message is left in the state.
    assert stolen.skipped_count == 0


def test_post_compromise_security_heals_after_one_round_trip() -> None:
    alice, bob = make_pair(deterministic=False)
    converse(alice, bob, 2)
    assert bob.decrypt(alice.encrypt(b"m0")) == b"m0"
    eve = copy.deepcopy(alice)  # all of Alice's state at time t

    # Before healing the copy works: Bob's next chain still rests on Alice's
    # ratchet key from before t, so Eve reads it.
    m1 = bob.encrypt(b"still readable")
    assert copy.deepcopy(eve).decrypt(m1) == b"still readable"
    assert alice.decrypt(m1) == b"still readable"  # Alice makes a key after t
    # One round trip: Alice's fresh key reaches Bob, Bob answers with his.
    assert bob.decrypt(alice.encrypt(b"healing")) == b"healing"
    after = [bob.encrypt(b"secret after healing %d" % i) for i in range(3)]

    eve_after_m1 = copy.deepcopy(eve)
    eve_after_m1.decrypt(m1)  # Eve follows as far as she can, with her own key
    for attacker in (eve, eve_after_m1):
        for m in after:
            with pytest.raises(DecryptionFailed):
                copy.deepcopy(attacker).decrypt(m)
        # Forgeries Bob must not accept: the next positions of Alice's stolen
        # sending chain, and a new chain under Eve's own ratchet key.
        forger = copy.deepcopy(attacker)
        for _ in range(3):
            refused(bob, forger.encrypt(b"forged"))
    refused(bob, eve_after_m1.encrypt(b"forged on a new chain"), DecryptionFailed)
    # The real conversation is unaffected.
    for i, m in enumerate(after):
        assert alice.decrypt(m) == b"secret after healing %d" % i
    converse(alice, bob)


def test_compromise_before_healing_is_real() -> None:
    # The counterpart, documenting the spec's limit rather than a property we
    # provide: until a ratchet key Alice made after t reaches Bob, Eve can
    # read Bob's next chain and impersonate Alice.
    alice, bob = make_pair(deterministic=False)
    converse(alice, bob)
    assert bob.decrypt(alice.encrypt(b"m0")) == b"m0"
    eve = copy.deepcopy(alice)
    m1 = bob.encrypt(b"m1")
    assert eve.decrypt(m1) == b"m1"  # Eve ratchets with her own fresh key
    assert bob.decrypt(eve.encrypt(b"impersonation")) == b"impersonation"


# -- known answers ------------------------------------------------------------


def test_hkdf_rfc5869_vectors() -> None:
    # RFC 5869 appendix A, test cases 1-3 (SHA-256): checks our HKDF code.
    okm = ratchet.hkdf(
        b"\x0b" * 22,
        salt=bytes(range(13)),
        info=bytes(range(0xF0, 0xFA)),
        length=42,
        hash_name="sha256",
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
    okm = ratchet.hkdf(
        bytes(range(0x50)),
        salt=bytes(range(0x60, 0xB0)),
        info=bytes(range(0xB0, 0x100)),
        length=82,
        hash_name="sha256",
    )
    assert okm.hex() == (
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87"
    )
    okm = ratchet.hkdf(b"\x0b" * 22, salt=b"", info=b"", length=42, hash_name="sha256")
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_kdf_ck_constants() -> None:
    ck = bytes(range(32))
    next_ck, mk = ratchet.kdf_ck(ck)
    assert mk == hmac.digest(ck, b"\x01", "sha512")[:32]
    assert next_ck == hmac.digest(ck, b"\x02", "sha512")[:32]


def test_kdf_rk_is_hkdf_sha512_with_root_key_as_salt() -> None:
    rk, dh_out = b"\x11" * 32, b"\x22" * 32
    prk = hmac.digest(rk, dh_out, "sha512")
    t1 = hmac.digest(prk, b"msgr/v1/ratchet-root\x01", "sha512")
    assert ratchet.kdf_rk(rk, dh_out) == (t1[:32], t1[32:])


KAT_ROOT_KEY = bytes(range(32))
KAT_BOB_PRIV = bytes(range(32, 64))
KAT_FIRST = (
    "0100"  # version 1, sender role initiator
    "1aa92ac391832c31c7cb99d41da09a3755505d11a5e0505e74bd47341b430d71"  # dh_pub
    "00000000"
    "00000000"  # pn, n
    "f148aa56b13a7b78073c8894a7726cb4"  # MAC
    "b90c473a041961525fcd"  # ciphertext of b"hello, bob"
)
KAT_REPLY = (
    "0101"
    "dcdf808530dfeaf5f51861518edb3281c81aa5e2ec7bc611916fa1d12ea79f52"
    "00000000"
    "00000000"
    "d74c449dbdfe6fd7ed2f216698575e3f"
    "42f8bd8ad60d5970"
)


def kat_pair() -> tuple[Ratchet, Ratchet]:
    alice = Ratchet.initiator(
        KAT_ROOT_KEY, crypto_scalarmult_base(KAT_BOB_PRIV), b"kat-ad", rng=det_rng(b"kat-alice")
    )
    bob = Ratchet.responder(KAT_ROOT_KEY, KAT_BOB_PRIV, b"kat-ad", rng=det_rng(b"kat-bob"))
    return alice, bob


def test_known_answer_first_message() -> None:
    alice, bob = kat_pair()
    first = alice.encrypt(b"hello, bob")
    assert first.hex() == KAT_FIRST
    assert fields(first)[2] == crypto_scalarmult_base(det_rng(b"kat-alice")(32))
    assert bob.decrypt(first) == b"hello, bob"
    reply = bob.encrypt(b"hi alice")
    assert reply.hex() == KAT_REPLY
    assert alice.decrypt(reply) == b"hi alice"


def test_first_message_matches_an_independent_derivation() -> None:
    """Rebuild the first message from the documented construction alone."""

    def hmac512(key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.sha512).digest()

    def hkdf512(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
        prk = hmac512(salt, ikm)
        block = out = b""
        for counter in range(1, 3):
            block = hmac512(prk, block + info + bytes([counter]))
            out += block
        return out[:length]

    alice_priv = det_rng(b"kat-alice")(32)
    alice_pub = crypto_scalarmult_base(alice_priv)
    dh_out = crypto_scalarmult(alice_priv, crypto_scalarmult_base(KAT_BOB_PRIV))
    chain_key = hkdf512(dh_out, KAT_ROOT_KEY, b"msgr/v1/ratchet-root", 64)[32:]
    message_key = hmac512(chain_key, b"\x01")[:32]
    header = b"\x01\x00" + alice_pub + bytes(8)
    ad = b"kat-ad"
    info = b"msgr/v1/ratchet-msg" + len(ad).to_bytes(4, "big") + ad + header
    key_nonce = hkdf512(message_key, b"", info, 56)
    box = crypto_secretbox(b"hello, bob", key_nonce[32:], key_nonce[:32])
    assert (header + box).hex() == KAT_FIRST


def test_repr_shows_no_keys() -> None:
    alice, bob = make_pair()
    converse(alice, bob)
    secrets = [v for v in vars(alice).values() if isinstance(v, bytes)]
    secrets += [v for v in vars(bob).values() if isinstance(v, bytes)]
    for r in (alice, bob):
        text = repr(r) + str(r)
        assert "initiator" in text or "responder" in text
        for secret in secrets:
            assert secret.hex() not in text and repr(secret) not in text


# -- cost -----------------------------------------------------------------------


def measure(number: int = 2000) -> dict[str, float]:
    """Microseconds per message for encrypt + decrypt of a 100-byte message."""
    payload = b"x" * 100
    alice, bob = make_pair(deterministic=False)
    converse(alice, bob)

    def same_chain() -> None:
        bob.decrypt(alice.encrypt(payload))

    def dh_step_every_message() -> None:
        bob.decrypt(alice.encrypt(payload))
        alice.decrypt(bob.encrypt(payload))

    results = {}
    results["same chain"] = min(timeit.repeat(same_chain, number=number, repeat=3)) / number
    results["DH step every message"] = (
        min(timeit.repeat(dh_step_every_message, number=number // 2, repeat=3))
        / number  # two messages per call
    )
    return {k: v * 1e6 for k, v in results.items()}


if __name__ == "__main__":
    for name, micros in measure().items():
        print(f"{name:>24}: {micros:7.1f} µs per message (encrypt + decrypt)")
