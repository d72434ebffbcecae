"""The sans-IO STUN codec: RFC 5769 / RFC 8489 vectors, strict decoding, integrity, values."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stoq.errors import StoqError
from stoq.nat.stun import (
    HEADER_SIZE,
    MAGIC_COOKIE,
    TRANSACTION_ID_SIZE,
    Attribute,
    AttributeType,
    IntegrityError,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    StunDecodeError,
    StunError,
    binding_request,
    decode,
    decode_address,
    decode_change_request,
    decode_error_code,
    decode_password_algorithm,
    decode_password_algorithms,
    decode_unknown_attributes,
    decode_xor_address,
    encode,
    encode_address,
    encode_change_request,
    encode_error_code,
    encode_password_algorithm,
    encode_password_algorithms,
    encode_unknown_attributes,
    encode_xor_address,
    error_response,
    is_stun,
    long_term_key,
    message_type,
    new_transaction_id,
    opaque_string,
    saslprep,
    short_term_key,
    split_message_type,
    success_response,
    user_hash,
    verify_fingerprint,
    verify_integrity,
    verify_integrity_sha256,
)

VECTORS_FILE = Path(__file__).parent / "data" / "stun" / "stun_test_vectors.json"
ALL_VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text("utf-8"))["vectors"]
VECTORS = {v["name"]: v for v in ALL_VECTORS}
VALID = [v for v in ALL_VECTORS if v.get("expected_valid", True)]
PRINTED_8489 = VECTORS["rfc8489-B.1-as-published-NOT-SELF-CONSISTENT"]
CORRECTED_8489 = VECTORS["rfc8489-B.1-long-term-sha256-userhash-errata-corrected"]

MI = AttributeType.MESSAGE_INTEGRITY
MI256 = AttributeType.MESSAGE_INTEGRITY_SHA256
FP = AttributeType.FINGERPRINT
TRAILER = (MI, MI256, FP)
TID = bytes(range(1, 13))
STUN_ERRORS = (StunDecodeError, IntegrityError)


def wire(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["hex"])


def key(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["hmac_key_hex"])


def header(length: int, *, type_field: int = 0x0001, cookie: int = MAGIC_COOKIE) -> bytes:
    return struct.pack(">HHI12s", type_field, length, cookie, TID)


def tlv(attribute_type: int, value: bytes, padding: bytes | None = None) -> bytes:
    if padding is None:
        padding = bytes(-len(value) % 4)
    return struct.pack(">HH", attribute_type, len(value)) + value + padding


def message(*attributes: bytes, type_field: int = 0x0001) -> bytes:
    body = b"".join(attributes)
    return header(len(body), type_field=type_field) + body


def decode_reason(data: bytes) -> str:
    with pytest.raises(StunDecodeError) as caught:
        decode(data)
    return caught.value.reason


def by_name(vectors: list[dict[str, Any]]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("vector", vectors, ids=[v["name"] for v in vectors])


# --- the vectors ---------------------------------------------------------------------------------


def test_the_vector_file_holds_five_valid_vectors_and_the_printed_rfc8489_one() -> None:
    assert len(VALID) == 5
    assert PRINTED_8489.get("expected_valid") is False
    assert len(ALL_VECTORS) == 6


@by_name(VALID)
def test_every_vector_decodes_and_reencodes_byte_exact(vector: dict[str, Any]) -> None:
    data = wire(vector)
    decoded = decode(data)
    method, message_class = split_message_type(int(vector["message_type"].split()[0], 16))
    assert decoded.method == method == Method.BINDING
    assert decoded.message_class == message_class
    assert decoded.transaction_id.hex() == vector["transaction_id"]
    assert encode(decoded) == data
    assert decode(encode(decoded)) == decoded


@by_name(VALID)
def test_every_vector_reencodes_byte_exact_with_its_own_keys(vector: dict[str, Any]) -> None:
    data = wire(vector)
    decoded = decode(data)
    keys: dict[str, Any] = {"fingerprint": vector["fingerprint_hex"] is not None}
    if "message_integrity_hex" in vector:
        keys["integrity_key"] = key(vector)
    if "message_integrity_sha256_hex" in vector:
        keys["integrity_sha256_key"] = key(vector)
    assert encode(decoded, **keys) == data
    # From scratch: the message without its trailer, with the integrity computed here.
    bare = Message(
        decoded.method,
        decoded.message_class,
        decoded.transaction_id,
        tuple(a for a in decoded.attributes if a.type not in TRAILER),
    )
    assert encode(bare, **keys) == data


@by_name(VALID)
def test_every_vector_verifies_with_the_keys_the_file_gives(vector: dict[str, Any]) -> None:
    data = wire(vector)
    decoded = decode(data)
    if "message_integrity_hex" in vector:
        verify_integrity(data, key(vector))
        assert decoded.get(MI) == bytes.fromhex(vector["message_integrity_hex"])
        with pytest.raises(IntegrityError, match=r"^MESSAGE-INTEGRITY does not match$"):
            verify_integrity(data, key(vector) + b"x")
    if "message_integrity_sha256_hex" in vector:
        verify_integrity_sha256(data, key(vector))
        assert decoded.get(MI256) == bytes.fromhex(vector["message_integrity_sha256_hex"])
        with pytest.raises(IntegrityError, match=r"^MESSAGE-INTEGRITY-SHA256 does not match$"):
            verify_integrity_sha256(data, key(vector)[:-1])
    if vector["fingerprint_hex"] is not None:
        verify_fingerprint(data)
        assert decoded.get(FP) == bytes.fromhex(vector["fingerprint_hex"])
    else:
        with pytest.raises(IntegrityError, match=r"^the message has no FINGERPRINT$"):
            verify_fingerprint(data)


def test_rfc5769_sample_request_attributes_and_space_padding() -> None:
    vector = VECTORS["rfc5769-2.1-sample-request"]
    decoded = decode(wire(vector))
    assert [a.type for a in decoded.attributes] == [
        AttributeType.SOFTWARE,
        AttributeType.PRIORITY,
        AttributeType.ICE_CONTROLLED,
        AttributeType.USERNAME,
        MI,
        FP,
    ]
    assert decoded.software() == vector["software"]
    assert decoded.username() == vector["username"]
    assert decoded.get(AttributeType.PRIORITY) == bytes.fromhex("6e0001ff")
    assert decoded.get(AttributeType.ICE_CONTROLLED) == bytes.fromhex("932ff9b151263b36")
    username = decoded.attributes[3]
    assert username.padding == b"   "  # RFC 5769 pads USERNAME with spaces
    assert username == Attribute(AttributeType.USERNAME, b"evtj:h6vY")  # padding is not compared
    # Built afresh, the same message gets zero padding: the bytes differ exactly in those three
    # padding bytes and in the MESSAGE-INTEGRITY and FINGERPRINT values that cover them.
    data = wire(vector)
    rebuilt = Message(
        decoded.method,
        decoded.message_class,
        decoded.transaction_id,
        tuple(Attribute(a.type, a.value) for a in decoded.attributes if a.type not in TRAILER),
    )
    other = encode(rebuilt, integrity_key=key(vector), fingerprint=True)
    padding_at = data.index(b"evtj:h6vY") + 9
    assert other[padding_at : padding_at + 3] == b"\x00\x00\x00"
    changed = {i for i in range(len(data)) if data[i] != other[i]}
    allowed = set(range(padding_at, padding_at + 3))
    allowed |= set(range(len(data) - 28, len(data) - 8)) | set(range(len(data) - 4, len(data)))
    assert set(range(padding_at, padding_at + 3)) <= changed <= allowed
    assert decode(other).attributes[:4] == decoded.attributes[:4]
    verify_integrity(other, key(vector))
    verify_fingerprint(other)


@pytest.mark.parametrize(
    "name", ["rfc5769-2.2-sample-ipv4-response", "rfc5769-2.3-sample-ipv6-response"]
)
def test_rfc5769_responses_carry_the_mapped_address(name: str) -> None:
    vector = VECTORS[name]
    decoded = decode(wire(vector))
    expected = vector["xor_mapped_address"]
    assert decoded.xor_mapped_address() == (expected["address"], expected["port"])
    assert decoded.software() == "test vector"
    assert decoded.attributes[0].padding == b" "
    value = decoded.get(AttributeType.XOR_MAPPED_ADDRESS)
    assert value == encode_xor_address(
        expected["address"], expected["port"], decoded.transaction_id
    )


@pytest.mark.parametrize(
    "name",
    [
        "rfc5769-2.1-sample-request",
        "rfc5769-2.2-sample-ipv4-response",
        "rfc5769-2.3-sample-ipv6-response",
    ],
)
def test_rfc5769_short_term_key_is_the_opaque_string_password(name: str) -> None:
    vector = VECTORS[name]
    assert short_term_key(vector["password"]) == key(vector)


def test_rfc5769_long_term_key_needs_saslprep() -> None:
    vector = VECTORS["rfc5769-2.4-sample-request-long-term-auth"]
    password = "The\u00adM\u00aatr\u2168"
    assert vector["password_before_saslprep"] == password
    assert saslprep(password) == "TheMatrIX"
    decoded = decode(wire(vector))
    assert decoded.username() == vector["username"] == "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
    assert decoded.realm() == vector["realm"]
    assert decoded.nonce() == vector["nonce"]
    derived = long_term_key(vector["username"], vector["realm"], password)
    assert derived == key(vector)
    assert long_term_key(vector["username"], vector["realm"], "TheMatrIX") == derived
    verify_integrity(wire(vector), derived)
    with pytest.raises(IntegrityError):
        verify_integrity(wire(vector), long_term_key(vector["username"], vector["realm"], "x"))


def test_rfc8489_b1_corrected_vector_sha256_credentials() -> None:
    vector = CORRECTED_8489
    decoded = decode(wire(vector))
    derived = long_term_key(
        vector["username"],
        vector["realm"],
        vector["password_before_opaquestring"],
        PasswordAlgorithm.SHA256,
    )
    assert derived == key(vector)
    assert len(derived) == 32
    assert user_hash(vector["username"], vector["realm"]).hex() == vector["userhash_hex"]
    assert decoded.get(AttributeType.USERHASH) == bytes.fromhex(vector["userhash_hex"])
    assert decoded.nonce() == vector["nonce"]
    assert decoded.realm() == vector["realm"]
    algorithm_value = decoded.get(AttributeType.PASSWORD_ALGORITHM)
    assert algorithm_value is not None
    assert decode_password_algorithm(algorithm_value) == (PasswordAlgorithm.SHA256, b"")
    assert decoded.get(MI) is None
    verify_integrity_sha256(wire(vector), derived)
    with pytest.raises(IntegrityError, match=r"^the message has no MESSAGE-INTEGRITY$"):
        verify_integrity(wire(vector), derived)


def test_the_printed_rfc8489_vector_is_rejected() -> None:
    data = wire(PRINTED_8489)
    expected = "message length 156 does not match the 136 bytes after the header"
    assert decode_reason(data) == expected
    with pytest.raises(StunDecodeError) as caught:
        verify_integrity_sha256(data, key(CORRECTED_8489))
    assert caught.value.reason == expected
    # Even with its length field corrected, its printed HMAC does not verify.
    fixed = data[:2] + (len(data) - HEADER_SIZE).to_bytes(2, "big") + data[4:]
    decoded = decode(fixed)
    assert decoded.get(AttributeType.PASSWORD_ALGORITHM) is None
    assert decoded.get(MI256) == bytes.fromhex(PRINTED_8489["hex"][-64:])
    with pytest.raises(IntegrityError, match=r"^MESSAGE-INTEGRITY-SHA256 does not match$"):
        verify_integrity_sha256(fixed, key(CORRECTED_8489))


@pytest.mark.parametrize(
    "name", ["rfc5769-2.2-sample-ipv4-response", "rfc5769-2.4-sample-request-long-term-auth"]
)
def test_every_single_bit_flip_in_a_vector_is_caught(name: str) -> None:
    vector = VECTORS[name]
    data = wire(vector)
    mi_end = data.index(bytes.fromhex(vector["message_integrity_hex"])) + 20
    for position in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[position] ^= 1 << bit
            # MESSAGE-INTEGRITY catches whatever it covers (or the message no longer parses) ...
            if position < mi_end:
                with pytest.raises(STUN_ERRORS):
                    verify_integrity(bytes(flipped), key(vector))
            # ... and FINGERPRINT, when there is one, catches everything.
            if vector["fingerprint_hex"] is not None:
                with pytest.raises(STUN_ERRORS):
                    verify_fingerprint(bytes(flipped))


# --- strict decoding -----------------------------------------------------------------------------

SOFTWARE = tlv(AttributeType.SOFTWARE, b"hm")
MI_ATTR = tlv(MI, bytes(20))
MI256_ATTR = tlv(MI256, bytes(32))
FP_ATTR = tlv(FP, bytes(4))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated header: 0 bytes, a STUN header has 20"),
        (header(0)[:19], "truncated header: 19 bytes, a STUN header has 20"),
        (
            header(0, type_field=0x4001),
            "the two most significant bits of the message type are not zero",
        ),
        (
            header(0, type_field=0x8001),
            "the two most significant bits of the message type are not zero",
        ),
        (header(0, cookie=0x2112A443), "bad magic cookie 0x2112a443, expected 0x2112a442"),
        (header(0, cookie=0), "bad magic cookie 0x00000000, expected 0x2112a442"),
        (header(2) + b"\x00\x00", "message length 2 is not a multiple of 4"),
        (header(4), "message length 4 does not match the 0 bytes after the header"),
        (header(4) + bytes(8), "message length 4 does not match the 8 bytes after the header"),
        (header(0) + bytes(4), "message length 0 does not match the 4 bytes after the header"),
        (
            message(struct.pack(">HH", 0x8022, 5) + b"abcd"),
            "SOFTWARE (0x8022) at offset 20 overruns the message: 5 value bytes, 4 left",
        ),
        (
            message(SOFTWARE, struct.pack(">HH", 0x7777, 0xFFFF)),
            "attribute 0x7777 at offset 28 overruns the message: 65535 value bytes, 0 left",
        ),
        (message(FP_ATTR, SOFTWARE), "SOFTWARE (0x8022) after FINGERPRINT"),
        (message(FP_ATTR, FP_ATTR), "FINGERPRINT (0x8028) after FINGERPRINT"),
        (message(MI_ATTR, FP_ATTR, MI_ATTR), "MESSAGE-INTEGRITY (0x0008) after FINGERPRINT"),
        (message(MI_ATTR, SOFTWARE), "SOFTWARE (0x8022) after MESSAGE-INTEGRITY"),
        (
            message(MI_ATTR, tlv(0x7777, b"")),
            "attribute 0x7777 after MESSAGE-INTEGRITY",
        ),
        (message(MI_ATTR, MI_ATTR), "MESSAGE-INTEGRITY (0x0008) after MESSAGE-INTEGRITY"),
        (
            message(MI256_ATTR, MI_ATTR),
            "MESSAGE-INTEGRITY (0x0008) after MESSAGE-INTEGRITY-SHA256",
        ),
        (
            message(MI_ATTR, MI256_ATTR, MI256_ATTR),
            "MESSAGE-INTEGRITY-SHA256 (0x001c) after MESSAGE-INTEGRITY-SHA256",
        ),
        (
            message(MI256_ATTR, SOFTWARE),
            "SOFTWARE (0x8022) after MESSAGE-INTEGRITY-SHA256",
        ),
        (message(tlv(MI, bytes(16))), "MESSAGE-INTEGRITY has 16 bytes, not 20"),
        (message(tlv(FP, bytes(8))), "FINGERPRINT has 8 bytes, not 4"),
        (message(tlv(FP, b"")), "FINGERPRINT has 0 bytes, not 4"),
        (
            message(tlv(MI256, bytes(12))),
            "MESSAGE-INTEGRITY-SHA256 has 12 bytes, not a multiple of 4 from 16 to 32",
        ),
        (
            message(tlv(MI256, bytes(18))),
            "MESSAGE-INTEGRITY-SHA256 has 18 bytes, not a multiple of 4 from 16 to 32",
        ),
        (
            message(tlv(MI256, bytes(36))),
            "MESSAGE-INTEGRITY-SHA256 has 36 bytes, not a multiple of 4 from 16 to 32",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_malformed_message_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    assert decode_reason(data) == reason
    with pytest.raises(StunDecodeError, match=r"^malformed STUN message: "):
        decode(data)


@pytest.mark.parametrize(
    "attributes",
    [
        (),
        (MI_ATTR,),
        (MI256_ATTR,),
        (FP_ATTR,),
        (MI_ATTR, MI256_ATTR),
        (MI_ATTR, FP_ATTR),
        (MI256_ATTR, FP_ATTR),
        (SOFTWARE, MI_ATTR, MI256_ATTR, FP_ATTR),
        (SOFTWARE, tlv(MI256, bytes(16)), FP_ATTR),
        (tlv(0x7777, b"x", b"\xff\xfe\xfd"), SOFTWARE, tlv(0xFFFF, b"")),
    ],
)
def test_well_placed_trailers_and_odd_padding_decode(attributes: tuple[bytes, ...]) -> None:
    data = message(*attributes)
    decoded = decode(data)
    assert len(decoded.attributes) == len(attributes)
    assert encode(decoded) == data


def test_decoded_methods_and_types_are_enums_when_known_and_ints_otherwise() -> None:
    decoded = decode(message(tlv(0x7777, b"x"), SOFTWARE, type_field=message_type(0xABC, 1)))
    assert decoded.method == 0xABC
    assert type(decoded.method) is int
    assert decoded.message_class is MessageClass.INDICATION
    assert type(decoded.attributes[0].type) is int
    assert decoded.attributes[1].type is AttributeType.SOFTWARE
    assert decode(message()).method is Method.BINDING


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_raise_nothing_but_stun_decode_error(data: bytes) -> None:
    exercise(data)


def exercise(data: bytes) -> None:
    """Run every reader over ``data``: anything but the codec's own errors is a bug."""
    try:
        decoded: Message | None = decode(data)
    except StunDecodeError:
        decoded = None
    with contextlib.suppress(*STUN_ERRORS):
        verify_integrity(data, b"key")
    with contextlib.suppress(*STUN_ERRORS):
        verify_integrity_sha256(data, b"key")
    with contextlib.suppress(*STUN_ERRORS):
        verify_fingerprint(data)
    if decoded is None:
        return
    assert encode(decoded) == data
    for read in (
        decoded.xor_mapped_address,
        decoded.mapped_address,
        decoded.other_address,
        decoded.response_origin,
        decoded.error,
        decoded.unknown_attributes,
        decoded.change_request,
        decoded.username,
        decoded.realm,
        decoded.nonce,
        decoded.software,
    ):
        with contextlib.suppress(StunDecodeError):
            read()


