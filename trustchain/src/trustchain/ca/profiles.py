"""Certificate profiles: which extensions each kind of TrustChain certificate carries, and why.

A profile is a tuple of :class:`ExtensionSpec` (an extension value and its criticality) that
:mod:`trustchain.ca.authority` adds to an ``x509.CertificateBuilder``, in the order given here,
before :func:`trustchain.ca.hybrid.build_certificate` adds the alternative-key extensions and
signs. Every certificate's subject key is a hybrid Ed25519 + Falcon-1024 key; the X.509
``subjectPublicKeyInfo`` holds its Ed25519 component (see :mod:`trustchain.ca.hybrid`).

Kinds
=====

=============  ================================================================================
kind           extensions (critical ones marked ``!``)
=============  ================================================================================
root           ``!basicConstraints`` cA, pathLenConstraint absent (unlimited) or configured;
               ``!keyUsage`` keyCertSign + cRLSign; subjectKeyIdentifier; certificatePolicies
               (the root policy plus every policy below it). No authorityKeyIdentifier: RFC
               5280 §4.2.1.1 lets a self-signed certificate omit it.
intermediate   ``!basicConstraints`` cA, pathLenConstraint 0 by default; ``!keyUsage``
               keyCertSign + cRLSign; ``!nameConstraints`` (below); subjectKeyIdentifier;
               authorityKeyIdentifier (keyIdentifier only); certificatePolicies (entity CA plus
               the leaf policies); cRLDistributionPoints naming the parent's full CRL.
cross          A root's new key certified by its old key during a rollover: the root profile
               plus authorityKeyIdentifier and the issuer's full-CRL distribution point.
node           ``!basicConstraints`` not a CA; ``!keyUsage`` digitalSignature;
               extKeyUsage serverAuth + clientAuth; subjectAltName: the node's DNS names, its IP
               addresses and ``hypermesh://node/<node id hex>`` where the node id is the subject
               key's :attr:`~trustchain.crypto.signatures.VerifyKey.key_id`; certificatePolicies
               node; subjectKeyIdentifier, authorityKeyIdentifier, cRLDistributionPoints.
service        as node, with subjectAltName DNS names and ``hypermesh://service/<service id
               hex>`` (service id: given, else the subject key id); no IP addresses.
asset          ``!basicConstraints`` not a CA; ``!keyUsage`` digitalSignature; extKeyUsage
               :data:`EKU_HYPERMESH_ASSET` only (so TLS stacks refuse the certificate: an asset
               identity signs, it does not terminate TLS); subjectAltName
               ``hypermesh://asset/<asset id hex>`` (asset id: given, else the subject key id);
               certificatePolicies asset; SKI, AKI, cRLDistributionPoints.
=============  ================================================================================

Choices, and their reasons
==========================

* **Subject names.** CAs: ``CN=<CA name>, O=TrustChain``; leaves: ``CN=<leaf name>``, where a
  leaf name is a DNS name inside the issuing CA's namespace (a node's host name, a service's
  name, an asset's name). The subject carries no other attribute: identities live in the
  subjectAltName, which is what TLS and name constraints look at.
* **Key identifiers.** subjectKeyIdentifier = the leftmost 160 bits of the subject's hybrid key
  id, SHA-256 of the whole hybrid public-key envelope (the truncated-SHA-256 method of RFC 7093
  §2 applied to the hybrid key rather than to the Ed25519 BIT STRING alone), so the identifier
  names both components and a certificate whose alternative key was swapped carries an
  identifier that no longer matches its keys. authorityKeyIdentifier carries the issuer's
  identifier only -- never issuer name and serial, which would pin one issuer certificate and
  break the paths through a rollover cross-certificate.
* **Name constraints.** An intermediate (entity) CA permits the DNS subtree of its namespace
  (``dmv.hypermesh`` permits ``dmv.hypermesh`` and every name below it, RFC 5280 §4.2.1.10),
  the URI hosts ``node``, ``service`` and ``asset`` (RFC 5280 constrains a URI by its host
  part only, and TrustChain's ``hypermesh://`` URIs use the host to name the identity kind: the
  namespace cannot be expressed in them, so the constraint limits an entity CA to HyperMesh
  identity URIs and nothing else, e.g. no ``https://bank.example/``), and, when configured, IP
  address ranges (without any, IP addresses are unconstrained, as RFC 5280 specifies for a name
  form without a subtree). A node's URI is self-certifying (its id is the hash of the very key
  the certificate certifies), which a validator can check; asset and service ids are the issuing
  entity's assertion, bounded by the DNS names in the same certificate. Name constraints are
  critical, as RFC 5280 requires.
* **Policies.** Each CA certificate asserts its own policy OID plus every policy OID of the
  kinds below it, each leaf the one policy of its kind (OIDs from :mod:`trustchain.ca.oids`), so
  an RFC 5280 §6.1 policy tree for ``hypermesh node`` is non-empty exactly on node paths and a
  relying party can demand a kind with ``-policy <OID> -explicit_policy``.
* **Extended key usage.** Nodes and services are TLS peers both ways (serverAuth +
  clientAuth). Assets get a private EKU instead of none at all: no EKU would mean "any use"
  to a TLS stack.
* **Lifetimes.** Leaves default to 24 hours (:data:`DEFAULT_LEAF_VALIDITY`, at most
  :data:`MAX_LEAF_VALIDITY`); a certificate never outlives its issuer's certificate (the CA
  truncates ``notAfter``). notBefore is the issuing time, not backdated: validators allow a
  bounded clock skew.
* **CRL distribution points.** A leaf names the CRL shard that lists it
  (``<base>/<issuer>/shard-<n>.crl``, shard = serial mod the CA's shard count); CA and cross
  certificates name the issuer's full CRL (``<base>/<issuer>/full.crl``). The shard CRL's
  issuingDistributionPoint repeats the same URI (see :mod:`trustchain.ca.authority`).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trustchain.ca import oids
from trustchain.crypto.signatures import VerifyKey
from trustchain.errors import InvalidCertificateRequest, NameOutsideNamespace

__all__ = [
    "DEFAULT_CRL_BASE_URI",
    "DEFAULT_CRL_SHARDS",
    "DEFAULT_CRL_VALIDITY",
    "DEFAULT_INTERMEDIATE_PATH_LENGTH",
    "DEFAULT_INTERMEDIATE_VALIDITY",
    "DEFAULT_LEAF_VALIDITY",
    "DEFAULT_ROOT_VALIDITY",
    "EKU_HYPERMESH_ASSET",
    "LEAF_KINDS",
    "MAX_LEAF_VALIDITY",
    "CertificateKind",
    "ExtensionSpec",
    "IpNetwork",
    "LeafNames",
    "apply",
    "ca_name",
    "ca_subject",
    "check_leaf_names",
    "crl_uri",
    "cross_profile",
    "dns_name",
    "in_namespace",
    "intermediate_profile",
    "key_identifier",
    "kind_of",
    "leaf_profile",
    "leaf_subject",
    "namespace_constraints",
    "root_profile",
]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Private EKU of asset certificates (``<TrustChain arc>.2.1``). PROVISIONAL.
EKU_HYPERMESH_ASSET: Final = x509.ObjectIdentifier(oids.TRUSTCHAIN_ARC + ".2.1")

DEFAULT_ROOT_VALIDITY: Final = timedelta(days=3652)
DEFAULT_INTERMEDIATE_VALIDITY: Final = timedelta(days=1096)
DEFAULT_LEAF_VALIDITY: Final = timedelta(hours=24)
#: Leaves are short-lived by design; anything longer than this is refused.
MAX_LEAF_VALIDITY: Final = timedelta(days=90)
DEFAULT_INTERMEDIATE_PATH_LENGTH: Final = 0
DEFAULT_CRL_VALIDITY: Final = timedelta(hours=1)
DEFAULT_CRL_SHARDS: Final = 4
#: Where CRLs are published: ``<base>/<issuer>/full.crl`` and ``<base>/<issuer>/shard-<n>.crl``.
DEFAULT_CRL_BASE_URI: Final = "hypermesh://trustchain/crl"

ORGANIZATION: Final = "TrustChain"
#: Length of a key identifier: RFC 7093 §2 method 1 truncates SHA-256 to 160 bits.
KEY_IDENTIFIER_SIZE: Final = 20


class CertificateKind(enum.StrEnum):
    """What a certificate certifies."""

    ROOT = "root"
    INTERMEDIATE = "intermediate"
    NODE = "node"
    SERVICE = "service"
    ASSET = "asset"

    @property
    def is_ca(self) -> bool:
        return self in (CertificateKind.ROOT, CertificateKind.INTERMEDIATE)

    @property
    def policy(self) -> x509.ObjectIdentifier:
        """The certificate-policy OID naming this kind."""
        return _POLICIES[self]


LEAF_KINDS: Final = (CertificateKind.NODE, CertificateKind.SERVICE, CertificateKind.ASSET)

_POLICIES: Final = {
    CertificateKind.ROOT: oids.POLICY_ROOT_CA,
    CertificateKind.INTERMEDIATE: oids.POLICY_ENTITY_CA,
    CertificateKind.NODE: oids.POLICY_NODE,
    CertificateKind.SERVICE: oids.POLICY_SERVICE,
    CertificateKind.ASSET: oids.POLICY_ASSET,
}


@dataclass(frozen=True)
class ExtensionSpec:
    """One extension of a profile: its value and whether it is critical."""

    value: x509.ExtensionType
    critical: bool


def apply(
    builder: x509.CertificateBuilder, specs: Iterable[ExtensionSpec]
) -> x509.CertificateBuilder:
    """``builder`` with every extension of ``specs`` added, in order."""
    for spec in specs:
        builder = builder.add_extension(spec.value, critical=spec.critical)
    return builder


# --- names --------------------------------------------------------------------------------------

_CA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_DNS_NAME = 253


def ca_name(name: str) -> str:
    """``name`` if it is a valid CA name (1-64 of ``A-Z a-z 0-9 . _ -``, starting alphanumeric).

    CA names appear in key-store key names (``ca/<name>``) and CRL URIs, hence the alphabet.
    """
    if not isinstance(name, str) or not _CA_NAME.fullmatch(name):
        raise InvalidCertificateRequest(
            f"invalid CA name {name!r}: use 1-64 of A-Z a-z 0-9 . _ -, starting alphanumeric"
        )
    return name


def dns_name(name: str) -> str:
    """``name`` as a normalized DNS name: lowercase, no trailing dot, LDH labels (RFC 1123).

    Wildcards, empty labels, labels over 63 and names over 253 characters are refused
    (:class:`InvalidCertificateRequest`).
    """
    if not isinstance(name, str):
        raise InvalidCertificateRequest(f"DNS name must be text, got {type(name).__name__}")
    normal = name.strip().lower()
    normal = normal.removesuffix(".")
    if not normal or len(normal) > _MAX_DNS_NAME:
        raise InvalidCertificateRequest(f"invalid DNS name {name!r}")
    for label in normal.split("."):
        if not _LABEL.fullmatch(label):
            raise InvalidCertificateRequest(
                f"invalid DNS name {name!r}: label {label!r} is not 1-63 letters, digits and "
                "inner hyphens"
            )
    return normal


def in_namespace(name: str, namespace: str) -> bool:
    """Whether DNS ``name`` is ``namespace`` or below it (RFC 5280 §4.2.1.10 dNSName rule).

    Both must already be normalized by :func:`dns_name`.
    """
    return name == namespace or name.endswith("." + namespace)


def crl_uri(base: str, issuer: str, shard: int | None) -> str:
    """The distribution-point URI of ``issuer``'s full CRL (``shard`` None) or of one shard."""
    leaf = "full" if shard is None else f"shard-{shard}"
    return f"{base.rstrip('/')}/{issuer}/{leaf}.crl"


