"""trustchain.consensus.committee and .votes: committees, owner signatures, votes, certificates.

A real PKI is built once per module: a key store, a root CA, the entity CA ``val`` and node
certificates for eight validators (hybrid Ed25519 + Falcon-1024 keys held in memory), one more
node certificate that is revoked, and a foreign root nobody trusts. Committees are parsed from
``hypermesh.v1.Committee`` messages with those chains; every vote is signed with the
validator's real key and checked by :class:`VoteVerifier`. Changes carry hand-made FourProof
messages: nothing here validates proofs, only digests and signatures over them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import struct
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from hypermesh_interfaces.v1 import common_pb2, ledger_pb2
from trustchain.ca.authority import CertificateAuthority
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.consensus.committee import COMMITTEE_LABEL, MAX_MEMBERS, Committee, Member
from trustchain.consensus.proofs.bundle import state_hash
from trustchain.consensus.votes import (
    BATCH_LABEL,
    CHANGE_LABEL,
    MAX_BATCH,
    VOTE_LABEL,
    Ballot,
    VoteVerifier,
    change_digest,
    equivocation,
    owner_signing_bytes,
    sign_ballots,
    sign_change,
    verify_owner_signature,
)
from trustchain.crypto.algorithms import SignatureAlgorithm
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore
from trustchain.crypto.signatures import Signature, SigningKey, VerifyKey
from trustchain.ct import merkle
from trustchain.errors import (
    InvalidCertificate,
    InvalidCommittee,
    InvalidSignature,
    InvalidVote,
    MalformedData,
    UnknownValidator,
)

NAMESPACE = "val.hypermesh"
ZERO = bytes(32)
ASSET = hashlib.sha256(b"asset one").digest()
OTHER_ASSET = hashlib.sha256(b"asset two").digest()


@dataclass(frozen=True)
class Validator:
    """A validator: its DNS name, signing key (in memory) and node certificate chain."""

    name: str
    signing: SigningKey
    chain: tuple[x509.Certificate, ...]

    @property
    def key(self) -> VerifyKey:
        return self.signing.public_key()

    @property
    def id(self) -> bytes:
        return self.key.key_id

    def sign(self, message: bytes) -> bytes:
        return self.signing.sign(message).to_bytes()

    def member(self, stake: int, *, port: int = 4433) -> ledger_pb2.CommitteeMember:
        return ledger_pb2.CommitteeMember(
            validator=common_pb2.PeerId(id=self.id),
            certificate_chain=common_pb2.CertificateChain(
                certificates=[c.public_bytes(Encoding.DER) for c in self.chain]
            ),
            stake=stake,
            address=common_pb2.NetworkAddress(
                ip=bytes([127, 0, 0, 1]), port=port, transport=common_pb2.TRANSPORT_QUIC
            ),
            name=self.name,
        )


@dataclass(frozen=True)
class Pki:
    validators: tuple[Validator, ...]  # sorted by id
    revoked: Validator
    foreign: Validator
    store: TrustStore

    @property
    def four(self) -> tuple[Validator, ...]:
        return self.validators[:4]

    @property
    def outsider(self) -> Validator:
        return self.validators[4]


def _validator(ca: CertificateAuthority, issuer: str, name: str) -> Validator:
    signing = SigningKey.generate()
    issued = ca.issue(issuer, "node", name, subject_key=signing.public_key(), dns_names=[name])
    return Validator(name, signing, (issued.certificate, *issued.chain))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    home: Path = tmp_path_factory.mktemp("votes-pki")
    keys = KeyStore.open(
        home / "keys", passphrase=b"pw", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    )
    with (
        keys,
        CertificateAuthority(home / "ca", keys) as ca,
        CertificateAuthority(home / "foreign", keys) as foreign_ca,
    ):
        root = ca.init_root("ledger-root")
        entity = ca.issue_intermediate("val", NAMESPACE)
        validators = [_validator(ca, "val", f"v{i}.{NAMESPACE}") for i in range(8)]
        revoked = _validator(ca, "val", f"revoked.{NAMESPACE}")
        ca.revoke(revoked.chain[0].serial_number, x509.ReasonFlags.key_compromise)
        foreign_ca.init_root("foreign-root")
        foreign_ca.issue_intermediate("val", NAMESPACE)
        foreign = _validator(foreign_ca, "val", f"v0.{NAMESPACE}")
        store = TrustStore([TrustAnchor(root.certificate, "ledger")])
        store.add_certificate(entity.certificate)
        store.add_crl(ca.crl())
        store.add_crl(ca.crl("val"))
        yield Pki(tuple(sorted(validators, key=lambda v: v.id)), revoked, foreign, store)


def committee_message(
    validators: Sequence[Validator], stakes: Sequence[int], epoch: int = 0
) -> ledger_pb2.Committee:
    members = sorted(
        (v.member(s) for v, s in zip(validators, stakes, strict=True)),
        key=lambda m: bytes(m.validator.id),
    )
    return ledger_pb2.Committee(epoch=epoch, members=members)


def committee_of(
    pki: Pki, stakes: Sequence[int] = (1, 1, 1, 1), epoch: int = 0
) -> tuple[Committee, tuple[Validator, ...]]:
    """The committee of the first ``len(stakes)`` validators with those stakes."""
    chosen = pki.validators[: len(stakes)]
    return Committee.from_message(committee_message(chosen, stakes, epoch), pki.store), chosen


def proofs(asset: bytes, version: int, content: bytes) -> common_pb2.FourProof:
    """A FourProof message naming ``asset`` and ``version``; ``content`` varies its digest."""
    return common_pb2.FourProof(
        stake=common_pb2.StakeProof(
            asset_id=common_pb2.AssetId(id=asset),
            version=version,
            state_digest=hashlib.sha256(content).digest(),
            stake_amount=10,
        ),
        work=common_pb2.WorkProof(nonce=int.from_bytes(content[:8].ljust(8, b"\0"), "big")),
    )


def change(
    owner: Validator, asset: bytes = ASSET, version: int = 0, content: bytes = b"a", epoch: int = 0
) -> ledger_pb2.AssetStateChange:
    return sign_change(proofs(asset, version, content), epoch, owner.sign)


def ballot(
    validator: Validator,
    digest: bytes,
    *,
    epoch: int = 0,
    asset: bytes = ASSET,
    version: int = 0,
) -> Ballot:
    return Ballot(epoch, validator.id, asset, version, digest)


def vote(
    validator: Validator,
    digest: bytes,
    *,
    epoch: int = 0,
    asset: bytes = ASSET,
    version: int = 0,
) -> ledger_pb2.Vote:
    """``validator``'s vote, signed alone."""
    b = ballot(validator, digest, epoch=epoch, asset=asset, version=version)
    (signed,) = sign_ballots([b], validator.sign, batch=False)
    return signed


