"""Self-signed Ed25519 certificates, PEM, fingerprints, and certificate files.

``msgr serve --tls`` with no certificate files creates a self-signed
certificate and key with nothing but PyNaCl: the X.509 structure is built with
the DER encoder of :mod:`msgrlib.tls.der` (RFC 5280, with the Ed25519
algorithm of RFC 8410), and Python's ``ssl`` (OpenSSL >= 1.1.1) accepts
Ed25519 certificates. :func:`fingerprint` prints a certificate's SHA-256 the
way ``openssl x509 -fingerprint -sha256`` does, so operators can cross-check.

Errors are those of :mod:`msgrlib.tls.errors`. This module logs and prints nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from nacl.signing import SigningKey

from msgrlib.tls.der import (
    der_bit_string,
    der_boolean,
    der_explicit,
    der_implicit,
    der_integer,
    der_octet_string,
    der_oid,
    der_sequence,
    der_set,
    der_time,
    der_utf8_string,
)
from msgrlib.tls.errors import CertificateFileError, TlsError, TlsSetupError

__all__ = [
    "fingerprint",
    "generate_self_signed",
    "normalize_fingerprint",
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

#: Key and certificate file modes. The key must never be readable by others,
#: not even for the moment between creating and chmod-ing it.
KEY_FILE_MODE = 0o600
CERT_FILE_MODE = 0o644
CONFIG_DIR_MODE = 0o700

# datetime.UTC is Python 3.11+; msgr also runs on 3.10.
_UTC = timezone.utc  # noqa: UP017

_FINGERPRINT_PREFIX = "SHA256:"


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
            raise TlsSetupError(
                f"invalid hostname {host[:80]!r} for the certificate: use an ASCII DNS name "
                "(letters, digits, '-' and '.'; IDNA-encode other names)"
            )
        names.append(der_implicit(2, host.encode("ascii")))  # dNSName IA5String
    for text in ip_addresses:
        try:
            ip = ipaddress.ip_address(text.strip())
        except ValueError:
            raise TlsSetupError(f"invalid IP address {text[:80]!r} for the certificate") from None
        names.append(der_implicit(7, ip.packed))  # iPAddress OCTET STRING
    if not names:
        raise TlsSetupError("a certificate needs at least one hostname or IP address")
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
        raise TlsSetupError(f"the certificate's common name must be 1-{MAX_COMMON_NAME} characters")
    if not 1 <= days <= 100 * 366:
        raise TlsSetupError(f"certificate lifetime must be 1-{100 * 366} days, not {days}")
    if now is None:
        now = datetime.now(_UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise TlsSetupError("'now' must be a timezone-aware datetime")
    now = now.astimezone(_UTC).replace(microsecond=0)
    if isinstance(hostnames, str):  # one name, not a sequence of letters
        hostnames = [hostnames]
    if isinstance(ip_addresses, str):
        ip_addresses = [ip_addresses]
    san = _subject_alt_names(hostnames, ip_addresses)

    seed = rng(32)
    serial_bytes = rng(16)
    if len(seed) != 32 or len(serial_bytes) != 16:
        raise TlsSetupError("the random number generator returned the wrong number of bytes")
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
                raise TlsSetupError("the PEM certificate is not valid base64") from None
    raise TlsSetupError("not a certificate: expected DER or a PEM 'CERTIFICATE' block")


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
        raise TlsSetupError(
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


def check_cert_file(path: str) -> bytes:
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


def check_key_file(path: str) -> None:
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


def write_new_file(path: Path, data: bytes, mode: int) -> None:
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
        unlink_quietly(path)
        raise CertificateFileError(
            f"cannot write {path}: {err.strerror or err}", path=path
        ) from None


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
