"""Tests of the ``trustchain ca`` command line: every documented form, its files and modes.

The commands run in-process through the argparse handlers of :mod:`trustchain.ca.commands`
(through :func:`trustchain.cli.main` once ``ca`` is wired into it), with a key-file protected
store (no Argon2 cost per command). One test runs a real ``trustchain`` process when wired.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trustchain import cli
from trustchain.ca import embedded_sct, hybrid
from trustchain.ca.commands import HYBRID_KEY_LABEL
from trustchain.crypto.keystore import KeyStore
from trustchain.crypto.signatures import SigningKey
from trustchain.ct.log import TransparencyLog

OPENSSL = "/usr/bin/openssl"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.ENV_HOME, raising=False)
    monkeypatch.delenv(cli.ENV_PASSPHRASE, raising=False)


def _main(argv: Sequence[str]) -> int:
    return cli.main(list(argv))


class Cli:
    def __init__(self, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.home = home
        self.capsys = capsys

    def __call__(self, *argv: str | Path) -> tuple[int, str, str]:
        self.capsys.readouterr()
        status = _main(["--home", str(self.home), *(str(a) for a in argv)])
        out, err = self.capsys.readouterr()
        return status, out, err

    def ok(self, *argv: str | Path) -> str:
        status, out, err = self(*argv)
        assert status == 0, err
        return out


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def run(home: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(home, capsys)


@pytest.fixture
def hierarchy(run: Cli) -> Cli:
    run.ok("ca", "init", "--name", "root")
    run.ok("ca", "issue-intermediate", "--name", "dmv", "--namespace", "dmv.hypermesh")
    return run


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, *(str(a) for a in args)], capture_output=True, text=True, check=False
    )


def _serial_line(out: str) -> int:
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert lines[0] == lines[0].strip().lower()
    return int(lines[0], 16)


def test_init_and_issue_intermediate(run: Cli, home: Path) -> None:
    root_serial = _serial_line(run.ok("ca", "init", "--name", "root"))
    dmv_serial = _serial_line(
        run.ok("ca", "issue-intermediate", "--name", "dmv", "--namespace", "dmv.hypermesh")
    )
    assert root_serial != dmv_serial
    assert (home / "ca" / "ca.db").exists()
    assert (home / "ct" / "log.db").exists()
    status, out, err = run("ca", "init", "--name", "again")
    assert (status, out) == (1, "")
    assert "root" in err
    status, _, err = run(
        "ca", "issue-intermediate", "--name", "x", "--namespace", "x.hypermesh", "--issuer", "dmv"
    )
    assert status == 1
    assert "pathLenConstraint" in err


def test_issue_node_writes_chain_and_keys(hierarchy: Cli, home: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "out" / "host"
    prefix.parent.mkdir()
    out = hierarchy.ok(
        "ca",
        "issue",
        "--issuer",
        "dmv",
        "--kind",
        "node",
        "--name",
        "host.dmv.hypermesh",
        "--out",
        prefix,
        "--dns",
        "alias.dmv.hypermesh",
        "--ip",
        "192.0.2.5",
    )
    serial = _serial_line(out)
    chain_pem = Path(f"{prefix}.pem")
    key_pem = Path(f"{prefix}.key")
    hybrid_key = Path(f"{prefix}.hybrid.key")
    assert mode(key_pem) == 0o600
    assert mode(hybrid_key) == 0o600
    leaf, intermediate = x509.load_pem_x509_certificates(chain_pem.read_bytes())
    assert leaf.serial_number == serial
    assert leaf.subject.rfc4514_string() == "CN=host.dmv.hypermesh"
    assert intermediate.subject.rfc4514_string() == "CN=dmv,O=TrustChain"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["host.dmv.hypermesh", "alias.dmv.hypermesh"]
    # PREFIX.key: the Ed25519 component, unencrypted PKCS#8, matching the certificate.
    assert key_pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    private = serialization.load_pem_private_key(key_pem.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    assert private.public_key() == leaf.public_key()
    # PREFIX.hybrid.key: the whole hybrid key, armored.
    text = hybrid_key.read_text().strip().splitlines()
    assert text[0] == f"-----BEGIN {HYBRID_KEY_LABEL}-----"
    assert text[-1] == f"-----END {HYBRID_KEY_LABEL}-----"
    signing = SigningKey.from_bytes(base64.b64decode("".join(text[1:-1])))
    assert signing.public_key() == hybrid.certificate_public_key(leaf)
    hybrid.verify_certificate_signatures(leaf, hybrid.certificate_public_key(intermediate))
    # The key is the key store's leaf/<name>.
    with KeyStore.open(home) as store:
        assert store.public_key("leaf/host.dmv.hypermesh") == signing.public_key()
        log_key = store.public_key("ct-log")
    # Logged, with its SCT embedded.
    (sct,) = embedded_sct.embedded_scts(leaf)
    assert isinstance(log_key, type(signing.public_key()))
    sct.verify(log_key, entry=embedded_sct.log_entry(leaf))
    with TransparencyLog.open(home / "ct" / "log.db", None, create=False) as log:
        assert log.entry(sct.leaf_index).data == embedded_sct.log_entry(leaf)

    root_pem = tmp_path / "root.pem"
    assert hierarchy.ok("ca", "export-root", "--out", root_pem) == ""
    (root,) = x509.load_pem_x509_certificates(root_pem.read_bytes())
    assert root.subject == root.issuer == intermediate.issuer
    result = openssl("verify", "-CAfile", root_pem, "-untrusted", chain_pem, chain_pem)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{chain_pem}: OK"


def test_issue_service_and_asset_and_external_key(hierarchy: Cli, tmp_path: Path) -> None:
    hierarchy.ok(
        "ca",
        "issue",
        "--issuer",
        "dmv",
        "--kind",
        "service",
        "--name",
        "api.dmv.hypermesh",
        "--out",
        tmp_path / "svc",
        "--service-id",
        "0a0b",
    )
    (svc, _) = x509.load_pem_x509_certificates((tmp_path / "svc.pem").read_bytes())
    uris = svc.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == ["hypermesh://service/0a0b"]
    key = SigningKey.generate()
    public_file = tmp_path / "asset.pub"
    armored = base64.b64encode(key.public_key().to_bytes()).decode()
    public_file.write_text(
        f"-----BEGIN TRUSTCHAIN SIGNING PUBLIC KEY-----\n{armored}\n"
        "-----END TRUSTCHAIN SIGNING PUBLIC KEY-----\n"
    )
    hierarchy.ok(
        "ca",
        "issue",
        "--issuer",
        "dmv",
        "--kind",
        "asset",
        "--name",
        "car.dmv.hypermesh",
        "--out",
        tmp_path / "car",
        "--asset-id",
        "c0ffee",
        "--public-key",
        public_file,
        "--validity-hours",
        "2",
    )
    (car, _) = x509.load_pem_x509_certificates((tmp_path / "car.pem").read_bytes())
    assert hybrid.certificate_public_key(car) == key.public_key()
    assert not (tmp_path / "car.key").exists()
    assert not (tmp_path / "car.hybrid.key").exists()
    assert car.not_valid_after_utc - car.not_valid_before_utc == timedelta(hours=2)
    # A binary public key envelope works too.
    binary = tmp_path / "bin.pub"
    binary.write_bytes(SigningKey.generate().public_key().to_bytes())
    hierarchy.ok(
        "ca",
        "issue",
        "--issuer",
        "dmv",
        "--kind",
        "node",
        "--name",
        "b.dmv.hypermesh",
        "--out",
        tmp_path / "b",
        "--public-key",
        binary,
    )


def test_issue_refusals(hierarchy: Cli, tmp_path: Path) -> None:
    status, out, err = hierarchy(
        "ca",
        "issue",
        "--issuer",
        "dmv",
        "--kind",
        "node",
        "--name",
        "host.bank.hypermesh",
        "--out",
        tmp_path / "x",
    )
    assert (status, out) == (1, "")
    assert "outside" in err
    assert "Traceback" not in err
    assert not (tmp_path / "x.pem").exists()
    status, _, err = hierarchy(
        "ca",
        "issue",
        "--issuer",
        "nobody",
        "--kind",
        "node",
        "--name",
        "a.dmv.hypermesh",
        "--out",
        tmp_path / "x",
    )
    assert status == 1
    assert "nobody" in err
    for argv in (
        ("ca", "issue", "--issuer", "dmv", "--kind", "printer", "--name", "p", "--out", "x"),
        ("ca", "issue", "--issuer", "dmv", "--kind", "node", "--name", "n.dmv.hypermesh"),
        (
            "ca",
            "issue",
            "--issuer",
            "dmv",
            "--kind",
            "node",
            "--name",
            "n",
            "--out",
            "x",
            "--ip",
            "not-an-ip",
        ),
        ("ca", "revoke", "zz"),
        ("ca", "revoke", "01", "--reason", "certificateHold"),
        ("ca", "crl", "--shard", "-1", "--out", "x"),
    ):
        assert hierarchy(*argv)[0] == 2, argv


def test_renew(hierarchy: Cli, tmp_path: Path, home: Path) -> None:
    serial = _serial_line(
        hierarchy.ok(
            "ca",
            "issue",
            "--issuer",
            "dmv",
            "--kind",
            "node",
            "--name",
            "n.dmv.hypermesh",
            "--out",
            tmp_path / "n",
        )
    )
    renewed = _serial_line(hierarchy.ok("ca", "renew", f"{serial:x}", "--out", tmp_path / "n2"))
    assert renewed != serial
    first = x509.load_pem_x509_certificates((tmp_path / "n.pem").read_bytes())[0]
    second = x509.load_pem_x509_certificates((tmp_path / "n2.pem").read_bytes())[0]
    assert second.serial_number == renewed
    assert second.subject == first.subject
    assert second.public_key() != first.public_key()
    assert (tmp_path / "n2.key").read_bytes() != (tmp_path / "n.key").read_bytes()
    assert mode(tmp_path / "n2.key") == 0o600
    same = _serial_line(hierarchy.ok("ca", "renew", f"0x{renewed:X}", "--no-rekey"))
    with KeyStore.open(home) as store:
        assert [k.version for k in store.versions("leaf/n.dmv.hypermesh")] == [1, 2]
    assert same not in (serial, renewed)
    status, _, err = hierarchy("ca", "renew", "abcdef")
    assert status == 1
    assert "abcdef" in err


def test_revoke_and_crl(hierarchy: Cli, tmp_path: Path) -> None:
    serial = _serial_line(
        hierarchy.ok(
            "ca",
            "issue",
            "--issuer",
            "dmv",
            "--kind",
            "node",
            "--name",
            "n.dmv.hypermesh",
            "--out",
            tmp_path / "n",
        )
    )
    out = hierarchy.ok("ca", "revoke", f"{serial:x}", "--reason", "keyCompromise")
    assert out.strip() == f"revoked {serial:x} (node n.dmv.hypermesh): keyCompromise"
    status, _, err = hierarchy("ca", "revoke", f"{serial:x}", "--reason", "superseded")
    assert status == 1
    assert "already revoked" in err

    full = tmp_path / "dmv.crl"
    out = hierarchy.ok("ca", "crl", "--issuer", "dmv", "--out", full)
    assert out.strip() == "wrote full CRL number 1 of CN=dmv,O=TrustChain: 1 revoked"
    crl = x509.load_pem_x509_crl(full.read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    (_, intermediate) = x509.load_pem_x509_certificates((tmp_path / "n.pem").read_bytes())
    hybrid.verify_crl_signatures(crl, hybrid.certificate_public_key(intermediate))
    assert openssl("crl", "-noout", "-text", "-in", full).returncode == 0

    shard_file = tmp_path / "shard.der"
    out = hierarchy.ok(
        "ca", "crl", "--issuer", "dmv", "--shard", str(serial % 4), "--out", shard_file, "--der"
    )
    assert out.startswith(f"wrote CRL shard {serial % 4} number 1 ")
    shard = x509.load_der_x509_crl(shard_file.read_bytes())
    assert shard.get_revoked_certificate_by_serial_number(serial) is not None
    assert shard.extensions.get_extension_for_class(x509.IssuingDistributionPoint).critical
    other = (serial + 1) % 4
    hierarchy.ok("ca", "crl", "--issuer", "dmv", "--shard", str(other), "--out", shard_file)
    assert len(x509.load_pem_x509_crl(shard_file.read_bytes())) == 0
    root_crl = tmp_path / "root.crl"
    assert "of CN=root,O=TrustChain: 0 revoked" in hierarchy.ok("ca", "crl", "--out", root_crl)
    status, _, err = hierarchy("ca", "crl", "--issuer", "dmv", "--shard", "9", "--out", root_crl)
    assert status == 1
    assert "4 CRL shards" in err


def test_commands_need_a_store(run: Cli, tmp_path: Path) -> None:
    status, _, err = run("ca", "export-root", "--out", tmp_path / "r.pem")
    assert status == 1
    assert "no key store" in err
    assert not (tmp_path / "r.pem").exists()


def test_secret_files_are_replaced_with_mode_0600(hierarchy: Cli, tmp_path: Path) -> None:
    prefix = tmp_path / "n"
    Path(f"{prefix}.key").write_bytes(b"old")
    os.chmod(f"{prefix}.key", 0o644)
    hierarchy.ok(
        "ca",
        "issue",
        "--issuer",
        "dmv",
        "--kind",
        "node",
        "--name",
        "n.dmv.hypermesh",
        "--out",
        prefix,
    )
    assert mode(Path(f"{prefix}.key")) == 0o600
    assert Path(f"{prefix}.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_console_script_in_a_real_process(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in (cli.ENV_HOME, cli.ENV_PASSPHRASE)}

    def trustchain(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "trustchain.cli", "--home", str(home), *map(str, argv)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    for argv in (
        ("ca", "init", "--name", "root"),
        ("ca", "issue-intermediate", "--name", "dmv", "--namespace", "dmv.hypermesh"),
    ):
        assert trustchain(*argv).returncode == 0
    issued = trustchain(
        "ca",
        "issue",
        "--issuer",
        "dmv",
        "--kind",
        "node",
        "--name",
        "h.dmv.hypermesh",
        "--out",
        tmp_path / "h",
    )
    assert issued.returncode == 0, issued.stderr
    serial = issued.stdout.strip()
    assert trustchain("ca", "export-root", "--out", tmp_path / "root.pem").returncode == 0
    result = openssl(
        "verify",
        "-CAfile",
        tmp_path / "root.pem",
        "-untrusted",
        tmp_path / "h.pem",
        tmp_path / "h.pem",
    )
    assert result.returncode == 0, result.stderr
    revoked = trustchain("ca", "revoke", serial, "--reason", "keyCompromise")
    assert revoked.returncode == 0, revoked.stderr
