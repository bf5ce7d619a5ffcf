"""A tiny DER encoder (X.690), just what a self-signed certificate needs.

Pure functions from values to bytes; :mod:`msgrlib.tls.x509` builds the
certificate with them. Nothing here parses DER.
"""

from __future__ import annotations

from datetime import datetime, timezone

# datetime.UTC is Python 3.11+; msgr also runs on 3.10.
_UTC = timezone.utc  # noqa: UP017

__all__ = [
    "der_bit_string",
    "der_boolean",
    "der_explicit",
    "der_implicit",
    "der_integer",
    "der_length",
    "der_oid",
    "der_octet_string",
    "der_sequence",
    "der_set",
    "der_time",
    "der_tlv",
    "der_utf8_string",
]


def der_length(n: int) -> bytes:
    """Encode a DER length: short form below 128, else the minimal long form."""
    if n < 0:
        raise ValueError("negative DER length")
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der_tlv(tag: int, content: bytes) -> bytes:
    """One DER element: tag byte, length, content."""
    return bytes([tag]) + der_length(len(content)) + content


def der_integer(n: int) -> bytes:
    """INTEGER in minimal two's complement (a 0x00 prefix when the high bit is set)."""
    magnitude = n if n >= 0 else ~n
    return der_tlv(0x02, n.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True))


def der_boolean(value: bool) -> bytes:
    """BOOLEAN; DER requires 0xFF for true."""
    return der_tlv(0x01, b"\xff" if value else b"\x00")


def der_sequence(*items: bytes) -> bytes:
    """SEQUENCE of already-encoded elements, in the given order."""
    return der_tlv(0x30, b"".join(items))


def der_set(*items: bytes) -> bytes:
    """SET OF: DER sorts the encoded elements."""
    return der_tlv(0x31, b"".join(sorted(items)))


def der_oid(dotted: str) -> bytes:
    """OBJECT IDENTIFIER from its dotted form, e.g. ``"1.3.101.112"``."""
    arcs = [int(part) for part in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39):
        raise ValueError(f"invalid OID {dotted!r}")
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return der_tlv(0x06, bytes(body))


def der_utf8_string(text: str) -> bytes:
    return der_tlv(0x0C, text.encode("utf-8"))


def der_octet_string(data: bytes) -> bytes:
    return der_tlv(0x04, data)


def der_bit_string(data: bytes, *, unused_bits: int = 0) -> bytes:
    """BIT STRING; ``unused_bits`` trailing bits of the last byte are padding."""
    if not 0 <= unused_bits <= 7 or (unused_bits and not data):
        raise ValueError("invalid unused bit count")
    return der_tlv(0x03, bytes([unused_bits]) + data)


def der_time(when: datetime) -> bytes:
    """UTCTime for years 1950-2049, else GeneralizedTime (RFC 5280 4.1.2.5), to the second."""
    when = when.astimezone(_UTC)
    if 1950 <= when.year < 2050:
        return der_tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return der_tlv(0x18, f"{when.year:04d}{when.strftime('%m%d%H%M%S')}Z".encode("ascii"))


def der_explicit(number: int, content: bytes) -> bytes:
    """[number] EXPLICIT: a constructed context tag around an encoded element."""
    return der_tlv(0xA0 | number, content)


def der_implicit(number: int, content: bytes) -> bytes:
    """[number] IMPLICIT on a primitive type: a context tag replacing its tag."""
    return der_tlv(0x80 | number, content)
