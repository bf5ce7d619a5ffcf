"""The documents match the code: PROTOCOL.md's worked examples, README's limits."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import re

from msgrlib.relay import rules as relay
from tools import protocol_examples

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def test_protocol_examples_are_what_the_code_computes():
    protocol = read("PROTOCOL.md")
    for name, block in protocol_examples.examples().items():
        assert block in protocol, f"PROTOCOL.md's {name!r} example is stale; paste:\n{block}"


def test_readme_lists_every_serve_limit_with_its_default():
    readme = read("README.md")
    import msgr
    defaults = relay.RelayConfig()
    for option, field, _, _ in msgr._LIMIT_OPTIONS:
        row = re.search(rf"^\| `{re.escape(option)}` \|([^|]*)\|", readme, re.M)
        assert row, f"README.md has no row for {option}"
        value = getattr(defaults, field)
        assert msgr._number(value) in row.group(1), (option, row.group(1), value)
    assert {f.name for f in dataclasses.fields(relay.RelayConfig)} >= {
        field for _, field, _, _ in msgr._LIMIT_OPTIONS}


def _values(block: str) -> dict[str, str]:
    """``label = value`` lines of an example block, by label."""
    out = {}
    for line in block.splitlines():
        label, sep, value = line.partition("= ")
        if sep:
            out[label.strip()] = value.strip()
    return out


def _lv(*parts: bytes) -> bytes:
    # CPace's lv_cat; every part here is shorter than 128 bytes (one-byte LEB128).
    assert all(len(p) < 128 for p in parts)
    return b"".join(bytes([len(p)]) + p for p in parts)


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.digest(salt, ikm, "sha512")
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([i]), "sha512")
        out, i = out + block, i + 1
    return out[:length]


def test_the_examples_private_values_give_k_isk_and_the_first_ratchet_message():
    """From PROTOCOL.md's printed values and formulas alone (hashlib, hmac and
    plain X25519, none of msgr's code): K, ISK, both tags, root_key and A's
    first ratchet message, as an implementer would check them offline."""
    from nacl.bindings import crypto_scalarmult, crypto_secretbox

    ex = protocol_examples.examples()
    hs, sc, rt = _values(ex["handshake"]), _values(ex["scalars"]), _values(ex["ratchet"])
    for block in (ex["handshake"], ex["scalars"], ex["ratchet"]):
        assert block in read("PROTOCOL.md")
    m2, m3, m4 = (json.loads(hs[f"M{i}"]) for i in (2, 3, 4))
    b64 = base64.b64decode
    h = bytes.fromhex
    na, nb = b64(m3["na"]), b64(m3["nb"])
    sid = hashlib.sha512(_lv(b"msgr/v1/cpace-sid", na, nb)).digest()[:16]
    assert sid.hex() == hs["sid"]
    ya_share, yb_share = b64(m3["Y"]), b64(m2["Y"])
    ada, adb = b64(m3["ad"]), b64(m2["ad"])
    k = crypto_scalarmult(h(sc["ya (A's scalar)"]), yb_share)
    assert k == crypto_scalarmult(h(sc["yb (B's scalar)"]), ya_share) == h(sc["K"])
    isk = hashlib.sha512(_lv(b"CPace255_ISK", sid, k) + _lv(ya_share, ada)
                         + _lv(yb_share, adb)).digest()
    assert isk.hex() == hs["ISK"]
    mac_key = hashlib.sha512(b"CPaceMac" + sid + isk).digest()
    assert b64(m3["tag"]) == hmac.digest(mac_key, _lv(ya_share, ada), "sha512")
    assert b64(m4["tag"]) == hmac.digest(mac_key, _lv(yb_share, adb), "sha512")
    label = b"msgr/v1/session-root"
    root_key = hashlib.blake2b(len(label).to_bytes(4, "big") + label, key=isk,
                               digest_size=32).digest()
    assert root_key.hex() == hs["root_key"]
    ad = _lv(b"msgr/v1/ratchet-ad", sid, b"alice", b"bob")
    b_priv = h(rt["B's ratchet key (private; public in ADb)"])
    a_priv = h(rt["A's first ratchet key (private)"])
    assert adb == _lv(b"bob", crypto_scalarmult(b_priv, (9).to_bytes(32, "little")))
    dh = crypto_scalarmult(a_priv, crypto_scalarmult(b_priv, (9).to_bytes(32, "little")))
    cks = _hkdf(dh, root_key, b"msgr/v1/ratchet-root", 64)[32:]
    mk = hmac.digest(cks, b"\x01", "sha512")[:32]
    a_pub = crypto_scalarmult(a_priv, (9).to_bytes(32, "little"))
    header = bytes([1, 0]) + a_pub + bytes(8)  # version, initiator, DH key, pn 0, n 0
    out = _hkdf(mk, b"", b"msgr/v1/ratchet-msg" + len(ad).to_bytes(4, "big") + ad + header, 56)
    message = header + crypto_secretbox(b'{"k":"hi"}', out[32:], out[:32])
    assert message.hex() == rt["message"]


class _Link:
    """A connection as the sans-I/O relay sees it: every frame it writes, decoded."""

    def __init__(self, host: str) -> None:
        import framing

        self.address = self.host = host
        self.decoder = framing.FrameDecoder(max_size=1 << 20)
        self.frames: list[dict] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.frames.extend(self.decoder.feed(data))

    def close(self) -> None:
        self.closed = True

    def take(self) -> list[dict]:
        out, self.frames = self.frames, []
        return out


def test_the_relay_does_what_protocol_section_3_says():
    """PROTOCOL.md 3.1-3.4, on the sans-I/O relay: the first hello for a name
    is challenged too; welcome and the waiting messages come out together;
    ids are 1..2^53-1; bye gets no reply; a ttl that is not an integer is a
    protocol error; a ping's t that is not a number comes back as null."""
    from helpers import auth_message
    from nacl.signing import SigningKey

    r = relay.Relay(relay.RelayConfig(), clock=lambda: 0.0, wallclock=lambda: 0.0,
                    rng=os.urandom)

    def login(name: str, key: SigningKey) -> tuple[relay.Client, _Link]:
        link = _Link("192.0.2.1")
        client = r.connect(link)
        r.receive(client, {"type": "hello", "v": 1, "user": name,
                           "key": base64.b64encode(bytes(key.verify_key)).decode()})
        (challenge,) = link.take()  # never seen before, and challenged all the same
        assert challenge["type"] == "challenge"
        sig = key.sign(auth_message(challenge, name)).signature
        r.receive(client, {"type": "auth", "sig": base64.b64encode(sig).decode()})
        return client, link

    alice, alice_link = login("alice", SigningKey.generate())
    assert [f["type"] for f in alice_link.take()] == ["welcome"]
    r.receive(alice, {"type": "send", "ref": 1, "to": "bob", "body": "x"})
    r.receive(alice, {"type": "send", "ref": 2, "to": "bob", "kind": "hs", "body": "y"})
    ids = [f["id"] for f in alice_link.take()]
    assert all(type(i) is int and 1 <= i <= 2**53 - 1 for i in ids)
    bob, bob_link = login("bob", SigningKey.generate())
    frames = bob_link.take()  # in one go, before bob sends anything more
    assert [f["type"] for f in frames] == ["welcome", "deliver", "deliver"]
    assert [f["id"] for f in frames[1:]] == ids
    r.receive(alice, {"type": "ping", "t": "x"})
    assert alice_link.take() == [{"type": "pong", "t": None}]
    r.receive(bob, {"type": "bye"})
    assert bob_link.take() == [] and bob_link.closed
    r.receive(alice, {"type": "send", "to": "bob", "ttl": 30.0, "body": "z"})
    (error,) = alice_link.take()
    assert error["code"] == "protocol" and error["fatal"] and alice_link.closed