@st.composite
def valid_wire(draw: st.DrawFn) -> bytes:
    """A well-formed message: random type, attributes with random padding bytes, and a random
    well-placed trailer (its values random too: decoding does not verify them)."""
    body = b""
    for _ in range(draw(st.integers(0, 6))):
        attribute_type = draw(st.integers(0, 0xFFFF).filter(lambda t: t not in TRAILER))
        value = draw(st.binary(max_size=40))
        pad = -len(value) % 4
        body += tlv(attribute_type, value, draw(st.binary(min_size=pad, max_size=pad)))
    if draw(st.booleans()):
        body += tlv(MI, draw(st.binary(min_size=20, max_size=20)))
    if draw(st.booleans()):
        size = draw(st.sampled_from([16, 20, 24, 28, 32]))
        body += tlv(MI256, draw(st.binary(min_size=size, max_size=size)))
    if draw(st.booleans()):
        body += tlv(FP, draw(st.binary(min_size=4, max_size=4)))
    type_field = draw(st.integers(0, 0x3FFF))
    tid = draw(st.binary(min_size=12, max_size=12))
    return struct.pack(">HHI12s", type_field, len(body), MAGIC_COOKIE, tid) + body


@settings(max_examples=300, deadline=None)
@given(valid_wire())
def test_every_valid_message_reencodes_byte_exact(data: bytes) -> None:
    decoded = decode(data)
    assert encode(decoded) == data
    assert decode(encode(decoded)) == decoded
    # RFC 7983 demultiplexes on a first byte of 0-3, i.e. methods below 0x100.
    assert is_stun(data) == (decoded.method < 0x100)


