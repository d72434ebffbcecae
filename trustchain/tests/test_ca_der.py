"""trustchain.ca.der: strict DER round trips and rejections.

Every malformed input must raise MalformedData (never another exception, never a result).
"""

from __future__ import annotations

import datetime
from contextlib import nullcontext

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from trustchain.ca import der
from trustchain.ca.der import Node, Tag
from trustchain.errors import MalformedData

# --- strategies -------------------------------------------------------------------------------

tag_numbers = st.one_of(st.integers(0, 30), st.integers(31, 1 << 21))
tag_classes = st.integers(0, 3)


def _primitive(tag_class: int, number: int, value: bytes) -> Node:
    return Node(Tag(tag_class, False, number), value)


primitives = st.builds(_primitive, tag_classes, tag_numbers, st.binary(max_size=300))


def _constructed(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.builds(
        lambda tag_class, number, kids: Node(Tag(tag_class, True, number), tuple(kids)),
        tag_classes,
        tag_numbers,
        st.lists(children, max_size=5),
    )


trees = st.recursive(primitives, _constructed, max_leaves=25)


def _certificate_der() -> bytes:
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "der test")])
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .serial_number(12345)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.example")]), critical=False)
        .sign(key, None)
    )
    return certificate.public_bytes(Encoding.DER)


# --- round trips ------------------------------------------------------------------------------


@given(trees)
def test_tree_round_trip(tree: Node) -> None:
    encoded = tree.encode()
    parsed = der.parse_tree(encoded)
    assert parsed == tree
    assert parsed.encode() == encoded
    element = der.parse(encoded)
    assert element.tag == tree.tag
    assert element.encoded == encoded


@given(st.lists(trees, max_size=6))
def test_parse_all_splits_a_concatenation(nodes: list[Node]) -> None:
    encodings = [node.encode() for node in nodes]
    elements = der.parse_all(b"".join(encodings))
    assert [element.encoded for element in elements] == encodings


@given(st.lists(trees, min_size=1, max_size=6), st.data())
def test_rebuild_without_drops_exactly_the_chosen_children(
    nodes: list[Node], data: st.DataObject
) -> None:
    sequence = der.parse(der.encode_sequence(node.encode() for node in nodes))
    drop = data.draw(st.sets(st.integers(0, len(nodes) - 1)))
    rebuilt = der.rebuild_without(sequence, sorted(drop))
    expected = der.encode_sequence(
        node.encode() for index, node in enumerate(nodes) if index not in drop
    )
    assert rebuilt == expected
    assert der.parse(rebuilt).is_(der.SEQUENCE)


def test_rebuild_without_rejects_bad_indices() -> None:
    sequence = der.parse(der.encode_sequence([der.encode_tlv(der.NULL, b"")]))
    with pytest.raises(ValueError, match="out of range"):
        der.rebuild_without(sequence, [1])


@given(st.integers(0, 1 << 40))
def test_length_encoding_is_minimal_and_parses(length: int) -> None:
    encoded = der.encode_length(length)
    if length < 0x80:
        assert encoded == bytes([length])
    else:
        assert encoded[0] == 0x80 | (len(encoded) - 1)
        assert encoded[1] != 0
        assert int.from_bytes(encoded[1:], "big") == length
    # The reader agrees: a header with that length and too little content is truncated.
    expectation = pytest.raises(MalformedData, match="truncated") if length else nullcontext()
    with expectation:
        der.parse(b"\x04" + encoded)


@given(tag_classes, st.booleans(), tag_numbers)
def test_tag_round_trip(tag_class: int, constructed: bool, number: int) -> None:
    tag = Tag(tag_class, constructed, number)
    encoded = der.encode_tlv(tag, b"")
    assert der.parse(encoded).tag == tag
    assert len(tag.encode()) == (1 if number < 31 else 1 + (number.bit_length() + 6) // 7)


def test_real_certificate_round_trips_byte_for_byte() -> None:
    certificate = _certificate_der()
    assert der.parse_tree(certificate).encode() == certificate
    tbs, algorithm, signature = der.parse(certificate).children()
    assert tbs.is_(der.SEQUENCE)
    assert der.decode_oid(algorithm.children()[0]) == "1.3.101.112"
    assert len(der.decode_bit_string(signature)) == 64


def test_long_form_lengths_parse() -> None:
    content = bytes(200)
    encoded = b"\x04\x81\xc8" + content
    assert der.parse(encoded).content == content
    big = bytes(0x1234)
    assert der.parse(b"\x04\x82\x12\x34" + big).content == big


# --- rejections -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        pytest.param(b"\x30\x80\x05\x00\x00\x00", "indefinite", id="indefinite-length"),
        pytest.param(b"\x24\x80\x04\x01\xaa\x00\x00", "indefinite", id="indefinite-octets"),
        pytest.param(b"\x04\x81\x05" + bytes(5), "non-minimal", id="long-form-below-128"),
        pytest.param(b"\x04\x81\x7f" + bytes(127), "non-minimal", id="long-form-127"),
        pytest.param(b"\x04\x82\x00\x80" + bytes(128), "leading zero", id="leading-zero-length"),
        pytest.param(b"\x04\xff" + bytes(8), "reserved", id="reserved-0xff"),
        pytest.param(b"\x04\x89" + bytes(9), "too large", id="nine-length-bytes"),
        pytest.param(b"\x1f\x05\x00", "high-tag form", id="high-tag-below-31"),
        pytest.param(b"\x1f\x80\x9f\x00", "leading 0x80", id="high-tag-leading-0x80"),
        pytest.param(b"\x1f\x9f", "truncated", id="high-tag-truncated"),
        pytest.param(b"", "identifier missing", id="empty"),
        pytest.param(b"\x04", "length missing", id="no-length"),
        pytest.param(b"\x04\x82\x01", "length bytes", id="truncated-length"),
        pytest.param(b"\x04\x03ab", "truncated", id="truncated-contents"),
        pytest.param(b"\x05\x00\x00", "trailing", id="trailing-byte"),
        pytest.param(b"\x30\x03\x04\x05\x00", "truncated", id="child-overruns-parent"),
    ],
)
def test_rejects_non_der(encoded: bytes, message: str) -> None:
    with pytest.raises(MalformedData, match=message):
        der.parse_tree(encoded)


