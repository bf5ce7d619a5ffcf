"""The relay's and the client's ``SSLContext``, and the client's trust decision.

A client trusts the relay in one of three ways:

* ``--cafile FILE``: ordinary X.509 verification, hostname included. A
  generated certificate is its own CA (``basicConstraints CA:TRUE``), so the
  relay's ``cert.pem`` is a valid ``--cafile``.
* ``--pin SHA256:AB:CD:...``: the SHA-256 fingerprint of the certificate must
  match (:func:`msgrlib.tls.x509.fingerprint`).
* trust on first use: the fingerprint is remembered per relay address in a
  :class:`msgrlib.tls.known_hosts.KnownHosts` file (like SSH's
  ``known_hosts``) and a changed certificate is refused loudly.

Without ``--cafile`` the TLS layer does not verify anything
(:func:`client_context`); the client must call :func:`verify_peer` right after
the handshake and before it sends a single application byte.

Errors are those of :mod:`msgrlib.tls.errors`. This module logs and prints
nothing; the CLI tells the user what happened (for example "trusting new
certificate ... (first use)" when :func:`verify_peer` returns ``"new"``).
"""

from __future__ import annotations

import hmac
import os
import ssl
from pathlib import Path

from msgrlib.tls.errors import (
    CertificateChanged,
    CertificateFileError,
    PinMismatch,
    TlsSetupError,
    UnknownCertificate,
)
from msgrlib.tls.known_hosts import KnownHosts, check_address
from msgrlib.tls.x509 import (
    CERT_FILE_MODE,
    CONFIG_DIR_MODE,
    KEY_FILE_MODE,
    check_cert_file,
    check_key_file,
    fingerprint,
    generate_self_signed,
    normalize_fingerprint,
    unlink_quietly,
    write_new_file,
)

__all__ = [
    "ResumingContext",
    "TLS12_CIPHERS",
    "client_context",
    "ensure_certificate",
    "peer_certificate",
    "served_fingerprint",
    "server_context",
    "unknown_certificate",
    "verify_peer",
]

#: The only TLS 1.2 suites either side offers or accepts: ephemeral ECDH key
#: exchange (forward secrecy) with an AEAD cipher (AES-GCM or
#: ChaCha20-Poly1305). CBC suites (Lucky13-style padding oracles; scanners rate
#: them "obsolete") and static RSA key exchange are never negotiated. The
#: ECDSA entries serve msgr's own Ed25519 certificate; the RSA ones an
#: operator's RSA certificate. TLS 1.3 suites are all AEAD and left as OpenSSL
#: has them. ``!aNULL:!PSK`` keep anonymous and pre-shared-key suites out.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!PSK"


