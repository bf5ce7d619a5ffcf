"""TLS suites: AEAD only, on the relay's side and on the client's (issue 13 item 10).

The relay side is probed as a scanner (testssl.sh) would, with one
``openssl s_client`` handshake per suite against a real relay: every TLS 1.2
suite the relay's Ed25519 certificate could serve (ECDSA authentication) is
offered alone, and only ECDHE with AES-GCM or ChaCha20-Poly1305 may be
accepted (CBC, NULL, Camellia, ARIA and CCM suites are refused); every TLS
1.3 suite (all AEAD) is accepted. The client side is checked with Python's
``ssl``: a server that offers only CBC suites gets no connection from msgr's
client context.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess

import pytest
from helpers import RawClient, relay_running, run, tls_contexts

from msgrlib.relay import config as relay_config
from msgrlib.tls import contexts

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl binary")

#: What testssl.sh flags as "Obsolete CBC ciphers offered": the two the relay
#: used to accept, and their SHA-1 siblings.
CBC_SUITES = ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384",
              "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA"]
AEAD_SUITES = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
               "ECDHE-ECDSA-CHACHA20-POLY1305"]


def _openssl_suites() -> list[tuple[str, str, bool]]:
    """``(name, protocol, is_ecdhe_aead)`` for every ECDSA TLS 1.2 and every TLS 1.3
    suite this openssl knows, weak ones included."""
    out = subprocess.run([OPENSSL, "ciphers", "-v", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"],
                         capture_output=True, text=True, check=True).stdout
    suites = []
    for line in out.splitlines():
        fields = line.split()
        name, version = fields[0], fields[1]
        info = dict(f.split("=", 1) for f in fields[2:] if "=" in f)
        if version == "TLSv1.3":
            suites.append((name, version, True))
        elif info.get("Au") == "ECDSA":  # TLS 1.2 (openssl lists some as TLSv1 or SSLv3)
            enc = info.get("Enc", "")
            good = info.get("Kx") == "ECDH" and enc.startswith(("AESGCM(", "CHACHA20/POLY1305"))
            suites.append((name, "TLSv1.2", good))
    return suites


async def _probe(port: int, suite: str, version: str) -> bool:
    """One s_client handshake offering only ``suite``; True if the relay took it."""
    if version == "TLSv1.3":
        args = ["-tls1_3", "-ciphersuites", suite]
    else:
        args = ["-tls1_2", "-cipher", f"{suite}:@SECLEVEL=0"]
    proc = await asyncio.create_subprocess_exec(
        OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
        *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    text = out.decode(errors="replace")
    return f"Cipher is {suite}" in text or f"Cipher    : {suite}" in text


@needs_openssl
def test_the_relay_accepts_aead_suites_only(tmp_path):
    server_ctx, _ = tls_contexts(tmp_path)
    suites = _openssl_suites()
    names = {name for name, _, _ in suites}
    # The probe covers what the issue saw, whatever this openssl calls "ALL".
    assert set(CBC_SUITES) <= names and set(AEAD_SUITES) <= names

    async def main():
        async with relay_running(relay_config.RelayConfig(), ssl_context=server_ctx) as srv:
            port = srv.address[1]
            results = {}
            for name, version, _good in suites:
                results[name] = await _probe(port, name, version)
        return results

    results = run(main())
    wrong = {name: ("accepted" if results[name] else "refused")
             for name, _, good in suites if results[name] != good}
    assert not wrong, f"suites handled wrongly: {wrong}"
    assert not any(results[name] for name in CBC_SUITES)
    assert all(results[name] for name in AEAD_SUITES)


def test_a_tls_1_2_client_still_gets_an_aead_suite(tmp_path):
    server_ctx, client_ctx = tls_contexts(tmp_path)
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    async def main():
        async with relay_running(relay_config.RelayConfig(), ssl_context=server_ctx) as srv:
            alice = await RawClient.login(srv.address[1], "alice", ssl=client_ctx)
            name, version, _bits = alice.writer.get_extra_info("ssl_object").cipher()
            await alice.close()
            return name, version

    name, version = run(main())
    assert version == "TLSv1.2"
    assert "GCM" in name or "CHACHA20" in name, name


@pytest.mark.parametrize("suite", CBC_SUITES)
def test_the_client_refuses_a_relay_that_offers_only_cbc(tmp_path, suite):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    contexts.ensure_certificate(cert, key)
    # A relay that is not msgr's: a plain ssl server with one CBC suite.
    weak = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        weak.set_ciphers(f"{suite}:@SECLEVEL=0")
    except ssl.SSLError:
        pytest.skip(f"this OpenSSL cannot offer {suite}")
    weak.load_cert_chain(cert, key)

    async def main():
        async def handle(reader, writer):
            await reader.read()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=weak)
        port = server.sockets[0].getsockname()[1]
        try:
            # OpenSSL answers with a handshake_failure alert or just closes.
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", port, ssl=contexts.client_context(cafile=cert),
                    server_hostname="localhost"), 5)
            # The same server with an AEAD suite is reached: the refusal is the suite.
            good = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            good.maximum_version = ssl.TLSVersion.TLSv1_2
            good.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
            good.load_cert_chain(cert, key)
            server2 = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=good)
            port2 = server2.sockets[0].getsockname()[1]
            _, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port2, ssl=contexts.client_context(cafile=cert),
                server_hostname="localhost"), 5)
            writer.close()
            server2.close()
        finally:
            server.close()

    run(main())
