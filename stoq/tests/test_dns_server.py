"""The DNS front-end: the sans-IO :class:`Authority`, the asyncio :class:`DnsServer` on loopback,
``dig`` (Debian bind9-dnsutils) as an unmodified client, and ``stoq dns-server`` end to end with a
record set signed by a throwaway TrustChain PKI (the ``pki`` fixture of conftest.py).

Every response is parsed back with dnspython and checked field by field: rcode, flags (AA, TC,
RA), sections, TTLs. Nothing here depends on timing: the one timeout tested (TCP idle) is only
awaited, never measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.asyncquery
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsigkeyring
import dns.update
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stoq.cli import main as stoq_main
from stoq.dns.server import (
    DEFAULT_TTL,
    EDNS_PAYLOAD,
    NODE_ID_PREFIX,
    SOA_EXPIRE,
    SOA_REFRESH,
    SOA_RETRY,
    Authority,
    DnsServer,
    DnsServerError,
    load_record_set,
)
from trustchain.naming.records import (
    NameRecord,
    NameRejection,
    Revocation,
    ServiceEndpoint,
    SignedRecord,
    sign_record,
    sign_revocation,
)
from trustchain.naming.zone import RecordSet, encode_record_set

from .conftest import Pki

NOW = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)
NODE_ID = bytes(range(32))
NODE1 = "node1.bank.hypermesh"
NODE2 = "node2.bank.hypermesh"
DEEP = "db.deep.bank.hypermesh"
LOOPBACK = "127.0.0.1"
DIG = shutil.which("dig")
needs_dig = pytest.mark.skipif(
    DIG is None, reason="dig is missing: apt-get install -y bind9-dnsutils (Debian)"
)


def record(name: str, *addresses: str, **kwargs: object) -> NameRecord:
    fields: dict[str, object] = {
        "not_before": NOW - timedelta(days=1),
        "not_after": NOW + timedelta(days=30),
        **kwargs,
    }
    return NameRecord(name, NODE_ID, addresses, **fields)  # type: ignore[arg-type]


NODE1_RECORD = record(
    NODE1,
    "127.0.0.1",
    "10.1.2.3",
    "::1",
    services=(
        ServiceEndpoint("stoq", "udp", 4433, priority=10, weight=5),
        ServiceEndpoint("stoq", "udp", 4434, priority=20, weight=0),
        ServiceEndpoint("grpc", "tcp", 50051),
    ),
    texts=("hello", "région=eu"),
    ttl=120,
    serial=3,
)
NODE2_RECORD = record(NODE2, "192.0.2.7", ttl=60, serial=9)
DEEP_RECORD = record(DEEP, "192.0.2.8", serial=2)
RECORDS = {r.name: r for r in (NODE1_RECORD, NODE2_RECORD, DEEP_RECORD)}


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority(RECORDS)


def ask(
    authority: Authority,
    name: str,
    rdtype: str | int = "A",
    *,
    transport: str = "udp",
    now: datetime = NOW,
    **query_options: object,
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **query_options)  # type: ignore[arg-type]
    wire = authority.answer(query.to_wire(), transport=transport, now=now)  # type: ignore[arg-type]
    assert wire is not None
    response = dns.message.from_wire(wire)
    assert response.id == query.id
    return response


def texts_of(rrset: dns.rrset.RRset) -> set[str]:
    return {rdata.to_text() for rdata in rrset}


def soa_of(response: dns.message.Message) -> dns.rrset.RRset:
    (soa,) = response.authority
    assert soa.rdtype == dns.rdatatype.SOA
    return soa


# --- answers ---------------------------------------------------------------------------------


def test_a_answer_is_authoritative_and_never_recursive(authority: Authority) -> None:
    response = ask(authority, NODE1, "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert response.flags & dns.flags.RD  # copied from the query
    assert not response.flags & (dns.flags.RA | dns.flags.TC)
    (answer,) = response.answer
    assert answer.name == dns.name.from_text(NODE1)
    assert answer.rdtype == dns.rdatatype.A
    assert answer.ttl == 120
    assert {rdata.address for rdata in answer} == {"127.0.0.1", "10.1.2.3"}  # an RRset: no order
    assert response.authority == []


def test_aaaa_answer_holds_the_ipv6_addresses(authority: Authority) -> None:
    response = ask(authority, NODE1, "AAAA")
    (answer,) = response.answer
    assert {rdata.address for rdata in answer} == {"::1"}
    assert answer.ttl == 120


def test_txt_answer_holds_the_texts_and_the_node_id(authority: Authority) -> None:
    response = ask(authority, NODE1, "TXT")
    (answer,) = response.answer
    strings = {b"".join(rdata.strings).decode() for rdata in answer}
    assert strings == {"hello", "région=eu", NODE_ID_PREFIX + NODE_ID.hex()}


def test_txt_of_a_record_without_texts_is_the_node_id_alone(authority: Authority) -> None:
    (answer,) = ask(authority, NODE2, "TXT").answer
    assert texts_of(answer) == {f'"node-id={NODE_ID.hex()}"'}
    assert answer.ttl == 60


def test_srv_answer_with_target_addresses_in_additional(authority: Authority) -> None:
    response = ask(authority, f"_stoq._udp.{NODE1}", "SRV")
    assert response.rcode() == dns.rcode.NOERROR
    (answer,) = response.answer
    assert {(r.priority, r.weight, r.port, r.target.to_text()) for r in answer} == {
        (10, 5, 4433, f"{NODE1}."),
        (20, 0, 4434, f"{NODE1}."),
    }
    additional = {
        (rrset.name.to_text(), rrset.rdtype): texts_of(rrset) for rrset in response.additional
    }
    assert additional == {
        (f"{NODE1}.", dns.rdatatype.A): {"127.0.0.1", "10.1.2.3"},
        (f"{NODE1}.", dns.rdatatype.AAAA): {"::1"},
    }
    (grpc,) = ask(authority, f"_grpc._tcp.{NODE1}", "SRV").answer
    assert texts_of(grpc) == {f"0 0 50051 {NODE1}."}


def test_soa_at_the_apex_is_synthesized_from_the_records(authority: Authority) -> None:
    response = ask(authority, "bank.hypermesh", "SOA")
    (answer,) = response.answer
    assert answer.ttl == 60  # the lowest record TTL in the zone
    (soa,) = answer
    assert soa.mname.to_text() == "bank.hypermesh."
    assert soa.rname.to_text() == "hostmaster.bank.hypermesh."
    assert soa.serial == 9  # the highest record serial in the zone
    assert (soa.refresh, soa.retry, soa.expire, soa.minimum) == (
        SOA_REFRESH,
        SOA_RETRY,
        SOA_EXPIRE,
        60,
    )


def test_any_gets_the_rfc8482_minimal_answer(authority: Authority) -> None:
    response = ask(authority, NODE1, "ANY")
    (answer,) = response.answer
    assert answer.rdtype == dns.rdatatype.HINFO
    assert texts_of(answer) == {'"RFC8482" ""'}


def test_names_are_matched_without_case_and_the_question_case_is_kept(
    authority: Authority,
) -> None:
    response = ask(authority, "NoDe1.BANK.HyperMesh", "A")
    (answer,) = response.answer
    assert answer.name.to_text() == "NoDe1.BANK.HyperMesh."
    assert response.question[0].name.to_text() == "NoDe1.BANK.HyperMesh."


# --- negative answers ------------------------------------------------------------------------


def test_nxdomain_carries_the_zone_soa(authority: Authority) -> None:
    response = ask(authority, "nobody.bank.hypermesh", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    assert response.answer == []
    soa = soa_of(response)
    assert soa.name.to_text() == "bank.hypermesh."
    assert soa.ttl == 60


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        (NODE2, "AAAA"),  # the record has no IPv6 address
        (NODE1, "MX"),  # a type the server never has
        (NODE1, "SOA"),  # not an apex
        (f"_stoq._udp.{NODE1}", "A"),  # an SRV owner has SRV only
        (f"_udp.{NODE1}", "SRV"),  # an empty non-terminal below the record
        ("deep.bank.hypermesh", "A"),  # an empty non-terminal above a record (RFC 8020)
        ("bank.hypermesh", "A"),  # the apex has only its SOA
        (NODE2, "SRV"),  # no services
    ],
)
def test_an_existing_name_without_that_type_is_nodata(
    authority: Authority, name: str, rdtype: str
) -> None:
    response = ask(authority, name, rdtype)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert response.answer == []
    assert soa_of(response).name.to_text() == "bank.hypermesh."


def test_below_a_record_and_unknown_services_are_nxdomain(authority: Authority) -> None:
    for name in (
        f"x.{NODE1}",
        f"_http._tcp.{NODE1}",
        f"_x._udp.{NODE1}",
        "nope.deep.bank.hypermesh",
    ):
        assert ask(authority, name, "A").rcode() == dns.rcode.NXDOMAIN, name


@pytest.mark.parametrize("name", ["example.com", "hypermesh", "other.hypermesh", "."])
def test_names_outside_the_zones_are_refused_without_aa(authority: Authority, name: str) -> None:
    response = ask(authority, name, "A")
    assert response.rcode() == dns.rcode.REFUSED
    assert not response.flags & (dns.flags.AA | dns.flags.RA)
    assert response.answer == response.authority == []


def test_other_classes_are_refused(authority: Authority) -> None:
    for rdclass in (dns.rdataclass.CH, dns.rdataclass.HS, dns.rdataclass.ANY):
        response = ask(authority, NODE1, "A", rdclass=rdclass)
        assert response.rcode() == dns.rcode.REFUSED, rdclass
    chaos = ask(authority, "version.bind", "TXT", rdclass=dns.rdataclass.CH)
    assert chaos.rcode() == dns.rcode.REFUSED
    assert chaos.answer == []


def test_zone_transfers_are_refused_and_mail_types_not_implemented(authority: Authority) -> None:
    for rdtype in ("AXFR", "IXFR"):
        response = ask(authority, "bank.hypermesh", rdtype)
        assert response.rcode() == dns.rcode.REFUSED, rdtype
        assert response.flags & dns.flags.AA
    for rdtype in ("MAILA", "MAILB"):
        assert ask(authority, NODE1, rdtype).rcode() == dns.rcode.NOTIMP, rdtype
    assert ask(authority, NODE1, dns.rdatatype.TKEY).rcode() == dns.rcode.FORMERR


# --- malformed and unusual messages ------------------------------------------------------------


def header(query_id: int, flags: int, qd: int = 0, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", query_id, flags, qd, an, ns, ar)


def test_unreadable_headers_and_responses_are_dropped(authority: Authority) -> None:
    for wire in (b"", b"\x12", b"\x12\x34" + b"\x00" * 9):
        assert authority.answer(wire, transport="udp") is None
    response = dns.message.make_response(dns.message.make_query(NODE1, "A"))
    assert authority.answer(response.to_wire(), transport="udp") is None  # QR=1: no loops
    assert authority.answer(header(7, 0x8000), transport="tcp") is None


def test_unparsable_body_is_formerr_with_the_header_echoed(authority: Authority) -> None:
    wire = header(0xBEEF, dns.flags.RD | dns.flags.CD, qd=1) + b"\x05junk"
    answer = authority.answer(wire, transport="udp")
    assert answer == header(0xBEEF, 0x8000 | dns.flags.RD | dns.flags.CD | dns.rcode.FORMERR)
    parsed = dns.message.from_wire(answer)
    assert parsed.rcode() == dns.rcode.FORMERR


def test_question_count_other_than_one_is_formerr(authority: Authority) -> None:
    empty = dns.message.Message(id=4242)
    response = dns.message.from_wire(authority.answer(empty.to_wire(), transport="udp") or b"")
    assert (response.id, response.rcode(), response.question) == (4242, dns.rcode.FORMERR, [])
    two = dns.message.make_query(NODE1, "A")
    two.question.append(
        dns.rrset.RRset(dns.name.from_text(NODE2), dns.rdataclass.IN, dns.rdatatype.A)
    )
    response = dns.message.from_wire(authority.answer(two.to_wire(), transport="udp") or b"")
    assert response.rcode() == dns.rcode.FORMERR
    assert response.answer == []


@pytest.mark.parametrize("opcode", [dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY])
def test_opcodes_other_than_query_are_not_implemented(authority: Authority, opcode: int) -> None:
    query = dns.message.make_query(NODE1, "A")
    query.set_opcode(opcode)  # type: ignore[arg-type]
    response = dns.message.from_wire(authority.answer(query.to_wire(), transport="udp") or b"")
    assert response.id == query.id
    assert response.opcode() == opcode
    assert response.rcode() == dns.rcode.NOTIMP


def test_dynamic_update_is_not_implemented(authority: Authority) -> None:
    update = dns.update.UpdateMessage("bank.hypermesh")
    update.add("evil", 300, "A", "192.0.2.66")
    wire = authority.answer(update.to_wire(), transport="tcp")
    assert wire is not None
    assert struct.unpack("!HH", wire[:4]) == (update.id, 0x8000 | (dns.opcode.UPDATE << 11) | 4)


def test_edns_is_echoed_with_our_payload_and_the_do_bit(authority: Authority) -> None:
    plain = ask(authority, NODE1, "A")
    assert plain.edns == -1
    response = ask(authority, NODE1, "A", use_edns=0, payload=4096, want_dnssec=True)
    assert response.edns == 0
    assert response.payload == EDNS_PAYLOAD
    assert response.ednsflags & dns.flags.DO
    assert response.options == ()
    cookie = dns.edns.CookieOption(b"\x01" * 8, b"")
    with_cookie = ask(authority, NODE1, "A", use_edns=0, options=[cookie])
    assert with_cookie.rcode() == dns.rcode.NOERROR
    assert not with_cookie.ednsflags & dns.flags.DO


def test_unknown_edns_version_is_badvers(authority: Authority) -> None:
    response = ask(authority, NODE1, "A", use_edns=1)
    assert response.rcode() == dns.rcode.BADVERS
    assert response.edns == 0
    assert response.answer == []


def test_tsig_signed_queries_are_notauth(authority: Authority) -> None:
    query = dns.message.make_query(NODE1, "A")
    query.use_tsig(dns.tsigkeyring.from_text({"key.": "c2VjcmV0c2VjcmV0c2VjcmV0"}))
    wire = authority.answer(query.to_wire(), transport="udp")
    assert wire is not None
    response = dns.message.from_wire(wire, keyring=False)
    assert response.rcode() == dns.rcode.NOTAUTH
    assert response.answer == []


def test_unknown_transport_is_a_typed_error(authority: Authority) -> None:
    query = dns.message.make_query(NODE1, "A").to_wire()
    with pytest.raises(DnsServerError, match="unknown transport 'quic'"):
        authority.answer(query, transport="quic")  # type: ignore[arg-type]


# --- sizes: truncation and TCP ------------------------------------------------------------------

BIG_TEXTS = tuple(f"{i:02d}" + "x" * 253 for i in range(16))  # 16 strings of 255 bytes
BIG = record(
    "big.bank.hypermesh",
    *(f"2001:db8::{i:x}" for i in range(1, 17)),
    services=tuple(ServiceEndpoint("stoq", "udp", 5000 + i) for i in range(8)),
    texts=BIG_TEXTS,
)


@pytest.fixture(scope="module")
def big() -> Authority:
    return Authority({BIG.name: BIG})


def test_udp_answer_too_large_is_truncated_to_the_question(big: Authority) -> None:
    for use_edns, payload in ((None, None), (0, 4096), (0, 512)):
        response = ask(big, BIG.name, "TXT", use_edns=use_edns, payload=payload)
        assert response.flags & dns.flags.TC, (use_edns, payload)
        assert response.rcode() == dns.rcode.NOERROR
        assert response.answer == response.authority == response.additional == []
        assert response.question[0].name == dns.name.from_text(BIG.name)
        assert response.edns == (-1 if use_edns is None else 0)


def test_the_same_answer_is_whole_over_tcp(big: Authority) -> None:
    response = ask(big, BIG.name, "TXT", transport="tcp")
    assert not response.flags & dns.flags.TC
    (answer,) = response.answer
    assert len(answer) == 17
    assert {b"".join(r.strings).decode() for r in answer} == {
        *BIG_TEXTS,
        f"node-id={NODE_ID.hex()}",
    }


def test_additional_data_is_dropped_before_truncating(big: Authority) -> None:
    response = ask(big, f"_stoq._udp.{BIG.name}", "SRV")  # 512 bytes: 8 SRV fit, 16 AAAA do not
    assert not response.flags & dns.flags.TC
    assert len(response.answer[0]) == 8
    assert response.additional == []
    whole = ask(big, f"_stoq._udp.{BIG.name}", "SRV", transport="tcp")
    assert len(whole.additional[0]) == 16


def test_the_client_payload_is_honoured_up_to_max_udp(big: Authority) -> None:
    query = dns.message.make_query(BIG.name, "TXT", use_edns=0, payload=8192)
    wire = big.answer(query.to_wire(), transport="udp", max_udp=8192, now=NOW)
    assert wire is not None
    response = dns.message.from_wire(wire)
    assert not response.flags & dns.flags.TC
    assert response.payload == 8192
    assert len(response.answer[0]) == 17


# --- validity, TTLs, zones and construction -----------------------------------------------------


def test_expired_and_future_records_are_absent(authority: Authority) -> None:
    after = NODE2_RECORD.not_after + timedelta(seconds=1)
    assert ask(authority, NODE2, "A", now=after).rcode() == dns.rcode.NXDOMAIN
    before = NODE2_RECORD.not_before - timedelta(seconds=1)
    assert ask(authority, NODE2, "A", now=before).rcode() == dns.rcode.NXDOMAIN
    # An empty non-terminal exists only while a record below it is live.
    later = DEEP_RECORD.not_after + timedelta(seconds=1)
    assert ask(authority, "deep.bank.hypermesh", "A", now=later).rcode() == dns.rcode.NXDOMAIN
    assert ask(authority, "bank.hypermesh", "SOA", now=later).rcode() == dns.rcode.NOERROR


def test_ttl_never_outlives_the_record(authority: Authority) -> None:
    near_end = NODE1_RECORD.not_after - timedelta(seconds=30)
    (answer,) = ask(authority, NODE1, "A", now=near_end).answer
    assert answer.ttl == 30


def test_explicit_zones_and_the_closest_zone_wins() -> None:
    authority = Authority(RECORDS, zones=("hypermesh", "deep.bank.hypermesh"))
    assert authority.zones == ("deep.bank.hypermesh", "hypermesh")
    assert soa_of(ask(authority, "x.hypermesh", "A")).name.to_text() == "hypermesh."
    assert soa_of(ask(authority, "x.deep.bank.hypermesh", "A")).name.to_text() == (
        "deep.bank.hypermesh."
    )
    deep_soa = ask(authority, "deep.bank.hypermesh", "SOA").answer[0][0]
    assert deep_soa.serial == 2
    top_soa = ask(authority, "hypermesh", "SOA").answer[0][0]
    assert top_soa.serial == 9
    assert ask(authority, "bank.hypermesh", "A").rcode() == dns.rcode.NOERROR  # non-terminal
    assert ask(authority, "example.com", "A").rcode() == dns.rcode.REFUSED


def test_a_single_label_name_is_its_own_zone() -> None:
    gateway = record("gateway", "192.0.2.1", serial=5)
    authority = Authority({"gateway": gateway})
    assert authority.zones == ("gateway",)
    (answer,) = ask(authority, "gateway", "A").answer
    assert texts_of(answer) == {"192.0.2.1"}
    assert ask(authority, "x.gateway", "A").rcode() == dns.rcode.NXDOMAIN
    assert ask(authority, "com", "A").rcode() == dns.rcode.REFUSED


def test_a_zone_without_records_has_a_default_soa() -> None:
    authority = Authority({}, zones=("empty.hypermesh",))
    (answer,) = ask(authority, "empty.hypermesh", "SOA").answer
    assert answer.ttl == DEFAULT_TTL
    assert answer[0].serial == 0
    assert ask(authority, "a.empty.hypermesh", "A").rcode() == dns.rcode.NXDOMAIN


def test_construction_refuses_what_it_cannot_serve() -> None:
    with pytest.raises(DnsServerError, match=r"record 'node1.bank.hypermesh' is filed under 'x'"):
        Authority({"x": NODE1_RECORD})
    with pytest.raises(
        DnsServerError, match=r"record 'node1.bank.hypermesh' is outside every zone \(example.com\)"
    ):
        Authority({NODE1: NODE1_RECORD}, zones=("example.com",))
    with pytest.raises(DnsServerError, match="is the root zone"):
        Authority({NODE1: NODE1_RECORD}, zones=(".",))
    with pytest.raises(DnsServerError, match=r"zone 'a\.\.b' is not a DNS name"):
        Authority({}, zones=("a..b",))


def test_records_property_gives_back_what_is_served(authority: Authority) -> None:
    assert authority.records == RECORDS
    # db.deep.bank.hypermesh's parent lies inside bank.hypermesh: not a zone of its own.
    assert authority.zones == ("bank.hypermesh",)


# --- robustness (hypothesis) ---------------------------------------------------------------------


def check_robust(authority: Authority, wire: bytes, transport: str) -> None:
    answer = authority.answer(wire, transport=transport, now=NOW)  # type: ignore[arg-type]
    if answer is None:
        assert len(wire) < 12 or wire[2] & 0x80
        return
    limit = 65535 if transport == "tcp" else EDNS_PAYLOAD
    assert len(answer) <= limit
    response = dns.message.from_wire(answer, keyring=False)
    assert response.id == struct.unpack("!H", wire[:2])[0]
    assert response.flags & dns.flags.QR
    assert not response.flags & dns.flags.RA


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wire=st.binary(max_size=700), transport=st.sampled_from(["udp", "tcp"]))
def test_arbitrary_bytes_never_raise(authority: Authority, wire: bytes, transport: str) -> None:
    check_robust(authority, wire, transport)


NAMES = [NODE1, NODE2, DEEP, "bank.hypermesh", f"_stoq._udp.{NODE1}", "x.bank.hypermesh", "a.b"]
TYPES = ["A", "AAAA", "TXT", "SRV", "SOA", "ANY", "MX", "NS", "AXFR", "CAA"]


@st.composite
def mutated_queries(draw: st.DrawFn) -> bytes:
    use_edns = draw(st.sampled_from([None, 0, 1]))
    query = dns.message.make_query(
        draw(st.sampled_from(NAMES)),
        draw(st.sampled_from(TYPES)),
        use_edns=use_edns,
        want_dnssec=use_edns is not None and draw(st.booleans()),
        payload=None if use_edns is None else draw(st.integers(0, 65535)),
    )
    query.id = draw(st.integers(0, 65535))
    wire = bytearray(query.to_wire())
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "append"]))
        position = draw(st.integers(0, max(0, len(wire) - 1)))
        if kind == "flip" and wire:
            wire[position] = draw(st.integers(0, 255))
        elif kind == "cut":
            del wire[position:]
        elif kind == "insert":
            wire[position:position] = draw(st.binary(min_size=1, max_size=8))
        else:
            wire += draw(st.binary(min_size=1, max_size=40))
    return bytes(wire)


@settings(max_examples=600, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wire=mutated_queries(), transport=st.sampled_from(["udp", "tcp"]))
def test_mutated_queries_never_raise(authority: Authority, wire: bytes, transport: str) -> None:
    check_robust(authority, wire, transport)


LABEL = st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=st.lists(LABEL, min_size=0, max_size=3), rdtype=st.sampled_from(TYPES[:7]))
def test_every_name_in_the_zone_gets_an_authoritative_answer(
    authority: Authority, labels: list[str], rdtype: str
) -> None:
    name = ".".join([*labels, "bank.hypermesh"])
    response = ask(authority, name, rdtype)
    assert response.flags & dns.flags.AA
    assert response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    if response.rcode() == dns.rcode.NXDOMAIN or not response.answer:
        assert soa_of(response).name.to_text() == "bank.hypermesh."
    for rrset in response.answer:
        assert rrset.name == dns.name.from_text(name)


# --- the asyncio server on loopback ---------------------------------------------------------------


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def live() -> Authority:
    """Records valid now (the server answers at the real current time)."""
    now = datetime.now(UTC)
    window = {"not_before": now - timedelta(hours=1), "not_after": now + timedelta(days=1)}
    return Authority(
        {
            NODE1: record(
                NODE1,
                "127.0.0.1",
                "::1",
                services=(ServiceEndpoint("stoq", "udp", 4433, 1, 2),),
                texts=("hello",),
                **window,
            ),
            BIG.name: record(BIG.name, "2001:db8::1", texts=BIG_TEXTS, **window),
        }
    )


async def framed(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack("!H", await reader.readexactly(2))
    return await reader.readexactly(length)


def test_server_answers_over_udp_and_tcp(live: Authority) -> None:
    async def main() -> None:
        async with await DnsServer.start([(LOOPBACK, 0)], live) as server:
            (address,) = server.addresses
            assert address[0] == LOOPBACK
            assert address[1] > 0
            udp = await dns.asyncquery.udp(
                dns.message.make_query(NODE1, "A"), LOOPBACK, port=address[1], timeout=10
            )
            assert texts_of(udp.answer[0]) == {"127.0.0.1"}
            tcp = await dns.asyncquery.tcp(
                dns.message.make_query(NODE1, "AAAA"), LOOPBACK, port=address[1], timeout=10
            )
            assert texts_of(tcp.answer[0]) == {"::1"}
            assert server.internal_errors == 0

    run(main())


def test_truncated_udp_answer_is_retried_over_tcp(live: Authority) -> None:
    async def main() -> None:
        async with await DnsServer.start([(LOOPBACK, 0)], live) as server:
            port = server.addresses[0][1]
            query = dns.message.make_query(BIG.name, "TXT")
            udp = await dns.asyncquery.udp(query, LOOPBACK, port=port, timeout=10)
            assert udp.flags & dns.flags.TC
            assert udp.answer == []
            response, used_tcp = await dns.asyncquery.udp_with_fallback(
                query, LOOPBACK, port=port, timeout=10
            )
            assert used_tcp
            assert len(response.answer[0]) == 17

    run(main())


def test_tcp_carries_several_pipelined_queries_in_order(live: Authority) -> None:
    async def main() -> None:
        async with await DnsServer.start([(LOOPBACK, 0)], live) as server:
            reader, writer = await asyncio.open_connection(LOOPBACK, server.addresses[0][1])
            queries = [dns.message.make_query(NODE1, t) for t in ("A", "AAAA", "TXT", "MX")]
            writer.write(b"".join(q.to_wire(prepend_length=True) for q in queries))
            await writer.drain()
            responses = [dns.message.from_wire(await framed(reader)) for _ in queries]
            assert [r.id for r in responses] == [q.id for q in queries]
            assert [len(r.answer) for r in responses] == [1, 1, 1, 0]
            writer.close()
            await writer.wait_closed()

    run(main())


def test_tcp_garbage_closes_that_connection_only(live: Authority) -> None:
    async def main() -> None:
        async with await DnsServer.start([(LOOPBACK, 0)], live) as server:
            port = server.addresses[0][1]
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            writer.write(b"\x00\x03abc")  # no readable header: nothing to answer
            await writer.drain()
            assert await reader.read() == b""
            writer.close()
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            formerr = header(99, 0, qd=1) + b"\xff"
            writer.write(struct.pack("!H", len(formerr)) + formerr)
            await writer.drain()
            response = dns.message.from_wire(await framed(reader))
            assert (response.id, response.rcode()) == (99, dns.rcode.FORMERR)
            writer.close()
            answer = await dns.asyncquery.tcp(
                dns.message.make_query(NODE1, "A"), LOOPBACK, port=port, timeout=10
            )
            assert answer.rcode() == dns.rcode.NOERROR
            assert server.internal_errors == 0

    run(main())


def test_idle_tcp_connections_are_closed(live: Authority) -> None:
    async def main() -> None:
        server = await DnsServer.start([(LOOPBACK, 0)], live, idle_timeout=0.2)
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, server.addresses[0][1])
            writer.write(b"\x00")  # half a length prefix, then silence
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 30) == b""
            writer.close()
        finally:
            await server.close()

    run(main())


def test_connections_beyond_the_cap_are_closed(live: Authority) -> None:
    async def main() -> None:
        server = await DnsServer.start([(LOOPBACK, 0)], live, max_connections=1)
        try:
            port = server.addresses[0][1]
            reader1, writer1 = await asyncio.open_connection(LOOPBACK, port)
            writer1.write(dns.message.make_query(NODE1, "A").to_wire(prepend_length=True))
            await framed(reader1)  # the first connection is being served
            reader2, writer2 = await asyncio.open_connection(LOOPBACK, port)
            assert await asyncio.wait_for(reader2.read(), 30) == b""
            assert server.refused_connections == 1
            writer1.write(dns.message.make_query(NODE1, "AAAA").to_wire(prepend_length=True))
            assert dns.message.from_wire(await framed(reader1)).answer  # still served
            writer1.close()
            writer2.close()
        finally:
            await server.close()

    run(main())


def test_reloading_swaps_the_authority(live: Authority) -> None:
    async def main() -> None:
        async with await DnsServer.start([(LOOPBACK, 0)], live) as server:
            port = server.addresses[0][1]
            now = datetime.now(UTC)
            moved = record(
                NODE1,
                "127.0.0.9",
                not_before=now - timedelta(hours=1),
                not_after=now + timedelta(days=1),
            )
            server.authority = Authority({NODE1: moved})
            assert server.authority.records == {NODE1: moved}
            response = await dns.asyncquery.udp(
                dns.message.make_query(NODE1, "A"), LOOPBACK, port=port, timeout=10
            )
            assert texts_of(response.answer[0]) == {"127.0.0.9"}

    run(main())


def test_a_flood_of_malformed_packets_leaves_the_server_answering(live: Authority) -> None:
    rng = random.Random(8)
    valid = dns.message.make_query(NODE1, "A", use_edns=0).to_wire()
    packets = []
    for _ in range(3000):
        if rng.random() < 0.5:
            packets.append(rng.randbytes(rng.randint(0, 600)))
        else:
            packet = bytearray(valid)
            for _ in range(rng.randint(1, 5)):
                packet[rng.randrange(len(packet))] = rng.randrange(256)
            packets.append(
                bytes(packet[: rng.randint(0, len(packet))] if rng.random() < 0.3 else packet)
            )

    async def main() -> None:
        async with await DnsServer.start([(LOOPBACK, 0)], live) as server:
            port = server.addresses[0][1]
            flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            flood.setblocking(False)
            replies: list[bytes] = []
            try:
                for packet in packets:
                    flood.sendto(packet, (LOOPBACK, port))
                    await asyncio.sleep(0)
                    with contextlib.suppress(BlockingIOError):
                        replies.append(flood.recv(65535))
                response = await dns.asyncquery.udp(
                    dns.message.make_query(NODE1, "A"), LOOPBACK, port=port, timeout=10
                )
                with contextlib.suppress(BlockingIOError):
                    while True:
                        replies.append(flood.recv(65535))
            finally:
                flood.close()
            assert texts_of(response.answer[0]) == {"127.0.0.1"}
            assert server.internal_errors == 0
            # What the flood got back (FORMERR, NOTIMP, REFUSED... or answers) is all DNS.
            sent_ids = {packet[:2] for packet in packets}
            assert replies
            for reply in replies:
                assert dns.message.from_wire(reply, keyring=False).flags & dns.flags.QR
                assert reply[:2] in sent_ids

    run(main())


def test_ipv6_loopback(live: Authority) -> None:
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")

    async def main() -> None:
        async with await DnsServer.start([("::1", 0), (LOOPBACK, 0)], live) as server:
            (v6, v4) = server.addresses
            assert v6[0] == "::1"
            assert v4[0] == LOOPBACK
            udp = await dns.asyncquery.udp(
                dns.message.make_query(NODE1, "A"), "::1", port=v6[1], timeout=10
            )
            tcp = await dns.asyncquery.tcp(
                dns.message.make_query(NODE1, "A"), "::1", port=v6[1], timeout=10
            )
            assert texts_of(udp.answer[0]) == texts_of(tcp.answer[0]) == {"127.0.0.1"}

    run(main())


def test_start_refuses_bad_addresses_and_busy_ports(live: Authority) -> None:
    async def main() -> None:
        with pytest.raises(DnsServerError, match="listen addresses must be IP addresses"):
            await DnsServer.start([("localhost", 0)], live)
        with pytest.raises(DnsServerError, match="nothing to listen on"):
            await DnsServer.start([], live)
        with pytest.raises(DnsServerError, match=r"max_udp 100 is outside 512\.\.65535"):
            await DnsServer.start([(LOOPBACK, 0)], live, max_udp=100)
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            busy.bind((LOOPBACK, 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            with pytest.raises(DnsServerError, match=rf"cannot listen on 127.0.0.1:{port} \(tcp\)"):
                await DnsServer.start([(LOOPBACK, port)], live)
        finally:
            busy.close()
        # Nothing stayed bound by the failed start: the port is free for UDP and TCP again.
        async with await DnsServer.start([(LOOPBACK, port)], live) as server:
            assert server.addresses == ((LOOPBACK, port),)

    run(main())


# --- dig, an unmodified client --------------------------------------------------------------------


async def dig(port: int, *arguments: str) -> str:
    assert DIG is not None
    process = await asyncio.create_subprocess_exec(
        DIG,
        f"@{LOOPBACK}",
        "-p",
        str(port),
        "+time=5",
        "+tries=1",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


@needs_dig
def test_dig_resolves_our_names_over_udp_and_tcp(live: Authority) -> None:
    async def main() -> None:
        async with await DnsServer.start([(LOOPBACK, 0)], live) as server:
            port = server.addresses[0][1]
            assert (await dig(port, NODE1, "A", "+short")).split() == ["127.0.0.1"]
            assert (await dig(port, NODE1, "A", "+short", "+tcp")).split() == ["127.0.0.1"]
            assert (await dig(port, NODE1, "AAAA", "+short")).split() == ["::1"]
            txt = (await dig(port, NODE1, "TXT", "+short")).splitlines()
            assert sorted(txt) == sorted(['"hello"', f'"node-id={NODE_ID.hex()}"'])
            srv = await dig(port, f"_stoq._udp.{NODE1}", "SRV", "+short")
            assert srv.split() == ["1", "2", "4433", f"{NODE1}."]
            full = await dig(port, NODE1, "A")
            assert "status: NOERROR" in full
            assert "flags: qr aa rd;" in full
            assert "status: NXDOMAIN" in await dig(port, f"nobody.{NODE1}", "A")
            assert "status: REFUSED" in await dig(port, "example.com", "A")
            # dig retries a truncated UDP answer over TCP by itself.
            big = await dig(port, BIG.name, "TXT", "+short")
            assert len(big.splitlines()) == 17
            assert server.internal_errors == 0

    run(main())


# --- stoq dns-server, end to end with a signed record set -----------------------------------------


@pytest.fixture(scope="module")
def zone_file(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A record set exported the way ``trustchain names export`` writes it: good records, one
    signed outside the signer's namespace, one expired, one revoked, one with a changed byte."""
    signer = pki.node("ns.bank.hypermesh")
    key, chain = signer.signing_key, signer.chain
    now = datetime.now(UTC).replace(microsecond=0)
    window = {"not_before": now - timedelta(hours=1), "not_after": now + timedelta(hours=20)}

    def signed(name: str, *addresses: str, **kwargs: object) -> SignedRecord:
        fields = {**window, **kwargs}
        return sign_record(record(name, *addresses, **fields), key, chain)

    good = signed(
        NODE1,
        "127.0.0.1",
        "::1",
        services=(ServiceEndpoint("stoq", "udp", 4433),),
        texts=("served by stoq",),
        ttl=90,
        serial=4,
    )
    second = signed(NODE2, "127.0.0.2", serial=1)
    outside = signed("evil.other.hypermesh", "127.0.0.66")
    expired = signed(
        "old.bank.hypermesh",
        "127.0.0.67",
        not_before=now - timedelta(days=2),
        not_after=now - timedelta(days=1),
    )
    revoked = signed("gone.bank.hypermesh", "127.0.0.68", serial=2)
    revocation = sign_revocation(Revocation("gone.bank.hypermesh", 2, now), key, chain)
    altered = signed("altered.bank.hypermesh", "127.0.0.69")
    tampered = SignedRecord(
        record("altered.bank.hypermesh", "127.0.0.70", **window), altered.chain, altered.signature
    )
    record_set = RecordSet(
        records=(good, second, outside, expired, revoked, tampered),
        revocations=(revocation,),
        anchors=(pki.root.certificate,),
    )
    path = tmp_path_factory.mktemp("dns-zone") / "names.tcns"
    path.write_bytes(encode_record_set(record_set))
    return path