@settings(max_examples=400, deadline=None)
@given(valid_wire(), st.lists(st.tuples(st.integers(0), st.integers(0, 255)), max_size=4))
def test_mutated_messages_raise_nothing_but_stun_errors(
    data: bytes, mutations: list[tuple[int, int]]
) -> None:
    mutated = bytearray(data)
    for position, byte in mutations:
        mutated[position % len(mutated)] = byte
    exercise(bytes(mutated))


@settings(max_examples=200, deadline=None)
@given(valid_wire(), st.integers(1, 40))
def test_truncated_messages_are_refused(data: bytes, cut: int) -> None:
    with pytest.raises(StunDecodeError):
        decode(data[: max(0, len(data) - cut)])


# --- encoding and integrity ----------------------------------------------------------------------


@st.composite
def messages(draw: st.DrawFn) -> Message:
    attributes = tuple(
        Attribute(
            draw(st.integers(0, 0xFFFF).filter(lambda t: t not in TRAILER)),
            draw(st.binary(max_size=40)),
        )
        for _ in range(draw(st.integers(0, 5)))
    )
    return Message(
        draw(st.integers(0, 0xFFF)),
        draw(st.sampled_from(MessageClass)),
        draw(st.binary(min_size=12, max_size=12)),
        attributes,
    )