def certificate(
    c: ledger_pb2.AssetStateChange, voters: Sequence[Validator]
) -> ledger_pb2.StateCertificate:
    votes = [sign_ballots([Ballot.for_change(c, v.id)], v.sign, batch=False)[0] for v in voters]
    return ledger_pb2.StateCertificate(change=c, votes=votes)


def _copy_vote(original: ledger_pb2.Vote) -> ledger_pb2.Vote:
    copied = ledger_pb2.Vote()
    copied.CopyFrom(original)
    return copied


def _flip(value: bytes, position: int, mask: int = 1) -> bytes:
    index = position % len(value)
    return value[:index] + bytes([value[index] ^ mask]) + value[index + 1 :]


class CountingVerifier(VoteVerifier):
    """A VoteVerifier that counts the signatures it really checks (cache misses)."""

    def __init__(self, cache_size: int = 4096) -> None:
        super().__init__(cache_size)
        self.checks = 0
        self._count_lock = threading.Lock()

    def _check(self, key: VerifyKey, signature: Signature, message: bytes) -> None:  # type: ignore[override]
        with self._count_lock:
            self.checks += 1
        VoteVerifier._check(key, signature, message)


# --- committees ---------------------------------------------------------------------------------


def test_a_committee_parses_from_real_chains(pki: Pki) -> None:
    message = committee_message(pki.four, (4, 3, 2, 1), epoch=7)
    committee = Committee.from_message(message, pki.store)
    assert committee.epoch == 7
    assert [m.validator_id for m in committee.members] == [v.id for v in pki.four]
    for member, validator, stake in zip(committee.members, pki.four, (4, 3, 2, 1), strict=True):
        assert member.key == validator.key
        assert member.chain == validator.chain
        assert member.stake == stake
        assert (member.host, member.port, member.name) == ("127.0.0.1", 4433, validator.name)
        assert committee.member(validator.id) is member
    assert committee.total_stake == 10
    assert committee.quorum_stake == 7
    assert committee.validity_stake == 4
    # The message round-trips and the digest is over the label and the deterministic encoding.
    assert committee.to_message() == message
    expected = hashlib.sha256(COMMITTEE_LABEL + message.SerializeToString(deterministic=True))
    assert committee.digest() == expected.digest()
    again = Committee.from_message(committee.to_message(), pki.store)
    assert again == committee
    assert again.digest() == committee.digest()


def test_committee_digest_depends_on_every_part(pki: Pki) -> None:
    base, _ = committee_of(pki)
    digests = {
        base.digest(),
        committee_of(pki, epoch=1)[0].digest(),
        committee_of(pki, (1, 1, 1, 2))[0].digest(),
        committee_of(pki, (1, 1, 1))[0].digest(),
        Committee(0, tuple(replace(m, port=m.port + 1) for m in base.members)).digest(),
        Committee(0, tuple(replace(m, host="::1") for m in base.members)).digest(),
    }
    assert len(digests) == 6


def test_an_ipv6_member_round_trips(pki: Pki) -> None:
    message = committee_message(pki.four, (1, 1, 1, 1))
    message.members[2].address.ip = ipaddress.ip_address("2001:db8::7").packed
    committee = Committee.from_message(message, pki.store)
    assert committee.members[2].host == "2001:db8::7"
    assert committee.to_message() == message


def test_unknown_validators_are_named(pki: Pki) -> None:
    committee, _ = committee_of(pki)
    with pytest.raises(UnknownValidator, match=pki.outsider.id.hex()):
        committee.member(pki.outsider.id)
    assert committee.stake_of([pki.outsider.id]) == 0
    assert committee.stake_of([pki.four[0].id, pki.four[0].id, pki.outsider.id]) == 1


def _refused(message: ledger_pb2.Committee, store: TrustStore) -> str:
    with pytest.raises(InvalidCommittee) as caught:
        Committee.from_message(message, store)
    return str(caught.value)


def test_a_committee_without_members_is_refused(pki: Pki) -> None:
    assert "1..256 members" in _refused(ledger_pb2.Committee(epoch=3), pki.store)


def test_a_committee_of_too_many_members_is_refused_before_any_chain_is_read(pki: Pki) -> None:
    # 257 members, the first with a chain that would not even decode: the count is what the
    # committee is refused for, so a large message costs no chain validations.
    message = committee_message(pki.four[:1], (1,))
    for _ in range(MAX_MEMBERS):
        message.members.add().CopyFrom(message.members[0])
    message.members[0].certificate_chain.certificates[0] = b"\x30\x03junk"
    assert len(message.members) == MAX_MEMBERS + 1
    assert f"1..{MAX_MEMBERS} members" in _refused(message, pki.store)


