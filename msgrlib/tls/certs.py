"""TLS without homework: self-signed Ed25519 certificates, pins and known hosts.

``msgr serve --tls`` with no certificate files creates a self-signed
certificate and key with nothing but PyNaCl: the X.509 structure is built by
the tiny DER encoder below (RFC 5280, with the Ed25519 algorithm of RFC 8410),
and Python's ``ssl`` (OpenSSL >= 1.1.1) accepts Ed25519 certificates.

A client trusts the relay in one of three ways:

* ``--cafile FILE``: ordinary X.509 verification, hostname included. A
  generated certificate is its own CA (``basicConstraints CA:TRUE``), so the
  relay's ``cert.pem`` is a valid ``--cafile``.
* ``--pin SHA256:AB:CD:...``: the SHA-256 fingerprint of the certificate must
  match; :func:`fingerprint` prints it the way ``openssl x509 -fingerprint
  -sha256`` does, so operators can cross-check.
* trust on first use: the fingerprint is remembered per relay address in a
  :class:`KnownHosts` file (like SSH's ``known_hosts``) and a changed
  certificate is refused loudly.

Without ``--cafile`` the TLS layer does not verify anything
(:func:`client_context`); the client must call :func:`verify_peer` right after
the handshake and before it sends a single application byte.

Exceptions (all under :class:`errors.MsgrError`)::

    TlsError                    bad fingerprint text, bad generation arguments
    ├── CertificateFileError    a certificate or key file is missing, unreadable or invalid
    ├── KnownHostsError         the known_hosts file is corrupt or cannot be written
    ├── UnknownCertificate      remote: the relay's certificate does not verify (--cafile)
    ├── PinMismatch             remote: the relay's fingerprint is not the --pin
    └── CertificateChanged      remote: the relay's fingerprint is not the remembered one

This module logs and prints nothing; the CLI tells the user what happened
(for example "trusting new certificate ... (first use)" when
:func:`verify_peer` returns ``"new"``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
import ssl
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from nacl.signing import SigningKey

from msgrlib.errors import MsgrError

__all__ = [
    "CertificateChanged",
    "CertificateFileError",
    "KnownHosts",
    "KnownHostsError",
    "PinMismatch",
    "TlsError",
    "UnknownCertificate",
    "client_context",
    "default_known_hosts_path",
    "ensure_certificate",
    "fingerprint",
    "generate_self_signed",
    "normalize_fingerprint",
    "peer_certificate",
    "relay_address",
    "server_context",
    "unknown_certificate",
    "verify_peer",
]

# --------------------------------------------------------------------------
# Limits and defaults

#: Validity of a generated certificate. 825 days is the longest lifetime
#: Apple's TLS stack accepts for a server certificate; anything longer only
#: makes a leaked key useful for longer.
DEFAULT_DAYS = 825

#: notBefore is set this far in the past so that a client whose clock is a
#: little behind the relay's does not reject a certificate made a moment ago.
CLOCK_SKEW = timedelta(hours=1)

#: Largest certificate, key or known_hosts file we read. Real ones are a few
#: KiB; the limit keeps a wrong path (a log file, /dev/zero) from eating memory.
MAX_FILE_SIZE = 1024 * 1024

#: RFC 5280 upper bound for a commonName (ub-common-name).
MAX_COMMON_NAME = 64

#: Longest relay address stored in known_hosts (a DNS name is at most 253
#: characters, plus brackets and a port).
MAX_ADDRESS_LENGTH = 300

#: Key and certificate file modes. The key must never be readable by others,
#: not even for the moment between creating and chmod-ing it.
KEY_FILE_MODE = 0o600
CERT_FILE_MODE = 0o644
CONFIG_DIR_MODE = 0o700

# datetime.UTC is Python 3.11+; msgr also runs on 3.10.
_UTC = timezone.utc  # noqa: UP017

_FINGERPRINT_PREFIX = "SHA256:"
_KNOWN_HOSTS_HEADER = (
    "# msgr known relays: one 'address fingerprint' per line, written on first use.\n"
    "# Delete a relay's line to forget its certificate.\n"
)


# --------------------------------------------------------------------------
# Errors


class TlsError(MsgrError):
    """Base of every TLS and certificate error; also bad fingerprint text."""

    code = "tls"


class CertificateFileError(TlsError):
    """A certificate or key file is missing, unreadable or not valid.

    ``path`` is the file at fault (or ``None`` when it is the pair).
    """

    code = "cert_file"

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


class KnownHostsError(TlsError):
    """The known_hosts file is corrupt, unreadable or cannot be written.

    ``line`` is the 1-based line number of a corrupt line, else ``None``.
    """

    code = "known_hosts"

    def __init__(self, message: str, *, path: str, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class UnknownCertificate(TlsError):
    """The relay's certificate could not be verified, or there is no way to trust it."""

    code = "cert_unknown"
    remote = True

    def __init__(self, message: str, *, address: str, cafile: str | None = None) -> None:
        super().__init__(message)
        self.address = address
        self.cafile = cafile


