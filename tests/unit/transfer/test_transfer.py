"""The transfer messages, the sender/receiver state machines, and the file and memory sinks.

The machines are driven through :class:`Link`, an in-memory stand-in for "sealed by the chat
core, held by the relay, delivered": every message goes through ``to_obj()``, JSON and
``parse_message`` as on the wire, and the test can lose, repeat or reorder what is in flight.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import stat

import pytest
from helpers import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import framing
from msgrlib.crypto.ratchet import Ratchet
from msgrlib.transfer import files
from msgrlib.transfer import messages as m
from msgrlib.transfer.errors import (
    SinkError,
    TargetExists,
    TransferProtocolError,
    TransferStateError,
    UnsafeName,
)
from msgrlib.transfer.files import BytesSource, FileSink, FileSource, MemorySink, hash_file
from msgrlib.transfer.machine import (
    RECEIVER_TERMINAL,
    RECEIVER_TRANSITIONS,
    SENDER_TERMINAL,
    SENDER_TRANSITIONS,
    Accepted,
    Completed,
    Declined,
    Failed,
    Progress,
    Receiver,
    ReceiverState,
    Sender,
    SenderState,
    make_offer,
)
from msgrlib.transfer.names import check_file_name
from msgrlib.transfer.progress import ProgressMeter, event_json, format_bytes, format_duration

FUZZ = settings(max_examples=int(os.environ.get("MSGR_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

TID = "5f" * 16
SHA_EMPTY = hashlib.sha256(b"").hexdigest()


def offer_for(data: bytes, *, kind: str = "file", name: str = "report.pdf", chunk: int = 16,
              sha: str | None = None) -> m.Offer:
    return make_offer(TID, kind=kind, name="" if kind == "secret" else name, size=len(data),
                      mime="application/octet-stream",
                      sha256=sha or hashlib.sha256(data).hexdigest(), chunk=chunk)


def wire(msg: m.Message) -> m.Message:
    """What the peer parses after the chat core seals and the relay delivers."""
    return m.parse_message(wire_round_trip(msg.to_obj()))


class Link:
    """Two queues of messages in flight, one per direction."""

    def __init__(self, sender: Sender, receiver: Receiver) -> None:
        self.s, self.r = sender, receiver
        self.to_r: list[m.Message] = []
        self.to_s: list[m.Message] = []
        self.s_events: list[object] = []
        self.r_events: list[object] = []
        self.max_chunks_in_flight = 0
        self.history_to_s: list[m.Message] = []
        self.now = 0.0

    def collect(self) -> None:
        sent = [wire(x) for x in self.s.take_outgoing()]
        for x in sent:
            if isinstance(x, m.Chunk):  # never past the window from the last ack
                assert x.i < self.s.acked + self.s.window
        self.to_r += sent
        answers = [wire(x) for x in self.r.take_outgoing()]
        self.to_s += answers
        self.history_to_s += answers
        self.s_events += self.s.take_events()
        self.r_events += self.r.take_events()
        # Copies a test injects (the same object twice) are not the sender's doing.
        in_flight = len({id(x) for x in self.to_r if isinstance(x, m.Chunk)})
        self.max_chunks_in_flight = max(self.max_chunks_in_flight, in_flight)

    def step(self) -> bool:
        """Deliver one message each way; False when nothing is in flight."""
        self.collect()
        moved = False
        if self.to_r:
            self.r.handle(self.to_r.pop(0), self.now)
            moved = True
        if self.to_s:
            self.s.handle(self.to_s.pop(0), self.now)
            moved = True
        self.collect()
        return moved

    def run(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            if not self.step():
                return
        raise AssertionError("the transfer did not settle")

    def cut(self) -> None:
        """The connection drops: whatever was in flight is lost; both sides resume."""
        self.collect()
        self.to_r.clear()
        self.to_s.clear()
        self.s.resume(self.now)
        self.r.resume(self.now)

    def idle(self, seconds: float = 11.0) -> None:
        """Time passes with nothing delivered; both sides tick."""
        self.collect()
        self.now += seconds
        self.s.tick(self.now)
        self.r.tick(self.now)
        self.collect()

    def settle(self, rounds: int = 50) -> None:
        """Deliver, and let the nudges repair losses, until both sides are done."""
        for _ in range(rounds):
            self.run()
            if self.s.state in SENDER_TERMINAL and self.r.state in RECEIVER_TERMINAL:
                return
            self.idle()
        raise AssertionError(f"not settled: {self.s.state} {self.r.state}")

    def __repr__(self) -> str:
        return f"Link({self.s.state}, {self.r.state}, {self.s_events[-3:]}, {self.r_events[-3:]})"


def start(data: bytes, sink=None, *, window: int = 4, ack_every: int | None = None,
          **offer_kw) -> tuple[Link, object]:
    offer = offer_for(data, **offer_kw)
    sender = Sender(offer, BytesSource(data), 0.0)
    link = Link(sender, None)  # type: ignore[arg-type]
    first = [wire(x) for x in sender.take_outgoing()]
    assert first == [offer]
    receiver = Receiver(first[0], 0.0)  # type: ignore[arg-type]
    link.r = receiver
    sink = sink if sink is not None else MemorySink(max_size=len(data))
    receiver.accept(sink, 0.0, window=window, ack_every=ack_every)
    link.collect()
    return link, sink


# --- messages ---------------------------------------------------------------------------------

EXAMPLES = [
    m.Offer(TID, "file", "report.pdf", 100, "application/pdf", "ab" * 32, 32768),
    m.Offer(TID, "secret", "", 5, "text/plain", "cd" * 32, 32768),
    m.Offer(TID, "directory", "photos", 0, "application/x-tar", SHA_EMPTY, 1),
    m.Accept(TID, 16),
    m.Decline(TID, "no thanks"),
    m.Chunk(TID, 0, b"\x00\xff" * 10),
    m.Ack(TID, 4),
    m.Ack(TID, 4, gap=True),
    m.Done(TID),
    m.Fail(TID, "hash_mismatch", "the data does not match"),
]


def wire_round_trip(obj: dict) -> dict:
    """Through the plaintext the ratchet seals: binary for a chunk, JSON otherwise."""
    from msgrlib.client.ratchet_mode import parse_inner

    if obj["k"] == "xfer.chunk":
        return parse_inner(m.encode_chunk_plaintext(obj))
    return parse_inner(json.dumps(obj, separators=(",", ":")).encode())


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda x: type(x).__name__)
def test_every_message_round_trips(msg):
    assert m.parse_message(wire_round_trip(msg.to_obj())) == msg
    assert m.is_transfer_message(msg.to_obj())
    assert msg.to_obj()["k"] in m.KINDS


def good(kind: str) -> dict:
    return next(x.to_obj() for x in EXAMPLES if x.K == kind)


@pytest.mark.parametrize("obj", [
    None, [], "xfer.done", {}, {"k": "xfer.nope", "t": TID}, {"k": 1, "t": TID},
    {**good("xfer.done"), "extra": 1},
    {"k": "xfer.done"},
    {"k": "xfer.done", "t": TID.upper()},
    {"k": "xfer.done", "t": TID[:-1]},
    {"k": "xfer.done", "t": TID + "\n"},
    {**good("xfer.offer"), "size": -1},
    {**good("xfer.offer"), "size": True},
    {**good("xfer.offer"), "size": 1.0},
    {**good("xfer.offer"), "size": m.MAX_DECLARED_SIZE + 1},
    {**good("xfer.offer"), "kind": "symlink"},
    {**good("xfer.offer"), "kind": ["file"]},
    {**good("xfer.offer"), "name": ""},
    {**good("xfer.offer"), "name": 7},
    {**good("xfer.offer"), "name": "x" * 256},
    {**good("xfer.offer"), "mime": "text"},
    {**good("xfer.offer"), "mime": "Text/Plain"},
    {**good("xfer.offer"), "mime": "text/plain\x1b"},
    {**good("xfer.offer"), "sha256": "AB" * 32},
    {**good("xfer.offer"), "sha256": "ab" * 31},
    {**good("xfer.offer"), "chunk": 0},
    {**good("xfer.offer"), "chunk": m.MAX_CHUNK_SIZE + 1},
    {**good("xfer.offer"), "kind": "secret", "name": "x"},
    {**good("xfer.accept"), "window": 0},
    {**good("xfer.accept"), "window": m.MAX_WINDOW + 1},
    {**good("xfer.decline"), "reason": "x" * (m.MAX_REASON_LENGTH + 1)},
    {**good("xfer.decline"), "reason": None},
    {**good("xfer.chunk"), "data": b""},
    {**good("xfer.chunk"), "data": "QUJD"},          # base64 text: chunks are binary now
    {**good("xfer.chunk"), "data": bytearray(b"x")},
    {**good("xfer.chunk"), "data": b"x" * (m.MAX_CHUNK_SIZE + 1)},
    {**good("xfer.chunk"), "i": -1},
    {**good("xfer.ack"), "gap": 0},
    {**good("xfer.ack"), "next": "4"},
    {**good("xfer.fail"), "code": "Bad Code"},
    {**good("xfer.fail"), "code": ""},
])
def test_malformed_messages_are_refused_with_our_error(obj):
    with pytest.raises(TransferProtocolError) as info:
        m.parse_message(obj)
    assert info.value.remote
    assert "\n" not in str(info.value)


def test_chunk_of_exactly_the_maximum_size_parses():
    data = os.urandom(m.MAX_CHUNK_SIZE)
    assert m.parse_message(m.Chunk(TID, 3, data).to_obj()).data == data


def test_is_transfer_message_routes_on_the_prefix_only():
    assert m.is_transfer_message({"k": "xfer.whatever"})
    assert not m.is_transfer_message({"k": "msg"})
    assert not m.is_transfer_message({"k": 5})
    assert not m.is_transfer_message({})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.floats(allow_nan=False)
    | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=10)


@FUZZ
@given(st.sampled_from(EXAMPLES), st.data())
def test_any_mutated_message_parses_or_raises_only_our_error(msg, data):
    obj = msg.to_obj()
    key = data.draw(st.sampled_from(sorted(obj) + ["extra"]))
    obj[key] = data.draw(json_values)
    if data.draw(st.booleans()):
        obj.pop(data.draw(st.sampled_from(sorted(obj))))
    try:
        parsed = m.parse_message(obj)
    except TransferProtocolError:
        return
    assert m.parse_message(parsed.to_obj()) == parsed


@FUZZ
@given(st.dictionaries(st.sampled_from(["k", "t", "i", "data", "next", "gap", "window",
                                        "reason", "code", "kind", "name", "size", "mime",
                                        "sha256", "chunk"]), json_values, max_size=9),
       st.sampled_from(sorted(m.KINDS)))
def test_random_objects_parse_or_raise_only_our_error(obj, kind):
    obj["k"] = kind
    try:
        m.parse_message(obj)
    except TransferProtocolError:
        pass


@FUZZ
@given(st.binary(min_size=1, max_size=300), st.integers(0, 2**40))
def test_chunk_data_round_trips(data, index):
    assert m.parse_message(m.Chunk(TID, index, data).to_obj()) == m.Chunk(TID, index, data)


def test_a_chunk_plaintext_is_binary_with_one_base64_layer_left():
    """The chunk's bytes follow a 26-byte header raw (no base64 inside the ratchet
    plaintext), so a sealed 47 KiB chunk costs about 4/3 of its size in the frame."""
    data = os.urandom(1000)
    wire = m.encode_chunk_plaintext(m.Chunk(TID, 258, data).to_obj())
    assert wire == b"\x00\x01" + bytes.fromhex(TID) + (258).to_bytes(8, "big") + data
    assert m.decode_binary_plaintext(wire) == {"k": "xfer.chunk", "t": TID, "i": 258,
                                               "data": data}
    assert m.chunk_size_for(framing.DEFAULT_MAX_FRAME) == 47 * 1024


@pytest.mark.parametrize("wire", [
    b"", b"\x00", b"\x00\x02" + bytes(40),                     # unknown binary kind
    b"\x00\x01" + bytes(24),                                     # a header and no data
    b"\x00\x01" + bytes(10),                                     # short header
    b"\x00\x01" + bytes(16) + (2**50 + 1).to_bytes(8, "big") + b"x",  # index out of range
    b"\x00\x01" + bytes(24) + bytes(m.MAX_CHUNK_SIZE + 1),        # too much data
    b"\x01\x01" + bytes(40),
])
def test_malformed_binary_plaintexts_are_refused(wire):
    from msgrlib.client.ratchet_mode import BadBody, parse_inner

    with pytest.raises(TransferProtocolError):
        m.decode_binary_plaintext(wire)
    if wire[:1] == b"\x00":
        with pytest.raises(BadBody):
            parse_inner(wire)


@FUZZ
@given(st.binary(max_size=80))
def test_any_binary_plaintext_parses_or_raises_only_our_error(tail):
    from msgrlib.client.ratchet_mode import BadBody, parse_inner

    try:
        obj = parse_inner(b"\x00" + tail)
    except BadBody:
        return
    assert m.parse_message(obj) == m.Chunk(obj["t"], obj["i"], obj["data"])


def test_new_transfer_id_takes_injected_randomness():
    assert m.new_transfer_id(lambda n: b"\x01" * n) == "01" * 16
    with pytest.raises(ValueError):
        m.new_transfer_id(lambda n: b"")


def test_the_default_chunk_fits_a_real_ratchet_send_frame_at_the_relay_limit():
    """A chunk message of chunk_size_for(max_frame) bytes, sealed by a real ratchet with the
    longest names, index and id, still fits a relay `send` frame of max_frame bytes."""
    from nacl.public import PrivateKey

    max_frame = framing.DEFAULT_MAX_FRAME
    size = m.chunk_size_for(max_frame)
    assert m.DEFAULT_CHUNK_SIZE <= size <= m.MAX_CHUNK_SIZE
    bob = PrivateKey.generate()
    alice = Ratchet.initiator(os.urandom(32), bytes(bob.public_key), b"ad")
    inner = m.Chunk("f" * 32, m.MAX_DECLARED_SIZE, os.urandom(size)).to_obj()
    plaintext = m.encode_chunk_plaintext(inner)
    body = "r1." + "a" * 32 + "." + base64.b64encode(alice.encrypt(plaintext)).decode()
    frame = {"type": "send", "ref": 2**53, "to": "z" * 32, "ttl": 60, "kind": "msg",
             "body": body}
    framing.encode_frame(frame, max_size=max_frame)  # raises if it does not fit
    with pytest.raises(ValueError):
        m.chunk_size_for(1000)


# --- names ------------------------------------------------------------------------------------

HOSTILE_NAMES = ["../x", "/etc/x", "..", ".", "", "a/b", "a\\b", "x\x00y", "evil\x1b[2Jname",
                 "bell\x07", "new\nline", "rtl\u202eexe.txt", "zero\u200bwidth", ".bashrc",
                 ".ssh", "-rf", "trailing.", "trailing ", "x" * 256, "e\u0301" * 2,
                 "\udcff", "para\u2029graph"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused_with_an_escaped_one_line_message(name):
    with pytest.raises(UnsafeName) as info:
        check_file_name(name)
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message and "\x00" not in message
    assert "\u202e" not in message and "\x07" not in message


@pytest.mark.parametrize("name", ["report.pdf", "photo 1.jpg", "日本語.txt", "a", "x" * 255,
                                  "naïve résumé.doc", "emoji 😀.png", "v1.2-final"])
def test_ordinary_names_are_accepted(name):
    assert check_file_name(name) == name


@FUZZ
@given(st.text(max_size=40))
def test_an_accepted_name_stays_inside_the_directory(name):
    try:
        check_file_name(name)
    except UnsafeName:
        return
    base = "/some/dir"
    joined = os.path.join(base, name)
    assert os.path.dirname(joined) == base
    assert os.path.normpath(joined) == joined
    assert os.path.basename(joined) == name


# --- the machines: complete transfers ---------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 64, 1000])
def test_transfer_completes_and_the_bytes_arrive(size):
    data = os.urandom(size)
    link, sink = start(data)
    link.run()
    assert link.s.state is SenderState.DONE and link.r.state is ReceiverState.DONE
    assert sink.take() == data
    assert isinstance(link.s_events[0], Accepted)
    assert link.s_events[-1] == Completed() and link.r_events[-1] == Completed()
    if size:
        assert link.s_events[-2] == Progress(size, size)


def test_progress_events_count_bytes_up_to_the_total():
    data = os.urandom(100)
    link, _ = start(data, window=2, ack_every=1)
    link.run()
    done = [e.done_bytes for e in link.r_events if isinstance(e, Progress)]
    assert done == [16, 32, 48, 64, 80, 96, 100]
    acked = [e.done_bytes for e in link.s_events if isinstance(e, Progress)]
    assert acked == sorted(acked) and acked[-1] == 100


@pytest.mark.parametrize("window, ack_every", [(1, 1), (2, 1), (4, 2), (8, 8), (3, None)])
def test_the_window_bounds_the_chunks_in_flight(window, ack_every):
    data = os.urandom(16 * 50 + 3)
    link, sink = start(data, window=window, ack_every=ack_every)
    link.run()
    assert sink.take() == data
    assert link.max_chunks_in_flight <= window


def test_the_sender_never_uses_more_window_than_it_allows():
    data = os.urandom(16 * 40)
    offer = offer_for(data)
    sender = Sender(offer, BytesSource(data), 0.0, max_window=2)
    sender.take_outgoing()
    sender.handle(m.Accept(TID, 64), 0.0)
    assert sender.window == 2
    assert [x.i for x in sender.take_outgoing()] == [0, 1]


def test_a_secret_goes_to_memory_and_is_taken_once():
    secret = b"hunter2 is not a password"
    link, sink = start(secret, kind="secret")
    link.run()
    assert sink.take() == secret
    with pytest.raises(TransferStateError):
        sink.take()


# --- decline, failure, cancel -----------------------------------------------------------------

def test_a_declined_offer_tells_the_sender_why():
    data = b"x" * 40
    sender = Sender(offer_for(data), BytesSource(data), 0.0)
    receiver = Receiver(wire(sender.take_outgoing()[0]), 0.0)
    receiver.decline("not now")
    (answer,) = receiver.take_outgoing()
    sender.handle(wire(answer), 1.0)
    assert sender.state is SenderState.DECLINED and receiver.state is ReceiverState.DECLINED
    assert sender.take_events() == [Declined("not now")]
    assert sender.take_outgoing() == []
    with pytest.raises(TransferStateError):
        receiver.accept(MemorySink(max_size=40), 1.0)


def test_a_hash_mismatch_fails_both_sides_and_keeps_nothing(tmp_path):
    data = os.urandom(50)
    sink = FileSink(str(tmp_path), "report.pdf", size=50)
    link, _ = start(data, sink, sha="00" * 32)
    link.run()
    assert link.r.state is ReceiverState.FAILED and link.s.state is SenderState.FAILED
    assert Failed("hash_mismatch", link.r_events[-1].reason, by_peer=False) == link.r_events[-1]
    assert link.s_events[-1].code == "hash_mismatch" and link.s_events[-1].by_peer
    assert os.listdir(tmp_path) == []


def test_sender_cancel_mid_file_leaves_nothing_on_disk(tmp_path):
    data = os.urandom(16 * 20)
    sink = FileSink(str(tmp_path), "report.pdf", size=len(data))
    link, _ = start(data, sink, window=2)
    for _ in range(3):
        link.step()
    assert os.listdir(tmp_path)  # the temporary file exists meanwhile
    link.s.cancel()
    link.run()
    assert link.r.state is ReceiverState.FAILED
    assert link.r_events[-1] == Failed("cancelled", "the sender cancelled", by_peer=True)
    assert os.listdir(tmp_path) == []
    with pytest.raises(TransferStateError):
        link.s.cancel()


def test_receiver_cancel_tells_the_sender(tmp_path):
    data = os.urandom(16 * 20)
    sink = FileSink(str(tmp_path), "report.pdf", size=len(data))
    link, _ = start(data, sink, window=2)
    link.step()
    link.r.cancel()
    link.run()
    assert link.s.state is SenderState.FAILED and link.s_events[-1].by_peer
    assert os.listdir(tmp_path) == []


class BrokenSink(MemorySink):
    def write(self, data: bytes) -> None:
        raise OSError(28, "No space left on device")


def test_a_write_error_fails_both_sides():
    data = os.urandom(40)
    link, _ = start(data, BrokenSink(max_size=40))
    link.run()
    assert link.r_events[-1].code == "write_failed"
    assert "No space left" in link.r_events[-1].reason
    assert link.s.state is SenderState.FAILED and link.s_events[-1].code == "write_failed"


def test_the_sender_never_learns_the_receivers_paths(tmp_path):
    """A file that appears at the name while receiving fails the transfer; the receiver is
    told where, the sender only that it could not be saved."""
    data = os.urandom(40)
    sink = FileSink(str(tmp_path), "report.pdf", size=40)
    link, _ = start(data, sink)
    (tmp_path / "report.pdf").write_bytes(b"appeared")
    link.run()
    assert str(tmp_path) in link.r_events[-1].reason
    assert link.s_events[-1].code == "write_failed"
    assert str(tmp_path) not in link.s_events[-1].reason
    assert (tmp_path / "report.pdf").read_bytes() == b"appeared"
    assert os.listdir(tmp_path) == ["report.pdf"]


class ShrinkingSource(BytesSource):
    def read(self, offset: int, size: int) -> bytes:
        return super().read(offset, size)[:-1] if offset >= 32 else super().read(offset, size)


def test_a_file_that_changes_while_sending_fails_both_sides():
    data = os.urandom(80)
    offer = offer_for(data)
    sender = Sender(offer, ShrinkingSource(data), 0.0)
    link = Link(sender, Receiver(wire(sender.take_outgoing()[0]), 0.0))
    sink = MemorySink(max_size=80)
    link.r.accept(sink, 0.0, window=4)
    link.run()
    assert sender.state is SenderState.FAILED and link.s_events[-1].code == "read_failed"
    assert link.r.state is ReceiverState.FAILED and link.r_events[-1].by_peer


def test_timeouts_fail_and_tell_the_peer():
    data = os.urandom(40)
    sender = Sender(offer_for(data), BytesSource(data), 0.0, answer_timeout=100,
                    stall_timeout=10, nudge_after=5)
    sender.take_outgoing()
    sender.tick(100.0)
    assert sender.state is SenderState.OFFERED  # waiting for a person: the long timeout
    sender.tick(100.5)
    assert sender.state is SenderState.FAILED
    assert sender.take_outgoing()[-1].code == "timeout"

    link, _ = start(data)
    link.step()
    link.r.tick(1000.0)
    link.collect()
    assert link.r.state is ReceiverState.FAILED and link.r_events[-1].code == "timeout"
    link.run()
    assert link.s.state is SenderState.FAILED and link.s_events[-1].code == "timeout"


def test_an_unanswered_offer_never_times_out_at_the_receiver():
    receiver = Receiver(offer_for(b"abc"), 0.0)
    receiver.tick(10**6)
    assert receiver.state is ReceiverState.OFFERED


# --- protocol breaches are terminal -----------------------------------------------------------

def accepted_pair(data: bytes, window: int = 4) -> tuple[Sender, Receiver]:
    sender = Sender(offer_for(data), BytesSource(data), 0.0)
    receiver = Receiver(wire(sender.take_outgoing()[0]), 0.0)
    receiver.accept(MemorySink(max_size=len(data)), 0.0, window=window)
    sender.handle(wire(receiver.take_outgoing()[0]), 0.0)
    return sender, receiver


@pytest.mark.parametrize("bad", [
    m.Chunk(TID, 0, b"short"),            # wrong length
    m.Chunk(TID, 99, b"x" * 16),           # past the end
    m.Ack(TID, 1),                         # only a receiver sends acks
    m.Accept(TID, 4),
    m.Done(TID),
    m.Offer(TID, "file", "other.pdf", 64, "text/plain", SHA_EMPTY, 16),  # a different offer
])
def test_receiver_fails_on_a_protocol_breach_and_tells_the_sender(bad):
    sender, receiver = accepted_pair(os.urandom(64))
    receiver.handle(bad, 1.0)
    assert receiver.state is ReceiverState.FAILED
    (fail,) = [x for x in receiver.take_outgoing() if isinstance(x, m.Fail)]
    assert fail.code == "protocol"
    sender.handle(wire(fail), 1.0)
    assert sender.state is SenderState.FAILED
    # Terminal: nothing moves it again.
    receiver.handle(m.Chunk(TID, 0, b"x" * 16), 2.0)
    assert receiver.state is ReceiverState.FAILED


@pytest.mark.parametrize("bad", [
    m.Ack(TID, 50),                        # acknowledges chunks never sent
    m.Done(TID),                           # before every chunk was acknowledged
    m.Decline(TID, "changed my mind"),     # after accepting
    m.Chunk(TID, 0, b"x" * 16),            # only a sender sends chunks
])
def test_sender_fails_on_a_protocol_breach(bad):
    sender, _ = accepted_pair(os.urandom(64 * 16), window=2)
    sender.take_outgoing()
    sender.handle(bad, 1.0)
    assert sender.state is SenderState.FAILED
    assert sender.take_outgoing()[-1].code == "protocol"
    assert sender.take_events()[-1].code == "protocol"


def test_a_chunk_before_accepting_is_a_breach():
    receiver = Receiver(offer_for(b"x" * 16), 0.0)
    receiver.handle(m.Chunk(TID, 0, b"x" * 16), 0.0)
    assert receiver.state is ReceiverState.FAILED


def test_an_ack_before_the_answer_is_a_breach():
    sender = Sender(offer_for(b"x" * 16), BytesSource(b"x" * 16), 0.0)
    sender.handle(m.Ack(TID, 0), 0.0)
    assert sender.state is SenderState.FAILED


def test_messages_for_another_transfer_are_the_callers_mistake():
    sender, receiver = accepted_pair(b"x" * 16)
    with pytest.raises(TransferStateError):
        sender.handle(m.Done("00" * 16), 0.0)
    with pytest.raises(TransferStateError):
        receiver.handle(m.Done("00" * 16), 0.0)


def test_transition_tables_never_leave_a_terminal_state():
    assert not any(state in SENDER_TERMINAL for state, _ in SENDER_TRANSITIONS)
    assert not any(state in RECEIVER_TERMINAL for state, _ in RECEIVER_TRANSITIONS)
    assert set(SENDER_TRANSITIONS.values()) | {SenderState.OFFERED} == set(SenderState)
    assert set(RECEIVER_TRANSITIONS.values()) | {ReceiverState.OFFERED} == set(ReceiverState)


# --- offers a receiver must refuse ------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "/etc/x", "a\x1b]0;pwned\x07b", ".bashrc"])
def test_an_offer_with_a_hostile_name_cannot_be_accepted(name):
    offer = m.Offer(TID, "file", name, 3, "text/plain", SHA_EMPTY, 16)
    receiver = Receiver(m.parse_message(offer.to_obj()), 0.0)
    assert receiver.problem
    assert "\x1b" not in receiver.problem and "\x07" not in receiver.problem
    with pytest.raises(TransferStateError):
        receiver.accept(MemorySink(max_size=3), 0.0)
    receiver.decline(receiver.problem)
    assert receiver.take_outgoing()[0].reason.startswith("the file name")


def test_offers_over_the_size_limits_cannot_be_accepted():
    big = m.Offer(TID, "file", "big.iso", 10**12, "application/octet-stream", SHA_EMPTY, 16)
    assert "at most 1000" in Receiver(big, 0.0, max_size=1000).problem
    secret = m.Offer(TID, "secret", "", 70_000, "text/plain", SHA_EMPTY, 16)
    assert "send it as a file" in Receiver(secret, 0.0).problem
    assert Receiver(secret, 0.0, max_secret_size=70_000).problem is None


# --- resume, loss, repeats, reordering --------------------------------------------------------

def test_a_cut_mid_file_resumes_from_the_last_acknowledged_chunk():
    data = os.urandom(16 * 30)
    link, sink = start(data, window=4, ack_every=2)
    for _ in range(7):
        link.step()
    acked = link.s.acked
    link.cut()
    link.settle()
    assert sink.take() == data and link.s.state is SenderState.DONE
    # The first chunk sent again is the first one never acknowledged.
    gap = next(x for x in link.history_to_s if isinstance(x, m.Ack) and x.gap)
    assert gap.next >= acked


def test_a_lost_accept_is_repeated_when_the_sender_repeats_its_offer():
    data = os.urandom(40)
    link, sink = start(data)
    link.to_s.clear()  # the accept is lost
    link.s.resume(1.0)  # only the sender notices the reconnect: it repeats the offer
    link.run()
    assert sink.take() == data


def test_a_lost_accept_is_repeated_by_the_receivers_nudge():
    data = os.urandom(40)
    link, sink = start(data)
    link.to_s.clear()
    link.run()
    assert link.s.state is SenderState.OFFERED
    link.idle()
    link.run()
    assert sink.take() == data


def test_a_lost_tail_of_chunks_is_repaired_by_the_receivers_nudge():
    data = os.urandom(16 * 8)
    link, sink = start(data, window=4, ack_every=4)
    link.step()
    del link.to_r[2:]  # chunks 2 and 3 never reached the relay
    link.run()
    assert link.r.expected == 2 and link.r.state is ReceiverState.RECEIVING
    link.idle()
    link.run()
    assert sink.take() == data


def test_a_lost_done_is_repeated_when_the_sender_repeats_the_last_chunk():
    data = os.urandom(40)
    link, sink = start(data)
    while link.r.state is not ReceiverState.DONE:
        link.step()
    link.collect()
    link.to_s = [x for x in link.to_s if not isinstance(x, m.Done)]
    link.run()
    assert link.s.state is SenderState.SENDING  # xfer.done was also the last ack
    link.idle()  # the sender nudges with its last chunk; the receiver repeats xfer.done
    link.run()
    assert link.s.state is SenderState.DONE


def test_a_lost_chunk_makes_the_receiver_ask_for_it_again():
    data = os.urandom(16 * 10)
    link, sink = start(data, window=4, ack_every=4)
    link.step()  # the sender gets the accept and sends a window of chunks
    dropped = link.to_r.pop(1)
    assert isinstance(dropped, m.Chunk) and dropped.i == 1
    link.run()
    assert sink.take() == data
    gaps = [x for x in link.history_to_s if isinstance(x, m.Ack) and x.gap]
    assert [x.next for x in gaps] == [1]


def test_terminal_answers_are_repeated_on_resume():
    data = os.urandom(40)
    sender = Sender(offer_for(data), BytesSource(data), 0.0)
    receiver = Receiver(wire(sender.take_outgoing()[0]), 0.0)
    receiver.decline("no")
    first = receiver.take_outgoing()
    receiver.resume(1.0)
    assert receiver.take_outgoing() == first
    receiver.handle(wire(sender.offer), 2.0)  # a repeated offer gets the same answer
    assert receiver.take_outgoing() == first


@FUZZ
@given(size=st.integers(0, 16 * 40), window=st.integers(1, 8), ack_every=st.integers(1, 8),
       seed=st.integers(0, 2**32 - 1))
def test_any_pattern_of_loss_repeats_reordering_and_cuts_still_delivers_exactly(
        size, window, ack_every, seed):
    """The relay may lose what was in flight at a cut, hand a message out twice, and (after a
    refused send is retried) deliver out of order. After the chaos, cuts and resumes alone must
    finish the transfer with exactly the sent bytes. The sender never sends past the window;
    the relay may hold old copies beside a resent window, never more than twice the window."""
    rng = random.Random(seed)
    data = rng.randbytes(size)
    link, sink = start(data, window=window, ack_every=min(ack_every, window))
    for _ in range(400):
        link.collect()
        roll = rng.random()
        if roll < 0.05:
            link.cut()
        elif roll < 0.12 and link.to_r:
            link.to_r.insert(rng.randrange(len(link.to_r) + 1), link.to_r[0])  # a repeat
        elif roll < 0.2 and len(link.to_r) > 1:
            i = rng.randrange(len(link.to_r) - 1)
            link.to_r[i], link.to_r[i + 1] = link.to_r[i + 1], link.to_r[i]
        elif roll < 0.25 and link.to_r:
            link.to_r.pop(rng.randrange(len(link.to_r)))  # lost
        elif roll < 0.3 and link.to_s:
            link.to_s.pop(rng.randrange(len(link.to_s)))
        elif not link.step():
            break
    link.settle()
    assert link.r.state is ReceiverState.DONE and link.s.state is SenderState.DONE, link
    assert sink.take() == data

@FUZZ
@given(size=st.integers(1, 16 * 40), window=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_in_order_delivery_with_cuts_holds_at_most_two_windows_in_flight(size, window, seed):
    """As the relay does it: in order, and a cut loses only what had not reached it yet
    (the newest messages). Then at most twice the window is ever in flight."""
    rng = random.Random(seed)
    data = rng.randbytes(size)
    link, sink = start(data, window=window)
    for _ in range(300):
        link.collect()
        if rng.random() < 0.08:
            del link.to_r[len(link.to_r) - rng.randrange(len(link.to_r) + 1):]
            del link.to_s[len(link.to_s) - rng.randrange(len(link.to_s) + 1):]
            link.s.resume(link.now)
            link.r.resume(link.now)
        elif not link.step():
            link.idle()
        if link.r.state is ReceiverState.DONE and link.s.state is SenderState.DONE:
            break
    link.settle()
    assert sink.take() == data
    assert link.max_chunks_in_flight <= 2 * window


# --- the file sink ----------------------------------------------------------------------------

def test_file_sink_renames_only_on_commit_and_keeps_the_file_private(tmp_path):
    data = os.urandom(100)
    sink = FileSink(str(tmp_path), "report.pdf", size=100)
    (temp,) = os.listdir(tmp_path)
    assert temp.startswith(".msgr-") and temp.endswith(".part")
    sink.write(data)
    assert not (tmp_path / "report.pdf").exists()
    sink.commit()
    assert os.listdir(tmp_path) == ["report.pdf"]
    assert (tmp_path / "report.pdf").read_bytes() == data
    assert stat.S_IMODE(os.stat(tmp_path / "report.pdf").st_mode) == 0o600
    assert hash_file(str(tmp_path / "report.pdf")) == (100, hashlib.sha256(data).hexdigest())


def test_file_sink_never_overwrites_without_asking(tmp_path):
    (tmp_path / "report.pdf").write_bytes(b"mine")
    with pytest.raises(TargetExists) as info:
        FileSink(str(tmp_path), "report.pdf", size=3)
    assert info.value.path == str(tmp_path / "report.pdf")
    assert os.listdir(tmp_path) == ["report.pdf"]
    sink = FileSink(str(tmp_path), "report.pdf", size=3, overwrite=True)
    sink.write(b"new")
    sink.commit()
    assert (tmp_path / "report.pdf").read_bytes() == b"new"


def test_a_file_that_appears_during_the_transfer_is_not_overwritten(tmp_path):
    sink = FileSink(str(tmp_path), "report.pdf", size=3)
    sink.write(b"new")
    (tmp_path / "report.pdf").write_bytes(b"mine")
    with pytest.raises(TargetExists):
        sink.commit()
    assert (tmp_path / "report.pdf").read_bytes() == b"mine"
    assert os.listdir(tmp_path) == ["report.pdf"]


def test_a_symlink_at_the_name_is_not_followed_or_replaced(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    inside = tmp_path / "inside"
    inside.mkdir()
    os.symlink(outside / "target", inside / "report.pdf")
    with pytest.raises(TargetExists):
        FileSink(str(inside), "report.pdf", size=1)
    assert os.listdir(outside) == []


@pytest.mark.parametrize("name", ["../x", "/etc/x", "a\x1b[31mred"])
def test_file_sink_refuses_hostile_names_before_creating_anything(tmp_path, name):
    with pytest.raises(UnsafeName):
        FileSink(str(tmp_path), name, size=1)
    assert os.listdir(tmp_path) == []
    assert not os.path.exists(tmp_path.parent / "x")


def test_file_sink_refuses_more_than_offered_and_a_missing_directory(tmp_path):
    sink = FileSink(str(tmp_path), "a.bin", size=2)
    with pytest.raises(SinkError):
        sink.write(b"abc")
    sink.discard()
    sink.discard()  # idempotent
    assert os.listdir(tmp_path) == []
    with pytest.raises(SinkError):
        FileSink(str(tmp_path / "missing"), "a.bin", size=2)


def test_file_sink_commit_refuses_a_short_file_and_cleans_up(tmp_path):
    sink = FileSink(str(tmp_path), "a.bin", size=5)
    sink.write(b"ab")
    with pytest.raises(SinkError):
        sink.commit()
    assert os.listdir(tmp_path) == []


def test_file_sink_as_context_manager_discards_unless_committed(tmp_path):
    with FileSink(str(tmp_path), "a.bin", size=2) as sink:
        sink.write(b"ab")
    assert os.listdir(tmp_path) == []


def test_a_whole_file_transfer_through_real_files(tmp_path):
    src = tmp_path / "src.bin"
    data = os.urandom(16 * 64 + 5)
    src.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    size, sha = hash_file(str(src))
    source = FileSource(str(src))
    offer = make_offer(TID, kind="file", name="src.bin", size=size, mime="text/plain",
                       sha256=sha, chunk=16)
    sender = Sender(offer, source, 0.0)
    receiver = Receiver(wire(sender.take_outgoing()[0]), 0.0)
    receiver.accept(FileSink(str(out), offer.name, size=offer.size), 0.0, window=8)
    Link(sender, receiver).run()
    source.close()
    assert (out / "src.bin").read_bytes() == data
    assert os.listdir(out) == ["src.bin"]


# --- the document -----------------------------------------------------------------------------

def test_docs_transfer_examples_are_what_the_code_computes():
    from tools import transfer_examples

    path = os.path.join(ROOT, "docs",
                        "transfer.md")
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    for name, block in transfer_examples.examples().items():
        assert block in doc, f"docs/transfer.md's {name!r} example is stale; paste:\n{block}"
    assert f"{m.chunk_size_for(framing.DEFAULT_MAX_FRAME) // 1024} KiB for the default" in doc


# --- preparing what to send -------------------------------------------------------------------

def test_prepare_file_hashes_and_names_it(tmp_path):
    path = tmp_path / "notes.txt"
    data = os.urandom(1000)
    path.write_bytes(data)
    prepared = files.prepare_file(str(path), TID, chunk=256)
    assert prepared.offer == m.Offer(TID, "file", "notes.txt", 1000, "text/plain",
                                     hashlib.sha256(data).hexdigest(), 256)
    assert prepared.source.read(990, 100) == data[990:]
    prepared.source.close()


@pytest.mark.parametrize("name", [".bashrc", "-rf", "a\x1bb"])
def test_prepare_file_refuses_a_name_the_receiver_would_refuse(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"x")
    with pytest.raises(UnsafeName):
        files.prepare_file(str(path), TID)
    assert files.prepare_file(str(path), TID, name="renamed").offer.name == "renamed"


def test_prepare_directory_packs_into_a_temporary_archive(tmp_path):
    src = tmp_path / "album"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.jpg").write_bytes(b"jpeg")
    os.symlink("/etc/passwd", src / "link")
    prepared = files.prepare_directory(str(src), TID)
    offer = prepared.offer
    assert (offer.kind, offer.name, offer.mime) == ("directory", "album", "application/x-tar")
    assert prepared.skipped == ["link"]
    data = prepared.source.read(0, offer.size)
    assert hashlib.sha256(data).hexdigest() == offer.sha256
    prepared.source.close()
    assert os.listdir(tmp_path) == ["album"]  # the archive was anonymous


def test_prepare_secret_and_mime_guesses():
    assert files.prepare_secret(b"pin 1234", TID).offer.mime == "text/plain"
    assert files.prepare_secret(b"\xff\xfe", TID).offer.mime == "application/octet-stream"
    assert files.guess_mime("photo.JPG") == "image/jpeg"
    assert files.guess_mime("no-extension") == "application/octet-stream"


# --- progress ---------------------------------------------------------------------------------

def test_progress_meter_rate_and_time_left():
    meter = ProgressMeter(100 * 1024**2, 0.0)
    assert meter.eta is None and meter.line() == "0 B of 100.0 MiB"
    for second in range(1, 11):
        meter.update(second * 8 * 1024**2, float(second))
    assert meter.rate == pytest.approx(8 * 1024**2)
    assert meter.eta == pytest.approx(20 / 8)
    assert meter.line() == "80.0 MiB of 100.0 MiB, 8.0 MiB/s, 2 s left"
    meter.update(100 * 1024**2, 12.0)
    assert meter.eta == 0.0 and "left" not in meter.line()


def test_progress_rate_follows_the_recent_window():
    meter = ProgressMeter(10**9, 0.0, rate_window=5.0)
    for second in range(1, 21):
        fast = second <= 10
        meter.update((second if fast else 10) * 10**6 + (0 if fast else (second - 10) * 10**5),
                     float(second))
    assert meter.rate == pytest.approx(10**5, rel=0.01)


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                     (5 * 1024**3, "5.0 GiB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize("s, text", [(0, "0 s"), (59.4, "59 s"), (75, "1 min 15 s"),
                                     (3700, "1 h 1 min")])
def test_format_duration(s, text):
    assert format_duration(s) == text


def test_json_events_cover_every_event():
    meter = ProgressMeter(100, 0.0)
    meter.update(50, 1.0)
    rows = [event_json(e, TID, 1.0, meter) for e in (
        Accepted(4), Progress(50, 100), Declined("no"), Completed(),
        Failed("timeout", "slow", by_peer=True))]
    assert [r["event"] for r in rows] == ["accepted", "progress", "declined", "completed",
                                          "failed"]
    assert rows[1] == {"t": TID, "time": 1.0, "event": "progress", "bytes": 50, "total": 100,
                       "rate": 50.0, "eta": 1.0}
    assert all(json.loads(json.dumps(r)) == r for r in rows)


# --- hostile peers: any sequence of well-formed messages --------------------------------------

def peer_messages(chunks: int):
    index = st.integers(0, chunks + 2)
    return st.one_of(
        st.builds(m.Accept, st.just(TID), st.integers(1, m.MAX_WINDOW)),
        st.builds(m.Decline, st.just(TID), st.text(max_size=20)),
        st.builds(m.Chunk, st.just(TID), index, st.binary(min_size=1, max_size=20)),
        st.builds(m.Ack, st.just(TID), index, st.booleans()),
        st.just(m.Done(TID)),
        st.builds(m.Fail, st.just(TID), st.sampled_from(m.FAIL_CODES), st.text(max_size=20)),
        st.builds(m.Offer, st.just(TID), st.sampled_from(m.TRANSFER_KINDS),
                  st.just("report.pdf"), st.integers(0, 80), st.just("text/plain"),
                  st.just(SHA_EMPTY), st.just(16)),
    )


@FUZZ
@given(st.data(), st.integers(0, 5), st.booleans())
def test_any_peer_message_sequence_only_moves_along_the_tables(data, chunks, accept_first):
    """Whatever well-formed messages a hostile peer sends, in any order: no exception, every
    state change is in the table, and a terminal state never changes."""
    content = bytes(range(16)) * chunks
    sender = Sender(offer_for(content), BytesSource(content), 0.0)
    receiver = Receiver(offer_for(content), 0.0)
    if accept_first:
        receiver.accept(MemorySink(max_size=len(content)), 0.0, window=2)
    for now, msg in enumerate(data.draw(st.lists(peer_messages(chunks), max_size=25))):
        for machine, terminal in ((sender, SENDER_TERMINAL), (receiver, RECEIVER_TERMINAL)):
            before = machine.state
            machine.handle(msg, float(now))
            machine.tick(float(now))
            if before in terminal:
                assert machine.state is before
            machine.take_outgoing()
            for event in machine.take_events():
                if isinstance(event, Failed) and not event.by_peer:
                    assert machine.state.value == "failed"


def test_fit_window_keeps_two_windows_within_half_the_mailbox():
    # The relay's defaults: 4 MiB and 1,000 messages per recipient.
    assert m.fit_window(m.DEFAULT_CHUNK_SIZE, mailbox_bytes=4 * 1024**2,
                        mailbox_messages=1000) == m.DEFAULT_WINDOW
    small = m.fit_window(m.DEFAULT_CHUNK_SIZE, mailbox_bytes=1024**2, mailbox_messages=1000)
    assert 2 * small * m.chunk_frame_size(m.DEFAULT_CHUNK_SIZE) <= 1024**2 // 2
    assert m.fit_window(m.DEFAULT_CHUNK_SIZE, mailbox_bytes=4 * 1024**2,
                        mailbox_messages=12) == 3
    assert m.fit_window(m.DEFAULT_CHUNK_SIZE, mailbox_bytes=1, mailbox_messages=1) == 1


def test_a_receiver_repeating_gap_acks_cannot_make_the_sender_resend_a_window_each_time():
    """Found attacking: each ``xfer.ack`` with ``gap: true`` for the same position made the
    sender seal and queue its whole window again (1,000 acks of a few bytes: 16,000 chunks,
    half a GiB at the sender). An honest receiver asks once per gap, then once per nudge."""
    import hashlib

    from msgrlib.transfer.files import BytesSource
    from msgrlib.transfer.machine import Sender, make_offer
    from msgrlib.transfer.messages import Accept, Ack

    data = b"x" * (1024 * 64)
    offer = make_offer("ab" * 16, kind="file", name="a.bin", size=len(data),
                       mime="application/octet-stream",
                       sha256=hashlib.sha256(data).hexdigest(), chunk=1024)
    sender = Sender(offer, BytesSource(data), 0.0, nudge_after=10.0)
    sender.take_outgoing()
    sender.handle(Accept(offer.t, 16), 0.0)
    assert len(sender.take_outgoing()) == 16
    queued = 0
    for i in range(1000):
        sender.handle(Ack(offer.t, 0, gap=True), i * 0.001)
        queued += len(sender.take_outgoing())
    assert queued == 16  # one go-back
    sender.handle(Ack(offer.t, 0, gap=True), 10.0)  # the receiver's nudge, later: honoured
    assert len(sender.take_outgoing()) == 16
    sender.handle(Ack(offer.t, 3, gap=True), 10.0)  # a new position: at once
    assert [m.i for m in sender.take_outgoing()] == list(range(3, 19))


# --- speed: chunk size from the relay, and relay defaults that do not throttle (issue 16) ----

def test_the_chunk_follows_the_relays_declared_frame_within_bounds():
    default = m.chunk_size_for(framing.DEFAULT_MAX_FRAME)
    assert m.chunk_size_for_relay({"max_frame": 65536}) == default == 47 * 1024
    bigger = m.chunk_size_for_relay({"max_frame": 256 * 1024})
    assert m.chunk_frame_size(bigger) <= 256 * 1024 < m.chunk_frame_size(bigger + 1024)
    assert m.chunk_size_for_relay({"max_frame": 2**40}) == m.MAX_CHUNK_SIZE
    for junk in (None, {}, {"max_frame": "65536"}, {"max_frame": True}, {"max_frame": 10},
                 {"max_frame": -1}, [65536]):
        assert m.chunk_size_for_relay(junk) == default


def test_the_chunk_frame_stays_within_a_quarter_of_the_declared_mailbox():
    """A relay whose frames are larger than its mailbox refused every chunk as mailbox_full
    (found by the review); the frame is held to a quarter of the declared mailbox_bytes,
    and the receiver's window then keeps two windows within half of it."""
    mailbox = 1024 * 1024
    chunk = m.chunk_size_for_relay({"max_frame": 4 * 1024 * 1024, "mailbox_bytes": mailbox})
    assert m.chunk_frame_size(chunk) <= mailbox // 4
    window = m.fit_window(chunk, mailbox_bytes=m.mailbox_bytes_of({"mailbox_bytes": mailbox}),
                          mailbox_messages=1000)
    assert window >= 1 and 2 * window * m.chunk_frame_size(chunk) <= mailbox // 2
    # A large mailbox changes nothing; a tiny one still leaves a usable chunk.
    assert m.chunk_size_for_relay({"max_frame": 65536, "mailbox_bytes": 2**40}) == 47 * 1024
    assert m.chunk_size_for_relay({"max_frame": 65536, "mailbox_bytes": 1}) > 0
    for junk in (None, {}, {"mailbox_bytes": "1"}, {"mailbox_bytes": True},
                 {"mailbox_bytes": 0}, {"mailbox_bytes": -5}, [1]):
        assert m.mailbox_bytes_of(junk) == 4 * 1024 * 1024
        assert m.chunk_size_for_relay({"max_frame": 65536, **(junk if isinstance(junk, dict)
                                                             else {})}) == 47 * 1024


def test_a_relay_at_its_defaults_does_not_throttle_a_transfer_at_magic_wormholes_speed():
    """issue 16: magic-wormhole's relayed transfer runs at about 110-130 MB/s locally. The
    relay's default per-connection rates must carry that many default-size chunk frames
    (the client paces at 90 % of them), and the default window must keep the relay's
    stored bytes within half a default mailbox."""
    from msgrlib.client.outbox import RATE_MARGIN
    from msgrlib.relay.config import RelayConfig

    config = RelayConfig()
    chunk = m.chunk_size_for(config.max_frame)
    frames_per_s = 130e6 / chunk
    assert RATE_MARGIN * config.rate_messages >= 1.1 * frames_per_s  # room for the acks
    assert RATE_MARGIN * config.rate_bytes >= frames_per_s * m.chunk_frame_size(chunk)
    window = m.fit_window(chunk, mailbox_bytes=config.mailbox_bytes,
                          mailbox_messages=config.mailbox_messages)
    assert window == m.DEFAULT_WINDOW
    assert 2 * window * m.chunk_frame_size(chunk) <= config.mailbox_bytes // 2
