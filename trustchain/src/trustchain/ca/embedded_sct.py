"""Signed certificate timestamps embedded in hybrid certificates (RFC 6962 §3.1, adapted).

RFC 6962 embeds SCTs by logging a *precertificate* -- the certificate with a poison extension
and without the SCT list -- and then putting the SCTs into the final certificate, which the CA
signs afterwards. A TrustChain certificate has two signatures (Ed25519 over the TBS, Falcon-1024
over the preTBS, :mod:`trustchain.ca.hybrid`), so we log neither a precertificate nor the
certificate, but the part of the certificate that both signatures cover and that exists before
the SCTs do.

The log entry
=============

``log_entry(cert)`` is the DER of the certificate's **preTBSCertificate** (ITU-T X.509 10/2019
§7.2.2, computed by :func:`trustchain.ca.hybrid.pre_tbs_certificate`: the TBSCertificate
without its ``signature`` AlgorithmIdentifier field and without the altSignatureValue
extension) with, in addition, the embedded-SCT extension (:data:`EMBEDDED_SCT_LIST`) removed.
Every other field and extension stays byte for byte and in order: serial, issuer, validity,
subject, the Ed25519 subjectPublicKeyInfo, the Falcon-1024 subjectAltPublicKeyInfo, the
altSignatureAlgorithm and all profile extensions. If the SCT extension was the only extension
left, the ``[3] Extensions`` field is omitted (never the case in practice: the alternative key
extensions are always there). The entry is a well-formed DER SEQUENCE; the log hashes it as an
RFC 9162 leaf (``SHA-256(0x00 || entry)``) and its SCT commits to that leaf hash
(:mod:`trustchain.ct.sct`).

It is recomputable from the final certificate alone, which is what a validator does: take the
certificate, compute ``log_entry``, and check each embedded SCT with
``sct.verify(log_public_key, entry=log_entry(cert))``.

Issuing procedure (what :class:`trustchain.ca.authority.CertificateAuthority` does)
===================================================================================

1. Build the certificate's ``CertificateBuilder`` (subject, issuer, serial, validity,
   profile extensions) -- no SCT extension yet.
2. :func:`precertificate_entry`: add what :func:`trustchain.ca.hybrid.build_certificate` adds
   before its alternative signature (the subject's Ed25519 key as the SPKI, then
   subjectAltPublicKeyInfo and altSignatureAlgorithm as the last extensions), sign that draft
   with a **throw-away** Ed25519 key (the issuer's keys never sign anything but the final
   certificate) and take ``log_entry`` of the draft.
3. Append the entry to the log, receiving an SCT.
4. Add the SCT extension to the builder (it sits after the profile extensions and before the
   three alternative-key extensions ``build_certificate`` appends) and have ``build_certificate``
   sign: the Falcon-1024 signature covers the preTBS *including* the SCTs, the Ed25519 signature
   the whole TBS.
5. Check ``log_entry(final) == entry`` before the certificate leaves the CA.

Extension format (PROVISIONAL)
==============================

OID :data:`EMBEDDED_SCT_LIST` = ``<TrustChain arc>.3.1`` (the TrustChain arc is the UUID OID of
:mod:`trustchain.ca.oids`), non-critical; PROVISIONAL: it may change before a first release.
RFC 6962 uses ``1.3.6.1.4.1.11129.2.4.2`` with a TLS-encoded list; our SCTs are not RFC 6962
SCTs (hybrid signatures, other signed fields), so they get their own OID and a DER value::

    TrustChainEmbeddedSCTs ::= SEQUENCE SIZE (1..16) OF OCTET STRING
        -- each OCTET STRING: one SignedCertificateTimestamp.to_bytes() (trustchain.ct.sct)

:func:`embedded_scts` parses it strictly: bad DER, an empty or oversized list, an element that
is not an OCTET STRING or not a well-formed SCT, or a duplicated extension raise
:class:`~trustchain.errors.MalformedData`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from trustchain.ca import der, hybrid, oids
from trustchain.crypto.signatures import VerifyKey
from trustchain.ct.sct import SignedCertificateTimestamp
from trustchain.errors import MalformedData

__all__ = [
    "EMBEDDED_SCT_LIST",
    "MAX_EMBEDDED_SCTS",
    "decode_scts",
    "embedded_scts",
    "encode_scts",
    "log_entry",
    "precertificate_entry",
    "with_scts",
]

#: The embedded-SCT extension (``<TrustChain arc>.3.1``). PROVISIONAL.
EMBEDDED_SCT_LIST: Final = x509.ObjectIdentifier(oids.TRUSTCHAIN_ARC + ".3.1")
#: At most this many SCTs in one certificate.
MAX_EMBEDDED_SCTS: Final = 16

_SCT_OID_DER: Final = der.encode_oid(EMBEDDED_SCT_LIST.dotted_string)
_EXTENSIONS_TAG: Final = 0xA3  # [3] EXPLICIT Extensions in (pre)TBSCertificate
#: What ``cryptography`` raises for extensions it cannot decode (not all are ValueErrors).
_PARSE_ERRORS: Final = (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)


def log_entry(cert: x509.Certificate) -> bytes:
    """The bytes the CA logged for ``cert``: its preTBSCertificate without the SCT extension.

    :class:`MalformedData` if ``cert`` is not a well-formed hybrid-style certificate or has
    the SCT extension more than once.
    """
    return _without_sct_extension(hybrid.pre_tbs_certificate(cert))


def precertificate_entry(builder: x509.CertificateBuilder, *, subject_key: VerifyKey) -> bytes:
    """The :func:`log_entry` of the certificate that ``hybrid.build_certificate(builder,
    subject_key=subject_key, ...)`` will produce once the SCT extension is added to ``builder``.

    ``builder`` is as :func:`trustchain.ca.hybrid.build_certificate` takes it (no public key, no
    alternative-key extensions) and has no SCT extension yet. The draft is signed with a fresh
    throw-away Ed25519 key and discarded: signatures are not part of the entry.
    """
    ed25519, falcon = subject_key.components()
    draft = (
        builder.public_key(Ed25519PublicKey.from_public_bytes(ed25519.raw))
        .add_extension(
            x509.UnrecognizedExtension(
                oids.SUBJECT_ALT_PUBLIC_KEY_INFO, hybrid.falcon_public_key_info(falcon)
            ),
            critical=False,
        )
        .add_extension(
            x509.UnrecognizedExtension(
                oids.ALT_SIGNATURE_ALGORITHM, hybrid.FALCON_1024_ALGORITHM_IDENTIFIER
            ),
            critical=False,
        )
        .sign(Ed25519PrivateKey.generate(), None)
    )
    return log_entry(draft)


def with_scts(
    builder: x509.CertificateBuilder, scts: Sequence[SignedCertificateTimestamp]
) -> x509.CertificateBuilder:
    """``builder`` with the embedded-SCT extension holding ``scts`` (non-critical)."""
    return builder.add_extension(
        x509.UnrecognizedExtension(EMBEDDED_SCT_LIST, encode_scts(scts)), critical=False
    )


def encode_scts(scts: Sequence[SignedCertificateTimestamp]) -> bytes:
    """The DER ``TrustChainEmbeddedSCTs`` value of ``scts`` (1 to 16 of them)."""
    if not 1 <= len(scts) <= MAX_EMBEDDED_SCTS:
        raise ValueError(f"a certificate embeds 1 to {MAX_EMBEDDED_SCTS} SCTs, got {len(scts)}")
    return der.encode_sequence(der.encode_octet_string(sct.to_bytes()) for sct in scts)


def decode_scts(value: bytes) -> list[SignedCertificateTimestamp]:
    """Parse a ``TrustChainEmbeddedSCTs`` value strictly (:class:`MalformedData`)."""
    outer = der.parse(value)
    if not outer.is_(der.SEQUENCE):
        raise MalformedData("the embedded SCT list must be a SEQUENCE")
    items = outer.children()
    if not 1 <= len(items) <= MAX_EMBEDDED_SCTS:
        raise MalformedData(
            f"the embedded SCT list must hold 1 to {MAX_EMBEDDED_SCTS} SCTs, got {len(items)}"
        )
    return [SignedCertificateTimestamp.from_bytes(der.decode_octet_string(i)) for i in items]


def embedded_scts(cert: x509.Certificate) -> list[SignedCertificateTimestamp]:
    """The SCTs embedded in ``cert``; ``[]`` if it has no SCT extension.

    :class:`MalformedData` if the extension (or the certificate's extensions as a whole) does
    not parse.
    """
    try:
        extension = cert.extensions.get_extension_for_oid(EMBEDDED_SCT_LIST)
    except x509.ExtensionNotFound:
        return []
    except _PARSE_ERRORS as exc:  # duplicated or undecodable extensions
        raise MalformedData(f"the certificate's extensions do not parse: {exc}") from exc
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - private OID
        raise MalformedData("the embedded SCT extension was parsed as a known extension")
    return decode_scts(value.value)


def _without_sct_extension(pre_tbs: bytes) -> bytes:
    """``pre_tbs`` re-encoded without the embedded-SCT extension (unchanged if it has none)."""
    element = der.parse(pre_tbs)
    if not element.is_(der.SEQUENCE):
        raise MalformedData("a preTBSCertificate must be a SEQUENCE")
    fields = element.children()
    if not fields or not fields[-1].is_(_EXTENSIONS_TAG):
        return element.encoded
    wrapper = fields[-1]
    inner = wrapper.children()
    if len(inner) != 1 or not inner[0].is_(der.SEQUENCE):
        raise MalformedData("certificate extensions must be one SEQUENCE")
    items = inner[0].children()
    drop: list[int] = []
    for index, item in enumerate(items):
        if not item.is_(der.SEQUENCE):
            raise MalformedData("a certificate extension must be a SEQUENCE")
        parts = item.children()
        if parts and parts[0].encoded == _SCT_OID_DER:
            drop.append(index)
    if not drop:
        return element.encoded
    if len(drop) > 1:
        raise MalformedData("the certificate has more than one embedded SCT extension")
    kept = [field.encoded for field in fields[:-1]]
    if len(items) > 1:
        kept.append(der.encode_tlv(wrapper.tag, der.rebuild_without(inner[0], drop)))
    return der.encode_sequence(kept)
