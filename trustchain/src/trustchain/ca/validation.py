"""Certificate path validation for hybrid (Ed25519 + Falcon-1024) certificate chains.

:func:`validate` answers "how much do I trust this chain?" with a :class:`ValidationReport`
(a :class:`~trustchain.ca.trust.TrustLevel`, the anchor, the path, notes) or raises
:class:`~trustchain.errors.CertificateRejected` with a
:class:`~trustchain.errors.RejectionReason`. It never returns a negative answer.

Path building
=============

The chain is the leaf followed by any certificates the peer sends, in any order (extra ones
are allowed). Every presented certificate must decode (``MALFORMED``) and, when it has a
subjectKeyIdentifier, that identifier must name its hybrid key (``ALT_KEY_MISMATCH``: the
alternative key was swapped, see :mod:`trustchain.ca.profiles`). From the leaf, the issuers of
a certificate are looked for among the presented certificates, the store's extra certificates
and its anchors: same name as the certificate's issuer, subjectKeyIdentifier equal to its
authorityKeyIdentifier when both are present, and **both** signatures verifying under the
candidate's hybrid key (:func:`trustchain.ca.hybrid.verify_certificate_signatures`). The
search is depth-first, never revisits a (name, key) pair, stops at :data:`MAX_PATH_LENGTH`
certificates, and ends a path at the first certificate whose name and key are an anchor's (so
CA rollover cross-certificates and federation cross-certificates are simply more candidate
issuers). Every complete path is then checked (below); the report with the highest trust
level wins (then the shorter path). If no path passes, the error raised is, in this order of
preference: the failed check of the first complete path (anchors tried in order of trust
level), else the first link whose signatures failed (``CLASSICAL_SIGNATURE_INVALID``,
``ALT_SIGNATURE_INVALID``, ``UNSUPPORTED_ALGORITHM``, ``MALFORMED``), else
``UNTRUSTED_ROOT``.

Checks on a path (leaf = position 0, anchor = last)
===================================================

In this order; the first failure is raised:

1. No certificate has a critical extension outside
   :data:`~trustchain.ca.trust.PROCESSED_CERTIFICATE_EXTENSIONS`
   (``UNSUPPORTED_CRITICAL_EXTENSION``).
2. Every certificate, the anchor's included, is within its validity period at ``at``, allowing
   ``clock_skew`` either way (``EXPIRED``, ``NOT_YET_VALID``). The skew is at most
   :data:`MAX_CLOCK_SKEW`.
3. Every issuer (position >= 1): basicConstraints cA (``NOT_A_CA``); keyUsage, if present,
   with keyCertSign (``KEY_USAGE_MISMATCH``); its pathLenConstraint at least the number of
   non-self-issued intermediates below it (RFC 5280 §6.1.4 (l); ``PATH_LENGTH_EXCEEDED``); its
   nameConstraints hold for every certificate below it except self-issued intermediates
   (``NAME_CONSTRAINTS_VIOLATED``, see below); and, for a TLS purpose, an extKeyUsage if
   present allows it (``PURPOSE_MISMATCH``).
4. The leaf: for a TLS purpose, keyUsage (if present) has digitalSignature
   (``KEY_USAGE_MISMATCH``) and extKeyUsage (if present) has serverAuth / clientAuth or
   anyExtendedKeyUsage (``PURPOSE_MISMATCH``); a ``hypermesh://node/<id>`` URI names the leaf's
   own key id (it is self-certifying, ``IDENTITY_MISMATCH``); the requested ``dns_name`` /
   ``ip`` / ``uri`` / ``peer_id`` match (``IDENTITY_MISMATCH``).
5. The anchor's policy: ``max_chain_length`` (``PATH_LENGTH_EXCEEDED``), ``allowed_ekus``
   (``PURPOSE_MISMATCH``).
6. Revocation, for every certificate below the anchor: listed on any CRL the store holds from
   its issuer's key (``REVOKED``, with the CRL entry's reason; a listing counts even on an
   outdated CRL), else "known good" only when a CRL of that issuer key whose scope covers it
   (:meth:`~trustchain.ca.trust.CrlRecord.covers`) is current at ``at`` (allowing the skew).
   Unknown: ``REVOCATION_UNKNOWN`` if the anchor's policy requires revocation information.
   CRLs are matched by *key*, not by issuer name alone: a CRL speaks for what the key that
   signed it issued (TrustChain CA names such as ``O=TrustChain, CN=dmv`` recur across
   federations, so a name match would let one federation revoke another's certificates).
   During a CA key rollover the CA publishes a CRL per non-retired key
   (``CertificateAuthority.crl(key_version=...)``).
7. Transparency, for the leaf: an SCT embedded in it (:mod:`trustchain.ca.embedded_sct`) from
   a log the store trusts, whose signature verifies and which commits to
   :func:`~trustchain.ca.embedded_sct.log_entry` of the leaf, with a timestamp not in the
   future. If the policy requires one: ``SCT_MISSING`` (none at all), ``SCT_INVALID`` (one
   from a trusted log fails), ``SCT_UNTRUSTED_LOG`` (only untrusted logs).

Trust level rules
=================

The level of a path is the minimum of:

* the anchor's ``max_trust_level``;
* the ``max_trust_level`` of every extra certificate of the store on the path (a presented
  certificate counts as the extra certificate with the same encoding). A path through a key
  that is itself an anchor ends at that anchor, so a federation's chain is never trusted more
  than its own anchor says, whoever cross-certified it;
* ``PARTIAL`` when a check the policy does not require could not be confirmed: the revocation
  status of some certificate is unknown (no current CRL covers it), or the leaf has no
  verifiable SCT from a trusted log (the proto's "inclusion not yet confirmed"). Each such
  degradation adds a note.

With ``allow_self_asserted=True``, a chain that ends in a self-signed certificate (both
signatures verifying under its own key) that is not an anchor gets ``SELF_ASSERTED`` after
checks 1 to 4 instead of ``UNTRUSTED_ROOT``.

Name constraints (RFC 5280 §4.2.1.10), implemented here
========================================================

Names checked: every subjectAltName entry, and the subject DN as a directoryName (when not
empty); as in RFC 5280, a subject common name is not a dNSName (identities live in the
subjectAltName, which is also the only place ``dns_name`` is matched). For each name form,
a name must lie in one of the permitted subtrees of its form when there are any, and in none
of the excluded ones:

* dNSName: ``example.com`` covers itself and every name below it, ``.example.com`` only the
  names below it, the empty string everything; case-insensitive. A wildcard name
  ``*.example.com`` is permitted only if every name it can match is, and excluded if any is.
* iPAddress: the address lies in the constraint's network (same IP version; IPv4 and IPv6
  are one name form, so IPv4-only permitted ranges exclude every IPv6 address).
* uniformResourceIdentifier: the URI's host (``hypermesh://node/...`` has host ``node``):
  ``host.example`` covers exactly that host, ``.example`` any host below it. A URI without a
  host never lies in a permitted subtree.
* rfc822Name: ``user@host`` exactly, ``host`` any mailbox at it, ``.host`` any below it.
* directoryName: the constraint's RDNs are a prefix of the name's.

A constrained name of any other form (otherName, registeredID...) cannot be checked and is
rejected.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from hypermesh_interfaces.v1 import common_pb2, security_pb2
from trustchain.ca import embedded_sct, hybrid, oids
from trustchain.ca.trust import (
    PARSE_ERRORS,
    CertificateFacts,
    StoreSnapshot,
    TrustAnchor,
    TrustLevel,
    TrustStore,
    key_identifier,
)
from trustchain.crypto.signatures import VerifyKey
from trustchain.errors import (
    AlgorithmMismatch,
    AltSignatureInvalid,
    CertificateRejected,
    ClassicalSignatureInvalid,
    InvalidSignature,
    MalformedData,
    RejectionReason,
    UnknownAlgorithm,
    UnknownTrustPolicy,
)

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "MAX_CLOCK_SKEW",
    "MAX_PATH_LENGTH",
    "Purpose",
    "ValidationReport",
    "permitted_by_name_constraints",
    "validate",
    "validate_certificates_response",
    "validation_result_message",
]

#: Default tolerance for clocks that disagree.
DEFAULT_CLOCK_SKEW: Final = timedelta(minutes=5)
#: The largest clock skew :func:`validate` accepts.
MAX_CLOCK_SKEW: Final = timedelta(hours=1)
#: Longest path considered, in certificates (leaf and anchor included).
MAX_PATH_LENGTH: Final = 8
#: Path building gives up after this many signature checks (a bound on adversarial input).
MAX_SIGNATURE_CHECKS: Final = 256
#: At most this many complete paths are checked.
MAX_COMPLETE_PATHS: Final = 32

Rejection = CertificateRejected
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Purpose(enum.Enum):
    """What the leaf is validated for."""

    #: Anything: no key usage or extended key usage requirement on the leaf.
    ANY = "any"
    #: A TLS server (extKeyUsage serverAuth).
    SERVER = "server"
    #: A TLS client (extKeyUsage clientAuth).
    CLIENT = "client"

    @property
    def eku(self) -> x509.ObjectIdentifier | None:
        """The extended key usage this purpose needs (``None`` for ANY)."""
        if self is Purpose.SERVER:
            return ExtendedKeyUsageOID.SERVER_AUTH
        if self is Purpose.CLIENT:
            return ExtendedKeyUsageOID.CLIENT_AUTH
        return None


@dataclass(frozen=True)
class ValidationReport:
    """A chain :func:`validate` accepted.

    ``path`` runs from the leaf to the anchor's certificate (for ``SELF_ASSERTED``: to the
    self-signed certificate); ``anchor`` is the anchor's name (``None`` for ``SELF_ASSERTED``);
    ``notes`` say why the level is below the anchor's, and what else is worth knowing.
    """

    trust_level: TrustLevel
    anchor: str | None
    path: tuple[x509.Certificate, ...]
    notes: tuple[str, ...]
    leaf_key: VerifyKey

    @property
    def peer_id(self) -> bytes:
        """The leaf key's id (``hypermesh.v1.PeerId.id``)."""
        return self.leaf_key.key_id


