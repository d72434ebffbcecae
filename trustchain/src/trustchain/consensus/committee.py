"""The committee of validators of one epoch: who votes, with what weight, and what a quorum is.

A :class:`Committee` is the ``hypermesh.v1.Committee`` message made usable: every member's
TrustChain node certificate chain validated, its leaf key extracted (the key its votes are
checked under) and its stake counted. With total stake ``S``:

* a **quorum** is more than two thirds of ``S``: at least ``S * 2 // 3 + 1``; two quorums
  always share more than a third of ``S``, so if less than a third is Byzantine they share an
  honest validator, who votes for one change per (asset, version) only;
* **validity** is more than a third of ``S``: at least ``S // 3 + 1``; any set with that much
  stake contains an honest validator.

The committee's digest (:meth:`Committee.digest`) is SHA-256 over
``COMMITTEE_LABEL || deterministic encoding of the Committee message`` (members sorted by id):
a committee change is certified by the current committee voting for that digest (see
:mod:`.votes`).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hypermesh_interfaces.v1 import common_pb2, ledger_pb2
from trustchain.ca.trust import PARSE_ERRORS, TrustStore
from trustchain.ca.validation import validate
from trustchain.crypto.signatures import VerifyKey
from trustchain.errors import CertificateRejected, InvalidCommittee, UnknownValidator

__all__ = [
    "COMMITTEE_LABEL",
    "MAX_MEMBERS",
    "Committee",
    "Member",
]

#: Domain label of a committee's digest.
COMMITTEE_LABEL: Final = b"hypermesh/ledger-committee/v1\x00"
#: The most members a committee may have.
MAX_MEMBERS: Final = 256
_ID_SIZE: Final = 32
_MAX_STAKE: Final = 1 << 62


@dataclass(frozen=True)
class Member:
    """One validator: its id (its leaf key's id), key, chain (leaf first), stake, and where it
    listens (``host`` an IP address literal, ``port``, the ``name`` its certificate carries)."""

    validator_id: bytes
    key: VerifyKey
    chain: tuple[x509.Certificate, ...]
    stake: int
    host: str
    port: int
    name: str

    def to_message(self) -> ledger_pb2.CommitteeMember:
        return ledger_pb2.CommitteeMember(
            validator=common_pb2.PeerId(id=self.validator_id),
            certificate_chain=common_pb2.CertificateChain(
                certificates=[c.public_bytes(Encoding.DER) for c in self.chain]
            ),
            stake=self.stake,
            address=common_pb2.NetworkAddress(
                ip=ipaddress.ip_address(self.host).packed,
                port=self.port,
                transport=common_pb2.TRANSPORT_QUIC,
            ),
            name=self.name,
        )


@dataclass(frozen=True)
class Committee:
    """The validators of ``epoch``, sorted by id (see the module docs)."""

    epoch: int
    members: tuple[Member, ...]
    _by_id: Mapping[bytes, Member] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.epoch < 1 << 64:
            raise InvalidCommittee(f"epoch {self.epoch} does not fit 64 unsigned bits")
        if not 1 <= len(self.members) <= MAX_MEMBERS:
            raise InvalidCommittee(f"a committee has 1..{MAX_MEMBERS} members")
        ids = [m.validator_id for m in self.members]
        if ids != sorted(ids) or len(set(ids)) != len(ids):
            raise InvalidCommittee("member ids must be distinct and sorted")
        for member in self.members:
            if len(member.validator_id) != _ID_SIZE:
                raise InvalidCommittee(f"a validator id is {_ID_SIZE} bytes")
            if member.key.key_id != member.validator_id:
                raise InvalidCommittee(
                    f"member {member.validator_id.hex()}'s key has id {member.key.key_id.hex()}"
                )
            if not 0 < member.stake < _MAX_STAKE:
                raise InvalidCommittee(f"member {member.name} has stake {member.stake}")
            if not 0 < member.port < 1 << 16:
                raise InvalidCommittee(f"member {member.name} has port {member.port}")
        object.__setattr__(self, "_by_id", {m.validator_id: m for m in self.members})

    @property
    def total_stake(self) -> int:
        return sum(m.stake for m in self.members)

    @property
    def quorum_stake(self) -> int:
        """The least stake that is more than two thirds of the total."""
        return self.total_stake * 2 // 3 + 1

    @property
    def validity_stake(self) -> int:
        """The least stake that is more than a third of the total."""
        return self.total_stake // 3 + 1

    def member(self, validator_id: bytes) -> Member:
        """The member ``validator_id``; :class:`UnknownValidator` if there is none."""
        try:
            return self._by_id[bytes(validator_id)]
        except KeyError:
            raise UnknownValidator(
                f"{bytes(validator_id).hex()} is not in the committee of epoch {self.epoch}"
            ) from None

    def stake_of(self, validator_ids: Iterable[bytes]) -> int:
        """The stake of the distinct members among ``validator_ids`` (others count 0)."""
        return sum(self._by_id[v].stake for v in set(validator_ids) if v in self._by_id)

    def is_quorum(self, validator_ids: Iterable[bytes]) -> bool:
        return self.stake_of(validator_ids) >= self.quorum_stake

    def to_message(self) -> ledger_pb2.Committee:
        return ledger_pb2.Committee(
            epoch=self.epoch, members=[m.to_message() for m in self.members]
        )

    def digest(self) -> bytes:
        """SHA-256 over :data:`COMMITTEE_LABEL` and the deterministic encoding."""
        encoded = self.to_message().SerializeToString(deterministic=True)
        return hashlib.sha256(COMMITTEE_LABEL + encoded).digest()

    @classmethod
    def from_message(
        cls,
        message: ledger_pb2.Committee,
        trust_store: TrustStore,
        *,
        at: datetime | None = None,
    ) -> Committee:
        """The committee ``message`` describes, each member's chain validated against
        ``trust_store`` at ``at`` (None: now) and required to name the member's ``name`` (a
        subjectAltName dNSName). :class:`InvalidCommittee` for anything wrong, naming the
        member; a message of more than :data:`MAX_MEMBERS` members is refused before any chain
        is read."""
        if not 1 <= len(message.members) <= MAX_MEMBERS:
            raise InvalidCommittee(f"a committee has 1..{MAX_MEMBERS} members")
        members = []
        for index, entry in enumerate(message.members):
            what = f"member {index} ({entry.name or 'unnamed'})"
            chain = _decoded_chain(entry.certificate_chain.certificates, what)
            try:
                report = validate(chain, trust_store, at=at, dns_name=entry.name)
            except CertificateRejected as exc:
                raise InvalidCommittee(f"{what}: certificate chain rejected: {exc}") from exc
            if report.peer_id != entry.validator.id:
                raise InvalidCommittee(f"{what}: its certificate is not for its validator id")
            address = entry.address
            if len(address.ip) not in (4, 16):
                raise InvalidCommittee(f"{what}: address has a {len(address.ip)}-byte IP")
            members.append(
                Member(
                    validator_id=bytes(entry.validator.id),
                    key=report.leaf_key,
                    chain=tuple(chain),
                    stake=entry.stake,
                    host=str(ipaddress.ip_address(address.ip)),
                    port=address.port,
                    name=entry.name,
                )
            )
        return cls(message.epoch, tuple(members))


def _decoded_chain(ders: Iterable[bytes], what: str) -> list[x509.Certificate]:
    chain = []
    for der in ders:
        try:
            chain.append(x509.load_der_x509_certificate(der))
        except PARSE_ERRORS as exc:
            raise InvalidCommittee(f"{what}: a certificate does not decode: {exc}") from exc
    if not chain:
        raise InvalidCommittee(f"{what}: no certificate chain")
    return chain
