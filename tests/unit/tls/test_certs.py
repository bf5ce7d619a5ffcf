"""Tests for certs: the DER encoder, generated certificates, and real TLS on loopback."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import ssl
import stat
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import one, tlvs
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import VerifyKey

from msgrlib.tls import contexts, known_hosts, x509
from msgrlib.tls import der as derenc
from msgrlib.tls.errors import (
    CertificateFileError,
    KnownHostsError,
    TlsError,
    UnknownCertificate,
)

UTC = timezone.utc  # noqa: UP017 (datetime.UTC is 3.11+)
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl binary")
TIMEOUT = 5.0


def fixed_rng(label: bytes) -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom."""
    counter = 0

    def rng(n: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.sha512(label + counter.to_bytes(4, "big")).digest()[:n]

    return rng


def pem_body(pem: bytes) -> bytes:
    lines = pem.decode().strip().splitlines()
    return base64.b64decode("".join(lines[1:-1]))


# --------------------------------------------------------------------------
# DER encoder


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8180"),
        (255, "81ff"),
        (256, "820100"),
        (65535, "82ffff"),
        (65536, "83010000"),
    ],
)
def test_der_length_boundaries(n: int, encoded: str) -> None:
    assert derenc.der_length(n).hex() == encoded
    tag, content = one(derenc.der_tlv(0x04, b"x" * n))
    assert (tag, len(content)) == (0x04, n)


