"""Tests of the ``trustchain proofs`` command line: prove, verify and stake, through
:func:`trustchain.cli.main` in-process.

One home (a key-file protected store, so no Argon2 cost per command) holds the proving network
for most tests: versions 0 and 1 of asset ``doc`` and version 0 of asset ``other``, made by the
commands themselves. A second home, protected by a passphrase file, is where the stake balance
is changed. Nothing is mocked: the commands run chiapos (k=18 plots), chiavdf, Falcon and
SQLite. Only the ``localhost_testing`` preset proves; ``production`` is only ever refused.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypermesh_interfaces.v1 import common_pb2
from trustchain import cli
from trustchain.cli_common import ENV_HOME, ENV_PASSPHRASE
from trustchain.consensus.proofs import challenges, space
from trustchain.consensus.proofs.bundle import MAX_BUNDLE_BYTES, decode_bundle, state_hash
from trustchain.consensus.proofs.commands import MAX_ASSET_BYTES
from trustchain.consensus.proofs.local_network import DEFAULT_INITIAL_STAKE
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING, PRODUCTION
from trustchain.crypto.keystore import KeyStore

PRESET = LOCALHOST_TESTING.name
DATA = random.Random(5).randbytes(40_000)


@dataclass(frozen=True)
class Run:
    status: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def fields(self) -> dict[str, str]:
        """The ``key: value`` lines of standard output."""
        return dict(line.split(": ", 1) for line in self.lines if ": " in line)


def trustchain(home: Path, *argv: str | Path) -> Run:
    """Run ``trustchain --home HOME ARGV...`` in-process, capturing both output streams."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = cli.main(["--home", str(home), *(str(a) for a in argv)])
    return Run(status, out.getvalue(), err.getvalue())


def prove(
    home: Path, name: str, data: Path, out: Path, *extra: str | Path, preset: str = PRESET
) -> Run:
    """``trustchain --home HOME proofs prove NAME --data DATA --preset P --out OUT EXTRA...``."""
    return trustchain(
        home, "proofs", "prove", name, "--data", data, "--preset", preset, "--out", out, *extra
    )


def one_line_failure(run: Run) -> str:
    """The failure's single stderr line (checked: exit 1, nothing on stdout, one line)."""
    assert run.status == 1, run
    assert run.out == ""
    assert run.err.count("\n") == 1, run.err
    assert run.err.endswith("\n")
    assert run.err.startswith("trustchain: ")
    assert "Traceback" not in run.err
    return run.err.rstrip("\n")


def failure_after_progress(run: Run) -> str:
    """The failure's stderr line after the progress lines of work already done."""
    assert run.status == 1, run
    assert run.out == ""
    assert "Traceback" not in run.err
    lines = run.err.splitlines()
    assert all(line.startswith("trustchain: ") for line in lines), run.err
    return lines[-1]


@dataclass(frozen=True)
class Network:
    home: Path
    files: Path
    data: Path
    v0: Path
    v1: Path
    other: Path
    prove_v0: Run
    prove_v1: Run


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_HOME, raising=False)
    monkeypatch.delenv(ENV_PASSPHRASE, raising=False)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with pytest.MonkeyPatch.context() as env:
        env.delenv(ENV_HOME, raising=False)
        env.delenv(ENV_PASSPHRASE, raising=False)
        root = tmp_path_factory.mktemp("proofs-cli")
        home, files = root / "home", root / "files"
        files.mkdir()
        data = files / "doc.bin"
        data.write_bytes(DATA)
        v0, v1, other = files / "v0.bundle", files / "v1.bundle", files / "other.bundle"
        prove_v0 = prove(home, "doc", data, v0)
        assert prove_v0.status == 0, prove_v0
        prove_v1 = prove(home, "doc", data, v1, "--previous", v0)
        assert prove_v1.status == 0, prove_v1
        made = prove(home, "other", data, other)
        assert made.status == 0, made
        yield Network(home, files, data, v0, v1, other, prove_v0, prove_v1)


def verify(network: Network, *argv: str | Path) -> Run:
    return trustchain(network.home, "proofs", "verify", *argv)


# --- prove and verify -----------------------------------------------------------------------------


