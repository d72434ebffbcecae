"""Hybrid X.509 certificates and CRLs: Ed25519 classical, Falcon-1024 alternative.

A TrustChain identity key is a hybrid (Ed25519 + Falcon-1024) :class:`SigningKey`. Its
certificate carries both halves, following ITU-T Rec. X.509 (10/2019) §7.2.2 and §9.8:

* ``subjectPublicKeyInfo``: the Ed25519 component (RFC 8410, id-Ed25519 ``1.3.101.112``);
  ``signatureAlgorithm`` / ``signatureValue``: the issuer's Ed25519 signature of the DER
  ``TBSCertificate``. This is an ordinary certificate: OpenSSL, cryptography and aioquic
  verify it without knowing anything about the rest.
* extension subjectAltPublicKeyInfo (``2.5.29.72``): the Falcon-1024 component as a
  SubjectPublicKeyInfo ``SEQUENCE { SEQUENCE { OID 1.3.9999.3.14 }, BIT STRING pk }`` (raw
  1793-byte key, parameters absent; OID: :mod:`trustchain.ca.oids`).
* extension altSignatureAlgorithm (``2.5.29.73``): ``SEQUENCE { OID 1.3.9999.3.14 }``.
* extension altSignatureValue (``2.5.29.74``): BIT STRING holding the issuer's Falcon-1024
  signature (compressed form, ``0x3A || nonce || s2``) of the DER *preTBSCertificate*.

All three extensions are written non-critical (so classical-only verifiers accept the
certificate), altSignatureValue as the last extension; verification accepts any criticality
and finds altSignatureValue at any position. CRLs carry altSignatureAlgorithm and
altSignatureValue in ``crlExtensions`` and the alternative signature covers the
*preTBSCertList*.

The preTBS structures (X.509 10/2019 §7.2.2 and the CRL counterpart)
====================================================================

``PreTBSCertificate`` is ``TBSCertificate`` with two things left out: the ``signature``
field (the AlgorithmIdentifier of the *classical* signature, the element after
``serialNumber``) and the altSignatureValue extension; every other field and extension stays,
byte for byte and in order::

    PreTBSCertificate ::= SEQUENCE {
      version [0] Version DEFAULT v1, serialNumber CertificateSerialNumber,
      -- signature AlgorithmIdentifier: OMITTED
      issuer Name, validity Validity, subject Name,
      subjectPublicKeyInfo SubjectPublicKeyInfo,
      issuerUniqueIdentifier [1] IMPLICIT UniqueIdentifier OPTIONAL,
      subjectUniqueIdentifier [2] IMPLICIT UniqueIdentifier OPTIONAL,
      extensions [3] Extensions OPTIONAL  -- without altSignatureValue }

    PreTBSCertList ::= SEQUENCE {
      version Version OPTIONAL,
      -- signature AlgorithmIdentifier: OMITTED
      issuer Name, thisUpdate Time, nextUpdate Time OPTIONAL,
      revokedCertificates SEQUENCE OF ... OPTIONAL,
      crlExtensions [0] Extensions OPTIONAL  -- without altSignatureValue }

(an Extensions field left empty by the removal is omitted altogether; never the case for
TrustChain, which always has altSignatureAlgorithm). This is the same construction as
Bouncy Castle's ``generatePreTBSCertificate``: the Falcon signature therefore does not cover
the classical algorithm identifier, and the Ed25519 signature covers everything, the Falcon
key and signature included, so neither half can be swapped without breaking the other.

Building: ``cryptography`` cannot sign a partial TBS, so :func:`build_certificate` builds
the certificate with the two alt extensions and signs it with Ed25519 to obtain its DER TBS,
derives the preTBS from it, signs that with Falcon-1024, then rebuilds with the
altSignatureValue extension appended and signs again with Ed25519. Removing that last
extension from the final TBS gives back the very preTBS that was signed (checked before
returning, together with both signatures).

Errors
======

:func:`verify_certificate_signatures` / :func:`verify_crl_signatures` check, in order:
structure (DER, the outer ``signatureAlgorithm`` equal to the TBS ``signature`` field, the
alt extensions present exactly once, a valid Falcon-1024 subjectAltPublicKeyInfo on
certificates), then both signatures (always both, so the error names the one that failed):

* bad or non-DER structure, a missing or duplicated alt extension, a BIT STRING with unused
  bits: :class:`~trustchain.errors.MalformedData` (:class:`~trustchain.errors.InvalidKey` for
  a malformed key);
* a classical algorithm other than Ed25519 or an alternative one other than Falcon-1024:
  :class:`~trustchain.errors.AlgorithmMismatch`;
* the Falcon-1024 signature fails: :class:`~trustchain.errors.AltSignatureInvalid`, whether
  or not the Ed25519 one does too (so a changed TBS byte, which breaks both, reports the
  post-quantum one; the message says when both failed);
* only the Ed25519 signature fails: :class:`~trustchain.errors.ClassicalSignatureInvalid`
  (both are :class:`~trustchain.errors.InvalidSignature`).

A changed byte in ``signatureValue`` is therefore :class:`ClassicalSignatureInvalid` and one in
the altSignatureValue extension :class:`AltSignatureInvalid` (the preTBS leaves the extension
out, so it is the Falcon check that fails first-hand; the Ed25519 one fails as well, because
the classical signature covers the whole TBS).

A subjectAltPublicKeyInfo swapped for another key by someone who can still produce the
classical signature is caught by the alternative signature (:class:`AltSignatureInvalid`),
as the key is part of the preTBS.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding

from trustchain.ca import der, oids
from trustchain.crypto import encoding
from trustchain.crypto.algorithms import SignatureAlgorithm
from trustchain.crypto.encoding import Kind
from trustchain.crypto.signatures import Signature, SigningKey, VerifyKey
from trustchain.errors import (
    AlgorithmMismatch,
    AltSignatureInvalid,
    ClassicalSignatureInvalid,
    InvalidKey,
    InvalidSignature,
    MalformedData,
)

HYBRID: Final = SignatureAlgorithm.HYBRID_ED25519_FALCON_1024

#: DER AlgorithmIdentifier of Ed25519 (RFC 8410: parameters absent).
ED25519_ALGORITHM_IDENTIFIER: Final = der.encode_sequence(
    [der.encode_oid(oids.ED25519.dotted_string)]
)
#: DER AlgorithmIdentifier of Falcon-1024 (parameters absent, as oqs-provider writes it).
FALCON_1024_ALGORITHM_IDENTIFIER: Final = der.encode_sequence(
    [der.encode_oid(oids.FALCON_1024.dotted_string)]
)

_ED25519_KEY_SIZE: Final = 32
_SUBJECT_ALT_PUBLIC_KEY_INFO: Final = der.encode_oid(oids.SUBJECT_ALT_PUBLIC_KEY_INFO.dotted_string)
_ALT_SIGNATURE_ALGORITHM: Final = der.encode_oid(oids.ALT_SIGNATURE_ALGORITHM.dotted_string)
_ALT_SIGNATURE_VALUE: Final = der.encode_oid(oids.ALT_SIGNATURE_VALUE.dotted_string)

# Identifier octets inside TBSCertificate / TBSCertList.
_CERT_VERSION: Final = 0xA0  # [0] EXPLICIT Version
_CERT_ISSUER_UID: Final = 0x81  # [1] IMPLICIT UniqueIdentifier (BIT STRING, primitive)
_CERT_SUBJECT_UID: Final = 0x82  # [2] IMPLICIT UniqueIdentifier
_CERT_EXTENSIONS: Final = 0xA3  # [3] EXPLICIT Extensions
_CRL_EXTENSIONS: Final = 0xA0  # [0] EXPLICIT Extensions
_V3: Final = b"\x02\x01\x02"  # INTEGER 2: certificate v3, CRL v2 is INTEGER 1
_CRL_V2: Final = b"\x01"


class _Kind(enum.Enum):
    CERTIFICATE = "certificate"
    CRL = "CRL"


@dataclass(frozen=True)
class _Extension:
    critical: bool
    value: bytes  # the contents of extnValue's OCTET STRING


@dataclass(frozen=True)
class _ParsedTbs:
    """What the signature checks need from a DER TBSCertificate / TBSCertList."""

    tbs: bytes
    signature_field: bytes  # the encoded AlgorithmIdentifier removed from the preTBS
    pre_tbs: bytes
    extensions: dict[bytes, _Extension]  # keyed by the encoded extnID
    subject_public_key_info: bytes | None  # certificates only


@dataclass(frozen=True)
class _ParsedSigned:
    tbs: _ParsedTbs
    signature_algorithm: bytes
    signature_value: bytes


# --- public API -----------------------------------------------------------------------------


def build_certificate(
    builder: x509.CertificateBuilder, *, subject_key: VerifyKey, issuer_key: SigningKey
) -> x509.Certificate:
    """Sign ``builder`` as a hybrid certificate of ``subject_key``, issued by ``issuer_key``.

    ``builder`` must have subject, issuer, serial number, validity and the caller's
    extensions set, but no public key and none of the three alt extensions. This sets the
    public key to ``subject_key``'s Ed25519 component, adds subjectAltPublicKeyInfo (its
    Falcon-1024 component) and altSignatureAlgorithm, signs the preTBSCertificate with
    ``issuer_key``'s Falcon-1024 component into altSignatureValue (the last extension), and
    signs the certificate with ``issuer_key``'s Ed25519 component (see the module docs).

    :class:`AlgorithmMismatch` unless both keys are hybrid Ed25519 + Falcon-1024;
    :class:`MalformedData` if ``builder`` already has a public key or an alt extension.
    An otherwise incomplete builder makes ``cryptography`` raise its own ``ValueError``.
    """
    _require_hybrid(subject_key.algorithm, "subject key")
    _require_hybrid(issuer_key.algorithm, "issuer key")
    subject_ed25519, subject_falcon = subject_key.components()
    _, issuer_falcon = issuer_key.components()
    classical = classical_private_key(issuer_key)
    try:
        builder = builder.public_key(Ed25519PublicKey.from_public_bytes(subject_ed25519.raw))
        builder = _add_extension(
            builder, oids.SUBJECT_ALT_PUBLIC_KEY_INFO, falcon_public_key_info(subject_falcon)
        )
        builder = _add_extension(
            builder, oids.ALT_SIGNATURE_ALGORITHM, FALCON_1024_ALGORITHM_IDENTIFIER
        )
    except ValueError as exc:
        raise MalformedData(f"cannot add the hybrid fields to the builder: {exc}") from exc
    draft = builder.sign(classical, None)
    pre_tbs = _parse_tbs(draft.tbs_certificate_bytes, _Kind.CERTIFICATE).pre_tbs
    alt_signature = issuer_falcon.sign(pre_tbs).raw
    try:
        final_builder = _add_extension(
            builder, oids.ALT_SIGNATURE_VALUE, der.encode_bit_string(alt_signature)
        )
    except ValueError as exc:
        raise MalformedData(f"cannot add altSignatureValue to the builder: {exc}") from exc
    certificate = final_builder.sign(classical, None)
    if pre_tbs_certificate(certificate) != pre_tbs:
        raise MalformedData("the final TBSCertificate does not reproduce the signed preTBS")
    verify_certificate_signatures(certificate, issuer_key.public_key())
    return certificate


def build_crl(
    builder: x509.CertificateRevocationListBuilder, *, issuer_key: SigningKey
) -> x509.CertificateRevocationList:
    """Sign ``builder`` as a hybrid CRL: the same scheme as :func:`build_certificate`.

    ``builder`` has issuer, last/next update, revoked certificates and the caller's
    extensions (e.g. CRL number) set; this adds altSignatureAlgorithm and altSignatureValue
    (over the preTBSCertList) to ``crlExtensions`` and signs with Ed25519.
    """
    _require_hybrid(issuer_key.algorithm, "issuer key")
    _, issuer_falcon = issuer_key.components()
    classical = classical_private_key(issuer_key)
    try:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                oids.ALT_SIGNATURE_ALGORITHM, FALCON_1024_ALGORITHM_IDENTIFIER
            ),
            critical=False,
        )
    except ValueError as exc:
        raise MalformedData(f"cannot add the hybrid fields to the builder: {exc}") from exc
    draft = builder.sign(classical, None)
    pre_tbs = _parse_tbs(draft.tbs_certlist_bytes, _Kind.CRL).pre_tbs
    alt_signature = issuer_falcon.sign(pre_tbs).raw
    try:
        final_builder = builder.add_extension(
            x509.UnrecognizedExtension(
                oids.ALT_SIGNATURE_VALUE, der.encode_bit_string(alt_signature)
            ),
            critical=False,
        )
    except ValueError as exc:
        raise MalformedData(f"cannot add altSignatureValue to the builder: {exc}") from exc
    crl = final_builder.sign(classical, None)
    if pre_tbs_cert_list(crl) != pre_tbs:
        raise MalformedData("the final TBSCertList does not reproduce the signed preTBS")
    verify_crl_signatures(crl, issuer_key.public_key())
    return crl


def certificate_public_key(cert: x509.Certificate) -> VerifyKey:
    """The subject's hybrid key: Ed25519 from the SPKI, Falcon-1024 from the alt SPKI.

    :class:`MalformedData` if either is absent or not a key of that algorithm
    (:class:`InvalidKey` for a key of the wrong size or header).
    """
    parsed = _parse_tbs(_tbs_bytes(cert), _Kind.CERTIFICATE)
    return _subject_key(parsed)


def verify_certificate_signatures(cert: x509.Certificate, issuer: VerifyKey) -> None:
    """Return if both of ``cert``'s signatures verify under ``issuer`` (a hybrid key).

    Raises (see the module docs) :class:`MalformedData`, :class:`AlgorithmMismatch`,
    :class:`ClassicalSignatureInvalid` or :class:`AltSignatureInvalid`. Checks only the
    signatures, not validity, extensions or chaining.
    """
    parsed = _parse_signed(_der(cert), _Kind.CERTIFICATE)
    _subject_key(parsed.tbs)
    _verify_signed(parsed, issuer, _Kind.CERTIFICATE)


def verify_crl_signatures(crl: x509.CertificateRevocationList, issuer: VerifyKey) -> None:
    """Return if both of ``crl``'s signatures verify under ``issuer``; raises as
    :func:`verify_certificate_signatures` does."""
    parsed = _parse_signed(_der(crl), _Kind.CRL)
    _verify_signed(parsed, issuer, _Kind.CRL)


def pre_tbs_certificate(cert: x509.Certificate) -> bytes:
    """The DER preTBSCertificate of ``cert`` (its TBS without ``signature`` and without
    the altSignatureValue extension, if any)."""
    return _parse_tbs(_tbs_bytes(cert), _Kind.CERTIFICATE).pre_tbs


def pre_tbs_cert_list(crl: x509.CertificateRevocationList) -> bytes:
    """The DER preTBSCertList of ``crl`` (see :func:`pre_tbs_certificate`)."""
    return _parse_tbs(_tbs_bytes(crl), _Kind.CRL).pre_tbs


def falcon_public_key_info(key: VerifyKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a Falcon-1024 key (the subjectAltPublicKeyInfo value)."""
    if key.algorithm is not SignatureAlgorithm.FALCON_1024:
        raise AlgorithmMismatch(f"expected a falcon-1024 key, got {key.algorithm.label}")
    return der.encode_sequence([FALCON_1024_ALGORITHM_IDENTIFIER, der.encode_bit_string(key.raw)])