# --- path building --------------------------------------------------------------------------------


class _Entry:
    """A certificate path building may use: where it comes from and what it may confer."""

    __slots__ = ("anchor", "cap", "facts", "index")

    def __init__(
        self,
        facts: CertificateFacts,
        index: int | None,
        anchor: TrustAnchor | None,
        cap: TrustLevel,
    ) -> None:
        self.facts = facts
        self.index = index
        self.anchor = anchor
        self.cap = cap


@dataclass(frozen=True)
class _Context:
    snapshot: StoreSnapshot
    at: datetime
    skew: timedelta
    purpose: Purpose
    dns_name: str | None
    ip: IpAddress | None
    uri: str | None
    peer_id: bytes | None


class _Builder:
    """Depth-first search for paths from the leaf to an anchor (see the module docs)."""

    def __init__(self, leaf: _Entry, pool: Mapping[x509.Name, list[_Entry]]) -> None:
        self.leaf = leaf
        self.pool = pool
        self.complete: list[tuple[_Entry, ...]] = []
        self.self_signed: list[tuple[_Entry, ...]] = []
        self.link_failures: list[CertificateRejected] = []
        self.no_issuer: list[CertificateRejected] = []
        self._checked: dict[tuple[bytes, bytes], CertificateRejected | None] = {}

    def run(self) -> None:
        self._search([self.leaf])

    def _verify(self, child: _Entry, issuer_key: VerifyKey) -> CertificateRejected | None:
        slot = (child.facts.der, issuer_key.key_id)
        if slot in self._checked:
            return self._checked[slot]
        if len(self._checked) >= MAX_SIGNATURE_CHECKS:
            return Rejection(
                RejectionReason.UNTRUSTED_ROOT,
                f"gave up path building after {MAX_SIGNATURE_CHECKS} signature checks",
                child.index,
            )
        outcome = _signature_outcome(child, issuer_key)
        self._checked[slot] = outcome
        return outcome

    def _search(self, path: list[_Entry]) -> None:
        if len(self.complete) >= MAX_COMPLETE_PATHS:
            return
        node = path[-1]
        if node.anchor is not None:
            self.complete.append(tuple(path))
            return
        facts = node.facts
        if facts.self_issued and self._verify(node, facts.key) is None:
            self.self_signed.append(tuple(path))
        if len(path) >= MAX_PATH_LENGTH:
            self.no_issuer.append(
                Rejection(
                    RejectionReason.UNTRUSTED_ROOT,
                    f"no trust anchor within {MAX_PATH_LENGTH} certificates",
                    node.index,
                )
            )
            return
        seen = {(entry.facts.subject, entry.facts.key_id) for entry in path}
        found = False
        for candidate in self.pool.get(facts.issuer, ()):
            candidate_facts = candidate.facts
            if (candidate_facts.subject, candidate_facts.key_id) in seen:
                continue
            ski = candidate_facts.subject_key_identifier
            aki = facts.authority_key_identifier
            if aki is not None and ski is not None and aki != ski:
                continue
            found = True
            failure = self._verify(node, candidate_facts.key)
            if failure is not None:
                self.link_failures.append(failure)
                continue
            self._search([*path, candidate])
        if not found and not facts.self_issued:
            self.no_issuer.append(
                Rejection(
                    RejectionReason.UNTRUSTED_ROOT,
                    f"no issuer certificate named {facts.issuer.rfc4514_string()!r} is "
                    "presented or in the trust store",
                    node.index,
                )
            )


