"""test_protocol, the tests that need real processes, sockets or a terminal (the
unit tests are in tests/unit/test_protocol.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os

import pytest
from helpers import RawClient, chat_argv, relay_running, run, tls_contexts
from hypothesis import strategies as st
from nacl.signing import SigningKey

import framing
import kdf
from msgrlib import protocol
from msgrlib.client import connection as client
from msgrlib.errors import Refused

names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,31}", fullmatch=True)


# -- on a real relay -------------------------------------------------------------------

async def _hello(port: int, v: object) -> dict:
    raw = await RawClient.connect(port)
    key = SigningKey.generate()
    await raw.send({"type": "hello", "v": v, "user": "alice",
                    "key": base64.b64encode(bytes(key.verify_key)).decode()})
    answer = await raw.recv()
    closed = await raw.closed(2)
    await raw.close()
    return {**answer, "closed": closed}


@pytest.mark.parametrize("v", [True, 1.0])
def test_relay_refuses_a_hello_whose_version_is_not_an_integer(v):
    """Issue 13 item 13: the relay took "v": true and "v": 1.0 for 1."""
    async def main():
        async with relay_running() as srv:
            answer = await _hello(srv.address[1], v)
            assert answer["type"] == "error" and answer["code"] == "protocol", answer
            assert answer["fatal"] is True and answer["closed"]
            assert (await _hello(srv.address[1], 1))["type"] == "challenge"
    run(main())


def test_a_signature_for_one_relays_id_does_not_sign_in_at_another():
    async def main():
        async with relay_running() as one, relay_running() as two:
            key = SigningKey.generate()
            first = await RawClient.connect(one.address[1])
            await first.send(protocol.Hello("alice", bytes(key.verify_key)).to_json())
            id_one = (await first.recv())["relay"]
            raw = await RawClient.connect(two.address[1])
            await raw.send(protocol.Hello("alice", bytes(key.verify_key)).to_json())
            challenge = protocol.parse_relay_frame(await raw.recv())
            assert challenge.relay == two.relay.instance != id_one
            wrong = protocol.auth_message(challenge.nonce, protocol.id_binding(id_one), "alice")
            await raw.send(protocol.Auth(key.sign(wrong).signature).to_json())
            answer = await raw.recv()
            assert answer["code"] == "bad_signature", answer
            for c in (first, raw):
                await c.close()
    run(main())


async def _forward(reader, writer, port: int, client_ctx, answers: list[dict]) -> None:
    """A hostile TLS relay: pass hello and auth on to the relay at ``port``
    (trusted with ``client_ctx``) and its answers back, noting them."""
    up_reader, up_writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
    try:
        for _ in range(2):  # hello -> challenge, auth -> welcome or error
            frame = await framing.read_frame(reader)
            up_writer.write(framing.encode_frame(frame))
            answer = await framing.read_frame(up_reader)
            answers.append(answer)
            writer.write(framing.encode_frame(answer))
            await writer.drain()
    finally:
        up_writer.close()
        writer.close()


@contextlib.asynccontextmanager
async def _forwarding_relay(tmp_path):
    """A real TLS relay, and a hostile one in front of it with a certificate
    of its own that forwards hello and auth (:func:`_forward`). Yields the
    real relay, the hostile one's port, its certificate file and the answers
    it forwarded."""
    (tmp_path / "real").mkdir()
    (tmp_path / "evil").mkdir()
    real_server, real_client = tls_contexts(tmp_path / "real")
    evil_server, _ = tls_contexts(tmp_path / "evil")
    answers: list[dict] = []
    async with relay_running(ssl_context=real_server) as real:
        evil = await asyncio.start_server(
            lambda r, w: _forward(r, w, real.address[1], real_client, answers),
            "127.0.0.1", 0, ssl=evil_server)
        try:
            yield real, evil.sockets[0].getsockname()[1], str(tmp_path / "evil" / "cert.pem"), \
                answers
        finally:
            evil.close()


def test_a_hostile_tls_relay_cannot_forward_another_relays_challenge(tmp_path):
    """Issue 13 item 11: a relay the client trusts (its own certificate) passes
    hello, challenge and auth on to another relay to sign in there as the
    client. The signature names the certificate the client saw: refused."""
    async def main():
        async with _forwarding_relay(tmp_path) as (real, port, cafile, answers):
            with pytest.raises(Refused) as err:
                await client.open_chat(
                    server=f"127.0.0.1:{port}", user="alice", peer="bob", passcode="pw",
                    tls=client.TlsOptions(cafile=cafile),
                    kdf_params=kdf.KdfParams(time_cost=1, memory_kib=8, parallelism=1))
            assert err.value.code == "bad_signature"
            assert [a["type"] for a in answers] == ["challenge", "error"], answers
            assert "alice" not in real.relay.claims
    run(main())


def test_a_hostile_tls_relay_cannot_forward_a_real_clients_challenge(tmp_path):
    """Issue 13 item 11 with a real ``msgr chat`` process: the forwarding relay
    gets the real relay's refusal, and the client exits with one line."""
    async def main():
        async with _forwarding_relay(tmp_path) as (real, port, cafile, answers):
            proc = await asyncio.create_subprocess_exec(
                *chat_argv(port, "alice", "bob", "--tls", "--cafile", cafile),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "MSGR_PASSCODE": "correct horse battery staple"})
            out, err = await asyncio.wait_for(proc.communicate(b"hello\n"), 30)
            assert proc.returncode not in (0, None), (out, err)
            assert [a["type"] for a in answers] == ["challenge", "error"], answers
            assert answers[1]["code"] == "bad_signature", answers
            assert "alice" not in real.relay.claims
            lines = err.decode().strip().splitlines()
            assert lines and "Traceback" not in err.decode(), err
            assert b"hello" not in out
    run(main(), timeout=60)
