"""The relay's engine backend: names, mailboxes and expiry in Redis/Valkey.

:class:`RedisBackend` is what several relay processes share to act as one
relay. It holds no truth of its own: every step is one atomic Lua script
(:mod:`.scripts`) on the shard that owns the name, ``crc32(name) mod K`` for
K engine URLs. Pub/sub only wakes a node; after every (re)subscribe the node
is told (:class:`Resync`) to re-read the mailboxes of its connected names.

Contract with the relay core
----------------------------
The core keeps everything per connection (states, signature checks, token
buckets, frame formatting, timeouts, backpressure) and asks the backend for
what must be shared between nodes. Every method is a coroutine answering
later; calls to one shard run in the order they were made (one pipelined
connection per shard), but calls to different shards may complete in any
order, so the core answers each connection's frames in the order they came.

Names and connections: a connection is identified by ``conn``, a string the
core chooses, unique within this node (``RedisBackend.connection_id()``);
the engine records ``(node, conn)`` for a claimed name.

=========================  ===================================================
``claim(name, key, conn)``  after the core verified the Ed25519 signature.
                            Returns :class:`Claimed`; raises
                            :class:`NameOwned` (another key holds it) or
                            :class:`TooManyNames`. If the same key was
                            connected elsewhere, that node gets
                            :class:`Replaced`; if it was on this node,
                            ``Claimed.replaced`` names the old conn and the
                            core closes it (no event for it).
``release(name, conn,      the connection ended; only releases when ``conn``
bye=)``                     still holds the name. The name stays bound to its
                            key for ``claim_ttl`` and while messages wait.
``send(sender, to, body,   stores or raises :class:`StoreError`
kind, ttl, origin=)``       (``MailboxFull``, ``StoreFull``, :class:`ShareFull`)
                            with nothing kept, checked as ``MemoryStore.add``
                            does (same order, same messages, ``origin`` the
                            sender's address key); returns the :class:`Held`
                            (``expires_at`` = ``expires_wall`` = engine Unix
                            seconds). The recipient's node gets
                            :class:`Deliver` if the recipient is connected.
                            ``ttl`` is already clamped by the core.
``handshake_allowed(a, b)`` one token from the pair's shared bucket
``handshake_take(a, b, n)`` the same; refused, the seconds until it holds n.
``ack(name, conn, ids)``    idempotent; returns how many were deleted, or
                            None if ``conn`` no longer holds the name.
``fetch(name, conn)``       what waits for the name, unexpired, oldest first
                            (on sign-in, resume, :class:`Resync`); None if
                            ``conn`` no longer holds the name. Expiry reports
                            kept for the name as a sender come out as
                            :class:`Expired` events first (pub/sub may have
                            missed them, or the sender was between two
                            connections); so an ``Expired`` may repeat, which
                            clients ignore.
``count_for(name)``         messages waiting (for name_owned explanations).
``watch(name)`` /           this node starts/stops watching a name (counted:
``unwatch(name)``           the engine hears the first watch and the last
                            unwatch); ``watch`` returns whether it is online.
``online(name)``            whether it is online (to refresh watchers after
                            :class:`Resync`).
``allocate_nameplate(owner, an invite nameplate (PROTOCOL.md 3.6) on shard 0,
conn, ttl)`` /              the smallest free number as in memory; raises
``join_nameplate(n, who)``  NameplateError. A join frees it and the owner's
``cancel_nameplate(n, o)``  node gets :class:`InviteJoined`; one that lapses
``cancel_nameplates(o, c)`` gets :class:`InviteLapsed` (popped by the expirer);
                            a connection's end or a reaped node frees its own.
``epoch``                   what ``welcome.relay`` says: changes only when the
                            engine was wiped (:class:`Reset`).
=========================  ===================================================

Every call may raise :class:`EngineUnavailable` (no answer: the step may or
may not have happened) or :class:`EngineReset` (the engine was wiped; a
:class:`Reset` event follows); ``send``, ``watch`` and ``handshake_allowed``
may raise ``StoreFull`` when the engine is out of memory (nothing done).
Names passed in are valid names (``is_valid_name``): the core checks them.

Events reach the core through ``on_event(event)``, called in the event loop:
:class:`Deliver`, :class:`Expired` (to the sender's connection),
:class:`InviteJoined`, :class:`InviteLapsed` (to the inviter's connection),
:class:`Replaced`, :class:`Presence`, :class:`Resync`, :class:`Reset` (the
engine restarted empty: tell every connection ``shutdown``) and
:class:`Reaped` (this node's lease lapsed, so its names were released: close
every connection; they reconnect).

The backend runs its own tasks after :meth:`RedisBackend.start`: one pub/sub
listener per shard with its reconnect loop (redis-py's asyncio pub/sub does
not reconnect), the lease renewer, and one expirer per shard (pops what is
due, sleeps until the next deadline or ``expire_poll``, whichever is first,
since other nodes add messages it does not hear about).

Engine errors::

    MsgrError
    ├── StoreError (msgrlib.relay.store)  a message was refused, nothing kept:
    │   │                                 MailboxFull, StoreFull, store.ShareFull
    │   └── ShareFull                     (a store.ShareFull) the sender's name
    │                                     or address holds its whole share
    └── EngineError                       the engine could not answer
        ├── EngineConfigError             refusing to start: evicting engine,
        │                                 old version, two shards on one server,
        │                                 a password in a URL, a wrong password
        ├── EngineUnavailable             connection lost or timed out: the
        │                                 step may or may not have happened
        ├── EngineReset                   the engine was wiped (epoch changed)
        ├── NameOwned                     claim refused: another key
        └── TooManyNames                  claim refused: max_names on the shard

Time: scripts read the engine's clock (``TIME``) unless ``clock_ms`` is
given, so every node of a deployment agrees on expiry whatever its own clock
says. Tests pass a fake clock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from msgrlib.errors import LocalError
from msgrlib.invite import nameplates
from msgrlib.relay import store
from msgrlib.relay.engine.scripts import SCRIPTS
from msgrlib.relay.store import (
    DEFAULT_MAILBOX_BYTES,
    DEFAULT_MAILBOX_MESSAGES,
    DEFAULT_STORE_BYTES,
    OVERHEAD_BYTES,
    Held,
    MailboxFull,
    StoreFull,
)

log = logging.getLogger("msgr.relay.engine")

#: The oldest engine the scripts are written for (ZRANGE ... BYSCORE is 6.2,
#: the issue asks 7.0; Valkey 7.2 reports redis_version 7.2.x).
MIN_VERSION = (7, 0)
#: Script calls sent to a shard in one pipeline (one round trip).
MAX_BATCH = 512
#: Eviction policies that cannot lose a key. Anything else would drop
#: messages or claims silently when the engine fills up.
SAFE_POLICIES = frozenset({"noeviction"})


class EngineError(LocalError):
    """The engine could not do what was asked."""

    code = "engine"


class EngineConfigError(EngineError):
    """The engine is configured in a way msgr refuses to run on."""


class EngineUnavailable(EngineError):
    """The engine did not answer (connection lost, timeout, refused).

    The step may have happened or not; the caller reports failure and the
    client resends, which is safe because clients drop relay ids they saw.
    """

    code = "engine_unavailable"


class EngineReset(EngineError):
    """The shard's epoch changed: the engine restarted empty."""

    code = "shutting_down"

    def __init__(self, epoch: str) -> None:
        super().__init__("the relay's engine restarted; reconnect")
        self.epoch = epoch