def _signature_outcome(child: _Entry, issuer_key: VerifyKey) -> CertificateRejected | None:
    """``None`` if both of ``child``'s signatures verify under ``issuer_key``."""
    try:
        hybrid.verify_certificate_signatures(child.facts.certificate, issuer_key)
    except ClassicalSignatureInvalid as exc:
        return Rejection(RejectionReason.CLASSICAL_SIGNATURE_INVALID, str(exc), child.index)
    except AltSignatureInvalid as exc:
        return Rejection(RejectionReason.ALT_SIGNATURE_INVALID, str(exc), child.index)
    except InvalidSignature as exc:
        return Rejection(RejectionReason.INVALID_SIGNATURE, str(exc), child.index)
    except (AlgorithmMismatch, UnknownAlgorithm) as exc:
        return Rejection(RejectionReason.UNSUPPORTED_ALGORITHM, str(exc), child.index)
    except MalformedData as exc:
        return Rejection(RejectionReason.MALFORMED, str(exc), child.index)
    return None


def _decode_presented(chain: Sequence[x509.Certificate]) -> list[CertificateFacts]:
    presented: list[CertificateFacts] = []
    for index, certificate in enumerate(chain):
        if not isinstance(certificate, x509.Certificate):
            raise Rejection(
                RejectionReason.MALFORMED,
                f"expected an x509.Certificate, got {type(certificate).__name__}",
                index,
            )
        try:
            facts = CertificateFacts.of(certificate)
        except MalformedData as exc:
            raise Rejection(RejectionReason.MALFORMED, str(exc), index) from exc
        if not facts.key_identifier_matches:
            raise Rejection(
                RejectionReason.ALT_KEY_MISMATCH,
                "the subjectKeyIdentifier does not name the certificate's hybrid key (expected "
                f"{key_identifier(facts.key).hex()}); one key half was swapped",
                index,
            )
        presented.append(facts)
    return presented


def _anchor_of(facts: CertificateFacts, anchors: Sequence[TrustAnchor]) -> TrustAnchor | None:
    for anchor in anchors:
        if facts.names_identity(anchor.facts.subject, anchor.facts.key_id):
            return anchor
    return None