class PinMismatch(TlsError):
    """The relay presented a certificate whose fingerprint is not the ``--pin``."""

    code = "pin_mismatch"
    remote = True

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


class CertificateChanged(TlsError):
    """The relay's fingerprint differs from the one remembered on first use.

    ``str(err)`` is a loud, several-line warning in the style of SSH's
    "REMOTE HOST IDENTIFICATION HAS CHANGED"; the attributes carry the data.
    """

    code = "cert_changed"
    remote = True

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


# --------------------------------------------------------------------------
# A tiny DER encoder (X.690), just what a certificate needs


def der_length(n: int) -> bytes:
    """Encode a DER length: short form below 128, else the minimal long form."""
    if n < 0:
        raise ValueError("negative DER length")
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der_tlv(tag: int, content: bytes) -> bytes:
    """One DER element: tag byte, length, content."""
    return bytes([tag]) + der_length(len(content)) + content


def der_integer(n: int) -> bytes:
    """INTEGER in minimal two's complement (a 0x00 prefix when the high bit is set)."""
    magnitude = n if n >= 0 else ~n
    return der_tlv(0x02, n.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True))


def der_boolean(value: bool) -> bytes:
    """BOOLEAN; DER requires 0xFF for true."""
    return der_tlv(0x01, b"\xff" if value else b"\x00")


def der_sequence(*items: bytes) -> bytes:
    """SEQUENCE of already-encoded elements, in the given order."""
    return der_tlv(0x30, b"".join(items))


def der_set(*items: bytes) -> bytes:
    """SET OF: DER sorts the encoded elements."""
    return der_tlv(0x31, b"".join(sorted(items)))


def der_oid(dotted: str) -> bytes:
    """OBJECT IDENTIFIER from its dotted form, e.g. ``"1.3.101.112"``."""
    arcs = [int(part) for part in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39):
        raise ValueError(f"invalid OID {dotted!r}")
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return der_tlv(0x06, bytes(body))


def der_utf8_string(text: str) -> bytes:
    return der_tlv(0x0C, text.encode("utf-8"))


def der_octet_string(data: bytes) -> bytes:
    return der_tlv(0x04, data)


def der_bit_string(data: bytes, *, unused_bits: int = 0) -> bytes:
    """BIT STRING; ``unused_bits`` trailing bits of the last byte are padding."""
    if not 0 <= unused_bits <= 7 or (unused_bits and not data):
        raise ValueError("invalid unused bit count")
    return der_tlv(0x03, bytes([unused_bits]) + data)


def der_time(when: datetime) -> bytes:
    """UTCTime for years 1950-2049, else GeneralizedTime (RFC 5280 4.1.2.5), to the second."""
    when = when.astimezone(_UTC)
    if 1950 <= when.year < 2050:
        return der_tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return der_tlv(0x18, f"{when.year:04d}{when.strftime('%m%d%H%M%S')}Z".encode("ascii"))


def der_explicit(number: int, content: bytes) -> bytes:
    """[number] EXPLICIT: a constructed context tag around an encoded element."""
    return der_tlv(0xA0 | number, content)


def der_implicit(number: int, content: bytes) -> bytes:
    """[number] IMPLICIT on a primitive type: a context tag replacing its tag."""
    return der_tlv(0x80 | number, content)


# --------------------------------------------------------------------------
# Certificate generation