def test_load_record_set_serves_the_good_and_names_every_refusal(zone_file: Path, pki: Pki) -> None:
    loaded = load_record_set(zone_file)
    assert set(loaded.authority.records) == {NODE1, NODE2}
    assert loaded.authority.zones == ("bank.hypermesh",)
    reasons = {refusal.name: refusal.reason for refusal in loaded.refused}
    assert reasons == {
        "evil.other.hypermesh": NameRejection.OUTSIDE_NAMESPACE,
        "old.bank.hypermesh": NameRejection.EXPIRED,
        "gone.bank.hypermesh": NameRejection.REVOKED,
        "altered.bank.hypermesh": NameRejection.BAD_SIGNATURE,
    }
    pinned = load_record_set(zone_file, trust=[pki.root.certificate])
    assert set(pinned.authority.records) == {NODE1, NODE2}


def test_pinning_other_roots_refuses_every_record(zone_file: Path, pki: Pki) -> None:
    other = pki.intermediates[1].certificate  # a CA that did not sign the bank chain
    loaded = load_record_set(zone_file, trust=[other])
    assert loaded.authority.records == {}
    refused = {r.name: r.reason for r in loaded.refused}
    assert refused[NODE1] is NameRejection.CHAIN_REJECTED


def test_load_record_set_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(DnsServerError, match=r"cannot read zone file '.*missing': No such file"):
        load_record_set(tmp_path / "missing")
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a record set")
    with pytest.raises(DnsServerError, match=r"is not a record set: .*bad magic"):
        load_record_set(junk)


