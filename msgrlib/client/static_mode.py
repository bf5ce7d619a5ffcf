"""``--static`` mode: the passcode box, and "sent" once the relay holds it.

Static mode seals with :class:`staticbox.StaticBox` and counts a message as
sent once the relay has acknowledged it, as the original design did: there
are no end-to-end receipts, so the relay's ``expired`` report is the only
word on a message nobody picked up.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from msgrlib.client.events import Received, Undelivered
from msgrlib.client.outbox import Outgoing, OutState, Pending
from msgrlib.client.window import VERDICT_DELAY, Verdict
from msgrlib.crypto import staticbox

if TYPE_CHECKING:
    from msgrlib.client.core import ChatCore

#: Seconds after a message's TTL to wait for the relay's "expired" report
#: before forgetting the message.
STATIC_GRACE = 5.0
#: Seconds a message is remembered (its number and relay id, not its text)
#: after that, so that an "expired" report that comes later still reaches
#: its sender: a relay whose engine is behind sends it late, and the engine
#: keeps it for the sender's next sign-in (``claim_ttl``, 60 s by default).
LATE_REPORT_WINDOW = 120.0
#: At most this many such messages are remembered (the oldest go first).
LATE_REPORT_MEMORY = 65536


class StaticMode:
    """The static mode's half of :class:`ChatCore`."""

    kind_name = "static"
    session = None
    locked = False
    initiator = False

    def __init__(self, core: ChatCore) -> None:
        self.core = core
        #: relay id -> (number, forget at): settled without a report, so far.
        self.settled: OrderedDict[int, tuple[int, float]] = OrderedDict()
        self.box = staticbox.StaticBox(core._key, core.me, core.peer, rng=core._rng,
                                       wallclock=core._wall)

    def status(self) -> str:
        return "static mode (no session)"

    def retry_wall_time(self) -> float | None:
        return None

    def maybe_start(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def can_seal(self) -> bool:
        return True

    def seal(self, out: Outgoing) -> None:
        # Dated when typed, as the sender's deadline is: a message sealed
        # later (queued while the relay was away) must not live longer at
        # the receiver than the sender waits before its verdict.
        out.body = self.box.seal(out.text, out.ttl, ts=out.ts)
        self.core._submit(out)

    def unsettled(self, outbox: dict[int, Outgoing]) -> list[Outgoing]:
        return [o for o in outbox.values() if o.state is not OutState.ACCEPTED]

    def on_connected(self, restarted: bool) -> None:
        core = self.core
        now = core._clock()
        for out in list(core.outbox.values()):  # _submit may fail one
            if out.state is OutState.SENT and out.body is not None or (
                    restarted and out.state is OutState.ACCEPTED and not out.handed_live
                    and now < out.deadline):
                # Resend what the relay never acknowledged, and what a relay
                # that restarted since lost before the peer was there to take
                # it. The same body: the peer shows each once. (One the peer
                # was online for was handed over at once; sent again, a
                # restarted peer would show it twice. Its fate is then
                # unknown, and said so at its end: see tick.)
                out.blind = False
                core._submit(out)
            elif out.state is OutState.ACCEPTED and not restarted and now < out.deadline:
                out.blind = False  # back before its TTL ends: we will hear of an expiry
            elif out.state is OutState.ACCEPTED and restarted:
                out.blind = True  # the relay that held it is gone: no report will come

    def on_disconnected(self, lost_receipt: dict[str, Any] | None) -> None:
        for out in self.core.outbox.values():
            if out.state is OutState.ACCEPTED:
                out.blind = True  # an "expired" report would not reach us now

    def on_presence(self, online: bool, changed: bool) -> None:
        pass

    def on_expired(self, out: Outgoing) -> None:
        # Final only once the receiver would refuse the message too (its
        # deadline plus the clocks' tolerance): a relay that reports an
        # expiry early could still deliver it before the deadline, and it
        # would be shown after its sender was told it was not delivered.
        out.expired_at_relay = True
        if self.core._clock() >= out.deadline + VERDICT_DELAY:
            self._expired(out)

    def _expired(self, out: Outgoing) -> None:
        self.core._fail(out, f"it expired at the relay before {self.core.peer_name} read it")

    def on_send_refused(self, entry: Pending, code: str, message: str,
                        retry_after: float | None = None) -> bool:
        return False

    def deadlines(self) -> list[float]:
        return []

    def queued_reason(self) -> str:
        return "it could not be sent"

    def unconfirmed_reason(self, out: Outgoing) -> str:
        return f"{self.core.peer_name} did not confirm it"

    def settle_accepted(self, out: Outgoing, now: float) -> None:
        """``out`` was held by the relay and its TTL ended. The relay reports an
        unread expiry (as "expired") when the TTL ends; after a grace period
        the fate is settled. One the relay said expired is reported once the
        receiver would refuse it (see :meth:`on_expired`)."""
        if out.expired_at_relay:
            if now >= out.deadline + VERDICT_DELAY:
                self._expired(out)
            return
        if now >= out.deadline + STATIC_GRACE:
            del self.core.outbox[out.n]
            if out.relay_id is not None:
                self.settled[out.relay_id] = (out.n, now + LATE_REPORT_WINDOW)
                if len(self.settled) > LATE_REPORT_MEMORY:
                    self.settled.popitem(last=False)
            if out.blind:
                self.core._notice(
                    f"message #{out.n}: its TTL ended while the connection to the relay "
                    f"was down, so msgr cannot tell whether {self.core.peer_name} read it",
                    "fate_unknown", "warn")

    def tick(self, now: float) -> None:
        settled = self.settled
        while settled and next(iter(settled.values()))[1] <= now:
            settled.popitem(last=False)

    def on_late_expired(self, relay_id: int) -> None:
        """The relay reports ``relay_id`` expired unread after the grace: it
        is reported now, late, rather than never (found by tools/soak_cluster.py:
        under load the report came 14 s after the TTL, and was dropped)."""
        entry = self.settled.pop(relay_id, None)
        if entry is not None:
            n = entry[0]
            self.core._failed.append(n)
            self.core._events.append(Undelivered(
                n, f"it expired at the relay before {self.core.peer_name} read it "
                   "(reported late)"))

    def open(self, frame: dict[str, Any], body: str, expires_at: float) -> None:
        core = self.core
        opened = self.box.open(body)
        verdict = core._admit(opened.epoch, opened.n, opened.ts, opened.ttl)
        if verdict in (Verdict.NEW, Verdict.LATE):
            # Never past the sender's deadline, whatever the relay says (as in
            # the default mode).
            core._events.append(Received(core.peer, opened.text, opened.ts,
                                         min(expires_at, opened.ts + opened.ttl),
                                         opened.ttl, late=verdict is Verdict.LATE))
