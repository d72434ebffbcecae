"""ML-KEM-1024 against the NIST ACVP FIPS 203 vectors and against PQClean (via pqcrypto).

The vectors live in ``tests/data/ml-kem`` (see PROVENANCE.md there). TrustChain's ML-KEM comes
from ``cryptography`` (OpenSSL); PQClean is an independent implementation, so agreement in both
directions checks the encodings (FIPS 203 ``ek``, ``c`` and the 64-byte seed) and the
shared-secret derivation, including implicit rejection.

pqcrypto's API: ``encrypt(public_key) -> (ciphertext, shared_secret)`` and
``decrypt(secret_key, ciphertext) -> shared_secret`` (secret key first).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pqcrypto.kem import ml_kem_1024 as pqclean

from trustchain.crypto.algorithms import KemAlgorithm
from trustchain.crypto.kem import KemCiphertext, KemPrivateKey, KemPublicKey

DATA = Path(__file__).parent / "data" / "ml-kem"
KEYGEN_FILE = DATA / "ML-KEM-keyGen-FIPS203.internalProjection.json"
ENCAP_DECAP_FILE = DATA / "ML-KEM-encapDecap-FIPS203.internalProjection.json"
ML_KEM = KemAlgorithm.ML_KEM_1024

# FIPS 203 sizes for ML-KEM-1024 (k = 4): ek = 384k + 32, dk = 768k + 96, c = 32(du k + dv).
EK_SIZE = 1568
DK_SIZE = 3168
CT_SIZE = 1568


@cache
def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _group(path: Path, *, function: str | None = None) -> dict[str, Any]:
    groups = [
        g
        for g in _load(path)["testGroups"]
        if g["parameterSet"] == "ML-KEM-1024" and (function is None or g["function"] == function)
    ]
    assert len(groups) == 1, f"expected one ML-KEM-1024 {function or 'keyGen'} group"
    group: dict[str, Any] = groups[0]
    return group


def _cases(path: Path, function: str | None = None) -> list[Any]:
    group = _group(path, function=function)
    return [pytest.param(group, test, id=f"tcId{test['tcId']}") for test in group["tests"]]


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


def test_vector_files_match_provenance() -> None:
    provenance = (DATA / "PROVENANCE.md").read_text()
    for path in (KEYGEN_FILE, ENCAP_DECAP_FILE):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"{digest}  {path.name}" in provenance


def test_group_sizes() -> None:
    assert len(_group(KEYGEN_FILE)["tests"]) == 25
    assert len(_group(ENCAP_DECAP_FILE, function="encapsulation")["tests"]) == 25
    decap = _group(ENCAP_DECAP_FILE, function="decapsulation")["tests"]
    assert len(decap) == 10
    reasons = {t["reason"] for t in decap}
    assert reasons == {"no modification", "modify ciphertext"}


def test_pqclean_sizes_match_fips203() -> None:
    assert pqclean.PUBLIC_KEY_SIZE == EK_SIZE
    assert pqclean.SECRET_KEY_SIZE == DK_SIZE
    assert pqclean.CIPHERTEXT_SIZE == CT_SIZE
    assert pqclean.PLAINTEXT_SIZE == 32


# --- keyGen: seed d || z -> ek ------------------------------------------------------------------


@pytest.mark.parametrize(("group", "case"), _cases(KEYGEN_FILE))
def test_keygen_seed_reproduces_ek(group: dict[str, Any], case: dict[str, Any]) -> None:
    seed = _h(case["d"]) + _h(case["z"])
    key = KemPrivateKey.from_seed(ML_KEM, seed)
    assert key.public_key().raw == _h(case["ek"])
    # The private key body is the seed itself (FIPS 203 §7.1), not the expanded dk.
    assert key.to_bytes()[8:] == seed


@pytest.mark.parametrize(("group", "case"), _cases(KEYGEN_FILE))
def test_keygen_seed_key_interoperates_with_vector_dk(
    group: dict[str, Any], case: dict[str, Any]
) -> None:
    ours = KemPrivateKey.from_seed(ML_KEM, _h(case["d"]) + _h(case["z"]))
    dk = _h(case["dk"])
    # FIPS 203 dk = dk_PKE || ek || H(ek) || z.
    assert dk[1536 : 1536 + EK_SIZE] == _h(case["ek"])
    assert dk[-32:] == _h(case["z"])
    # Ours -> PQClean with the vector's expanded dk.
    secret, ciphertext = ours.public_key().encapsulate()
    assert pqclean.decrypt(dk, ciphertext.raw) == secret
    # PQClean -> ours (seed form).
    ct, pq_secret = pqclean.encrypt(_h(case["ek"]))
    assert ours.decapsulate(KemCiphertext(ML_KEM, ct)) == pq_secret


# --- encapDecap through PQClean ----------------------------------------------------------------


@pytest.mark.parametrize(("group", "case"), _cases(ENCAP_DECAP_FILE, "decapsulation"))
def test_decapsulation_vectors(group: dict[str, Any], case: dict[str, Any]) -> None:
    dk = _h(group["dk"])
    assert len(dk) == DK_SIZE
    assert pqclean.decrypt(dk, _h(case["c"])) == _h(case["k"])
    # The group's ek is a valid FIPS 203 §7.2 key for our implementation too.
    KemPublicKey.from_raw(ML_KEM, _h(group["ek"]))


def test_decapsulation_vectors_include_implicit_rejection() -> None:
    group = _group(ENCAP_DECAP_FILE, function="decapsulation")
    rejected = [t for t in group["tests"] if t["reason"] == "modify ciphertext"]
    assert rejected
    dk = _h(group["dk"])
    for case in rejected:
        k = pqclean.decrypt(dk, _h(case["c"]))
        assert k == _h(case["k"])
        # Implicit rejection: K_bar = J(z || c), a secret no encapsulator could know. It differs
        # from the secret of every unmodified ciphertext in the group.
        honest = {_h(t["k"]) for t in group["tests"] if t["reason"] == "no modification"}
        assert k not in honest


@pytest.mark.parametrize(("group", "case"), _cases(ENCAP_DECAP_FILE, "encapsulation"))
def test_encapsulation_vectors_decapsulate(group: dict[str, Any], case: dict[str, Any]) -> None:
    ek, dk = _h(case["ek"]), _h(case["dk"])
    assert dk[1536 : 1536 + EK_SIZE] == ek
    assert pqclean.decrypt(dk, _h(case["c"])) == _h(case["k"])
    # And our implementation accepts the vector's ek and can encapsulate to it for PQClean.
    secret, ciphertext = KemPublicKey.from_raw(ML_KEM, ek).encapsulate()
    assert pqclean.decrypt(dk, ciphertext.raw) == secret


# --- cross-implementation, both directions, with fresh keys -----------------------------------


@pytest.mark.parametrize("round_", range(5))
def test_cryptography_encapsulates_pqclean_decapsulates(round_: int) -> None:
    pq_pk, pq_sk = pqclean.generate_keypair()
    secret, ciphertext = KemPublicKey.from_raw(ML_KEM, pq_pk).encapsulate()
    assert len(ciphertext.raw) == CT_SIZE
    assert pqclean.decrypt(pq_sk, ciphertext.raw) == secret


@pytest.mark.parametrize("round_", range(5))
def test_pqclean_encapsulates_cryptography_decapsulates(round_: int) -> None:
    ours = KemPrivateKey.generate(ML_KEM)
    ct, secret = pqclean.encrypt(ours.public_key().raw)
    assert ours.decapsulate(KemCiphertext(ML_KEM, ct)) == secret


def test_both_implementations_reject_implicitly_alike() -> None:
    """A modified ciphertext gives the same pseudo-random secret in both implementations.

    Uses a keyGen vector, where both the seed (for us) and the expanded dk (for PQClean) are known.
    """
    case = _group(KEYGEN_FILE)["tests"][0]
    seed_key = KemPrivateKey.from_seed(ML_KEM, _h(case["d"]) + _h(case["z"]))
    dk = _h(case["dk"])
    secret, ciphertext = seed_key.public_key().encapsulate()
    for position in (0, 100, CT_SIZE - 1):
        tampered = bytearray(ciphertext.raw)
        tampered[position] ^= 0x40
        rejected = seed_key.decapsulate(KemCiphertext(ML_KEM, bytes(tampered)))
        assert rejected == pqclean.decrypt(dk, bytes(tampered))
        assert rejected != secret
