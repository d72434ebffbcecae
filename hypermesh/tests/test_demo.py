"""hypermesh.demo and the hypermesh command: the local network demo, end to end and in parts.

The whole demo runs once as a user runs it (``python -m hypermesh.cli demo``): four validator
processes, three real resources proved, certified and applied, the tables printed, the
processes stopped and the temporary directory removed. The parts are tested on their own:
proving one asset with per-proof timings, starting a validator that cannot start, the data
directory, and the command line.
"""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypermesh import cli, demo
from hypermesh.adapters import storage
from trustchain.consensus.federation import FederationError, LocalFederation
from trustchain.consensus.proofs import custody
from trustchain.consensus.proofs.bundle import state_hash
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    directory = tmp_path_factory.mktemp("demo") / "federation"
    with LocalFederation.create(directory, validators=1) as created:
        yield created


def test_the_demo_runs_end_to_end() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "hypermesh.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    progress, report = completed.stderr, completed.stdout
    match = re.search(r"data directory (\S+) \(temporary\)", progress)
    assert match is not None, progress
    assert not Path(match.group(1)).exists()  # removed at the end
    for step in (
        "creating the local federation (4 validators)",
        "starting 4 validator processes",
        "proving the cpu asset",
        "proving the memory asset",
        "proving the storage asset",
        "recording the storage asset",
        "stopping the validators",
    ):
        assert f"{step} ..." in progress
    assert "validator-0 exit 0, validator-1 exit 0, validator-2 exit 0, validator-3 exit 0" in (
        progress
    )
    assets, proofs, validators = report.strip().split("\n\n")
    assert assets.startswith("Assets (version 0, certified by the committee of epoch 0)")
    assert proofs.startswith("Proofs (prove / verify time")
    # On a loaded machine the fourth validator may apply after the client stopped waiting
    # for it (a quorum is three): the checks below need three validators, not four.
    assert validators.startswith("Validators (")
    asset_rows = {line.split()[0]: line for line in assets.splitlines()[3:]}
    proof_rows = {line.split()[0]: line for line in proofs.splitlines()[3:]}
    assert set(asset_rows) == set(proof_rows) == {"cpu", "memory", "storage"}
    roots = set()
    for index, kind in enumerate(("cpu", "memory", "storage")):
        row = asset_rows[kind]
        certified = r" 0 +[0-9a-f]{16} +[34] votes, stake [34]/4 \(quorum 3\) +[34]/4 "
        assert re.search(certified, row), row
        position = re.search(rf"#{index} ([0-9a-f]{{16}})$", row.rstrip())
        assert position is not None, row
        roots.add(position.group(1))
        assert proof_rows[kind].count(" valid") == 4, proof_rows[kind]
    assert len(roots) == 3  # each append changes the log root
    final_root = re.search(r"#2 ([0-9a-f]{16})$", asset_rows["storage"].rstrip())
    assert final_root is not None
    agreeing = re.findall(
        rf"validator-\d .* cpu v0 #0, memory v0 #1, storage v0 #2 +3 +{final_root.group(1)}",
        validators,
    )
    assert len(agreeing) >= 3, validators


def test_proving_an_asset_times_each_proof(federation: LocalFederation, tmp_path: Path) -> None:
    resource = storage.detect(tmp_path)
    context = federation.context("validator-0", LOCALHOST_TESTING)
    with context.registry:
        proved = demo.prove_asset(federation, resource, context)
    owner = federation.owner(demo.OWNER)
    assert proved.asset_name == "storage"
    assert proved.asset_id == owner.asset_id("storage")
    assert proved.version == 0
    assert proved.state_hash == state_hash(proved.bundle)
    assert proved.validation.valid
    assert proved.bundle.work.resource_spec == resource.resource_spec()
    # The custody proof covers the descriptor's chunks.
    tree = custody.CustodyTree.build(custody.chunk(resource.descriptor()))
    assert proved.bundle.space.custody_merkle_root == tree.root
    assert set(proved.prove_seconds) == set(demo.PROOF_KINDS)
    assert set(proved.verify_seconds) == set(demo.PROOF_KINDS)
    assert all(seconds >= 0 for seconds in proved.prove_seconds.values())
    assert sum(proved.prove_seconds.values()) <= proved.prove_total


def test_a_validator_that_cannot_start_is_named(tmp_path: Path) -> None:
    with LocalFederation.create(tmp_path / "f", validators=1) as federation:
        (setup,) = federation.validators
        (setup.home / "chain.pem").write_bytes(b"not a chain")

        async def start() -> None:
            await demo.start_validators(federation, timeout=60)

        with pytest.raises(
            demo.DemoError, match=r"validator validator-0 exited with status 1 before it was ready"
        ):
            asyncio.run(start())
        assert "does not hold PEM certificates" in (setup.home / "validator.log").read_text()


def test_a_data_dir_holding_a_federation_is_refused(federation: LocalFederation) -> None:
    data = federation.directory.parent
    out, err = io.StringIO(), io.StringIO()

    async def run() -> int:
        return await demo.run(data, validators=1, out=out, progress=demo.Progress(err))

    with pytest.raises(FederationError, match="exists and is not an empty directory"):
        asyncio.run(run())
    assert out.getvalue() == ""
    assert f"data directory {data}\n" in err.getvalue()


def test_the_data_directory_is_kept_or_removed(tmp_path: Path) -> None:
    given = tmp_path / "kept" / "data"
    with demo.data_directory(given) as data:
        assert data == given
        assert data.is_dir()
    assert given.is_dir()
    with demo.data_directory(None) as data:
        (data / "something").write_text("x")
        temporary = data
    assert not temporary.exists()


def test_the_demo_refuses_a_bad_validator_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["demo", "--validators", "0"])
    assert caught.value.code == 2
    assert "argument --validators: invalid choice" in capsys.readouterr().err


def test_the_validator_command_finds_its_federation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "fed" / "validators" / "validator-0"
    home.mkdir(parents=True)
    assert cli.main(["validator", "--home", str(home)]) == 1
    assert f"no local federation in {tmp_path / 'fed'}" in capsys.readouterr().err
