"""Where the client keeps the key that owns its name at a relay, by default.

A relay keeps a name bound to its key for a while after the last connection
(PROTOCOL.md 3.2), so a client that made a new key on every run could not
take its own name again at once. Like ssh with its keys, the client keeps one
name-ownership key per relay and name, created on first use, owner-only,
under the user's state directory. It proves the name to the relay and
protects no message (SECURITY.md). ``--identity FILE`` chooses another place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["default_identity_path"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._\[\]-]")


def default_identity_path(address: str, user: str,
                          environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/msgr/names/ADDRESS/USER.key``, else under ``~/.local/state``.

    ``address`` is the relay's ``host:port`` (IPv6 in brackets); characters a
    file name cannot hold everywhere (``:``) become ``_``. A relative
    ``XDG_STATE_HOME`` is ignored, as the XDG spec asks.
    """
    state = environ.get("XDG_STATE_HOME", "")
    if not state or not os.path.isabs(state):
        home = environ.get("HOME") or os.path.expanduser("~")
        state = os.path.join(home, ".local", "state")
    return Path(state) / "msgr" / "names" / _UNSAFE.sub("_", address) / f"{user}.key"
