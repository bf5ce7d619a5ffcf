"""Length-prefixed JSON frames: the only wire format msgr has.

A frame is a 4-byte big-endian unsigned length ``N`` followed by exactly ``N``
bytes holding one UTF-8 encoded JSON object (RFC 8259)::

    +----------------+------------------------------+
    | N (uint32, BE) | N bytes: {"type": ..., ...}  |
    +----------------+------------------------------+

A body is accepted only if it is valid UTF-8, parses as exactly one JSON
value, that value is an object, it contains no ``NaN``/``Infinity``/
``-Infinity`` (nor a number too large for a double, which Python would read as
infinity), no object repeats a key, no string holds an unpaired UTF-16
surrogate (``"\\ud800"``), and objects/arrays nest at most ``max_depth`` deep
(the top-level object is depth 1). Whatever :func:`decode_body` returns can
therefore be passed back to :func:`encode_frame` without error.

This module is sans-I/O: :func:`encode_frame` and :class:`FrameDecoder` turn
messages into bytes and bytes into messages. :func:`read_frame` and
:func:`write_frame` are thin helpers over any object shaped like an
``asyncio.StreamReader`` / ``StreamWriter``; this module never imports
``asyncio``.

Exceptions (all remote, i.e. caused by the bytes received)::

    msgrlib.errors.MsgrError (or Exception, when this file is copied alone)
    └── FramingError            code "bad_frame"
        ├── FrameTooLarge       code "frame_too_large"   .size, .limit
        ├── MalformedFrame      code "bad_frame"
        └── TruncatedFrame      code "truncated_frame"   .buffered

:class:`FrameTooLarge` raised by :func:`encode_frame` is the one local case
(our own message is too big); that instance has ``remote = False``.
Passing something that is not JSON-serialisable to :func:`encode_frame` is a
programming mistake and raises a plain ``TypeError``/``ValueError``.
"""

from __future__ import annotations

import copy
import json
import re
import struct
from collections.abc import Callable
from math import isinf
from typing import Any, Protocol

try:  # inside msgr, join its error tree; copied alone, stand on Exception
    from msgrlib.errors import RemoteError as MsgrError
except ImportError:  # pragma: no cover - exercised by tests/test_selfcontained
    class MsgrError(Exception):  # type: ignore[no-redef]
        """Stand-in root when this file is used without the msgrlib package."""

        remote: bool = False
        code: str = "error"

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_FRAME",
    "FrameDecoder",
    "FrameTooLarge",
    "FramingError",
    "MalformedFrame",
    "TruncatedFrame",
    "decode_body",
    "encode_frame",
    "frame_body",
    "read_frame",
    "write_frame",
]

#: Largest body accepted or sent, in bytes. A chat message is a few KiB of
#: base64 ciphertext at most; 64 KiB leaves ample room while bounding what one
#: peer can make the relay buffer per connection (at most this plus 3 bytes,
#: plus the chunk being fed).
DEFAULT_MAX_FRAME = 64 * 1024

#: Deepest nesting of objects/arrays accepted (the top-level object is 1).
#: Our frames are flat objects of scalars (depth 1); 16 leaves room for
#: protocol growth while rejecting the deeply nested input that makes
#: recursive consumers slow or overflow the stack.
DEFAULT_MAX_DEPTH = 16

#: The length prefix is a uint32, so no limit can exceed this.
_MAX_LENGTH_FIELD = 0xFFFF_FFFF

_PREFIX = struct.Struct(">I")
_unpack_prefix = _PREFIX.unpack_from
_pack_prefix = _PREFIX.pack

# After the JSON parser has combined valid \\uXXXX surrogate pairs, any
# surrogate left in a string is unpaired and cannot be encoded back to UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


class FramingError(MsgrError):
    """Bytes received are not a valid frame; the connection cannot continue."""

    remote = True
    code = "bad_frame"


