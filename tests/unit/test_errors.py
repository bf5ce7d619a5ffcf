"""One honest error tree: walked from the real classes, checked against the drawing.

msgrlib/errors.py draws the tree once. Every class msgr raises is in exactly
one branch (LocalError: this process; RemoteError: the other side), its
``remote`` flag says which, the drawing names every class and nothing else,
and there is one Refused subclass per wire error code, shared by the relay
and the client.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import framing
import kdf
import msgrlib
from msgrlib import errors
from msgrlib.errors import ErrorCode, LocalError, MsgrError, Refused, RemoteError


def all_error_classes() -> list[type[MsgrError]]:
    for info in pkgutil.walk_packages(msgrlib.__path__, "msgrlib."):
        if ".ui.terminal" in info.name or ".ui.app" in info.name:
            continue  # curses: imported only by the chat screen
        importlib.import_module(info.name)
    assert framing.FramingError and kdf.KdfError
    seen: list[type[MsgrError]] = []
    todo = [MsgrError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return seen


def drawn_names() -> set[str]:
    doc = errors.__doc__ or ""
    tree = doc[doc.index("    MsgrError\n"):doc.index("``framing.py`` and ``kdf.py``")]
    names = set()
    for word in re.findall(r"[A-Za-z_][\w.]*", tree):
        last = word.rsplit(".", 1)[-1]
        if last[:1].isupper():
            names.add(last)
    return names


CLASSES = all_error_classes()
BRANCHES = (LocalError, RemoteError)


@pytest.mark.parametrize("cls", [c for c in CLASSES if c not in BRANCHES],
                         ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_error_is_in_exactly_one_branch(cls):
    branches = [b for b in BRANCHES if issubclass(cls, b)]
    if cls.__dict__.get("layer"):
        assert not branches, f"{cls.__name__} is a layer base but sits in a branch"
        return
    assert len(branches) == 1, f"{cls.__name__} is in {branches or 'no branch'}"
    assert cls.remote is issubclass(cls, RemoteError), cls


def test_the_drawing_names_every_class_and_only_real_ones():
    real = {c.__name__ for c in CLASSES}
    drawn = drawn_names() - {"ErrorCode", "MsgrError", "Layer", "True"}
    assert real - drawn == set(), f"not drawn in errors.py: {sorted(real - drawn)}"
    assert drawn - real == set(), f"drawn but not real: {sorted(drawn - real)}"


def test_one_refusal_class_per_wire_code_and_the_relay_and_client_share_it():
    classes = {Refused.class_for(code) for code in ErrorCode}
    assert len(classes) == len(ErrorCode)
    for code in ErrorCode:
        err = Refused(code, "why")
        assert type(err) is Refused.class_for(code) and err.code is code and str(err) == "why"
        assert isinstance(err, RemoteError) and err.remote
        assert err.permanent is (code in errors.PERMANENT_CODES)
    # A newer relay's code: still a Refused, its text kept, never permanent.
    err = Refused("brand_new_code", "why")
    assert type(err) is Refused and err.code == "brand_new_code" and not err.permanent
    from msgrlib.client import connection
    from msgrlib.relay import rules
    assert rules.Refused is connection.Refused is Refused
    assert not hasattr(connection, "RelayRefused")


def test_protocol_violation_keeps_its_one_argument_form():
    err = errors.ProtocolViolation("bad request")
    assert err.code is ErrorCode.PROTOCOL and err.fatal and str(err) == "bad request"
    assert Refused(ErrorCode.PROTOCOL, "x").__class__ is errors.ProtocolViolation


def test_every_code_the_relay_raises_is_a_wire_code():
    import inspect

    from msgrlib.relay import rules, server
    source = inspect.getsource(rules) + inspect.getsource(server)
    for literal in re.findall(r"Refused\(\s*\"(\w+)\"", source):
        assert literal in {c.value for c in ErrorCode}, literal