def test_member_count_bounds_on_construction(pki: Pki) -> None:
    committee, _ = committee_of(pki)
    member = committee.members[0]
    with pytest.raises(InvalidCommittee, match=r"1\.\.256 members"):
        Committee(0, (member,) * (MAX_MEMBERS + 1))
    with pytest.raises(InvalidCommittee, match=r"1\.\.256 members"):
        Committee(0, ())


def test_a_zero_stake_is_refused(pki: Pki) -> None:
    assert "has stake 0" in _refused(committee_message(pki.four, (1, 0, 1, 1)), pki.store)


def test_a_stake_too_large_is_refused(pki: Pki) -> None:
    committee, _ = committee_of(pki)
    with pytest.raises(InvalidCommittee, match="has stake"):
        Committee(0, (replace(committee.members[0], stake=1 << 62),))
    assert Committee(0, (replace(committee.members[0], stake=(1 << 62) - 1),)).total_stake == (
        (1 << 62) - 1
    )


def test_duplicate_validators_are_refused(pki: Pki) -> None:
    message = committee_message(pki.four, (1, 1, 1, 1))
    message.members[1].CopyFrom(message.members[0])
    assert "distinct and sorted" in _refused(message, pki.store)


def test_unsorted_validators_are_refused(pki: Pki) -> None:
    message = committee_message(pki.four, (1, 1, 1, 1))
    first, second = ledger_pb2.CommitteeMember(), ledger_pb2.CommitteeMember()
    first.CopyFrom(message.members[0])
    second.CopyFrom(message.members[1])
    message.members[0].CopyFrom(second)
    message.members[1].CopyFrom(first)
    assert "distinct and sorted" in _refused(message, pki.store)


def test_a_chain_nobody_trusts_is_refused(pki: Pki) -> None:
    message = committee_message((*pki.four[:3], pki.foreign), (1, 1, 1, 1))
    detail = _refused(message, pki.store)
    assert "certificate chain rejected" in detail
    assert pki.foreign.name in detail


def test_a_revoked_chain_is_refused(pki: Pki) -> None:
    message = committee_message((*pki.four[:3], pki.revoked), (1, 1, 1, 1))
    detail = _refused(message, pki.store)
    assert "certificate chain rejected" in detail
    assert "revoked" in detail.lower()


def test_an_expired_chain_is_refused(pki: Pki) -> None:
    message = committee_message(pki.four, (1, 1, 1, 1))
    later = pki.four[0].chain[0].not_valid_after_utc + timedelta(days=1)
    with pytest.raises(InvalidCommittee, match="certificate chain rejected"):
        Committee.from_message(message, pki.store, at=later)
    # ... and the same message is fine when it is checked at a time its chains were valid.
    assert Committee.from_message(message, pki.store, at=datetime.now(UTC)).total_stake == 4


def test_an_empty_chain_is_refused(pki: Pki) -> None:
    message = committee_message(pki.four, (1, 1, 1, 1))
    del message.members[2].certificate_chain.certificates[:]
    assert "member 2" in (detail := _refused(message, pki.store))
    assert "no certificate chain" in detail


def test_an_undecodable_certificate_is_refused(pki: Pki) -> None:
    message = committee_message(pki.four, (1, 1, 1, 1))
    message.members[3].certificate_chain.certificates[0] = b"\x30\x82\x01\x00not der"
    assert "member 3" in (detail := _refused(message, pki.store))
    assert "does not decode" in detail


def test_a_chain_for_another_validator_id_is_refused(pki: Pki) -> None:
    message = committee_message(pki.four, (1, 1, 1, 1))
    message.members[0].certificate_chain.CopyFrom(message.members[1].certificate_chain)
    message.members[0].name = message.members[1].name
    assert "not for its validator id" in _refused(message, pki.store)
    message = committee_message(pki.four, (1, 1, 1, 1))
    message.members[0].validator.id = pki.four[0].id[:31]
    assert "not for its validator id" in _refused(message, pki.store)


def test_a_bad_address_is_refused(pki: Pki) -> None:
    message = committee_message(pki.four, (1, 1, 1, 1))
    message.members[1].address.ip = b"\x7f\x00\x01"
    assert "3-byte IP" in _refused(message, pki.store)
    for port in (0, 1 << 16):
        message = committee_message(pki.four, (1, 1, 1, 1))
        message.members[1].address.port = port
        assert f"has port {port}" in _refused(message, pki.store)


def test_a_name_the_certificate_does_not_carry_is_refused(pki: Pki) -> None:
    message = committee_message(pki.four, (1, 1, 1, 1))
    message.members[1].name = f"elsewhere.{NAMESPACE}"
    detail = _refused(message, pki.store)
    assert "member 1" in detail
    assert "no subjectAltName dNSName matches" in detail
    message.members[1].name = ""
    assert "member 1 (unnamed): certificate chain rejected" in _refused(message, pki.store)
    # DNS names compare case-insensitively.
    message.members[1].name = pki.four[1].name.upper()
    assert Committee.from_message(message, pki.store).members[1].name == message.members[1].name


def test_member_invariants_on_construction(pki: Pki) -> None:
    committee, _ = committee_of(pki)
    member = committee.members[0]
    with pytest.raises(InvalidCommittee, match="32 bytes"):
        Committee(0, (replace(member, validator_id=member.validator_id[:31]),))
    with pytest.raises(InvalidCommittee, match="key has id"):
        Committee(0, (replace(member, key=committee.members[1].key),))
    with pytest.raises(InvalidCommittee, match="64 unsigned bits"):
        Committee(1 << 64, (member,))
    assert Committee((1 << 64) - 1, (member,)).epoch == (1 << 64) - 1


