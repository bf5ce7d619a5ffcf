"""The root of msgr's exceptions.

Every layer defines its own subtree under :class:`MsgrError`, so the CLI can
turn any of them into one line and an exit code, and nothing else (a
``KeyError``, a ``nacl`` or ``json`` exception) is ever allowed to reach a user::

    MsgrError
    ├── framing.FramingError        bytes on the wire are not a valid frame
    ├── kdf.KdfError                key derivation could not run
    ├── crypto errors (e2e.CryptoError and subclasses: cpace, ratchet, handshake)
    ├── relay errors (relay.RelayError and subclasses)
    ├── client errors (client.ClientError and subclasses)
    └── tls errors (certs.TlsError and subclasses)

Errors caused by the remote side carry ``remote = True`` so callers can tell
"the peer sent garbage" from "you called this wrongly".
"""

from __future__ import annotations


class MsgrError(Exception):
    """Base class of every error msgr raises on purpose.

    ``str(err)`` is a sentence a user can act on; it never contains a
    passcode, a key or message text.
    """

    #: True when the error was caused by data from the network.
    remote: bool = False

    #: A short machine-readable code, used on the wire and in ``--json`` output.
    code: str = "error"


class UsageError(MsgrError):
    """The command line asks for something that cannot be (exit code 2)."""

    code = "usage"


class CryptoError(MsgrError):
    """Base of every end-to-end crypto failure (static box, CPace, ratchet).

    Raised for data from the peer or the relay that does not authenticate,
    parse or verify. The session that sees one never shows the data.
    """

    remote = True
    code = "crypto"
