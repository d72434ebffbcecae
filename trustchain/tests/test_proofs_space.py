"""trustchain.consensus.proofs.plots and .space: PoSpace (Chia proof of space, custody, location).

One real k=18 chiapos plot is made per module (plotting is the slow part, about a second) for
the storage node ``node``; every other plot-shaped thing is that plot's file with bytes of
its header changed. A real PKI is built once per module: a key store, a root CA, the entity
CA ``bank`` (presented in chains, not in the trust store), node certificates, one of them
revoked, and a second root nobody trusts.
"""

from __future__ import annotations

import hashlib
import resource
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import chiapos
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypermesh_interfaces.v1 import common_pb2
from trustchain.ca import hybrid
from trustchain.ca.authority import CertificateAuthority, Issued
from trustchain.ca.trust import PARSE_ERRORS, TrustAnchor, TrustLevel, TrustStore
from trustchain.ca.validation import validate
from trustchain.consensus.proofs import custody
from trustchain.consensus.proofs.challenges import asset_id, space_challenge
from trustchain.consensus.proofs.plots import (
    PLOT_ID_LABEL,
    PLOT_MEMO_LABEL,
    PLOT_MEMO_SIZE,
    InvalidPlot,
    Plot,
    PlotMismatch,
    PlottingFailed,
    create_plot,
    open_plot,
    plot_filename,
    plot_id,
    plot_memo,
    proof_size,
    prove_capacity,
    quality_meets,
    verify_capacity,
)
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING
from trustchain.consensus.proofs.rejections import ProofKind, ProofReason, ProofRejected
from trustchain.consensus.proofs.space import (
    SPACE_SIGNING_LABEL,
    NoSpaceProof,
    SpaceVerdict,
    prove_space,
    space_signing_bytes,
    verify_space,
)
from trustchain.crypto.algorithms import SignatureAlgorithm
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore
from trustchain.crypto.signatures import Signature, SigningKey, VerifyKey
from trustchain.errors import (
    CertificateRejected,
    MalformedData,
    TrustChainError,
    UnknownAlgorithm,
)

NAMESPACE = "bank.hypermesh"
K = ProofKind
R = ProofReason
SEED = hashlib.sha256(b"test plot seed").digest()
OTHER_SEED = hashlib.sha256(b"another plot seed").digest()
BEACON = hashlib.sha256(b"test beacon").digest()
VERSION = 7
PRESET = LOCALHOST_TESTING
ADDRESS = common_pb2.NetworkAddress(
    ip=bytes([10, 1, 2, 3]), port=4433, transport=common_pb2.TRANSPORT_QUIC
)
ZONE = "eu-west/rack-4"
ED25519 = SignatureAlgorithm.ED25519
Signer = Callable[[bytes], bytes]
RequiredField = Literal[
    "storage_node_certificate_chain",
    "node_signature",
    "pos_proof",
    "custody_proofs",
    "storage_node_id",
    "storage_address",
]
NOFILE_AT_IMPORT = resource.getrlimit(resource.RLIMIT_NOFILE)


@dataclass(frozen=True)
class Node:
    """A node certificate, its chain (leaf first, without the root) and a signer for its key."""

    issued: Issued
    sign: Signer

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return (self.issued.certificate, *self.issued.chain)

    @property
    def key(self) -> VerifyKey:
        return hybrid.certificate_public_key(self.issued.certificate)


@dataclass(frozen=True)
class Pki:
    node: Node
    other: Node
    revoked: Node
    store: TrustStore
    foreign_store: TrustStore


def _signer(keys: KeyStore, name: str) -> Signer:
    def sign(message: bytes) -> bytes:
        return keys.sign(name, message).signature.to_bytes()

    return sign


def _node(keys: KeyStore, ca: CertificateAuthority, name: str) -> Node:
    issued = ca.issue("bank", "node", name, dns_names=[name])
    assert issued.key_name is not None
    return Node(issued, _signer(keys, issued.key_name))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    home: Path = tmp_path_factory.mktemp("space-pki")
    keys = KeyStore.open(
        home / "keys", passphrase=b"pw", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    )
    with (
        keys,
        CertificateAuthority(home / "ca", keys) as ca,
        CertificateAuthority(home / "foreign-ca", keys) as foreign_ca,
    ):
        root = ca.init_root("hypermesh-root")
        bank = ca.issue_intermediate("bank", NAMESPACE)
        node = _node(keys, ca, f"storage1.{NAMESPACE}")
        other = _node(keys, ca, f"storage2.{NAMESPACE}")
        revoked = _node(keys, ca, f"storage3.{NAMESPACE}")
        ca.revoke(revoked.issued.serial, x509.ReasonFlags.superseded)
        store = TrustStore(
            [TrustAnchor(root.certificate, "hypermesh")], certificates=[bank.certificate]
        )
        store.add_crl(ca.crl())
        store.add_crl(ca.crl("bank"))
        foreign_root = foreign_ca.init_root("foreign-root")
        foreign_store = TrustStore([TrustAnchor(foreign_root.certificate, "foreign")])
        yield Pki(node, other, revoked, store, foreign_store)


@pytest.fixture(scope="module")
def plot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("plots")


@pytest.fixture(scope="module")
def plot(pki: Pki, plot_dir: Path) -> Plot:
    """The node's k=18 plot (the only plotting of the module)."""
    return create_plot(plot_dir, pki.node.key, PRESET.plot_k, seed=SEED)


@pytest.fixture(scope="module")
def asset(pki: Pki) -> bytes:
    return asset_id(pki.node.key.key_id, "photos")


@pytest.fixture(scope="module")
def chunks() -> list[bytes]:
    data = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(2048))
    pieces = custody.chunk(data)
    assert len(pieces) >= 3
    return pieces