def ca_subject(name: str) -> x509.Name:
    """``CN=<name>, O=TrustChain``: the subject (and, for what it issues, issuer) of a CA."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )


def leaf_subject(name: str) -> x509.Name:
    """``CN=<name>``: a leaf's subject."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def key_identifier(key: VerifyKey) -> bytes:
    """The key identifier of a hybrid key: the first 160 bits of its key id (see above)."""
    return key.key_id[:KEY_IDENTIFIER_SIZE]


# --- leaf names -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeafNames:
    """The checked, normalized names of one leaf certificate."""

    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[IpAddress, ...]


def check_leaf_names(
    kind: CertificateKind,
    name: str,
    *,
    namespace: str,
    ip_networks: Sequence[IpNetwork],
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str | IpAddress] = (),
) -> LeafNames:
    """Check a leaf's names against its kind and the issuing CA's namespace.

    ``name`` (the subject CN; a DNS name) and every DNS name must lie in ``namespace``; IP
    addresses (nodes only) must lie in one of ``ip_networks`` when any are configured.
    Raises :class:`NameOutsideNamespace` for a name outside those bounds and
    :class:`InvalidCertificateRequest` for a malformed name or one the kind does not carry.
    """
    if kind not in LEAF_KINDS:
        raise InvalidCertificateRequest(f"{kind} is not a leaf kind")
    common_name = dns_name(name)
    extra = [dns_name(other) for other in dns_names]
    addresses = [_ip_address(address) for address in ip_addresses]
    if kind is CertificateKind.ASSET and extra:
        raise InvalidCertificateRequest("asset certificates carry no DNS names")
    if kind is not CertificateKind.NODE and addresses:
        raise InvalidCertificateRequest(f"{kind} certificates carry no IP addresses")
    for candidate in (common_name, *extra):
        if not in_namespace(candidate, namespace):
            raise NameOutsideNamespace(
                f"{candidate} is outside the issuing CA's namespace {namespace}"
            )
    if ip_networks:
        for address in addresses:
            if not any(address.version == net.version and address in net for net in ip_networks):
                allowed = ", ".join(str(net) for net in ip_networks)
                raise NameOutsideNamespace(
                    f"IP address {address} is outside the issuing CA's ranges ({allowed})"
                )
    names: tuple[str, ...] = (common_name,) if kind is not CertificateKind.ASSET else ()
    names += tuple(dict.fromkeys(n for n in extra if n != common_name))
    return LeafNames(
        common_name=common_name,
        dns_names=names,
        ip_addresses=tuple(dict.fromkeys(addresses)),
    )