def test_quorum_boundary_with_equal_stakes(pki: Pki) -> None:
    committee, chosen = committee_of(pki, (1, 1, 1, 1))
    ids = [v.id for v in chosen]
    assert (committee.total_stake, committee.quorum_stake, committee.validity_stake) == (4, 3, 2)
    assert not committee.is_quorum(ids[:2])
    assert committee.is_quorum(ids[:3])
    assert not committee.is_quorum([ids[0], ids[0], ids[0]])  # one validator counts once
    three, _ = committee_of(pki, (1, 1, 1))
    assert (three.quorum_stake, three.validity_stake) == (3, 2)  # all of them


def test_quorum_boundary_with_unequal_stakes(pki: Pki) -> None:
    committee, chosen = committee_of(pki, (5, 2, 1, 1))
    big, mid, a, b = (v.id for v in chosen)
    assert (committee.total_stake, committee.quorum_stake, committee.validity_stake) == (9, 7, 4)
    assert committee.is_quorum([big, mid])
    assert committee.is_quorum([big, a, b])
    assert not committee.is_quorum([big, a])
    assert not committee.is_quorum([mid, a, b])
    lone, (only,) = committee_of(pki, (7,))
    assert lone.is_quorum([only.id])


@pytest.fixture(scope="module")
def members(pki: Pki) -> tuple[Member, ...]:
    """The eight validators as members of stake 1 (their chains parsed for real)."""
    committee, _ = committee_of(pki, (1,) * 8)
    return committee.members


@settings(max_examples=200, deadline=None)
@given(stakes=st.lists(st.integers(1, 1 << 20), min_size=1, max_size=6))
def test_two_quorums_always_share_more_than_a_third(
    members: tuple[Member, ...], stakes: list[int]
) -> None:
    committee = Committee(
        0, tuple(replace(m, stake=s) for m, s in zip(members, stakes, strict=False))
    )
    total = sum(stakes)
    assert committee.total_stake == total
    quorum, validity = committee.quorum_stake, committee.validity_stake
    # quorum: the least stake more than 2/3; validity: the least more than 1/3.
    assert 3 * quorum > 2 * total >= 3 * (quorum - 1)
    assert 3 * validity > total >= 3 * (validity - 1)
    ids = [m.validator_id for m in committee.members]
    subsets = [frozenset(c) for r in range(len(ids) + 1) for c in itertools.combinations(ids, r)]
    quorums = [s for s in subsets if committee.is_quorum(s)]
    for subset in subsets:
        assert committee.is_quorum(subset) == (3 * committee.stake_of(subset) > 2 * total)
    assert frozenset(ids) in quorums
    for first, second in itertools.combinations_with_replacement(quorums, 2):
        shared = committee.stake_of(first & second)
        assert shared >= validity
        assert 3 * shared > total


# --- owner signatures ---------------------------------------------------------------------------


def test_owner_signing_bytes_layout() -> None:
    digest = hashlib.sha256(b"d").digest()
    data = owner_signing_bytes(digest, 258)
    assert data == CHANGE_LABEL + digest + struct.pack(">Q", 258)
    assert CHANGE_LABEL == b"hypermesh/ledger-change/v1\x00"
    with pytest.raises(ValueError, match="32 bytes"):
        owner_signing_bytes(digest[:31], 0)
    with pytest.raises(ValueError, match="64 unsigned bits"):
        owner_signing_bytes(digest, 1 << 64)
    with pytest.raises(ValueError, match="64 unsigned bits"):
        owner_signing_bytes(digest, -1)


def test_the_change_digest_is_the_combined_state_hash(pki: Pki) -> None:
    c = change(pki.outsider, content=b"x")
    assert change_digest(c) == state_hash(c.proofs)
    assert change_digest(c) != change_digest(change(pki.outsider, content=b"y"))
    # The epoch and the owner signature are not part of the digest.
    assert change_digest(c) == change_digest(change(pki.outsider, content=b"x", epoch=9))


def test_an_owner_signed_change_verifies(pki: Pki) -> None:
    owner = pki.outsider
    c = change(owner, epoch=5)
    assert c.epoch == 5
    verify_owner_signature(c, owner.key)
    owner.key.verify(
        Signature.from_bytes(c.owner_signature), owner_signing_bytes(change_digest(c), 5)
    )


def test_a_change_with_another_epoch_or_proofs_does_not_verify(pki: Pki) -> None:
    owner = pki.outsider
    c = change(owner)
    moved = ledger_pb2.AssetStateChange()
    moved.CopyFrom(c)
    moved.epoch = 1
    with pytest.raises(InvalidSignature):
        verify_owner_signature(moved, owner.key)
    altered = ledger_pb2.AssetStateChange()
    altered.CopyFrom(c)
    altered.proofs.stake.version = 1
    with pytest.raises(InvalidSignature):
        verify_owner_signature(altered, owner.key)
    with pytest.raises(InvalidSignature):
        verify_owner_signature(c, pki.four[0].key)


def test_malformed_owner_signatures_are_malformed_data(pki: Pki) -> None:
    owner = pki.outsider
    c = change(owner)
    ed25519 = SigningKey.generate(SignatureAlgorithm.ED25519)
    cases = {
        "empty": b"",
        "garbage": b"not a signature envelope",
        "oversized": c.owner_signature + bytes(4096),
        "ed25519": ed25519.sign(owner_signing_bytes(change_digest(c), 0)).to_bytes(),
    }
    for what, signature in cases.items():
        c.owner_signature = signature
        try:
            verify_owner_signature(c, owner.key)
        except MalformedData:
            continue
        pytest.fail(f"the {what} signature was accepted")


# --- ballots and votes --------------------------------------------------------------------------


