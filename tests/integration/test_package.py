"""`pip install .` into a fresh virtualenv gives a working `msgr` that lives beside anything.

This is what a new user does: install, then run msgr and embed it from a
directory of their own project, which holds the most ordinary file names
(errors.py, client.py, server.py, ...). Nothing of theirs may shadow msgr's
modules, and msgr's may not shadow theirs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

#: Files an ordinary project has; each would have broken msgr when it
#: installed twenty generic top-level modules.
PROJECT_FILES = ("errors.py", "client.py", "server.py", "relay.py", "store.py", "names.py",
                 "ui.py", "screen.py", "chat.py", "certs.py", "protocol.py", "core.py")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    if os.environ.get("MSGR_SKIP_PACKAGE_TEST"):
        pytest.skip("MSGR_SKIP_PACKAGE_TEST is set")
    where = tmp_path_factory.mktemp("venv")
    src = where / "src"
    # Install from a copy, so the build leaves nothing in the work tree.
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", ".pytest_cache", ".hypothesis", "*.egg-info", "build",
        ".mypy_cache", ".ruff_cache", "results"))
    subprocess.run([sys.executable, "-m", "venv", str(where / "env")], check=True)
    python = where / "env" / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "-q", str(src)],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"pip install . failed:\n{result.stdout}\n{result.stderr}")
    project = where / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        # Each raises if anything imports it: msgr must never pick these up.
        (project / name).write_text(f"raise ImportError('the project\\'s own {name} was "
                                    f"imported by msgr')\n")
    shutil.copy(os.path.join(ROOT, "examples", "embed.py"), project / "embed.py")
    return where / "env" / "bin", project


def run(cmd, cwd, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=kw.pop("timeout", 60), **kw)


def test_installed_command_works_from_a_project_with_ordinary_file_names(venv):
    bindir, project = venv
    out = run([str(bindir / "msgr"), "--help"], project)
    assert out.returncode == 0, out.stderr
    assert "serve" in out.stdout and "chat" in out.stdout
    out = run([str(bindir / "msgr"), "--version"], project)
    assert out.stdout.startswith("msgr "), out.stderr
    # `python -m msgr` puts the working directory first on sys.path.
    out = run([str(bindir / "python"), "-m", "msgr", "--version"], project)
    assert out.returncode == 0 and out.stdout.startswith("msgr "), out.stderr
    out = run([str(bindir / "python"), "-m", "msgr", "chat", "--help"], project)
    assert "--passcode-file" in out.stdout, out.stderr


def test_installed_library_imports_and_embeds_beside_the_project(venv):
    bindir, project = venv
    code = ("import msgr\n"
            "assert callable(msgr.start_relay) and callable(msgr.open_chat)\n"
            "msgr.RelayConfig, msgr.ChatClient, msgr.MsgrError, msgr.TlsOptions\n"
            "print('ok')\n")
    out = run([str(bindir / "python"), "-c", code], project)
    assert out.stdout.strip() == "ok", out.stderr
    # The README's embedding example, run from the project's directory.
    out = run([str(bindir / "python"), "embed.py"], project)
    assert out.returncode == 0, out.stderr
    assert "bob received from alice: hello bob" in out.stdout
    assert "alice received from bob: hi alice" in out.stdout


def test_site_packages_gains_only_msgr_and_its_package(venv):
    bindir, _ = venv
    purelib = run([str(bindir / "python"), "-c",
                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"], ".").stdout
    purelib = purelib.strip()
    assert purelib and purelib != sysconfig.get_paths()["purelib"]
    freeze = run([str(bindir / "python"), "-m", "pip", "freeze"], ".").stdout.lower()
    names = {line.split("==")[0].split(" @ ")[0].strip() for line in freeze.splitlines()}
    # Only msgr and its two dependencies (with theirs) were installed.
    assert names <= {"msgr", "pynacl", "argon2-cffi", "argon2-cffi-bindings", "cffi",
                     "pycparser"}, names
    record = [d for d in os.listdir(purelib) if d.startswith("msgr-") and d.endswith(".dist-info")]
    assert len(record) == 1
    with open(os.path.join(purelib, record[0], "RECORD"), encoding="utf-8") as f:
        tops = {line.split(",")[0].split("/")[0] for line in f if line.strip()}
    tops.discard("..")  # the console script lives in bin/
    assert tops == {"msgr.py", "framing.py", "kdf.py", "msgrlib", record[0], "__pycache__"}, tops