_OID_ED25519 = "1.3.101.112"  # RFC 8410 id-Ed25519
_OID_COMMON_NAME = "2.5.4.3"
_OID_SUBJECT_KEY_ID = "2.5.29.14"
_OID_KEY_USAGE = "2.5.29.15"
_OID_SUBJECT_ALT_NAME = "2.5.29.17"
_OID_BASIC_CONSTRAINTS = "2.5.29.19"
_OID_AUTHORITY_KEY_ID = "2.5.29.35"

# RFC 8410: the parameters are absent, not NULL.
_ED25519_ALGORITHM = der_sequence(der_oid(_OID_ED25519))

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
# An ASCII DNS name, optionally with a leading wildcard label.
_HOSTNAME_RE = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*\Z")


def _name(common_name: str) -> bytes:
    """A Name with a single commonName RDN."""
    attribute = der_sequence(der_oid(_OID_COMMON_NAME), der_utf8_string(common_name))
    return der_sequence(der_set(attribute))


def _extension(oid: str, value: bytes, *, critical: bool = False) -> bytes:
    parts = [der_oid(oid)]
    if critical:  # DEFAULT FALSE must be omitted in DER
        parts.append(der_boolean(True))
    parts.append(der_octet_string(value))
    return der_sequence(*parts)


def _subject_alt_names(hostnames: Iterable[str], ip_addresses: Iterable[str]) -> bytes:
    names = []
    for host in hostnames:
        host = host.strip().rstrip(".").lower()
        if len(host) > 253 or not _HOSTNAME_RE.match(host):
            raise TlsError(
                f"invalid hostname {host[:80]!r} for the certificate: use an ASCII DNS name "
                "(letters, digits, '-' and '.'; IDNA-encode other names)"
            )
        names.append(der_implicit(2, host.encode("ascii")))  # dNSName IA5String
    for text in ip_addresses:
        try:
            ip = ipaddress.ip_address(text.strip())
        except ValueError:
            raise TlsError(f"invalid IP address {text[:80]!r} for the certificate") from None
        names.append(der_implicit(7, ip.packed))  # iPAddress OCTET STRING
    if not names:
        raise TlsError("a certificate needs at least one hostname or IP address")
    return der_sequence(*names)