def test_prove_prints_the_ids_and_writes_the_canonical_bundle(network: Network) -> None:
    run = network.prove_v0
    encoded = network.v0.read_bytes()
    bundle = decode_bundle(encoded)
    assert encoded == bundle.SerializeToString(deterministic=True)
    assert run.lines == [
        f"asset id: {bundle.stake.asset_id.id.hex()}",
        "version: 0",
        f"state hash: {state_hash(bundle).hex()}",
    ]
    # The asset id is the node's (the stake owner's) asset "doc".
    owner = trustchain(network.home, "proofs", "stake").fields()["owner"]
    assert run.fields()["asset id"] == challenges.asset_id(bytes.fromhex(owner), "doc").hex()
    # Progress went to stderr: a fresh home made its store, its plot and the bundle.
    assert "created a key store" in run.err
    assert f"making the node's k={LOCALHOST_TESTING.plot_k} plot" in run.err
    assert f"proving version 0 of doc with the {PRESET} preset" in run.err
    assert f"wrote {network.v0} ({len(encoded)} bytes)" in run.err
    # Atomic writes left no temporary file behind.
    assert sorted(p.name for p in network.files.iterdir()) == [
        "doc.bin",
        "other.bundle",
        "v0.bundle",
        "v1.bundle",
    ]


def test_verify_accepts_a_fresh_bundle(network: Network) -> None:
    run = verify(network, network.v0)
    assert run.status == 0, run
    assert run.lines == [
        *network.prove_v0.lines,
        f"preset: {PRESET}",
        "space: valid",
        "stake: valid",
        "work: valid",
        "time: valid",
        "valid",
    ]
    assert run.err == ""


def test_version_chain(network: Network) -> None:
    v0, v1 = decode_bundle(network.v0.read_bytes()), decode_bundle(network.v1.read_bytes())
    assert network.prove_v1.fields()["version"] == "1"
    assert "proving version 1 of doc" in network.prove_v1.err
    assert v1.stake.asset_id.id == v0.stake.asset_id.id
    run = verify(network, network.v1, "--previous", network.v0)
    assert run.status == 0, run
    assert run.lines[-5:] == ["space: valid", "stake: valid", "work: valid", "time: valid", "valid"]
    assert run.fields()["version"] == "1"


def test_version_1_without_its_previous_is_rejected(network: Network) -> None:
    run = verify(network, network.v1)
    assert run.status == 1
    assert (
        "combined: rejected (CHALLENGE_MISMATCH): version 1 does not follow the recorded state "
        "(expected version 0)"
    ) in run.lines
    # Without the previous state hash, the VDF answers the wrong challenge.
    assert "time: rejected (CHALLENGE_MISMATCH): VDF is over another challenge" in run.lines
    assert run.lines[-1].startswith("rejected: ")
    failing = run.lines[-1].removeprefix("rejected: ").split(", ")
    assert {"time", "combined"} <= set(failing)


def test_version_0_cannot_follow_itself(network: Network) -> None:
    run = verify(network, network.v0, "--previous", network.v0)
    assert run.status == 1
    assert (
        "combined: rejected (CHALLENGE_MISMATCH): version 0 does not follow the recorded state "
        "(expected version 1)"
    ) in run.lines
    assert "combined" in run.lines[-1].removeprefix("rejected: ").split(", ")


def test_the_verifier_chooses_the_thresholds(network: Network) -> None:
    """A bundle proven for localhost_testing is rejected under production's thresholds (the
    check plots nothing)."""
    run = verify(network, network.v0, "--preset", PRODUCTION.name)
    assert run.status == 1
    assert f"preset: {PRODUCTION.name}" in run.lines
    failing = run.lines[-1].removeprefix("rejected: ").split(", ")
    assert {"space", "stake", "work", "time"} <= set(failing)
    assert any(
        line.startswith("stake: rejected (INSUFFICIENT): stake 1 is below the production minimum")
        for line in run.lines
    )
    plots = network.home / "proofs" / "plots"
    assert not list(plots.glob(f"plot-k{PRODUCTION.plot_k}-*"))
    help_run = trustchain(network.home, "proofs", "verify", "--help")
    assert help_run.status == 0
    assert "the verifier chooses them, the bundle does not" in " ".join(help_run.out.split())