@settings(max_examples=200, deadline=None)
@given(
    messages(),
    st.one_of(st.none(), st.binary(max_size=40)),
    st.one_of(st.none(), st.binary(max_size=40)),
    st.booleans(),
)
def test_encoded_messages_decode_back_and_verify(
    original: Message, mi_key: bytes | None, mi256_key: bytes | None, fingerprint: bool
) -> None:
    data = encode(
        original, integrity_key=mi_key, integrity_sha256_key=mi256_key, fingerprint=fingerprint
    )
    decoded = decode(data)
    assert decoded.method == original.method
    assert decoded.message_class == original.message_class
    assert decoded.transaction_id == original.transaction_id
    assert decoded.attributes[: len(original.attributes)] == original.attributes
    trailer = [a.type for a in decoded.attributes[len(original.attributes) :]]
    asked = (mi_key is not None, mi256_key is not None, fingerprint)
    assert trailer == [t for t, on in zip(TRAILER, asked, strict=True) if on]
    if mi_key is not None:
        verify_integrity(data, mi_key)
    if mi256_key is not None:
        verify_integrity_sha256(data, mi256_key)
    if fingerprint:
        verify_fingerprint(data)
    again = encode(
        decoded, integrity_key=mi_key, integrity_sha256_key=mi256_key, fingerprint=fingerprint
    )
    assert again == data
    assert encode(decoded) == data


def test_mi_sha256_covers_mi_and_fingerprint_covers_both() -> None:
    request = binding_request(TID, Attribute(AttributeType.SOFTWARE, b"hypermesh"))
    data = encode(request, integrity_key=b"k1", integrity_sha256_key=b"k2", fingerprint=True)
    assert [a.type for a in decode(data).attributes] == [AttributeType.SOFTWARE, MI, MI256, FP]
    verify_integrity(data, b"k1")
    verify_integrity_sha256(data, b"k2")
    verify_fingerprint(data)
    # Hand-computed FINGERPRINT: CRC-32 of everything before it, XOR "STUN".
    assert int.from_bytes(data[-4:], "big") == zlib.crc32(data[:-8]) ^ 0x5354554E
    # MI covers only what precedes it: altering MI-SHA256 leaves MI valid, not the fingerprint.
    altered = data[:-12] + bytes([data[-12] ^ 1]) + data[-11:]
    verify_integrity(altered, b"k1")
    with pytest.raises(IntegrityError, match=r"^FINGERPRINT does not match$"):
        verify_fingerprint(altered)
    with pytest.raises(IntegrityError, match=r"^MESSAGE-INTEGRITY-SHA256 does not match$"):
        verify_integrity_sha256(altered, b"k2")


def test_a_truncated_mi_sha256_is_compared_on_its_length() -> None:
    # RFC 8489 §14.6 lets MESSAGE-INTEGRITY-SHA256 be truncated to 16-28 bytes; the header
    # length it is computed with ends after the truncated attribute (here 4 + 16 bytes).
    mac = hmac.digest(b"key", header(20), "sha256")
    verify_integrity_sha256(message(tlv(MI256, mac[:16])), b"key")
    # The full HMAC of the 36-byte attribute's message, cut to 16 bytes, is not the same.
    full = encode(binding_request(TID), integrity_sha256_key=b"key")
    verify_integrity_sha256(full, b"key")
    with pytest.raises(IntegrityError, match=r"^MESSAGE-INTEGRITY-SHA256 does not match$"):
        verify_integrity_sha256(message(tlv(MI256, full[-32:-16])), b"key")


