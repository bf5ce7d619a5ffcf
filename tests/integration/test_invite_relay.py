"""Nameplates at a real relay (PROTOCOL.md 3.6): allocate, join, cancel, lapse, disconnect."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from helpers import RawClient, relay_running, run

from msgrlib import protocol
from msgrlib.relay.config import RelayConfig

# In memory, or in the engine on an engine relay (shard 0): the same behaviour.
pytestmark = pytest.mark.usefixtures("store")


async def _pair(port: int, ttl: float = 600.0) -> tuple[RawClient, RawClient, int]:
    inviter = await RawClient.login(port, "i-alice")
    joiner = await RawClient.login(port, "i-bob")
    await inviter.send({"type": "allocate"})
    got = await inviter.recv_type("allocated")
    assert protocol.parse_relay_frame(got) == protocol.Allocated(got["nameplate"], ttl)
    return inviter, joiner, got["nameplate"]


def test_join_tells_both_sides_the_other_name_and_frees_the_number() -> None:
    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            inviter, joiner, number = await _pair(port)
            assert number == 1
            await joiner.send({"type": "join", "nameplate": number})
            assert await joiner.recv_type("joined") == {"type": "joined", "nameplate": 1,
                                                        "peer": "i-alice"}
            assert await inviter.recv_type("joined") == {"type": "joined", "nameplate": 1,
                                                         "peer": "i-bob"}
            # Used: a second join (or a guess at a number) learns nothing more.
            third = await RawClient.login(port, "i-carol")
            await third.send({"type": "join", "nameplate": number})
            err = await third.recv_type("error")
            assert err["code"] == "no_nameplate" and err["fatal"] is False
            assert len(srv.relay.nameplates) == 0
            for c in (inviter, joiner, third):
                await c.close()
    run(main())


def test_two_invites_at_once_get_different_numbers_and_never_cross() -> None:
    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            a = [await RawClient.login(port, f"i-a{i}") for i in range(2)]
            b = [await RawClient.login(port, f"i-b{i}") for i in range(2)]
            numbers = []
            for c in a:
                await c.send({"type": "allocate"})
                numbers.append((await c.recv_type("allocated"))["nameplate"])
            assert numbers == [1, 2]
            # Joined in the other order: each joiner meets the inviter of its number.
            await b[1].send({"type": "join", "nameplate": 2})
            await b[0].send({"type": "join", "nameplate": 1})
            assert (await b[1].recv_type("joined"))["peer"] == "i-a1"
            assert (await b[0].recv_type("joined"))["peer"] == "i-a0"
            assert (await a[0].recv_type("joined"))["peer"] == "i-b0"
            assert (await a[1].recv_type("joined"))["peer"] == "i-b1"
            for c in a + b:
                await c.close()
    run(main())


def test_own_number_cancel_disconnect_and_lapse() -> None:
    async def main() -> None:
        async with relay_running(RelayConfig(nameplate_ttl=0.5)) as srv:
            port = srv.address[1]
            inviter, joiner, number = await _pair(port, 0.5)
            await inviter.send({"type": "join", "nameplate": number})
            assert (await inviter.recv_type("error"))["code"] == "own_nameplate"
            await inviter.send({"type": "cancel", "nameplate": number})
            assert await inviter.recv_type("nameplate_gone") == {
                "type": "nameplate_gone", "nameplate": number, "reason": "cancelled"}
            await joiner.send({"type": "join", "nameplate": number})
            assert (await joiner.recv_type("error"))["code"] == "no_nameplate"
            # Lapsed: the owner is told.
            await inviter.send({"type": "allocate"})
            number = (await inviter.recv_type("allocated"))["nameplate"]
            gone = await inviter.recv_type("nameplate_gone", timeout=3)
            assert gone["reason"] == "expired" and gone["nameplate"] == number
            # The inviter's connection ends: its nameplate is freed at once.
            await inviter.send({"type": "allocate"})
            number = (await inviter.recv_type("allocated"))["nameplate"]
            await inviter.close()
            await asyncio.sleep(0.2)
            assert len(srv.relay.nameplates) == 0
            await joiner.send({"type": "join", "nameplate": number})
            assert (await joiner.recv_type("error"))["code"] == "no_nameplate"
            # Malformed: a protocol error.
            await joiner.send({"type": "join", "nameplate": "1"})
            err = await joiner.recv_type("error")
            assert err["code"] == "protocol" and err["fatal"] is True
    run(main())


def test_too_many_invites_from_one_name() -> None:
    async def main() -> None:
        async with relay_running() as srv:
            c = await RawClient.login(srv.address[1], "i-greedy")
            for _ in range(4):
                await c.send({"type": "allocate"})
                await c.recv_type("allocated")
            await c.send({"type": "allocate"})
            assert (await c.recv_type("error"))["code"] == "too_many_nameplates"
            await c.close()
    run(main())


def test_joins_from_one_address_are_limited() -> None:
    """Each join uses an invite up: trying numbers in a row would burn everyone's."""
    async def main() -> None:
        async with relay_running() as srv:
            c = await RawClient.login(srv.address[1], "i-prober")
            codes = []
            for number in range(1, 12):
                await c.send({"type": "join", "nameplate": number})
                codes.append((await c.recv_type("error"))["code"])
            assert codes == ["no_nameplate"] * 10 + ["rate_limited"]
            await c.close()
    run(main())


def test_an_invite_whose_answer_the_engine_lost_is_freed_with_its_connection(store) -> None:
    """Engine relay: the engine allocated but its answer was lost (the relay closes
    the connection, "lost its engine"). The nameplate must go with the connection,
    not stay joinable for its whole TTL, routing a joiner to nobody."""
    if store != "engine":
        pytest.skip("an engine relay's backend step")
    from msgrlib.relay import engine

    async def main() -> None:
        async with relay_running() as srv:
            port = srv.address[1]
            backend: Any = srv.backend
            real = backend.allocate_nameplate

            async def answer_lost(*args: Any, **kwargs: Any) -> Any:
                await real(*args, **kwargs)
                raise engine.EngineUnavailable("the answer was lost")

            backend.allocate_nameplate = answer_lost
            inviter = await RawClient.login(port, "i-alice")
            await inviter.send({"type": "allocate"})
            assert (await inviter.recv_type("shutdown"))["type"] == "shutdown"
            backend.allocate_nameplate = real
            await asyncio.sleep(0.2)
            joiner = await RawClient.login(port, "i-bob")
            await joiner.send({"type": "join", "nameplate": 1})
            assert (await joiner.recv_type("error"))["code"] == "no_nameplate"
            await joiner.close()
    run(main())
