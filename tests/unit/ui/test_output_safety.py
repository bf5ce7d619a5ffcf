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
from types import SimpleNamespace

from helpers import unsafe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import msgr
from msgrlib.client import core as chat
from msgrlib.client.events import Status
from msgrlib.ui import linemode, transfer_cli
from msgrlib.ui.view import ChatView

#: Strings from outside: anything, with the attacker's favourites made likely.
HOSTILE = st.text(alphabet=st.one_of(
    st.characters(),
    st.sampled_from(["\x1b", "\x9b", "\x07", "\r", "\n", "\u2028", "\u2029", "\u202e",
                     "\u200b", "\u200d", "\ufeff", "\U000e0041", "\ue000", "\ud800",
                     "\u0378", "\x7f", "\t"])))


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
        transfer_cli._say(text)  # send/receive's notices (reasons, paths, codes)
    check_stream(err.getvalue(), 3)


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

