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
from typing import Any

__all__ = ["fast_json_decoder", "fast_json_encoder"]


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
    c_encode = make(None, _not_serialisable, json.encoder.encode_basestring,
                    None, ":", ",", False, False, False)

    def encode(obj: Any) -> str:
        try:
            return "".join(c_encode(obj, 0))
        except RecursionError:
            return full(obj)

    return encode