@pytest.fixture(scope="module")
def proof(pki: Pki, plot: Plot, chunks: list[bytes], asset: bytes) -> common_pb2.SpaceProof:
    """The node's SpaceProof for (asset, VERSION, BEACON). Copy before changing."""
    return _prove(pki.node, plot, chunks, asset)


def _prove(
    node: Node,
    plot: Plot,
    chunks: list[bytes],
    asset: bytes,
    *,
    version: int = VERSION,
    sign: Signer | None = None,
) -> common_pb2.SpaceProof:
    return prove_space(
        plot=plot,
        chunks=chunks,
        beacon=BEACON,
        asset=asset,
        version=version,
        preset=PRESET,
        chain=node.chain,
        sign=sign or node.sign,
        address=ADDRESS,
        zone=ZONE,
    )


def _copy(proof: common_pb2.SpaceProof) -> common_pb2.SpaceProof:
    copied = common_pb2.SpaceProof()
    copied.CopyFrom(proof)
    return copied


def _resigned(proof: common_pb2.SpaceProof, sign: Signer) -> common_pb2.SpaceProof:
    signed = _copy(proof)
    signed.node_signature = sign(space_signing_bytes(signed))
    return signed


def _verify(
    proof: common_pb2.SpaceProof, pki: Pki, asset: bytes, **overrides: object
) -> SpaceVerdict:
    arguments: dict[str, object] = {
        "beacon": BEACON,
        "asset": asset,
        "version": VERSION,
        "preset": PRESET,
        "trust_store": pki.store,
    }
    arguments.update(overrides)
    return verify_space(proof, **arguments)  # type: ignore[arg-type]


def _rejected(
    proof: common_pb2.SpaceProof, pki: Pki, asset: bytes, **overrides: object
) -> ProofRejected:
    with pytest.raises(ProofRejected) as caught:
        _verify(proof, pki, asset, **overrides)
    return caught.value


def _flip(value: bytes, position: int, mask: int) -> bytes:
    """``value`` with byte ``position % len`` XORed with ``mask`` (1..255)."""
    index = position % len(value)
    return value[:index] + bytes([value[index] ^ mask]) + value[index + 1 :]


def _chiapos_proof(plot: Plot) -> tuple[bytes, bytes, bytes]:
    """(challenge, proof, quality) straight from chiapos' DiskProver: the first derived
    challenge for which the plot has a proof."""
    prover = chiapos.DiskProver(str(plot.path))
    for attempt in range(64):
        challenge = hashlib.sha256(b"chiapos challenge" + attempt.to_bytes(4, "big")).digest()
        qualities = prover.get_qualities_for_challenge(challenge)
        if qualities:
            return challenge, bytes(prover.get_full_proof(challenge, 0)), bytes(qualities[0])
    raise AssertionError("no proof in 64 challenges: the plot is broken")


def _challenge_without_proof(plot: Plot) -> bytes:
    prover = chiapos.DiskProver(str(plot.path))
    for attempt in range(64):
        challenge = hashlib.sha256(b"empty challenge" + attempt.to_bytes(4, "big")).digest()
        if not prover.get_qualities_for_challenge(challenge):
            return challenge
    raise AssertionError("a proof for 64 challenges in a row: the plot is broken")


def _leading_zero_bits(value: bytes) -> int:
    return 8 * len(value) - int.from_bytes(value, "big").bit_length()


def _patched_copy(plot: Plot, directory: Path, name: str, old: bytes, new: bytes) -> Path:
    """A copy of the plot file whose header has ``old`` replaced by ``new`` (same length)."""
    assert len(old) == len(new)
    data = bytearray(plot.path.read_bytes())
    offset = bytes(data[:4096]).index(old)
    data[offset : offset + len(old)] = new
    path = directory / name
    path.write_bytes(bytes(data))
    return path


# --- plots: identity, files -----------------------------------------------------------------------


def test_plot_id_binds_key_and_seed(pki: Pki) -> None:
    key = pki.node.key
    assert plot_id(key, SEED) == hashlib.sha256(PLOT_ID_LABEL + key.to_bytes() + SEED).digest()
    assert PLOT_ID_LABEL == b"hypermesh/plot-id/v1\x00"
    assert plot_id(key, OTHER_SEED) != plot_id(key, SEED)
    assert plot_id(pki.other.key, SEED) != plot_id(key, SEED)
    with pytest.raises(ValueError, match="32 bytes"):
        plot_id(key, SEED[:31])


def test_created_plot(pki: Pki, plot: Plot, plot_dir: Path) -> None:
    key = pki.node.key
    assert plot == Plot(
        path=plot_dir / plot_filename(18, plot_id(key, SEED)),
        plot_id=plot_id(key, SEED),
        k=18,
        seed=SEED,
        node_key_id=key.key_id,
    )
    assert plot.path.name == f"plot-k18-{plot.plot_id.hex()}.plot"
    # Nothing but the plot is left: the temporary directory is gone.
    assert sorted(p.name for p in plot_dir.iterdir()) == [plot.path.name]
    prover = chiapos.DiskProver(str(plot.path))
    assert (bytes(prover.get_id()), prover.get_size()) == (plot.plot_id, 18)
    memo = bytes(prover.get_memo())
    assert memo == PLOT_MEMO_LABEL + key.key_id + SEED == plot_memo(key.key_id, SEED)
    assert len(memo) == PLOT_MEMO_SIZE == 87
    assert open_plot(plot.path, key) == plot


def test_plotting_leaves_the_open_file_limit_alone(plot: Plot) -> None:
    # chiapos sets RLIMIT_NOFILE to (600, 600), soft and hard, in the process that plots;
    # the plotter runs in a child process, so this one keeps its limit.
    assert plot.k == 18  # the module's plot is made by now
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == NOFILE_AT_IMPORT