class FrameTooLarge(FramingError):
    """A frame declares (or would need) more bytes than the limit allows."""

    code = "frame_too_large"

    def __init__(self, size: int, limit: int, *, remote: bool = True) -> None:
        self.size = size
        self.limit = limit
        self.remote = remote
        super().__init__(
            f"frame of {size} bytes is larger than the limit of {limit} bytes"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_too_large, (self.size, self.limit, self.remote))


def _rebuild_too_large(size: int, limit: int, remote: bool) -> FrameTooLarge:
    return FrameTooLarge(size, limit, remote=remote)


class MalformedFrame(FramingError):
    """A frame body that is not one strict JSON object (see module docstring)."""

    code = "bad_frame"


class TruncatedFrame(FramingError):
    """The stream ended in the middle of a frame (or of its length prefix)."""

    code = "truncated_frame"

    def __init__(self, buffered: int) -> None:
        self.buffered = buffered
        super().__init__(
            f"the connection closed in the middle of a frame "
            f"({buffered} bytes of it were received)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (TruncatedFrame, (self.buffered,))


def _reject_constant(name: str) -> Any:
    raise MalformedFrame(f"frame contains {name}, which JSON does not allow")


def _parse_float(text: str) -> float:
    # Python reads 1e999 as inf, which could then never be encoded again.
    value = float(text)
    if isinf(value):
        raise MalformedFrame("frame contains a number too large for a double")
    return value


def _pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # The key itself is peer text: keep it out of the message.
        raise MalformedFrame("frame contains an object with a duplicate key")
    return obj


# One decoder for every frame: the C scanner is built once, the hooks reject
# what RFC 8259 allows but we do not (duplicates, non-finite numbers).
_decoder = json.JSONDecoder(
    object_pairs_hook=_pairs_to_dict,
    parse_constant=_reject_constant,
    parse_float=_parse_float,
)
_json_decode_full = _decoder.decode
_json_encode_full = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":")
).encode

# The same two calls, faster on CPython (msgrlib/speedups.py says how, and
# tests/test_speedups.py checks they agree). Copied alone, this file uses the
# plain ones.
try:
    from msgrlib.speedups import fast_json_decoder, fast_json_encoder
except ImportError:  # pragma: no cover - framing.py on its own
    _json_decode: Callable[[str], Any] = _json_decode_full
    _json_encode: Callable[[Any], str] = _json_encode_full
else:
    _json_decode = fast_json_decoder(_decoder, (FramingError,))
    _json_encode = fast_json_encoder(_json_encode_full)


def _check_nested(obj: dict[str, Any], max_depth: int, strings: bool) -> None:
    """Walk ``obj`` iteratively: depth limit, and unpaired surrogates if asked.

    Iterative so that a value nested as deep as the recursion limit allows
    cannot make this check itself overflow.
    """
    stack: list[tuple[Any, int]] = [(obj, 1)]
    pop = stack.pop
    push = stack.append
    while stack:
        node, depth = pop()
        if type(node) is dict:
            values = node.values()
            if strings:
                for key in node:
                    if _SURROGATE.search(key):
                        raise MalformedFrame(
                            "frame contains an unpaired UTF-16 surrogate escape"
                        )
        else:
            values = node
        for value in values:
            kind = type(value)
            if kind is dict or kind is list:
                if depth >= max_depth:
                    raise MalformedFrame(
                        f"frame nests objects/arrays deeper than {max_depth} levels"
                    )
                push((value, depth + 1))
            elif strings and kind is str and _SURROGATE.search(value):
                raise MalformedFrame(
                    "frame contains an unpaired UTF-16 surrogate escape"
                )


def decode_body(
    body: bytes | bytearray, *, max_depth: int = DEFAULT_MAX_DEPTH
) -> dict[str, Any]:
    """Parse one frame body strictly and return the object.

    Raises :class:`MalformedFrame` (and nothing else) if the body is empty,
    not UTF-8, not exactly one JSON object, or breaks a rule listed in the
    module docstring.
    """
    return _decode_body(body, max_depth)


