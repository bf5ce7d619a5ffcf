"""msgrlib.speedups agrees with the plain stdlib calls it stands in for."""

from __future__ import annotations

import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st

import framing
from msgrlib import speedups

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
EXAMPLES = int(os.environ.get("MSGR_FUZZ_EXAMPLES", "200"))

_full_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False,
                                separators=(",", ":")).encode
_fast_encode = speedups.fast_json_encoder(_full_encode)
_decoder = json.JSONDecoder(object_pairs_hook=framing._pairs_to_dict,
                            parse_constant=framing._reject_constant,
                            parse_float=framing._parse_float)
_fast_decode = speedups.fast_json_decoder(_decoder, (framing.FramingError,))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def outcome(fn, arg):
    try:
        return ("ok", fn(arg))
    except Exception as exc:  # noqa: BLE001 - comparing exactly what each raises
        return ("error", type(exc), str(exc))


@settings(max_examples=EXAMPLES)
@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_encoder_matches_the_stdlib(obj):
    assert outcome(_fast_encode, obj) == outcome(_full_encode, obj)


@settings(max_examples=EXAMPLES)
@given(st.one_of(st.text(), json_values.map(json.dumps),
                 st.dictionaries(st.text(), json_values, max_size=6).map(_full_encode)))
def test_decoder_matches_the_stdlib(text):
    assert outcome(_fast_decode, text) == outcome(_decoder.decode, text)


def test_encoder_refuses_what_the_stdlib_refuses():
    for bad in ({"x": float("nan")}, {"x": object()}, {1.5: 1}):
        assert outcome(_fast_encode, bad) == outcome(_full_encode, bad)
    cyclic: dict = {}
    cyclic["self"] = cyclic
    assert outcome(_fast_encode, cyclic)[:2] == outcome(_full_encode, cyclic)[:2]