def _pool(
    presented: Sequence[CertificateFacts], snapshot: StoreSnapshot
) -> tuple[_Entry, dict[x509.Name, list[_Entry]]]:
    """The leaf's entry and every candidate issuer by subject name: anchors (highest trust
    first), then presented certificates, then the store's extra certificates."""
    anchors = sorted(snapshot.anchors, key=lambda anchor: -anchor.max_trust_level)
    caps = {entry.facts.der: entry.max_trust_level for entry in snapshot.certificates}
    by_der: dict[bytes, _Entry] = {}
    for anchor in anchors:
        by_der.setdefault(anchor.facts.der, _Entry(anchor.facts, None, anchor, TrustLevel.FULL))
    leaf_facts = presented[0]
    leaf = _Entry(
        leaf_facts,
        0,
        _anchor_of(leaf_facts, anchors),
        caps.get(leaf_facts.der, TrustLevel.FULL),
    )
    others: list[tuple[int | None, CertificateFacts]] = [
        (index, facts) for index, facts in enumerate(presented) if index > 0
    ]
    others += [(None, entry.facts) for entry in snapshot.certificates]
    for index, facts in others:
        known = by_der.get(facts.der)
        if known is not None:
            if known.index is None:
                known.index = index
            continue
        if _anchor_of(facts, anchors) is not None:
            continue  # the anchor's own entry stands for a certificate of its name and key
        by_der[facts.der] = _Entry(facts, index, None, caps.get(facts.der, TrustLevel.FULL))
    pool: dict[x509.Name, list[_Entry]] = {}
    for entry in by_der.values():
        pool.setdefault(entry.facts.subject, []).append(entry)
    return leaf, pool


# --- checks ---------------------------------------------------------------------------------------


def _check_path(path: tuple[_Entry, ...], context: _Context) -> None:
    """Checks 1 to 4 of the module docs (everything but the anchor's policy, CRLs and SCTs)."""
    for entry in path:
        facts = entry.facts
        if facts.unprocessed_critical:
            names = ", ".join(oid.dotted_string for oid in facts.unprocessed_critical)
            raise Rejection(
                RejectionReason.UNSUPPORTED_CRITICAL_EXTENSION,
                f"unsupported critical extension(s) {names}",
                entry.index,
            )
    for entry in path:
        _check_validity(entry, context)
    for position in range(1, len(path)):
        _check_issuer(path, position, context)
    _check_leaf(path[0], context)


def _check_validity(entry: _Entry, context: _Context) -> None:
    facts = entry.facts
    if context.at - context.skew > facts.not_after:
        raise Rejection(
            RejectionReason.EXPIRED,
            f"expired at {facts.not_after.isoformat()} (validating at "
            f"{context.at.isoformat()}, skew {context.skew})",
            entry.index,
        )
    if context.at + context.skew < facts.not_before:
        raise Rejection(
            RejectionReason.NOT_YET_VALID,
            f"not valid before {facts.not_before.isoformat()} (validating at "
            f"{context.at.isoformat()}, skew {context.skew})",
            entry.index,
        )


def _check_issuer(path: tuple[_Entry, ...], position: int, context: _Context) -> None:
    entry = path[position]
    facts = entry.facts
    if not facts.is_ca:
        raise Rejection(
            RejectionReason.NOT_A_CA,
            "issued a certificate but is not a CA (basicConstraints cA missing or false)",
            entry.index,
        )
    if facts.key_usage is not None and not facts.key_usage.key_cert_sign:
        raise Rejection(
            RejectionReason.KEY_USAGE_MISMATCH,
            "issued a certificate but its keyUsage lacks keyCertSign",
            entry.index,
        )
    constraints = facts.basic_constraints
    if constraints is not None and constraints.path_length is not None:
        below = sum(1 for other in path[1:position] if not other.facts.self_issued)
        if below > constraints.path_length:
            raise Rejection(
                RejectionReason.PATH_LENGTH_EXCEEDED,
                f"pathLenConstraint {constraints.path_length} but {below} intermediate CA "
                "certificate(s) below it",
                entry.index,
            )
    if facts.name_constraints is not None:
        for below_position in range(position):
            subject = path[below_position]
            if below_position > 0 and subject.facts.self_issued:
                continue
            _check_name_constraints(facts.name_constraints, subject)
    wanted = context.purpose.eku
    eku = facts.extended_key_usage
    if wanted is not None and eku is not None and not _eku_allows(eku, wanted):
        raise Rejection(
            RejectionReason.PURPOSE_MISMATCH,
            f"CA extKeyUsage does not allow {context.purpose.value} authentication",
            entry.index,
        )


def _eku_allows(eku: frozenset[x509.ObjectIdentifier], wanted: x509.ObjectIdentifier) -> bool:
    return wanted in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku


def _check_leaf(leaf: _Entry, context: _Context) -> None:
    facts = leaf.facts
    wanted = context.purpose.eku
    if wanted is not None:
        if facts.key_usage is not None and not facts.key_usage.digital_signature:
            raise Rejection(
                RejectionReason.KEY_USAGE_MISMATCH,
                f"keyUsage lacks digitalSignature, needed for {context.purpose.value} "
                "authentication",
                leaf.index,
            )
        eku = facts.extended_key_usage
        if eku is not None and not _eku_allows(eku, wanted):
            raise Rejection(
                RejectionReason.PURPOSE_MISMATCH,
                f"extKeyUsage does not allow {context.purpose.value} authentication",
                leaf.index,
            )
    names = facts.subject_alt_names or ()
    for name in names:
        if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith(
            f"{oids.HYPERMESH_URI_SCHEME}://node/"
        ):
            try:
                _, node_id = oids.parse_hypermesh_uri(name.value)
            except MalformedData as exc:
                raise Rejection(RejectionReason.MALFORMED, str(exc), leaf.index) from exc
            if node_id != facts.key_id:
                raise Rejection(
                    RejectionReason.IDENTITY_MISMATCH,
                    f"node URI {name.value} does not name the certificate's key "
                    f"({facts.key_id.hex()})",
                    leaf.index,
                )
    _check_identity(leaf, context)


