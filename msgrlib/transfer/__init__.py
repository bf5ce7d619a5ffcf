"""Files, directories and one-shot secrets over a ratchet session (issue 16), sans-I/O.

* :mod:`~msgrlib.transfer.messages`: the ``xfer.*`` messages (JSON inside ratchet plaintexts)
  and their strict parser;
* :mod:`~msgrlib.transfer.machine`: :class:`Sender` / :class:`Receiver` state machines with
  windowed end-to-end flow control, resume and failure on both sides;
* :mod:`~msgrlib.transfer.files`: sources and sinks (temporary file renamed only when the hash
  checks; memory only for secrets); :mod:`~msgrlib.transfer.names`: which names may be written;
* :mod:`~msgrlib.transfer.archive`: directories as one checked tar archive;
* :mod:`~msgrlib.transfer.registry`: :class:`Transfers`, every transfer of one conversation
  (what the chat core holds); :mod:`~msgrlib.transfer.progress`: rate, time left, ``--json``.

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
from msgrlib.transfer.registry import Offered, Transfers

__all__ = ["ArchiveError", "Offered", "Receiver", "ReceiverState", "Sender", "SenderState",
           "SinkError", "TargetExists", "TransferError", "TransferProtocolError",
           "TransferStateError", "Transfers", "UnsafeName", "is_transfer_message", "make_offer",
           "parse_message"]
