"""msgrlib.speedups agrees with the plain stdlib calls it stands in for."""

from __future__ import annotations

import json
import json.encoder
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



_long_ascii = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127),
                      min_size=speedups.BULK_STRING, max_size=3 * speedups.BULK_STRING)


@settings(max_examples=EXAMPLES)
@given(st.one_of(st.text(), _long_ascii,
                 st.text(min_size=speedups.BULK_STRING, max_size=3 * speedups.BULK_STRING),
                 st.binary(min_size=1536, max_size=4096).map(
                     lambda b: "r1." + "ab" * 16 + "." + __import__("base64").b64encode(b)
                     .decode())))
def test_json_string_is_encode_basestring(text):
    """The bulk path (long ASCII needing no escape: a chunk's base64 body) and the rest
    give exactly the stdlib's text, and so does the encoder that uses it."""
    assert speedups.json_string(text) == json.encoder.encode_basestring(text)
    assert _fast_encode({"body": text}) == _full_encode({"body": text})


def test_json_string_escapes_what_the_stdlib_escapes_in_a_long_string():
    base = "A" * speedups.BULK_STRING
    for special in ['"', "\\", "\n", "\x00", "\x1f", "\x7f", "\u2028", "\u00e9"]:
        for text in (special + base, base + special, base[:100] + special + base):
            assert speedups.json_string(text) == json.encoder.encode_basestring(text)

    class Sub(str):
        def __add__(self, other):  # never used: a subclass goes to the stdlib
            raise AssertionError

    assert speedups.json_string(Sub(base)) == json.encoder.encode_basestring(base)