class NameOwned(EngineError):
    """The name is bound to another key. Carries what the core explains."""

    code = "name_owned"

    def __init__(self, name: str, *, connected: bool, since: float, released_at: float,
                 said_bye: bool, waiting: int, now: float) -> None:
        super().__init__(f"the name {name!r} is owned by another key")
        self.name = name
        self.connected = connected
        self.since = since              # engine Unix seconds the key took the name
        self.released_at = released_at  # engine Unix seconds its last connection ended
        self.said_bye = said_bye
        self.waiting = waiting          # messages waiting for it, not expired
        self.now = now                  # the engine's clock then: ago = now - released_at


class TooManyNames(EngineError):
    code = "relay_full"


class ShareFull(store.ShareFull):
    """The sender's name or address holds its whole share (``share_bytes``).

    ``share`` is ``"name:<sender>"`` or ``"addr:<origin>"``."""

    def __init__(self, message: str, *, share: str, held: int, limit: int) -> None:
        super().__init__(message)
        self.share = share
        self.held = held
        self.limit = limit


# -- events -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deliver:
    """A new message for ``conn``, a connection of this node."""

    conn: str
    held: Held


@dataclass(frozen=True, slots=True)
class Expired:
    """Message ``msg_id`` to ``recipient`` expired unread; ``conn`` sent it."""

    conn: str
    msg_id: int
    recipient: str


@dataclass(frozen=True, slots=True)
class Replaced:
    """``conn`` lost its name to a newer connection with the same key elsewhere."""

    conn: str


@dataclass(frozen=True, slots=True)
class Presence:
    """``name`` came online or went offline; tell this node's watchers."""

    name: str
    online: bool


@dataclass(frozen=True, slots=True)
class Resync:
    """(Re)subscribed to ``shard``: publications may have been missed, so
    fetch again the mailboxes of connected names on that shard (clients drop
    ids they have seen) and re-send presence if it matters."""

    shard: int


@dataclass(frozen=True, slots=True)
class Reset:
    """The engine restarted empty; ``epoch`` is the new ``welcome.relay``."""

    epoch: str


@dataclass(frozen=True, slots=True)
class Reaped:
    """This node's lease lapsed on ``shard`` and its names were released."""

    shard: int


@dataclass(frozen=True, slots=True)
class InviteJoined:
    """Invite ``nameplate`` of ``conn`` (a connection of this node) was joined by ``joiner``."""

    conn: str
    nameplate: int
    joiner: str