def test_plotting_failure_is_typed_and_leaves_nothing(pki: Pki, tmp_path: Path) -> None:
    # 64 threads need more than a 10 MiB buffer: chiapos refuses before writing anything.
    # (Never test with a huge k: chiapos then starts plotting with whatever memory it has.)
    with pytest.raises(PlottingFailed, match="Please provide more memory"):
        create_plot(tmp_path, pki.node.key, 18, seed=SEED, buffer_mb=10, threads=64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"k": 17}, "k must be 18..50"),
        ({"k": 51}, "k must be 18..50"),
        ({"seed": b"short"}, "plot seed must be 32 bytes"),
        ({"buffer_mb": 9}, "buffer_mb"),
        ({"threads": 0}, "threads"),
    ],
)
def test_create_plot_arguments(
    pki: Pki, tmp_path: Path, arguments: dict[str, object], message: str
) -> None:
    values: dict[str, object] = {"k": 18, "seed": SEED}
    values.update(arguments)
    with pytest.raises(ValueError, match=message):
        create_plot(tmp_path, pki.node.key, **values)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_open_plot_with_another_key(pki: Pki, plot: Plot) -> None:
    with pytest.raises(PlotMismatch, match="bound to key"):
        open_plot(plot.path, pki.other.key)


def test_open_plot_whose_memo_names_another_key(pki: Pki, plot: Plot, tmp_path: Path) -> None:
    forged = plot_memo(pki.other.key.key_id, SEED)
    path = _patched_copy(plot, tmp_path, "forged.plot", plot_memo(plot.node_key_id, SEED), forged)
    # The memo now names the other node, but the plot id is still the first node's.
    with pytest.raises(PlotMismatch, match="not derived from the key"):
        open_plot(path, pki.other.key)
    with pytest.raises(PlotMismatch, match="bound to key"):
        open_plot(path, pki.node.key)


def test_open_plot_with_another_seed_in_the_memo(pki: Pki, plot: Plot, tmp_path: Path) -> None:
    old = plot_memo(plot.node_key_id, SEED)
    path = _patched_copy(plot, tmp_path, "seed.plot", old, plot_memo(plot.node_key_id, OTHER_SEED))
    with pytest.raises(PlotMismatch, match="not derived from the key"):
        open_plot(path, pki.node.key)


def test_open_plot_that_is_not_ours(pki: Pki, plot: Plot, tmp_path: Path) -> None:
    label = PLOT_MEMO_LABEL
    path = _patched_copy(plot, tmp_path, "chia.plot", label, b"X" * len(label))
    with pytest.raises(InvalidPlot, match="not a HyperMesh plot memo"):
        open_plot(path, pki.node.key)
    garbage = tmp_path / "garbage.plot"
    garbage.write_bytes(hashlib.sha256(b"garbage").digest() * 100)
    with pytest.raises(InvalidPlot, match="chiapos cannot read"):
        open_plot(garbage, pki.node.key)
    truncated = tmp_path / "truncated.plot"
    truncated.write_bytes(plot.path.read_bytes()[:1000])
    with pytest.raises(InvalidPlot, match="chiapos cannot read"):
        open_plot(truncated, pki.node.key)
    with pytest.raises(InvalidPlot, match="chiapos cannot read"):
        open_plot(tmp_path / "missing.plot", pki.node.key)


def test_prove_capacity_refuses_a_file_that_is_no_longer_the_plot(
    plot: Plot, tmp_path: Path
) -> None:
    other_id = hashlib.sha256(b"another id").digest()
    path = _patched_copy(plot, tmp_path, "swapped.plot", plot.plot_id, other_id)
    challenge, _, _ = _chiapos_proof(plot)
    with pytest.raises(InvalidPlot, match="no longer holds plot"):
        prove_capacity(replace(plot, path=path), challenge, 0)
    # A file whose header id was changed still answers with the original plot's proofs, and
    # those do not verify for the id it claims: the prover checks before answering.
    with pytest.raises(InvalidPlot, match="does not verify"):
        prove_capacity(replace(plot, path=path, plot_id=other_id), challenge, 0)


# --- plots: capacity proofs -----------------------------------------------------------------------


def test_chiapos_proof_accepted_for_our_plot_only(pki: Pki, plot: Plot) -> None:
    """The issue's acceptance: our verifier accepts a chiapos proof of our plot, and rejects
    it for another plot id (another seed, another node key) and for another challenge."""
    challenge, proof, quality = _chiapos_proof(plot)
    assert len(proof) == proof_size(18) == 144
    verify_capacity(plot.plot_id, 18, challenge, proof, quality, quality_bits=0)
    other_challenge = hashlib.sha256(challenge).digest()
    for wrong_id, wrong_challenge in (
        (plot_id(pki.node.key, OTHER_SEED), challenge),
        (plot_id(pki.other.key, SEED), challenge),
        (plot.plot_id, other_challenge),
    ):
        with pytest.raises(ProofRejected) as caught:
            verify_capacity(wrong_id, 18, wrong_challenge, proof, quality, quality_bits=0)
        assert (caught.value.kind, caught.value.reason) == (K.SPACE, R.VERIFICATION_FAILED)
        assert "chiapos rejects" in caught.value.detail