def _decode_body(body: bytes | bytearray, max_depth: int) -> dict[str, Any]:
    # Positional twin of decode_body() for the per-frame loop.
    if not body:
        raise MalformedFrame("frame is empty (length 0)")
    try:
        text = str(body, "utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedFrame(
            f"frame is not valid UTF-8 (bad byte at offset {exc.start})"
        ) from None
    try:
        obj = _json_decode(text)
    except json.JSONDecodeError as exc:
        offset = len(text[: exc.pos].encode("utf-8"))
        raise MalformedFrame(
            f"frame is not valid JSON: {exc.msg} (at byte {offset} of the body)"
        ) from None
    except ValueError:
        # e.g. an integer longer than sys.get_int_max_str_digits()
        raise MalformedFrame("frame contains a number that is too long") from None
    except RecursionError:
        raise MalformedFrame(
            f"frame nests objects/arrays deeper than {max_depth} levels"
        ) from None
    if type(obj) is not dict:
        raise MalformedFrame(
            f"frame must be a JSON object, not {_json_kind(obj)}"
        )
    # A \u escape is the only way to smuggle in a surrogate (strict UTF-8
    # decoding rejects encoded ones). We send raw UTF-8, so a backslash is
    # rare, and looking for one byte is much cheaper than for two.
    strings = b"\\" in body
    if not strings:
        # Fast path: our frames are flat objects of scalars (depth 1).
        for value in obj.values():
            kind = type(value)
            if kind is dict or kind is list:
                break
        else:
            return obj
    _check_nested(obj, max_depth, strings)
    return obj


def _json_kind(obj: object) -> str:
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    return "a number"


