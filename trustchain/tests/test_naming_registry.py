"""Tests of the name registry (:mod:`trustchain.naming.registry`): updates by serial, stale and
revoked records, expiry and purge, persistence, crash safety of every change, lookups that
verify again, and replication (merge) between the registries of two TrustChain homes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from trustchain.ca.authority import CertificateAuthority
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.crypto.keystore import KeyStore
from trustchain.crypto.signatures import SigningKey
from trustchain.naming import (
    NameNotFound,
    NameRecord,
    NameRecordRejected,
    NameRegistry,
    NameRejection,
    RecordSet,
    RegistryError,
    Revocation,
    SignedRecord,
    SignedRevocation,
    decode_record_set,
    encode_record_set,
    sign_record,
    sign_revocation,
)

NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Signer:
    key: SigningKey
    chain: tuple[x509.Certificate, ...]
    serial: int


class Home:
    """A TrustChain home with a root and one entity CA for ``namespace``."""

    def __init__(self, path: Path, root: str, entity: str, namespace: str) -> None:
        self.keystore = KeyStore.open(path)
        self.ca = CertificateAuthority(path, self.keystore)
        self.root = self.ca.init_root(root).certificate
        self.intermediate = self.ca.issue_intermediate(entity, namespace).certificate
        self.entity = entity

    def signer(self, name: str) -> Signer:
        issued = self.ca.issue(self.entity, "node", name)
        assert issued.key_name is not None
        key = self.keystore.signing_key(issued.key_name, issued.key_version)
        return Signer(key, (issued.certificate, *issued.chain), issued.serial)

    def close(self) -> None:
        self.ca.close()
        self.keystore.close()


@dataclass
class World:
    bank: Home
    shop: Home
    teller: Signer
    teller2: Signer
    cashier: Signer

    def store(self) -> TrustStore:
        """Trusts both homes' roots (a federation), knows both intermediates."""
        store = TrustStore(
            [TrustAnchor(self.bank.root, "bank root"), TrustAnchor(self.shop.root, "shop root")]
        )
        store.add_certificate(self.bank.intermediate)
        store.add_certificate(self.shop.intermediate)
        return store


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("registry")
    bank = Home(base / "bank", "bank-root", "bank", "bank.hypermesh")
    shop = Home(base / "shop", "shop-root", "shop", "shop.hypermesh")
    yield World(
        bank,
        shop,
        bank.signer("teller.bank.hypermesh"),
        bank.signer("teller2.bank.hypermesh"),
        shop.signer("cashier.shop.hypermesh"),
    )
    bank.close()
    shop.close()


@pytest.fixture
def registry(world: World, tmp_path: Path) -> Iterator[NameRegistry]:
    with NameRegistry.open(tmp_path / "names" / "names.db", world.store()) as opened:
        yield opened


