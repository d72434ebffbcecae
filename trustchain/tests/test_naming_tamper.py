"""One changed byte anywhere in a signed name record is never accepted.

Every byte position of a real encoded :class:`~trustchain.naming.SignedRecord` (record, signer
chain, signature, and every length and count in between) is changed in turn and verified
against a trust store that also holds the genuine intermediate and a current CRL (so a
tampered presented intermediate cannot be silently replaced by the store's copy). Each attempt
must be refused as ``MALFORMED``, ``BAD_SIGNATURE`` or ``CHAIN_REJECTED``. Hypothesis then
tries arbitrary replacement values at arbitrary positions, for records and revocations.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustchain.ca.authority import CertificateAuthority
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.crypto.keystore import KeyStore
from trustchain.naming import (
    NameRecord,
    NameRecordRejected,
    NameRejection,
    Revocation,
    ServiceEndpoint,
    sign_record,
    sign_revocation,
    verify_record,
    verify_revocation,
)

NOW = datetime.now(UTC).replace(microsecond=0)
REFUSALS = {NameRejection.MALFORMED, NameRejection.BAD_SIGNATURE, NameRejection.CHAIN_REJECTED}


@dataclass(frozen=True)
class Material:
    store: TrustStore
    record: bytes
    revocation: bytes


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    home = tmp_path_factory.mktemp("tamper")
    with KeyStore.open(home) as keystore, CertificateAuthority(home, keystore) as ca:
        root = ca.init_root("root")
        bank = ca.issue_intermediate("bank", "bank.hypermesh")
        issued = ca.issue("bank", "node", "n1.bank.hypermesh")
        assert issued.key_name is not None
        key = keystore.signing_key(issued.key_name, issued.key_version)
        store = TrustStore([TrustAnchor(root.certificate, "root")])
        store.add_certificate(bank.certificate)
        store.add_crl(ca.crl("bank"))
    chain = (issued.certificate, *issued.chain)
    value = NameRecord(
        "www.bank.hypermesh",
        key.public_key().key_id,
        ("127.0.0.1", "::1"),
        (ServiceEndpoint("stoq", "udp", 4433),),
        ("v=1",),
        ttl=60,
        serial=1,
        not_before=NOW - timedelta(minutes=1),
        not_after=NOW + timedelta(hours=2),
    )
    record = sign_record(value, key, chain).encode()
    revocation = sign_revocation(Revocation("www.bank.hypermesh", 1, NOW), key, chain).encode()
    assert verify_record(record, store) == value
    return Material(store, record, revocation)


def outcome(data: bytes, store: TrustStore, *, revocation: bool = False) -> NameRejection | None:
    """The rejection reason of ``data``, or None if it was accepted."""
    try:
        if revocation:
            verify_revocation(data, store)
        else:
            verify_record(data, store)
    except NameRecordRejected as exc:
        return exc.reason
    return None


# A changed byte can make a certificate's serial number negative: cryptography warns when it
# is read, and the certificate is refused all the same.
NEGATIVE_SERIAL = "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"


@pytest.mark.filterwarnings(NEGATIVE_SERIAL)
def test_every_byte_position_of_a_signed_record(material: Material) -> None:
    original = material.record
    reasons: Counter[NameRejection | None] = Counter()
    for position in range(len(original)):
        changed = bytearray(original)
        changed[position] ^= 0x01
        reason = outcome(bytes(changed), material.store)
        assert reason in REFUSALS, f"byte {position}: {reason}"
        reasons[reason] += 1
    # every kind of damage is met: lengths and bodies, keys, certificate and record signatures
    assert set(reasons) == REFUSALS
    assert sum(reasons.values()) == len(original)


@pytest.mark.filterwarnings(NEGATIVE_SERIAL)
@given(st.data())
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_replacement_value_anywhere(material: Material, data: st.DataObject) -> None:
    revocation = data.draw(st.booleans())
    original = material.revocation if revocation else material.record
    position = data.draw(st.integers(0, len(original) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != original[position]))
    changed = bytearray(original)
    changed[position] = value
    assert outcome(bytes(changed), material.store, revocation=revocation) in REFUSALS


def test_the_untouched_revocation_verifies(material: Material) -> None:
    assert outcome(material.revocation, material.store, revocation=True) is None


def test_truncations_and_extensions_are_malformed(material: Material, tmp_path: Path) -> None:
    original = material.record
    for cut in range(0, len(original), 97):
        assert outcome(original[:cut], material.store) is NameRejection.MALFORMED
    assert outcome(original + b"\x00", material.store) is NameRejection.MALFORMED
