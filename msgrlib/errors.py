"""msgr's exceptions: one tree, two branches, drawn once here.

Every error msgr raises on purpose is a :class:`MsgrError`, so the CLI turns
any of them into one line and an exit code, and nothing else (a ``KeyError``,
a ``nacl`` or ``json`` exception) is allowed to reach a user. Below the root,
every class sits in exactly one of two branches, which say who caused it:

* :class:`LocalError`: what this process was asked to do cannot be done (bad
  options or input, a file or the network, a method called in the wrong
  state). ``remote`` is False.
* :class:`RemoteError`: what the other side sent or did (the peer, the
  relay, or, seen from the relay, a client). ``remote`` is True. Data that
  caused one is never shown, stored or acted on.

Layers group their errors with a layer base (``TlsError``, ``TransferError``,
``ClientError``, ``StoreError``, ``CryptoError``...), which each concrete
class combines with its branch. ``code`` is the short name used in ``--json``
output and logs; for a relay's refusal it is the wire's :class:`ErrorCode`,
and there is one :class:`Refused` subclass per code, the same class for the
relay that raises it and the client that receives it. The tree
(``tests/test_errors.py`` checks it against the real subclasses)::

    MsgrError
    ├── LocalError
    │   ├── UsageError                          usage
    │   ├── kdf.KdfError                        kdf
    │   ├── util.names.BadName                  bad_name
    │   ├── crypto.cpace.CPaceUnavailable       cpace_unavailable
    │   ├── crypto.handshake.HandshakeStateError handshake_state
    │   ├── crypto.ratchet.RatchetStateError    ratchet_state
    │   ├── client.connection.ClientError       client
    │   │   ├── client.connection.ConnectFailed connect
    │   │   └── client.connection.WrongTransport transport
    │   ├── client.identity.IdentityError       identity
    │   ├── client.invite.InviteError           invite
    │   ├── client.session.SessionError         session_state
    │   ├── relay.store.StoreError              store
    │   │   ├── relay.store.MailboxFull         mailbox_full
    │   │   ├── relay.store.ShareFull           store_share (engine.backend.ShareFull too)
    │   │   └── relay.store.StoreFull           relay_full
    │   ├── relay.engine.backend.EngineError    engine
    │   │   ├── EngineConfigError, EngineUnavailable, EngineReset
    │   │   └── engine.backend.NameOwned, engine.backend.TooManyNames   (a claim refused)
    │   ├── tls.errors.TlsSetupError            tls_setup      (layer TlsError)
    │   ├── tls.errors.CertificateFileError     cert_file      (layer TlsError)
    │   ├── tls.errors.KnownHostsError          known_hosts    (layer TlsError)
    │   ├── invite.code.InviteCodeError         bad_invite_code
    │   ├── invite.nameplates.NameplateError    nameplate
    │   ├── transfer.errors.TargetExists        exists         (layer TransferError)
    │   ├── transfer.errors.SinkError           write_failed   (layer TransferError)
    │   ├── transfer.errors.SourceError         read_failed    (layer TransferError)
    │   └── transfer.errors.TransferStateError  transfer_state (layer TransferError)
    └── RemoteError
        ├── framing.FramingError                bad_frame
        │   ├── framing.FrameTooLarge           frame_too_large
        │   ├── framing.MalformedFrame          bad_frame
        │   └── framing.TruncatedFrame          truncated_frame
        ├── protocol.FrameError                 (the ErrorCode of the broken rule)
        ├── CryptoError                         crypto
        │   ├── crypto.cpace.CPaceError         cpace
        │   │   ├── crypto.cpace.LowOrderPoint  cpace_low_order
        │   │   └── crypto.cpace.InvalidShare   cpace_bad_share
        │   ├── crypto.handshake.MalformedHandshake bad_handshake
        │   ├── crypto.handshake.PasscodeMismatch passcode_mismatch
        │   ├── crypto.ratchet.RatchetError     ratchet
        │   │   ├── crypto.ratchet.MalformedMessage bad_message
        │   │   ├── crypto.ratchet.ReflectedMessage reflected
        │   │   ├── crypto.ratchet.DuplicateMessage replay
        │   │   ├── crypto.ratchet.DecryptionFailed forged
        │   │   └── crypto.ratchet.TooManySkipped too_many_skipped
        │   ├── client.ratchet_mode.BadBody     bad_message
        │   └── crypto.staticbox.SealError      bad_message
        │       ├── crypto.staticbox.Undecryptable undecryptable
        │       ├── crypto.staticbox.Replayed   replay
        │       ├── crypto.staticbox.Misdirected misdirected
        │       └── crypto.staticbox.Stale      stale
        ├── Refused                             one subclass per ErrorCode, below
        ├── tls.errors.UnknownCertificate       cert_unknown   (layer TlsError)
        ├── tls.errors.PinMismatch              pin_mismatch   (layer TlsError)
        ├── tls.errors.CertificateChanged       cert_changed   (layer TlsError)
        ├── transfer.errors.TransferProtocolError transfer_protocol (layer TransferError)
        ├── transfer.errors.UnsafeName          unsafe_name    (layer TransferError)
        └── transfer.errors.ArchiveError        bad_archive    (layer TransferError)

    Refused (the relay will not serve a request; the code is the wire's)
    ├── BadFrame, FrameTooLarge, TruncatedFrame, ProtocolViolation, VersionRefused,
    ├── BadNameRefused, BadSignature, NameOwned, TooManyNames, Replaced, Timeout,
    ├── TooManyConnections, RelayFull, ShuttingDown, RateLimited, HandshakeLimited,
    ├── MailboxFullRefused, StoreShareRefused, BadRecipient, TooManyWatches,
    └── NoNameplate, OwnNameplate, TooManyNameplates, NameplatesFull

    Layer bases, never raised themselves (``layer = True``), so that one
    ``except`` catches a whole layer: tls.errors.TlsError, transfer.errors.TransferError.

``framing.py`` and ``kdf.py`` stay usable on their own (copied to a minimal
host, their errors stand on ``Exception``); inside msgr they join this tree.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "PERMANENT_CODES", "CryptoError", "ErrorCode", "LocalError", "MsgrError", "ProtocolViolation",
    "Refused", "RemoteError", "UsageError",
]


class MsgrError(Exception):
    """Base class of every error msgr raises on purpose.

    ``str(err)`` is a sentence a user can act on; it never contains a
    passcode, a key or message text.
    """

    #: True for a :class:`RemoteError`: the other side caused it.
    remote: bool = False

    #: A short machine-readable code, used in ``--json`` output and logs.
    code: str = "error"


class LocalError(MsgrError):
    """This process was asked for something that cannot be done."""

    remote = False


class RemoteError(MsgrError):
    """The other side (peer, relay, or a relay's client) sent or did this."""

    remote = True


class UsageError(LocalError):
    """The command line asks for something that cannot be (exit code 2)."""

    code = "usage"


class CryptoError(RemoteError):
    """Base of every end-to-end crypto failure (static box, CPace, ratchet).

    Raised for data from the peer or the relay that does not authenticate,
    parse or verify. The session that sees one never shows the data.
    """

    code = "crypto"


class ErrorCode(str, enum.Enum):
    """Every ``code`` an ``error`` frame may carry (PROTOCOL.md section 3.5).

    A ``str`` enum: members compare equal to, and encode in JSON as, their text.
    """

    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    TRUNCATED_FRAME = "truncated_frame"
    PROTOCOL = "protocol"
    VERSION = "version"
    BAD_NAME = "bad_name"
    BAD_SIGNATURE = "bad_signature"
    NAME_OWNED = "name_owned"
    TOO_MANY_NAMES = "too_many_names"
    REPLACED = "replaced"
    TIMEOUT = "timeout"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    RELAY_FULL = "relay_full"
    SHUTTING_DOWN = "shutting_down"
    RATE_LIMITED = "rate_limited"
    HANDSHAKE_LIMITED = "handshake_limited"
    MAILBOX_FULL = "mailbox_full"
    STORE_SHARE = "store_share"
    BAD_RECIPIENT = "bad_recipient"
    TOO_MANY_WATCHES = "too_many_watches"
    NO_NAMEPLATE = "no_nameplate"
    OWN_NAMEPLATE = "own_nameplate"
    TOO_MANY_NAMEPLATES = "too_many_nameplates"
    NAMEPLATES_FULL = "nameplates_full"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__  # type: ignore[assignment]  # the text, on every Python


#: Codes after which reconnecting with the same name and key cannot help.
#: (``timeout``, ``shutting_down``, ``relay_full`` and the connection limits
#: are fatal to one connection only: the client tries again later.)
PERMANENT_CODES = frozenset({
    ErrorCode.NAME_OWNED, ErrorCode.BAD_NAME, ErrorCode.VERSION, ErrorCode.BAD_SIGNATURE,
    ErrorCode.REPLACED, ErrorCode.PROTOCOL, ErrorCode.BAD_FRAME, ErrorCode.FRAME_TOO_LARGE,
})

_BY_CODE: dict[ErrorCode, type[Refused]] = {}
_CODES = frozenset(c.value for c in ErrorCode)


class Refused(RemoteError):
    """The relay will not serve a request: what an ``error`` frame says.

    The relay raises it (its client broke a rule or hit a limit) and the
    client raises the same class when such a frame arrives. ``Refused(code,
    message)`` makes the subclass for ``code``, so ``except NameOwned`` works
    on both sides. ``fatal``: the relay closes the connection after it;
    ``permanent``: reconnecting with the same name and key cannot help;
    ``retry_after``: whole seconds until trying again can succeed, when the
    relay knows (sent as the frame's ``retry_after``).
    """

    code: ErrorCode = ErrorCode.PROTOCOL

    def __new__(cls, code: ErrorCode | str, message: str, *args: Any, **kw: Any) -> Refused:
        target = _BY_CODE.get(code, cls) if cls is Refused else cls  # type: ignore[arg-type]
        return super().__new__(target, message)

    def __init__(self, code: ErrorCode | str, message: str, *, fatal: bool = False,
                 permanent: bool | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # A code this side does not know (a newer relay's) stays its text, on
        # the base class; the relay itself only ever raises known codes
        # (tests/test_errors.py reads every one it can raise).
        self.code = ErrorCode(code) if code in _CODES else code  # type: ignore[assignment]
        self.fatal = fatal
        self.permanent = self.code in PERMANENT_CODES if permanent is None else permanent

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "code" in cls.__dict__:
            assert cls.code not in _BY_CODE, f"two classes for {cls.code}"
            _BY_CODE[cls.code] = cls

    def __reduce__(self) -> Any:  # pickling, copy: rebuild through the code
        return (Refused, (self.code, str(self)), {"fatal": self.fatal,
                                                  "permanent": self.permanent})

    @staticmethod
    def class_for(code: ErrorCode | str) -> type[Refused]:
        """The subclass for ``code``."""
        return _BY_CODE[ErrorCode(code)]


class BadFrame(Refused):
    code = ErrorCode.BAD_FRAME


class FrameTooLarge(Refused):
    code = ErrorCode.FRAME_TOO_LARGE


class TruncatedFrame(Refused):
    code = ErrorCode.TRUNCATED_FRAME


class ProtocolViolation(Refused):
    """The client broke the protocol; the relay closes the connection.

    The relay raises it with the sentence alone: ``ProtocolViolation(message)``.
    """

    code = ErrorCode.PROTOCOL

    def __new__(cls, *args: Any, **kw: Any) -> ProtocolViolation:
        return Exception.__new__(cls, args[-1])

    def __init__(self, *args: Any, fatal: bool = True, permanent: bool | None = None) -> None:
        super().__init__(ErrorCode.PROTOCOL, args[-1], fatal=fatal, permanent=permanent)


class VersionRefused(Refused):
    code = ErrorCode.VERSION


class BadNameRefused(Refused):
    code = ErrorCode.BAD_NAME


class BadSignature(Refused):
    code = ErrorCode.BAD_SIGNATURE


class NameOwned(Refused):
    code = ErrorCode.NAME_OWNED


class TooManyNames(Refused):
    code = ErrorCode.TOO_MANY_NAMES


class Replaced(Refused):
    code = ErrorCode.REPLACED


class Timeout(Refused):
    code = ErrorCode.TIMEOUT


class TooManyConnections(Refused):
    code = ErrorCode.TOO_MANY_CONNECTIONS


class RelayFull(Refused):
    code = ErrorCode.RELAY_FULL


class ShuttingDown(Refused):
    code = ErrorCode.SHUTTING_DOWN


class RateLimited(Refused):
    code = ErrorCode.RATE_LIMITED


class HandshakeLimited(Refused):
    code = ErrorCode.HANDSHAKE_LIMITED


class MailboxFullRefused(Refused):
    code = ErrorCode.MAILBOX_FULL


class StoreShareRefused(Refused):
    code = ErrorCode.STORE_SHARE


class BadRecipient(Refused):
    code = ErrorCode.BAD_RECIPIENT


class TooManyWatches(Refused):
    code = ErrorCode.TOO_MANY_WATCHES


class NoNameplate(Refused):
    code = ErrorCode.NO_NAMEPLATE


class OwnNameplate(Refused):
    code = ErrorCode.OWN_NAMEPLATE


class TooManyNameplates(Refused):
    code = ErrorCode.TOO_MANY_NAMEPLATES


class NameplatesFull(Refused):
    code = ErrorCode.NAMEPLATES_FULL
