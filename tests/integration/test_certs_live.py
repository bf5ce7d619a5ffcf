"""test_certs, the tests that need real processes, sockets or a terminal (the
unit tests are in tests/unit/tls/test_certs.py)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from msgrlib.tls import contexts, known_hosts, x509
from msgrlib.tls.errors import (
    CertificateChanged,
    PinMismatch,
    UnknownCertificate,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl binary")
TIMEOUT = 5.0


@needs_openssl
def test_openssl_parses_certificate_and_key(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    created, fp = contexts.ensure_certificate(cert_path, key_path, hostnames=["relay.example"])
    assert created

    def openssl(*args: str) -> str:
        done = subprocess.run(
            [OPENSSL, *args], capture_output=True, text=True, timeout=10, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    text = openssl("x509", "-noout", "-text", "-in", str(cert_path))
    assert "ED25519" in text and "CA:TRUE" in text and "DNS:relay.example" in text
    assert "IP Address:127.0.0.1" in text
    line = openssl("x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert_path))
    assert line.strip().split("=", 1)[1] == fp.removeprefix("SHA256:")
    assert x509.normalize_fingerprint(line) == fp  # users may paste openssl's line
    assert openssl("pkey", "-in", str(key_path), "-pubout") == openssl(
        "x509", "-noout", "-pubkey", "-in", str(cert_path)
    )
    openssl("verify", "-x509_strict", "-CAfile", str(cert_path), str(cert_path))


# --------------------------------------------------------------------------
# Real TLS on loopback


class Pair:
    """A certificate and key written to disk, with the certificate's fingerprint."""

    def __init__(self, directory: Path, name: str) -> None:
        self.cert = directory / f"{name}-cert.pem"
        self.key = directory / f"{name}-key.pem"
        _, self.fp = contexts.ensure_certificate(self.cert, self.key)


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path, "relay")


@contextlib.asynccontextmanager
async def echo_server(pair: Pair, port: int = 0) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
            writer.write(await reader.readline())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(
        handle, "127.0.0.1", port, ssl=contexts.server_context(pair.cert, pair.key)
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def talk(
    port: int,
    context: ssl.SSLContext,
    *,
    server_hostname: str = "localhost",
    check: Callable[[bytes], object] = lambda der: None,
) -> str:
    """Connect, ``check`` the peer certificate, echo one line; return the TLS version."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=server_hostname
        ),
        TIMEOUT,
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        check(contexts.peer_certificate(ssl_object))  # before any application byte
        writer.write(b"hello\n")
        assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"hello\n"
        return ssl_object.version()
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def limit(context: ssl.SSLContext, version: str) -> ssl.SSLContext:
    tls = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}[version]
    context.minimum_version = context.maximum_version = tls
    return context


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_cafile_verifies(pair: Pair, version: str, hostname: str) -> None:
    async def main() -> None:
        async with echo_server(pair) as port:
            context = limit(contexts.client_context(cafile=str(pair.cert)), version)
            assert await talk(port, context, server_hostname=hostname) == version
            # Python 3.13's default context adds X.509 strict mode: still fine.
            context = contexts.client_context(cafile=pair.cert)
            context.verify_flags |= ssl.VERIFY_X509_STRICT
            assert await talk(port, context, server_hostname=hostname) == "TLSv1.3"

    asyncio.run(main())


@pytest.mark.parametrize("hostname", ["localhost", "relay.example"])
def test_cafile_rejects_other_certificates_and_names(
    pair: Pair, tmp_path: Path, hostname: str
) -> None:
    other = Pair(tmp_path, "other")
    cafile = other.cert if hostname == "localhost" else pair.cert

    async def main() -> None:
        async with echo_server(pair) as port:
            address = known_hosts.relay_address(hostname, port)
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                await talk(port, contexts.client_context(cafile=cafile), server_hostname=hostname)
            err = contexts.unknown_certificate(info.value, address=address, cafile=cafile)
            assert isinstance(err, UnknownCertificate) and err.remote
            assert address in str(err) and str(cafile) in str(err) and "--pin" in str(err)
            reason = "self-signed" if hostname == "localhost" else "Hostname mismatch"
            assert reason in str(err)

    asyncio.run(main())


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_pin(pair: Pair, tmp_path: Path, version: str) -> None:
    other = Pair(tmp_path, "other")

    async def main() -> None:
        async with echo_server(pair) as port:
            address = known_hosts.relay_address("127.0.0.1", port)
            results = []

            def pinned(pin: str) -> Callable[[bytes], object]:
                return lambda der: results.append(
                    contexts.verify_peer(der, address=address, pin=pin)
                )

            context = limit(contexts.client_context(), version)
            pin = pair.fp.removeprefix("SHA256:").replace(":", "").lower()
            assert await talk(port, context, check=pinned(pin)) == version
            assert results == [(pair.fp, "pinned")]
            with pytest.raises(PinMismatch) as info:
                await talk(port, context, check=pinned(other.fp))
            assert pair.fp in str(info.value) and other.fp in str(info.value)
            assert info.value.remote and info.value.code == "pin_mismatch"

    asyncio.run(main())


def test_trust_on_first_use(pair: Pair, tmp_path: Path) -> None:
    known = known_hosts.KnownHosts(tmp_path / "config" / "msgr" / "known_hosts")
    replacement = Pair(tmp_path, "replacement")

    async def main() -> None:
        results: list[tuple[str, str]] = []

        def tofu(der: bytes) -> None:
            results.append(contexts.verify_peer(der, address=address, known_hosts=known))

        async with echo_server(pair) as port:
            address = known_hosts.relay_address("localhost", port)
            await talk(port, contexts.client_context(), check=tofu)
            await talk(port, contexts.client_context(), check=tofu)
        assert results == [(pair.fp, "new"), (pair.fp, "known")]
        assert known.lookup(address) == pair.fp

        # The relay restarts on the same port with another certificate.
        async with echo_server(replacement, port) as same_port:
            assert same_port == port
            with pytest.raises(CertificateChanged) as info:
                await talk(port, contexts.client_context(), check=tofu)
        err = info.value
        message = str(err)
        assert pair.fp in message and replacement.fp in message
        assert address in message and str(known.path) in message and "line 3" in message
        assert "attack" in message
        assert (err.expected, err.presented, err.line) == (pair.fp, replacement.fp, 3)
        assert known.lookup(address) == pair.fp  # the old fingerprint stays

    asyncio.run(main())


# --------------------------------------------------------------------------
# KnownHosts