def _check_identity(leaf: _Entry, context: _Context) -> None:
    facts = leaf.facts
    names = facts.subject_alt_names or ()
    if context.dns_name is not None:
        wanted_dns = _normal_dns(context.dns_name)
        dns_names = [_normal_dns(n.value) for n in names if isinstance(n, x509.DNSName)]
        if not any(_dns_matches(pattern, wanted_dns) for pattern in dns_names):
            raise Rejection(
                RejectionReason.IDENTITY_MISMATCH,
                f"no subjectAltName dNSName matches {context.dns_name!r}",
                leaf.index,
            )
    if context.ip is not None:
        addresses = [n.value for n in names if isinstance(n, x509.IPAddress)]
        if context.ip not in addresses:
            raise Rejection(
                RejectionReason.IDENTITY_MISMATCH,
                f"no subjectAltName iPAddress is {context.ip}",
                leaf.index,
            )
    if context.uri is not None:
        uris = [n.value for n in names if isinstance(n, x509.UniformResourceIdentifier)]
        if context.uri not in uris:
            raise Rejection(
                RejectionReason.IDENTITY_MISMATCH,
                f"no subjectAltName URI is {context.uri!r}",
                leaf.index,
            )
    if context.peer_id is not None and context.peer_id != facts.key_id:
        raise Rejection(
            RejectionReason.IDENTITY_MISMATCH,
            f"the leaf key is peer {facts.key_id.hex()}, expected {context.peer_id.hex()}",
            leaf.index,
        )


def _normal_dns(name: str) -> str:
    return name.lower().removesuffix(".")


def _dns_matches(pattern: str, name: str) -> bool:
    """RFC 6125 §6.4.3 matching, wildcard only as the whole leftmost label."""
    if pattern == name:
        return True
    if pattern.startswith("*.") and "*" not in pattern[2:]:
        label, dot, rest = name.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return False


def _check_policy(path: tuple[_Entry, ...], anchor: TrustAnchor, context: _Context) -> None:
    policy = anchor.policy
    if policy.max_chain_length is not None and len(path) > policy.max_chain_length:
        raise Rejection(
            RejectionReason.PATH_LENGTH_EXCEEDED,
            f"the path has {len(path)} certificates; anchor {anchor.name!r} allows "
            f"{policy.max_chain_length}",
            None,
        )
    allowed = policy.allowed_ekus
    if allowed is not None:
        leaf = path[0]
        wanted = context.purpose.eku
        if wanted is not None and wanted not in allowed:
            raise Rejection(
                RejectionReason.PURPOSE_MISMATCH,
                f"anchor {anchor.name!r} does not vouch for {context.purpose.value} authentication",
                leaf.index,
            )
        eku = leaf.facts.extended_key_usage
        if eku is not None and not eku & allowed:
            raise Rejection(
                RejectionReason.PURPOSE_MISMATCH,
                f"none of the leaf's extended key usages is one anchor {anchor.name!r} vouches for",
                leaf.index,
            )


def _check_revocation(path: tuple[_Entry, ...], context: _Context) -> list[str]:
    """Raise ``REVOKED`` for a listed certificate; return notes on unknown statuses."""
    unknown: list[str] = []
    for position in range(len(path) - 1):
        entry = path[position]
        facts = entry.facts
        issuer = path[position + 1].facts
        records = [
            record
            for record in context.snapshot.crls_of(issuer.key_id)
            if record.issuer == facts.issuer
        ]
        for record in records:
            if facts.serial_number in record.revoked:
                reason = record.revoked[facts.serial_number]
                raise Rejection(
                    RejectionReason.REVOKED,
                    f"serial {facts.serial_number:x} is on CRL {record.number} of "
                    f"{record.issuer.rfc4514_string()!r} (reason: {reason or 'unspecified'})",
                    entry.index,
                    revocation_reason=reason,
                )
        if not any(
            record.covers(facts) and record.current_at(context.at, context.skew)
            for record in records
        ):
            unknown.append(
                f"revocation status of certificate {_describe(entry, position)} unknown: no "
                "current CRL of its issuer covers it"
            )
    return unknown


def _describe(entry: _Entry, position: int) -> str:
    where = f"{entry.index}" if entry.index is not None else f"at path position {position}"
    return f"{where} ({entry.facts.subject.rfc4514_string()})"


