"""Object identifiers and name forms used by TrustChain certificates and CRLs.

Standard OIDs
=============

``2.5.29.72`` subjectAltPublicKeyInfo, ``2.5.29.73`` altSignatureAlgorithm,
``2.5.29.74`` altSignatureValue
    ITU-T Rec. X.509 (10/2019) §9.8 (id-ce-subjectAltPublicKeyInfo = id-ce 72,
    id-ce-altSignatureAlgorithm = id-ce 73, id-ce-altSignatureValue = id-ce 74; id-ce is
    ``2.5.29``). Syntaxes: SubjectPublicKeyInfo, AlgorithmIdentifier, BIT STRING.
``1.3.101.112`` id-Ed25519
    RFC 8410 §3 (parameters absent); the classical key and signature algorithm.

Falcon-1024
===========

``1.3.9999.3.14`` falcon1024, as Open Quantum Safe's oqs-provider assigns it: in
``oqsprov/oqsprov.c`` (``oqs_oid_alg_list``: ``"1.3.9999.3.14", "falcon1024"``) and
``ALGORITHMS.md`` ("falcon1024 | 1.3.9999.3.14 | Yes | OQS_OID_FALCON1024") of oqs-provider
``main`` at version 0.8.1-dev (after the 0.8.0 release). Bouncy Castle's IETF-hackathon
artifacts (``falcon-1024-1.3.9999.3.14_ta.der``) use the same value.

oqs-provider renumbers Falcon when liboqs changes the algorithm's output:
``1.3.9999.3.4`` until March 2023, ``1.3.9999.3.9`` after PR #125 (liboqs' Falcon update,
oqs-provider 0.5.x), and ``1.3.9999.3.14`` now, next to ``falconpadded1024`` =
``1.3.9999.3.19``; the split into padded and unpadded (compressed, variable-length) Falcon
came with liboqs 0.10.0 / oqs-provider 0.6.0 (PR #362), which is as far as the current number
could be traced (its exact first release was not verified). ``OQS_OID_FALCON1024`` overrides
it at run time in oqs-provider. ``1.3.9999`` is an unregistered experimental arc, so the OID is
provisional until FN-DSA gets a standard one; :data:`FALCON_1024_LEGACY_OIDS` lists the
earlier values for error messages only (they are never accepted). As with oqs-provider's
``falcon1024`` (not ``falconpadded1024``), the signature is the variable-length compressed
Falcon-1024 form (``0x3A || nonce || compressed s2``, at most 1462 bytes) and the public key
the raw 1793-byte encoding (oqs-provider's default, no draft-uni-qsckeys wrapping), with the
AlgorithmIdentifier parameters absent.

Private OIDs (provisional)
==========================

TrustChain's own arc is a UUID OID (ITU-T X.667 / RFC 4122 §4.4 ``2.25.<uuid as integer>``,
UUID ``64df779b-cc5d-4d90-b0ff-d5f22e965383``), which needs no registration and cannot collide
with anyone else's. Everything under it is PROVISIONAL: it may change before a first release.

The ``hypermesh`` URI scheme
============================

A node's certificate names the node with the URI ``hypermesh://node/<node id in lowercase
hex>`` in its subjectAltName; services and assets use ``hypermesh://service/<hex>`` and
``hypermesh://asset/<hex>``.
"""

from __future__ import annotations

import re
from typing import Final

from cryptography.x509 import ObjectIdentifier

from trustchain.errors import MalformedData

#: ITU-T X.509 (10/2019) §9.8.2: the subject's alternative public key (SubjectPublicKeyInfo).
SUBJECT_ALT_PUBLIC_KEY_INFO: Final = ObjectIdentifier("2.5.29.72")
#: ITU-T X.509 (10/2019) §9.8.3: the algorithm of the alternative signature.
ALT_SIGNATURE_ALGORITHM: Final = ObjectIdentifier("2.5.29.73")
#: ITU-T X.509 (10/2019) §9.8.4: the alternative signature over the preTBS structure.
ALT_SIGNATURE_VALUE: Final = ObjectIdentifier("2.5.29.74")

#: RFC 8410: Ed25519 (parameters absent).
ED25519: Final = ObjectIdentifier("1.3.101.112")
#: oqs-provider's falcon1024 (0.8.x; see the module docs). Provisional.
FALCON_1024: Final = ObjectIdentifier("1.3.9999.3.14")
#: Falcon-1024 OIDs oqs-provider used earlier (never accepted; named in error messages).
FALCON_1024_LEGACY_OIDS: Final = (
    ObjectIdentifier("1.3.9999.3.4"),
    ObjectIdentifier("1.3.9999.3.9"),
)

#: TrustChain's private arc (a UUID OID). PROVISIONAL.
TRUSTCHAIN_ARC: Final = "2.25.134083107728300616507378813447502713731"
#: Certificate-policy OIDs naming what a certificate is for. PROVISIONAL.
POLICY_ROOT_CA: Final = ObjectIdentifier(TRUSTCHAIN_ARC + ".1.1")
POLICY_ENTITY_CA: Final = ObjectIdentifier(TRUSTCHAIN_ARC + ".1.2")
POLICY_NODE: Final = ObjectIdentifier(TRUSTCHAIN_ARC + ".1.3")
POLICY_SERVICE: Final = ObjectIdentifier(TRUSTCHAIN_ARC + ".1.4")
POLICY_ASSET: Final = ObjectIdentifier(TRUSTCHAIN_ARC + ".1.5")

#: The URI scheme of HyperMesh identities in subjectAltName.
HYPERMESH_URI_SCHEME: Final = "hypermesh"
#: The identity kinds a ``hypermesh://`` URI may name.
HYPERMESH_URI_KINDS: Final = ("node", "service", "asset")

_HYPERMESH_URI = re.compile(r"hypermesh://(node|service|asset)/((?:[0-9a-f]{2})+)")


def hypermesh_uri(kind: str, identity: bytes) -> str:
    """``hypermesh://<kind>/<identity hex>``; ``kind`` is one of :data:`HYPERMESH_URI_KINDS`."""
    if kind not in HYPERMESH_URI_KINDS:
        raise ValueError(f"hypermesh URI kind must be one of {HYPERMESH_URI_KINDS}, got {kind!r}")
    if not identity:
        raise ValueError("hypermesh URI identity must not be empty")
    return f"{HYPERMESH_URI_SCHEME}://{kind}/{bytes(identity).hex()}"


def parse_hypermesh_uri(uri: str) -> tuple[str, bytes]:
    """``(kind, identity)`` of a URI made by :func:`hypermesh_uri` (exact form, lowercase hex).

    Raises :class:`MalformedData` for anything else.
    """
    match = _HYPERMESH_URI.fullmatch(uri)
    if match is None:
        raise MalformedData(f"not a hypermesh identity URI: {uri!r}")
    return match.group(1), bytes.fromhex(match.group(2))
