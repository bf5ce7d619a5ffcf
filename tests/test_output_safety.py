"""Nothing a peer or a relay chose reaches a terminal or a JSON line raw.

Every output path (line mode's messages, ``--json`` lines, notices on stderr,
msgr.py's one-line errors, the chat screen's rows) is driven with arbitrary
strings in every field that comes from outside; no character of the categories
Cc, Cf, Zl, Zp, Co, Cs, Cn may come out, except the newline that ends each
line. Then a hostile relay in front of a real one (a proxy that answers sends
with an ``error`` of its own choosing) attacks real client processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import unicodedata
from types import SimpleNamespace

from helpers import ROOT, Proxy, chat_argv, relay_running, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import msgr
from msgrlib.client import core as chat
from msgrlib.client.events import Status
from msgrlib.ui import linemode
from msgrlib.ui.view import ChatView
from msgrlib.util.safetext import UNSAFE_CATEGORIES

#: Strings from outside: anything, with the attacker's favourites made likely.
HOSTILE = st.text(alphabet=st.one_of(
    st.characters(),
    st.sampled_from(["\x1b", "\x9b", "\x07", "\r", "\n", "\u2028", "\u2029", "\u202e",
                     "\u200b", "\u200d", "\ufeff", "\U000e0041", "\ue000", "\ud800",
                     "\u0378", "\x7f", "\t"])))


def unsafe(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) in UNSAFE_CATEGORIES]


def check_stream(text: str, writes: int) -> None:
    """Exactly ``writes`` lines, each ended by its newline, nothing unsafe in them."""
    assert text.count("\n") == writes, text
    assert not unsafe(text.replace("\n", "")), ascii(text)


def events(s: list[str]) -> list[object]:
    text, name, reason, detail, notice, sid = s
    return [
        chat.Received(name, text, 1.7e9, 1.7e9 + 30, 30),
        chat.Notice(notice, "info", "warn"),
        chat.Notice(notice, "passcode_mismatch", "error"),
        chat.Undelivered(3, reason),
        chat.Delivered(3),
        chat.Presence(True),
        chat.SessionStarted(detail, sid, True),
        Status("connected", detail, "SHA256:" + sid),
        Status("disconnected", reason),
        Status("trust", notice),
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(HOSTILE, min_size=6, max_size=6))
def test_line_mode_text_json_and_notices_never_print_unsafe_characters(s: list[str]) -> None:
    client = SimpleNamespace(core=SimpleNamespace(safety_number=s[2], peer=s[1]))
    for as_json in (False, True):
        out, err = io.StringIO(), io.StringIO()
        output = linemode.Output(peer=s[1], json=as_json, out=out, err=err)
        for event in events(s):
            output.event(event, client)   # type: ignore[arg-type]
        if as_json:
            lines = out.getvalue().splitlines()
            check_stream(out.getvalue(), len(lines))
            assert {json.loads(line)["type"] for line in lines} == {
                "message", "undelivered", "delivered", "session"}
            assert json.loads(lines[0])["text"] == s[0]   # exact text for programs
        else:
            check_stream(out.getvalue(), 1)
        check_stream(err.getvalue(), 8)   # every event but the message and the receipt


@settings(max_examples=150, deadline=None)
@given(HOSTILE)
def test_commands_notices_and_cli_errors_never_print_unsafe_characters(text: str) -> None:
    err = io.StringIO()
    linemode._line_command("/" + text, asyncio.Event())
    linemode.notice(text, err)
    with contextlib.redirect_stderr(err):
        msgr._say(f"msgr: {text}")
    check_stream(err.getvalue(), 2)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(HOSTILE, min_size=6, max_size=6), st.booleans())
def test_the_screens_rows_never_hold_unsafe_characters(s: list[str], unicode: bool) -> None:
    view = ChatView(me="alice", peer="bob", address="127.0.0.1:8765", tls=True, ttl=30,
                    unicode=unicode)
    now = 1.7e9
    view.add_own(3, s[0], now=now, ttl=30)
    for event in events(s):
        view.apply(event, now=now)
    view.info(s[4], now=now)
    view.input.insert(s[0])
    view.input.insert(s[3], paste=True)
    view.status_lines(mode="ratchet", pending=1)
    for width, height in ((80, 40), (23, 12), (7, 5)):
        frame = view.render(width, height, now + 1)
        for row in frame.rows:
            for text, _ in row:
                assert not unsafe(text), ascii(text)
    view.expire(now + 100)   # the failed message leaves a line saying so
    assert not any(unsafe(t) for row in view.render(80, 40, now + 100).rows for t, _ in row)


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
