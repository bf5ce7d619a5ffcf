"""Limits both sides share, each defined once.

The relay's own limits (frame size, rates, store budget...) live in
``relay/config.py`` with the reason for each number; these are the ones the
client, the CLI and the relay must agree on.
"""

from __future__ import annotations

#: A message lives 5 to 60 seconds at the relay: long enough to cross a
#: reconnect (the client's reconnect wait is capped at 5 s), short enough that
#: nothing a relay holds in memory outlives a minute.
TTL_MIN = 5
TTL_MAX = 60
#: The TTL a message gets unless the sender chooses another.
TTL_DEFAULT = 30


#: Longest message accepted from the user, in characters. Keeps every sealed
#: frame well under the relay's 64 KiB frame limit (the byte limit the relay
#: sets is checked too: ``ChatCore.max_text_bytes``).
MAX_TEXT = 16 * 1024


def ttl_in_range(ttl: object) -> bool:
    """True if ``ttl`` is a whole number of seconds in ``TTL_MIN..TTL_MAX``."""
    return type(ttl) is int and TTL_MIN <= ttl <= TTL_MAX
