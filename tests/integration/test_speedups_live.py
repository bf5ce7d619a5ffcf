"""test_speedups, the tests that need real processes, sockets or a terminal (the
unit tests are in tests/unit/test_speedups.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_framing_and_kdf_work_copied_alone(tmp_path):
    """A minimal host copies framing.py and kdf.py to speak the wire format."""
    for name in ("framing.py", "kdf.py"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    code = (
        "import sys, framing, kdf\n"
        "assert 'msgrlib' not in sys.modules, sorted(sys.modules)\n"
        "frame = framing.encode_frame({'type': 'ping', 't': 'é'})\n"
        "d = framing.FrameDecoder()\n"
        "assert d.feed(frame) == [{'type': 'ping', 't': 'é'}]\n"
        "try:\n"
        "    framing.FrameDecoder(max_size=8).feed(frame)\n"
        "except framing.FrameTooLarge as exc:\n"
        "    assert isinstance(exc, Exception) and exc.code == 'frame_too_large'\n"
        "else:\n"
        "    raise SystemExit('no FrameTooLarge')\n"
        "assert issubclass(kdf.KdfError, Exception)\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr

