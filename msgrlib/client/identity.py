"""The Ed25519 key that owns a name at a relay, kept on disk as ssh keeps its keys.

The key proves to the relay that this user owns the name (PROTOCOL.md 3.2);
it protects no message: the end-to-end keys come from the passcode and the
handshake, never from this file. By default msgr keeps one key per relay and
name, created on first use, owner-only (0600, in a 0700 directory) under the
user's state directory::

    $XDG_STATE_HOME/msgr/names/<relay host_port>/<name>.key
    (~/.local/state/msgr/... when XDG_STATE_HOME is unset or relative)

so a run that follows another at once finds its name still bound to the
same key. ``--identity FILE`` chooses another file. A file holds one line:
``msgr-identity-v1 <base64 of the 32-byte Ed25519 seed>``.

Errors::

    MsgrError
    └── IdentityError   local: the file cannot be read, created, is open to other
                        users, or is not an identity
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from pathlib import Path

from nacl.signing import SigningKey

from msgrlib.errors import LocalError

LABEL = b"msgr-identity-v1"
_UNSAFE = re.compile(r"[^A-Za-z0-9._\[\]-]")


class IdentityError(LocalError):
    """An identity file msgr cannot use; the message names the file."""

    code = "identity"


def default_identity_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/msgr/names``, else ``~/.local/state/msgr/names``.

    A relative ``XDG_STATE_HOME`` is ignored, as the XDG spec asks."""
    state = environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):
        home = environ.get("HOME") or os.path.expanduser("~")
        state = os.path.join(home, ".local", "state")
    return Path(state) / "msgr" / "names"


def default_identity_path(address: str, user: str,
                          environ: Mapping[str, str] = os.environ) -> Path:
    """Where the key for ``user`` at the relay ``address`` (``host:port``,
    ``[v6]:port``, as :attr:`ChatClient.address` writes it) is kept by
    default. One directory per relay, so the same name at two relays has two
    keys; characters a file name cannot hold everywhere (``:``) become ``_``."""
    return default_identity_dir(environ) / _UNSAFE.sub("_", address) / f"{user}.key"


def load_identity(path: str | os.PathLike[str] | None) -> SigningKey | None:
    """The key in ``path``, created there (0600) if the file does not exist.

    With no path, None: :class:`~msgrlib.client.connection.ChatClient` then
    uses the default file for its relay and name. Raises :class:`IdentityError`.
    """
    return None if path is None else load_or_create(path)


def load_or_create(path: str | os.PathLike[str]) -> SigningKey:
    """Read the key in ``path``; if there is none, create one there first.

    Creation is atomic (a private temporary file, then ``link``): two runs
    starting together end up with the same key. Raises :class:`IdentityError`.
    """
    path = os.fspath(path)
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    directory = os.path.dirname(os.path.abspath(path))
    try:
        _make_private_dirs(directory)
        key = SigningKey.generate()
        temp = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(6).hex()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(LABEL + b" " + base64.b64encode(bytes(key)) + b"\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(temp, path)
            except FileExistsError:
                pass  # another run created it first: use that one
        finally:
            os.unlink(temp)
    except OSError as err:
        raise IdentityError(f"cannot create identity file {path}: "
                            f"{err.strerror or err}") from None
    try:
        return _read(path)
    except FileNotFoundError:
        raise IdentityError(f"identity file {path} vanished as it was created") from None


def _make_private_dirs(directory: str) -> None:
    """Create ``directory`` and any missing parents, each 0700 (as ~/.ssh is)."""
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # made meanwhile by another run (or a file: the write fails and says so)


def _read(path: str) -> SigningKey:
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read(4096).strip()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise IdentityError(f"cannot read identity file {path}: {err.strerror or err}") from None
    if os.name == "posix" and mode & 0o077:
        # As ssh refuses a private key others can read: whoever reads it can
        # take the name (and the messages waiting for it) at the relay.
        raise IdentityError(f"identity file {path} is open to other users (mode "
                            f"{mode & 0o777:04o}); make it owner-only: chmod 600 {path}")
    label, _, b64 = text.partition(b" ")
    try:
        if label != LABEL:
            raise ValueError
        return SigningKey(base64.b64decode(b64, validate=True))
    except (ValueError, binascii.Error, TypeError):
        raise IdentityError(f"identity file {path} is not a msgr identity "
                            "(delete it to make a new one)") from None


__all__ = ["IdentityError", "default_identity_dir", "default_identity_path", "load_identity",
           "load_or_create"]
