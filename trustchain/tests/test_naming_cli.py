"""Tests of ``trustchain names``: two real homes made by ``trustchain ca init /
issue-intermediate / issue``, records added, updated, refused, listed, shown, exported,
imported into the other home (after trusting its root), revoked and the revocation replicated.

The commands run in-process through :func:`trustchain.cli.main` with key-file protected
stores; one test runs a real ``trustchain`` process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509

from trustchain import cli
from trustchain.ca import hybrid
from trustchain.naming import (
    NameRejection,
    RecordSet,
    SignedRecord,
    decode_record_set,
    encode_record_set,
    verified_names,
)
from trustchain.naming.commands import registry_path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.ENV_HOME, raising=False)
    monkeypatch.delenv(cli.ENV_PASSPHRASE, raising=False)


class Cli:
    def __init__(self, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.home = home
        self.capsys = capsys

    def __call__(self, *argv: str | Path) -> tuple[int, str, str]:
        self.capsys.readouterr()
        status = cli.main(["--home", str(self.home), *(str(a) for a in argv)])
        out, err = self.capsys.readouterr()
        return status, out, err

    def ok(self, *argv: str | Path) -> str:
        status, out, err = self(*argv)
        assert status == 0, err
        assert "Traceback" not in err
        return out

    def fails(self, *argv: str | Path) -> tuple[str, str]:
        status, out, err = self(*argv)
        assert status == 1, (out, err)
        assert "Traceback" not in err
        return out, err


def make_home(run: Cli, tmp_path: Path, root: str, entity: str) -> Path:
    """A home with root ``root``, entity CAs ``entity`` and ``other``, a node of each."""
    run.ok("ca", "init", "--name", root)
    run.ok("ca", "issue-intermediate", "--name", entity, "--namespace", f"{entity}.hypermesh")
    run.ok("ca", "issue-intermediate", "--name", "other", "--namespace", "other.hypermesh")
    for issuer in (entity, "other"):
        prefix = tmp_path / f"{root}-{issuer}"
        run.ok(
            "ca", "issue", "--issuer", issuer, "--kind", "node", "--name",
            f"n1.{issuer}.hypermesh", "--out", prefix,
        )  # fmt: skip
    run.ok("ca", "export-root", "--out", tmp_path / f"{root}.pem")
    return tmp_path


@pytest.fixture
def bank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    run = Cli(tmp_path / "bank-home", capsys)
    make_home(run, tmp_path, "bank-root", "bank")
    return run


def test_add_show_list_update_and_refusals(bank: Cli, tmp_path: Path) -> None:
    teller = tmp_path / "bank-root-bank"
    out = bank.ok(
        "names", "add", "www.bank.hypermesh", "--address", "127.0.0.1", "--address", "::1",
        "--signer", teller, "--service", "stoq/udp:4433", "--text", "hello", "--ttl", "60",
        "--valid-days", "30",
    )  # fmt: skip
    assert out == "1\n"
    assert registry_path(bank.home).exists()
    shown = bank.ok("names", "show", "WWW.bank.hypermesh")
    leaf = x509.load_pem_x509_certificates(Path(f"{teller}.pem").read_bytes())[0]
    assert "name: www.bank.hypermesh\n" in shown
    assert "addresses: 127.0.0.1, ::1\n" in shown
    assert "service: _stoq._udp.www.bank.hypermesh port 4433 priority 0 weight 0\n" in shown
    assert "text: 'hello'\n" in shown
    assert "ttl: 60\n" in shown
    assert "serial: 1\n" in shown
    assert f"signer: CN=n1.bank.hypermesh (serial {leaf.serial_number:x})" in shown
    # the node id defaults to the signer's key id; validity is capped by the certificate
    assert f"node id: {hybrid.certificate_public_key(leaf).key_id.hex()}\n" in shown
    assert f"to {leaf.not_valid_after_utc.isoformat()}" in shown

    # an update takes the next serial
    assert (
        bank.ok("names", "add", "www.bank.hypermesh", "--address", "127.0.0.2", "--signer", teller)
        == "2\n"
    )
    assert "addresses: 127.0.0.2\n" in bank.ok("names", "show", "www.bank.hypermesh")
    # an explicit stale serial is refused with its reason
    _, err = bank.fails(
        "names", "add", "www.bank.hypermesh", "--address", "127.0.0.3", "--signer", teller,
        "--serial", "1",
    )  # fmt: skip
    assert "STALE_SERIAL" in err
    # a certificate of another namespace cannot sign bank names
    _, err = bank.fails(
        "names", "add", "x.bank.hypermesh", "--address", "127.0.0.1",
        "--signer", tmp_path / "bank-root-other",
    )  # fmt: skip
    assert "OUTSIDE_NAMESPACE" in err
    assert "other.hypermesh" in err
    # usage errors
    status, _, _ = bank(
        "names",
        "add",
        "y.bank.hypermesh",
        "--address",
        "1.2.3.4",
        "--signer",
        teller,
        "--service",
        "stoq",
    )
    assert status == 2
    _, err = bank.fails(
        "names", "add", "bad_name.bank.hypermesh", "--address", "1.2.3.4", "--signer", teller
    )
    assert "label" in err
    _, err = bank.fails(
        "names", "add", "z.bank.hypermesh", "--address", "1.2.3.4", "--signer", tmp_path / "missing"
    )
    assert "missing.pem" in err

    bank.ok("names", "add", "api.bank.hypermesh", "--address", "10.0.0.1", "--signer", teller)
    listing = bank.ok("names", "list").splitlines()
    assert listing[0].split() == ["NAME", "SERIAL", "TTL", "NOT", "AFTER", "STATUS", "ADDRESSES"]
    assert [line.split()[:2] + line.split()[4:] for line in listing[1:]] == [
        ["api.bank.hypermesh", "1", "ok", "10.0.0.1"],
        ["www.bank.hypermesh", "2", "ok", "127.0.0.2"],
    ]
    _, err = bank.fails("names", "show", "nothing.bank.hypermesh")
    assert "no record for nothing.bank.hypermesh" in err


def test_export_import_trust_and_replicated_revocation(
    bank: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teller = tmp_path / "bank-root-bank"
    bank.ok("names", "add", "www.bank.hypermesh", "--address", "127.0.0.1", "--signer", teller)
    bank.ok("names", "add", "api.bank.hypermesh", "--address", "127.0.0.5", "--signer", teller)
    exported = tmp_path / "bank.names"
    out = bank.ok("names", "export", "--out", exported)
    assert out == f"exported 2 record(s) and 0 revocation(s) to {exported}\n"
    record_set = decode_record_set(exported.read_bytes())
    (root,) = x509.load_pem_x509_certificates((tmp_path / "bank-root.pem").read_bytes())
    assert record_set.anchors == (root,)
    assert len(record_set.crls) == 3  # root, bank and other: fresh CRLs of the home's CAs
    names, refused = verified_names(record_set)
    assert sorted(names) == ["api.bank.hypermesh", "www.bank.hypermesh"]
    assert refused == []

    shop_dir = tmp_path / "shop"
    shop_dir.mkdir()
    shop = Cli(tmp_path / "shop-home", capsys)
    make_home(shop, shop_dir, "shop-root", "shop")
    # the shop does not trust the bank's root yet: everything is refused, with the reason
    out, _ = shop.fails("names", "import", exported)
    assert "refused api.bank.hypermesh serial 1: CHAIN_REJECTED:" in out
    assert out.endswith("0 accepted, 0 revoked, 0 unchanged, 2 refused\n")
    assert shop.ok("names", "trust", tmp_path / "bank-root.pem").startswith("now trusted")
    assert shop.ok("names", "trust", tmp_path / "bank-root.pem").startswith("already trusted")
    out = shop.ok("names", "import", exported)
    assert out.splitlines() == [
        "accepted api.bank.hypermesh serial 1",
        "accepted www.bank.hypermesh serial 1",
        "2 accepted, 0 revoked, 0 unchanged, 0 refused",
    ]
    assert "addresses: 127.0.0.5" in shop.ok("names", "show", "api.bank.hypermesh")
    # the shop's own names go the other way
    shop.ok(
        "names",
        "add",
        "www.shop.hypermesh",
        "--address",
        "127.0.0.9",
        "--signer",
        shop_dir / "shop-root-shop",
    )
    shop_file = tmp_path / "shop.names"
    shop.ok("names", "export", "--out", shop_file)
    bank.ok("names", "trust", shop_dir / "shop-root.pem")
    out = bank.ok("names", "import", shop_file)
    assert "accepted www.shop.hypermesh serial 1" in out
    assert out.endswith("1 accepted, 0 revoked, 2 unchanged, 0 refused\n")
    # a name added on another home has no known signer here
    _, err = bank.fails("names", "revoke", "www.shop.hypermesh")
    assert "was not added on this home: give --signer PREFIX" in err

    # revoke at the bank (the signer `names add` used there, as the command line has
    # it: no --signer); the revocation replicates
    assert bank.ok("names", "revoke", "www.bank.hypermesh") == (
        "revoked www.bank.hypermesh through serial 1\n"
    )
    _, err = bank.fails("names", "show", "www.bank.hypermesh")
    assert "revoked through serial 1" in err
    bank.ok("names", "export", "--out", exported)
    out = shop.ok("names", "import", exported)
    assert "revoked www.bank.hypermesh through serial 1" in out
    _, err = shop.fails("names", "show", "www.bank.hypermesh")
    assert "revoked through serial 1" in err
    # a revocation from outside the namespace is refused
    _, err = bank.fails(
        "names", "revoke", "api.bank.hypermesh", "--signer", tmp_path / "bank-root-other"
    )
    assert "OUTSIDE_NAMESPACE" in err

    # a tampered record in an otherwise good file is refused with its reason
    good = decode_record_set(exported.read_bytes())
    original = good.records[0]
    forged_record = replace(original.record, addresses=("203.0.113.66",), serial=7)
    forged = SignedRecord(forged_record, original.chain, original.signature)
    tampered = tmp_path / "tampered.names"
    tampered.write_bytes(encode_record_set(RecordSet((forged,), (), good.anchors)))
    out, _ = shop.fails("names", "import", tampered)
    assert f"refused {original.record.name} serial 7: {NameRejection.BAD_SIGNATURE.name}:" in out
    # bytes that are no record set at all
    tampered.write_bytes(b"not a record set")
    _, err = shop.fails("names", "import", tampered)
    assert "bad magic" in err


def test_home_without_anchors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = Cli(tmp_path / "empty", capsys)
    _, err = empty.fails("names", "list")
    assert "no trust anchors" in err


def test_console_script_in_a_real_process(bank: Cli, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (cli.ENV_HOME, cli.ENV_PASSPHRASE)}

    def trustchain(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "trustchain.cli", "--home", str(bank.home), *map(str, argv)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    added = trustchain(
        "names", "add", "www.bank.hypermesh", "--address", "127.0.0.1",
        "--signer", tmp_path / "bank-root-bank",
    )  # fmt: skip
    assert (added.returncode, added.stdout) == (0, "1\n"), added.stderr
    listed = trustchain("names", "list")
    assert listed.returncode == 0, listed.stderr
    assert "www.bank.hypermesh" in listed.stdout
    refused = trustchain("names", "show", "missing.bank.hypermesh")
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
