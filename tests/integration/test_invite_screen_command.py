"""``/invite`` typed in a running chat screen (issue 16 item 1): a real TLS relay, the screen
in tmux, and ``msgr chat --join`` as a real process on the other side. The states and the
rendezvous' cancel are unit-tested in tests/unit/ui/test_invite_flow.py."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

from helpers import PYTHON, ROOT
from tmuxterm import Chat, needs_tmux, wait_until

CODE = re.compile(r"your invite code is\s+(\d+-[a-z]+-[a-z]+)")


def joiner(chat: Chat, code: str) -> subprocess.Popen[str]:
    """``msgr chat --join CODE`` in line mode (stdin and stdout are pipes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGR_")}
    env["HOME"] = chat.tmp
    return subprocess.Popen(
        [PYTHON, os.path.join(ROOT, "msgr.py"), "chat", "--join", code, "--server",
         f"127.0.0.1:{chat.port}", *chat.tls_args()], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen[str], timeout: float = 40) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def invite(chat: Chat) -> str:
    """Type /invite in the screen; the (newest) code it shows."""
    before = len(CODE.findall(chat.term.screen()))
    chat.term.run("/invite")
    codes = wait_until(lambda: CODE.findall(chat.term.screen())[before:], 20,
                       "a new invite code", chat.term.screen)
    return str(codes[-1])


def named_screen(chat: Chat) -> None:
    """A named chat whose peer never comes: an idle conversation /invite may replace."""
    chat.start()
    chat.term.wait(r"connected to 127\.0\.0\.1", 30)


@needs_tmux
def test_invite_in_a_running_screen_opens_a_chat_with_whoever_joins(chat_term: Chat) -> None:
    term = chat_term.term
    named_screen(chat_term)
    code = invite(chat_term)
    # The status line says what is awaited, and for how long.
    term.wait(rf"waiting for the other side to type the code {code}; it expires in \d+ s", 10)
    bar = term.screen().splitlines()[0]
    assert "you" in bar and "peer" in bar and chat_term.peer not in bar, bar
    proc = joiner(chat_term, code)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        term.wait(r"secure session with peer", 30)
        wait_until(lambda: "the other side is here" not in term.screen().splitlines()[-2],
                   10, "the activity row to leave the invite", term.screen)
        proc.stdin.write("hello from the joiner\n")
        proc.stdin.flush()
        term.wait(r"peer: hello from the joiner", 20)
        term.run("and back from the screen")
        assert proc.stdout.readline().strip() == "peer: and back from the screen"
        rc, _, err = finish(proc)   # closes its stdin: the joiner leaves
        assert rc == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    term.run("/quit")
    chat_term.wait_exit(0)


@needs_tmux
def test_a_wrong_code_burns_the_screens_invite_and_a_new_one_can_start(
        chat_term: Chat) -> None:
    from msgrlib.invite import make_code, parse_code

    term = chat_term.term
    named_screen(chat_term)
    code = parse_code(invite(chat_term))
    wrong = next(str(c) for c in (make_code(code.nameplate, lambda n, b=b: bytes([b] * n))
                                  for b in range(256)) if c.words != code.words)
    rc, out, err = finish(joiner(chat_term, wrong))
    assert rc != 0 and "burned" in out + err, out + err
    term.wait(r"invite burned: a wrong code was tried", 30)
    term.wait(r"this invite is\s+burned", 5)
    term.run("still there?")
    term.wait(r"no conversation now: nothing was sent", 5)
    term.press("C-u")
    # The screen is still here: typing says there is no conversation... until /invite.
    again = invite(chat_term)
    term.wait(rf"waiting for the other side to type the code {again}", 10)
    term.run("/quit")
    chat_term.wait_exit(0)


@needs_tmux
def test_cancel_gives_the_number_back_to_the_relay(chat_term: Chat) -> None:
    term = chat_term.term
    named_screen(chat_term)
    code = invite(chat_term)
    term.run("typed before anyone came")   # queued for the peer to come
    term.wait(r"you: typed before anyone came", 5)
    term.run("/cancel")
    # "freed its number" comes from the relay's nameplate_gone, the answer to `cancel`.
    term.wait(r"the relay freed its number", 20)
    term.wait(r"invite cancelled; no conversation now: /invite starts a new one", 5)
    term.wait(r"(?s)you: typed before anyone came\s+not delivered.{0,40}nobody\s+joined", 5)
    rc, out, err = finish(joiner(chat_term, code))
    assert rc != 0 and "no invite with that number" in out + err, out + err
    term.run("anyone there?")
    term.wait(r"no conversation now: nothing was sent", 5)
    assert term.input_row() == "> anyone there?"
    term.press("C-u")   # the text stayed in the input line
    term.run("/quit")
    chat_term.wait_exit(0)


@needs_tmux
def test_invite_leaves_a_chat_in_use_alone(chat_term: Chat) -> None:
    term = chat_term.term
    chat_term.start_peer()
    chat_term.start()
    chat_term.wait_session()
    term.run("/invite")
    term.wait(rf"/invite replaces this conversation, and it is in use \({chat_term.peer} "
              r"is online", 10)
    assert not CODE.search(term.screen())
    term.run("/cancel")
    term.wait(r"nothing to cancel", 5)
    term.run("/quit")
    chat_term.wait_exit(0)


@needs_tmux
def test_the_screen_counts_the_code_down_says_when_it_expired_and_esc_cancels(
        tmp_path: Any) -> None:
    """A relay whose nameplates last 3 s (in this process, on a thread's loop): the
    activity line counts down, the relay's ``nameplate_gone`` (expired) leaves the screen
    open saying so, and Esc gives a second code back."""
    import asyncio
    import threading

    from helpers import relay_running
    from tmuxterm import Chat as TermChat

    from msgrlib.relay.rules import RelayConfig

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    relay = relay_running(RelayConfig(nameplate_ttl=3.0))
    srv = asyncio.run_coroutine_threadsafe(relay.__aenter__(), loop).result(10)
    chat = TermChat((srv.address[1], "", str(tmp_path)), "expiry")
    try:
        term = chat.term
        term.run(f"{PYTHON} msgr.py chat --server 127.0.0.1:{srv.address[1]} --user {chat.me} "
                 f"--peer {chat.peer}; echo rc=$?")
        term.wait(r"connected to 127\.0\.0\.1", 30)
        code = invite(chat)
        term.wait(rf"type the code {code}; it expires in [1-3] s", 5)
        term.wait(r"invite expired unused; no conversation now: /invite starts a new one", 15)
        term.wait(r"nobody used the invite code before it expired", 5)
        code = invite(chat)
        term.wait(rf"type the code {code}", 5)
        assert len(srv.relay.nameplates) == 1
        term.press("Escape")
        term.wait(r"the relay freed its number", 10)
        term.wait(r"invite cancelled; no conversation now", 5)
        assert len(srv.relay.nameplates) == 0
        term.run("/quit")
        term.wait(r"(?m)^rc=0$", 10)
    finally:
        chat.close()
        asyncio.run_coroutine_threadsafe(relay.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


@needs_tmux
def test_a_relay_that_never_answers_cancel_is_hung_up_on_by_a_second_cancel(
        tmp_path: Any) -> None:
    """A relay (here a proxy in front of a real one) that swallows ``cancel``: the screen
    waited for its answer for good, and a second /cancel only said "being cancelled
    already", so neither a new /invite nor anything but /quit could follow (found by the
    review). Now a second /cancel closes the connection, which frees the number."""
    import asyncio
    import threading
    import time

    from helpers import Proxy, relay_running
    from tmuxterm import Chat as TermChat

    swallowed: list[dict[str, Any]] = []

    def hook(way: str, frame: dict[str, Any], conn: dict[str, Any]) -> list[Any]:
        if way == "up" and frame.get("type") == "cancel":
            swallowed.append(frame)
            return []
        return [frame]

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    relay = relay_running()
    srv = asyncio.run_coroutine_threadsafe(relay.__aenter__(), loop).result(10)
    proxy = asyncio.run_coroutine_threadsafe(Proxy(srv.address[1], hook).start(), loop).result(10)
    chat = TermChat((proxy.port, "", str(tmp_path)), "nocancel")
    try:
        term = chat.term
        term.run(f"{PYTHON} msgr.py chat --server 127.0.0.1:{proxy.port} --user {chat.me} "
                 f"--peer {chat.peer}; echo rc=$?")
        term.wait(r"connected to 127\.0\.0\.1", 30)
        invite(chat)
        term.run("/cancel")
        term.wait(r"waiting for the relay to free its number \(/cancel again hangs up\)", 10)
        assert swallowed and len(srv.relay.nameplates) == 1
        term.run("/cancel")
        term.wait(r"the relay had not answered, so the connection was closed", 10)
        term.wait(r"invite cancelled; no conversation now: /invite starts a new one", 5)
        deadline = time.monotonic() + 10
        while srv.relay.nameplates and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(srv.relay.nameplates) == 0   # the hang-up freed it
        invite(chat)                            # and a new invite can start
        term.run("/quit")
        term.wait(r"(?m)^rc=0$", 10)
    finally:
        chat.close()
        asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(5)
        asyncio.run_coroutine_threadsafe(relay.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
