"""The exceptions of the transfer layer::

    MsgrError
    └── TransferError                 base of everything below
        ├── TransferProtocolError     a transfer message from the peer is malformed (remote)
        ├── UnsafeName                a file or member name we refuse to write (remote)
        ├── ArchiveError              a directory archive we refuse to unpack (remote)
        ├── TargetExists              the file or directory to write already exists
        ├── SinkError                 writing the received data failed (disk full, permissions)
        └── TransferStateError        the caller used a transfer in the wrong state (a bug)

Every message is one line a user can act on; any text that came from the peer (a file name, a
member name) is shown escaped (``msgrlib.util.safetext.escape``) and shortened.
"""

from __future__ import annotations

from msgrlib.errors import LocalError, MsgrError, RemoteError
from msgrlib.util.safetext import escape


class TransferError(MsgrError):
    """Base of every transfer error."""

    code = "transfer"
    layer = True  # never raised itself: each error below is local or remote


class TransferProtocolError(TransferError, RemoteError):
    """A transfer message from the peer breaks the rules in docs/transfer.md."""

    code = "transfer_protocol"


class UnsafeName(TransferError, RemoteError):
    """A name from the peer that would write outside the chosen directory, over a hidden file,
    or print control characters: refused, never "fixed" silently."""

    code = "unsafe_name"


class ArchiveError(TransferError, RemoteError):
    """A directory archive that breaks a rule (checked before anything is written)."""

    code = "bad_archive"


class TargetExists(TransferError, LocalError):
    """The destination exists; the caller must ask before overwriting (``overwrite=True``)."""

    code = "exists"

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class SinkError(TransferError, LocalError):
    """The local file system refused the received data (the OS error is chained)."""

    code = "write_failed"


class SourceError(TransferError, LocalError):
    """What we were asked to send cannot be read as it is (missing, not a
    directory, changed or swapped while it was being packed)."""

    code = "read_failed"


class TransferStateError(TransferError, LocalError):
    """A method was called in a state that does not allow it (caller's mistake)."""

    code = "transfer_state"


def shown(text: str, limit: int = 60) -> str:
    """Peer text for an error message: escaped, shortened, quoted."""
    safe = escape(text)
    if len(safe) > limit:
        safe = safe[: limit - 3] + "..."
    return f"'{safe}'"


__all__ = ["ArchiveError", "SinkError", "TargetExists", "TransferError",
           "TransferProtocolError", "TransferStateError", "UnsafeName", "shown"]