def test_cli_unreadable_zone_file_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.tcns"
    status = stoq_main(["dns-server", "--listen", "127.0.0.1:0", "--zone-file", str(missing)])
    assert status == 1
    assert (
        f"stoq: cannot read zone file '{missing}': No such file or directory"
        in capsys.readouterr().err
    )
    junk = tmp_path / "junk.tcns"
    junk.write_bytes(b"TCNS\x02")
    assert stoq_main(["dns-server", "--listen", "127.0.0.1:0", "--zone-file", str(junk)]) == 1
    assert "is not a record set: record set version 2, expected 1" in capsys.readouterr().err


@pytest.fixture
def dns_server_process(zone_file: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stoq",
            "dns-server",
            "--listen",
            "127.0.0.1:0",
            "--zone-file",
            str(zone_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        udp_line = process.stdout.readline()
        tcp_line = process.stdout.readline()
        assert udp_line.startswith("listening 127.0.0.1:"), (udp_line, process.stderr)
        port = int(udp_line.rsplit(":", 1)[1])
        assert tcp_line == f"listening tcp 127.0.0.1:{port}\n"
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@needs_dig
def test_cli_dns_server_answers_dig_and_reports_refusals(
    dns_server_process: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = dns_server_process

    async def main() -> None:
        assert (await dig(port, NODE1, "A", "+short")).split() == ["127.0.0.1"]
        assert (await dig(port, NODE1, "AAAA", "+short", "+tcp")).split() == ["::1"]
        assert (await dig(port, NODE2, "A", "+short", "+tcp")).split() == ["127.0.0.2"]
        srv = await dig(port, f"_stoq._udp.{NODE1}", "SRV", "+short")
        assert srv.split() == ["0", "0", "4433", f"{NODE1}."]
        for refused_name in ("old.bank.hypermesh", "gone.bank.hypermesh", "altered.bank.hypermesh"):
            assert "status: NXDOMAIN" in await dig(port, refused_name, "A"), refused_name
        assert "status: REFUSED" in await dig(port, "evil.other.hypermesh", "A")

    run(main())
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    lines = sorted(line for line in stderr.splitlines() if line.startswith("refused "))
    assert [line.split(":", 1)[0] for line in lines] == [
        "refused altered.bank.hypermesh",
        "refused evil.other.hypermesh",
        "refused gone.bank.hypermesh",
        "refused old.bank.hypermesh",
    ]
    assert (
        "refused evil.other.hypermesh: OUTSIDE_NAMESPACE: evil.other.hypermesh is outside" in stderr
    )
    assert "refused old.bank.hypermesh: EXPIRED: the record expired at" in stderr
    assert "refused gone.bank.hypermesh: REVOKED: gone.bank.hypermesh serial 2 is revoked" in stderr
    assert "refused altered.bank.hypermesh: BAD_SIGNATURE: " in stderr


def test_repeated_queries_reuse_the_answer_with_their_own_id() -> None:
    """Without ``now``, the answer to a query is kept for a second and served again for the
    same query bytes under another ID; it is the answer the uncached path gives."""
    live = Authority(
        {
            r.name: r
            for r in (
                record(NODE2, "192.0.2.7", not_before=datetime.now(UTC) - timedelta(days=1),
                       not_after=datetime.now(UTC) + timedelta(days=1), ttl=60),
            )
        }
    )  # fmt: skip
    first = dns.message.make_query(NODE2, "A")
    first.id = 1
    second = dns.message.make_query(NODE2, "A")
    second.id = 2
    one = live.answer(first.to_wire(), transport="udp")
    two = live.answer(second.to_wire(), transport="udp")
    assert one is not None
    assert two is not None
    assert one[:2] == b"\x00\x01"
    assert two[:2] == b"\x00\x02"
    assert one[2:] == two[2:]
    fresh = live.answer(second.to_wire(), transport="udp", now=datetime.now(UTC))
    assert fresh == two
    # Another question, or another transport, is another answer.
    other = dns.message.make_query(NODE2, "AAAA")
    other.id = 2
    answered = live.answer(other.to_wire(), transport="udp")
    assert answered is not None
    assert dns.message.from_wire(answered).answer == []
    over_tcp = live.answer(second.to_wire(), transport="tcp")
    assert over_tcp is not None
    assert dns.message.from_wire(over_tcp).answer == dns.message.from_wire(two).answer
    # Garbage is never cached as an answer.
    assert live.answer(b"\x00\x01\x00", transport="udp") is None