def _check_sct(leaf: _Entry, context: _Context) -> tuple[RejectionReason, str] | None:
    """``None`` if the leaf has a verifiable SCT from a trusted log, else why not."""
    certificate = leaf.facts.certificate
    try:
        scts = embedded_sct.embedded_scts(certificate)
        entry = embedded_sct.log_entry(certificate)
    except MalformedData as exc:
        raise Rejection(RejectionReason.MALFORMED, f"embedded SCTs: {exc}", leaf.index) from exc
    if not scts:
        return RejectionReason.SCT_MISSING, "the leaf carries no signed certificate timestamp"
    latest = int((context.at + context.skew).timestamp() * 1000)
    problems: list[str] = []
    for sct in scts:
        key = context.snapshot.log_keys.get(sct.log_id)
        if key is None:
            continue
        if sct.timestamp > latest:
            problems.append(f"SCT of log {sct.log_id.hex()[:16]} is dated in the future")
            continue
        try:
            sct.verify(key, entry=entry)
        except (InvalidSignature, AlgorithmMismatch) as exc:
            problems.append(f"SCT of log {sct.log_id.hex()[:16]}: {exc}")
            continue
        return None
    if problems:
        return RejectionReason.SCT_INVALID, "; ".join(problems)
    logs = ", ".join(sct.log_id.hex()[:16] for sct in scts)
    return RejectionReason.SCT_UNTRUSTED_LOG, f"SCTs only from untrusted logs ({logs})"


def _evaluate(path: tuple[_Entry, ...], context: _Context) -> ValidationReport:
    """Check a path that ends at an anchor; the report or :class:`CertificateRejected`."""
    anchor = path[-1].anchor
    assert anchor is not None
    _check_path(path, context)
    _check_policy(path, anchor, context)
    notes: list[str] = []
    level = min(anchor.max_trust_level, *(entry.cap for entry in path))
    if level < anchor.max_trust_level:
        notes.append(f"a certificate of the trust store on the path caps trust at {level.name}")
    unknown = _check_revocation(path, context)
    if unknown:
        if anchor.policy.require_revocation_info:
            raise Rejection(RejectionReason.REVOCATION_UNKNOWN, unknown[0], None)
        notes.extend(unknown)
        level = min(level, TrustLevel.PARTIAL)
    problem = _check_sct(path[0], context)
    if problem is not None:
        reason, detail = problem
        if anchor.policy.require_sct:
            raise Rejection(reason, detail, path[0].index)
        notes.append(f"transparency not confirmed: {detail}")
        level = min(level, TrustLevel.PARTIAL)
    return ValidationReport(
        trust_level=level,
        anchor=anchor.name,
        path=tuple(entry.facts.certificate for entry in path),
        notes=tuple(notes),
        leaf_key=path[0].facts.key,
    )


# --- name constraints -----------------------------------------------------------------------------


_SUPPORTED_FORMS: Final = (
    x509.DNSName,
    x509.IPAddress,
    x509.UniformResourceIdentifier,
    x509.RFC822Name,
    x509.DirectoryName,
)


def _check_name_constraints(constraints: x509.NameConstraints, subject: _Entry) -> None:
    facts = subject.facts
    names: list[x509.GeneralName] = list(facts.subject_alt_names or ())
    if len(facts.subject) > 0:
        names.append(x509.DirectoryName(facts.subject))
    permitted = list(constraints.permitted_subtrees or ())
    excluded = list(constraints.excluded_subtrees or ())
    for name in names:
        form = type(name)
        permitted_here = [tree for tree in permitted if type(tree) is form]
        excluded_here = [tree for tree in excluded if type(tree) is form]
        if not permitted_here and not excluded_here:
            continue
        if not isinstance(name, _SUPPORTED_FORMS):
            raise Rejection(
                RejectionReason.NAME_CONSTRAINTS_VIOLATED,
                f"cannot check the constrained {form.__name__} {name!r}",
                subject.index,
            )
        for tree in excluded_here:
            if _within(name, tree, excluded=True):
                raise Rejection(
                    RejectionReason.NAME_CONSTRAINTS_VIOLATED,
                    f"{_show(name)} is in an excluded subtree ({_show(tree)})",
                    subject.index,
                )
        if permitted_here and not any(
            _within(name, tree, excluded=False) for tree in permitted_here
        ):
            allowed = ", ".join(_show(tree) for tree in permitted_here)
            raise Rejection(
                RejectionReason.NAME_CONSTRAINTS_VIOLATED,
                f"{_show(name)} is outside the permitted subtrees ({allowed})",
                subject.index,
            )


def permitted_by_name_constraints(
    certificates: Sequence[x509.Certificate], name: x509.GeneralName
) -> bool:
    """Whether ``name`` is allowed by the nameConstraints of every certificate in
    ``certificates`` (typically the CA certificates of a validated path, ``report.path[1:]``).

    The rules are those validation applies to a certificate's names (see "Name constraints"
    in the module docs): for each constraint that has subtrees of ``name``'s form, ``name``
    lies in one of its permitted subtrees (when it has any) and in none of its excluded ones.
    A certificate without nameConstraints, or without subtrees of that form, allows the name
    (RFC 5280); callers that need a positive grant check that some subtree exists. ``False``
    for a form validation cannot check (otherName...) that any certificate constrains.
    :class:`~trustchain.errors.MalformedData` if a certificate's extensions do not decode.
    """
    form = type(name)
    for certificate in certificates:
        try:
            extension = certificate.extensions.get_extension_for_class(x509.NameConstraints)
        except x509.ExtensionNotFound:
            continue
        except PARSE_ERRORS as exc:
            raise MalformedData(f"certificate extensions do not decode: {exc}") from exc
        constraints = extension.value
        permitted = [t for t in constraints.permitted_subtrees or () if type(t) is form]
        excluded = [t for t in constraints.excluded_subtrees or () if type(t) is form]
        if not permitted and not excluded:
            continue
        if not isinstance(name, _SUPPORTED_FORMS):
            return False
        if any(_within(name, tree, excluded=True) for tree in excluded):
            return False
        if permitted and not any(_within(name, tree, excluded=False) for tree in permitted):
            return False
    return True


