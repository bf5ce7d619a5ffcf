"""Tests for kdf.py: the RFC 9106 vector, salts, passcode keys, subkeys.

The pinned hex values below are the wire: if one changes, peers running the
old and the new code can no longer talk. Change them only with a protocol
version bump.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata

import pytest
from argon2.low_level import Type, hash_secret_raw
from helpers import VECTORS as VECTOR_DIR
from hypothesis import given, settings
from hypothesis import strategies as st

from kdf import (
    DEFAULT_PARAMS,
    KdfError,
    KdfParams,
    argon2id,
    derive_passcode_key,
    direction_keys,
    pair_salt,
    subkey,
)
from msgrlib.errors import MsgrError

VECTORS = VECTOR_DIR

# Fast parameters for tests; only test_default_params_* pays for the real ones.
TINY = KdfParams(time_cost=1, memory_kib=8, parallelism=1)
MASTER = bytes(range(32))
PASSCODE = "correct horse battery staple"


def load_vector(name: str) -> dict[str, object]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


# -- Argon2id -----------------------------------------------------------------


def test_rfc9106_argon2id_vector() -> None:
    v = load_vector("argon2id-rfc9106.json")
    assert v["type"] == "argon2id" and v["version"] == 19
    params = KdfParams(
        time_cost=int(v["t"]),  # type: ignore[call-overload]
        memory_kib=int(v["m_kib"]),  # type: ignore[call-overload]
        parallelism=int(v["p"]),  # type: ignore[call-overload]
        hash_len=int(v["tag_len"]),  # type: ignore[call-overload]
    )
    tag = argon2id(
        bytes.fromhex(str(v["password_hex"])),
        bytes.fromhex(str(v["salt_hex"])),
        params=params,
        secret=bytes.fromhex(str(v["secret_hex"])),
        ad=bytes.fromhex(str(v["ad_hex"])),
    )
    assert tag.hex() == v["tag_hex"]


def test_secret_and_ad_change_the_output() -> None:
    base = argon2id(b"pw", b"saltsalt", params=TINY)
    assert argon2id(b"pw", b"saltsalt", params=TINY, secret=b"k") != base
    assert argon2id(b"pw", b"saltsalt", params=TINY, ad=b"x") != base


@pytest.mark.parametrize("password", [b"", b"pw", b"\x00" * 100])
def test_argon2id_without_secret_matches_argon2_cffi_high_level(password: bytes) -> None:
    # An independent path through the library checks our context setup.
    params = KdfParams(time_cost=2, memory_kib=16, parallelism=2, hash_len=24)
    expected = hash_secret_raw(password, b"somesalt", 2, 16, 2, 24, Type.ID)
    assert argon2id(password, b"somesalt", params=params) == expected


def test_argon2id_failures_are_kdf_errors() -> None:
    with pytest.raises(KdfError, match="(?i)salt"):
        argon2id(b"pw", b"short", params=TINY)  # Argon2 wants >= 8 bytes
    with pytest.raises(TypeError):
        argon2id("pw", b"saltsalt", params=TINY)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"time_cost": 0, "memory_kib": 8, "parallelism": 1},
        {"time_cost": 1, "memory_kib": 7, "parallelism": 1},
        {"time_cost": 1, "memory_kib": 8, "parallelism": 2},  # needs 8 KiB per lane
        {"time_cost": 1, "memory_kib": 8, "parallelism": 0},
        {"time_cost": 1, "memory_kib": 8, "parallelism": 1, "hash_len": 3},
        {"time_cost": 1, "memory_kib": 2**32, "parallelism": 1},
        {"time_cost": 1.5, "memory_kib": 8, "parallelism": 1},
        {"time_cost": True, "memory_kib": 8, "parallelism": 1},
    ],
)
def test_bad_params_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(KdfError):
        KdfParams(**kwargs)  # type: ignore[arg-type]


def test_default_params_are_rfc9106_second_option() -> None:
    assert DEFAULT_PARAMS == KdfParams(3, 64 * 1024, 4, 32)


def test_default_params_known_answer() -> None:
    # The one test paying for 64 MiB x 3 passes; pins the production setting.
    key = derive_passcode_key(PASSCODE, "alice", "bob")
    assert len(key) == 32
    assert key.hex() == "4d00bbd47529f98ea32abd99f95e61e72548f56d95337b9e439bf75131c3a601"


# -- pair_salt ------------------------------------------------------------------


def test_pair_salt_known_answer() -> None:
    assert pair_salt("alice", "bob").hex() == "9bec6ebd5778020985427e71551a85c1"


def test_pair_salt_matches_documented_formula() -> None:
    def lp(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    h = hashlib.blake2b(digest_size=16, person=b"msgr-salt-v1".ljust(16, b"\x00"))
    h.update(lp(b"alice") + lp(b"bob"))
    assert pair_salt("bob", "alice") == h.digest()


def test_pair_salt_is_symmetric_and_length_prefixed() -> None:
    assert pair_salt("alice", "bob") == pair_salt("bob", "alice")
    assert len(pair_salt("alice", "bob")) == 16
    assert pair_salt("ab", "c") != pair_salt("a", "bc")
    assert pair_salt("alice", "bob") != pair_salt("alice", "carol")


names = st.text(min_size=1, max_size=12)


@settings(max_examples=100, deadline=None)
@given(a=names, b=names, c=names, d=names)
def test_pair_salt_distinguishes_unordered_pairs(a: str, b: str, c: str, d: str) -> None:
    assert pair_salt(a, b) == pair_salt(b, a)
    if sorted([a, b]) != sorted([c, d]):
        assert pair_salt(a, b) != pair_salt(c, d)


# -- derive_passcode_key --------------------------------------------------------


def test_passcode_key_known_answer_with_tiny_params() -> None:
    key = derive_passcode_key(PASSCODE, "alice", "bob", params=TINY)
    assert key.hex() == "3539ebefb1bd06a495e0ecf589508bacfc2619f69c38fdda435a20dd0e20d695"


def test_passcode_key_matches_documented_formula() -> None:
    expected = hash_secret_raw(
        PASSCODE.encode(), pair_salt("alice", "bob"), 1, 8, 1, 32, Type.ID
    )
    assert derive_passcode_key(PASSCODE, "bob", "alice", params=TINY) == expected


def test_passcode_key_is_the_same_on_both_sides() -> None:
    alice_side = derive_passcode_key(PASSCODE, "alice", "bob", params=TINY)
    bob_side = derive_passcode_key(PASSCODE, "bob", "alice", params=TINY)
    assert alice_side == bob_side
    assert len(alice_side) == 32


def test_passcode_key_depends_on_passcode_and_pair() -> None:
    keys = {
        derive_passcode_key(PASSCODE, "alice", "bob", params=TINY),
        derive_passcode_key(PASSCODE + "!", "alice", "bob", params=TINY),
        derive_passcode_key(PASSCODE, "alice", "carol", params=TINY),
        derive_passcode_key(PASSCODE, "ab", "c", params=TINY),
        derive_passcode_key(PASSCODE, "a", "bc", params=TINY),
    }
    assert len(keys) == 5


def test_passcode_is_nfc_normalized() -> None:
    composed = "caf\u00e9 au lait"
    decomposed = "cafe\u0301 au lait"
    assert composed != decomposed
    assert unicodedata.normalize("NFC", decomposed) == composed
    assert derive_passcode_key(composed, "alice", "bob", params=TINY) == derive_passcode_key(
        decomposed, "alice", "bob", params=TINY
    )


def test_empty_passcode_is_rejected() -> None:
    with pytest.raises(KdfError, match="the passcode is empty"):
        derive_passcode_key("", "alice", "bob", params=TINY)


def test_unencodable_passcode_is_a_kdf_error() -> None:
    # e.g. an environment variable holding undecodable bytes (surrogateescape)
    with pytest.raises(KdfError) as info:
        derive_passcode_key("pass\udcffword", "alice", "bob", params=TINY)
    assert "\udcff" not in str(info.value)


def test_kdf_error_in_tree() -> None:
    assert issubclass(KdfError, MsgrError)
    assert KdfError.code == "kdf"
    assert KdfError.remote is False


# -- subkey -----------------------------------------------------------------------


def test_subkey_known_answers() -> None:
    assert subkey(MASTER, "static-direction", "alice", "bob").hex() == (
        "6977e6a6fb103a403ddde8b54074e6e0bebb3c19ce5b08b88de5008b04a68ef0"
    )
    assert subkey(MASTER, "test", b"\x00\x01", "é", size=16).hex() == (
        "d25ec9dd5854e6e1c880d047b68936da"
    )


def test_subkey_matches_documented_formula() -> None:
    def lp(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    h = hashlib.blake2b(key=MASTER, digest_size=32)
    h.update(lp(b"msgr/v1/purpose") + lp(b"one") + lp(b"\xc3\xa9"))
    assert subkey(MASTER, "purpose", "one", "é") == h.digest()
    assert subkey(MASTER, "purpose", b"one", "é".encode()) == h.digest()


def test_subkey_domain_separation() -> None:
    outputs = [
        subkey(MASTER, "a"),
        subkey(MASTER, "b"),
        subkey(MASTER, "a", ""),
        subkey(MASTER, "a", "", ""),
        subkey(MASTER, "a", "x"),
        subkey(MASTER, "a", "y"),
        subkey(MASTER, "a", "ab", "c"),
        subkey(MASTER, "a", "a", "bc"),
        subkey(MASTER, "a", "abc"),
        subkey(MASTER, "ab"),
        subkey(MASTER, "a", "b"),
        subkey(MASTER, "a\x00\x00\x00\x01b"),  # would equal ("a", "b") without a prefixed label
        subkey(MASTER, "a", size=64)[:32],
        subkey(bytes(32), "a"),
    ]
    assert len(set(outputs)) == len(outputs)
    assert subkey(MASTER, "a", size=16) != subkey(MASTER, "a", size=32)[:16]


@pytest.mark.parametrize("size", [16, 24, 32, 64])
def test_subkey_size(size: int) -> None:
    assert len(subkey(MASTER, "p", size=size)) == size


def test_subkey_rejects_bad_input() -> None:
    for bad_key in (b"", bytes(15), bytes(65)):
        with pytest.raises(KdfError):
            subkey(bad_key, "p")
    for bad_size in (0, 15, 65):
        with pytest.raises(KdfError):
            subkey(MASTER, "p", size=bad_size)
    with pytest.raises(TypeError):
        subkey(MASTER, "p", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        subkey("key" * 11, "p")  # type: ignore[arg-type]


# -- direction_keys ----------------------------------------------------------------


def test_direction_keys_mirror_each_other() -> None:
    alice_send, alice_receive = direction_keys(MASTER, "alice", "bob")
    bob_send, bob_receive = direction_keys(MASTER, "bob", "alice")
    assert (alice_send, alice_receive) == (bob_receive, bob_send)
    assert alice_send != alice_receive  # no reflection
    assert alice_send == subkey(MASTER, "static-direction", "alice", "bob")


def test_direction_keys_known_answer() -> None:
    send, receive = direction_keys(MASTER, "alice", "bob")
    assert send.hex() == "6977e6a6fb103a403ddde8b54074e6e0bebb3c19ce5b08b88de5008b04a68ef0"
    assert receive.hex() == "ae86a28698e7ae5a7d6cdf8792faad8f8d73571be2365da6645345ed60106956"


def test_direction_keys_with_oneself_are_refused() -> None:
    with pytest.raises(KdfError):
        direction_keys(MASTER, "alice", "alice")