def record(name: str = "www.bank.hypermesh", serial: int = 1, **changes: object) -> NameRecord:
    base = NameRecord(
        name,
        b"\x07" * 32,
        ("127.0.0.1",),
        ttl=30,
        serial=serial,
        not_before=NOW - timedelta(minutes=1),
        not_after=NOW + timedelta(hours=2),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def signed(signer: Signer, value: NameRecord) -> SignedRecord:
    return sign_record(value, signer.key, signer.chain)


def revoke(signer: Signer, name: str, serial: int) -> SignedRevocation:
    """``signer``'s signed revocation of ``name`` up to ``serial``."""
    return sign_revocation(Revocation(name, serial, NOW), signer.key, signer.chain)


def refused(reason: NameRejection, registry: NameRegistry, item: SignedRecord) -> str:
    with pytest.raises(NameRecordRejected) as info:
        registry.add(item)
    assert info.value.reason is reason, str(info.value)
    return info.value.detail


_DUMP_QUERIES = {
    "records": "SELECT * FROM records ORDER BY name",
    "serials": "SELECT * FROM serials ORDER BY name",
    "revocations": "SELECT * FROM revocations ORDER BY name",
    "meta": "SELECT * FROM meta ORDER BY key",
}


def dump(path: Path) -> list[tuple[object, ...]]:
    """Every row of every table, read by a separate connection."""
    conn = sqlite3.connect(path)
    try:
        rows: list[tuple[object, ...]] = []
        for table, query in _DUMP_QUERIES.items():
            rows += [(table, *row) for row in conn.execute(query)]
        return rows
    finally:
        conn.close()


# --- updates --------------------------------------------------------------------------------------


def test_add_lookup_and_update_by_serial(registry: NameRegistry, world: World) -> None:
    assert registry.lookup("www.bank.hypermesh") is None
    with pytest.raises(NameNotFound, match=r"no record for www\.bank\.hypermesh"):
        registry.resolve("www.bank.hypermesh")
    first = record()
    assert registry.add(signed(world.teller, first)) == first
    assert registry.lookup("WWW.bank.hypermesh.") == first
    assert registry.names() == ["www.bank.hypermesh"]
    assert registry.next_serial("www.bank.hypermesh") == 2
    assert registry.next_serial("new.bank.hypermesh") == 1
    # another signer of the same namespace may update it with a higher serial
    second = record(serial=2, addresses=("127.0.0.2", "::1"))
    assert registry.add(signed(world.teller2, second)) == second
    assert registry.lookup("www.bank.hypermesh") == second
    stored = registry.signed("www.bank.hypermesh")
    assert stored is not None
    assert stored.chain[0] == world.teller2.chain[0]


def test_stale_and_conflicting_serials(registry: NameRegistry, world: World) -> None:
    registry.add(signed(world.teller, record(serial=5)))
    detail = refused(NameRejection.STALE_SERIAL, registry, signed(world.teller, record(serial=4)))
    assert "serial 4 is not above serial 5" in detail
    detail = refused(
        NameRejection.STALE_SERIAL, registry, signed(world.teller, record(serial=5, ttl=99))
    )
    assert "another record with serial 5" in detail
    # the very same record again (re-signed: Falcon signatures differ) changes nothing
    again = signed(world.teller2, record(serial=5))
    assert registry.add(again) == record(serial=5)
    assert registry.lookup("www.bank.hypermesh") == record(serial=5)


def test_add_refuses_what_does_not_verify(registry: NameRegistry, world: World) -> None:
    detail = refused(NameRejection.OUTSIDE_NAMESPACE, registry, signed(world.cashier, record()))
    assert "shop.hypermesh" in detail
    expired = record(not_before=NOW - timedelta(hours=3), not_after=NOW - timedelta(hours=1))
    refused(NameRejection.EXPIRED, registry, signed(world.teller, expired))
    with pytest.raises(NameRecordRejected) as info:
        registry.add(b"\x01\x01junk")
    assert info.value.reason is NameRejection.MALFORMED
    assert registry.names() == []


def test_persistence_across_reopen(world: World, tmp_path: Path) -> None:
    path = tmp_path / "names.db"
    with NameRegistry.open(path, world.store()) as registry:
        registry.add(signed(world.teller, record(serial=3)))
        registry.revoke(revoke(world.teller, "old.bank.hypermesh", 9))
    with NameRegistry.open(path, world.store()) as registry:
        assert registry.lookup("www.bank.hypermesh") == record(serial=3)
        revocation = registry.revocation("old.bank.hypermesh")
        assert revocation is not None
        assert revocation.serial == 9
        assert registry.next_serial("old.bank.hypermesh") == 10
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(RegistryError, match="schema version 2"):
        NameRegistry.open(path, world.store())


def test_closed_registry_refuses_work(world: World, tmp_path: Path) -> None:
    registry = NameRegistry.open(tmp_path / "names.db", world.store())
    registry.close()
    with pytest.raises(RegistryError, match="closed"):
        registry.names()


# --- revocation -----------------------------------------------------------------------------------


def test_revocation_stops_resolution_and_blocks_old_serials(
    registry: NameRegistry, world: World
) -> None:
    registry.add(signed(world.teller, record(serial=2)))
    registry.revoke(revoke(world.teller, "www.bank.hypermesh", 2))
    assert registry.lookup("www.bank.hypermesh") is None
    with pytest.raises(NameNotFound, match="revoked through serial 2"):
        registry.resolve("www.bank.hypermesh")
    assert registry.names() == []
    detail = refused(NameRejection.REVOKED, registry, signed(world.teller, record(serial=1)))
    assert "revoked (every serial up to 2" in detail
    refused(NameRejection.REVOKED, registry, signed(world.teller, record(serial=2)))
    # a fresh registration above the revoked serial is accepted
    assert registry.next_serial("www.bank.hypermesh") == 3
    registry.add(signed(world.teller, record(serial=3)))
    assert registry.lookup("www.bank.hypermesh") == record(serial=3)
    # an older revocation changes nothing; one from outside the namespace is refused
    registry.revoke(revoke(world.teller, "www.bank.hypermesh", 1))
    assert registry.lookup("www.bank.hypermesh") == record(serial=3)
    with pytest.raises(NameRecordRejected) as info:
        registry.revoke(revoke(world.cashier, "www.bank.hypermesh", 5))
    assert info.value.reason is NameRejection.OUTSIDE_NAMESPACE
    assert registry.lookup("www.bank.hypermesh") == record(serial=3)


# --- expiry ---------------------------------------------------------------------------------------


def test_expiry_purge_and_no_replay_after_purge(registry: NameRegistry, world: World) -> None:
    long_lived = record("a.bank.hypermesh", 1, not_after=NOW + timedelta(hours=20))
    short_lived = record("a.bank.hypermesh", 2, not_after=NOW + timedelta(minutes=30))
    other = record("b.bank.hypermesh", 1, not_after=NOW + timedelta(hours=20))
    old_signed = signed(world.teller, long_lived)
    registry.add(old_signed)
    registry.add(signed(world.teller, short_lived))
    registry.add(signed(world.teller, other))
    later = NOW + timedelta(hours=1)
    assert registry.lookup("a.bank.hypermesh", at=later) is None
    with pytest.raises(NameRecordRejected) as info:
        registry.resolve("a.bank.hypermesh", at=later)
    assert info.value.reason is NameRejection.EXPIRED
    assert registry.lookup("b.bank.hypermesh", at=later) == other
    exported = registry.record_set([world.bank.root], at=later)
    assert [item.record.name for item in exported.records] == ["b.bank.hypermesh"]
    assert registry.purge_expired(at=later) == 1
    assert registry.purge_expired(at=later) == 0
    assert registry.names() == ["b.bank.hypermesh"]
    # serial 1 is still valid, but serial 2 was accepted: no rollback after the purge
    with pytest.raises(NameRecordRejected) as info:
        registry.add(old_signed, at=later)
    assert info.value.reason is NameRejection.STALE_SERIAL


def test_lookup_verifies_again_when_the_signer_is_revoked(world: World, tmp_path: Path) -> None:
    store = world.store()
    signer = world.bank.signer("doomed.bank.hypermesh")
    with NameRegistry.open(tmp_path / "names.db", store) as registry:
        registry.add(signed(signer, record()))
        assert registry.lookup("www.bank.hypermesh") == record()
        world.bank.ca.revoke(signer.serial, "keyCompromise")
        store.add_crl(world.bank.ca.crl("bank"))
        assert registry.lookup("www.bank.hypermesh") is None
        with pytest.raises(NameRecordRejected) as info:
            registry.resolve("www.bank.hypermesh")
        assert info.value.reason is NameRejection.CHAIN_REJECTED
        assert "REVOKED" in info.value.detail


def test_invalid_names_have_no_record(registry: NameRegistry) -> None:
    assert registry.lookup("_stoq._udp.www.bank.hypermesh") is None
    with pytest.raises(NameNotFound, match="label"):
        registry.resolve("bad_name")


# --- crash safety ---------------------------------------------------------------------------------


def _fail_on(path: Path, table: str, event: str) -> None:
    """Make every ``event`` (INSERT/UPDATE/DELETE) on ``table`` fail, as a full disk would."""
    conn = sqlite3.connect(path)
    conn.execute(
        f"CREATE TRIGGER fail_{table}_{event.lower()} BEFORE {event} ON {table} "
        "BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END"
    )
    conn.commit()
    conn.close()


def test_failed_add_leaves_the_database_unchanged(world: World, tmp_path: Path) -> None:
    path = tmp_path / "names.db"
    with NameRegistry.open(path, world.store()) as registry:
        registry.add(signed(world.teller, record(serial=1)))
    before = dump(path)
    # the record row is written first, the serial second: the second write fails
    _fail_on(path, "serials", "UPDATE")
    with NameRegistry.open(path, world.store()) as registry:
        with pytest.raises(RegistryError, match="simulated write failure"):
            registry.add(signed(world.teller, record(serial=2)))
        assert registry.lookup("www.bank.hypermesh") == record(serial=1)
        # a refused record writes nothing either
        with pytest.raises(NameRecordRejected):
            registry.add(signed(world.cashier, record(serial=3)))
    assert dump(path) == before


def test_failed_revocation_leaves_the_database_unchanged(world: World, tmp_path: Path) -> None:
    path = tmp_path / "names.db"
    with NameRegistry.open(path, world.store()) as registry:
        registry.add(signed(world.teller, record(serial=1)))
    before = dump(path)
    # the revocation row is written first, the covered record deleted second: that fails
    _fail_on(path, "records", "DELETE")
    with NameRegistry.open(path, world.store()) as registry:
        with pytest.raises(RegistryError, match="simulated write failure"):
            registry.revoke(revoke(world.teller, "www.bank.hypermesh", 1))
        assert registry.revocation("www.bank.hypermesh") is None
        assert registry.lookup("www.bank.hypermesh") == record(serial=1)
    assert dump(path) == before


# --- replication ----------------------------------------------------------------------------------


def test_merge_between_two_homes_both_ways(world: World, tmp_path: Path) -> None:
    with (
        NameRegistry.open(tmp_path / "bank.db", world.store()) as bank,
        NameRegistry.open(tmp_path / "shop.db", world.store()) as shop,
    ):
        bank.add(signed(world.teller, record("www.bank.hypermesh", 1)))
        bank.add(signed(world.teller, record("api.bank.hypermesh", 4)))
        shop.add(signed(world.cashier, record("www.shop.hypermesh", 1)))
        shop.add(signed(world.cashier, record("pay.shop.hypermesh", 2)))
        # the shop holds an older copy of a bank name
        shop.add(signed(world.teller2, record("api.bank.hypermesh", 3)))

        # bank -> shop, through the file format
        sent = decode_record_set(encode_record_set(bank.record_set([world.bank.root])))
        report = shop.merge(sent)
        assert sorted((r.name, r.serial) for r in report.accepted) == [
            ("api.bank.hypermesh", 4),
            ("www.bank.hypermesh", 1),
        ]
        assert report.refused == []
        assert report.unchanged == 0

        # shop -> bank: the shop's own names arrive, the bank names are the same records
        report = bank.merge(shop.record_set([world.shop.root]))
        assert sorted((r.name, r.serial) for r in report.accepted) == [
            ("pay.shop.hypermesh", 2),
            ("www.shop.hypermesh", 1),
        ]
        assert report.refused == []
        assert report.unchanged == 2
        assert bank.names() == shop.names()
        for name in bank.names():
            assert bank.lookup(name) == shop.lookup(name)

        # a revocation made at the bank reaches the shop
        bank.revoke(revoke(world.teller, "api.bank.hypermesh", 4))
        report = shop.merge(bank.record_set([world.bank.root]))
        assert [(r.name, r.serial) for r in report.revoked] == [("api.bank.hypermesh", 4)]
        assert shop.lookup("api.bank.hypermesh") is None
        assert report.refused == []
        # and the revoked record, sent again by a stale peer, is refused with the reason
        stale_peer = RecordSet((signed(world.teller, record("api.bank.hypermesh", 4)),), (), ())
        report = shop.merge(stale_peer)
        assert [(r.name, r.reason) for r in report.refused] == [
            ("api.bank.hypermesh", NameRejection.REVOKED)
        ]
        # merging the same again changes nothing
        again = shop.merge(bank.record_set([world.bank.root]))
        assert (again.accepted, again.revoked, again.refused) == ([], [], [])


def test_merge_reports_every_refusal(world: World, registry: NameRegistry) -> None:
    registry.add(signed(world.teller, record("www.bank.hypermesh", 5)))
    incoming = RecordSet(
        (
            signed(world.cashier, record("evil.bank.hypermesh")),
            signed(world.teller, record("www.bank.hypermesh", 4)),
            signed(world.teller, record("new.bank.hypermesh", 1)),
        ),
        (revoke(world.cashier, "www.bank.hypermesh", 9),),
        (world.shop.root,),
    )
    report = registry.merge(incoming)
    assert [r.name for r in report.accepted] == ["new.bank.hypermesh"]
    assert [(r.name, r.serial, r.reason) for r in report.refused] == [
        ("www.bank.hypermesh", 9, NameRejection.OUTSIDE_NAMESPACE),
        ("evil.bank.hypermesh", 1, NameRejection.OUTSIDE_NAMESPACE),
        ("www.bank.hypermesh", 4, NameRejection.STALE_SERIAL),
    ]
    assert registry.lookup("www.bank.hypermesh") == record("www.bank.hypermesh", 5)


def test_merge_uses_the_registrys_anchors_not_the_sets(world: World, tmp_path: Path) -> None:
    only_shop = TrustStore([TrustAnchor(world.shop.root, "shop root")])
    with NameRegistry.open(tmp_path / "names.db", only_shop) as registry:
        incoming = RecordSet((signed(world.teller, record()),), (), (world.bank.root,))
        report = registry.merge(incoming)
        assert report.accepted == []
        assert [r.reason for r in report.refused] == [NameRejection.CHAIN_REJECTED]