def _ip_address(value: str | IpAddress) -> IpAddress:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise InvalidCertificateRequest(f"invalid IP address {value!r}") from exc


# --- profiles -------------------------------------------------------------------------------------

_CA_KEY_USAGE: Final = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_KEY_USAGE: Final = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_TLS_EKU: Final = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)
_ASSET_EKU: Final = x509.ExtendedKeyUsage([EKU_HYPERMESH_ASSET])


def _policies(*kinds: CertificateKind) -> ExtensionSpec:
    return ExtensionSpec(
        x509.CertificatePolicies([x509.PolicyInformation(kind.policy, None) for kind in kinds]),
        critical=False,
    )


def _ski(key: VerifyKey) -> ExtensionSpec:
    return ExtensionSpec(x509.SubjectKeyIdentifier(key_identifier(key)), critical=False)


def _aki(issuer_key: VerifyKey) -> ExtensionSpec:
    return ExtensionSpec(
        x509.AuthorityKeyIdentifier(key_identifier(issuer_key), None, None), critical=False
    )


def _crl_dp(uri: str) -> ExtensionSpec:
    point = x509.DistributionPoint([x509.UniformResourceIdentifier(uri)], None, None, None)
    return ExtensionSpec(x509.CRLDistributionPoints([point]), critical=False)


