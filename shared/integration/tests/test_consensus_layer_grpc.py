"""``ConsensusLayer.ValidateFourProofs`` over a real gRPC server, for bundles the CLI made.

A node proves the way an operator would: the installed ``trustchain`` command, in its own
process, with a key-file home (``trustchain proofs prove``). The validator is another party in
this process: it opens the same home's proving network read-side (its trust store and stake
registry) and serves ``ConsensusLayer`` on loopback; a client sends the bundle file's bytes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hypermesh_interfaces.v1 import common_pb2, consensus_pb2, consensus_pb2_grpc
from trustchain.consensus.proofs.bundle import decode_bundle
from trustchain.consensus.proofs.local_network import LocalNetwork
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING
from trustchain.consensus_layer import ConsensusLayerServicer, no_recorded_states, serve
from trustchain.crypto.keystore import KeyStore

CONTENT = bytes(range(256)) * 600


def trustchain(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trustchain.cli", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def proved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A home whose node proved versions 0 and 1 of ``photos`` with the CLI."""
    root = tmp_path_factory.mktemp("consensus-grpc")
    home, data = root / "home", root / "photos.bin"
    data.write_bytes(CONTENT)
    v0, v1 = root / "v0.bundle", root / "v1.bundle"
    common = ("--data", str(data), "--preset", "localhost_testing")
    done = trustchain(home, "proofs", "prove", "photos", *common, "--out", str(v0))
    assert done.returncode == 0, done.stderr
    done = trustchain(
        home, "proofs", "prove", "photos", *common, "--previous", str(v0), "--out", str(v1)
    )
    assert done.returncode == 0, done.stderr
    assert "version: 1" in done.stdout
    return home, v0, v1


@pytest.fixture(scope="module")
def stub(proved: tuple[Path, Path, Path]) -> Iterator[consensus_pb2_grpc.ConsensusLayerStub]:
    home = proved[0]
    with KeyStore.open(home) as keys, LocalNetwork.open(home / "proofs", keys) as network:
        context = network.context(LOCALHOST_TESTING)
        server, port = serve(ConsensusLayerServicer(lambda: context, no_recorded_states))
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield consensus_pb2_grpc.ConsensusLayerStub(channel)
        finally:
            server.stop(grace=None)


def validate(
    stub: consensus_pb2_grpc.ConsensusLayerStub, bundle: common_pb2.FourProof
) -> common_pb2.ValidationResult:
    answer = stub.ValidateFourProofs(consensus_pb2.ValidateFourProofsRequest(proofs=bundle))
    result: common_pb2.ValidationResult = answer.result
    return result


def test_a_cli_bundle_validates_over_grpc(
    stub: consensus_pb2_grpc.ConsensusLayerStub, proved: tuple[Path, Path, Path]
) -> None:
    result = validate(stub, decode_bundle(proved[1].read_bytes()))
    assert result.verdict == common_pb2.VERDICT_VALID
    assert list(result.rejections) == []


def test_version_one_needs_a_recorded_state(
    stub: consensus_pb2_grpc.ConsensusLayerStub, proved: tuple[Path, Path, Path]
) -> None:
    # Nothing is recorded before the ledger: version 1 does not follow any recorded state.
    result = validate(stub, decode_bundle(proved[2].read_bytes()))
    assert result.verdict == common_pb2.VERDICT_REJECTED
    assert (common_pb2.PROOF_KIND_COMBINED, common_pb2.REJECTION_REASON_CHALLENGE_MISMATCH) in {
        (r.proof_kind, r.reason) for r in result.rejections
    }


def test_a_tampered_bundle_is_rejected_and_the_server_keeps_serving(
    stub: consensus_pb2_grpc.ConsensusLayerStub, proved: tuple[Path, Path, Path]
) -> None:
    bundle = decode_bundle(proved[1].read_bytes())
    bundle.time.vdf.iterations += 1
    result = validate(stub, bundle)
    assert result.verdict == common_pb2.VERDICT_REJECTED
    assert (common_pb2.PROOF_KIND_TIME, common_pb2.REJECTION_REASON_VERIFICATION_FAILED) in {
        (r.proof_kind, r.reason) for r in result.rejections
    }
    with pytest.raises(grpc.RpcError) as info:
        stub.ValidateFourProofs(consensus_pb2.ValidateFourProofsRequest())
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert validate(stub, decode_bundle(proved[1].read_bytes())).verdict == (
        common_pb2.VERDICT_VALID
    )