def test_previous_bundle_of_another_asset(network: Network) -> None:
    out = network.files / "never.bundle"
    run = prove(network.home, "doc", network.data, out, "--previous", network.other)
    other_asset = decode_bundle(network.other.read_bytes()).stake.asset_id.id.hex()
    assert one_line_failure(run).startswith(
        f"trustchain: previous bundle {network.other} is of asset {other_asset}, not of doc ("
    )
    assert not out.exists()
    run = verify(network, network.v1, "--previous", network.other)
    assert one_line_failure(run).startswith(
        f"trustchain: previous bundle {network.other} is of asset {other_asset}, not of "
    )


def _flip(value: bytes, index: int) -> bytes:
    changed = bytearray(value)
    changed[index] ^= 0x01
    return bytes(changed)


def _next_nonce(bundle: common_pb2.FourProof) -> None:
    bundle.work.nonce += 1


def _flip_vdf_proof(bundle: common_pb2.FourProof) -> None:
    bundle.time.vdf.proof = _flip(bundle.time.vdf.proof, 7)


def _flip_poh_end(bundle: common_pb2.FourProof) -> None:
    bundle.time.poh.end_hash = _flip(bundle.time.poh.end_hash, 0)


def _raise_stake(bundle: common_pb2.FourProof) -> None:
    bundle.stake.stake_amount += 1