@pytest.mark.parametrize(
    ("n", "content"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "0080"),  # high bit set: 0x00 keeps it positive
        (255, "00ff"),
        (256, "0100"),
        (0x8000, "008000"),
        (-1, "ff"),
        (-128, "80"),
        (-129, "ff7f"),
    ],
)
def test_der_integer(n: int, content: str) -> None:
    assert derenc.der_integer(n) == bytes([0x02, len(content) // 2]) + bytes.fromhex(content)


@given(st.integers(min_value=-(2**200), max_value=2**200))
def test_der_integer_round_trip_and_minimal(n: int) -> None:
    tag, content = one(derenc.der_integer(n))
    assert tag == 0x02
    assert int.from_bytes(content, "big", signed=True) == n
    if len(content) > 1:  # X.690 8.3.2: first 9 bits not all equal
        assert not (content[0] == 0x00 and content[1] < 0x80)
        assert not (content[0] == 0xFF and content[1] >= 0x80)


@given(st.binary(max_size=70000))
def test_der_tlv_round_trip(content: bytes) -> None:
    assert one(derenc.der_tlv(0x30, content)) == (0x30, content)


def test_der_oid_and_others() -> None:
    assert derenc.der_oid("1.3.101.112").hex() == "06032b6570"
    assert derenc.der_oid("1.2.840.113549.1.1.11").hex() == "06092a864886f70d01010b"
    assert derenc.der_oid("2.5.29.19").hex() == "0603551d13"
    with pytest.raises(ValueError):
        derenc.der_oid("3.1")
    assert derenc.der_boolean(True).hex() == "0101ff"
    assert derenc.der_boolean(False).hex() == "010100"
    assert derenc.der_bit_string(b"\x84", unused_bits=2).hex() == "03020284"
    assert derenc.der_set(b"\x02\x01\x02", b"\x02\x01\x01").hex() == "3106020101020102"
    assert derenc.der_utf8_string("é").hex() == "0c02c3a9"
    assert derenc.der_explicit(0, derenc.der_integer(2)).hex() == "a003020102"
    assert derenc.der_implicit(2, b"a").hex() == "820161"


def test_der_time_switches_to_generalized_time_in_2050() -> None:
    t = datetime(2049, 12, 31, 23, 59, 59, 999, tzinfo=UTC)
    assert derenc.der_time(t) == b"\x17\x0d491231235959Z"
    assert derenc.der_time(t + timedelta(seconds=1)) == b"\x18\x0f20500101000000Z"
    assert derenc.der_time(datetime(1949, 1, 2, tzinfo=UTC)) == b"\x18\x0f19490102000000Z"
    plus_two = timezone(timedelta(hours=2))
    assert derenc.der_time(datetime(2030, 1, 1, 2, 0, tzinfo=plus_two)) == (
        b"\x17\x0d300101000000Z"
    )


# --------------------------------------------------------------------------
# Generated certificate and key


def test_private_key_matches_rfc8410_example() -> None:
    # RFC 8410 section 10.3: the same seed must give byte-for-byte the same PEM.
    seed = bytes.fromhex("d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842")
    _, key_pem = x509.generate_self_signed(rng=lambda n: seed if n == 32 else b"\x01" * n)
    assert key_pem == (
        b"-----BEGIN PRIVATE KEY-----\n"
        b"MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n"
        b"-----END PRIVATE KEY-----\n"
    )


def test_generation_is_deterministic_given_rng_and_now() -> None:
    now = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    a = x509.generate_self_signed(rng=fixed_rng(b"a"), now=now)
    assert a == x509.generate_self_signed(rng=fixed_rng(b"a"), now=now)
    assert a != x509.generate_self_signed(rng=fixed_rng(b"b"), now=now)
    assert a[0] != x509.generate_self_signed(rng=fixed_rng(b"a"), now=now + timedelta(1))[0]


def test_certificate_structure() -> None:
    now = datetime(2030, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    cert_pem, key_pem = x509.generate_self_signed(
        common_name="relay.example",
        hostnames=["Relay.Example.", "localhost"],
        ip_addresses=["192.0.2.7", "2001:db8::1"],
        days=30,
        rng=fixed_rng(b"s"),
        now=now,
    )
    tag, cert = one(pem_body(cert_pem))
    assert tag == 0x30
    (t1, tbs_body), (t2, sig_alg), (t3, sig) = tlvs(cert)
    assert (t1, t2, t3) == (0x30, 0x30, 0x03)
    ed25519 = derenc.der_oid("1.3.101.112")
    assert sig_alg == ed25519  # RFC 8410: no parameters at all
    version, serial, alg, issuer, validity, subject, spki, exts = tlvs(tbs_body)
    assert version == (0xA0, derenc.der_integer(2))
    assert serial[0] == 0x02 and 0 < int.from_bytes(serial[1], "big", signed=True) < 2**159
    assert alg == (0x30, ed25519)
    assert issuer == subject
    assert b"relay.example" in subject[1]
    not_before, not_after = tlvs(validity[1])
    assert not_before == (0x17, b"300601110000Z")  # one hour of clock skew, no fraction
    assert not_after == (0x17, b"300701120000Z")
    spki_alg, (bit_tag, bits) = tlvs(spki[1])
    assert spki_alg == (0x30, ed25519) and bit_tag == 0x03 and bits[0] == 0
    public_key = bits[1:]

    # The signature covers the TBS bytes and verifies with the embedded key.
    tbs = derenc.der_tlv(0x30, tbs_body)
    assert cert.startswith(tbs)
    assert sig[0] == 0 and len(sig) == 65
    VerifyKey(public_key).verify(tbs, sig[1:])

    # And the key file holds the matching seed.
    key = pem_body(key_pem)
    assert key[:16].hex() == "302e020100300506032b657004220420"
    from nacl.signing import SigningKey

    assert bytes(SigningKey(key[16:]).verify_key) == public_key

    assert exts[0] == 0xA3
    found = {}
    for _, ext in tlvs(one(exts[1])[1]):
        fields = tlvs(ext)
        oid = fields[0][1]
        critical = len(fields) == 3 and fields[1] == (0x01, b"\xff")
        found[oid] = (critical, fields[-1][1])
    key_id = hashlib.sha256(public_key).digest()[:20]
    oid = {name: derenc.der_oid(dotted)[2:] for name, dotted in [
        ("bc", "2.5.29.19"), ("ku", "2.5.29.15"), ("san", "2.5.29.17"),
        ("ski", "2.5.29.14"), ("aki", "2.5.29.35"),
    ]}  # fmt: skip
    assert found[oid["bc"]] == (True, derenc.der_sequence(derenc.der_boolean(True)))
    assert found[oid["ku"]] == (True, bytes.fromhex("03020284"))
    assert found[oid["ski"]] == (False, derenc.der_octet_string(key_id))
    assert found[oid["aki"]] == (False, derenc.der_sequence(b"\x80\x14" + key_id))
    critical, san = found[oid["san"]]
    assert not critical
    assert tlvs(one(san)[1]) == [
        (0x82, b"relay.example"),
        (0x82, b"localhost"),
        (0x87, bytes([192, 0, 2, 7])),
        (0x87, bytes.fromhex("20010db8000000000000000000000001")),
    ]
    assert len(found) == 5


def test_single_names_are_not_split_into_letters() -> None:
    one_name, _ = x509.generate_self_signed(hostnames="relay.example", ip_addresses="::1")
    assert b"relay.example" in pem_body(one_name)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"common_name": ""},
        {"common_name": "x" * 65},
        {"days": 0},
        {"hostnames": ["bad name"]},
        {"hostnames": ["bücher.example"]},
        {"ip_addresses": ["300.1.1.1"]},
        {"hostnames": [], "ip_addresses": []},
        {"now": datetime(2030, 1, 1)},  # naive on purpose
    ],
)
def test_generation_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(TlsError):
        x509.generate_self_signed(**kwargs)  # type: ignore[arg-type]