@settings(max_examples=50)
@given(
    epoch=st.integers(0, (1 << 64) - 1),
    version=st.integers(0, (1 << 64) - 1),
    raw=st.binary(min_size=96, max_size=96),
)
def test_ballot_signing_bytes_layout(epoch: int, version: int, raw: bytes) -> None:
    validator, asset, digest = raw[:32], raw[32:64], raw[64:]
    b = Ballot(epoch, validator, asset, version, digest)
    data = b.signing_bytes()
    assert data.startswith(VOTE_LABEL)
    assert VOTE_LABEL == b"hypermesh/ledger-vote/v1\x00"
    body = data[len(VOTE_LABEL) :]
    assert len(body) == 8 + 32 + 32 + 8 + 32
    assert struct.unpack(">Q32s32sQ32s", body) == (epoch, validator, asset, version, digest)
    assert b.slot == (epoch, asset, version)
    assert Ballot.of(b.to_vote()) == b


def test_ballot_sizes_are_checked() -> None:
    good = hashlib.sha256(b"g").digest()
    for fields in (
        (0, good[:31], good, 0, good),
        (0, good, good + b"!", 0, good),
        (0, good, good, 0, b""),
        (-1, good, good, 0, good),
        (0, good, good, 1 << 64, good),
    ):
        with pytest.raises(ValueError, match=r"must be 32 bytes|must fit 64 unsigned bits"):
            Ballot(*fields)


def test_a_committee_ballot_has_an_empty_asset_id_on_the_wire(pki: Pki) -> None:
    b = Ballot(3, pki.four[0].id, ZERO, 4, hashlib.sha256(b"next").digest())
    message = b.to_vote()
    assert message.asset_id.id == b""
    assert Ballot.of(message) == b
    assert Ballot.of(message).signing_bytes()[len(VOTE_LABEL) + 40 : len(VOTE_LABEL) + 72] == ZERO


def test_ballot_for_change(pki: Pki) -> None:
    c = change(pki.outsider, asset=OTHER_ASSET, version=6, epoch=2)
    b = Ballot.for_change(c, pki.four[1].id)
    assert b == Ballot(2, pki.four[1].id, OTHER_ASSET, 6, change_digest(c))


def test_malformed_votes_are_invalid_votes(pki: Pki) -> None:
    v = vote(pki.four[0], hashlib.sha256(b"x").digest())
    v.change_digest = v.change_digest[:20]
    with pytest.raises(InvalidVote, match="malformed vote"):
        Ballot.of(v)