def test_prove_capacity_picks_the_best_quality(plot: Plot) -> None:
    prover = chiapos.DiskProver(str(plot.path))
    for attempt in range(200):
        challenge = hashlib.sha256(b"several" + attempt.to_bytes(4, "big")).digest()
        qualities = [bytes(q) for q in prover.get_qualities_for_challenge(challenge)]
        if len(qualities) >= 2:
            break
    else:
        raise AssertionError("no challenge with two proofs in 200")
    found = prove_capacity(plot, challenge, 0)
    assert found is not None
    proof, quality = found
    assert quality == min(qualities)
    verify_capacity(plot.plot_id, 18, challenge, proof, quality, quality_bits=0)
    # The target is met by the best proof only up to its own leading zero bits.
    zeros = _leading_zero_bits(quality)
    assert prove_capacity(plot, challenge, zeros) == found
    assert prove_capacity(plot, challenge, zeros + 1) is None


def test_prove_capacity_without_a_proof(plot: Plot) -> None:
    assert prove_capacity(plot, _challenge_without_proof(plot), 0) is None


def test_prove_capacity_arguments(plot: Plot) -> None:
    with pytest.raises(ValueError, match="challenge must be 32 bytes"):
        prove_capacity(plot, b"\x00" * 31, 0)
    with pytest.raises(ValueError, match="quality bits"):
        prove_capacity(plot, b"\x00" * 32, 257)


def test_quality_below_the_target_is_insufficient(plot: Plot) -> None:
    challenge, proof, quality = _chiapos_proof(plot)
    zeros = _leading_zero_bits(quality)
    verify_capacity(plot.plot_id, 18, challenge, proof, quality, quality_bits=zeros)
    with pytest.raises(ProofRejected) as caught:
        verify_capacity(plot.plot_id, 18, challenge, proof, quality, quality_bits=zeros + 1)
    assert (caught.value.kind, caught.value.reason) == (K.SPACE, R.INSUFFICIENT)


def test_quality_must_be_chiapos_quality(plot: Plot) -> None:
    challenge, proof, quality = _chiapos_proof(plot)
    claimed = bytes(32)  # the best possible quality, claimed for an ordinary proof
    with pytest.raises(ProofRejected) as caught:
        verify_capacity(plot.plot_id, 18, challenge, proof, claimed, quality_bits=0)
    assert (caught.value.kind, caught.value.reason) == (K.SPACE, R.VERIFICATION_FAILED)
    assert "quality string" in caught.value.detail
    assert quality != claimed


@pytest.mark.parametrize(
    ("quality", "bits", "meets"),
    [
        (bytes(32), 256, True),
        (b"\x00\x00\x80" + bytes(29), 16, True),
        (b"\x00\x00\x80" + bytes(29), 17, False),
        (b"\x01" + bytes(31), 7, True),
        (b"\x01" + bytes(31), 8, False),
        (b"\xff" * 32, 0, True),
        (b"\xff" * 32, 1, False),
    ],
)
def test_quality_meets(quality: bytes, bits: int, meets: bool) -> None:
    assert quality_meets(quality, bits) is meets


def test_quality_meets_arguments() -> None:
    with pytest.raises(ValueError, match="quality must be 32 bytes"):
        quality_meets(bytes(31), 0)
    with pytest.raises(ValueError, match="quality bits"):
        quality_meets(bytes(32), -1)


@settings(max_examples=60, deadline=None)
@given(
    plot_id_value=st.binary(max_size=40),
    challenge=st.binary(max_size=40),
    quality=st.binary(max_size=40),
    k=st.integers(min_value=0, max_value=255),
    proof=st.binary(max_size=600),
)
def test_hostile_capacity_inputs_never_crash(
    plot_id_value: bytes, challenge: bytes, quality: bytes, k: int, proof: bytes
) -> None:
    with pytest.raises(ProofRejected) as caught:
        verify_capacity(plot_id_value, k, challenge, proof, quality, quality_bits=0)
    error = caught.value
    assert error.kind is K.SPACE
    if any(len(v) != 32 for v in (plot_id_value, challenge, quality)):
        assert error.reason is R.MALFORMED
    elif not 18 <= k <= 50:
        assert error.reason is R.UNSUPPORTED_ALGORITHM
    elif len(proof) != 8 * k:
        assert error.reason is R.MALFORMED
    else:
        assert error.reason is R.VERIFICATION_FAILED


@settings(max_examples=40, deadline=None)
@given(k=st.integers(min_value=18, max_value=50), data=st.data())
def test_random_proofs_of_the_right_length_fail(k: int, data: st.DataObject) -> None:
    proof = data.draw(st.binary(min_size=8 * k, max_size=8 * k))
    ident, challenge, quality = (data.draw(st.binary(min_size=32, max_size=32)) for _ in "abc")
    with pytest.raises(ProofRejected) as caught:
        verify_capacity(ident, k, challenge, proof, quality, quality_bits=0)
    assert (caught.value.kind, caught.value.reason) == (K.SPACE, R.VERIFICATION_FAILED)


@pytest.mark.parametrize(("k", "size"), [(0, 0), (0, 144), (255, 2040), (17, 136), (51, 408)])
def test_k_out_of_range_is_refused_before_chiapos(k: int, size: int, plot: Plot) -> None:
    challenge, _, quality = _chiapos_proof(plot)
    with pytest.raises(ProofRejected) as caught:
        verify_capacity(plot.plot_id, k, challenge, bytes(size), quality, quality_bits=0)
    assert (caught.value.kind, caught.value.reason) == (K.SPACE, R.UNSUPPORTED_ALGORITHM)


def test_proof_for_another_k_fails(plot: Plot) -> None:
    challenge, proof, quality = _chiapos_proof(plot)
    with pytest.raises(ProofRejected) as caught:
        verify_capacity(plot.plot_id, 19, challenge, proof + bytes(8), quality, quality_bits=0)
    assert (caught.value.kind, caught.value.reason) == (K.SPACE, R.VERIFICATION_FAILED)


