"""test_output_safety, the tests that need real processes, sockets or a terminal (the
unit tests are in tests/unit/ui/test_output_safety.py)."""

from __future__ import annotations

import asyncio
import json
import os

from helpers import ROOT, Proxy, chat_argv, relay_running, run, unsafe

# -- a hostile relay, real processes -----------------------------------------------------

HOSTILE_SENTENCE = ("\x1b]0;owned\x07\x1b[2J\x1b[H\x9b31mbob: send me the passcode"
                    "\u2028msgr: message #7 was not delivered\u202e\u200b\U000e0041")


def raw_unsafe(data: bytes) -> list[str]:
    text = data.decode("utf-8")   # strict: output is UTF-8 text
    return unsafe(text.replace("\n", ""))


async def chat_bytes(port: int, user: str, *extra: str,
                     stdin: bytes) -> tuple[int, bytes, bytes]:
    env = {**os.environ, "MSGR_PASSCODE": "correct horse battery staple",
           "HOME": os.environ.get("MSGR_TEST_HOME", os.environ.get("HOME", "/tmp"))}
    proc = await asyncio.create_subprocess_exec(
        *chat_argv(port, user, "bob", *extra), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return await proc.wait(), out, err


def test_a_hostile_relays_error_sentences_reach_no_output_raw() -> None:
    """The relay answers each send with an error whose sentence holds OSC, CSI,
    C1 CSI (U+009B), U+2028, a bidi override, a zero-width space and a tag
    character; in the refusal at hello too. Line mode, --json and the one-line
    error print none of them raw, and say what happened."""

    def refuse_sends(direction: str, frame: dict, conn: dict) -> list[dict]:
        if direction == "up" and frame.get("type") == "send" and "ref" in frame:
            return [{"type": "error", "code": "refused", "message": HOSTILE_SENTENCE,
                     "ref": frame["ref"], "_back": True}]
        return [frame]

    def refuse_hello(direction: str, frame: dict, conn: dict) -> list[dict]:
        if direction == "down" and frame.get("type") == "challenge":
            return [{"type": "error", "code": "protocol", "message": HOSTILE_SENTENCE,
                     "fatal": True}]
        return [frame]

    async def main() -> list[tuple[int, bytes, bytes]]:
        results = []
        async with relay_running() as srv:
            port = srv.address[1]
            # One name per run: a name stays bound to its key for a while after bye.
            for user, hook, extra in (("alice", refuse_sends, ()),
                                      ("carol", refuse_sends, ("--json",)),
                                      ("dave", refuse_hello, ())):
                proxy = await Proxy(port, hook).start()
                results.append(await chat_bytes(proxy.port, user, "--static", "--ttl", "5",
                                                "--wait", "5", *extra,
                                                stdin=b"hello\nsecond\n"))
                await proxy.close()
        return results

    (code, out, err), (jcode, jout, jerr), (hcode, hout, herr) = run(main(), timeout=120)
    for data in (out, err, jout, jerr, hout, herr):
        assert not raw_unsafe(data), data
    assert code == 3 and jcode == 3 and hcode == 1, (err, jerr, herr)
    assert b"message #1 was not delivered: the relay refused it: \\x1b]0;owned\\x07" in err
    assert b"\\x9b31mbob: send me the passcode\\u2028msgr: message #7" in err
    assert b"2 message(s) not delivered" in err
    undelivered = [json.loads(line) for line in jout.splitlines()]
    assert [o["type"] for o in undelivered] == ["undelivered", "undelivered"]
    assert HOSTILE_SENTENCE in undelivered[0]["reason"]   # exact for programs, escaped on the wire
    assert b"\\u009b" in jout and b"\\u2028" in jout
    assert b"\\x1b]0;owned" in herr and b"traceback" not in herr.lower()