def generate_self_signed(
    *,
    common_name: str = "msgr relay",
    hostnames: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1", "::1"),
    days: int = DEFAULT_DAYS,
    rng: Callable[[int], bytes] = os.urandom,
    now: datetime | None = None,
) -> tuple[bytes, bytes]:
    """Create a self-signed Ed25519 certificate and its key; return ``(cert_pem, key_pem)``.

    The certificate is X.509 v3 (RFC 5280) with the RFC 8410 Ed25519
    algorithm, subject = issuer = ``CN=common_name``, valid from
    ``now - CLOCK_SKEW`` for ``days`` days, with extensions basicConstraints
    CA:TRUE (critical, so the certificate is its own ``--cafile`` trust
    anchor), keyUsage digitalSignature + keyCertSign (critical),
    subjectAltName (``hostnames`` and ``ip_addresses``), and subject and
    authority key identifiers (RFC 7093 method 1: SHA-256 of the key, 160 bits).

    The key is PKCS#8 ``PRIVATE KEY`` (RFC 8410 OneAsymmetricKey v1).

    ``rng`` is called twice, for the 32-byte key seed and then for 16 bytes of
    serial number; ``now`` (timezone-aware) defaults to the current time.
    Both are parameters so that tests can pin them: the output is then fully
    deterministic, Ed25519 signatures being deterministic.

    Raises :class:`TlsError` for a bad name, address, lifetime or ``now``.
    """
    if not common_name or len(common_name) > MAX_COMMON_NAME:
        raise TlsError(f"the certificate's common name must be 1-{MAX_COMMON_NAME} characters")
    if not 1 <= days <= 100 * 366:
        raise TlsError(f"certificate lifetime must be 1-{100 * 366} days, not {days}")
    if now is None:
        now = datetime.now(_UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise TlsError("'now' must be a timezone-aware datetime")
    now = now.astimezone(_UTC).replace(microsecond=0)
    if isinstance(hostnames, str):  # one name, not a sequence of letters
        hostnames = [hostnames]
    if isinstance(ip_addresses, str):
        ip_addresses = [ip_addresses]
    san = _subject_alt_names(hostnames, ip_addresses)

    seed = rng(32)
    serial_bytes = rng(16)
    if len(seed) != 32 or len(serial_bytes) != 16:
        raise TlsError("the random number generator returned the wrong number of bytes")
    seed = bytes(seed)
    signing_key = SigningKey(seed)
    public_key = bytes(signing_key.verify_key)
    # Positive and non-zero as RFC 5280 requires; 127 random bits.
    serial = (int.from_bytes(serial_bytes, "big") >> 1) or 1
    key_id = hashlib.sha256(public_key).digest()[:20]

    extensions = [
        _extension(_OID_BASIC_CONSTRAINTS, der_sequence(der_boolean(True)), critical=True),
        # digitalSignature (bit 0) and keyCertSign (bit 5): 1000 01xx, 2 unused bits.
        _extension(_OID_KEY_USAGE, der_bit_string(b"\x84", unused_bits=2), critical=True),
        _extension(_OID_SUBJECT_ALT_NAME, san),
        _extension(_OID_SUBJECT_KEY_ID, der_octet_string(key_id)),
        # Optional for a self-signed certificate, but OpenSSL's strict mode
        # (Python 3.13's default context) wants it on CA certificates.
        _extension(_OID_AUTHORITY_KEY_ID, der_sequence(der_implicit(0, key_id))),
    ]
    name = _name(common_name)
    tbs = der_sequence(
        der_explicit(0, der_integer(2)),  # version v3
        der_integer(serial),
        _ED25519_ALGORITHM,
        name,
        der_sequence(der_time(now - CLOCK_SKEW), der_time(now + timedelta(days=days))),
        name,
        der_sequence(_ED25519_ALGORITHM, der_bit_string(public_key)),
        der_explicit(3, der_sequence(*extensions)),
    )
    signature = signing_key.sign(tbs).signature
    cert_der = der_sequence(tbs, _ED25519_ALGORITHM, der_bit_string(signature))
    key_der = der_sequence(
        der_integer(0),  # v1: no public key attribute
        _ED25519_ALGORITHM,
        der_octet_string(der_octet_string(seed)),  # CurvePrivateKey inside privateKey
    )
    return _pem("CERTIFICATE", cert_der), _pem("PRIVATE KEY", key_der)


def _pem(label: str, der: bytes) -> bytes:
    text = base64.b64encode(der).decode("ascii")
    body = "\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode("ascii")


_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


def _pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """Every PEM block in ``data`` as ``(label, body)``, bodies not yet decoded."""
    return [(m.group(1).decode("ascii"), m.group(2)) for m in _PEM_RE.finditer(data)]


def _certificate_der(cert: bytes) -> bytes:
    """The DER of ``cert`` (DER, or PEM whose first CERTIFICATE block is used)."""
    cert = bytes(cert)
    # DER first: a certificate from the network is DER and must be hashed as
    # it is, even if its fields contain text that looks like a PEM block.
    if cert[:1] == b"\x30":
        return cert
    for label, body in _pem_blocks(cert):
        if label == "CERTIFICATE":
            try:
                return base64.b64decode(b"".join(body.split()), validate=True)
            except binascii.Error:
                raise TlsError("the PEM certificate is not valid base64") from None
    raise TlsError("not a certificate: expected DER or a PEM 'CERTIFICATE' block")


# --------------------------------------------------------------------------
# Fingerprints


def fingerprint(cert: bytes) -> str:
    """``"SHA256:AB:CD:..."``, the SHA-256 of the certificate's DER.

    ``cert`` is DER or PEM (the first certificate of a PEM chain). The hex
    part is what ``openssl x509 -noout -fingerprint -sha256`` prints.
    Raises :class:`TlsError` if ``cert`` is neither.
    """
    digest = hashlib.sha256(_certificate_der(cert)).hexdigest().upper()
    return _FINGERPRINT_PREFIX + ":".join(digest[i : i + 2] for i in range(0, 64, 2))


_FINGERPRINT_PREFIX_RE = re.compile(r"(sha-?256(\s+fingerprint)?\s*[:=])", re.IGNORECASE)


def normalize_fingerprint(text: str) -> str:
    """Canonical ``"SHA256:AB:CD:..."`` form of a fingerprint typed or pasted by a user.

    Accepts an optional ``SHA256:`` prefix (or openssl's ``sha256
    Fingerprint=``), colons or spaces between pairs, any case. Raises
    :class:`TlsError` unless 64 hex digits remain.
    """
    rest = text.strip()
    match = _FINGERPRINT_PREFIX_RE.match(rest)
    if match:
        rest = rest[match.end() :]
    digits = re.sub(r"[\s:]", "", rest)
    if len(digits) != 64 or not re.fullmatch(r"[0-9A-Fa-f]+", digits):
        shown = text.strip()[:120]
        raise TlsError(
            f"invalid fingerprint {shown!r}: expected a SHA-256 fingerprint, 64 hex digits "
            "such as SHA256:AB:CD:... (as printed by the relay or by "
            "'openssl x509 -noout -fingerprint -sha256 -in cert.pem')"
        )
    digits = digits.upper()
    return _FINGERPRINT_PREFIX + ":".join(digits[i : i + 2] for i in range(0, 64, 2))


# --------------------------------------------------------------------------
# Files: reading, creating, checking


def _read_file(path: str, *, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        raise CertificateFileError(f"{what} {path} does not exist", path=path) from None
    except IsADirectoryError:
        raise CertificateFileError(
            f"{what} {path} is a directory, not a file", path=path
        ) from None
    except OSError as err:
        raise CertificateFileError(
            f"cannot read {what} {path}: {err.strerror or err}", path=path
        ) from None
    if len(data) > MAX_FILE_SIZE:
        raise CertificateFileError(
            f"{what} {path} is larger than {MAX_FILE_SIZE} bytes; is it the right file?",
            path=path,
        )
    return data


def _check_cert_file(path: str) -> bytes:
    """Return the DER of the first certificate in the PEM file ``path``."""
    data = _read_file(path, what="certificate file")
    if not any(label == "CERTIFICATE" for label, _ in _pem_blocks(data)):
        raise CertificateFileError(
            f"certificate file {path} contains no PEM certificate "
            "('-----BEGIN CERTIFICATE-----'); check the path",
            path=path,
        )
    try:
        return _certificate_der(data)
    except TlsError as err:
        raise CertificateFileError(f"certificate file {path}: {err}", path=path) from None


def _check_key_file(path: str) -> None:
    data = _read_file(path, what="key file")
    labels = [label for label, _ in _pem_blocks(data)]
    if not any(label.endswith("PRIVATE KEY") for label in labels):
        raise CertificateFileError(
            f"key file {path} contains no PEM private key ('-----BEGIN PRIVATE KEY-----'); "
            "check the path",
            path=path,
        )
    if "ENCRYPTED PRIVATE KEY" in labels or b"Proc-Type: 4,ENCRYPTED" in data:
        raise CertificateFileError(
            f"key file {path} is protected by a passphrase, which msgr cannot ask for; "
            f"write an unencrypted copy (openssl pkey -in {path} -out NEW_FILE) and keep it "
            "readable by its owner only",
            path=path,
        )


def _refuse_password() -> str:
    # load_cert_chain would otherwise prompt on the terminal, which hangs a
    # relay started as a service.
    raise CertificateFileError(
        "the key file is protected by a passphrase, which msgr cannot ask for"
    )


def server_context(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
) -> ssl.SSLContext:
    """A server ``SSLContext`` (TLS 1.2 minimum) loaded with the certificate chain and key.

    Raises :class:`CertificateFileError`, naming the path, if a file is
    missing, unreadable, not PEM, passphrase-protected, or if the key does
    not belong to the certificate.
    """
    cert_path, key_path = os.fspath(cert_path), os.fspath(key_path)
    _check_cert_file(cert_path)
    _check_key_file(key_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # TLS 1.2 renegotiation lets a client make the server redo expensive
    # work on demand, and would let a write wait for the peer (tlsconn.py).
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(cert_path, key_path, password=_refuse_password)
    except CertificateFileError as err:
        raise CertificateFileError(f"{err} ({key_path})", path=key_path) from None
    except ssl.SSLError as err:
        if err.reason == "KEY_VALUES_MISMATCH":
            reason = f"the key in {key_path} does not belong to the certificate in {cert_path}"
        else:
            reason = (
                f"OpenSSL rejected certificate {cert_path} with key {key_path}: "
                f"{err.reason or err}"
            )
        raise CertificateFileError(
            f"{reason}; fix or replace the files (or move both away to have msgr create "
            "a new self-signed pair)"
        ) from None
    except OSError as err:  # the files changed since we checked them
        raise CertificateFileError(
            f"cannot load {cert_path} and {key_path}: {err.strerror or err}"
        ) from None
    return context


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (it must not exist) with exactly ``mode`` and write ``data``.

    The mode is given to ``open(2)`` itself, so the file is never more
    readable than ``mode``; ``fchmod`` then restores bits a strict umask removed.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise CertificateFileError(
            f"{path} appeared while msgr was creating it; is another relay starting?",
            path=path,
        ) from None
    except OSError as err:
        raise CertificateFileError(
            f"cannot create {path}: {err.strerror or err}; check the directory's "
            "permissions or choose another path",
            path=path,
        ) from None
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        _unlink_quietly(path)
        raise CertificateFileError(
            f"cannot write {path}: {err.strerror or err}", path=path
        ) from None


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def ensure_certificate(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], **gen_kwargs: object
) -> tuple[bool, str]:
    """Make sure a certificate and key exist; return ``(created, fingerprint)``.

    If both files exist they are loaded as :func:`server_context` would
    (nothing is written) and ``created`` is False. If neither exists, a pair
    from :func:`generate_self_signed` (given ``gen_kwargs``) is written: the
    key created with mode 0o600 from the start, the certificate 0o644,
    missing parent directories 0o700. Raises :class:`CertificateFileError`
    if only one of the two exists, or a file cannot be read, checked or written.
    """
    cert, key = Path(cert_path), Path(key_path)
    cert_exists, key_exists = os.path.lexists(cert), os.path.lexists(key)
    if cert_exists and key_exists:
        server_context(cert, key)
        return False, fingerprint(_check_cert_file(os.fspath(cert)))
    if cert_exists or key_exists:
        present, missing = (cert, key) if cert_exists else (key, cert)
        raise CertificateFileError(
            f"found {present} but not {missing}: a certificate and its key go together. "
            f"Restore {missing}, or move {present} away to have msgr create a new "
            "self-signed pair (clients that trusted the old one will then refuse the relay "
            "until told about the new fingerprint)",
            path=missing,
        )
    cert_pem, key_pem = generate_self_signed(**gen_kwargs)  # type: ignore[arg-type]
    for parent in {cert.parent, key.parent}:
        try:
            parent.mkdir(mode=CONFIG_DIR_MODE, parents=True, exist_ok=True)
        except OSError as err:
            raise CertificateFileError(
                f"cannot create directory {parent}: {err.strerror or err}", path=parent
            ) from None
    _write_new_file(key, key_pem, KEY_FILE_MODE)
    try:
        _write_new_file(cert, cert_pem, CERT_FILE_MODE)
    except BaseException:
        _unlink_quietly(key)  # never leave half a pair behind
        raise
    return True, fingerprint(cert_pem)


def client_context(*, cafile: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A client ``SSLContext``, TLS 1.2 minimum.

    With ``cafile``: the relay's chain and hostname are verified against the
    certificates in ``cafile``, any of which may be a trust anchor (partial
    chains allowed, so a relay's own non-CA certificate works too). Failures
    surface as ``ssl.SSLCertVerificationError`` during the handshake; turn
    them into :class:`UnknownCertificate` with :func:`unknown_certificate`.

    Without ``cafile``: no verification at the TLS layer. The caller MUST
    check the certificate with :func:`verify_peer` after the handshake and
    before sending anything.

    Raises :class:`CertificateFileError` if ``cafile`` cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cafile is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    path = os.fspath(cafile)
    _check_cert_file(path)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as err:
        raise CertificateFileError(
            f"cannot use {path} as --cafile: {getattr(err, 'reason', None) or err}", path=path
        ) from None
    return context


def unknown_certificate(
    err: ssl.SSLCertVerificationError,
    *,
    address: str,
    cafile: str | os.PathLike[str] | None = None,
) -> UnknownCertificate:
    """Translate a failed handshake verification into :class:`UnknownCertificate`.

    Use as ``raise unknown_certificate(err, address=..., cafile=...) from err``.
    """
    reason = err.verify_message or err.reason or str(err)
    cafile_text = None if cafile is None else os.fspath(cafile)
    against = f" against {cafile_text}" if cafile_text else ""
    return UnknownCertificate(
        f"cannot verify the certificate of relay {address}{against}: {reason}. "
        "If the relay uses msgr's self-signed certificate, pass that certificate file with "
        "--cafile, or check its fingerprint with the operator and pass it with --pin",
        address=address,
        cafile=cafile_text,
    )


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes:
    """The DER certificate the peer presented (asyncio: ``get_extra_info("ssl_object")``).

    Works whether or not the TLS layer verified it. Raises :class:`TlsError`
    if there is no TLS session or the peer presented no certificate.
    """
    der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
    if not der:
        raise TlsError("the relay presented no TLS certificate")
    return der


# --------------------------------------------------------------------------
# Trust: pins and known hosts


def relay_address(host: str, port: int) -> str:
    """The ``host:port`` key of a relay, as stored in known_hosts.

    Hostnames are lower-cased; IPv6 addresses are bracketed (``[::1]:7000``).
    """
    host = host.strip().strip("[]").lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_address(address: str) -> str:
    address = address.strip().lower()
    if (
        not address
        or len(address) > MAX_ADDRESS_LENGTH
        or address.startswith("#")
        or any(ch.isspace() or not ch.isprintable() for ch in address)
    ):
        raise TlsError(f"invalid relay address {address[:80]!r} for known_hosts")
    return address


def verify_peer(
    cert_der: bytes,
    *,
    address: str,
    pin: str | None = None,
    known_hosts: KnownHosts | None = None,
) -> tuple[str, str]:
    """Decide whether to trust the relay's certificate; return ``(fingerprint, how)``.

    With ``pin``, the fingerprint must equal it (``how = "pinned"``) and
    known_hosts is neither read nor written. Otherwise, with ``known_hosts``:
    a remembered fingerprint must match (``"known"``), an unknown address is
    remembered (``"new"``: the caller should say it is trusting a new
    certificate on first use). ``address`` is ``relay_address(host, port)``.

    Raises :class:`PinMismatch`, :class:`CertificateChanged`,
    :class:`UnknownCertificate` (neither pin nor known_hosts given),
    :class:`KnownHostsError`, or :class:`TlsError` for a malformed pin.
    """
    address = _check_address(address)
    if bytes(cert_der[:1]) != b"\x30":
        raise TlsError("verify_peer needs the certificate in DER form")
    presented = fingerprint(cert_der)
    if pin is not None:
        expected = normalize_fingerprint(pin)
        if not hmac.compare_digest(expected, presented):
            raise PinMismatch(address=address, expected=expected, presented=presented)
        return presented, "pinned"
    if known_hosts is None:
        raise UnknownCertificate(
            f"no way to trust the certificate of relay {address} ({presented}): "
            "pass --cafile or --pin",
            address=address,
        )
    entry = known_hosts._entry(address)
    if entry is None:
        known_hosts.remember(address, presented)
        return presented, "new"
    expected, line = entry
    if not hmac.compare_digest(expected, presented):
        raise CertificateChanged(
            address=address,
            expected=expected,
            presented=presented,
            path=os.fspath(known_hosts.path),
            line=line,
        )
    return presented, "known"


def default_known_hosts_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/msgr/known_hosts``, else ``~/.config/msgr/known_hosts``.

    A relative ``XDG_CONFIG_HOME`` is ignored, as the XDG spec asks.
    """
    config = environ.get("XDG_CONFIG_HOME", "")
    if not config or not os.path.isabs(config):
        home = environ.get("HOME") or os.path.expanduser("~")
        config = os.path.join(home, ".config")
    return Path(config) / "msgr" / "known_hosts"


class KnownHosts:
    """Fingerprints remembered per relay address, one ``address fingerprint`` per line.

    Blank lines and lines starting with ``#`` are kept as they are. The file
    is re-read on every call (it is tiny, and another client may have
    changed it) and rewritten atomically: a new 0o600 file next to it, then
    ``os.replace``. A corrupt file is never "repaired" silently: every call
    raises :class:`KnownHostsError` naming the line until the user fixes it.
    Two clients remembering at the same moment may lose one entry; it is
    then simply remembered again on the next connection.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def lookup(self, address: str) -> str | None:
        """The remembered fingerprint of ``address``, or None."""
        entry = self._entry(_check_address(address))
        return None if entry is None else entry[0]

    def remember(self, address: str, fp: str) -> None:
        """Store ``fp`` for ``address``, replacing any previous fingerprint."""
        address = _check_address(address)
        fp = normalize_fingerprint(fp)
        lines, entries = self._load()
        new_line = f"{address} {fp}\n"
        if address in entries:
            first = entries[address][1] - 1
            lines = [
                line
                for number, line in enumerate(lines)
                if number == first or _line_address(line) != address
            ]
            lines[first] = new_line
        else:
            if not lines:
                lines = [_KNOWN_HOSTS_HEADER]
            elif not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines.append(new_line)
        self._write(lines)

    def forget(self, address: str) -> bool:
        """Remove ``address``; return whether it was there."""
        address = _check_address(address)
        lines, entries = self._load()
        if address not in entries:
            return False
        self._write([line for line in lines if _line_address(line) != address])
        return True

    def _entry(self, address: str) -> tuple[str, int] | None:
        """``(fingerprint, line number)`` of an already-checked address, or None."""
        return self._load()[1].get(address)

    def _discards(self) -> bool:
        """Whether the path is the null device (``--known-hosts /dev/null``:
        remember nothing). Any other path that exists must be a regular
        file: msgr never replaces a device, a pipe or a directory with one."""
        path = os.fspath(self.path)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise KnownHostsError(
                f"cannot read known hosts file {path}: {err.strerror or err}", path=path
            ) from None
        if stat.S_ISREG(info.st_mode):
            return False
        try:
            if os.path.samefile(path, os.devnull):
                return True
        except OSError:
            pass
        raise KnownHostsError(
            f"known hosts file {path} is not a regular file; choose a file path "
            f"(or {os.devnull} to remember nothing)",
            path=path,
        )

    def _load(self) -> tuple[list[str], dict[str, tuple[str, int]]]:
        """The file's lines (with their newlines) and ``{address: (fp, line)}``."""
        path = os.fspath(self.path)
        if self._discards():
            return [], {}
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return [], {}
        except OSError as err:
            raise KnownHostsError(
                f"cannot read known hosts file {path}: {err.strerror or err}", path=path
            ) from None
        if len(data) > MAX_FILE_SIZE:
            raise KnownHostsError(
                f"known hosts file {path} is larger than {MAX_FILE_SIZE} bytes", path=path
            )
        lines: list[str] = []
        entries: dict[str, tuple[str, int]] = {}
        for number, raw in enumerate(data.splitlines(keepends=True), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self._corrupt(number, "it is not UTF-8 text") from None
            lines.append(line)
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 2:
                raise self._corrupt(number, "expected 'address fingerprint'")
            try:
                address = _check_address(fields[0])
                fp = normalize_fingerprint(fields[1])
            except TlsError as err:
                raise self._corrupt(number, str(err)) from None
            if address in entries and entries[address][0] != fp:
                raise self._corrupt(
                    number,
                    f"{address} is also on line {entries[address][1]} with another fingerprint",
                )
            entries.setdefault(address, (fp, number))
        return lines, entries

    def _corrupt(self, number: int, reason: str) -> KnownHostsError:
        path = os.fspath(self.path)
        return KnownHostsError(
            f"known hosts file {path}, line {number} is corrupt ({reason}); "
            "fix or delete that line",
            path=path,
            line=number,
        )

    def _write(self, lines: list[str]) -> None:
        if self._discards():
            return
        # Write through a symlink (dotfile managers) rather than replacing it.
        target = Path(os.path.realpath(self.path))
        try:
            if not target.parent.exists():
                target.parent.mkdir(mode=CONFIG_DIR_MODE, parents=True, exist_ok=True)
            # mkstemp creates the file 0o600 with O_EXCL.
            fd, temp = tempfile.mkstemp(prefix=".known_hosts.", dir=target.parent)
        except OSError as err:
            raise KnownHostsError(
                f"cannot write known hosts file {target}: {err.strerror or err}",
                path=os.fspath(self.path),
            ) from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.writelines(lines)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, target)
        except OSError as err:
            _unlink_quietly(Path(temp))
            raise KnownHostsError(
                f"cannot write known hosts file {target}: {err.strerror or err}",
                path=os.fspath(self.path),
            ) from None


def _line_address(line: str) -> str | None:
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        return None
    return fields[0].lower()