# --- space: round trip ----------------------------------------------------------------------------


def test_round_trip(pki: Pki, plot: Plot, asset: bytes, proof: common_pb2.SpaceProof) -> None:
    verdict = _verify(proof, pki, asset)
    assert verdict.storage_node_id == pki.node.key.key_id
    assert verdict.trust_level is TrustLevel.PARTIAL  # no SCTs: no transparency log here
    assert verdict.quality == proof.quality
    assert proof.challenge == space_challenge(BEACON, asset, VERSION, verdict.attempt)
    # The attempt is the first one for which the plot has a proof.
    for earlier in range(verdict.attempt):
        assert prove_capacity(plot, space_challenge(BEACON, asset, VERSION, earlier), 0) is None


def test_proof_layout(
    pki: Pki, plot: Plot, chunks: list[bytes], proof: common_pb2.SpaceProof
) -> None:
    tree = custody.CustodyTree.build(chunks)
    assert (proof.plot_id, proof.plot_seed, proof.k) == (plot.plot_id, SEED, 18)
    assert len(proof.pos_proof) == 144
    assert len(proof.quality) == 32
    assert (proof.custody_merkle_root, proof.custody_chunk_count) == (tree.root, len(chunks))
    assert list(proof.custody_proofs) == tree.prove_challenge(
        proof.challenge, PRESET.custody_challenges, chunks
    )
    assert proof.storage_node_id.id == pki.node.key.key_id
    assert (proof.storage_address, proof.storage_zone) == (ADDRESS, ZONE)
    assert list(proof.storage_node_certificate_chain.certificates) == [
        c.public_bytes(Encoding.DER) for c in pki.node.chain
    ]
    unsigned = _copy(proof)
    unsigned.node_signature = b""
    message = space_signing_bytes(proof)
    assert message == SPACE_SIGNING_LABEL + unsigned.SerializeToString(deterministic=True)
    assert SPACE_SIGNING_LABEL == b"hypermesh/space-proof/v1\x00"
    assert space_signing_bytes(unsigned) == message
    pki.node.key.verify(Signature.from_bytes(proof.node_signature), message)


def test_proof_for_one_asset_fails_for_another(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof
) -> None:
    other_asset = asset_id(pki.node.key.key_id, "videos")
    error = _rejected(proof, pki, other_asset)
    assert (error.kind, error.reason) == (K.SPACE, R.CHALLENGE_MISMATCH)


def test_proof_for_version_n_fails_for_n_plus_one(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof
) -> None:
    error = _rejected(proof, pki, asset, version=VERSION + 1)
    assert (error.kind, error.reason) == (K.SPACE, R.CHALLENGE_MISMATCH)


def test_proof_for_another_beacon_fails(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof
) -> None:
    error = _rejected(proof, pki, asset, beacon=hashlib.sha256(BEACON).digest())
    assert (error.kind, error.reason) == (K.SPACE, R.CHALLENGE_MISMATCH)


def test_challenge_beyond_the_attempts_fails(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof
) -> None:
    late = _copy(proof)
    late.challenge = space_challenge(BEACON, asset, VERSION, PRESET.space_attempts)
    error = _rejected(_resigned(late, pki.node.sign), pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, R.CHALLENGE_MISMATCH)
    attempt = _verify(proof, pki, asset).attempt
    if attempt:
        error = _rejected(proof, pki, asset, preset=replace(PRESET, space_attempts=attempt))
        assert (error.kind, error.reason) == (K.SPACE, R.CHALLENGE_MISMATCH)


def test_quality_target_of_the_preset(pki: Pki, asset: bytes, proof: common_pb2.SpaceProof) -> None:
    zeros = _leading_zero_bits(proof.quality)
    stricter = replace(PRESET, space_quality_bits=zeros + 1)
    error = _rejected(proof, pki, asset, preset=stricter)
    assert (error.kind, error.reason) == (K.SPACE, R.INSUFFICIENT)


def test_no_space_proof(pki: Pki, plot: Plot, chunks: list[bytes], asset: bytes) -> None:
    hopeless = replace(PRESET, space_quality_bits=64, space_attempts=2)
    with pytest.raises(NoSpaceProof) as caught:
        prove_space(
            plot=plot,
            chunks=chunks,
            beacon=BEACON,
            asset=asset,
            version=VERSION,
            preset=hopeless,
            chain=pki.node.chain,
            sign=pki.node.sign,
            address=ADDRESS,
            zone=ZONE,
        )
    assert (caught.value.attempts, caught.value.quality_bits) == (2, 64)
    assert isinstance(caught.value, TrustChainError)


def test_prove_space_refuses_a_plot_of_another_node(
    pki: Pki, plot: Plot, chunks: list[bytes], asset: bytes
) -> None:
    with pytest.raises(PlotMismatch):
        _prove(pki.other, plot, chunks, asset)


def test_prove_space_refuses_a_plot_of_another_size(
    pki: Pki, plot: Plot, chunks: list[bytes], asset: bytes
) -> None:
    with pytest.raises(ValueError, match="k=18"):
        prove_space(
            plot=plot,
            chunks=chunks,
            beacon=BEACON,
            asset=asset,
            version=VERSION,
            preset=replace(PRESET, plot_k=19),
            chain=pki.node.chain,
            sign=pki.node.sign,
            address=ADDRESS,
            zone=ZONE,
        )


# --- space: identities, chains, signatures -------------------------------------------------------


def test_signed_with_a_key_other_than_the_certificate(
    pki: Pki, plot: Plot, chunks: list[bytes], asset: bytes
) -> None:
    forged = _prove(pki.node, plot, chunks, asset, sign=pki.other.sign)
    error = _rejected(forged, pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, R.INVALID_SIGNATURE)