def classical_private_key(key: SigningKey) -> Ed25519PrivateKey:
    """The Ed25519 component of a hybrid key as a ``cryptography`` key (e.g. for TLS). SECRET.

    :class:`AlgorithmMismatch` unless ``key`` is a hybrid Ed25519 + Falcon-1024 key.
    """
    _require_hybrid(key.algorithm, "key")
    ed25519, _ = key.components()
    _, body = encoding.decode(ed25519.to_bytes(), Kind.SIGNING_PRIVATE_KEY)
    return Ed25519PrivateKey.from_private_bytes(body)


# --- building helpers -------------------------------------------------------------------------


def _require_hybrid(algorithm: SignatureAlgorithm, what: str) -> None:
    if algorithm is not HYBRID:
        raise AlgorithmMismatch(f"the {what} must be {HYBRID.label}, got {algorithm.label}")


def _add_extension(
    builder: x509.CertificateBuilder, oid: x509.ObjectIdentifier, value: bytes
) -> x509.CertificateBuilder:
    return builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)


# --- parsing ----------------------------------------------------------------------------------


def _der(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return obj.public_bytes(Encoding.DER)


def _tbs_bytes(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    """The TBS, taken from our own parse of the DER (never from lazily parsed accessors)."""
    kind = _Kind.CERTIFICATE if isinstance(obj, x509.Certificate) else _Kind.CRL
    return _split_signed(_der(obj), kind)[0].encoded


def _split_signed(data: bytes, kind: _Kind) -> tuple[der.Element, der.Element, der.Element]:
    outer = der.parse(data)
    if not outer.is_(der.SEQUENCE):
        raise MalformedData(f"a {kind.value} must be a SEQUENCE")
    children = outer.children()
    if len(children) != 3:
        raise MalformedData(f"a {kind.value} must have 3 fields, got {len(children)}")
    tbs, algorithm, value = children
    if not tbs.is_(der.SEQUENCE) or not algorithm.is_(der.SEQUENCE):
        raise MalformedData(f"malformed {kind.value}: TBS and signatureAlgorithm must be SEQUENCEs")
    return tbs, algorithm, value


def _parse_signed(data: bytes, kind: _Kind) -> _ParsedSigned:
    tbs, algorithm, value = _split_signed(data, kind)
    parsed = _parse_tbs(tbs.encoded, kind)
    if algorithm.encoded != parsed.signature_field:
        raise MalformedData(
            f"the {kind.value}'s signatureAlgorithm differs from its TBS signature field"
        )
    return _ParsedSigned(parsed, algorithm.encoded, der.decode_bit_string(value))


def _parse_tbs(tbs: bytes, kind: _Kind) -> _ParsedTbs:
    element = der.parse(tbs)
    if not element.is_(der.SEQUENCE):
        raise MalformedData(f"the TBS of a {kind.value} must be a SEQUENCE")
    fields = element.children()
    if kind is _Kind.CERTIFICATE:
        signature_index, extensions_tag, spki_index = _certificate_layout(fields)
    else:
        signature_index, extensions_tag = _crl_layout(fields)
        spki_index = None
    kept = [field.encoded for index, field in enumerate(fields) if index != signature_index]
    extensions: dict[bytes, _Extension] = {}
    if fields[-1].is_(extensions_tag):
        extensions, pre_tbs_extensions = _parse_extensions(fields[-1], kind)
        kept.pop()
        if pre_tbs_extensions is not None:
            kept.append(pre_tbs_extensions)
    return _ParsedTbs(
        tbs=element.encoded,
        signature_field=fields[signature_index].encoded,
        pre_tbs=der.encode_sequence(kept),
        extensions=extensions,
        subject_public_key_info=None if spki_index is None else fields[spki_index].encoded,
    )


def _certificate_layout(fields: list[der.Element]) -> tuple[int, int, int]:
    """``(index of signature, extensions tag, index of subjectPublicKeyInfo)``; checks shape."""
    if not fields or not fields[0].is_(_CERT_VERSION):
        raise MalformedData("TBSCertificate must be version 3 (explicit [0] version missing)")
    if fields[0].content != _V3:
        raise MalformedData("TBSCertificate must be version 3")
    # version, serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
    if len(fields) < 7:
        raise MalformedData(f"TBSCertificate has {len(fields)} fields, at least 7 required")
    expected = [der.INTEGER, der.SEQUENCE, der.SEQUENCE, der.SEQUENCE, der.SEQUENCE, der.SEQUENCE]
    for offset, (field, identifier) in enumerate(zip(fields[1:7], expected, strict=True)):
        if not field.is_(identifier):
            raise MalformedData(f"TBSCertificate field {offset + 1} has an unexpected tag")
    optional = [_CERT_ISSUER_UID, _CERT_SUBJECT_UID, _CERT_EXTENSIONS]
    position = 0
    for field in fields[7:]:
        while position < len(optional) and not field.is_(optional[position]):
            position += 1
        if position == len(optional):
            raise MalformedData("TBSCertificate has an unexpected or misplaced trailing field")
        position += 1
    return 2, _CERT_EXTENSIONS, 6


def _crl_layout(fields: list[der.Element]) -> tuple[int, int]:
    """``(index of signature, crlExtensions tag)``; checks the shape of a TBSCertList."""
    if not fields or not fields[0].is_(der.INTEGER):
        raise MalformedData("TBSCertList must be version 2 (version missing)")
    if fields[0].content != _CRL_V2:
        raise MalformedData("TBSCertList must be version 2")
    # version, signature, issuer, thisUpdate
    if len(fields) < 4 or not fields[1].is_(der.SEQUENCE) or not fields[2].is_(der.SEQUENCE):
        raise MalformedData("TBSCertList lacks its signature, issuer or thisUpdate field")
    for field in fields[4:-1]:
        if field.is_(_CRL_EXTENSIONS):
            raise MalformedData("TBSCertList crlExtensions must be the last field")
    return 1, _CRL_EXTENSIONS


def _parse_extensions(
    wrapper: der.Element, kind: _Kind
) -> tuple[dict[bytes, _Extension], bytes | None]:
    """The extensions by encoded OID, and the explicit-tagged Extensions field re-encoded
    without altSignatureValue (``None`` if nothing would be left)."""
    inner = wrapper.children()
    if len(inner) != 1 or not inner[0].is_(der.SEQUENCE):
        raise MalformedData(f"{kind.value} extensions must be one SEQUENCE")
    items = inner[0].children()
    if not items:
        raise MalformedData(f"{kind.value} extensions must not be empty")
    extensions: dict[bytes, _Extension] = {}
    alt_value_index: int | None = None
    for index, item in enumerate(items):
        oid, extension = _parse_extension(item, kind)
        if oid in extensions:
            raise MalformedData(f"{kind.value} has a duplicated extension {_oid_text(oid)}")
        extensions[oid] = extension
        if oid == _ALT_SIGNATURE_VALUE:
            alt_value_index = index
    if alt_value_index is None:
        return extensions, wrapper.encoded
    if len(items) == 1:
        return extensions, None
    remaining = der.rebuild_without(inner[0], [alt_value_index])
    return extensions, der.encode_tlv(wrapper.tag, remaining)


def _parse_extension(item: der.Element, kind: _Kind) -> tuple[bytes, _Extension]:
    if not item.is_(der.SEQUENCE):
        raise MalformedData(f"a {kind.value} extension must be a SEQUENCE")
    parts = item.children()
    if len(parts) == 2:
        (oid, value), critical = parts, False
    elif len(parts) == 3:
        oid, flag, value = parts
        critical = der.decode_boolean(flag)
        if not critical:
            raise MalformedData("DER forbids encoding the default critical = FALSE")
    else:
        raise MalformedData(f"a {kind.value} extension has {len(parts)} fields")
    der.decode_oid(oid)  # strictly well-formed
    return oid.encoded, _Extension(critical, der.decode_octet_string(value))


def _oid_text(encoded: bytes) -> str:
    return der.decode_oid(der.parse(encoded))


def _required_extension(parsed: _ParsedTbs, oid: bytes, kind: _Kind) -> bytes:
    extension = parsed.extensions.get(oid)
    if extension is None:
        raise MalformedData(f"the {kind.value} has no {_oid_text(oid)} extension")
    return extension.value


def _subject_key(parsed: _ParsedTbs) -> VerifyKey:
    spki = parsed.subject_public_key_info
    if spki is None:
        raise MalformedData("a CRL has no subject key")
    ed25519_raw = _key_from_spki(spki, ED25519_ALGORITHM_IDENTIFIER, "subjectPublicKeyInfo")
    if len(ed25519_raw) != _ED25519_KEY_SIZE:
        raise InvalidKey(f"Ed25519 public key must be 32 bytes, got {len(ed25519_raw)}")
    alt_spki = _required_extension(parsed, _SUBJECT_ALT_PUBLIC_KEY_INFO, _Kind.CERTIFICATE)
    falcon_raw = _key_from_spki(
        alt_spki, FALCON_1024_ALGORITHM_IDENTIFIER, "subjectAltPublicKeyInfo"
    )
    return VerifyKey.from_components(
        VerifyKey(SignatureAlgorithm.ED25519, ed25519_raw),
        VerifyKey(SignatureAlgorithm.FALCON_1024, falcon_raw),
    )


def _key_from_spki(spki: bytes, algorithm: bytes, what: str) -> bytes:
    element = der.parse(spki)
    if not element.is_(der.SEQUENCE):
        raise MalformedData(f"{what} must be a SEQUENCE")
    parts = element.children()
    if len(parts) != 2:
        raise MalformedData(f"{what} must have 2 fields, got {len(parts)}")
    if parts[0].encoded != algorithm:
        raise MalformedData(f"{what}: unexpected algorithm {_algorithm_text(parts[0])}")
    return der.decode_bit_string(parts[1])


def _algorithm_text(element: der.Element) -> str:
    """Best-effort description of an AlgorithmIdentifier for an error message."""
    if not element.is_(der.SEQUENCE):
        return "(not an AlgorithmIdentifier)"
    try:
        parts = element.children()
        name = der.decode_oid(parts[0]) if parts else "(empty)"
    except MalformedData:
        return "(malformed AlgorithmIdentifier)"
    if name in {legacy.dotted_string for legacy in oids.FALCON_1024_LEGACY_OIDS}:
        return f"{name} (a retired oqs-provider Falcon-1024 OID)"
    return name if len(parts) == 1 else f"{name} with parameters"


# --- verification -----------------------------------------------------------------------------


def _verify_signed(parsed: _ParsedSigned, issuer: VerifyKey, kind: _Kind) -> None:
    _require_hybrid(issuer.algorithm, "issuer key")
    issuer_ed25519, issuer_falcon = issuer.components()
    tbs = parsed.tbs
    alt_algorithm = _required_extension(tbs, _ALT_SIGNATURE_ALGORITHM, kind)
    alt_value = _required_extension(tbs, _ALT_SIGNATURE_VALUE, kind)
    if parsed.signature_algorithm != ED25519_ALGORITHM_IDENTIFIER:
        raise AlgorithmMismatch(
            f"{kind.value} classical signature algorithm is "
            f"{_algorithm_text(der.parse(parsed.signature_algorithm))}, expected Ed25519"
        )
    if alt_algorithm != FALCON_1024_ALGORITHM_IDENTIFIER:
        raise AlgorithmMismatch(
            f"{kind.value} alternative signature algorithm is "
            f"{_algorithm_text(der.parse(alt_algorithm))}, expected Falcon-1024 "
            f"({oids.FALCON_1024.dotted_string})"
        )
    alt_raw = der.decode_bit_string(der.parse(alt_value))
    classical_signature = Signature(SignatureAlgorithm.ED25519, parsed.signature_value)
    alt_signature = Signature(SignatureAlgorithm.FALCON_1024, alt_raw)
    classical_ok = _verifies(issuer_ed25519, classical_signature, tbs.tbs)
    alt_ok = _verifies(issuer_falcon, alt_signature, tbs.pre_tbs)
    if not alt_ok:
        also = "" if classical_ok else " (nor does its Ed25519 signature)"
        raise AltSignatureInvalid(
            f"the {kind.value}'s Falcon-1024 altSignatureValue does not verify under the "
            f"issuer's alternative key{also}"
        )
    if not classical_ok:
        raise ClassicalSignatureInvalid(
            f"the {kind.value}'s Ed25519 signature does not verify under the issuer key"
        )


def _verifies(key: VerifyKey, signature: Signature, message: bytes) -> bool:
    """Whether ``signature`` verifies (the :class:`InvalidSignature` turned into ``False``,
    so that both signatures are always checked and the report names the right one)."""
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
