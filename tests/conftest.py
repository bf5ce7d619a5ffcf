"""Shared fixtures live in tests/helpers.py; msgr is imported from the checkout
(pyproject's ``pythonpath``) or from wherever it is installed."""