def test_encode_replaces_only_the_trailer_it_is_asked_for() -> None:
    vector = VECTORS["rfc5769-2.1-sample-request"]
    decoded = decode(wire(vector))
    mi = decoded.get(MI)
    # A fingerprint alone keeps MESSAGE-INTEGRITY as it was and recomputes FINGERPRINT.
    assert encode(decoded, fingerprint=True) == wire(vector)
    # MESSAGE-INTEGRITY-SHA256 goes after the kept MESSAGE-INTEGRITY; the old FINGERPRINT goes.
    with_sha = decode(encode(decoded, integrity_sha256_key=b"k"))
    assert [a.type for a in with_sha.attributes[-2:]] == [MI, MI256]
    assert with_sha.get(MI) == mi
    assert with_sha.get(FP) is None
    # A new MESSAGE-INTEGRITY replaces the old one and drops the FINGERPRINT after it.
    with_new = decode(encode(decoded, integrity_key=b"other"))
    assert with_new.attributes[-1].type == MI
    assert with_new.get(MI) != mi
    assert with_new.get(FP) is None
    assert len(with_new.attributes) == len(decoded.attributes) - 1
    # A trailing MESSAGE-INTEGRITY-SHA256 cannot precede a new MESSAGE-INTEGRITY: it goes too.
    only_sha = binding_request(TID, Attribute(MI256, bytes(32)))
    assert [a.type for a in decode(encode(only_sha, integrity_key=b"k")).attributes] == [MI]


@pytest.mark.parametrize(
    ("attributes", "kwargs", "problem"),
    [
        (
            (Attribute(FP, bytes(4)), Attribute(0x8022, b"")),
            {},
            "SOFTWARE (0x8022) after FINGERPRINT",
        ),
        (
            (Attribute(MI, bytes(20)), Attribute(0x0006, b"u")),
            {},
            "USERNAME (0x0006) after MESSAGE-INTEGRITY",
        ),
        ((Attribute(MI, bytes(19)),), {}, "MESSAGE-INTEGRITY has 19 bytes, not 20"),
        (
            (Attribute(FP, bytes(4)), Attribute(0x0006, b"")),
            {"fingerprint": True},
            "USERNAME (0x0006) after FINGERPRINT",
        ),
        (
            (Attribute(MI256, bytes(32)), Attribute(0x8022, b"")),
            {"integrity_key": b"k"},
            "SOFTWARE (0x8022) after MESSAGE-INTEGRITY-SHA256",
        ),
    ],
)
def test_encode_refuses_what_decode_would_refuse(
    attributes: tuple[Attribute, ...], kwargs: dict[str, Any], problem: str
) -> None:
    with pytest.raises(StunError, match=f"^cannot encode: {re.escape(problem)}$"):
        encode(binding_request(TID, *attributes), **kwargs)


def test_encode_refuses_more_than_65532_bytes_of_attributes() -> None:
    big = Attribute(AttributeType.DATA, bytes(0xFFFC - 4))
    assert len(encode(binding_request(TID, big))) == HEADER_SIZE + 0xFFFC
    with pytest.raises(StunError, match="65540 bytes of attributes exceed 65532"):
        encode(binding_request(TID, big), fingerprint=True)
    with pytest.raises(StunError, match="65536 bytes of attributes exceed 65532"):
        encode(binding_request(TID, big, Attribute(AttributeType.SOFTWARE, b"")))


def test_missing_integrity_attributes_are_integrity_errors() -> None:
    data = encode(binding_request(TID))
    with pytest.raises(IntegrityError, match=r"^the message has no MESSAGE-INTEGRITY$"):
        verify_integrity(data, b"k")
    with pytest.raises(IntegrityError, match=r"^the message has no MESSAGE-INTEGRITY-SHA256$"):
        verify_integrity_sha256(data, b"k")
    with pytest.raises(IntegrityError, match=r"^the message has no FINGERPRINT$") as caught:
        verify_fingerprint(data)
    assert caught.value.reason == "the message has no FINGERPRINT"
    assert isinstance(caught.value, StunError)
    assert isinstance(caught.value, StoqError)


# --- message types, messages and builders --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "message_class", "value"),
    [
        (Method.BINDING, MessageClass.REQUEST, 0x0001),
        (Method.BINDING, MessageClass.INDICATION, 0x0011),
        (Method.BINDING, MessageClass.SUCCESS, 0x0101),
        (Method.BINDING, MessageClass.ERROR, 0x0111),
        (Method.ALLOCATE, MessageClass.REQUEST, 0x0003),
        (Method.ALLOCATE, MessageClass.ERROR, 0x0113),
        (Method.SEND, MessageClass.INDICATION, 0x0016),
        (Method.CHANNEL_BIND, MessageClass.SUCCESS, 0x0109),
        (0xFFF, MessageClass.ERROR, 0x3FFF),
        (0x080, MessageClass.REQUEST, 0x0200),
    ],
)
def test_message_type_interleaves_method_and_class(
    method: int, message_class: MessageClass, value: int
) -> None:
    assert message_type(method, message_class) == value
    assert split_message_type(value) == (method, message_class)


@given(st.integers(0, 0xFFF), st.sampled_from(MessageClass))
def test_message_type_round_trips(method: int, message_class: MessageClass) -> None:
    value = message_type(method, message_class)
    assert value < 0x4000
    assert split_message_type(value) == (method, message_class)