def root_profile(*, subject_key: VerifyKey, path_length: int | None) -> tuple[ExtensionSpec, ...]:
    """The extensions of a self-signed root CA certificate."""
    return (
        ExtensionSpec(x509.BasicConstraints(ca=True, path_length=path_length), critical=True),
        ExtensionSpec(_CA_KEY_USAGE, critical=True),
        _ski(subject_key),
        _policies(CertificateKind.ROOT, CertificateKind.INTERMEDIATE, *LEAF_KINDS),
    )


def cross_profile(
    *, subject_key: VerifyKey, issuer_key: VerifyKey, path_length: int | None, crl: str
) -> tuple[ExtensionSpec, ...]:
    """A root's new key certified by its old key (rollover cross-certificate)."""
    root = root_profile(subject_key=subject_key, path_length=path_length)
    return (*root, _aki(issuer_key), _crl_dp(crl))


def namespace_constraints(
    namespace: str, ip_networks: Sequence[IpNetwork] = ()
) -> x509.NameConstraints:
    """The name constraints of an entity CA for ``namespace`` (see the module docs)."""
    permitted: list[x509.GeneralName] = [x509.DNSName(namespace)]
    permitted += [x509.UniformResourceIdentifier(host) for host in oids.HYPERMESH_URI_KINDS]
    permitted += [x509.IPAddress(network) for network in ip_networks]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def intermediate_profile(
    *,
    subject_key: VerifyKey,
    issuer_key: VerifyKey,
    path_length: int | None,
    namespace: str,
    ip_networks: Sequence[IpNetwork],
    crl: str,
) -> tuple[ExtensionSpec, ...]:
    """The extensions of an intermediate (entity) CA certificate."""
    return (
        ExtensionSpec(x509.BasicConstraints(ca=True, path_length=path_length), critical=True),
        ExtensionSpec(_CA_KEY_USAGE, critical=True),
        ExtensionSpec(namespace_constraints(namespace, ip_networks), critical=True),
        _ski(subject_key),
        _aki(issuer_key),
        _policies(CertificateKind.INTERMEDIATE, *LEAF_KINDS),
        _crl_dp(crl),
    )