def test_fingerprint_forms() -> None:
    cert_pem, _ = x509.generate_self_signed()
    der = pem_body(cert_pem)
    fp = x509.fingerprint(der)
    assert fp == x509.fingerprint(cert_pem) == x509.fingerprint(b"junk\n" + cert_pem)
    assert fp == "SHA256:" + ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert x509.normalize_fingerprint(fp) == fp
    bare = fp.removeprefix("SHA256:").replace(":", "")
    for text in [bare, bare.lower(), "sha256:" + bare, f"  {fp.lower()} ",
                 "sha256 Fingerprint=" + fp[7:], fp[7:].replace(":", " ")]:  # fmt: skip
        assert x509.normalize_fingerprint(text) == fp
    for bad in ["", bare[:-2], bare + "00", bare[:-1] + "G", "SHA1:" + bare, "sha256:"]:
        with pytest.raises(TlsError):
            x509.normalize_fingerprint(bad)
    # A peer could embed someone else's PEM certificate in its own DER one:
    # DER is hashed as it is, never searched for PEM.
    tricky = derenc.der_sequence(derenc.der_utf8_string(cert_pem.decode()))
    assert x509.fingerprint(tricky) != fp
    with pytest.raises(TlsError, match="DER"):
        contexts.verify_peer(cert_pem, address="relay:1", pin=fp)
    assert contexts.verify_peer(der, address="relay:1", pin=fp) == (fp, "pinned")
    for junk in [b"", b"hello", b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"]:
        with pytest.raises(TlsError):
            x509.fingerprint(junk)


def test_openssl_version_supports_ed25519() -> None:
    assert ssl.OPENSSL_VERSION_INFO >= (1, 1, 1), ssl.OPENSSL_VERSION


# --------------------------------------------------------------------------
# Files: ensure_certificate and server_context


@pytest.mark.parametrize("umask", [0, 0o022, 0o077])
def test_key_is_created_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int
) -> None:
    created: dict[str, tuple[int, int, int]] = {}
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, *args: object, **kw: object) -> int:
        fd = real_open(path, flags, mode, *args, **kw)  # type: ignore[arg-type]
        if flags & os.O_CREAT:
            created[os.fspath(path)] = (flags, mode, stat.S_IMODE(os.fstat(fd).st_mode))
        return fd

    monkeypatch.setattr(os, "open", spy)
    cert_path, key_path = tmp_path / "new" / "cert.pem", tmp_path / "new" / "key.pem"
    old = os.umask(umask)
    try:
        assert contexts.ensure_certificate(cert_path, key_path)[0]
    finally:
        os.umask(old)
    flags, mode, mode_at_creation = created[str(key_path)]
    assert flags & os.O_EXCL and mode == 0o600
    assert mode_at_creation & 0o077 == 0  # never readable by others, even briefly
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cert_path).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(key_path.parent).st_mode) == 0o700 & ~umask