def encode_frame(obj: dict[str, Any], *, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """Return the bytes of one frame carrying ``obj``.

    ``obj`` must be a dict with str keys whose values are JSON types
    (str, int, finite float, bool, None, list, dict). The body is compact,
    UTF-8 (``ensure_ascii=False``).

    Raises :class:`FrameTooLarge` (with ``remote = False``) if the body is
    larger than ``max_size`` bytes; ``TypeError``/``ValueError`` if ``obj``
    is not a dict or cannot be serialised (a bug in the caller, not peer data).
    """
    if type(obj) is not dict:
        raise TypeError(f"a frame must be a dict, not {type(obj).__name__}")
    return frame_body(_json_encode(obj).encode("utf-8"), max_size=max_size)


def frame_body(body: bytes, *, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    """Return the frame for ``body``, one JSON object already encoded (UTF-8).

    For callers that format a hot frame themselves (``relay.deliver_frame``);
    the body is not checked, only its size: :class:`FrameTooLarge` (with
    ``remote = False``) if it is larger than ``max_size`` bytes.
    """
    size = len(body)
    if size > max_size or size > _MAX_LENGTH_FIELD:
        raise FrameTooLarge(size, min(max_size, _MAX_LENGTH_FIELD), remote=False)
    return _pack_prefix(size) + body


def _check_limits(max_size: int, max_depth: int) -> None:
    if not 1 <= max_size <= _MAX_LENGTH_FIELD:
        raise ValueError(f"max_size must be in 1..{_MAX_LENGTH_FIELD}, got {max_size}")
    if max_depth < 1:
        raise ValueError(f"max_depth must be at least 1, got {max_depth}")


class FrameDecoder:
    """Incremental decoder: bytes in any chunking, complete messages out.

    Errors are terminal: after one, the decoder is dead, its buffer is
    released, and every later :meth:`feed` / :meth:`feed_eof` raises an
    error of the same class again. Messages completed earlier in the same
    ``feed()`` call as an error are discarded with it: the stream cannot be
    trusted past that point and the connection has to be closed anyway.
    """

    __slots__ = ("_buf", "_error", "_max_depth", "_max_size")

    def __init__(
        self, *, max_size: int = DEFAULT_MAX_FRAME, max_depth: int = DEFAULT_MAX_DEPTH
    ) -> None:
        """Raises ``ValueError`` for a limit outside its range (caller error)."""
        _check_limits(max_size, max_depth)
        self._max_size = max_size
        self._max_depth = max_depth
        self._buf = bytearray()  # only ever holds the start of one frame between calls
        self._error: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a message."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[dict[str, Any]]:
        """Add received bytes; return the messages they complete, in order.

        The declared length is checked as soon as the 4 prefix bytes are in,
        before any of the body is waited for.

        Raises :class:`FrameTooLarge` or :class:`MalformedFrame` (and only
        :class:`FramingError` subclasses).
        """
        if self._error is not None:
            self._raise_again()
        buf = self._buf
        buf += data
        pos = 0  # offset of the next frame; consumed bytes are dropped below
        end = len(buf)
        max_size = self._max_size
        max_depth = self._max_depth
        out: list[dict[str, Any]] = []
        try:
            while end - pos >= 4:
                (size,) = _unpack_prefix(buf, pos)
                if size > max_size:
                    raise FrameTooLarge(size, max_size)
                start = pos + 4
                stop = start + size
                if stop > end:
                    break
                out.append(_decode_body(buf[start:stop], max_depth))
                pos = stop
        except FramingError as exc:
            self._fail(exc)
            raise
        # Consumed bytes are dropped once per call rather than per frame, so
        # a chunk of many small frames costs O(n), not O(n**2). Deleting from
        # the front of a bytearray is cheap in CPython.
        if pos == end:
            buf.clear()
        elif pos:
            del buf[:pos]
        return out

    def feed_eof(self) -> None:
        """Signal the end of the stream.

        Raises :class:`TruncatedFrame` if any part of a frame, even part of
        its length prefix, is still buffered; re-raises the earlier error if
        the decoder is dead.
        """
        if self._error is not None:
            self._raise_again()
        remaining = self.buffered
        if remaining:
            exc = TruncatedFrame(remaining)
            self._fail(exc)
            raise exc

    def _fail(self, exc: FramingError) -> None:
        self._error = exc
        self._buf = bytearray()

    def _raise_again(self) -> None:
        if self._error is not None:
            # A fresh copy: re-raising the same object would keep growing its
            # traceback and could rewrite its __context__.
            raise copy.copy(self._error)


class _Reader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


class _Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


async def read_frame(
    reader: _Reader,
    *,
    max_size: int = DEFAULT_MAX_FRAME,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> dict[str, Any] | None:
    """Read one frame from an ``asyncio.StreamReader``-like object.

    Returns ``None`` on a clean end of stream (before any byte of a frame).
    The declared length is checked before the body is read, so an oversize
    frame costs 4 bytes of reading, not ``size``.

    Raises :class:`FrameTooLarge`, :class:`MalformedFrame`,
    :class:`TruncatedFrame` (end of stream inside a frame); transport errors
    (``OSError``, cancellation) from ``reader`` pass through unchanged.
    """
    # asyncio.IncompleteReadError subclasses EOFError, which lets us catch it
    # without importing asyncio here.
    try:
        prefix = await reader.readexactly(4)
    except EOFError as exc:
        partial = getattr(exc, "partial", b"")
        if not partial:
            return None
        raise TruncatedFrame(len(partial)) from None
    (size,) = _unpack_prefix(prefix)
    if size > max_size:
        raise FrameTooLarge(size, max_size)
    try:
        body = await reader.readexactly(size) if size else b""
    except EOFError as exc:
        raise TruncatedFrame(4 + len(getattr(exc, "partial", b""))) from None
    return _decode_body(body, max_depth)


async def write_frame(
    writer: _Writer, obj: dict[str, Any], *, max_size: int = DEFAULT_MAX_FRAME
) -> None:
    """Encode ``obj`` as one frame, write it and wait for the buffer to drain.

    Raises what :func:`encode_frame` raises (before anything is written),
    and whatever ``writer.drain()`` raises (``ConnectionError``...).
    """
    writer.write(encode_frame(obj, max_size=max_size))
    await writer.drain()
