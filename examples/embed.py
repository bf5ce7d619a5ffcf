"""Embedding msgr in another asyncio program: a relay and two chat sessions.

Run it after ``pip install .`` (``python examples/embed.py``), or from the
repository without installing: ``PYTHONPATH=. .venv/bin/python examples/embed.py``.
It imports only msgr (which needs PyNaCl and argon2-cffi) and the standard library.
"""

import asyncio

import msgr


async def main() -> None:
    relay = await msgr.start_relay(host="127.0.0.1", port=0)   # any free port
    host, port = relay.address
    server = f"{host}:{port}"
    alice = await msgr.open_chat(server=server, user="alice", peer="bob",
                                 passcode="correct horse battery staple")
    bob = await msgr.open_chat(server=server, user="bob", peer="alice",
                               passcode="correct horse battery staple")
    alice.send("hello bob")
    async for message in bob.messages():
        print(f"bob received from {message.sender}: {message.text}")
        break
    bob.send("hi alice")
    async for message in alice.messages():
        print(f"alice received from {message.sender}: {message.text}")
        break
    print(f"safety number: {alice.core.safety_number}")
    await alice.aclose()
    await bob.aclose()
    await relay.close()


if __name__ == "__main__":
    asyncio.run(main())
