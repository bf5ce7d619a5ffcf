"""The two baseline relays the benchmark compares msgr with.

Both carry exactly the frames msgr's protocol carries for each message (hello,
challenge, auth, welcome; send, accepted, deliver; ack; ping/pong), with the
same JSON, but do none of msgr's work: no signature check, no validation, no
limits, no store, no TTL. The ratio msgr/baseline is therefore the cost of
msgr's own work.

* ``ws``: the original design's transport, one websocket message per frame,
  with the ``websockets`` library (its asyncio server, default settings; the
  load generator does not offer compression, so none is negotiated).
* ``proto``: a bare ``asyncio.Protocol`` relay with the same 4-byte length
  prefix as msgr, writing once per destination per read batch.

Run as a process: ``python -m bench.baselines {ws,proto} [--tls CERT KEY]``;
it prints ``listening on 127.0.0.1:PORT`` and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import signal
import ssl
import struct
import sys
import time
from typing import Any

_PREFIX = struct.Struct(">I")
_unpack = _PREFIX.unpack_from
_pack = _PREFIX.pack
# The same encoder settings as framing.encode_frame, so the bytes are identical.
_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_loads = json.loads

#: What msgr's welcome carries, so the frame has the same size.
LIMITS = {"max_frame": 65536, "ttl_min": 5, "ttl_max": 60, "ttl_default": 30,
          "heartbeat": 20.0, "mailbox_messages": 1000, "rate_messages": 200.0,
          "burst_messages": 400.0}
TTL = 30


def _accepted(msg: dict[str, Any], msg_id: int, wall: float) -> dict[str, Any]:
    return {"type": "accepted", "ref": msg.get("ref"), "id": msg_id, "ttl": TTL,
            "expires_at": round(wall + TTL, 3)}


def _deliver(msg: dict[str, Any], msg_id: int, sender: str, wall: float) -> dict[str, Any]:
    return {"type": "deliver", "id": msg_id, "from": sender, "kind": msg.get("kind", "msg"),
            "ttl": TTL, "expires_at": round(wall + TTL, 3), "body": msg.get("body")}


def _challenge() -> dict[str, Any]:
    return {"type": "challenge", "nonce": base64.b64encode(os.urandom(32)).decode(),
            "relay": os.urandom(8).hex()}  # as msgr's, which clients sign over


def _welcome(user: str) -> dict[str, Any]:
    return {"type": "welcome", "user": user, "v": 1, "limits": LIMITS}


# -- bare asyncio.Protocol relay ------------------------------------------------------


class ProtoRelay:
    def __init__(self) -> None:
        self.users: dict[str, ProtoConn] = {}
        self.dirty: list[ProtoConn] = []
        self.ids = itertools.count(1)

    def flush(self) -> None:
        for conn in self.dirty:
            out = conn.out
            if out and not conn.transport.is_closing():
                conn.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        self.dirty.clear()


class ProtoConn(asyncio.Protocol):
    def __init__(self, relay: ProtoRelay) -> None:
        self.relay = relay
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.user: str | None = None
        self.ready = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def write(self, obj: dict[str, Any]) -> None:
        body = _dumps(obj).encode()
        if not self.out:
            self.relay.dirty.append(self)
        self.out.append(_pack(len(body)) + body)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 4:
            (size,) = _unpack(buf, pos)
            stop = pos + 4 + size
            if stop > end:
                break
            self.handle(_loads(buf[pos + 4:stop]))
            pos = stop
        if pos:
            del buf[:pos]
        self.relay.flush()

    def handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        relay = self.relay
        if self.ready:
            if kind == "send":
                msg_id = next(relay.ids)
                wall = time.time()
                self.write(_accepted(msg, msg_id, wall))
                peer = relay.users.get(msg.get("to"))  # type: ignore[arg-type]
                if peer is not None:
                    peer.write(_deliver(msg, msg_id, self.user or "", wall))
            elif kind == "ping":
                self.write({"type": "pong"})
            # "ack" and anything else: nothing to do without a store.
        elif kind == "hello":
            self.user = msg.get("user")
            self.write(_challenge())
        elif kind == "auth" and self.user is not None:
            self.ready = True
            relay.users[self.user] = self
            self.write(_welcome(self.user))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.user is not None and self.relay.users.get(self.user) is self:
            del self.relay.users[self.user]


async def serve_proto(host: str, port: int, context: ssl.SSLContext | None) -> Any:
    relay = ProtoRelay()
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: ProtoConn(relay), host, port, ssl=context,
                                    backlog=4096, reuse_address=True)


# -- websockets relay (the original design's transport) -----------------------------------


async def serve_ws(host: str, port: int, context: ssl.SSLContext | None) -> Any:
    from websockets.asyncio.server import serve

    users: dict[str, Any] = {}
    ids = itertools.count(1)

    async def handler(ws: Any) -> None:
        hello = _loads(await ws.recv())
        user = hello.get("user")
        await ws.send(_dumps(_challenge()))
        await ws.recv()  # auth: not checked
        users[user] = ws
        await ws.send(_dumps(_welcome(user)))
        try:
            async for raw in ws:
                msg = _loads(raw)
                kind = msg.get("type")
                if kind == "send":
                    msg_id = next(ids)
                    wall = time.time()
                    await ws.send(_dumps(_accepted(msg, msg_id, wall)))
                    peer = users.get(msg.get("to"))
                    if peer is not None:
                        try:
                            await peer.send(_dumps(_deliver(msg, msg_id, user, wall)))
                        except Exception:  # noqa: BLE001 - the peer went away
                            pass
                elif kind == "ping":
                    await ws.send(_dumps({"type": "pong"}))
        finally:
            if users.get(user) is ws:
                del users[user]

    return await serve(handler, host, port, ssl=context, backlog=4096)


async def main_async(kind: str, host: str, port: int, context: ssl.SSLContext | None) -> None:
    server = await (serve_ws if kind == "ws" else serve_proto)(host, port, context)
    sock = next(iter(server.sockets))
    print(f"listening on {sock.getsockname()[0]}:{sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines")
    parser.add_argument("kind", choices=["ws", "proto"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args(argv)
    if args.host != "127.0.0.1":
        parser.error("the benchmark runs on loopback only")
    context = None
    if args.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # as certs.server_context
        context.load_cert_chain(*args.tls)
    try:
        asyncio.run(main_async(args.kind, args.host, args.port, context))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
