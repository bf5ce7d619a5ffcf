"""TLS and certificate errors, shared by every module of :mod:`msgrlib.tls`.

Exceptions (all under :class:`msgrlib.errors.MsgrError`; each is also a
LocalError or a RemoteError, see the tree in ``msgrlib/errors.py``)::

    TlsError                    the layer's base, never raised itself
    ├── TlsSetupError           local: bad fingerprint text, bad generation arguments
    ├── CertificateFileError    local: a certificate or key file is missing, unreadable or invalid
    ├── KnownHostsError         local: the known_hosts file is corrupt or cannot be written
    ├── UnknownCertificate      remote: the relay's certificate does not verify (--cafile)
    ├── PinMismatch             remote: the relay's fingerprint is not the --pin
    └── CertificateChanged      remote: the relay's fingerprint is not the remembered one
"""

from __future__ import annotations

import os

from msgrlib.errors import LocalError, MsgrError, RemoteError

__all__ = [
    "CertificateChanged",
    "CertificateFileError",
    "KnownHostsError",
    "PinMismatch",
    "TlsError",
    "UnknownCertificate",
]


class TlsError(MsgrError):
    """Base of every TLS and certificate error; also bad fingerprint text."""

    code = "tls"
    layer = True  # never raised itself: each error below is local or remote


class TlsSetupError(TlsError, LocalError):
    """A certificate or address msgr was given cannot be used."""

    code = "tls_setup"


class CertificateFileError(TlsError, LocalError):
    """A certificate or key file is missing, unreadable or not valid.

    ``path`` is the file at fault (or ``None`` when it is the pair).
    """

    code = "cert_file"

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


class KnownHostsError(TlsError, LocalError):
    """The known_hosts file is corrupt, unreadable or cannot be written.

    ``line`` is the 1-based line number of a corrupt line, else ``None``.
    """

    code = "known_hosts"

    def __init__(self, message: str, *, path: str, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class UnknownCertificate(TlsError, RemoteError):
    """The relay's certificate could not be verified, or there is no way to trust it."""

    code = "cert_unknown"

    def __init__(self, message: str, *, address: str, cafile: str | None = None) -> None:
        super().__init__(message)
        self.address = address
        self.cafile = cafile


class PinMismatch(TlsError, RemoteError):
    """The relay presented a certificate whose fingerprint is not the ``--pin``."""

    code = "pin_mismatch"

    def __init__(self, *, address: str, expected: str, presented: str) -> None:
        super().__init__(
            f"the certificate of relay {address} does not match --pin: "
            f"expected {expected}, the relay presented {presented}. "
            "Someone may be intercepting the connection; do not continue until you "
            "have checked the fingerprint with the relay's operator."
        )
        self.address = address
        self.expected = expected
        self.presented = presented


class CertificateChanged(TlsError, RemoteError):
    """The relay's fingerprint differs from the one remembered on first use.

    ``str(err)`` is a loud, several-line warning in the style of SSH's
    "REMOTE HOST IDENTIFICATION HAS CHANGED"; the attributes carry the data.
    """

    code = "cert_changed"

    def __init__(
        self, *, address: str, expected: str, presented: str, path: str, line: int | None
    ) -> None:
        where = f"line {line} of {path}" if line is not None else path
        super().__init__(
            f"WARNING: THE CERTIFICATE OF RELAY {address} HAS CHANGED!\n"
            f"  remembered: {expected}\n"
            f"  presented:  {presented}\n"
            "Someone could be intercepting your connection right now (a man-in-the-middle "
            "attack), or the relay's operator replaced its certificate. msgr refused "
            "the connection.\n"
            "If the operator confirms the new fingerprint, delete the line for "
            f"{address} ({where}) and connect again."
        )
        self.address = address
        self.expected = expected
        self.presented = presented
        self.path = path
        self.line = line
