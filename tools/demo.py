"""A one-command demo: a local TLS relay and two scripted clients, alice and bob.

    python -m tools.demo

It starts ``msgr.py serve --tls`` on a free port with a fresh self-signed
certificate in a temporary directory, then two line-mode ``msgr.py chat``
clients that pin that certificate's fingerprint and share a random passcode
(through ``MSGR_PASSCODE``). They exchange a few messages, and everything both
sides print is shown, prefixed with who printed it::

    [alice] bob: Loud and clear.

Then it closes the clients' input (each waits until its messages are confirmed
and exits), stops the relay and removes the temporary directory. Bounded in
time (:data:`DEADLINE`); exit code 0 when every message was delivered.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MSGR = os.path.join(ROOT, "msgr.py")

#: Seconds the whole demo may take before it gives up (a healthy run takes ~3 s).
DEADLINE = 25.0

SCRIPT = [
    ("alice", "Hi Bob! Is this channel safe?"),
    ("bob", "Loud and clear. The relay only ever sees ciphertext."),
    ("alice", "And nobody can read old messages later?"),
    ("bob", "Right: fresh keys per message, and the relay forgets them after their TTL."),
    ("alice", "Perfect. Bye!"),
]


class DemoFailed(Exception):
    pass


class Output:
    """Prints every line the processes write, prefixed, and remembers them."""

    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {}
        self.changed = threading.Condition()
        self.threads: dict[str, threading.Thread] = {}

    def follow(self, who: str, stream: IO[str] | None) -> None:
        assert stream is not None
        self.lines.setdefault(who, [])
        thread = self.threads[who] = threading.Thread(target=self._pump, args=(who, stream),
                                                      daemon=True)
        thread.start()

    def drain(self, *whos: str) -> None:
        """Wait (briefly) until these streams reached their end and were printed."""
        for who in whos:
            self.threads[who].join(2)

    def _pump(self, who: str, stream: IO[str]) -> None:
        for raw in stream:
            self.say(who, raw.rstrip("\n"))
            with self.changed:
                self.lines[who].append(raw.rstrip("\n"))
                self.changed.notify_all()

    def say(self, who: str, text: str) -> None:
        name = who.split(".")[0]
        print(f"[{name}] {text}", flush=True)

    def wait_for(self, who: str, pattern: str, deadline: float, what: str) -> None:
        """Wait until a line from ``who`` matches the regex ``pattern``."""
        with self.changed:
            while not any(re.search(pattern, line) for line in self.lines[who]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DemoFailed(f"timed out waiting for {what}")
                self.changed.wait(left)


def start_relay(tmp: str, output: Output, deadline: float) -> tuple[subprocess.Popen[str], int,
                                                                    str]:
    relay = subprocess.Popen(
        [sys.executable, MSGR, "serve", "--host", "127.0.0.1", "--port", "0", "--tls",
         "--cert", os.path.join(tmp, "cert.pem"), "--key", os.path.join(tmp, "key.pem"),
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    first: queue.Queue[str] = queue.Queue()
    assert relay.stdout is not None
    threading.Thread(target=lambda: first.put(relay.stdout.readline() if relay.stdout
                                              else ""), daemon=True).start()
    output.follow("relay.err", relay.stderr)
    try:
        line = first.get(timeout=max(0.1, deadline - time.monotonic()))
    except queue.Empty:
        raise DemoFailed("the relay did not start in time") from None
    match = re.search(r"listening on 127\.0\.0\.1:(\d+) with TLS, certificate (SHA256:\S+)",
                      line)
    if not match:
        raise DemoFailed(f"the relay did not start: {line.strip() or 'no output'}")
    output.say("relay", line.strip())
    return relay, int(match.group(1)), match.group(2)


def start_client(me: str, peer: str, port: int, fingerprint: str, tmp: str,
                 env: dict[str, str], output: Output) -> subprocess.Popen[str]:
    client = subprocess.Popen(
        [sys.executable, MSGR, "chat", "--server", f"127.0.0.1:{port}", "--user", me,
         "--peer", peer, "--tls", "--pin", fingerprint,
         "--known-hosts", os.path.join(tmp, "known_hosts")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, env=env, bufsize=1)
    output.follow(f"{me}.out", client.stdout)
    output.follow(f"{me}.err", client.stderr)
    return client


def safety_number(lines: list[str]) -> str | None:
    for line in lines:
        match = re.search(r"safety number ([\d ]+\d)", line)
        if match:
            return match.group(1)
    return None


def demo() -> None:
    start = time.monotonic()
    deadline = start + DEADLINE
    output = Output()
    processes: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="msgr-demo-") as tmp:
        try:
            relay, port, fingerprint = start_relay(tmp, output, deadline)
            processes.append(relay)
            # The name keys of this throwaway relay go with the temporary
            # directory, not to the user's state directory.
            env = {**os.environ, "MSGR_PASSCODE": secrets.token_urlsafe(12),
                   "XDG_STATE_HOME": os.path.join(tmp, "state")}
            output.say("demo", "alice and bob share a random passcode (MSGR_PASSCODE) and pin "
                       "the relay's certificate with --pin")
            clients = {name: start_client(name, peer, port, fingerprint, tmp, env, output)
                       for name, peer in (("alice", "bob"), ("bob", "alice"))}
            processes.extend(clients.values())

            for name in clients:
                output.wait_for(f"{name}.err", r"safety number \d", deadline,
                                f"{name}'s secure session")
            numbers = {safety_number(output.lines[f"{name}.err"]) for name in clients}
            if len(numbers) != 1:
                raise DemoFailed("the two safety numbers differ: a man in the middle?")
            output.say("demo", "both sides show the same safety number: no one is in the "
                       "middle")

            for sender, text in SCRIPT:
                receiver = "bob" if sender == "alice" else "alice"
                output.say(sender, f"> {text}")
                stdin = clients[sender].stdin
                assert stdin is not None
                stdin.write(text + "\n")
                stdin.flush()
                output.wait_for(f"{receiver}.out", f"^{re.escape(f'{sender}: {text}')}$",
                                deadline, f"{receiver} to receive {text!r}")

            # End of input: each client waits until its messages are confirmed, then exits
            # 0 if all were delivered.
            for client in clients.values():
                assert client.stdin is not None
                client.stdin.close()
            for name, client in clients.items():
                try:
                    code = client.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise DemoFailed(f"{name} did not finish in time") from None
                output.drain(f"{name}.out", f"{name}.err")
                if code != 0:
                    raise DemoFailed(f"{name} exited with code {code}")
            relay.terminate()
            relay.wait(5)
            output.say("demo", f"done in {time.monotonic() - start:.1f} s: {len(SCRIPT)} "
                       "messages delivered end to end; the relay kept them in memory only, "
                       "for at most their TTL")
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()


def main() -> int:
    try:
        demo()
    except DemoFailed as err:
        print(f"[demo] failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