def leaf_profile(
    kind: CertificateKind,
    names: LeafNames,
    *,
    identity: bytes,
    subject_key: VerifyKey,
    issuer_key: VerifyKey,
    crl: str,
) -> tuple[ExtensionSpec, ...]:
    """The extensions of a node, service or asset certificate; ``identity`` is the id its
    ``hypermesh://<kind>/<id hex>`` URI names (a node's: its key id)."""
    if kind not in LEAF_KINDS:
        raise InvalidCertificateRequest(f"{kind} is not a leaf kind")
    general: list[x509.GeneralName] = [x509.DNSName(name) for name in names.dns_names]
    general += [x509.IPAddress(address) for address in names.ip_addresses]
    general.append(x509.UniformResourceIdentifier(oids.hypermesh_uri(kind.value, identity)))
    eku = _ASSET_EKU if kind is CertificateKind.ASSET else _TLS_EKU
    return (
        ExtensionSpec(x509.BasicConstraints(ca=False, path_length=None), critical=True),
        ExtensionSpec(_LEAF_KEY_USAGE, critical=True),
        ExtensionSpec(eku, critical=False),
        ExtensionSpec(x509.SubjectAlternativeName(general), critical=False),
        _ski(subject_key),
        _aki(issuer_key),
        _policies(kind),
        _crl_dp(crl),
    )


def kind_of(certificate: x509.Certificate) -> CertificateKind:
    """The kind of a TrustChain certificate, from its basicConstraints and policies.

    A CA whose subject equals its issuer is a root (self-signed, or a rollover cross-certificate).
    :class:`InvalidCertificateRequest` for a certificate that matches no TrustChain profile.
    """
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        policies = certificate.extensions.get_extension_for_class(x509.CertificatePolicies).value
    except x509.ExtensionNotFound as exc:
        raise InvalidCertificateRequest(f"not a TrustChain certificate: {exc}") from exc
    if constraints.ca:
        if certificate.subject == certificate.issuer:
            return CertificateKind.ROOT
        return CertificateKind.INTERMEDIATE
    asserted = {info.policy_identifier for info in policies}
    for kind in LEAF_KINDS:
        if asserted == {kind.policy}:
            return kind
    raise InvalidCertificateRequest("not a TrustChain certificate: unknown leaf policies")