def _flip_custody_chunk(bundle: common_pb2.FourProof) -> None:
    opened = bundle.space.custody_proofs[0]
    opened.chunk = _flip(opened.chunk, len(opened.chunk) // 2)


def _drop_work(bundle: common_pb2.FourProof) -> None:
    bundle.ClearField("work")


@pytest.mark.parametrize(
    ("tamper", "part", "verdict"),
    [
        (_next_nonce, "work", "work: rejected (VERIFICATION_FAILED): work hash has "),
        (_flip_vdf_proof, "time", "time: rejected (VERIFICATION_FAILED): VDF proof "),
        (
            _flip_poh_end,
            "time",
            "time: rejected (VERIFICATION_FAILED): PoH end hash does not match the chain",
        ),
        (_raise_stake, "stake", "stake: rejected (INVALID_SIGNATURE): owner signature: "),
        (_flip_custody_chunk, "space", "space: rejected (INVALID_SIGNATURE): node signature"),
        (_drop_work, "work", "work: rejected (MISSING): the proof is absent"),
    ],
    ids=["work-nonce", "vdf-proof", "poh-end", "stake-amount", "custody-chunk", "no-work"],
)
def test_a_tampered_proof_is_named(
    network: Network,
    tmp_path: Path,
    tamper: Callable[[common_pb2.FourProof], None],
    part: str,
    verdict: str,
) -> None:
    bundle = decode_bundle(network.v0.read_bytes())
    tamper(bundle)
    changed = tmp_path / "tampered.bundle"
    changed.write_bytes(bundle.SerializeToString(deterministic=True))
    assert changed.read_bytes() != network.v0.read_bytes()
    run = verify(network, changed)
    assert run.status == 1
    assert any(line.startswith(verdict) for line in run.lines), run.out
    assert part in run.lines[-1].removeprefix("rejected: ").split(", ")


def test_custody_without_the_data_is_named_even_when_re_signed(
    network: Network, tmp_path: Path
) -> None:
    """A storage node that kept digests instead of the data re-signs its space proof with its
    own key: the signature holds, the custody check does not."""
    bundle = decode_bundle(network.v0.read_bytes())
    _flip_custody_chunk(bundle)
    with KeyStore.open(network.home) as keys:  # the home's key-file store: unlocked
        signed = keys.sign("proofs/node", space.space_signing_bytes(bundle.space))
    bundle.space.node_signature = signed.signature.to_bytes()
    changed = tmp_path / "re-signed.bundle"
    changed.write_bytes(bundle.SerializeToString(deterministic=True))
    run = verify(network, changed)
    assert run.status == 1
    space_line = next(line for line in run.lines if line.startswith("space: "))
    assert space_line.startswith("space: rejected (VERIFICATION_FAILED): "), space_line
    assert "space" in run.lines[-1].removeprefix("rejected: ").split(", ")


# --- bad inputs -----------------------------------------------------------------------------------


def _garbage(path: Path) -> str:
    path.write_bytes(b"\xff" * 64)  # a truncated varint tag: no protobuf message
    return "is not a bundle: not a FourProof: "


def _empty(path: Path) -> str:
    path.write_bytes(b"")
    return "is empty"


def _oversized(path: Path) -> str:
    with path.open("wb") as handle:  # sparse: no 8 MiB of real data
        handle.truncate(MAX_BUNDLE_BYTES + 1)
    return f"has {MAX_BUNDLE_BYTES + 1} bytes, more than the {MAX_BUNDLE_BYTES} allowed"


def _missing(path: Path) -> str:
    return "No such file or directory"


BAD_FILES = [_garbage, _empty, _oversized, _missing]
BAD_IDS = ["garbage", "empty", "oversized", "missing"]


@pytest.mark.parametrize("make", BAD_FILES, ids=BAD_IDS)
@pytest.mark.parametrize("role", ["bundle", "previous", "prove-previous"])
def test_bad_bundle_files_fail_on_one_line(
    network: Network, tmp_path: Path, make: Callable[[Path], str], role: str
) -> None:
    bad = tmp_path / "bad.bundle"
    expected = make(bad)
    out = tmp_path / "out.bundle"
    if role == "bundle":
        run = verify(network, bad)
    elif role == "previous":
        run = verify(network, network.v1, "--previous", bad)
    else:
        run = prove(network.home, "doc", network.data, out, "--previous", bad)
    line = one_line_failure(run)
    assert str(bad) in line
    assert expected in line
    assert not out.exists()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_never_verify_nor_crash(network: Network, data: bytes) -> None:
    bad = network.home / "arbitrary.bundle"
    bad.write_bytes(data)
    run = verify(network, bad)
    assert run.status == 1
    assert "Traceback" not in run.err
    if run.out:  # it decoded: every proof is accounted for, the verdict last
        assert run.lines[-1].startswith("rejected: ")
    else:
        one_line_failure(run)


def _empty_data(path: Path) -> str:
    path.write_bytes(b"")
    return f"asset data {path} is empty"


def _oversized_data(path: Path) -> str:
    with path.open("wb") as handle:
        handle.truncate(MAX_ASSET_BYTES + 1)
    return f"asset data {path} has {MAX_ASSET_BYTES + 1} bytes, more than the"


def _missing_data(path: Path) -> str:
    return f"{path}: No such file or directory"


@pytest.mark.parametrize(
    "make", [_empty_data, _oversized_data, _missing_data], ids=["empty", "oversized", "missing"]
)
def test_bad_asset_data_fails_on_one_line(
    network: Network, tmp_path: Path, make: Callable[[Path], str]
) -> None:
    data, out = tmp_path / "data.bin", tmp_path / "out.bundle"
    expected = make(data)
    assert expected in one_line_failure(prove(network.home, "doc", data, out))
    assert not out.exists()


def test_unwritable_output(network: Network, tmp_path: Path) -> None:
    run = prove(network.home, "doc", network.data, tmp_path)
    assert one_line_failure(run) == f"trustchain: --out {tmp_path} is a directory"
    out = tmp_path / "no-such-dir" / "out.bundle"
    run = prove(network.home, "doc", network.data, out)
    assert one_line_failure(run) == (
        f"trustchain: --out {out}: the directory {out.parent} does not exist"
    )
    assert list(tmp_path.iterdir()) == []


def test_verify_needs_a_network(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bundle = tmp_path / "b.bundle"
    bundle.write_bytes(b"\x00")
    run = trustchain(home, "proofs", "verify", bundle)
    assert (
        one_line_failure(run)
        == f"trustchain: no proving network in {home}: run `trustchain proofs prove` first"
    )
    assert not home.exists()


def test_production_without_a_plot_is_refused_up_front(network: Network, tmp_path: Path) -> None:
    out = tmp_path / "p.bundle"
    plots = network.home / "proofs" / "plots"
    before = sorted(plots.iterdir())
    for home in (network.home, tmp_path / "fresh"):
        run = prove(home, "doc", network.data, out, preset=PRODUCTION.name)
        line = one_line_failure(run)
        assert line.startswith(
            f"trustchain: the production preset needs a k={PRODUCTION.plot_k} plot and "
            f"{home / 'proofs' / 'plots'} has none; "
        )
        assert not out.exists()
    assert sorted(plots.iterdir()) == before  # nothing plotted, no plotting directory
    assert not (tmp_path / "fresh").exists()  # refused before any store or network was made


_PROVE = ["proofs", "prove", "doc", "--data", "d", "--preset", PRESET, "--out", "o"]


@pytest.mark.parametrize(
    "argv",
    [
        ["proofs"],
        ["proofs", "prove", "doc", "--data", "d", "--out", "o"],
        ["proofs", "prove", "doc", "--data", "d", "--preset", "fast", "--out", "o"],
        ["proofs", "prove", "doc", "--preset", PRESET, "--out", "o"],
        ["proofs", "prove", "doc", "--data", "d", "--preset", PRESET],
        ["proofs", "prove", "", "--data", "d", "--preset", PRESET, "--out", "o"],
        [*_PROVE, "--stake", "-1"],
        [*_PROVE, "--stake", str(1 << 63)],
        [*_PROVE, "--stake", "lots"],
        ["proofs", "verify"],
        ["proofs", "verify", "b", "--preset", "fast"],
        ["proofs", "stake", "--set", "many"],
        ["proofs", "stake", "--set", "-5"],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, argv: list[str]) -> None:
    home = tmp_path / "home"
    run = trustchain(home, *argv)
    assert run.status == 2
    assert run.out == ""
    assert "usage: trustchain" in run.err
    assert not home.exists()


# --- stake ----------------------------------------------------------------------------------------


def test_stake_balance_in_a_passphrase_home(tmp_path: Path) -> None:
    """A passphrase-protected home: the stake balance decides the stake proof; a bundle is
    only written when it validates; the store must be unlocked to verify."""
    home, passphrase = tmp_path / "home", tmp_path / "passphrase"
    passphrase.write_bytes(b"a proofs test passphrase\n")
    data, bundle = tmp_path / "data.bin", tmp_path / "v0.bundle"
    data.write_bytes(DATA[:5000])

    def run(*argv: str | Path) -> Run:
        return trustchain(home, "--passphrase-file", passphrase, "proofs", *argv)

    def prove_here(out: Path, *extra: str) -> Run:
        return run("prove", "doc", "--data", data, "--preset", PRESET, "--out", out, *extra)

    shown = run("stake")  # creates the network, crediting the node
    assert shown.status == 0, shown
    assert shown.fields()["balance"] == str(DEFAULT_INITIAL_STAKE)
    assert shown.fields()["sequence"] == "1"
    owner = shown.fields()["owner"]
    assert len(bytes.fromhex(owner)) == 32

    assert prove_here(bundle, "--stake", "7").status == 0
    assert run("verify", bundle).lines[-1] == "valid"

    lowered = run("stake", "--set", "6")
    assert lowered.status == 0, lowered
    assert (lowered.fields()["owner"], lowered.fields()["balance"]) == (owner, "6")
    assert lowered.fields()["sequence"] == "2"
    assert "recorded balance 6 (entry 2)" in lowered.err
    rejected = run("verify", bundle)
    assert rejected.status == 1
    assert (
        "stake: rejected (INSUFFICIENT): stake 7 exceeds the owner's registry balance 6"
        in rejected.lines
    )
    assert rejected.lines[-1] == "rejected: stake"

    # Proving more than the balance is refused and leaves an existing file as it was.
    kept = tmp_path / "kept.bundle"
    kept.write_bytes(b"untouched")
    line = failure_after_progress(prove_here(kept, "--stake", "7"))
    assert line.startswith("trustchain: the new bundle does not validate, nothing written: ")
    assert "stake: rejected (INSUFFICIENT): stake 7 exceeds the owner's registry balance 6" in line
    assert kept.read_bytes() == b"untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "data.bin",
        "home",
        "kept.bundle",
        "passphrase",
        "v0.bundle",
    ]

    assert run("stake", "--set", "7").fields()["balance"] == "7"
    restored = run("verify", bundle)
    assert (restored.status, restored.lines[-1]) == (0, "valid")
    # A successful prove replaces the existing file.
    assert prove_here(kept).status == 0
    assert decode_bundle(kept.read_bytes()).stake.stake_amount == LOCALHOST_TESTING.min_stake

    # Without the passphrase the store opens as a public view: no verifying.
    locked = trustchain(home, "proofs", "verify", bundle)
    assert one_line_failure(locked).startswith("trustchain: cannot unlock the key store: ")