def test_ensure_certificate_is_idempotent(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    created, fp = contexts.ensure_certificate(cert_path, key_path)
    assert created and fp == x509.fingerprint(cert_path.read_bytes())
    before = cert_path.read_bytes(), key_path.read_bytes()
    assert contexts.ensure_certificate(str(cert_path), str(key_path)) == (False, fp)
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before


@pytest.mark.parametrize("missing", ["cert", "key"])
def test_only_one_file_present(tmp_path: Path, missing: str) -> None:
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    contexts.ensure_certificate(cert_path, key_path)
    gone = cert_path if missing == "cert" else key_path
    gone.unlink()
    with pytest.raises(CertificateFileError) as info:
        contexts.ensure_certificate(cert_path, key_path)
    assert str(gone) in str(info.value) and info.value.path == str(gone)
    assert not gone.exists()  # nothing was "repaired" behind the user's back


def test_bad_files_are_reported_with_their_path(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    contexts.ensure_certificate(cert_path, key_path)
    other_cert, other_key = x509.generate_self_signed()

    with pytest.raises(CertificateFileError, match="does not exist"):
        contexts.server_context(tmp_path / "nope.pem", key_path)
    with pytest.raises(CertificateFileError, match="is a directory"):
        contexts.server_context(tmp_path, key_path)

    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"not a certificate\n")
    with pytest.raises(CertificateFileError, match="no PEM certificate") as info:
        contexts.ensure_certificate(bad, key_path)
    assert info.value.path == str(bad)
    with pytest.raises(CertificateFileError, match="no PEM private key"):
        contexts.server_context(cert_path, bad)

    wrong_key = tmp_path / "other-key.pem"
    wrong_key.write_bytes(other_key)
    with pytest.raises(CertificateFileError, match="does not belong") as info:
        contexts.server_context(cert_path, wrong_key)
    assert str(wrong_key) in str(info.value)

    garbled = tmp_path / "garbled.pem"
    body = other_cert.splitlines()
    garbled.write_bytes(b"\n".join([body[0], b"AAAA" + body[1][4:], *body[2:]]))
    with pytest.raises(CertificateFileError, match=str(garbled)):
        contexts.server_context(garbled, key_path)

    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    with pytest.raises(CertificateFileError, match="passphrase"):
        contexts.server_context(cert_path, encrypted)


def test_client_context_cafile_errors(tmp_path: Path) -> None:
    with pytest.raises(CertificateFileError, match="does not exist"):
        contexts.client_context(cafile=str(tmp_path / "nope.pem"))
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    with pytest.raises(CertificateFileError, match=str(empty)):
        contexts.client_context(cafile=empty)


def test_contexts_require_tls12() -> None:
    assert contexts.client_context().minimum_version == ssl.TLSVersion.TLSv1_2
    assert contexts.client_context().verify_mode == ssl.CERT_NONE


# --------------------------------------------------------------------------
# Real TLS on loopback


class Pair:
    """A certificate and key written to disk, with the certificate's fingerprint."""

    def __init__(self, directory: Path, name: str) -> None:
        self.cert = directory / f"{name}-cert.pem"
        self.key = directory / f"{name}-key.pem"
        _, self.fp = contexts.ensure_certificate(self.cert, self.key)


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path, "relay")


def test_verify_peer_without_any_trust_source(pair: Pair) -> None:
    with pytest.raises(UnknownCertificate, match="--cafile or --pin"):
        contexts.verify_peer(pem_body(pair.cert.read_bytes()), address="localhost:1")
    with pytest.raises(TlsError, match="invalid fingerprint"):
        contexts.verify_peer(pem_body(pair.cert.read_bytes()), address="localhost:1", pin="abc")


# --------------------------------------------------------------------------
# KnownHosts