@given(trees)
def test_every_truncation_is_rejected(tree: Node) -> None:
    encoded = tree.encode()
    for cut in range(len(encoded)):
        with pytest.raises(MalformedData):
            der.parse(encoded[:cut])


@given(trees, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_rejected(tree: Node, extra: bytes) -> None:
    with pytest.raises(MalformedData):
        der.parse(tree.encode() + extra)


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_parse_or_raise_malformed_data(data: bytes) -> None:
    try:
        tree = der.parse_tree(data)
    except MalformedData:
        return
    # Whatever parses is DER: it re-encodes to exactly the input.
    assert tree.encode() == data


def test_nesting_limit() -> None:
    encoded = der.encode_tlv(der.NULL, b"")
    for _ in range(der.MAX_DEPTH + 1):
        encoded = der.encode_sequence([encoded])
    with pytest.raises(MalformedData, match="nesting"):
        der.parse_tree(encoded)
    # One level less is fine.
    assert der.parse_tree(der.parse(encoded).content).tag == Tag(0, True, 16)


def test_children_of_a_primitive_element() -> None:
    with pytest.raises(MalformedData, match="primitive"):
        der.parse(b"\x04\x00").children()


# --- universal types ---------------------------------------------------------------------------


@given(
    st.one_of(
        st.tuples(st.integers(0, 1), st.integers(0, 39)),
        st.tuples(st.just(2), st.integers(0, 1 << 70)),
    ),
    st.lists(st.integers(0, 1 << 70), max_size=8),
)
def test_oid_round_trip(head: tuple[int, int], tail: list[int]) -> None:
    dotted = ".".join(str(arc) for arc in [*head, *tail])
    assert der.decode_oid(der.parse(der.encode_oid(dotted))) == dotted


def test_oid_known_encodings() -> None:
    assert der.encode_oid("2.5.29.72") == bytes.fromhex("0603551d48")
    assert der.encode_oid("1.3.101.112") == bytes.fromhex("06032b6570")
    # 1.3.9999.3.14: 9999 = 0xCE 0x0F in base 128.
    assert der.encode_oid("1.3.9999.3.14") == bytes.fromhex("06052bce0f030e")
    assert x509.ObjectIdentifier("1.3.9999.3.14").dotted_string == der.decode_oid(
        der.parse(bytes.fromhex("06052bce0f030e"))
    )


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        pytest.param(b"\x06\x00", "empty", id="empty"),
        pytest.param(b"\x06\x02\x2b\x86", "truncated", id="unterminated"),
        pytest.param(b"\x06\x03\x2b\x80\x01", "non-minimal", id="leading-0x80"),
        pytest.param(b"\x04\x01\x2b", "OBJECT IDENTIFIER", id="wrong-tag"),
    ],
)
def test_oid_rejections(encoded: bytes, message: str) -> None:
    with pytest.raises(MalformedData, match=message):
        der.decode_oid(der.parse(encoded))


@pytest.mark.parametrize("dotted", ["", "1", "3.1", "1.40", "1.2.-3", "a.b"])
def test_encode_oid_rejects_invalid(dotted: str) -> None:
    with pytest.raises(ValueError, match="OID"):
        der.encode_oid(dotted)


@given(st.binary(max_size=100))
def test_bit_string_round_trip(data: bytes) -> None:
    assert der.decode_bit_string(der.parse(der.encode_bit_string(data))) == data


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        pytest.param(b"\x03\x00", "unused-bits octet", id="empty"),
        pytest.param(b"\x03\x02\x01\xfe", "unused bits", id="unused-bits"),
        pytest.param(b"\x23\x03\x03\x01\x00", "primitive BIT STRING", id="constructed"),
        pytest.param(b"\x04\x01\x00", "BIT STRING", id="wrong-tag"),
    ],
)
def test_bit_string_rejections(encoded: bytes, message: str) -> None:
    with pytest.raises(MalformedData, match=message):
        der.decode_bit_string(der.parse(encoded))


def test_boolean_and_octet_string() -> None:
    assert der.decode_boolean(der.parse(b"\x01\x01\xff")) is True
    assert der.decode_boolean(der.parse(b"\x01\x01\x00")) is False
    with pytest.raises(MalformedData, match="0x00 or 0xFF"):
        der.decode_boolean(der.parse(b"\x01\x01\x01"))
    with pytest.raises(MalformedData, match="one-octet"):
        der.decode_boolean(der.parse(b"\x01\x02\xff\xff"))
    assert der.decode_octet_string(der.parse(der.encode_octet_string(b"abc"))) == b"abc"
    with pytest.raises(MalformedData, match="OCTET STRING"):
        der.decode_octet_string(der.parse(b"\x24\x00"))


def test_tag_validation() -> None:
    with pytest.raises(ValueError, match="class"):
        Tag(4, False, 1)
    with pytest.raises(ValueError, match="number"):
        Tag(0, False, -1)
    assert Tag.from_octet(0xA3) == Tag.context(3)
    with pytest.raises(ValueError, match="high-tag"):
        Tag.from_octet(0x1F)