def test_invalid_messages_and_attributes_cannot_be_built() -> None:
    with pytest.raises(StunError, match="a transaction ID has 12 bytes, not 11"):
        Message(Method.BINDING, MessageClass.REQUEST, bytes(11))
    with pytest.raises(StunError, match="does not fit in 12 bits"):
        Message(0x1000, MessageClass.REQUEST, TID)
    with pytest.raises(StunError, match="is not 0-3"):
        Message(1, 4, TID)  # type: ignore[arg-type]
    with pytest.raises(StunError, match="does not fit in 16 bits"):
        Attribute(0x10000, b"")
    with pytest.raises(StunError, match="exceeds 65535"):
        Attribute(1, bytes(0x10000))
    with pytest.raises(StunError, match="not an Attribute"):
        Message(1, MessageClass.REQUEST, TID, (b"raw",))  # type: ignore[arg-type]
    built = Message(1, 2, bytearray(TID), [Attribute(1, bytearray(b"v"))])  # type: ignore[arg-type]
    assert built.message_class is MessageClass.SUCCESS
    assert type(built.transaction_id) is bytes
    assert built.attributes == (Attribute(1, b"v"),)
    assert hash(built.attributes[0]) == hash(Attribute(1, b"v", b"\x01\x02\x03"))


def test_get_get_all_and_unknown_comprehension_required() -> None:
    request = binding_request(
        TID,
        Attribute(0x7001, b"a"),
        Attribute(AttributeType.SOFTWARE, b"s"),
        Attribute(0x7001, b"b"),
        Attribute(AttributeType.USERNAME, b"u"),
        Attribute(0x0002, b""),
        Attribute(0xC001, b"optional"),
    )
    assert request.get(0x7001) == b"a"
    assert request.get_all(0x7001) == [b"a", b"b"]
    assert request.get(0x1234) is None
    assert request.get_all(0x1234) == []
    assert request.unknown_comprehension_required({AttributeType.USERNAME}) == [0x7001, 0x0002]
    assert request.unknown_comprehension_required(set(AttributeType) | {0x7001, 0x0002}) == []
    assert request.attributes[0].comprehension_required
    assert not request.attributes[1].comprehension_required


def test_binding_request_and_responses() -> None:
    first, second = binding_request(), binding_request()
    assert len(first.transaction_id) == TRANSACTION_ID_SIZE
    assert first.transaction_id != second.transaction_id
    assert len(new_transaction_id()) == 12
    software = Attribute(AttributeType.SOFTWARE, b"hm")
    request = binding_request(TID, software)
    assert encode(request)[:4] == b"\x00\x01\x00\x08"
    mapped = Attribute(AttributeType.XOR_MAPPED_ADDRESS, encode_xor_address("127.0.0.1", 4242, TID))
    success = success_response(request, mapped)
    assert (success.method, success.message_class, success.transaction_id) == (
        Method.BINDING,
        MessageClass.SUCCESS,
        TID,
    )
    assert decode(encode(success)).xor_mapped_address() == ("127.0.0.1", 4242)
    unknown = Attribute(AttributeType.UNKNOWN_ATTRIBUTES, encode_unknown_attributes([0x7001]))
    error = error_response(request, 420, "Unknown Attribute", unknown)
    assert error.message_class is MessageClass.ERROR
    assert error.attributes[0].type == AttributeType.ERROR_CODE
    again = decode(encode(error))
    assert again.error() == (420, "Unknown Attribute")
    assert again.unknown_attributes() == (0x7001,)
    assert encode(error)[:2] == b"\x01\x11"
    with pytest.raises(StunError, match="only a request is answered, not a SUCCESS message"):
        success_response(success)
    with pytest.raises(StunError, match="only a request is answered"):
        error_response(error, 400, "Bad Request")
    for absent in (
        success.mapped_address,
        success.other_address,
        success.response_origin,
        success.error,
        success.unknown_attributes,
        success.change_request,
        success.username,
        success.realm,
        success.nonce,
        success.software,
    ):
        assert absent() is None


def test_is_stun_demultiplexes_per_rfc7983() -> None:
    for vector in ALL_VECTORS:
        assert is_stun(wire(vector))
    stun = encode(binding_request(TID))
    assert is_stun(stun)
    assert not is_stun(stun[:19])
    assert not is_stun(b"\x16" + stun[1:])  # DTLS (first byte 20-63)
    assert not is_stun(b"\xc0" + stun[1:])  # QUIC long header
    assert not is_stun(b"\x04" + stun[1:])
    assert not is_stun(stun[:4] + b"\x00\x00\x00\x00" + stun[8:])
    assert not is_stun(b"")


def test_text_attributes_must_be_utf8() -> None:
    bad = binding_request(TID, Attribute(AttributeType.USERNAME, b"\xff\xfe"))
    with pytest.raises(StunDecodeError) as caught:
        bad.username()
    assert caught.value.reason == "USERNAME (0x0006) is not UTF-8"


# --- attribute values ----------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 0xFFFF)
tids = st.binary(min_size=12, max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(ipv4, ipv6), ports, tids)
def test_xor_addresses_round_trip(ip: str, port: int, transaction_id: bytes) -> None:
    value = encode_xor_address(ip, port, transaction_id)
    assert len(value) == (8 if ":" not in ip else 20)
    assert decode_xor_address(value, transaction_id) == (ip, port)
    plain = encode_address(ip, port)
    assert decode_address(plain) == (ip, port)
    # The family byte is not XORed; the port and the address are.
    assert value[:2] == plain[:2]
    assert int.from_bytes(value[2:4], "big") == port ^ 0x2112
    cookie_and_tid = MAGIC_COOKIE.to_bytes(4, "big") + transaction_id
    assert bytes(a ^ b for a, b in zip(value[4:], cookie_and_tid, strict=False)) == plain[4:]
    request = binding_request(transaction_id, Attribute(AttributeType.XOR_MAPPED_ADDRESS, value))
    assert decode(encode(request)).xor_mapped_address() == (ip, port)


@given(ipv6, ports, tids, tids)
def test_an_ipv6_xor_address_depends_on_the_transaction_id(
    ip: str, port: int, one: bytes, other: bytes
) -> None:
    value = encode_xor_address(ip, port, one)
    if one != other:
        assert decode_xor_address(value, other) != (ip, port)


