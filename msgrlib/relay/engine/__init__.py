"""The engine backend: several relay processes acting as one relay over Redis/Valkey.

Importing this package does not import redis-py; :meth:`RedisBackend.start`
does (``pip install 'msgr[redis]'``). See ``backend.py`` for the contract
with the relay core and ``scripts.py`` for the keys and the Lua steps.
"""

from msgrlib.relay.engine.backend import (
    Claimed,
    Deliver,
    EngineConfigError,
    EngineError,
    EngineLimits,
    EngineReset,
    EngineUnavailable,
    Event,
    Expired,
    InviteJoined,
    InviteLapsed,
    NameOwned,
    Presence,
    Reaped,
    RedisBackend,
    Replaced,
    Reset,
    Resync,
    ShareFull,
    TooManyNames,
    check_url,
    shard_of,
)

__all__ = [
    "Claimed", "Deliver", "EngineConfigError", "EngineError", "EngineLimits", "EngineReset",
    "EngineUnavailable", "Event", "Expired", "InviteJoined", "InviteLapsed", "NameOwned",
    "Presence", "Reaped", "RedisBackend", "Replaced", "Reset", "Resync", "ShareFull",
    "TooManyNames", "check_url", "shard_of",
]
