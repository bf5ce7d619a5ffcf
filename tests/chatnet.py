"""Two real chat cores talking through the real relay core, in memory.

The test network of tests/unit/client: no sockets, no clock of its own; tests
drop, hold and reorder frames at will (ARCHITECTURE.md, "already a model").
"""

from __future__ import annotations

import base64
import os
from typing import Any

from helpers import auth_message
from nacl.signing import SigningKey

import framing
from msgrlib.client import core as chat
from msgrlib.relay import rules as relay

KEY = bytes(range(32))


OTHER_KEY = bytes(range(1, 33))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemLink:
    def __init__(self, name: str) -> None:
        self.address = f"mem:{name}"
        self.decoder = framing.FrameDecoder()
        self.inbox: list[dict[str, Any]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.inbox.extend(self.decoder.feed(data))

    def close(self) -> None:
        self.closed = True


class Net:
    """The real relay core plus any number of ChatCores attached to it."""

    def __init__(self, config: relay.RelayConfig | None = None) -> None:
        self.clock = Clock()
        self.relay = relay.Relay(config or relay.RelayConfig(), clock=self.clock,
                                 wallclock=lambda: self.clock.now + 1.7e9, rng=os.urandom)
        self.peers: dict[str, tuple[chat.ChatCore, relay.Client, MemLink]] = {}
        self.events: dict[str, list[Any]] = {}
        self.tap: list[dict[str, Any]] = []   # every frame the relay delivers
        self.keys: dict[str, SigningKey] = {}

    def core(self, me: str, peer: str, key: bytes = KEY, **kw: Any) -> chat.ChatCore:
        return chat.ChatCore(me=me, peer=peer, key=key, clock=self.clock,
                             wallclock=lambda: self.clock.now + 1.7e9, rng=os.urandom, **kw)

    def attach(self, core: chat.ChatCore, key: SigningKey | None = None) -> None:
        link = MemLink(core.me)
        client = self.relay.connect(link)
        # Each name keeps its key across restarts, as with --identity.
        key = key or self.keys.setdefault(core.me, SigningKey.generate())
        self.relay.receive(client, {"type": "hello", "v": 1, "user": core.me,
                                    "key": base64.b64encode(bytes(key.verify_key)).decode()})
        sig = key.sign(auth_message(link.inbox.pop(), core.me)).signature
        self.relay.receive(client, {"type": "auth", "sig": base64.b64encode(sig).decode()})
        welcome = link.inbox.pop(0)
        assert welcome["type"] == "welcome"
        self.peers[core.me] = (core, client, link)
        self.events.setdefault(core.me, [])
        core.set_limits(welcome["limits"])  # as client.ChatClient does
        core.connected_to_relay(welcome["relay"])

    def detach(self, name: str) -> None:
        core, client, link = self.peers.pop(name)
        link.close()
        self.relay.disconnect(client)
        core.disconnected()

    def pump(self, *, drop: Any = None) -> None:
        """Move frames until nothing moves. ``drop(frame)`` may swallow deliveries."""
        for _ in range(1000):
            moved = False
            for name, (core, client, link) in list(self.peers.items()):
                for frame in core.take_frames():
                    moved = True
                    self.relay.receive(client, frame)
                inbox, link.inbox = link.inbox, []
                for frame in inbox:
                    moved = True
                    if frame["type"] == "deliver":
                        self.tap.append(frame)
                        if drop is not None and drop(frame):
                            continue
                    core.handle(frame)
                self.events[name].extend(core.take_events())
            if not moved:
                return
        raise AssertionError("frames never stopped moving")

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.relay.tick()
        for core, _, _ in self.peers.values():
            core.tick()
        self.pump()

    def received(self, name: str) -> list[str]:
        return [e.text for e in self.events[name] if isinstance(e, chat.Received)]

    def of(self, name: str, kind: type) -> list[Any]:
        return [e for e in self.events[name] if isinstance(e, kind)]


def attached(net: Net, **kw: Any) -> tuple[chat.ChatCore, chat.ChatCore]:
    """alice and bob, connected to the relay, before any frame has moved."""
    alice, bob = net.core("alice", "bob", **kw), net.core("bob", "alice", **kw)
    net.attach(alice)
    net.attach(bob)
    return alice, bob


def pair(net: Net, **kw: Any) -> tuple[chat.ChatCore, chat.ChatCore]:
    """alice and bob with their session up."""
    alice, bob = attached(net, **kw)
    net.pump()
    return alice, bob


def _sends(frames: list[dict]) -> list[dict]:
    return [f for f in frames if f["type"] == "send"]