def _harden(context: ssl.SSLContext) -> None:
    """TLS 1.2 minimum, AEAD suites only; the same rules on both sides."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    # TLS 1.2 renegotiation lets a peer make the other redo expensive work on
    # demand, and would let a write wait for the peer (tlsconn.py).
    context.options |= ssl.OP_NO_RENEGOTIATION


def _refuse_password() -> str:
    # load_cert_chain would otherwise prompt on the terminal, which hangs a
    # relay started as a service.
    raise CertificateFileError(
        "the key file is protected by a passphrase, which msgr cannot ask for"
    )


def server_context(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
) -> ssl.SSLContext:
    """A server ``SSLContext`` (TLS 1.2 minimum, AEAD suites only) with the chain and key.

    Raises :class:`CertificateFileError`, naming the path, if a file is
    missing, unreadable, not PEM, passphrase-protected, or if the key does
    not belong to the certificate.
    """
    cert_path, key_path = os.fspath(cert_path), os.fspath(key_path)
    check_cert_file(cert_path)
    check_key_file(key_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
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
        return False, fingerprint(check_cert_file(os.fspath(cert)))
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
    write_new_file(key, key_pem, KEY_FILE_MODE)
    try:
        write_new_file(cert, cert_pem, CERT_FILE_MODE)
    except BaseException:
        unlink_quietly(key)  # never leave half a pair behind
        raise
    return True, fingerprint(cert_pem)


class ResumingContext(ssl.SSLContext):
    """A client context that offers its last TLS session ticket on the next connection.

    msgr keeps one per relay address (a :class:`~msgrlib.client.connection.ChatClient`
    talks to one relay), so a ticket is only ever offered to the relay that
    issued it. :meth:`remember` keeps the session of a connection once the
    relay has sent its tickets (after ``welcome`` is enough: TLS 1.3 tickets
    come right after the handshake); :meth:`wrap_bio`, which asyncio's TLS
    layer calls for every connection, offers it. A relay that no longer knows
    the ticket's key (restarted) just runs a full handshake.

    The ticket lives in this object only: ``ssl.SSLSession`` cannot be
    pickled, and nothing writes it anywhere (SECURITY.md, "TLS session
    resumption"). OpenSSL's clients offer only ``psk_dhe_ke``: a resumed
    handshake still runs an ephemeral key exchange, so forward secrecy holds.
    The certificate checks (:func:`verify_peer`) still run on a resumed
    connection, against the certificate of the handshake the ticket came from.
    """

    #: The ticket to offer next, or None.
    session: ssl.SSLSession | None = None

    def remember(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> None:
        """Keep the session of this connection to offer next time."""
        session = None if ssl_object is None else ssl_object.session
        if session is not None and session.has_ticket:
            self.session = session

    def forget(self) -> None:
        self.session = None

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 server_side: bool = False, server_hostname: str | bytes | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        if session is None and not server_side:
            session = self.session
        return super().wrap_bio(incoming, outgoing, server_side=server_side,
                                server_hostname=server_hostname, session=session)


def client_context(*, cafile: str | os.PathLike[str] | None = None) -> ResumingContext:
    """A client ``SSLContext``, TLS 1.2 minimum, AEAD suites only (:data:`TLS12_CIPHERS`).

    With ``cafile``: the relay's chain and hostname are verified against the
    certificates in ``cafile``, any of which may be a trust anchor (partial
    chains allowed, so a relay's own non-CA certificate works too). Failures
    surface as ``ssl.SSLCertVerificationError`` during the handshake; turn
    them into :class:`UnknownCertificate` with :func:`unknown_certificate`.

    Without ``cafile``: no verification at the TLS layer. The caller MUST
    check the certificate with :func:`verify_peer` after the handshake and
    before sending anything.

    It is a :class:`ResumingContext`: it offers the last session a caller
    kept with ``remember``, and none before.

    Raises :class:`CertificateFileError` if ``cafile`` cannot be loaded.
    """
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    if cafile is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    path = os.fspath(cafile)
    check_cert_file(path)
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
        raise TlsSetupError("the relay presented no TLS certificate")
    return der


def served_fingerprint(context: ssl.SSLContext) -> str:
    """The fingerprint of the certificate a server ``context`` presents.

    ``SSLContext`` does not say which certificate it was loaded with, so this
    runs one TLS handshake with itself in memory (no socket; about 1 ms) and
    reads what a client would see. The relay binds name-ownership signatures
    to this value (PROTOCOL.md 3.2). Raises :class:`TlsError` if the
    handshake cannot complete (a context with no certificate loaded).
    """
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE  # we only read the certificate, never trust it
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cli = client.wrap_bio(c_in, c_out, server_side=False)
    srv = context.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(10):
        for i, (obj, out, peer_in) in enumerate(((cli, c_out, s_in), (srv, s_out, c_in))):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as err:
                    raise TlsSetupError(f"the TLS context cannot serve a certificate: "
                                   f"{err.reason or err}") from None
            data = out.read()
            if data:
                peer_in.write(data)
        if done[0]:
            break
    der = cli.getpeercert(binary_form=True)
    if not der:
        raise TlsSetupError("the TLS context presents no certificate")
    return fingerprint(der)


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
    address = check_address(address)
    if bytes(cert_der[:1]) != b"\x30":
        raise TlsSetupError("verify_peer needs the certificate in DER form")
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
