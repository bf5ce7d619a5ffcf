"""The transfer machines over a real relay (TLS, loopback), sealed by a real double ratchet.

The glue here is the smallest possible stand-in for what the chat core will do (seal each
``xfer.*`` message as a ratchet plaintext, send it as a relay ``send``, open each ``deliver``),
so these tests show what the wiring can rely on: default-size chunks fit the relay's frames,
the relay never holds more than two windows of chunks for a transfer, and a connection cut
mid-file is repaired by the receiver's gap acks and nudges.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os

from helpers import RawClient, relay_running, run, tls_contexts
from nacl.public import PrivateKey

from msgrlib.client.ratchet_mode import parse_inner
from msgrlib.crypto.ratchet import Ratchet
from msgrlib.transfer import messages as m
from msgrlib.transfer.files import FileSink, prepare_file
from msgrlib.transfer.machine import (
    Completed,
    Receiver,
    ReceiverState,
    Sender,
    SenderState,
)

SID = "5e" * 16
WINDOW = 8


class Held:
    """Chunk messages the relay holds: accepted for the receiver, not yet delivered."""

    def __init__(self) -> None:
        self.accepted: set[int] = set()
        self.delivered: set[int] = set()
        self.most = 0

    def update(self) -> None:
        self.most = max(self.most, len(self.accepted - self.delivered))


class Side:
    """One client: a relay connection, a ratchet, and (once known) a transfer machine."""

    def __init__(self, client: RawClient, ratchet: Ratchet, peer: str, held: Held) -> None:
        self.ratchet, self.peer, self.held = ratchet, peer, held
        self.machine: Sender | Receiver | None = None
        self.ref = 0
        self.chunk_refs: set[int] = set()
        self.drop_chunks = 0  # chunks "written into a dying connection": sealed, never sent
        self.gap_acks = 0
        self.attach(client)

    def attach(self, client: RawClient) -> None:
        self.client = client
        self.frames: asyncio.Queue = asyncio.Queue()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                await self.frames.put(await self.client.recv(timeout=3600))

    async def flush(self) -> None:
        assert self.machine is not None
        for msg in self.machine.take_outgoing():
            obj = msg.to_obj()
            plaintext = (m.encode_chunk_plaintext(obj) if isinstance(msg, m.Chunk)
                         else json.dumps(obj, separators=(",", ":")).encode())
            body = f"r1.{SID}.{base64.b64encode(self.ratchet.encrypt(plaintext)).decode()}"
            self.ref += 1
            if isinstance(msg, m.Ack) and msg.gap:
                self.gap_acks += 1
            if isinstance(msg, m.Chunk):
                if self.drop_chunks:
                    self.drop_chunks -= 1
                    continue
                self.chunk_refs.add(self.ref)
            with contextlib.suppress(ConnectionError):
                await self.client.send({"type": "send", "ref": self.ref, "to": self.peer,
                                        "ttl": 30, "body": body})

    async def next_frame(self) -> dict | None:
        try:
            return await asyncio.wait_for(self.frames.get(), 0.1)
        except asyncio.TimeoutError:
            return None

    async def step(self, on_message) -> None:
        now = asyncio.get_running_loop().time()
        frame = await self.next_frame()
        if frame is not None:
            kind = frame["type"]
            if kind == "accepted" and frame.get("ref") in self.chunk_refs:
                self.held.accepted.add(frame["id"])
            elif kind == "deliver":
                await self.client.send({"type": "ack", "id": frame["id"]})
                sid, data = frame["body"].split(".")[1:]
                assert sid == SID
                msg = m.parse_message(parse_inner(self.ratchet.decrypt(base64.b64decode(data))))
                if isinstance(msg, m.Chunk):
                    self.held.delivered.add(frame["id"])
                on_message(msg, now)
            elif kind == "error":
                raise AssertionError(f"the relay refused something: {frame}")
            self.held.update()
        if self.machine is not None:
            self.machine.tick(now)
            await self.flush()


def ratchet_pair() -> tuple[Ratchet, Ratchet]:
    root, bob_key = os.urandom(32), PrivateKey.generate()
    alice = Ratchet.initiator(root, bytes(bob_key.public_key), b"transfer-test")
    bob = Ratchet.responder(root, bytes(bob_key), b"transfer-test")
    return alice, bob


def transfer(tmp_path, size: int, *, cut_after: int | None = None, tls: bool = True):
    """Send a random file of ``size`` bytes from alice to bob through a real relay; with
    ``cut_after``, alice's connection is dropped (unsent bytes lost) once the relay has
    accepted that many chunks, and she reconnects."""
    src = tmp_path / "payload.bin"
    data = os.urandom(size)
    src.write_bytes(data)
    out = tmp_path / "inbox"
    out.mkdir()
    server_ctx, client_ctx = tls_contexts(str(tmp_path)) if tls else (None, None)

    async def main():
        async with relay_running(ssl_context=server_ctx) as srv:
            port = srv.address[1]
            held = Held()
            a_ratchet, b_ratchet = ratchet_pair()
            alice_client = await RawClient.login(port, "alice", ssl=client_ctx)
            bob_client = await RawClient.login(port, "bob", ssl=client_ctx)
            alice = Side(alice_client, a_ratchet, "bob", held)
            bob = Side(bob_client, b_ratchet, "alice", held)
            loop = asyncio.get_running_loop()
            prepared = prepare_file(str(src), m.new_transfer_id(os.urandom))
            alice.machine = Sender(prepared.offer, prepared.source, loop.time(),
                                   nudge_after=1.0, stall_timeout=20.0)
            events = {"alice": [], "bob": []}

            def bob_gets(msg, now):
                if bob.machine is None:
                    assert isinstance(msg, m.Offer)
                    bob.machine = Receiver(msg, now, nudge_after=1.0, stall_timeout=20.0)
                    assert bob.machine.problem is None
                    bob.machine.accept(FileSink(str(out), msg.name, size=msg.size), now,
                                       window=WINDOW)
                else:
                    bob.machine.handle(msg, now)
                events["bob"] += bob.machine.take_events()

            def alice_gets(msg, now):
                alice.machine.handle(msg, now)
                events["alice"] += alice.machine.take_events()

            await alice.flush()
            cut_done = cut_after is None
            while not (alice.machine.state is SenderState.DONE
                       and bob.machine is not None and bob.machine.state is ReceiverState.DONE):
                for machine in (alice.machine, bob.machine):
                    assert machine is None or machine.state.value != "failed", events
                await alice.step(alice_gets)
                await bob.step(bob_gets)
                if not cut_done and len(held.accepted) >= cut_after:
                    cut_done = True
                    alice.client.writer.transport.abort()  # what was buffered is lost
                    alice.reader.cancel()
                    await asyncio.sleep(0.05)
                    client = await RawClient.login(port, "alice", key=alice_client.key,
                                                   ssl=client_ctx)
                    alice.attach(client)
                    alice.machine.resume(loop.time())
                    alice.drop_chunks = 3  # ... and the next ones went nowhere
            prepared.source.close()
            for side in (alice, bob):
                side.reader.cancel()
                await side.client.close()
            return held, events, bob.gap_acks

    held, events, gap_acks = run(main(), timeout=60)
    assert (out / "payload.bin").read_bytes() == data
    assert os.listdir(out) == ["payload.bin"]
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(
        (out / "payload.bin").read_bytes()).hexdigest()
    assert events["alice"][-1] == Completed() and events["bob"][-1] == Completed()
    return held, gap_acks


def test_a_file_crosses_a_real_tls_relay_within_two_windows(tmp_path):
    held, gap_acks = transfer(tmp_path, 1024 * 1024 + 17)
    assert 0 < held.most <= 2 * WINDOW
    assert gap_acks == 0


def test_a_connection_cut_mid_file_is_repaired_and_the_file_arrives(tmp_path):
    held, gap_acks = transfer(tmp_path, 512 * 1024 + 5, cut_after=6, tls=False)
    assert held.most <= 2 * WINDOW
    assert gap_acks >= 1  # the lost chunks were asked for again
