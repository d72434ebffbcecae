"""The NIST round-3 Falcon-1024 KAT, through TrustChain's public signature API.

``data/falcon/falcon1024-KAT.rsp`` (provenance in ``data/falcon/PROVENANCE.md``) holds 100
records of ``msg``, ``pk``, ``sk`` and ``sm``, the NIST API's signed message::

    sm = sig_len (2 bytes, big-endian) || nonce (40) || msg || 0x2A || compressed s2

TrustChain's Falcon-1024 signature is the detached PQClean form ``0x3A || nonce || s2``, so
each record maps to ``sig = b"\\x3a" + sm[2:42] + sm[42 + mlen + 1:]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from trustchain.crypto import encoding
from trustchain.crypto.algorithms import SignatureAlgorithm
from trustchain.crypto.signatures import Signature, SigningKey, VerifyKey
from trustchain.errors import InvalidKey, InvalidSignature, MalformedData

KAT_FILE = Path(__file__).parent / "data" / "falcon" / "falcon1024-KAT.rsp"
FALCON = SignatureAlgorithm.FALCON_1024
RECORDS = 100


@dataclass(frozen=True)
class KatRecord:
    count: int
    msg: bytes
    pk: bytes
    sk: bytes
    sm: bytes
    signature: bytes  # detached, TrustChain / PQClean form
    nist_signature: bytes  # the NIST form from sm: 0x2A || compressed s2 (no nonce)


def _parse(text: str) -> list[KatRecord]:
    records: list[KatRecord] = []
    fields: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        line = line.strip()
        if line.startswith("#"):
            continue
        if not line:
            if fields:
                records.append(_record(fields))
                fields = {}
            continue
        key, _, value = line.partition(" = ")
        fields[key] = value
    return records


def _record(fields: dict[str, str]) -> KatRecord:
    mlen = int(fields["mlen"])
    msg = bytes.fromhex(fields["msg"])
    sm = bytes.fromhex(fields["sm"])
    assert len(msg) == mlen
    assert len(sm) == int(fields["smlen"])
    sig_len = int.from_bytes(sm[:2], "big")
    assert len(sm) == 2 + 40 + mlen + sig_len
    assert sm[42 : 42 + mlen] == msg
    assert sm[42 + mlen] == 0x2A
    return KatRecord(
        count=int(fields["count"]),
        msg=msg,
        pk=bytes.fromhex(fields["pk"]),
        sk=bytes.fromhex(fields["sk"]),
        sm=sm,
        signature=b"\x3a" + sm[2:42] + sm[42 + mlen + 1 :],
        nist_signature=sm[42 + mlen :],
    )


@cache
def kat_records() -> tuple[KatRecord, ...]:
    """Parsed once per test session."""
    return tuple(_parse(KAT_FILE.read_text(encoding="ascii")))


def _record_for(count: int) -> KatRecord:
    record = kat_records()[count]
    assert record.count == count
    return record


def _flip_bit(data: bytes, bit: int) -> bytes:
    """``data`` with bit number ``bit`` (0 = most significant bit of byte 0) inverted."""
    flipped = bytearray(data)
    flipped[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(flipped)


def _body_bit(count: int, length: int) -> int:
    """A bit index past the header byte, spread over the body as ``count`` varies."""
    return 8 + (count * 7919 + 13) % ((length - 1) * 8)


def test_file_holds_100_round3_falcon1024_records() -> None:
    records = kat_records()
    assert [r.count for r in records] == list(range(RECORDS))
    assert all(len(r.pk) == 1793 and r.pk[0] == 0x0A for r in records)
    assert all(len(r.sk) == 2305 and r.sk[0] == 0x5A for r in records)
    first = records[0]
    assert len(first.msg) == 33
    assert len(first.sm) == 1305
    assert len(first.signature) == 1 + 40 + 0x04CE - 1


@pytest.mark.parametrize("count", range(RECORDS))
def test_kat_signature_verifies(count: int) -> None:
    record = _record_for(count)
    key = VerifyKey.from_raw(FALCON, record.pk)
    key.verify(Signature(FALCON, record.signature), record.msg)


@pytest.mark.parametrize("count", range(RECORDS))
def test_flipped_message_bit_is_rejected(count: int) -> None:
    record = _record_for(count)
    key = VerifyKey.from_raw(FALCON, record.pk)
    message = _flip_bit(record.msg, (count * 31 + 5) % (len(record.msg) * 8))
    with pytest.raises(InvalidSignature):
        key.verify(Signature(FALCON, record.signature), message)


@pytest.mark.parametrize("count", range(RECORDS))
def test_flipped_signature_body_bit_is_rejected(count: int) -> None:
    record = _record_for(count)
    key = VerifyKey.from_raw(FALCON, record.pk)
    tampered = _flip_bit(record.signature, _body_bit(count, len(record.signature)))
    assert tampered[0] == 0x3A
    with pytest.raises(InvalidSignature):
        key.verify(Signature(FALCON, tampered), record.msg)


@pytest.mark.parametrize("count", range(RECORDS))
def test_flipped_public_key_body_bit_is_rejected(count: int) -> None:
    record = _record_for(count)
    tampered = _flip_bit(record.pk, _body_bit(count, len(record.pk)))
    key = VerifyKey.from_raw(FALCON, tampered)  # size and header are still right
    with pytest.raises(InvalidSignature):
        key.verify(Signature(FALCON, record.signature), record.msg)


@pytest.mark.parametrize("count", range(RECORDS))
def test_nist_signed_message_header_is_rejected(count: int) -> None:
    record = _record_for(count)
    # The detached layout with the NIST header byte, and the NIST esig exactly as in sm.
    with pytest.raises(MalformedData, match="0x2a"):
        Signature(FALCON, b"\x2a" + record.signature[1:])
    with pytest.raises(MalformedData, match="0x2a"):
        Signature(FALCON, record.nist_signature)
    with pytest.raises(MalformedData):
        Signature(FALCON, record.sm)


@pytest.mark.parametrize("count", range(RECORDS))
def test_kat_secret_key_signs_for_kat_public_key(count: int) -> None:
    record = _record_for(count)
    private = encoding.encode(encoding.Kind.SIGNING_PRIVATE_KEY, FALCON, record.sk + record.pk)
    signing_key = SigningKey.from_bytes(private)
    assert signing_key.public_key() == VerifyKey.from_raw(FALCON, record.pk)
    message = b"TrustChain KAT re-sign " + record.msg
    signature = signing_key.sign(message)
    assert signature.raw[0] == 0x3A
    VerifyKey.from_raw(FALCON, record.pk).verify(signature, message)
    with pytest.raises(InvalidSignature):
        VerifyKey.from_raw(FALCON, record.pk).verify(signature, record.msg)


def test_kat_secret_key_with_another_records_public_key_is_invalid() -> None:
    first, second = kat_records()[0], kat_records()[1]
    private = encoding.encode(encoding.Kind.SIGNING_PRIVATE_KEY, FALCON, first.sk + second.pk)
    with pytest.raises(InvalidKey, match="does not belong"):
        SigningKey.from_bytes(private)


def test_header_bytes_of_kat_key_and_signature_are_checked() -> None:
    record = kat_records()[0]
    with pytest.raises(InvalidKey, match="header"):
        VerifyKey.from_raw(FALCON, b"\x09" + record.pk[1:])
    with pytest.raises(MalformedData, match="header"):
        Signature(FALCON, b"\x39" + record.signature[1:])
    with pytest.raises(InvalidKey, match="1793"):
        VerifyKey.from_raw(FALCON, record.pk + b"\x00")
