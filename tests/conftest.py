"""Shared fixtures live in tests/helpers.py; msgr is imported from the checkout
(pyproject's ``pythonpath``) or from wherever it is installed."""

import os
import shutil
import tempfile

import pytest


def pytest_configure(config):
    """Clients keep their name keys under $XDG_STATE_HOME (client/identity.py):
    point it at a private directory, so tests never write to the user's home."""
    state = os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="msgr-test-state-")
    config.add_cleanup(lambda: shutil.rmtree(state, ignore_errors=True))


@pytest.fixture(params=["memory", "engine"])
def store(request):
    """Run the test's relays in memory, then on a Redis engine (tests/helpers.py
    STORE; the engine runs skip, saying why, without redis-server)."""
    import helpers

    if request.param == "engine":
        from tests.engine_helpers import engine_binary

        engine_binary()  # or skip
    helpers.STORE["mode"] = request.param
    yield request.param
    helpers.STORE["mode"] = helpers.DEFAULT_STORE
