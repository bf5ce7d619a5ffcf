"""Files, directories and one-shot secrets over a ratchet session (issue 16), sans-I/O.

* :mod:`~msgrlib.transfer.messages`: the ``xfer.*`` messages (JSON inside ratchet plaintexts)
  and their strict parser;
* :mod:`~msgrlib.transfer.machine`: :class:`Sender` / :class:`Receiver` state machines with
  windowed end-to-end flow control, resume and failure on both sides;
* :mod:`~msgrlib.transfer.files`: sources and sinks (temporary file renamed only when the hash
  checks; memory only for secrets); :mod:`~msgrlib.transfer.names`: which names may be written;
* :mod:`~msgrlib.transfer.archive`: directories as one checked tar archive.

The exception tree is in :mod:`~msgrlib.transfer.errors`. docs/transfer.md describes the wire.
"""

from msgrlib.transfer.errors import (
    ArchiveError,
    SinkError,
    TargetExists,
    TransferError,
    TransferProtocolError,
    TransferStateError,
    UnsafeName,
)
from msgrlib.transfer.machine import Receiver, ReceiverState, Sender, SenderState, make_offer
from msgrlib.transfer.messages import is_transfer_message, parse_message

__all__ = ["ArchiveError", "Receiver", "ReceiverState", "Sender", "SenderState", "SinkError",
           "TargetExists", "TransferError", "TransferProtocolError", "TransferStateError",
           "UnsafeName", "is_transfer_message", "make_offer", "parse_message"]