def test_each_handshake_check_fails_as_protocol_section_6_2_says():
    """The table in PROTOCOL.md 6.2, row by row where no other test covers
    it: alice (A) waits for bob's resp and bob (B) for alice's share while
    every kind of bad message arrives; the notices and silences are as
    listed, nothing counts, and the attempt then completes. A second copy of
    the resp (echoing the attempt, out of turn) is a notice and ends it."""
    from chatnet import Net, attached

    from msgrlib.client import core as chat

    def body(msg: object) -> str:
        return "h1." + base64.b64encode(json.dumps(msg).encode()).decode()

    ident = iter(range(70_000, 80_000))

    def noticed(core: chat.ChatCore, text: str, sender: str) -> bool:
        core.handle({"type": "deliver", "id": next(ident), "from": sender, "kind": "hs",
                     "ttl": 30, "expires_at": 0, "body": text})
        return any(isinstance(e, chat.Notice) for e in core.take_events())

    net = Net()
    alice, bob = attached(net)
    held: list[dict] = []
    net.pump(drop=lambda f: f.get("kind") == "hs" and f["from"] == "bob"
             and chat._parse_hs(f["body"]).get("hs") == "resp" and not held.append(f))
    resp = chat._parse_hs(held[0]["body"])
    na, nb = resp["na"], resp["nb"]
    other = base64.b64encode(os.urandom(16)).decode()
    assert noticed(alice, "h1.!!not base64", "bob")
    assert noticed(bob, "h1." + base64.b64encode(b"[1]").decode(), "alice")
    assert not noticed(alice, body({"hs": "nope", "v": 1}), "bob")
    assert not noticed(bob, body({"hs": "req", "v": 1, "nr": other}), "alice")
    assert not noticed(alice, body({"hs": "req", "v": 1, "nr": other[:-4]}), "bob")
    assert noticed(alice, body({"hs": "init", "v": 1, "na": other}), "bob")
    assert noticed(bob, body({"hs": "init", "v": True, "na": other}), "alice")
    assert not noticed(alice, body({**resp, "na": other}), "bob")
    assert not noticed(alice, body({**resp, "na": "not base64!"}), "bob")
    assert not noticed(alice, body({"hs": "share", "v": 1, "na": na, "nb": nb}), "bob")
    assert not noticed(bob, body({"hs": "confirm", "v": 1, "na": na, "nb": nb}), "alice")
    assert not noticed(alice, body({"hs": "abort", "v": 1, "na": na, "nb": nb, "x": 1}), "bob")
    assert not noticed(bob, body({"hs": "abort", "v": 1, "na": na, "nb": nb}), "alice")
    for core in (alice, bob):
        assert core.phase is chat.Phase.RUNNING and core._mode.failures == 0
    alice.handle(held[0])
    assert noticed(alice, held[0]["body"], "bob")  # the same resp again: out of turn
    net.pump()
    assert alice.session is None and alice._mode.failures == 0
    assert alice.phase is chat.Phase.RUNNING  # until its timeout


