"""msgr.py's command line: what a new user types by mistake, and the Makefile's set-up.

Found in the new-user review (issue 14 items 9, 10, 12), each with real
processes (a real relay where one is needed).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT, chat_argv, relay_running, run

from msgrlib.ui.options import WEAK_PASSCODE_BITS, passcode_bits, weak_passcode_warning


def msgr(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, os.path.join(ROOT, "msgr.py"), *args],
                          capture_output=True, text=True, timeout=30, cwd=ROOT,
                          stdin=subprocess.DEVNULL,
                          env={k: v for k, v in {**os.environ, **(env or {})}.items()
                               if k != "MSGR_PASSCODE" or env})


def test_a_passcode_file_that_is_a_directory_is_named_as_one_first(tmp_path) -> None:
    """It used to advise "chmod 600 /tmp" before saying it could not be read."""
    os.chmod(tmp_path, 0o755)
    out = msgr("chat", "--server", "127.0.0.1:1", "--user", "a", "--peer", "b",
               "--passcode-file", str(tmp_path))
    assert out.returncode == 1
    assert out.stderr == (f"msgr: --passcode-file {tmp_path} is a directory: give the file "
                          "whose first line is the passcode\n")


def test_help_states_the_name_rules() -> None:
    out = msgr("chat", "--help")
    text = " ".join(out.stdout.split())
    assert "1-32 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or digit" \
        in text
    assert "capitals are taken as lower case" in text


def test_passcode_strength_estimate() -> None:
    assert passcode_bits("a") < 10
    assert passcode_bits("aaaaaaaaaaaaaaaaaaaa") < 30       # repeats add next to nothing
    assert passcode_bits("123456789012345") < 30            # so do runs
    assert passcode_bits("correct horse battery staple") > 100
    assert weak_passcode_warning("correct horse battery staple") is None
    warning = weak_passcode_warning("hunter2")
    assert warning is not None and f"at least {WEAK_PASSCODE_BITS}" in warning
    assert re.search(r"about \d+ bits", warning)


async def _chat(port: int, user: str, peer: str, passcode: str,
                *extra: str) -> tuple[int, str]:
    env = {**os.environ, "MSGR_PASSCODE": passcode,
           "HOME": os.environ.get("MSGR_TEST_HOME", os.environ.get("HOME", "/tmp"))}
    proc = await asyncio.create_subprocess_exec(
        *chat_argv(port, user, peer, *extra), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env)
    _, err = await asyncio.wait_for(proc.communicate(b""), 60)
    return await proc.wait(), err.decode()


def test_capitals_are_lowered_with_a_notice_and_weak_static_passcodes_are_warned() -> None:
    """"--user Alice" was refused with only "see msgr chat --help"; a one-character
    passcode got no warning in --static mode, where the relay can test guesses
    offline."""
    async def main() -> list[tuple[int, str]]:
        async with relay_running() as srv:
            port = srv.address[1]
            return [await _chat(port, "Alice", "Bob", "a", "--static", "--wait", "1"),
                    await _chat(port, "carol", "dave", "correct horse battery staple",
                                "--static", "--wait", "1"),
                    await _chat(port, "erin", "frank", "a", "--wait", "1")]

    (code, err), (strong_code, strong), (ratchet_code, ratchet) = run(main(), timeout=90)
    assert code == 0, err
    assert "msgr: --user Alice is taken as alice (names are lower case)" in err
    assert "msgr: --peer Bob is taken as bob (names are lower case)" in err
    assert re.search(r"msgr: warning: this passcode is weak for --static mode: about 5 bits",
                     err), err
    assert strong_code == 0 and "weak" not in strong, strong
    # The default mode's handshake gives an offline attacker nothing to test.
    assert ratchet_code == 0 and "weak" not in ratchet, ratchet


def test_the_readme_puts_no_passcode_on_a_command_line() -> None:
    """The README's own example put the passcode in shell history."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    assert blocks
    for block in blocks:
        assert not re.search(r"MSGR_PASSCODE=\S", block), block
        assert "--passcode " not in block, block
    assert "--passcode-file" in readme and "read -rs" in readme


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_serve_installs_the_runtime_dependencies_only(tmp_path) -> None:
    """`make serve` took 34 s installing pytest, hypothesis, ruff... to run a relay."""
    venv = str(tmp_path / "venv")

    def plan(target: str) -> str:
        return subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=ROOT, check=True,
                              capture_output=True, text=True, timeout=30).stdout

    serve = plan("serve")
    assert "-r requirements.txt" in serve and "requirements-dev.txt" not in serve
    assert "--upgrade pip" not in serve
    test = plan("test")
    assert "-r requirements.txt" in test and "-r requirements-dev.txt" in test
