"""The documents match the code: PROTOCOL.md's worked examples, README's limits."""

from __future__ import annotations

import dataclasses
import os
import re

from msgrlib.relay import rules as relay
from tools import protocol_examples

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def test_protocol_examples_are_what_the_code_computes():
    protocol = read("PROTOCOL.md")
    for name, block in protocol_examples.examples().items():
        assert block in protocol, f"PROTOCOL.md's {name!r} example is stale; paste:\n{block}"


def test_readme_lists_every_serve_limit_with_its_default():
    readme = read("README.md")
    import msgr
    defaults = relay.RelayConfig()
    for option, field, _, _ in msgr._LIMIT_OPTIONS:
        row = re.search(rf"^\| `{re.escape(option)}` \|([^|]*)\|", readme, re.M)
        assert row, f"README.md has no row for {option}"
        value = getattr(defaults, field)
        assert msgr._number(value) in row.group(1), (option, row.group(1), value)
    assert {f.name for f in dataclasses.fields(relay.RelayConfig)} >= {
        field for _, field, _, _ in msgr._LIMIT_OPTIONS}
