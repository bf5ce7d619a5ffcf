"""Print PROTOCOL.md's worked examples, computed by the production code.

Every value comes from msgr's own modules with pinned randomness and time, so
the examples can be checked: ``tests/test_docs.py`` runs this and requires
each printed block to appear verbatim in PROTOCOL.md.

Usage: ``python -m tools.protocol_examples``
"""

from __future__ import annotations

import base64
import hashlib
import json

import nacl.bindings
from nacl.signing import SigningKey

import framing
import kdf
from msgrlib import protocol
from msgrlib.client import ratchet_mode
from msgrlib.client.outbox import Outgoing
from msgrlib.crypto import cpace, handshake, ratchet
from msgrlib.crypto import staticbox as e2e


def pinned_rng(label: str):
    """Deterministic "randomness" for examples: SHA-512 in counter mode."""
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < n:
            counter += 1
            out += hashlib.sha512(f"{label}:{counter}".encode()).digest()
        return out[:n]

    return rng


class Draws:
    """An rng that remembers what it handed out (to print the private values)."""

    def __init__(self, rng) -> None:
        self.rng = rng
        self.taken: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        out = self.rng(n)
        self.taken.append(out)
        return out


def hexdump(data: bytes) -> str:
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i:i + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{i:04x}  {hexes:<47}  {text}")
    return "\n".join(lines)