@dataclass(frozen=True, slots=True)
class InviteLapsed:
    """Invite ``nameplate`` of ``conn`` (a connection of this node) lapsed unused."""

    conn: str
    nameplate: int


Event = (Deliver | Expired | Replaced | Presence | Resync | Reset | Reaped | InviteJoined
         | InviteLapsed)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claim granted. ``replaced`` is the conn of this node it displaced."""

    since: float
    replaced: str | None


@dataclass(frozen=True)
class EngineLimits:
    """The limits the engine enforces, mirroring ``RelayConfig``'s.

    ``store_bytes``, ``share_bytes`` (None: no shares; else what one sender
    name, one origin and one recipient may have waiting), ``hs_reserve_bytes``
    (what only handshakes may use) and ``max_names`` are per shard, as are
    the counters behind them. ``lease`` is how long a
    node's names outlive its last renewal (renewed every ``lease / 4``);
    ``expire_poll`` bounds how late an expiry is noticed (another node's
    message may be due before anything this node knows about).
    """

    mailbox_messages: int = DEFAULT_MAILBOX_MESSAGES
    mailbox_bytes: int = DEFAULT_MAILBOX_BYTES
    store_bytes: int = DEFAULT_STORE_BYTES
    share_bytes: int | None = None
    hs_reserve_bytes: int = 0
    ttl_max: int = 60
    claim_ttl: float = 60.0
    max_names: int = 100_000
    hs_burst: float = 40.0
    hs_per_second: float = 1 / 15
    lease: float = 10.0
    expire_poll: float = 1.0
    #: Messages (and claims) one expire call pops at most: bounds how long
    #: one script blocks the shard.
    expire_batch: int = 1000

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> EngineLimits:
        """From a ``RelayConfig`` (any object with the same attribute names)."""
        names = [f for f in cls.__dataclass_fields__ if hasattr(config, f)]
        return cls(**{**{f: getattr(config, f) for f in names}, **overrides})


# -- helpers ------------------------------------------------------------------------


def shard_of(name: str, shards: int) -> int:
    """The shard that owns ``name``: stable across processes and machines."""
    return zlib.crc32(name.encode()) % shards


def check_url(url: str) -> str:
    """Validate an engine URL; return its scheme.

    ``redis://host:port/db``, ``rediss://`` (TLS) or ``unix:///path``. A
    password in the URL is refused: URLs are given on the command line, and
    argv is readable by every local user. Pass ``password=`` instead.
    """
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError as err:
        raise EngineConfigError(f"bad engine URL {url!r}: {err}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise EngineConfigError(f"engine URL {url!r}: use redis://, rediss:// or unix://")
    if has_password:
        raise EngineConfigError("engine URL: no password in the URL (argv is visible to "
                                "other users); give it in an environment variable or a file")
    return parts.scheme


def _held(recipient: str, rec: str) -> Held:
    """A Held from a record (see scripts.py): id, sender, kind, ttl, expires, size, shares,
    origin, body."""
    msg_id, sender, kind, ttl, expires, size, _shares, origin, body = rec.split("\n", 8)
    wall = int(expires) / 1000
    return Held(int(msg_id), sender, recipient, body, kind, int(ttl), wall, wall, int(size),
                origin)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


class _Shard:
    __slots__ = ("index", "url", "redis", "pubsub_redis", "epoch", "queue", "wake", "tasks",
                 "run_id", "resetting", "inflight")

    def __init__(self, index: int, url: str) -> None:
        self.index = index
        self.url = url
        self.redis: Any = None
        self.pubsub_redis: Any = None
        self.epoch = ""
        self.queue: list[tuple[str, tuple[str, ...], asyncio.Future[Any]]] = []
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.run_id = ""
        self.resetting: asyncio.Task[None] | None = None
        #: The batch the writer is running: failed on close if still unanswered.
        self.inflight: list[tuple[str, tuple[str, ...], asyncio.Future[Any]]] = []


class RedisBackend:
    """Names, mailboxes, expiry and presence shared by relay nodes (see module doc).

    ``urls``: one per shard. ``password``: for every shard (never in a URL).
    ``prefix``: of every key and channel, so several deployments can share
    an engine. ``on_event``: called with each :data:`Event`. ``clock_ms``:
    None to use the engine's clock; tests pass a fake one. ``rng(n)``: n
    random bytes (node id, epochs, id seeds). ``run_tasks``: False leaves
    pub/sub, leases and expiry to the caller (tests drive
    :meth:`expire_once` and :meth:`renew_once`).
    """

    def __init__(self, urls: Sequence[str], *, limits: EngineLimits | None = None,
                 password: str | None = None, prefix: str = "msgr",
                 on_event: Callable[[Event], None] = lambda event: None,
                 clock_ms: Callable[[], int] | None = None,
                 rng: Callable[[int], bytes] = os.urandom, run_tasks: bool = True,
                 socket_timeout: float = 5.0) -> None:
        if not urls:
            raise EngineConfigError("give at least one engine URL")
        for url in urls:
            check_url(url)
        if not prefix or any(c in prefix for c in "{}\n "):
            raise EngineConfigError(f"bad key prefix {prefix!r}")
        self.limits = limits or EngineLimits()
        self.prefix = prefix
        self.on_event = on_event
        self._clock = clock_ms
        self._rng = rng
        self._password = password
        self._run_tasks = run_tasks
        self._socket_timeout = socket_timeout
        self.node = rng(8).hex()
        self.shards = [_Shard(i, url) for i, url in enumerate(urls)]
        self._sha: dict[str, str] = {}
        self._watching: dict[str, int] = {}
        self._conn_ids = 0
        self._closing = False
        self._started = False
        #: Why the engine's configuration is worrying (it persists to disk...),
        #: one sentence each; also logged as warnings at start.
        self.warnings: list[str] = []
        self._errors: Any = None  # redis.exceptions, imported in start()

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Connect, check every shard's configuration, load the scripts, learn
        (or create) each shard's epoch, join the node leases, and start the
        background tasks. Raises EngineConfigError or EngineUnavailable."""
        try:
            import redis.asyncio as aioredis
            import redis.exceptions as errors
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise EngineConfigError("the engine needs redis-py: pip install 'msgr[redis]'") \
                from None
        self._errors = errors
        # No retries: a pipeline of sends retried after a lost reply would
        # store them twice, under new ids that clients would show twice.
        options: dict[str, Any] = {
            "decode_responses": True, "encoding_errors": "surrogatepass",
            "retry": Retry(NoBackoff(), 0), "socket_timeout": self._socket_timeout,
            "socket_connect_timeout": self._socket_timeout, "password": self._password,
        }
        for shard in self.shards:
            shard.redis = aioredis.Redis.from_url(shard.url, **options)
            # Pub/sub waits for messages indefinitely: no read timeout there.
            shard.pubsub_redis = aioredis.Redis.from_url(
                shard.url, **{**options, "socket_timeout": None})
        try:
            for shard in self.shards:
                await self._check_engine(shard)
            if len({s.run_id for s in self.shards}) < len(self.shards):
                raise EngineConfigError("two engine URLs lead to the same server; each shard "
                                        "must be its own server (pub/sub is per server)")
            for shard in self.shards:
                await self._load_scripts(shard)
                shard.epoch = await self._init_epoch(shard)
        except (errors.ConnectionError, errors.TimeoutError, OSError) as err:
            await self._close_clients()
            # A missing password shows as HELLO or NOAUTH refusals, not as
            # redis-py's AuthenticationError.
            text = str(err)
            if isinstance(err, errors.AuthenticationError) or any(
                    word in text for word in ("authenticat", "password", "NOAUTH")):
                raise EngineConfigError("the engine refused the password (or it needs one): "
                                        "check the password msgr was given") from None
            raise EngineUnavailable(f"cannot reach the engine: {err}") from None
        except EngineError:
            await self._close_clients()
            raise
        self._started = True
        for shard in self.shards:
            shard.tasks.append(asyncio.create_task(self._writer(shard)))
        try:
            for shard in self.shards:
                await self.renew_once(shard.index, mode="join")
        except EngineError:
            await self.close(timeout=0)
            raise
        for shard in self.shards:
            if self._run_tasks:
                shard.tasks.append(asyncio.create_task(self._listen(shard)))
                shard.tasks.append(asyncio.create_task(self._expirer(shard)))
                shard.tasks.append(asyncio.create_task(self._renewer(shard)))

    async def close(self, *, timeout: float = 2.0) -> None:
        """Leave the leases (releasing this node's names at once; given up
        after ``timeout`` seconds, and then the leases lapse by themselves),
        stop the tasks, fail calls still waiting with EngineUnavailable, and
        close the connections. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._started:
            leaving = [self.renew_once(shard.index, mode="leave") for shard in self.shards]
            with contextlib.suppress(EngineError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*leaving), timeout)
        for shard in self.shards:
            for task in shard.tasks:
                task.cancel()
            for task in shard.tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            shard.tasks.clear()
            for _name, _args, fut in shard.inflight + shard.queue:
                if not fut.done():
                    fut.set_exception(EngineUnavailable("the relay is closing"))
            shard.queue.clear()
            shard.inflight = []
        await self._close_clients()

    async def _close_clients(self) -> None:
        for shard in self.shards:
            for client in (shard.redis, shard.pubsub_redis):
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.aclose()

    @property
    def epoch(self) -> str:
        """``welcome.relay``: the same on every node, new after the engine is wiped."""
        if len(self.shards) == 1:
            return self.shards[0].epoch
        joined = ",".join(s.epoch for s in self.shards).encode()
        return hashlib.sha256(joined).hexdigest()[:16]

    def connection_id(self) -> str:
        """A fresh connection id, unique within this node."""
        self._conn_ids += 1
        return str(self._conn_ids)

    def shard_of(self, name: str) -> int:
        return shard_of(name, len(self.shards))

    # -- the relay's steps ---------------------------------------------------

    async def claim(self, name: str, key: bytes, conn: str) -> Claimed:
        lim = self.limits
        reply = await self._call(self.shard_of(name), "claim", name,
                                 base64.b64encode(key).decode(), self.node, conn,
                                 _ms(lim.claim_ttl), str(lim.max_names))
        what = reply[0]
        if what == "ok":
            _since, old_node, old_conn = reply[1], reply[2], reply[3]
            replaced = old_conn if old_node == self.node and old_conn else None
            return Claimed(int(_since) / 1000, replaced)
        if what == "owned":
            raise NameOwned(name, connected=bool(int(reply[1])), since=int(reply[2]) / 1000,
                            released_at=int(reply[3]) / 1000, said_bye=reply[4] == "1",
                            waiting=int(reply[5]), now=int(reply[6]) / 1000)
        raise TooManyNames("the relay has too many names registered; try again later")

    async def release(self, name: str, conn: str, *, bye: bool = False) -> bool:
        reply = await self._call(self.shard_of(name), "release", name, self.node, conn,
                                 "1" if bye else "0", _ms(self.limits.claim_ttl))
        return bool(reply)

    async def send(self, sender: str, recipient: str, body: str, kind: str, ttl: int, *,
                   origin: str = "", size: int | None = None) -> Held:
        """Store a message (see the module docstring). ``size`` defaults to
        what MemoryStore charges: ``len(body) + OVERHEAD_BYTES``."""
        lim = self.limits
        if size is None:
            size = len(body) + OVERHEAD_BYTES
        if "\n" in origin:
            raise ValueError("an origin holds no newline")
        mailbox_bytes = lim.mailbox_bytes
        shares: list[str] = []
        if lim.share_bytes is not None:
            mailbox_bytes = min(mailbox_bytes, lim.share_bytes)
            shares = ["name:" + sender, str(lim.share_bytes),
                      "addr:" + origin.replace("|", "/"), str(lim.share_bytes)]
        limit = lim.store_bytes if kind == "hs" else lim.store_bytes - lim.hs_reserve_bytes
        reply = await self._call(self.shard_of(recipient), "send", sender, recipient, kind,
                                 str(ttl), str(size), body, origin, str(lim.mailbox_messages),
                                 str(mailbox_bytes), str(limit), *shares)
        if reply[0] == 1:
            wall = int(reply[2]) / 1000
            return Held(int(reply[1]), sender, recipient, body, kind, ttl, wall, wall, size,
                        origin)
        why, have, limit = reply[1], int(reply[2]), int(reply[3])
        if why == "mailbox_messages":
            raise MailboxFull(
                f"{recipient} has {have} messages waiting, the most this relay "
                "holds for one person; try again after they read some")
        if why == "mailbox_bytes":
            raise MailboxFull(
                f"{recipient} has {have} bytes waiting; this message would pass "
                f"the {limit}-byte mailbox limit")
        if why == "store_bytes":
            raise StoreFull("the relay is full (memory budget reached); try again shortly")
        share = reply[4]
        if share.startswith("name:"):
            message = (f"messages from {sender} already hold {have} bytes at this relay, the "
                       f"most one name may hold ({limit} bytes); try again as they are read")
        else:
            message = (f"messages from your address already hold {have} bytes at this relay, "
                       f"the most one address may hold ({limit} bytes); try again as they "
                       "are read")
        raise ShareFull(message, share=share, held=have, limit=limit)

    async def handshake_allowed(self, a: str, b: str) -> bool:
        return await self.handshake_take(a, b) is True

    async def handshake_take(self, a: str, b: str, attempt: int = 1) -> bool | float | None:
        """One token from the pair's bucket: True if taken; if refused, the
        seconds until it holds ``attempt`` tokens (at most its burst), or
        None when it never refills."""
        low, high = (a, b) if a < b else (b, a)
        lim = self.limits
        reply = int(await self._call(self.shard_of(low), "handshake", low, high,
                                     repr(float(lim.hs_per_second)), repr(float(lim.hs_burst)),
                                     str(int(attempt))))
        if reply == 1:
            return True
        return -reply / 1000 if reply < 0 else None

    async def ack(self, name: str, conn: str, ids: Iterable[int]) -> int | None:
        args = [str(int(i)) for i in ids]
        if not args:
            return 0
        reply = await self._call(self.shard_of(name), "ack", name, self.node, conn, *args)
        return None if reply == -1 else int(reply)

    async def fetch(self, name: str, conn: str) -> list[Held] | None:
        reply = await self._call(self.shard_of(name), "fetch", name, self.node, conn)
        if reply == -1:
            return None
        records, reports = reply
        for report in reports:
            msg_id, recipient = report.split("\n", 1)
            self._emit(Expired(conn, int(msg_id), recipient))
        return [_held(name, rec) for rec in records]

    async def count_for(self, name: str) -> int:
        return int(await self._call(self.shard_of(name), "count", name))

    async def watch(self, name: str) -> bool:
        """This node watches ``name`` once more; whether it is connected now."""
        self._watching[name] = self._watching.get(name, 0) + 1
        return bool(await self._call(self.shard_of(name), "watch", name, self.node, "1"))

    async def online(self, name: str) -> bool:
        """Whether ``name`` is connected now (after :class:`Resync`, presence
        changes published meanwhile may have been missed)."""
        return bool(await self._call(self.shard_of(name), "watch", name, self.node, "?"))

    async def unwatch(self, name: str) -> None:
        count = self._watching.get(name, 0) - 1
        if count > 0:
            self._watching[name] = count
            return
        self._watching.pop(name, None)
        await self._call(self.shard_of(name), "watch", name, self.node, "0")

    # -- invites (nameplates, PROTOCOL.md 3.6): all on shard 0 -------------------

    async def allocate_nameplate(self, owner: str, conn: str, ttl: float, *,
                                 max_per_owner: int = nameplates.DEFAULT_MAX_PER_OWNER,
                                 max_nameplates: int = nameplates.DEFAULT_MAX_NAMEPLATES,
                                 ) -> tuple[int, float]:
        """A nameplate for ``owner``'s connection ``conn``: ``(number, expires
        engine Unix s)``, the smallest free number; raises NameplateError as
        the in-memory table does."""
        reply = await self._call(0, "np_allocate", owner, self.node, conn, _ms(ttl),
                                 str(max_per_owner), str(max_nameplates))
        if reply[0] == "too_many":
            raise nameplates.NameplateError(
                "too_many_nameplates", f"at most {max_per_owner} invites may wait at once")
        if reply[0] == "full":
            raise nameplates.NameplateError(
                "nameplates_full", "the relay has too many open invites; try again later")
        return int(reply[0]), int(reply[1]) / 1000

    async def join_nameplate(self, number: int, joiner: str, *, origin: str | None = None,
                             rate: float = 1 / 6, burst: float = 10.0) -> str:
        """The second side joins: the nameplate is freed, its owner's node gets
        :class:`InviteJoined`, and the owner's name is returned. With ``origin``
        (the joiner's address), the join first takes a token from that
        address's budget (``rate`` per second, ``burst``), shared by every node."""
        more = () if origin is None else (origin, repr(float(rate)), repr(float(burst)))
        reply = await self._call(0, "np_join", str(int(number)), joiner, *more)
        if reply[0] == "ok":
            return str(reply[1])
        if reply[0] == "rate":
            raise nameplates.NameplateError(
                "rate_limited", "too many invite codes tried from your address; wait a minute")
        if reply[0] == "own":
            raise nameplates.NameplateError("own_nameplate", "that is your own invite")
        raise nameplates.NameplateError(
            "no_nameplate", "no invite with that number is waiting; it was used, cancelled "
            "or has expired")

    async def cancel_nameplate(self, number: int, owner: str) -> bool:
        """The inviter gives up: False if ``owner`` holds no such number."""
        return bool(await self._call(0, "np_cancel", str(int(number)), owner))

    async def cancel_nameplates(self, owner: str, conn: str) -> int:
        """Connection ``conn`` of ``owner`` ended: free its nameplates."""
        return int(await self._call(0, "np_cancel", "*", owner, self.node, conn))

    # -- expiry and leases (run by the background tasks; public for tests) ------

    async def expire_once(self, shard: int) -> tuple[int, int | None, list[tuple[int, str, str]]]:
        """Pop what is due on ``shard``: ``(engine now ms, next deadline ms or
        None, [(id, sender, recipient), ...])``. Senders whose claim lives on
        another shard are told through that shard."""
        lim = self.limits
        reply = await self._call(shard, "expire", str(lim.expire_batch), _ms(lim.ttl_max),
                                 _ms(lim.claim_ttl))
        now, nxt, count = int(reply[0]), int(reply[1]), int(reply[2])
        out = []
        for i in range(count):
            msg_id, sender, recipient, told = reply[3 + 4 * i: 7 + 4 * i]
            out.append((int(msg_id), sender, recipient))
            home = self.shard_of(sender)
            if not int(told) and home != shard:
                with contextlib.suppress(EngineError):
                    await self._call(home, "notify", sender, str(msg_id), recipient,
                                     _ms(lim.claim_ttl))
        return now, (None if nxt < 0 else nxt), out

    async def renew_once(self, shard: int, *, mode: str = "renew") -> list[str]:
        """Renew this node's lease on ``shard`` ('join', 'renew' or 'leave')
        and release the names of nodes whose lease lapsed; return the names
        released. If our own lease had lapsed, emit :class:`Reaped` and join
        again."""
        lim = self.limits
        reply = await self._call(shard, "lease", self.node, _ms(lim.lease), mode,
                                 str(lim.expire_batch), _ms(lim.claim_ttl))
        if reply[0] == -1:
            log.warning("lease-lapsed", extra={"fields": {"shard": shard}})
            self._watching.clear()
            self._emit(Reaped(shard))
            return await self.renew_once(shard, mode="join")
        released: list[str] = []
        i = 1
        while i < len(reply):
            node, count = reply[i], int(reply[i + 1])
            released += reply[i + 2: i + 2 + count]
            if node != self.node:
                log.info("node-reaped", extra={"fields": {"shard": shard, "names": count}})
            i += 2 + count
        return released

    # -- background tasks ----------------------------------------------------

    async def _listen(self, shard: _Shard) -> None:
        """Subscribe to this node's channel and dispatch; resubscribe forever."""
        errors = self._errors
        channel = f"{self.prefix}:n:{self.node}"
        delay = 0.05
        while not self._closing:
            pubsub = shard.pubsub_redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                delay = 0.05
                self._emit(Resync(shard.index))
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        try:
                            self._dispatch(_text(message["data"]))
                        except ValueError:  # not ours: someone published on our channel
                            log.warning("engine-bad-publication",
                                        extra={"fields": {"shard": shard.index}})
            except (errors.ConnectionError, errors.TimeoutError, OSError) as err:
                log.warning("engine-pubsub-lost", extra={"fields": {"shard": shard.index,
                                                                    "error": str(err)}})
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _emit(self, event: Event) -> None:
        """Hand an event to the core; its failure must not stop our tasks."""
        try:
            self.on_event(event)
        except Exception as err:  # noqa: BLE001 - logged; the listener keeps running
            log.error("engine-event-failed", extra={"fields": {
                "event": type(event).__name__, "error": repr(err)}})

    def _dispatch(self, data: str) -> None:
        kind, _, rest = data.partition("\n")
        if kind == "d":
            conn, recipient, rec = rest.split("\n", 2)
            self._emit(Deliver(conn, _held(recipient, rec)))
        elif kind == "x":
            conn, msg_id, recipient = rest.split("\n", 2)
            self._emit(Expired(conn, int(msg_id), recipient))
        elif kind == "r":
            self._emit(Replaced(rest))
        elif kind == "p":
            name, online = rest.split("\n", 1)
            self._emit(Presence(name, online == "1"))
        elif kind == "j":
            conn, number, joiner = rest.split("\n", 2)
            self._emit(InviteJoined(conn, int(number), joiner))
        elif kind == "g":
            conn, number = rest.split("\n", 1)
            self._emit(InviteLapsed(conn, int(number)))

    async def _expirer(self, shard: _Shard) -> None:
        lim = self.limits
        while not self._closing:
            delay = lim.expire_poll
            try:
                now, nxt, popped = await self.expire_once(shard.index)
                if len(popped) >= lim.expire_batch:
                    delay = 0.0
                elif nxt is not None:
                    delay = min(delay, max(0.0, (nxt - now) / 1000))
            except EngineError:
                pass  # unavailable or reset: reported elsewhere; try again later
            await asyncio.sleep(delay)

    async def _renewer(self, shard: _Shard) -> None:
        interval = self.limits.lease / 4
        while not self._closing:
            await asyncio.sleep(interval)
            with contextlib.suppress(EngineError):
                await self.renew_once(shard.index)

    # -- calling scripts -----------------------------------------------------

    async def _call(self, index: int, script: str, *args: str) -> Any:
        """Queue one script call on a shard and wait for its reply. Calls are
        pipelined in order over one connection per shard."""
        if not self._started:
            raise EngineUnavailable("the engine backend is not started")
        if self._closing and script != "lease":
            raise EngineUnavailable("the relay is closing")
        shard = self.shards[index]
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        now = "" if self._clock is None else str(int(self._clock()))
        shard.queue.append((script, (self.prefix, shard.epoch, now, *args), fut))
        shard.wake.set()
        return await fut

    async def _writer(self, shard: _Shard) -> None:
        while True:
            await shard.wake.wait()
            shard.wake.clear()
            while shard.queue:
                # At most MAX_BATCH calls per round trip: a burst does not make
                # one huge pipeline that delays every call behind it.
                batch, shard.queue = shard.queue[:MAX_BATCH], shard.queue[MAX_BATCH:]
                shard.inflight = batch
                try:
                    await self._run_batch(shard, batch)
                except Exception as err:  # noqa: BLE001 - the writer must outlive any batch
                    log.error("engine-batch-failed", extra={"fields": {"error": repr(err)}})
                    for _script, _args, fut in batch:
                        if not fut.done():
                            fut.set_exception(EngineUnavailable(f"engine error: {err!r}"))

    async def _run_batch(self, shard: _Shard,
                         batch: list[tuple[str, tuple[str, ...], asyncio.Future[Any]]]) -> None:
        errors = self._errors
        pending = batch
        for attempt in range(2):
            pipe = shard.redis.pipeline(transaction=False)
            for script, args, _fut in pending:
                pipe.evalsha(self._sha[script], 0, *args)
            try:
                results = await pipe.execute(raise_on_error=False)
            except (errors.ConnectionError, errors.TimeoutError, OSError) as err:
                failure = EngineUnavailable(f"the relay's engine did not answer: {err}")
                for _script, _args, fut in pending:
                    if not fut.done():
                        fut.set_exception(failure)
                return
            retry = []
            for item, result in zip(pending, results, strict=True):
                fut = item[2]
                if isinstance(result, errors.NoScriptError) and attempt == 0:
                    retry.append(item)
                elif fut.done():
                    continue
                elif isinstance(result, errors.ResponseError):
                    fut.set_exception(self._translate(shard, result))
                elif isinstance(result, Exception):
                    fut.set_exception(EngineUnavailable(f"engine error: {result}"))
                else:
                    fut.set_result(result)
            if not retry:
                return
            # The engine restarted or its script cache was flushed: load the
            # scripts again and run what failed, in order.
            log.info("engine-scripts-reload", extra={"fields": {"shard": shard.index}})
            try:
                await self._load_scripts(shard)
            except (errors.ConnectionError, errors.TimeoutError, OSError) as err:
                failure = EngineUnavailable(f"the relay's engine did not answer: {err}")
                for _script, _args, fut in retry:
                    if not fut.done():
                        fut.set_exception(failure)
                return
            pending = retry

    def _translate(self, shard: _Shard, err: Exception) -> Exception:
        text = str(err)
        if text.startswith("EPOCH"):
            if shard.resetting is None:
                shard.resetting = asyncio.create_task(self._reset(shard))
            return EngineReset(text[6:])
        if isinstance(err, self._errors.OutOfMemoryError) or "maxmemory" in text:
            # Refused at the script's first write, so nothing of it happened.
            return StoreFull("the relay's engine is out of memory; try again shortly")
        return EngineUnavailable(f"engine error: {text[:200]}")

    async def _reset(self, shard: _Shard) -> None:
        """The shard's epoch is not ours: adopt the new one (creating it if the
        engine is empty), join the leases again, and tell the core."""
        try:
            while not self._closing:
                try:
                    shard.epoch = await self._init_epoch(shard)
                    break
                except (self._errors.ConnectionError, self._errors.TimeoutError, OSError):
                    await asyncio.sleep(0.5)
            if self._closing:
                return
            log.warning("engine-reset", extra={"fields": {"shard": shard.index}})
            self._watching.clear()
            self._emit(Reset(self.epoch))
            with contextlib.suppress(EngineError):
                await self.renew_once(shard.index, mode="join")
        finally:
            shard.resetting = None

    async def _load_scripts(self, shard: _Shard) -> None:
        for name, text in SCRIPTS.items():
            self._sha[name] = await shard.redis.script_load(text)

    async def _init_epoch(self, shard: _Shard) -> str:
        # Ids start at a random point in [1, 2**48], as the in-memory relay's:
        # unique across engine restarts and exact in every JSON reader.
        first_id = 1 + int.from_bytes(self._rng(6), "big")
        sha = self._sha.get("init")
        args = (self.prefix, self._rng(8).hex(), str(first_id))
        try:
            if sha is None:
                raise self._errors.NoScriptError("not loaded")
            return _text(await shard.redis.evalsha(sha, 0, *args))
        except self._errors.NoScriptError:
            await self._load_scripts(shard)
            return _text(await shard.redis.evalsha(self._sha["init"], 0, *args))

    async def _check_engine(self, shard: _Shard) -> None:
        """Refuse an engine that could lose messages silently; warn if it
        writes them to disk."""
        errors = self._errors
        info = await shard.redis.info("server")
        version = str(info.get("redis_version", "0"))
        try:
            numbers = tuple(int(part) for part in version.split(".")[:2])
        except ValueError:
            numbers = (0, 0)
        if numbers < MIN_VERSION:
            raise EngineConfigError(f"engine {shard.url}: Redis {version} is too old; msgr "
                                    "needs Redis >= 7.0 or Valkey >= 7.2")
        shard.run_id = str(info.get("run_id", shard.url))
        try:
            config = await shard.redis.config_get("maxmemory-policy", "save", "appendonly")
        except errors.ResponseError:
            # CONFIG may be renamed away (managed services): INFO still says.
            memory = await shard.redis.info("memory")
            persistence = await shard.redis.info("persistence")
            config = {"maxmemory-policy": memory.get("maxmemory_policy", "?"),
                      "appendonly": "yes" if persistence.get("aof_enabled") else "no"}
            self._warn(f"engine {shard.url}: CONFIG is not available, so msgr cannot tell "
                       "whether it saves snapshots to disk; make sure `save` is empty")
        policy = str(config.get("maxmemory-policy", "?"))
        if policy not in SAFE_POLICIES:
            raise EngineConfigError(
                f"engine {shard.url}: maxmemory-policy is {policy!r}; msgr refuses an engine "
                "that may evict keys (messages and names would vanish silently). Run it "
                "with --maxmemory-policy noeviction")
        if config.get("save"):
            self._warn(f"engine {shard.url} saves snapshots to disk (save "
                       f"{config['save']!r}): ciphertext and names will reach its disk. "
                       "Run it with --save \"\"")
        if str(config.get("appendonly", "no")) == "yes":
            self._warn(f"engine {shard.url} writes an append-only file: every message "
                       "reaches its disk. Run it with --appendonly no")

    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        log.warning("engine-config", extra={"fields": {"warning": text}})


def _ms(seconds: float) -> str:
    return str(int(round(seconds * 1000)))