def _show(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DirectoryName):
        return f"directoryName {name.value.rfc4514_string()!r}"
    return f"{type(name).__name__} {name.value!s}"


def _within(name: x509.GeneralName, tree: x509.GeneralName, *, excluded: bool) -> bool:
    """Whether ``name`` lies in the subtree ``tree`` (same form). For an ``excluded`` subtree a
    wildcard DNS name counts as inside when any name it can match is."""
    if isinstance(name, x509.DNSName) and isinstance(tree, x509.DNSName):
        return _dns_within(_normal_dns(name.value), _normal_dns(tree.value), excluded=excluded)
    if isinstance(name, x509.IPAddress) and isinstance(tree, x509.IPAddress):
        return _ip_within(name.value, tree.value)
    if isinstance(name, x509.UniformResourceIdentifier) and isinstance(
        tree, x509.UniformResourceIdentifier
    ):
        return _uri_within(name.value, tree.value)
    if isinstance(name, x509.RFC822Name) and isinstance(tree, x509.RFC822Name):
        return _email_within(name.value, tree.value)
    if isinstance(name, x509.DirectoryName) and isinstance(tree, x509.DirectoryName):
        prefix = tree.value.rdns
        return name.value.rdns[: len(prefix)] == prefix
    return False


def _domain_within(name: str, constraint: str) -> bool:
    """RFC 5280 dNSName rule: ``constraint`` and below; ``.constraint`` only below."""
    if not constraint:
        return True
    if constraint.startswith("."):
        return name.endswith(constraint)
    return name == constraint or name.endswith("." + constraint)


def _dns_within(name: str, constraint: str, *, excluded: bool) -> bool:
    if not name.startswith("*."):
        return _domain_within(name, constraint)
    base = name[2:]
    # every name "<label>.base" is within the constraint iff base is within its undotted form
    every = not constraint or _domain_within(base, constraint.lstrip("."))
    if not excluded:
        return every
    # some "<label>.base" equals an undotted constraint one label longer than base
    parent = constraint.partition(".")[2]
    return every or (not constraint.startswith(".") and parent == base)


def _ip_within(address: object, network: object) -> bool:
    if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address) and isinstance(
        network, ipaddress.IPv4Network | ipaddress.IPv6Network
    ):
        return address.version == network.version and address in network
    return False


def _uri_within(uri: str, constraint: str) -> bool:
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return False
    if not host:
        return False
    host = _normal_dns(host)
    constraint = _normal_dns(constraint)
    if constraint.startswith("."):
        return host.endswith(constraint)
    return host == constraint


def _email_within(mailbox: str, constraint: str) -> bool:
    local, at, host = mailbox.rpartition("@")
    if not at or not local:
        return False
    if "@" in constraint:
        wanted_local, _, wanted_host = constraint.rpartition("@")
        return local == wanted_local and host.lower() == wanted_host.lower()
    host = host.lower()
    constraint = constraint.lower()
    if constraint.startswith("."):
        return host.endswith(constraint)
    return host == constraint


# --- the entry point ------------------------------------------------------------------------------


def _context(
    store: TrustStore,
    at: datetime | None,
    purpose: Purpose,
    clock_skew: timedelta,
    dns_name: str | None,
    ip: str | IpAddress | None,
    uri: str | None,
    peer_id: bytes | None,
) -> _Context:
    when = datetime.now(UTC) if at is None else at
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("validation time must be timezone-aware")
    if not timedelta(0) <= clock_skew <= MAX_CLOCK_SKEW:
        raise ValueError(f"clock skew must be between 0 and {MAX_CLOCK_SKEW}, got {clock_skew}")
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    return _Context(
        snapshot=store.snapshot(),
        at=when.astimezone(UTC),
        skew=clock_skew,
        purpose=purpose,
        dns_name=dns_name,
        ip=address,
        uri=uri,
        peer_id=None if peer_id is None else bytes(peer_id),
    )


