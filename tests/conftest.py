"""Shared fixtures live in tests/helpers.py; msgr is imported from the checkout
(pyproject's ``pythonpath``) or from wherever it is installed."""

import os
import shutil
import tempfile


def pytest_configure(config):
    """Clients keep their name keys under $XDG_STATE_HOME (client/identity.py):
    point it at a private directory, so tests never write to the user's home."""
    state = os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="msgr-test-state-")
    config.add_cleanup(lambda: shutil.rmtree(state, ignore_errors=True))