def test_a_single_vote_verifies(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    digest = hashlib.sha256(b"c").digest()
    v = vote(chosen[2], digest, version=3)
    assert not v.HasField("batch")
    assert VoteVerifier().verify(v, committee) == ballot(chosen[2], digest, version=3)
    chosen[2].key.verify(
        Signature.from_bytes(v.signature), ballot(chosen[2], digest, version=3).signing_bytes()
    )


def test_sign_ballots_refuses_mixed_signers(pki: Pki) -> None:
    digest = hashlib.sha256(b"c").digest()
    a, b = pki.four[0], pki.four[1]
    with pytest.raises(ValueError, match="one validator and epoch"):
        sign_ballots([ballot(a, digest), ballot(b, digest)], a.sign, batch=True)
    with pytest.raises(ValueError, match="one validator and epoch"):
        sign_ballots([ballot(a, digest), ballot(a, digest, epoch=1)], a.sign, batch=True)
    assert sign_ballots([], a.sign, batch=True) == []


def test_unbatched_votes_are_signed_one_by_one(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    signer = chosen[0]
    ballots = [ballot(signer, hashlib.sha256(bytes([i])).digest(), version=i) for i in range(3)]
    votes = sign_ballots(ballots, signer.sign, batch=False)
    assert len({v.signature for v in votes}) == 3
    verifier = VoteVerifier()
    assert [verifier.verify(v, committee) for v in votes] == ballots


def _batch(signer: Validator, size: int, *, epoch: int = 0) -> list[Ballot]:
    return [
        ballot(
            signer,
            hashlib.sha256(b"batch" + i.to_bytes(4, "big")).digest(),
            epoch=epoch,
            asset=hashlib.sha256(i.to_bytes(4, "big")).digest(),
            version=i,
        )
        for i in range(size)
    ]


def test_batches_of_every_size_up_to_40_verify(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    signer = chosen[1]
    verifier = CountingVerifier()
    for size in range(1, 41):
        ballots = _batch(signer, size)
        votes = sign_ballots(ballots, signer.sign, batch=True)
        assert len(votes) == size
        before = verifier.checks
        if size == 1:
            assert not votes[0].HasField("batch")  # one ballot is signed alone
        else:
            leaves = [merkle.leaf_hash(b.signing_bytes()) for b in ballots]
            root = merkle.root_from_leaf_hashes(leaves)
            assert len({v.signature for v in votes}) == 1
            signed = BATCH_LABEL + struct.pack(">Q", 0) + signer.id + struct.pack(">Q", size)
            signer.key.verify(Signature.from_bytes(votes[0].signature), signed + root)
            for index, (v, leaf) in enumerate(zip(votes, leaves, strict=True)):
                assert (v.batch.leaf_index, v.batch.batch_size) == (index, size)
                merkle.verify_inclusion(leaf, index, size, list(v.batch.audit_path), root)
        assert [verifier.verify(v, committee) for v in votes] == ballots
        # One signature check for the whole batch: the root is remembered.
        assert verifier.checks == before + 1


def test_batch_sizes_are_bounded(pki: Pki) -> None:
    signer = pki.four[0]
    ballots = [ballot(signer, ZERO, version=i) for i in range(MAX_BATCH + 1)]
    with pytest.raises(ValueError, match=f"at most {MAX_BATCH}"):
        sign_ballots(ballots, signer.sign, batch=True)


@pytest.fixture(scope="module")
def signed(pki: Pki) -> tuple[Committee, ledger_pb2.Vote, list[ledger_pb2.Vote]]:
    """A committee, a single vote of member 0 and a batch of 5 votes of member 1."""
    committee, chosen = committee_of(pki)
    single = vote(chosen[0], hashlib.sha256(b"single").digest(), version=2)
    batch = sign_ballots(_batch(chosen[1], 5), chosen[1].sign, batch=True)
    return committee, single, batch


def _tampered(original: ledger_pb2.Vote, pki: Pki) -> Iterator[tuple[str, ledger_pb2.Vote]]:
    """Every single-field change of ``original`` (every byte of its byte fields, flipped)."""
    for delta in (1, -1, 1 << 32):
        if original.epoch + delta >= 0:
            v = _copy_vote(original)
            v.epoch += delta
            yield f"epoch {delta:+}", v
        if original.version + delta >= 0:
            v = _copy_vote(original)
            v.version += delta
            yield f"version {delta:+}", v
    for position in range(32):
        v = _copy_vote(original)
        v.asset_id.id = _flip(original.asset_id.id, position)
        yield f"asset byte {position}", v
        v = _copy_vote(original)
        v.change_digest = _flip(original.change_digest, position)
        yield f"digest byte {position}", v
        v = _copy_vote(original)
        v.validator.id = _flip(original.validator.id, position)
        yield f"validator byte {position}", v
    for other in (*pki.four, pki.outsider):
        if other.id != original.validator.id:
            v = _copy_vote(original)
            v.validator.id = other.id
            yield f"validator {other.name}", v
    v = _copy_vote(original)
    v.ClearField("asset_id")
    yield "no asset id", v
    v = _copy_vote(original)
    v.change_digest = original.change_digest[:31]
    yield "short digest", v
    for what, signature in (
        ("no signature", b""),
        ("signature cut", original.signature[:-1]),
        ("signature longer", original.signature + b"\x00"),
    ):
        v = _copy_vote(original)
        v.signature = signature
        yield what, v
    if not original.HasField("batch"):
        v = _copy_vote(original)
        v.batch.batch_size = 1
        yield "batched", v
        return
    size, index = original.batch.batch_size, original.batch.leaf_index
    v = _copy_vote(original)
    v.ClearField("batch")
    yield "unbatched", v
    for new_index in range(size + 1):
        if new_index != index:
            v = _copy_vote(original)
            v.batch.leaf_index = new_index
            yield f"leaf index {new_index}", v
    for new_size in (0, size - 1, size + 1, size + 2, 2 * size, MAX_BATCH + 1):
        v = _copy_vote(original)
        v.batch.batch_size = new_size
        yield f"batch size {new_size}", v
    path = list(original.batch.audit_path)
    for step, component in enumerate(path):
        for position in range(32):
            v = _copy_vote(original)
            v.batch.audit_path[step] = _flip(component, position)
            yield f"audit path {step} byte {position}", v
    for what, changed in (
        ("audit path shorter", path[:-1]),
        ("audit path longer", [*path, ZERO]),
        ("audit path component short", [path[0][:31], *path[1:]]),
        ("audit path component long", [path[0] + b"\x00", *path[1:]]),
        ("audit path reversed", path[::-1] if len(path) > 1 else [ZERO]),
    ):
        v = _copy_vote(original)
        del v.batch.audit_path[:]
        v.batch.audit_path.extend(changed)
        yield what, v


def _rejected(
    verifier: VoteVerifier, v: ledger_pb2.Vote, committee: Committee, what: str
) -> InvalidVote:
    try:
        verifier.verify(v, committee)
    except InvalidVote as exc:
        return exc
    pytest.fail(f"{what}: the vote verified")


def test_every_tampered_field_of_a_single_vote_is_rejected(
    pki: Pki, signed: tuple[Committee, ledger_pb2.Vote, list[ledger_pb2.Vote]]
) -> None:
    committee, single, _ = signed
    verifier = VoteVerifier()
    verifier.verify(single, committee)
    count = 0
    for what, tampered in _tampered(single, pki):
        _rejected(verifier, tampered, committee, what)
        count += 1
    assert count > 100
    assert verifier.verify(single, committee) == Ballot.of(single)


def test_every_tampered_field_of_a_batched_vote_is_rejected(
    pki: Pki, signed: tuple[Committee, ledger_pb2.Vote, list[ledger_pb2.Vote]]
) -> None:
    committee, _, batch = signed
    # The verifier has verified the whole batch: its root is cached, and must not help.
    verifier = VoteVerifier()
    for v in batch:
        verifier.verify(v, committee)
    for original in (batch[0], batch[3], batch[4]):
        for what, tampered in _tampered(original, pki):
            _rejected(verifier, tampered, committee, what)


def test_every_byte_of_the_signature_matters(
    signed: tuple[Committee, ledger_pb2.Vote, list[ledger_pb2.Vote]],
) -> None:
    committee, single, batch = signed
    verifier = VoteVerifier()
    for original in (single, batch[2]):
        verifier.verify(original, committee)
        for position in range(len(original.signature)):
            tampered = _copy_vote(original)
            tampered.signature = _flip(original.signature, position)
            _rejected(verifier, tampered, committee, f"signature byte {position} flipped")


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_tampered_encodings_never_verify_as_something_else(
    signed: tuple[Committee, ledger_pb2.Vote, list[ledger_pb2.Vote]], data: st.DataObject
) -> None:
    committee, single, batch = signed
    original = data.draw(st.sampled_from([single, *batch]))
    encoded = original.SerializeToString()
    position = data.draw(st.integers(0, len(encoded) - 1))
    mask = data.draw(st.integers(1, 255))
    parsed = ledger_pb2.Vote()
    try:
        parsed.ParseFromString(_flip(encoded, position, mask))
    except DecodeError:
        return
    parsed.DiscardUnknownFields()
    try:
        b = VoteVerifier().verify(parsed, committee)
    except InvalidVote:
        return
    # Whatever still verifies is the original vote (e.g. the flip hit a tag that became an
    # unknown field of a default value).
    assert b == Ballot.of(original)
    assert parsed.signature == original.signature
    assert parsed.batch == original.batch


def test_votes_of_another_epoch_or_signer_are_rejected(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    digest = hashlib.sha256(b"e").digest()
    with pytest.raises(InvalidVote, match="vote of epoch 1, the committee is 0"):
        VoteVerifier().verify(vote(chosen[0], digest, epoch=1), committee)
    with pytest.raises(InvalidVote, match="not in the committee"):
        VoteVerifier().verify(vote(pki.outsider, digest), committee)
    # A member's ballot signed by someone else's key.
    forged = ballot(chosen[0], digest).to_vote()
    forged.signature = chosen[1].sign(ballot(chosen[0], digest).signing_bytes())
    with pytest.raises(InvalidVote, match="does not verify"):
        VoteVerifier().verify(forged, committee)
    # A non-hybrid signature by the member's Ed25519 component is not a vote.
    ed25519, _ = chosen[0].signing.components()
    weak = ballot(chosen[0], digest).to_vote()
    weak.signature = ed25519.sign(ballot(chosen[0], digest).signing_bytes()).to_bytes()
    with pytest.raises(InvalidVote, match="expected"):
        VoteVerifier().verify(weak, committee)


def test_a_batch_signature_moved_to_another_validator_is_rejected(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    votes = sign_ballots(_batch(chosen[0], 4), chosen[0].sign, batch=True)
    verifier = VoteVerifier()
    verifier.verify(votes[1], committee)
    moved = _copy_vote(votes[1])
    moved.validator.id = chosen[1].id
    with pytest.raises(InvalidVote, match="does not verify"):
        verifier.verify(moved, committee)
    # A batch root signed in epoch 0 is no batch root of epoch 1, even for the same key.
    later, _ = committee_of(pki, epoch=1)
    shifted = _copy_vote(votes[1])
    shifted.epoch = 1
    with pytest.raises(InvalidVote, match="does not verify"):
        verifier.verify(shifted, later)


# --- the verifier's cache -----------------------------------------------------------------------


def test_single_votes_are_checked_every_time(
    signed: tuple[Committee, ledger_pb2.Vote, list[ledger_pb2.Vote]],
) -> None:
    committee, single, _ = signed
    verifier = CountingVerifier()
    for _ in range(3):
        verifier.verify(single, committee)
    assert verifier.checks == 3


def test_the_cache_forgets_the_least_recently_used_root(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    a, b, c = (sign_ballots(_batch(chosen[i], 3), chosen[i].sign, batch=True) for i in range(3))
    verifier = CountingVerifier(cache_size=2)
    verifier.verify(a[0], committee)
    verifier.verify(b[0], committee)
    assert verifier.checks == 2
    verifier.verify(a[1], committee)  # hit: a becomes the most recent
    assert verifier.checks == 2
    verifier.verify(c[0], committee)  # miss: b (least recent) is dropped
    assert verifier.checks == 3
    verifier.verify(a[2], committee)
    assert verifier.checks == 3
    verifier.verify(b[1], committee)
    assert verifier.checks == 4
    none = CountingVerifier(cache_size=0)
    none.verify(a[0], committee)
    none.verify(a[1], committee)
    assert none.checks == 2


def test_a_failed_check_is_not_cached(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    votes = sign_ballots(_batch(chosen[0], 2), chosen[0].sign, batch=True)
    wrong = _copy_vote(votes[0])
    wrong.signature = chosen[1].sign(b"something else")
    verifier = CountingVerifier()
    for _ in range(2):
        with pytest.raises(InvalidVote):
            verifier.verify(wrong, committee)
    assert verifier.checks == 2


def test_the_verifier_is_shared_by_threads(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    batches = [sign_ballots(_batch(v, 10), v.sign, batch=True) for v in chosen]
    verifier = CountingVerifier()
    jobs = [v for batch in batches for v in batch]
    with ThreadPoolExecutor(4) as pool:
        ballots = list(pool.map(lambda v: verifier.verify(v, committee), jobs))
    assert ballots == [Ballot.of(v) for v in jobs]
    # Each root is checked at least once and, racing, at most once per thread.
    assert len(batches) <= verifier.checks <= 4 * len(batches)
    before = verifier.checks
    for v in jobs:
        verifier.verify(v, committee)
    assert verifier.checks == before


# --- certificates -------------------------------------------------------------------------------


def _refused_certificate(
    cert: ledger_pb2.StateCertificate, committee: Committee, match: str
) -> None:
    with pytest.raises(InvalidCertificate, match=match):
        VoteVerifier().verify_certificate(cert, committee)


def test_three_of_four_equal_stakes_certify(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    c = change(pki.outsider, version=4, content=b"cert")
    expected = Ballot(0, ZERO, ASSET, 4, change_digest(c))
    for voters in itertools.combinations(chosen, 3):
        assert VoteVerifier().verify_certificate(certificate(c, voters), committee) == expected
    assert VoteVerifier().verify_certificate(certificate(c, chosen), committee) == expected
    for pair in itertools.combinations(chosen, 2):
        _refused_certificate(certificate(c, pair), committee, "stake 2, a quorum is 3")
    _refused_certificate(certificate(c, ()), committee, "stake 0, a quorum is 3")


def test_unequal_stakes_certify_at_the_boundary_only(pki: Pki) -> None:
    committee, (big, mid, a, b) = committee_of(pki, (5, 2, 1, 1))
    c = change(pki.outsider, content=b"weights")
    verifier = VoteVerifier()
    for voters in ((big, mid), (big, a, b), (big, mid, a, b)):
        assert verifier.verify_certificate(certificate(c, voters), committee).change_digest == (
            change_digest(c)
        )
    _refused_certificate(certificate(c, (big, a)), committee, "stake 6, a quorum is 7")
    _refused_certificate(certificate(c, (mid, a, b)), committee, "stake 4, a quorum is 7")


def test_a_validator_counted_twice_does_not_make_a_quorum(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    c = change(pki.outsider)
    cert = certificate(c, chosen[:2])
    cert.votes.append(cert.votes[1])
    _refused_certificate(cert, committee, "vote 2: validator counted twice")
    # Even a second, differently signed (batched) vote of the same validator is counted once.
    cert = certificate(c, chosen[:2])
    twice = sign_ballots(
        [Ballot.for_change(c, chosen[0].id), ballot(chosen[0], ZERO, version=9)],
        chosen[0].sign,
        batch=True,
    )[0]
    cert.votes.append(twice)
    _refused_certificate(cert, committee, "vote 2: validator counted twice")


def test_a_vote_for_another_change_spoils_the_certificate(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    c = change(pki.outsider, version=1)
    other = change(pki.outsider, version=1, content=b"other")
    for stray in (
        sign_ballots([Ballot.for_change(other, chosen[3].id)], chosen[3].sign, batch=False)[0],
        vote(chosen[3], change_digest(c), version=2),
        vote(chosen[3], change_digest(c), asset=OTHER_ASSET, version=1),
    ):
        cert = certificate(c, chosen[:3])
        cert.votes.append(stray)
        _refused_certificate(cert, committee, "vote 3 is for another change")


def test_certificates_of_another_epoch_are_refused(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    later = change(pki.outsider, epoch=1)
    _refused_certificate(
        certificate(later, chosen), committee, "certificate of epoch 1, the committee is 0"
    )
    # Votes of epoch 1 in a certificate of an epoch-0 change.
    now = change(pki.outsider)
    cert = certificate(now, ())
    cert.votes.extend(vote(v, change_digest(now), epoch=1) for v in chosen)
    _refused_certificate(cert, committee, "vote 0: vote of epoch 1")
    epoch1, _ = committee_of(pki, epoch=1)
    assert VoteVerifier().verify_certificate(certificate(later, chosen), epoch1).epoch == 1


def test_invalid_votes_and_malformed_changes_spoil_the_certificate(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    c = change(pki.outsider)
    cert = certificate(c, chosen)
    cert.votes[2].signature = _flip(cert.votes[2].signature, 200)
    _refused_certificate(cert, committee, "vote 2: vote signature")
    cert = certificate(c, chosen[:3])
    cert.votes.append(vote(pki.outsider, change_digest(c)))
    _refused_certificate(cert, committee, "vote 3: .*not in the committee")
    malformed = change(pki.outsider, asset=ASSET[:31])
    _refused_certificate(certificate(malformed, ()), committee, "malformed change")
    empty = ledger_pb2.StateCertificate()
    _refused_certificate(empty, committee, "malformed change")


def test_batched_votes_certify(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    c = change(pki.outsider, content=b"batched")
    cert = ledger_pb2.StateCertificate(change=c)
    for v in chosen[:3]:
        ballots = [*_batch(v, 3), Ballot.for_change(c, v.id)]
        cert.votes.append(sign_ballots(ballots, v.sign, batch=True)[3])
    assert VoteVerifier().verify_certificate(cert, committee).change_digest == change_digest(c)


# --- equivocation -------------------------------------------------------------------------------


def test_two_votes_for_different_changes_of_a_slot_are_evidence(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    byzantine = chosen[3]
    first = vote(byzantine, hashlib.sha256(b"A").digest(), version=2)
    second = sign_ballots(
        [ballot(byzantine, hashlib.sha256(b"B").digest(), version=2), ballot(byzantine, ZERO)],
        byzantine.sign,
        batch=True,
    )[0]
    verifier = VoteVerifier()
    evidence = equivocation(first, second, committee, verifier)
    assert evidence is not None
    assert evidence.WhichOneof("kind") == "equivocation"
    assert evidence.equivocation.first == first
    assert evidence.equivocation.second == second
    assert equivocation(second, first, committee, verifier) is not None


def test_votes_that_do_not_conflict_are_no_evidence(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    a, b = chosen[0], chosen[1]
    d1, d2 = hashlib.sha256(b"1").digest(), hashlib.sha256(b"2").digest()
    verifier = VoteVerifier()
    same = vote(a, d1)
    for second in (
        same,  # the same vote
        vote(b, d2),  # another validator
        vote(a, d2, version=1),  # another version
        vote(a, d2, asset=OTHER_ASSET),  # another asset
    ):
        assert equivocation(same, second, committee, verifier) is None
    later, _ = committee_of(pki, epoch=1)
    with pytest.raises(InvalidVote, match="vote of epoch 1"):
        equivocation(same, vote(a, d2, epoch=1), committee, verifier)
    assert equivocation(vote(a, d1, epoch=1), vote(a, d2, epoch=1), later, verifier) is not None


def test_an_unsigned_claim_is_no_evidence(pki: Pki) -> None:
    committee, chosen = committee_of(pki)
    a = chosen[0]
    real = vote(a, hashlib.sha256(b"1").digest())
    claim = ballot(a, hashlib.sha256(b"2").digest()).to_vote()
    claim.signature = real.signature
    with pytest.raises(InvalidVote, match="does not verify"):
        equivocation(real, claim, committee, VoteVerifier())
    with pytest.raises(InvalidVote):
        equivocation(claim, real, committee, VoteVerifier())
