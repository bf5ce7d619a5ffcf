"""Shared fixtures live in tests/helpers.py; msgr is imported from the checkout
(pyproject's ``pythonpath``) or from wherever it is installed."""

import os
import tempfile

# Name keys kept by default (msgrlib.client.identity) go to a scratch state
# directory, never the user's; client subprocesses inherit it.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="msgr-test-state-")
