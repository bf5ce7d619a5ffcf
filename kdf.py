"""Key derivation: a shared passcode to a key, and keys to purpose subkeys.

Derivation (all lengths in bytes; ``lp(x)`` is ``len(x)`` as a 4-byte
big-endian unsigned integer followed by ``x``; names are UTF-8)::

    pair_salt(a, b)   = BLAKE2b(digest_size=16, person="msgr-salt-v1"
                                (zero-padded to 16 bytes), no key,
                                data = lp(lo) || lp(hi))
                        where (lo, hi) = the two usernames sorted by code
                        point (the same order as their UTF-8 bytes), so both
                        sides compute the same salt

    passcode_key      = Argon2id(password = UTF-8(NFC(passcode)),
                                 salt     = pair_salt(me, peer),
                                 t = 3, m = 65536 KiB (64 MiB), p = 4,
                                 tag length 32, version 0x13,
                                 no secret, no associated data)

    subkey(K, purpose, c1, ..., cn; size)
                      = BLAKE2b(key = K, digest_size = size,
                                data = lp("msgr/v1/" || purpose)
                                       || lp(c1) || ... || lp(cn))
                        (a str ci counts as its UTF-8 bytes; 16 <= size,
                        len(K) <= 64)

    direction_keys(K, me, peer)
                      = (subkey(K, "static-direction", me, peer),   # send
                         subkey(K, "static-direction", peer, me))   # receive
                        refused when me == peer (both keys would be equal)

Every field is length-prefixed, the label included, so two different
(purpose, context...) lists can never produce the same BLAKE2b input; the
digest size is part of BLAKE2b's parameter block, so different sizes give
unrelated outputs.

``passcode_key`` is never used directly to encrypt. It is (1) the CPace
password-related string and (2) the master key of the static mode, from
which :func:`direction_keys` derives one key per direction, so a message
from me to peer cannot be reflected back to me as if peer had sent it.

Argon2id parameters: RFC 9106 section 4 recommends t=1, 2 GiB, p=4 first,
and, where that much memory is not available, t=3, 64 MiB, p=4 (the SECOND
recommended option). msgr runs on laptops and small servers next to other
programs, and both peers must derive the same key with the same parameters,
so we use the second option. Measured on the development machine (2 shared
cores, argon2-cffi 25.1 / bindings 26.2, Python 3.11): median of 5
derivations with DEFAULT_PARAMS = 0.20 s (single runs 0.16-0.37 s). Someone
holding a captured static-mode message pays that, and 64 MiB, per passcode
guess; CPace only ever gives an active attacker one online guess per run.

Exceptions::

    msgrlib.errors.MsgrError (or Exception, when this file is copied alone)
    └── KdfError    code "kdf": bad parameters, an empty or unencodable
                    passcode, an Argon2 failure (e.g. out of memory)

Passing arguments of the wrong type raises ``TypeError`` (a caller bug).
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass

from argon2.low_level import Type, error_to_str, ffi, lib

try:  # inside msgr, join its error tree; copied alone, stand on Exception
    from msgrlib.errors import LocalError as MsgrError
except ImportError:  # pragma: no cover - exercised by tests/test_selfcontained
    class MsgrError(Exception):  # type: ignore[no-redef]
        """Stand-in root when this file is used without the msgrlib package."""

        remote: bool = False
        code: str = "error"

__all__ = [
    "DEFAULT_PARAMS",
    "KdfError",
    "KdfParams",
    "argon2id",
    "derive_passcode_key",
    "direction_keys",
    "pair_salt",
    "subkey",
]

_SALT_PERSON = b"msgr-salt-v1"
_SALT_SIZE = 16
_LABEL_PREFIX = b"msgr/v1/"
_ARGON2_VERSION = 0x13  # the RFC 9106 version; 0x10 is the obsolete one
_U32_MAX = 0xFFFF_FFFF
# BLAKE2b accepts keys and digests of 1..64 bytes; below 16 it is not a key.
_MIN_KEY = 16
_MAX_KEY = 64


class KdfError(MsgrError):
    """Key derivation could not run (bad input or parameters, Argon2 failure)."""

    code = "kdf"


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost parameters; both peers must use the same ones.

    Raises :class:`KdfError` if a value is outside what Argon2 accepts.
    """

    time_cost: int
    memory_kib: int
    parallelism: int
    hash_len: int = 32

    def __post_init__(self) -> None:
        for name in ("time_cost", "memory_kib", "parallelism", "hash_len"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= _U32_MAX:
                raise KdfError(f"Argon2 {name} must be an integer in 1..{_U32_MAX}")
        if self.parallelism > 0xFF_FFFF:
            raise KdfError("Argon2 parallelism must be at most 16777215")
        if self.memory_kib < 8 * self.parallelism:
            raise KdfError("Argon2 memory_kib must be at least 8 x parallelism")
        if self.hash_len < 4:
            raise KdfError("Argon2 hash_len must be at least 4 bytes")


#: RFC 9106 section 4, second recommended option (see module docstring).
DEFAULT_PARAMS = KdfParams(time_cost=3, memory_kib=64 * 1024, parallelism=4)


def _lp(item: bytes) -> bytes:
    return len(item).to_bytes(4, "big") + item


def _as_bytes(item: str | bytes, what: str) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        try:
            return item.encode("utf-8")
        except UnicodeEncodeError:
            raise KdfError(
                f"the {what} contains characters that are not valid text"
            ) from None
    raise TypeError(f"{what} must be str or bytes, not {type(item).__name__}")


def _buffer(data: bytes) -> object:
    # argon2 wants NULL (not a zero-length array) for an absent field.
    return ffi.new("uint8_t[]", data) if data else ffi.NULL


def argon2id(
    password: bytes,
    salt: bytes,
    *,
    params: KdfParams,
    secret: bytes = b"",
    ad: bytes = b"",
) -> bytes:
    """Argon2id (RFC 9106, version 0x13) with optional secret and associated data.

    Uses argon2-cffi's low-level ``argon2_ctx`` binding, the only one that
    accepts ``secret`` and ``ad``. Returns ``params.hash_len`` bytes.

    Raises :class:`KdfError` if Argon2 rejects an input (salt shorter than
    8 bytes, a field longer than 2**32 - 1...) or fails (out of memory);
    ``TypeError`` if a byte argument is not ``bytes``.
    """
    for name, value in (("password", password), ("salt", salt),
                        ("secret", secret), ("ad", ad)):
        if not isinstance(value, bytes):
            raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
        if len(value) > _U32_MAX:
            raise KdfError(f"the Argon2 {name} is too long")
    out = ffi.new("uint8_t[]", params.hash_len)
    # Keep the cffi buffers referenced until argon2_ctx has returned.
    pwd_buf = _buffer(password)
    salt_buf = _buffer(salt)
    secret_buf = _buffer(secret)
    ad_buf = _buffer(ad)
    ctx = ffi.new(
        "argon2_context *",
        {
            "out": out,
            "outlen": params.hash_len,
            "pwd": pwd_buf,
            "pwdlen": len(password),
            "salt": salt_buf,
            "saltlen": len(salt),
            "secret": secret_buf,
            "secretlen": len(secret),
            "ad": ad_buf,
            "adlen": len(ad),
            "t_cost": params.time_cost,
            "m_cost": params.memory_kib,
            "lanes": params.parallelism,
            "threads": params.parallelism,
            "version": _ARGON2_VERSION,
            "allocate_cbk": ffi.NULL,
            "free_cbk": ffi.NULL,
            "flags": lib.ARGON2_DEFAULT_FLAGS,
        },
    )
    rc = lib.argon2_ctx(ctx, Type.ID.value)
    if rc != lib.ARGON2_OK:
        reason = error_to_str(rc)
        raise KdfError(f"Argon2id failed: {reason}")
    return bytes(ffi.buffer(out, params.hash_len))


def pair_salt(user_a: str, user_b: str) -> bytes:
    """The 16-byte Argon2 salt for a conversation between two users.

    Symmetric: ``pair_salt(a, b) == pair_salt(b, a)``. Each name is
    length-prefixed, so ``("ab", "c")`` and ``("a", "bc")`` differ.

    Raises ``TypeError`` if a name is not a str, :class:`KdfError` if it
    cannot be encoded as UTF-8.
    """
    encoded: list[bytes] = []
    for name in (user_a, user_b):
        if not isinstance(name, str):
            raise TypeError(f"a username must be str, not {type(name).__name__}")
        encoded.append(_as_bytes(name, "username"))
    encoded.sort()  # bytewise UTF-8 order == code point order
    h = hashlib.blake2b(digest_size=_SALT_SIZE, person=_SALT_PERSON)
    for part in encoded:
        h.update(_lp(part))
    return h.digest()


def derive_passcode_key(
    passcode: str,
    user_a: str,
    user_b: str,
    *,
    params: KdfParams = DEFAULT_PARAMS,
) -> bytes:
    """The 32-byte key two users derive from the passcode they share.

    The passcode is NFC-normalised (so an "é" typed as one code point or as
    "e" + combining accent gives the same key) and UTF-8 encoded; the salt is
    :func:`pair_salt`, so either side may pass the names in either order.
    Slow on purpose (see module docstring); run it off the event loop.

    Raises :class:`KdfError` if the passcode is empty or not encodable, or
    if Argon2 fails; ``TypeError`` if an argument is not a str.
    """
    if not isinstance(passcode, str):
        raise TypeError(f"the passcode must be str, not {type(passcode).__name__}")
    if not passcode:
        raise KdfError("the passcode is empty")
    password = _as_bytes(unicodedata.normalize("NFC", passcode), "passcode")
    return argon2id(password, pair_salt(user_a, user_b), params=params)


def subkey(key: bytes, purpose: str, *context: str | bytes, size: int = 32) -> bytes:
    """A ``size``-byte key for one purpose, bound to ``context``.

    ``BLAKE2b(key=key, digest_size=size)`` over ``lp(b"msgr/v1/" + purpose)``
    then ``lp(item)`` for each context item (str items as UTF-8). Different
    purposes, contexts (including their split into items) or sizes give
    independent keys.

    Raises :class:`KdfError` if ``key`` or ``size`` is not 16..64 bytes or an
    item cannot be encoded; ``TypeError`` for an argument of the wrong type.
    """
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"key must be bytes, not {type(key).__name__}")
    if not _MIN_KEY <= len(key) <= _MAX_KEY:
        raise KdfError(f"a subkey master key must be {_MIN_KEY}..{_MAX_KEY} bytes")
    if type(size) is not int or not _MIN_KEY <= size <= _MAX_KEY:
        raise KdfError(f"a subkey size must be {_MIN_KEY}..{_MAX_KEY} bytes")
    if not isinstance(purpose, str):
        raise TypeError(f"purpose must be str, not {type(purpose).__name__}")
    h = hashlib.blake2b(key=bytes(key), digest_size=size)
    h.update(_lp(_LABEL_PREFIX + _as_bytes(purpose, "purpose")))
    for item in context:
        h.update(_lp(_as_bytes(item, "context")))
    return h.digest()


def direction_keys(master: bytes, me: str, peer: str) -> tuple[bytes, bytes]:
    """Static mode: ``(send_key, receive_key)`` for ``me`` talking to ``peer``.

    ``direction_keys(k, a, b) == direction_keys(k, b, a)[::-1]``: what a
    sends, b receives, and a message a sent can never be decrypted by a as
    one from b (reflection). ``me`` and ``peer`` must differ.

    Raises :class:`KdfError` if ``me == peer`` or as :func:`subkey` does.
    """
    if me == peer:
        # Both directions would share one key, which is exactly reflection.
        raise KdfError("cannot derive direction keys for a conversation with oneself")
    return (
        subkey(master, "static-direction", me, peer),
        subkey(master, "static-direction", peer, me),
    )