def validate(
    chain: Sequence[x509.Certificate],
    store: TrustStore,
    *,
    at: datetime | None = None,
    purpose: Purpose = Purpose.ANY,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    dns_name: str | None = None,
    ip: str | IpAddress | None = None,
    uri: str | None = None,
    peer_id: bytes | None = None,
    allow_self_asserted: bool = False,
) -> ValidationReport:
    """Validate ``chain`` (leaf first, then any certificates that help) against ``store``.

    ``at`` (timezone-aware; default now) is the validation time, ``clock_skew`` (0 to
    :data:`MAX_CLOCK_SKEW`) the tolerance on validity periods and CRL update times.
    ``dns_name`` / ``ip`` / ``uri`` / ``peer_id``, when given, must be named by the leaf
    (subjectAltName entries; ``peer_id``: the leaf key's id). Returns the report of the best
    path; raises :class:`~trustchain.errors.CertificateRejected` (see the module docs for
    every reason and the trust level rules). ``ValueError`` for a naive ``at``, a skew out of
    range or an ``ip`` that is not an IP address.
    """
    context = _context(store, at, purpose, clock_skew, dns_name, ip, uri, peer_id)
    if not chain:
        raise Rejection(RejectionReason.MISSING, "the chain is empty", None)
    presented = _decode_presented(chain)
    leaf, pool = _pool(presented, context.snapshot)
    builder = _Builder(leaf, pool)
    builder.run()
    reports: list[ValidationReport] = []
    failures: list[CertificateRejected] = []
    for path in builder.complete:
        try:
            reports.append(_evaluate(path, context))
        except CertificateRejected as exc:
            failures.append(exc)
    if reports:
        return max(reports, key=lambda report: (report.trust_level, -len(report.path)))
    if failures:
        raise failures[0]
    if builder.self_signed:
        path = builder.self_signed[0]
        if not allow_self_asserted:
            raise Rejection(
                RejectionReason.UNTRUSTED_ROOT,
                "the chain ends in the self-signed certificate "
                f"{path[-1].facts.subject.rfc4514_string()!r}, which is not a trust anchor",
                path[-1].index,
            )
        _check_path(path, context)
        return ValidationReport(
            trust_level=TrustLevel.SELF_ASSERTED,
            anchor=None,
            path=tuple(entry.facts.certificate for entry in path),
            notes=("self-signed: the peer vouches only for itself",),
            leaf_key=path[0].facts.key,
        )
    if builder.link_failures:
        raise builder.link_failures[0]
    if builder.no_issuer:
        raise builder.no_issuer[0]
    raise Rejection(RejectionReason.UNTRUSTED_ROOT, "no path to a trust anchor", 0)


# --- gRPC messages --------------------------------------------------------------------------------


def validation_result_message(
    outcome: ValidationReport | CertificateRejected,
) -> tuple[common_pb2.ValidationResult, common_pb2.TrustLevel.ValueType]:
    """``hypermesh.v1.ValidationResult`` and ``TrustLevel`` for a validation outcome.

    A report gives ``VERDICT_VALID``, no rejections and its level; a rejection gives
    ``VERDICT_REJECTED``, one ``Rejection`` (proof kind CERTIFICATE_CHAIN, the reason's
    :attr:`~trustchain.errors.RejectionReason.proto_code`, the detail prefixed with the
    TrustChain reason name) and ``TRUST_LEVEL_UNTRUSTED``.
    """
    if isinstance(outcome, ValidationReport):
        result = common_pb2.ValidationResult(verdict=common_pb2.VERDICT_VALID)
        return result, common_pb2.TrustLevel.ValueType(int(outcome.trust_level))
    where = "" if outcome.index is None else f" (certificate {outcome.index})"
    rejection = common_pb2.Rejection(
        proof_kind=common_pb2.PROOF_KIND_CERTIFICATE_CHAIN,
        reason=common_pb2.RejectionReason.ValueType(outcome.reason.proto_code),
        detail=f"{outcome.reason.name}{where}: {outcome.detail}",
    )
    result = common_pb2.ValidationResult(
        verdict=common_pb2.VERDICT_REJECTED, rejections=[rejection]
    )
    return result, common_pb2.TRUST_LEVEL_UNTRUSTED


def validate_certificates_response(
    request: security_pb2.ValidateCertificatesRequest,
    stores: Mapping[str, TrustStore],
    *,
    purpose: Purpose = Purpose.ANY,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> security_pb2.ValidateCertificatesResponse:
    """Answer ``SecurityLayer.ValidateCertificates``: validate ``request.chain`` (DER
    certificates) with the store named ``request.policy`` (``""``: the default policy) at
    ``request.validation_time`` (unset: now), requiring ``expected_peer_id`` when set.

    Every validation failure is in the response (never raised); :class:`UnknownTrustPolicy`
    if no store of that name is configured.
    """
    try:
        store = stores[request.policy]
    except KeyError:
        raise UnknownTrustPolicy(f"no trust policy named {request.policy!r}") from None
    at = (
        request.validation_time.ToDatetime(tzinfo=UTC)
        if request.HasField("validation_time")
        else None
    )
    peer_id = b""
    outcome: ValidationReport | CertificateRejected
    try:
        chain = _load_chain(request.chain.certificates)
        if chain:
            peer_id = _leaf_peer_id(chain[0])
        outcome = validate(
            chain,
            store,
            at=at,
            purpose=purpose,
            clock_skew=clock_skew,
            peer_id=request.expected_peer_id or None,
        )
    except CertificateRejected as exc:
        outcome = exc
    result, level = validation_result_message(outcome)
    return security_pb2.ValidateCertificatesResponse(
        trust_level=level, result=result, peer_id=peer_id
    )


def _load_chain(encoded: Sequence[bytes]) -> list[x509.Certificate]:
    chain: list[x509.Certificate] = []
    for index, data in enumerate(encoded):
        try:
            chain.append(x509.load_der_x509_certificate(bytes(data)))
        except PARSE_ERRORS as exc:
            raise Rejection(
                RejectionReason.MALFORMED, f"not a DER certificate: {exc}", index
            ) from exc
    return chain


def _leaf_peer_id(leaf: x509.Certificate) -> bytes:
    try:
        return hybrid.certificate_public_key(leaf).key_id
    except (MalformedData, AlgorithmMismatch, UnknownAlgorithm):
        return b""