def examples() -> dict[str, str]:
    out: dict[str, str] = {}
    frame = {"type": "send", "ref": 1, "to": "bob", "ttl": 30, "body": "s1.AAAA"}
    out["frame"] = hexdump(framing.encode_frame(frame))

    # Name ownership (3.2): a pinned key, nonce, relay id and certificate.
    owner = SigningKey(pinned_rng("identity")(32))
    nonce = pinned_rng("nonce")(32)
    relay_id = pinned_rng("relay")(8).hex()
    cert_fp = "SHA256:" + ":".join(f"{x:02X}" for x in pinned_rng("certificate")(32))
    lines = [f"seed (private key) = {bytes(owner).hex()}",
             f"public key (hello) = {base64.b64encode(bytes(owner.verify_key)).decode()}",
             f"nonce (challenge)  = {base64.b64encode(nonce).decode()}",
             f"relay (challenge)  = {relay_id}"]
    for name, binding in (("without TLS", protocol.id_binding(relay_id)),
                          ("with TLS", protocol.tls_binding(cert_fp))):
        signed = protocol.auth_message(nonce, binding, "alice")
        if name == "with TLS":
            lines.append(f"certificate        = {cert_fp}")
        lines += [f"{name}: binding = {binding}",
                  f"  signed bytes = {signed.hex()}",
                  f"  sig (auth)   = {base64.b64encode(owner.sign(signed).signature).decode()}"]
    out["auth"] = "\n".join(lines)

    passcode, a, b = "correct horse battery staple", "alice", "bob"
    salt = kdf.pair_salt(a, b)
    key = kdf.derive_passcode_key(passcode, a, b)
    send, recv = kdf.direction_keys(key, a, b)
    out["kdf"] = "\n".join([
        f"passcode      = {passcode!r}",
        f"users         = {a!r}, {b!r}",
        f"pair_salt     = {salt.hex()}",
        f"passcode_key  = {key.hex()}",
        f"alice->bob    = {send.hex()}",
        f"bob->alice    = {recv.hex()}",
    ])

    box = e2e.StaticBox(key, a, b, rng=pinned_rng("static"), wallclock=lambda: 1767225600.0)
    body = box.seal("hello bob", 30)
    raw = base64.b64decode(body[3:])
    inner = nacl.bindings.crypto_secretbox_open(raw[24:], raw[:24], send)
    out["static"] = "\n".join([
        f"inner (JSON) = {inner.decode()}",
        f"nonce        = {raw[:24].hex()}",
        f"body         = {body}",
    ])

    alice_draws, bob_draws = Draws(pinned_rng("alice")), Draws(pinned_rng("bob"))
    initiator = handshake.Initiator(prs=key, me=a, peer=b, rng=alice_draws)
    responder = handshake.Responder(prs=key, me=b, peer=a, rng=bob_draws)
    m1 = initiator.start()
    m2 = responder.on_init(m1)
    m3 = initiator.on_resp(m2)
    m4, keys_b = responder.on_share(m3)
    keys_a = initiator.on_confirm(m4)
    assert keys_a.isk == keys_b.isk
    lines = [f"M{i} = {json.dumps(m, separators=(',', ':'))}"
             for i, m in enumerate((m1, m2, m3, m4), start=1)]
    lines += [f"sid           = {keys_a.sid.hex()}",
              f"ISK           = {keys_a.isk.hex()}",
              f"root_key      = {keys_a.root_key.hex()}",
              f"safety number = {keys_a.safety_number}"]
    out["handshake"] = "\n".join(lines)

    # The private values behind it, so that K, ISK, the tags and the first
    # ratchet message can be recomputed offline from section 6's formulas.
    # A draws na then ya; B draws nb, yb, then its first ratchet key.
    ya, (yb, b_ratchet_priv) = alice_draws.taken[1], bob_draws.taken[1:3]
    ya_share = base64.b64decode(m3["Y"])
    yb_share = base64.b64decode(m2["Y"])
    ada, adb = base64.b64decode(m3["ad"]), base64.b64decode(m2["ad"])
    ci = handshake.channel_id(a, b)
    gen_hash = cpace.generator_hash(key, ci, keys_a.sid)
    g8 = cpace.calculate_generator(key, ci, keys_a.sid)
    k = cpace.scalar_mult_vfy(ya, yb_share)
    assert k == cpace.scalar_mult_vfy(yb, ya_share)
    mac_key = cpace.confirmation_key(keys_a.sid, keys_a.isk)
    out["scalars"] = "\n".join([
        f"ya (A's scalar)   = {ya.hex()}",
        f"yb (B's scalar)   = {yb.hex()}",
        f"CI                = {ci.hex()}",
        f"generator hash    = {gen_hash.hex()}",
        f"u(8*g)            = {nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(g8).hex()}",
        f"Ya = X25519(ya,g) = {ya_share.hex()}",
        f"Yb = X25519(yb,g) = {yb_share.hex()}",
        f"ADa               = {ada.hex()}",
        f"ADb               = {adb.hex()}",
        f"K                 = {k.hex()}",
        f"mac_key           = {mac_key.hex()}",
        f"ad (ratchet)      = {keys_a.ad.hex()}",
    ])

    alice_ratchet = Draws(pinned_rng("alice-ratchet"))
    alice = ratchet.Ratchet.initiator(keys_a.root_key, keys_a.peer_ratchet_pub, keys_a.ad,
                                      rng=alice_ratchet)
    bob = ratchet.Ratchet.responder(keys_b.root_key, keys_b.own_ratchet_priv, keys_b.ad,
                                    rng=pinned_rng("bob-ratchet"))
    hi = json.dumps({"k": "hi"}, separators=(",", ":")).encode()
    first = alice.encrypt(hi)
    assert bob.decrypt(first) == hi
    a_ratchet_priv = alice_ratchet.taken[0]
    dh = nacl.bindings.crypto_scalarmult(a_ratchet_priv, keys_a.peer_ratchet_pub)
    rk, cks = ratchet.kdf_rk(keys_a.root_key, dh)
    _, mk = ratchet.kdf_ck(cks)
    header = first[:42]
    info = b"msgr/v1/ratchet-msg" + len(keys_a.ad).to_bytes(4, "big") + keys_a.ad
    msg_key, msg_nonce = ratchet.message_key_nonce(mk, info, header)
    assert nacl.bindings.crypto_secretbox(hi, msg_nonce, msg_key) == first[42:]
    out["ratchet"] = "\n".join([
        f"B's ratchet key (private; public in ADb) = {b_ratchet_priv.hex()}",
        f"A's first ratchet key (private)          = {a_ratchet_priv.hex()}",
        f"A's first ratchet key (public, header)   = "
        f"{nacl.bindings.crypto_scalarmult_base(a_ratchet_priv).hex()}",
        f"DH = X25519(A's, B's)                    = {dh.hex()}",
        f"KDF_RK(root_key, DH): new RK             = {rk.hex()}",
        f"                      sending chain CKs  = {cks.hex()}",
        f"KDF_CK(CKs): mk                          = {mk.hex()}",
        f"secretbox key                            = {msg_key.hex()}",
        f"secretbox nonce                          = {msg_nonce.hex()}",
        f"plaintext = {hi.decode()}",
        f"message   = {first.hex()}",
        f"body      = r1.{keys_a.sid.hex()}.{base64.b64encode(first).decode()}",
    ])

    # What the chat layer puts around the handshake and inside the ratchet.
    epoch = base64.b64encode(pinned_rng("alice-epoch")(8)).decode()
    typed = Outgoing(1, "hello bob", 30, 1767225600.0, 0.0)
    inner = ratchet_mode.msg_inner(a, b, epoch, typed)
    out["chat"] = "\n".join([
        f"req      = {_compact(ratchet_mode.req_message(pinned_rng('bob-req')(16)))}",
        f"abort    = {_compact(ratchet_mode.abort_message(m3['na'], m3['nb']))}",
        f"msg      = {_compact(inner)}",
        f"deadline = {inner['ts'] + inner['ttl']}",
        f"rcpt     = {_compact({'k': 'rcpt', 'e': epoch, 'n': [1]})}",
    ])
    return out


def _compact(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def main() -> None:
    for name, text in examples().items():
        print(f"== {name} ==\n{text}\n")


if __name__ == "__main__":
    main()
