"""CPython-specific fast paths, kept apart from the modules that use them.

Each function here returns a drop-in replacement for a plain, obviously
correct stdlib call, and ``tests/test_speedups.py`` checks that the two agree
on the same inputs (results and errors alike). The modules that use them keep
the plain version as their fallback, so on another interpreter, or with
``framing.py`` copied alone to a minimal host, nothing changes but speed.
This mirrors how websockets keeps ``speedups.c`` beside ``utils.py``.

Measured on the development machine (see BENCHMARKS.md): the decoder saves
about 0.8 us on a 250-byte ``send`` frame, the encoder about a third of the
cost of a ``deliver`` or ``accepted`` frame; the relay does both for every
message.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from json.encoder import encode_basestring as _encode_basestring
from typing import Any

__all__ = ["accepted_json", "deliver_json", "fast_json_decoder", "fast_json_encoder",
           "json_string"]

#: Strings at least this long try the bulk path of :func:`json_string` first.
BULK_STRING = 2048
#: What JSON must escape in an ASCII string (``encode_basestring`` escapes these, no more).
_ESCAPED = bytes(range(0x20)) + b'"\\'


def json_string(s: str) -> str:
    """``json.encoder.encode_basestring(s)``, the same text, sooner for a long ASCII string
    that needs no escape (a file chunk's base64 body, 64 KB a frame): two scans at memory
    speed (``isascii`` is O(1), ``bytes.translate`` deletes what would need escaping) and a
    copy, about three times faster here than the encoder's character loop. Anything else
    goes to ``encode_basestring`` itself."""
    if len(s) >= BULK_STRING and type(s) is str and s.isascii():
        raw = s.encode("ascii")
        if len(raw.translate(None, _ESCAPED)) == len(raw):
            return '"' + s + '"'
    return _encode_basestring(s)



def fast_json_decoder(
    decoder: json.JSONDecoder, errors: tuple[type[BaseException], ...] = ()
) -> Callable[[str], Any]:
    """``decoder.decode`` without its Python wrapper, for compact input.

    ``JSONDecoder.decode`` wraps the C scanner in two whitespace regexes and
    ``raw_decode``. Peers send compact JSON, so scan from 0 and accept only if
    the scanner consumed the whole text; anything else (whitespace, trailing
    data, any error, including those in ``errors`` raised by the decoder's
    hooks) goes through ``decode()`` itself, so results and error messages
    are exactly ``decode()``'s.
    """
    full = decoder.decode
    scan_once = decoder.scan_once  # type: ignore[attr-defined]  # CPython's C scanner
    retry: tuple[type[BaseException], ...] = (StopIteration, ValueError, RecursionError, *errors)

    def decode(text: str) -> Any:
        try:
            obj, end = scan_once(text, 0)
        except retry:
            return full(text)
        if end != len(text):
            return full(text)
        return obj

    return decode


def _not_serialisable(obj: object) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def fast_json_encoder(full: Callable[[Any], str]) -> Callable[[Any], str]:
    """A compact, non-ASCII-escaping, NaN-refusing encoder built once.

    ``full`` must be ``JSONEncoder(ensure_ascii=False, allow_nan=False,
    separators=(",", ":")).encode``. ``JSONEncoder.encode`` builds a new C
    encoder and a closure on every call, about a third of the cost; this is
    the same C encoder with the same settings, built once, without the
    circular-reference markers (a shared markers dict is left dirty when an
    encode fails halfway). A cyclic object ends in RecursionError, and then
    ``full`` runs again to raise exactly what it always raised. Without the
    C accelerator, ``full`` itself is returned.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # another interpreter: the stdlib path
        return full
    # json_string: the C encoder calls it for every string (a Python call, ~0.1 us, on
    # short ones) and it answers a 64 KB base64 body three times sooner.
    c_encode = make(None, _not_serialisable, json_string,
                    None, ":", ",", False, False, False)

    def encode(obj: Any) -> str:
        try:
            return "".join(c_encode(obj, 0))
        except RecursionError:
            return full(obj)

    return encode


def deliver_json(msg_id: int, sender: str, kind: str, ttl: int, expires_at: str,
                 body: str) -> str:
    """The relay's ``deliver`` frame as JSON text, formatted directly.

    With :func:`accepted_json`, the relay's most frequent encode (once per
    message each). ``expires_at`` is the JSON text of the expiry (``repr`` of
    the float, as the encoder writes it), made once per message for both
    frames. Byte for byte what the generic encoder (``framing.encode_frame``)
    makes of ``{"type": "deliver", "id": ..., "from": ..., "kind": ..., "ttl":
    ..., "expires_at": ..., "body": ...}``: JSON formats ints with ``str`` and
    strings with ``encode_basestring``, the function the encoder uses (C on
    CPython, pure Python elsewhere). ``tests/unit/relay/test_relay_fuzz.py``
    checks the two agree with hypothesis. 1.25 us per frame here, 3.5 us
    through ``encode_frame``.
    """
    return (f'{{"type":"deliver","id":{msg_id},"from":{_encode_basestring(sender)},'
            f'"kind":{_encode_basestring(kind)},"ttl":{ttl},"expires_at":{expires_at},'
            f'"body":{json_string(body)}}}')


def accepted_json(ref: int, msg_id: int, ttl: int, expires_at: str) -> str:
    """The ``accepted`` frame for an integer ``ref``, formatted as :func:`deliver_json` is."""
    return (f'{{"type":"accepted","ref":{ref},"id":{msg_id},"ttl":{ttl},'
            f'"expires_at":{expires_at}}}')