def test_inner_fields_of_the_wrong_type_or_range_are_refused_with_a_notice():
    """PROTOCOL.md 6.5: a `msg` whose `ttl` is not an integer, whose `n` is
    below 1, or whose `ts` is not a number is refused with a notice; `e` is
    an opaque string; unlisted fields are ignored."""
    from chatnet import Net, pair

    from msgrlib.client import core as chat

    net = Net()
    alice, bob = pair(net)
    now = net.clock.now + 1.7e9
    good = {"k": "msg", "from": "alice", "to": "bob", "e": "any string", "n": 1, "ts": now,
            "ttl": 30, "text": "fine", "extra": [1]}
    for bad in ({"ttl": 30.0}, {"ttl": "30"}, {"n": 0}, {"n": True}, {"ts": "now"},
                {"e": 8}, {"text": None}):
        alice._seal_and_submit({**good, **bad}, None)
        net.pump()
        assert net.of("bob", chat.Notice) and not net.received("bob"), bad
        net.events["bob"].clear()
    alice._seal_and_submit(good, None)
    net.pump()
    assert net.received("bob") == ["fine"] and not net.of("bob", chat.Notice)


def test_every_test_the_documents_cite_exists():
    """SECURITY.md names the test that attacks each promise; so does ARCHITECTURE.md.
    A renamed or deleted test must not leave a promise citing nothing."""
    import ast
    tests_dir = os.path.join(ROOT, "tests")
    for doc in ("SECURITY.md", "ARCHITECTURE.md", "README.md"):
        text = read(doc)
        for path, name in re.findall(r"((?:unit|integration)/[\w/]+\.py)::(\w+)", text):
            full = os.path.join(tests_dir, path)
            assert os.path.exists(full), f"{doc} cites {path}, which does not exist"
            with open(full, encoding="utf-8") as f:
                defined = {n.name for n in ast.walk(ast.parse(f.read()))
                           if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
            assert name in defined, f"{doc} cites {path}::{name}, which does not exist"
        for path in re.findall(r"tests/((?:unit|integration)/[\w/]+\.py)", text):
            assert os.path.exists(os.path.join(tests_dir, path)), f"{doc} cites tests/{path}"
    # Any test file any document names (docs/ too: they named tests/test_engine.py and
    # tests/test_transfer.py, both moved when the tests came to mirror the package).
    docs = ["SECURITY.md", "ARCHITECTURE.md", "README.md", "PROTOCOL.md", "BENCHMARKS.md"]
    docs += [os.path.join("docs", n) for n in sorted(os.listdir(os.path.join(ROOT, "docs")))
             if n.endswith(".md")]
    for doc in docs:
        for path in re.findall(r"(?<![\w/])tests/[\w/]+\.py", read(doc)):
            assert os.path.exists(os.path.join(ROOT, path)), f"{doc} cites {path}"


def test_every_file_in_the_readme_module_map_exists():
    """"How it is built" named files from before the move into msgrlib/ (cpace.py,
    e2e.py, demo.py at the top level...): a newcomer looking for them found nothing.
    Each row's first cell names files; a bare name after a path is in that path's folder."""
    readme = read("README.md")
    section = readme.split("## How it is built", 1)[1].split("\n## ", 1)[0]
    missing = []
    for row in re.findall(r"^\| (`[^|]*) \|", section, re.M):
        folder = ""
        for name in re.findall(r"`([^`]+)`", row):
            name = name.split(":")[0].strip()
            if name.endswith("/"):
                folder = path = name.rstrip("/")
            elif "/" in name:
                folder, path = os.path.dirname(name), name
            else:
                path = os.path.join(folder, name) if folder else name
            if not os.path.exists(os.path.join(ROOT, path)):
                missing.append(path)
    assert not missing, f"README.md's module map names files that do not exist: {missing}"
