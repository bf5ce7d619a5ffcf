"""`pip install .` into a fresh virtualenv gives a working `msgr` and library."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    if os.environ.get("MSGR_SKIP_PACKAGE_TEST"):
        pytest.skip("MSGR_SKIP_PACKAGE_TEST is set")
    where = tmp_path_factory.mktemp("venv")
    src = where / "src"
    # Install from a copy, so the build leaves nothing in the work tree.
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info", "build"))
    subprocess.run([sys.executable, "-m", "venv", str(where / "env")], check=True)
    python = where / "env" / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", str(src)],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"pip install . failed:\n{result.stdout}\n{result.stderr}")
    return where / "env" / "bin", where


def test_installed_command_help_and_version(venv):
    bindir, _ = venv
    out = subprocess.run([str(bindir / "msgr"), "--help"], capture_output=True, text=True,
                         check=True)
    assert "serve" in out.stdout and "chat" in out.stdout
    out = subprocess.run([str(bindir / "msgr"), "--version"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.startswith("msgr ")
    out = subprocess.run([str(bindir / "python"), "-m", "msgr", "chat", "--help"],
                         capture_output=True, text=True, check=True)
    assert "--passcode-file" in out.stdout


def test_installed_library_runs_the_embedding_example(venv):
    bindir, where = venv
    out = subprocess.run([str(bindir / "python"), os.path.join(ROOT, "examples", "embed.py")],
                         capture_output=True, text=True, timeout=60, cwd=str(where))
    assert out.returncode == 0, out.stderr
    assert "bob received from alice: hello bob" in out.stdout
    assert "alice received from bob: hi alice" in out.stdout
    # Only msgr's own modules and its two dependencies were needed.
    freeze = subprocess.run([str(bindir / "python"), "-m", "pip", "freeze"],
                            capture_output=True, text=True, check=True).stdout.lower()
    names = {line.split("==")[0].split(" @ ")[0].strip() for line in freeze.splitlines()}
    assert names <= {"msgr", "pynacl", "argon2-cffi", "argon2-cffi-bindings", "cffi",
                     "pycparser"}, names