def test_address_values_on_the_wire() -> None:
    assert encode_address("192.0.2.1", 32853) == bytes.fromhex("00018055c0000201")
    assert encode_address("::1", 1) == bytes.fromhex("00020001") + bytes(15) + b"\x01"
    # RFC 5769 §2.2: 192.0.2.1:32853 XORed.
    tid = bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert encode_xor_address("192.0.2.1", 32853, tid) == bytes.fromhex("0001a147e112a643")
    assert decode_address(bytes.fromhex("ff018055c0000201")) == ("192.0.2.1", 32853)
    msg = decode(message(tlv(AttributeType.OTHER_ADDRESS, encode_address("127.0.0.2", 3479))))
    assert msg.other_address() == ("127.0.0.2", 3479)
    msg = decode(message(tlv(AttributeType.RESPONSE_ORIGIN, encode_address("::1", 3478))))
    assert msg.response_origin() == ("::1", 3478)
    msg = decode(message(tlv(AttributeType.MAPPED_ADDRESS, encode_address("127.0.0.1", 9))))
    assert msg.mapped_address() == ("127.0.0.1", 9)
    assert msg.address(AttributeType.ALTERNATE_SERVER) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "an address value of 0 bytes is too short"),
        (b"\x00\x01\x00", "an address value of 3 bytes is too short"),
        (bytes.fromhex("0003000100000000"), "unknown address family 0x03"),
        (bytes.fromhex("00010001000000"), "an IPv4 address value has 8 bytes, not 7"),
        (bytes.fromhex("0001000100000000ff"), "an IPv4 address value has 8 bytes, not 9"),
        (bytes.fromhex("00020001") + bytes(4), "an IPv6 address value has 20 bytes, not 8"),
        (bytes.fromhex("00020001") + bytes(20), "an IPv6 address value has 20 bytes, not 24"),
    ],
)
def test_malformed_address_values(value: bytes, reason: str) -> None:
    for read in (decode_address, lambda v: decode_xor_address(v, TID)):
        with pytest.raises(StunDecodeError) as caught:
            read(value)
        assert caught.value.reason == reason


def test_address_encoding_refuses_bad_input() -> None:
    with pytest.raises(StunError, match=r"not an IP address: 'example\.org'"):
        encode_address("example.org", 1)
    with pytest.raises(StunError, match="port 65536 is not 0-65535"):
        encode_xor_address("127.0.0.1", 65536, TID)
    with pytest.raises(StunError, match="port -1 is not 0-65535"):
        encode_address("::1", -1)
    with pytest.raises(StunError, match="a transaction ID has 12 bytes, not 3"):
        encode_xor_address("127.0.0.1", 1, b"abc")
    with pytest.raises(StunError, match="a transaction ID has 12 bytes, not 0"):
        decode_xor_address(bytes(8), b"")


@given(st.integers(300, 699), st.text(max_size=127))
def test_error_codes_round_trip(code: int, reason: str) -> None:
    value = encode_error_code(code, reason)
    assert value[:2] == b"\x00\x00"
    assert value[2] == code // 100
    assert value[3] == code % 100
    assert decode_error_code(value) == (code, reason)


def test_error_code_values() -> None:
    assert encode_error_code(401, "Unauthorized") == b"\x00\x00\x04\x01Unauthorized"
    assert decode_error_code(b"\xff\xff\xfc\x14") == (420, "")  # reserved bits are ignored
    with pytest.raises(StunError, match="error code 299 is not 300-699"):
        encode_error_code(299, "")
    with pytest.raises(StunError, match="error code 700 is not 300-699"):
        encode_error_code(700, "")
    with pytest.raises(StunError, match="128 characters exceeds 127"):
        encode_error_code(400, "x" * 128)
    for value, reason in [
        (b"\x00\x00\x04", "an ERROR-CODE value of 3 bytes is too short"),
        (b"\x00\x00\x02\x00", "error class 2 is not 3-6"),
        (b"\x00\x00\x07\x00", "error class 7 is not 3-6"),
        (b"\x00\x00\x04\x64", "error number 100 is above 99"),
        (b"\x00\x00\x04\x00\xff", "the reason phrase is not UTF-8"),
        (b"\x00\x00\x04\x00" + b"x" * 764, "a reason phrase of 764 bytes exceeds 763"),
    ]:
        with pytest.raises(StunDecodeError) as caught:
            decode_error_code(value)
        assert caught.value.reason == reason


def test_unknown_attributes_change_request_and_password_algorithms() -> None:
    assert encode_unknown_attributes([0x7001, 0x0002, 0xFFFF]) == bytes.fromhex("70010002ffff")
    assert decode_unknown_attributes(bytes.fromhex("70010002ffff")) == (0x7001, 0x0002, 0xFFFF)
    assert decode_unknown_attributes(b"") == ()
    with pytest.raises(StunDecodeError, match="UNKNOWN-ATTRIBUTES value of 3 bytes is not even"):
        decode_unknown_attributes(b"abc")
    with pytest.raises(StunError, match="does not fit in 16 bits"):
        encode_unknown_attributes([0x10000])
    for change_ip in (False, True):
        for change_port in (False, True):
            value = encode_change_request(change_ip, change_port)
            assert len(value) == 4
            assert decode_change_request(value) == (change_ip, change_port)
    assert encode_change_request(True, True) == b"\x00\x00\x00\x06"
    assert decode_change_request(b"\xff\xff\xff\xf9") == (False, False)
    with pytest.raises(StunDecodeError, match="a CHANGE-REQUEST value has 4 bytes, not 2"):
        decode_change_request(b"\x00\x04")
    request = binding_request(
        TID, Attribute(AttributeType.CHANGE_REQUEST, encode_change_request(True, False))
    )
    assert decode(encode(request)).change_request() == (True, False)
    assert encode_password_algorithm(PasswordAlgorithm.SHA256) == bytes.fromhex("00020000")
    assert decode_password_algorithm(bytes.fromhex("000100027788")) == (1, b"\x77\x88")
    algorithms = [(PasswordAlgorithm.MD5, b""), (0x1234, b"abc"), (PasswordAlgorithm.SHA256, b"")]
    value = encode_password_algorithms(algorithms)
    assert value == bytes.fromhex("00010000123400036162630000020000")
    assert decode_password_algorithms(value) == algorithms
    with pytest.raises(StunDecodeError, match="announces 4 parameter bytes but has 0"):
        decode_password_algorithm(bytes.fromhex("00010004"))
    with pytest.raises(StunDecodeError, match="too short"):
        decode_password_algorithm(b"\x00")
    with pytest.raises(StunDecodeError, match="entry at 4 overruns the value"):
        decode_password_algorithms(bytes.fromhex("00010000000200080000"))
    with pytest.raises(StunDecodeError, match="truncated entry at 4"):
        decode_password_algorithms(bytes.fromhex("000100000002"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_value_decoders_raise_nothing_but_stun_decode_error(value: bytes) -> None:
    for read in (
        decode_address,
        lambda v: decode_xor_address(v, TID),
        decode_error_code,
        decode_unknown_attributes,
        decode_change_request,
        decode_password_algorithm,
        decode_password_algorithms,
    ):
        with contextlib.suppress(StunDecodeError):
            read(value)


# --- credentials ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "prepared"),
    [  # RFC 4013 §3
        ("I\u00adX", "IX"),
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        # and more of RFC 3454 / 4013
        ("a\u00a0b", "a b"),  # non-ASCII space mapped to SPACE
        ("a\u200bb", "ab"),  # ZERO WIDTH SPACE is mapped to nothing (B.1)
        ("\uff21", "A"),  # NFKC folds width
        ("", ""),
        ("\u0627\u0628", "\u0627\u0628"),  # all right-to-left is fine
    ],
)
def test_saslprep(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("\u0007", "a control character at position 0 is prohibited"),  # RFC 4013 §3 #6
        ("\u0627\u0031", "a string with right-to-left characters must start and end with one"),
        ("\u0627a\u0628", "right-to-left and left-to-right characters are mixed"),
        ("pass\u0000", "a control character at position 4 is prohibited"),
        ("\ue000", "a private use character at position 0 is prohibited"),
        ("\ufffe", "a non-character code point at position 0 is prohibited"),
        ("\ud800", "a surrogate code point at position 0 is prohibited"),
        ("\u200e", "a character that changes display properties or is deprecated"),
        ("\U000e0001", "a tagging character at position 0 is prohibited"),
        ("\u0221", "a code point unassigned in Unicode 3.2 at position 0 is prohibited"),
    ],
)
def test_saslprep_refuses_prohibited_characters(text: str, problem: str) -> None:
    with pytest.raises(StunError, match=f"^SASLprep: {re.escape(problem)}"):
        saslprep(text)
    with pytest.raises(StunError, match=r"^SASLprep: "):
        long_term_key("user", "realm", text)


