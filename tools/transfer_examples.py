"""Print docs/transfer.md's worked examples, computed by the production code.

Randomness is pinned; every message is what :mod:`msgrlib.transfer` and :mod:`msgrlib.invite`
produce. ``tests/test_transfer.py`` requires each block to appear verbatim in docs/transfer.md.

Usage: ``python -m tools.transfer_examples``
"""

from __future__ import annotations

import hashlib
import json

from msgrlib.invite.code import PRS_LABEL, invite_prs, make_code
from msgrlib.transfer import messages as m
from msgrlib.transfer.files import BytesSource, MemorySink
from msgrlib.transfer.machine import Receiver, Sender, make_offer


def _dump(msg: m.Message) -> str:
    """A JSON plaintext as it is; a chunk's binary plaintext as hex, its fields apart."""
    if isinstance(msg, m.Chunk):
        wire = m.encode_chunk_plaintext(msg.to_obj())
        return (f"[{wire[:2].hex(' ')} | {wire[2:18].hex()} | {wire[18:26].hex()} | "
                f"{wire[26:].hex()}]")
    return json.dumps(msg.to_obj(), ensure_ascii=False, separators=(",", ":"))


def _trace(sender: Sender, receiver: Receiver, *, drop_chunk: int | None = None,
           offer: m.Offer | None = None) -> str:
    """Deliver in order until nothing moves, one line per message: ``S->R`` or ``R->S``
    (``offer``: already delivered, shown first)."""
    lines = [f"S->R {_dump(offer)}"] if offer else []
    dropped = False
    for _ in range(1000):
        moved = False
        for a, b, arrow in ((sender, receiver, "S->R"), (receiver, sender, "R->S")):
            for msg in a.take_outgoing():
                moved = True
                if (isinstance(msg, m.Chunk) and msg.i == drop_chunk and not dropped):
                    dropped = True
                    lines.append(f"{arrow} (lost) {_dump(msg)}")
                    continue
                lines.append(f"{arrow} {_dump(msg)}")
                b.handle(msg, 0.0)
        if not moved:
            break
    return "\n".join(lines)


def examples() -> dict[str, str]:
    out: dict[str, str] = {}

    code = make_code(7, lambda n: bytes([0x3C, 0x3B])[:n])
    prs_input = b"".join(len(x).to_bytes(4, "big") + x for x in (
        PRS_LABEL, str(code.nameplate).encode(), *(w.encode() for w in code.words)))
    out["invite"] = "\n".join([
        "random bytes  = 3c 3b",
        f"code          = {code}",
        f"PRS input     = {prs_input.hex()}",
        f"PRS           = {invite_prs(code).hex()}",
    ])

    tid = m.new_transfer_id(lambda n: bytes(range(n)))
    secret = b"correct horse battery staple"
    offer = make_offer(tid, kind="secret", name="", size=len(secret), mime="text/plain",
                       sha256=hashlib.sha256(secret).hexdigest())
    sender = Sender(offer, BytesSource(secret), 0.0)
    sender.take_outgoing()  # the offer, delivered below
    receiver = Receiver(offer, 0.0)
    receiver.accept(MemorySink(max_size=len(secret)), 0.0, window=16)
    out["secret"] = _trace(sender, receiver, offer=offer)

    tid = m.new_transfer_id(lambda n: bytes(range(16, 16 + n)))
    data = b"The quick brown fox jumps over the lazy dog.\n"
    offer = make_offer(tid, kind="file", name="fox.txt", size=len(data), mime="text/plain",
                       sha256=hashlib.sha256(data).hexdigest(), chunk=16)
    sender = Sender(offer, BytesSource(data), 0.0)
    sender.take_outgoing()  # the offer, delivered below
    receiver = Receiver(offer, 0.0)
    receiver.accept(MemorySink(max_size=len(data)), 0.0, window=2, ack_every=1)
    out["file"] = _trace(sender, receiver, offer=offer)

    sender = Sender(offer, BytesSource(data), 0.0)
    sender.take_outgoing()  # the offer, delivered below
    receiver = Receiver(offer, 0.0)
    receiver.accept(MemorySink(max_size=len(data)), 0.0, window=2, ack_every=1)
    out["gap"] = _trace(sender, receiver, drop_chunk=0)

    bad = make_offer(tid, kind="file", name="../.bashrc", size=3, mime="text/plain",
                     sha256=hashlib.sha256(b"x=1").hexdigest(), chunk=16)
    receiver = Receiver(bad, 0.0)
    receiver.decline(receiver.problem or "")
    (decline,) = receiver.take_outgoing()
    out["decline"] = f"R->S {_dump(decline)}"

    fail = m.Fail(tid, "hash_mismatch",
                  "the received data does not match the sender's hash; nothing was kept")
    out["fail"] = f"R->S {_dump(fail)}"
    return out


def main() -> None:
    for name, block in examples().items():
        print(f"--- {name}\n{block}\n")


if __name__ == "__main__":
    main()