def test_another_node_cannot_claim_the_plot(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof
) -> None:
    # The other node takes the proof over: its own chain, id and signature, same plot.
    claimed = _copy(proof)
    claimed.storage_node_certificate_chain.certificates[:] = [
        c.public_bytes(Encoding.DER) for c in pki.other.chain
    ]
    claimed.storage_node_id.id = pki.other.key.key_id
    error = _rejected(_resigned(claimed, pki.other.sign), pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, R.IDENTITY_MISMATCH)
    assert "plot id" in error.detail
    # ... and cannot re-derive the plot id for its key either: chiapos then rejects.
    claimed.plot_id = plot_id(pki.other.key, proof.plot_seed)
    error = _rejected(_resigned(claimed, pki.other.sign), pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, R.VERIFICATION_FAILED)


def test_storage_node_id_of_another_node(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof
) -> None:
    changed = _copy(proof)
    changed.storage_node_id.id = pki.other.key.key_id
    error = _rejected(_resigned(changed, pki.node.sign), pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, R.IDENTITY_MISMATCH)


def test_chain_of_another_node(pki: Pki, asset: bytes, proof: common_pb2.SpaceProof) -> None:
    changed = _copy(proof)
    changed.storage_node_certificate_chain.certificates[:] = [
        c.public_bytes(Encoding.DER) for c in pki.other.chain
    ]
    error = _rejected(changed, pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, R.IDENTITY_MISMATCH)


def test_revoked_node(pki: Pki, chunks: list[bytes], asset: bytes) -> None:
    error = _rejected(_signed_by(pki.revoked, chunks, asset), pki, asset)
    assert (error.kind, error.reason) == (K.CERTIFICATE_CHAIN, R.REVOKED)


def _signed_by(node: Node, chunks: list[bytes], asset: bytes) -> common_pb2.SpaceProof:
    """A well-shaped SpaceProof carrying ``node``'s chain, id and signature, for checks that
    come before the capacity and custody parts (which are placeholders here)."""
    proof = common_pb2.SpaceProof(
        pos_proof=bytes(144),
        plot_id=plot_id(node.key, SEED),
        k=18,
        challenge=space_challenge(BEACON, asset, VERSION, 0),
        quality=bytes(32),
        custody_merkle_root=custody.CustodyTree.build(chunks).root,
        custody_proofs=[common_pb2.ChunkInclusionProof()],
        storage_node_id=common_pb2.PeerId(id=node.key.key_id),
        storage_address=ADDRESS,
        storage_zone=ZONE,
        storage_node_certificate_chain=common_pb2.CertificateChain(
            certificates=[c.public_bytes(Encoding.DER) for c in node.chain]
        ),
        plot_seed=SEED,
        custody_chunk_count=len(chunks),
    )
    return _resigned(proof, node.sign)


def test_untrusted_root(pki: Pki, asset: bytes, proof: common_pb2.SpaceProof) -> None:
    error = _rejected(proof, pki, asset, trust_store=pki.foreign_store)
    assert (error.kind, error.reason) == (K.CERTIFICATE_CHAIN, R.UNTRUSTED_ROOT)


def test_expired_chain(pki: Pki, asset: bytes, proof: common_pb2.SpaceProof) -> None:
    later = datetime.now(UTC) + timedelta(days=3650)
    error = _rejected(proof, pki, asset, at=later)
    assert (error.kind, error.reason) == (K.CERTIFICATE_CHAIN, R.EXPIRED)


def test_trust_level_below_the_preset_minimum(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof
) -> None:
    strict = replace(PRESET, min_trust_level=TrustLevel.FULL)
    error = _rejected(proof, pki, asset, preset=strict)
    assert (error.kind, error.reason) == (K.CERTIFICATE_CHAIN, R.UNTRUSTED_ROOT)
    assert "PARTIAL" in error.detail


def test_chain_without_its_intermediate(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof
) -> None:
    changed = _copy(proof)
    del changed.storage_node_certificate_chain.certificates[1:]
    # The store knows the intermediate: the leaf alone validates, once the node signs it.
    error = _rejected(changed, pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, R.INVALID_SIGNATURE)
    assert _verify(_resigned(changed, pki.node.sign), pki, asset).storage_node_id == (
        pki.node.key.key_id
    )
    # Without the intermediate in the store, the leaf alone leads nowhere.
    error = _rejected(changed, pki, asset, trust_store=pki.foreign_store)
    assert (error.kind, error.reason) == (K.CERTIFICATE_CHAIN, R.UNTRUSTED_ROOT)


# --- space: missing and malformed parts -----------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "storage_node_certificate_chain",
        "node_signature",
        "pos_proof",
        "custody_proofs",
        "storage_node_id",
        "storage_address",
    ],
)
def test_missing_part(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof, field: RequiredField
) -> None:
    changed = _copy(proof)
    changed.ClearField(field)
    error = _rejected(changed, pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, R.MISSING)


@settings(max_examples=60, deadline=None)
@given(
    field=st.sampled_from(
        ["storage_node_id", "plot_id", "plot_seed", "challenge", "quality", "custody_merkle_root"]
    ),
    size=st.integers(min_value=1, max_value=100).filter(lambda n: n != 32),
)
def test_wrong_sizes(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof, field: str, size: int
) -> None:
    changed = _copy(proof)
    if field == "storage_node_id":
        changed.storage_node_id.id = bytes(size)
    else:
        setattr(changed, field, bytes(size))
    error = _rejected(changed, pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, R.MALFORMED)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(min_value=1, max_value=1000).filter(lambda n: n != 144))
def test_wrong_length_pos_proof(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof, size: int
) -> None:
    changed = _copy(proof)
    changed.pos_proof = bytes(size)
    error = _rejected(changed, pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, R.MALFORMED)