FP_A = "SHA256:" + ":".join(["AA"] * 32)
FP_B = "SHA256:" + ":".join(["BB"] * 32)


def test_known_hosts_remember_lookup_forget(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "msgr" / "known_hosts"
    known = known_hosts.KnownHosts(path)
    assert known.lookup("relay:7000") is None
    assert not known.forget("relay:7000")
    known.remember("Relay:7000", FP_A.lower())
    known.remember("[::1]:7000", FP_B)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert known.lookup("relay:7000") == FP_A
    assert known_hosts.KnownHosts(str(path)).lookup("[::1]:7000") == FP_B

    with path.open("a") as f:
        f.write("# my comment\n\n")
    known.remember("relay:7000", FP_B)  # replaced in place
    text = path.read_text()
    assert "# my comment" in text and text.count("relay:7000") == 1
    assert known.lookup("relay:7000") == FP_B
    assert known.forget("relay:7000") and not known.forget("relay:7000")
    assert known.lookup("relay:7000") is None and known.lookup("[::1]:7000") == FP_B
    assert "# my comment" in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["known_hosts"]  # no temp left


@pytest.mark.parametrize(
    "bad_line",
    [
        "relay:7000",
        "relay:7000 SHA256:AA extra",
        "relay:7000 SHA256:ZZ",
        f"relay:7000 {FP_B}",  # the same address again with another fingerprint
    ],
)
def test_known_hosts_corrupt_line_is_reported(tmp_path: Path, bad_line: str) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"# comment\nrelay:7000 {FP_A}\n\n{bad_line}\nother:1 {FP_B}\n")
    known = known_hosts.KnownHosts(path)
    for call in (
        lambda: known.lookup("other:1"),
        lambda: known.remember("new:1", FP_A),
        lambda: known.forget("relay:7000"),
    ):
        with pytest.raises(KnownHostsError) as info:
            call()
        assert info.value.line == 4 and "line 4" in str(info.value)
        assert str(path) in str(info.value)
    assert path.read_text().count("\n") == 5  # untouched


def test_known_hosts_undecodable_and_bad_addresses(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_bytes(b"ok:1 " + FP_A.encode() + b"\n\xff\xfe\n")
    with pytest.raises(KnownHostsError, match="line 2"):
        known_hosts.KnownHosts(path).lookup("ok:1")
    for address in ["", "a b:1", "#x:1", "bad\x1b[31m:1"]:
        with pytest.raises(TlsError):
            known_hosts.KnownHosts(tmp_path / "k2").remember(address, FP_A)


def test_known_hosts_never_replaces_what_is_not_a_regular_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: --known-hosts /dev/null (run as root) replaced the
    null device with a 0600 file. A pipe stands in for a device here."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(KnownHostsError, match="not a regular file"):
        known_hosts.KnownHosts(pipe).remember("relay:1", FP_A)
    with pytest.raises(KnownHostsError, match="not a regular file"):
        known_hosts.KnownHosts(pipe).lookup("relay:1")  # and never opened (it would block)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    # The null device means "remember nothing" (the pipe plays it here).
    monkeypatch.setattr(os, "devnull", str(pipe))
    known_hosts.KnownHosts(pipe).remember("relay:1", FP_A)
    assert known_hosts.KnownHosts(pipe).lookup("relay:1") is None
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)


def test_relay_address_and_default_path() -> None:
    assert known_hosts.relay_address("LocalHost", 7000) == "localhost:7000"
    assert known_hosts.relay_address("::1", 7000) == "[::1]:7000"
    assert known_hosts.relay_address("[::1]", 7000) == "[::1]:7000"
    path = known_hosts.default_known_hosts_path
    assert path({"XDG_CONFIG_HOME": "/x", "HOME": "/h"}) == Path("/x/msgr/known_hosts")
    assert path({"HOME": "/h"}) == Path("/h/.config/msgr/known_hosts")
    assert path({"XDG_CONFIG_HOME": "rel", "HOME": "/h"}) == Path("/h/.config/msgr/known_hosts")

