"""Username rules, shared by the relay and the client.

A name is 1 to 32 characters from ``a-z``, ``0-9``, ``.``, ``_`` and ``-``,
starting with a letter or a digit. Lower case only, so that ``Bob`` and
``bob`` can never be two different people who look alike on screen.
"""

from __future__ import annotations

import re
from typing import TypeGuard

from msgrlib.errors import LocalError

#: Longest name accepted; long enough for "firstname.lastname", short enough
#: to keep every frame that carries names small.
MAX_NAME_LENGTH = 32

_NAME_RE = re.compile(rf"[a-z0-9][a-z0-9._-]{{0,{MAX_NAME_LENGTH - 1}}}\Z")


class BadName(LocalError):
    """A username that breaks the rules above."""

    code = "bad_name"


def is_valid_name(name: object) -> TypeGuard[str]:
    """True if ``name`` is a str that follows the rules."""
    return isinstance(name, str) and _NAME_RE.match(name) is not None


def check_name(name: object, *, what: str = "username") -> str:
    """Return ``name`` unchanged if valid, else raise :class:`BadName`."""
    if is_valid_name(name):
        return name
    shown = repr(name)[:40]
    raise BadName(
        f"invalid {what} {shown}: use 1-{MAX_NAME_LENGTH} characters from a-z, 0-9, "
        "'.', '_' and '-', starting with a letter or digit"
    )