@pytest.mark.parametrize("k", [0, 17, 19, 50, 51, 255, 2**32 - 1])
def test_k_other_than_the_preset(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof, k: int
) -> None:
    changed = _copy(proof)
    changed.k = k
    # With a proof of the size k implies, the signed proof fails on k itself.
    changed.pos_proof = bytes(8 * k) if k <= 255 else b""
    error = _rejected(_resigned(changed, pki.node.sign), pki, asset)
    expected = R.UNSUPPORTED_ALGORITHM if 0 < k <= 255 else R.MISSING
    assert (error.kind, error.reason) == (K.SPACE, expected)


@pytest.mark.parametrize(
    ("ip", "port"), [(b"", 443), (bytes(5), 443), (bytes(15), 443), (bytes(4), 65536)]
)
def test_undiallable_address(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof, ip: bytes, port: int
) -> None:
    changed = _copy(proof)
    changed.storage_address.ip = ip
    changed.storage_address.port = port
    error = _rejected(changed, pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, R.MALFORMED)


def test_chain_bounds(pki: Pki, asset: bytes, proof: common_pb2.SpaceProof) -> None:
    leaf = proof.storage_node_certificate_chain.certificates[0]
    for certificates in ([leaf] * 17, [leaf + bytes(64 * 1024)], [b"not DER"]):
        changed = _copy(proof)
        changed.storage_node_certificate_chain.certificates[:] = certificates
        error = _rejected(changed, pki, asset)
        assert (error.kind, error.reason) == (K.SPACE, R.MALFORMED)


def test_signature_that_does_not_decode(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof
) -> None:
    for signature, reason in (
        (b"\x01", R.MALFORMED),
        (bytes(4097), R.MALFORMED),
        (SigningKey.generate(ED25519).sign(b"x").to_bytes(), R.UNSUPPORTED_ALGORITHM),
    ):
        changed = _copy(proof)
        changed.node_signature = signature
        error = _rejected(changed, pki, asset)
        assert (error.kind, error.reason) == (K.SPACE, reason)


def test_caller_errors(pki: Pki, asset: bytes, proof: common_pb2.SpaceProof) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        _verify(proof, pki, asset, beacon=BEACON[:31])
    with pytest.raises(ValueError, match="64 unsigned bits"):
        _verify(proof, pki, asset, version=-1)


# --- space: each field changed --------------------------------------------------------------------


def _cert_outcome(ders: list[bytes], pki: Pki) -> tuple[ProofKind, ProofReason]:
    """How verify_space must reject a changed chain: as validate() rejects it; if validate()
    accepts it (a changed intermediate the trust store has a good copy of), the signature,
    which covers the chain as sent, fails."""
    try:
        chain = [x509.load_der_x509_certificate(d) for d in ders]
    except PARSE_ERRORS:
        return K.SPACE, R.MALFORMED
    try:
        validate(chain, pki.store, clock_skew=PRESET.clock_skew)
    except CertificateRejected as exc:
        return K.CERTIFICATE_CHAIN, R(exc.reason.proto_code)
    return K.SPACE, R.INVALID_SIGNATURE


def _signature_outcome(signature: bytes) -> ProofReason:
    try:
        decoded = Signature.from_bytes(signature)
    except MalformedData:
        return R.MALFORMED
    except UnknownAlgorithm:
        return R.UNSUPPORTED_ALGORITHM
    if decoded.algorithm is not SignatureAlgorithm.HYBRID_ED25519_FALCON_1024:
        return R.UNSUPPORTED_ALGORITHM
    return R.INVALID_SIGNATURE


# Field -> the reason when one byte of it changes and the node signs the result again.
SIGNED_BYTE_FIELDS = {
    "pos_proof": R.VERIFICATION_FAILED,
    "plot_id": R.IDENTITY_MISMATCH,
    "plot_seed": R.IDENTITY_MISMATCH,
    "challenge": R.CHALLENGE_MISMATCH,
    "quality": R.VERIFICATION_FAILED,
    "custody_merkle_root": R.VERIFICATION_FAILED,
}
CUSTODY_PARTS = {
    "chunk": R.VERIFICATION_FAILED,
    "chunk_digest": R.VERIFICATION_FAILED,
    "sibling_hashes": R.VERIFICATION_FAILED,
}
FIELD_EXAMPLES = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@FIELD_EXAMPLES
@given(
    field=st.sampled_from(sorted(SIGNED_BYTE_FIELDS)),
    position=st.integers(min_value=0, max_value=1000),
    mask=st.integers(min_value=1, max_value=255),
)
def test_changed_byte_field(
    pki: Pki,
    asset: bytes,
    proof: common_pb2.SpaceProof,
    field: str,
    position: int,
    mask: int,
) -> None:
    changed = _copy(proof)
    setattr(changed, field, _flip(getattr(proof, field), position, mask))
    # Unsigned, any change breaks the node's signature ...
    error = _rejected(changed, pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, R.INVALID_SIGNATURE)
    # ... and signed again by the node itself, the check of that field fails.
    error = _rejected(_resigned(changed, pki.node.sign), pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, SIGNED_BYTE_FIELDS[field])