@pytest.mark.parametrize(
    ("text", "prepared"),
    [  # RFC 8265 §4.3's examples of valid passwords
        ("correct horse battery staple", "correct horse battery staple"),
        ("Correct Horse Battery Staple", "Correct Horse Battery Staple"),
        ("\u03c0\u00df\u00e5", "\u03c0\u00df\u00e5"),
        ("Jack of \u2666s", "Jack of \u2666s"),
        ("foo\u1680bar", "foo bar"),  # OGHAM SPACE MARK is mapped to SPACE
        # and the profile's other rules
        ("e\u0301", "\u00e9"),  # NFC
        ("\uff21\u00aa\u2168", "\uff21\u00aa\u2168"),  # no width mapping, no NFKC
        ("l\u00b7l", "l\u00b7l"),  # MIDDLE DOT between two l
        ("\u0915\u094d\u200d", "\u0915\u094d\u200d"),  # ZWJ after a virama
        ("\u0375\u03b1", "\u0375\u03b1"),  # KERAIA before a Greek letter
        ("\u05d0\u05f3", "\u05d0\u05f3"),  # GERESH after a Hebrew letter
        ("\u30a2\u30fb\u30a4", "\u30a2\u30fb\u30a4"),  # KATAKANA MIDDLE DOT with Katakana
        ("\u0661\u0662", "\u0661\u0662"),
        ("\u00df\u03c2", "\u00df\u03c2"),  # exceptions: PVALID
    ],
)
def test_opaque_string(text: str, prepared: str) -> None:
    assert opaque_string(text) == prepared
    assert short_term_key(text) == prepared.encode("utf-8")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "OpaqueString: the string is empty"),  # RFC 8265 §4.3: zero-length
        ("my cat is a \u0009by", "a control character at position 12"),  # RFC 8265 §4.3
        (
            "The\u00adM\u00aatr\u2168",
            "a default-ignorable or non-character code point at position 3",
        ),
        ("a\u200db", "a joiner out of its context at position 1"),
        ("a\u200cb", "a joiner out of its context at position 1"),
        ("a\u00b7b", "a character out of its context at position 1"),
        ("\u0375a", "a character out of its context at position 0"),
        ("a\u05f3", "a character out of its context at position 1"),
        ("\u30fb", "a character out of its context at position 0"),
        ("\u0661\u06f1", "a character out of its context at position 0"),
        ("\u0640", "a character the PRECIS exceptions disallow at position 0"),
        ("\ue000", "a character the FreeformClass disallows at position 0"),
        ("a\u2028b", "a character the FreeformClass disallows at position 1"),
        ("\ud800", "a character the FreeformClass disallows at position 0"),
        ("\u1100", "an old Hangul jamo at position 0"),
        ("\ufdd0", "a default-ignorable or non-character code point at position 0"),
        ("\u0378", "a code point unassigned in Unicode"),
        ("\U000e0061", "a default-ignorable or non-character code point at position 0"),
    ],
)
def test_opaque_string_refuses_disallowed_characters(text: str, problem: str) -> None:
    with pytest.raises(StunError, match=r"^OpaqueString: ") as caught:
        opaque_string(text)
    assert problem in str(caught.value)
    with pytest.raises(StunError):
        short_term_key(text)


def test_long_term_keys() -> None:
    md5 = long_term_key("user", "realm", "pass")
    assert md5 == hashlib.md5(b"user:realm:pass", usedforsecurity=False).digest()
    sha = long_term_key("user", "realm", "pass", PasswordAlgorithm.SHA256)
    assert sha == hashlib.sha256(b"user:realm:pass").digest()
    # Only the password is prepared: username and realm are used as they are on the wire.
    assert long_term_key("user", "realm", "pa\u00adss") == md5
    assert long_term_key("us\u00ader", "realm", "pass") != md5
    with pytest.raises(StunError, match="unknown password algorithm 3"):
        long_term_key("user", "realm", "pass", 3)  # type: ignore[arg-type]
    with pytest.raises(StunError, match="the username is not valid Unicode"):
        long_term_key("\ud800", "realm", "pass")
    with pytest.raises(StunError, match="the realm is not valid Unicode"):
        user_hash("user", "\udfff")
