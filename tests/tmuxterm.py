"""The chat screen in a real terminal: tmux sessions, a TLS relay fixture, peers in line mode.

Shared by the terminal tests (tests/integration/test_screen_live.py and the
invite screen tests); fixtures imported from here are registered where imported.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import PYTHON, ROOT, chat_process, relay_process

PASSCODE = "tmux tests passcode"
_sockets = itertools.count()
needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def wait_until(check: Callable[[], Any], timeout: float, what: str,
               show: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{show()}")
        time.sleep(0.05)


class Tmux:
    """A detached tmux server of our own, 100x30, running an interactive sh."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"msgr-test-{os.getpid()}-{next(_sockets)}"
        self.env = env
        self.tmux("-f", "/dev/null", "new-session", "-d", "-x", "100", "-y", "30", "-s", "t",
                  "-c", ROOT, "sh")
        self.socket_path = self.display("#{socket_path}")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], env=self.env, check=True,
                              capture_output=True, text=True, timeout=10).stdout

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", text)

    def press(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def run(self, command: str) -> None:
        self.type(command)
        self.press("Enter")

    def screen(self, *flags: str) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t", *flags)

    def history(self) -> str:
        """Scrollback and screen: what remains in the terminal."""
        return self.tmux("capture-pane", "-p", "-t", "t", "-S", "-", "-E", "-")

    def display(self, fmt: str) -> str:
        return self.tmux("display-message", "-p", "-t", "t", fmt).strip()

    def input_row(self) -> str:
        rows = [row for row in self.screen().splitlines() if row == ">" or row.startswith("> ")]
        return rows[-1] if rows else ""

    def wait(self, pattern: str, timeout: float = 10.0) -> str:
        """Wait until the visible screen matches the regex ``pattern``."""
        def matched() -> str:
            shown = self.screen()
            return shown if re.search(pattern, shown) else ""

        shown: str = wait_until(matched, timeout, repr(pattern), self.screen)
        return shown

    def wait_gone(self, pattern: str, timeout: float) -> None:
        wait_until(lambda: not re.search(pattern, self.screen()), timeout,
                   f"{pattern!r} to disappear", self.screen)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], env=self.env,
                       capture_output=True, timeout=10)
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)   # tmux leaves the socket file behind


class Peer:
    """A line-mode ``msgr.py chat`` subprocess; its stdout lines are collected."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.errors: list[str] = []
        for stream, into in ((proc.stdout, self.lines), (proc.stderr, self.errors)):
            threading.Thread(target=self._collect, args=(stream, into), daemon=True).start()

    @staticmethod
    def _collect(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait_line(self, line: str, timeout: float = 10.0) -> None:
        wait_until(lambda: line in self.lines, timeout, f"the peer to print {line!r}",
                   lambda: "\n".join(self.lines + self.errors))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture(scope="module")
def tls_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str, str]]:
    """A TLS relay for the module: (port, certificate fingerprint, scratch dir)."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    from msgrlib.tls import x509

    tmp = tmp_path_factory.mktemp("screen")
    cert, key = str(tmp / "cert.pem"), str(tmp / "key.pem")
    with relay_process("--tls", "--cert", cert, "--key", key, "--log-level", "warning") as (
            _, port):
        with open(cert, "rb") as f:
            fp = x509.fingerprint(f.read())
        yield port, fp, str(tmp)


class Chat:
    """One test's setup: a tmux terminal, and a line-mode peer on demand."""

    def __init__(self, relay: tuple[int, str, str], name: str) -> None:
        self.port, self.fp, self.tmp = relay
        self.me, self.peer = f"{name}-alice", f"{name}-bob"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TMUX")
               and k != "NO_COLOR"}
        env.update(MSGR_PASSCODE=PASSCODE, LC_ALL="C.UTF-8", LANG="C.UTF-8", PS1="$ ")
        self.term = Tmux(env)
        self.peers: list[Peer] = []

    def tls_args(self) -> list[str]:
        return ["--tls", "--pin", self.fp, "--known-hosts", os.path.join(self.tmp, "kh")]

    def start(self, *extra: str, prefix: str = "", server: str | None = None) -> None:
        """Run the screen client in the tmux shell; ``echo rc=$?`` shows its exit code."""
        args = ["chat", "--server", server or f"127.0.0.1:{self.port}", "--user", self.me,
                "--peer", self.peer, *self.tls_args(), *extra]
        self.term.run(f"{prefix}{PYTHON} msgr.py {' '.join(args)}; echo rc=$?")

    def start_peer(self, *extra: str) -> Peer:
        peer = Peer(chat_process(self.port, self.peer, self.me, *self.tls_args(), *extra,
                                 passcode=PASSCODE))
        self.peers.append(peer)
        return peer

    def wait_session(self) -> None:
        self.term.wait(rf"{self.peer} online .*not verified")

    def wait_exit(self, code: int) -> None:
        self.term.wait(rf"(?m)^rc={code}$")
        assert self.term.display("#{alternate_on}") == "0"

    def close(self) -> None:
        for peer in self.peers:
            peer.stop()
        self.term.kill()


@pytest.fixture
def chat_term(tls_relay: tuple[int, str, str], request: pytest.FixtureRequest) -> Iterator[Chat]:
    name = re.sub(r"[^a-z0-9]", "", request.node.name.lower().replace("test_", ""))[:20]
    session = Chat(tls_relay, name)
    try:
        yield session
    finally:
        session.close()