@FIELD_EXAMPLES
@given(
    part=st.sampled_from(sorted(CUSTODY_PARTS)),
    which=st.integers(min_value=0, max_value=100),
    position=st.integers(min_value=0, max_value=70_000),
    mask=st.integers(min_value=1, max_value=255),
)
def test_changed_custody_proof(
    pki: Pki,
    asset: bytes,
    proof: common_pb2.SpaceProof,
    part: str,
    which: int,
    position: int,
    mask: int,
) -> None:
    changed = _copy(proof)
    opening = changed.custody_proofs[which % len(changed.custody_proofs)]
    if part == "sibling_hashes":
        siblings = list(opening.sibling_hashes)
        assert siblings  # a tree of several chunks: every opening has a path
        index = position % len(siblings)
        siblings[index] = _flip(siblings[index], position, mask)
        opening.sibling_hashes[:] = siblings
    else:
        setattr(opening, part, _flip(getattr(opening, part), position, mask))
    error = _rejected(changed, pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, R.INVALID_SIGNATURE)
    error = _rejected(_resigned(changed, pki.node.sign), pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, CUSTODY_PARTS[part])


@FIELD_EXAMPLES
@given(which=st.integers(min_value=0, max_value=100), delta=st.integers(1, 1000))
def test_changed_custody_index_or_count(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof, which: int, delta: int
) -> None:
    changed = _copy(proof)
    opening = changed.custody_proofs[which % len(changed.custody_proofs)]
    opening.chunk_index = (opening.chunk_index + delta) % proof.custody_chunk_count
    if opening.chunk_index != proof.custody_proofs[which % len(proof.custody_proofs)].chunk_index:
        error = _rejected(_resigned(changed, pki.node.sign), pki, asset)
        assert (error.kind, error.reason) == (K.SPACE, R.CHALLENGE_MISMATCH)
    counted = _copy(proof)
    counted.custody_chunk_count += delta
    error = _rejected(_resigned(counted, pki.node.sign), pki, asset)
    assert error.kind is K.SPACE
    # Another tree size selects other chunks, or (if by chance the same ones) other paths.
    assert error.reason in (R.CHALLENGE_MISMATCH, R.VERIFICATION_FAILED)


@FIELD_EXAMPLES
@given(
    which=st.integers(min_value=0, max_value=1),
    position=st.integers(min_value=0, max_value=20_000),
    mask=st.integers(min_value=1, max_value=255),
)
def test_changed_certificate(
    pki: Pki,
    asset: bytes,
    proof: common_pb2.SpaceProof,
    which: int,
    position: int,
    mask: int,
) -> None:
    changed = _copy(proof)
    ders = list(proof.storage_node_certificate_chain.certificates)
    ders[which] = _flip(ders[which], position, mask)
    changed.storage_node_certificate_chain.certificates[:] = ders
    error = _rejected(changed, pki, asset)
    assert (error.kind, error.reason) == _cert_outcome(ders, pki)


@FIELD_EXAMPLES
@given(
    position=st.integers(min_value=0, max_value=2000),
    mask=st.integers(min_value=1, max_value=255),
)
def test_changed_signature(
    pki: Pki, asset: bytes, proof: common_pb2.SpaceProof, position: int, mask: int
) -> None:
    changed = _copy(proof)
    changed.node_signature = _flip(proof.node_signature, position, mask)
    error = _rejected(changed, pki, asset)
    assert (error.kind, error.reason) == (K.SPACE, _signature_outcome(changed.node_signature))


@FIELD_EXAMPLES
@given(
    ip=st.sampled_from([bytes([192, 0, 2, 1]), bytes(16), b"\xfe\x80" + bytes(14)]),
    port=st.integers(min_value=0, max_value=65535),
    zone=st.text(max_size=30),
)
def test_changed_location(
    pki: Pki,
    asset: bytes,
    proof: common_pb2.SpaceProof,
    ip: bytes,
    port: int,
    zone: str,
) -> None:
    changed = _copy(proof)
    changed.storage_address.ip = ip
    changed.storage_address.port = port
    changed.storage_zone = zone
    if (ip, port, zone) != (ADDRESS.ip, ADDRESS.port, ZONE):
        error = _rejected(changed, pki, asset)
        assert (error.kind, error.reason) == (K.SPACE, R.INVALID_SIGNATURE)
    # Where the node says it is, signed by the node, is its own statement: accepted.
    verdict = _verify(_resigned(changed, pki.node.sign), pki, asset)
    assert verdict.storage_node_id == pki.node.key.key_id


@settings(max_examples=60, deadline=None)
@given(
    data=st.fixed_dictionaries(
        {
            "pos_proof": st.binary(max_size=300),
            "plot_id": st.binary(max_size=40),
            "k": st.integers(min_value=0, max_value=2**32 - 1),
            "challenge": st.binary(max_size=40),
            "quality": st.binary(max_size=40),
            "custody_merkle_root": st.binary(max_size=40),
            "storage_zone": st.text(max_size=10),
            "node_signature": st.binary(max_size=100),
            "plot_seed": st.binary(max_size=40),
            "custody_chunk_count": st.integers(min_value=0, max_value=2**64 - 1),
        }
    ),
    node_id=st.binary(max_size=40),
    ip=st.binary(max_size=20),
    certificates=st.lists(st.binary(max_size=200), max_size=3),
    openings=st.integers(min_value=0, max_value=3),
)
def test_hostile_space_proofs_never_crash(
    pki: Pki,
    asset: bytes,
    data: dict[str, object],
    node_id: bytes,
    ip: bytes,
    certificates: list[bytes],
    openings: int,
) -> None:
    hostile = common_pb2.SpaceProof(
        storage_node_id=common_pb2.PeerId(id=node_id),
        storage_address=common_pb2.NetworkAddress(ip=ip, port=1),
        storage_node_certificate_chain=common_pb2.CertificateChain(certificates=certificates),
        custody_proofs=[common_pb2.ChunkInclusionProof(chunk=b"x")] * openings,
        **data,  # type: ignore[arg-type]
    )
    error = _rejected(hostile, pki, asset)
    assert error.kind in (K.SPACE, K.CERTIFICATE_CHAIN)
