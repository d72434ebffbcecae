"""Tests of the ``trustchain`` command line: in-process via ``main``, once as a real process."""

from __future__ import annotations

import base64
import getpass
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trustchain
from trustchain import cli_common
from trustchain.cli import ENV_HOME, ENV_PASSPHRASE, main
from trustchain.crypto.keystore import (
    DB_FILENAME,
    KEYFILE_FILENAME,
    DetachedSignature,
    KeyStatus,
    KeyStore,
    Protection,
)

PASSPHRASE = b"cli test passphrase"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_HOME, raising=False)
    monkeypatch.delenv(ENV_PASSPHRASE, raising=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def document(tmp_path: Path) -> Path:
    path = tmp_path / "release.tar"
    path.write_bytes(b"release artefact\x00\x01" * 100)
    return path


def run(capsysbinary: pytest.CaptureFixture[bytes], *argv: str | Path) -> tuple[int, bytes, str]:
    """``main(argv)``: (exit status, stdout bytes, stderr text)."""
    capsysbinary.readouterr()
    status = main([str(a) for a in argv])
    out, err = capsysbinary.readouterr()
    return status, out, err.decode()


def sign_to(
    capsysbinary: pytest.CaptureFixture[bytes], home: Path, name: str, file: Path, sig: Path
) -> None:
    status, out, err = run(capsysbinary, "--home", home, "sign", name, file)
    assert status == 0, err
    sig.write_bytes(out)


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("trustchain: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_generate_sign_verify_rotate_retire(
    capsysbinary: pytest.CaptureFixture[bytes], home: Path, document: Path, tmp_path: Path
) -> None:
    status, out, err = run(capsysbinary, "--home", home, "keys", "generate", "release")
    assert status == 0, err
    with KeyStore.open(home, create=False) as store:
        v1 = store.info("release")
    assert v1.algorithm == "hybrid-ed25519-falcon-1024"
    assert "generated release v1" in out.decode()
    assert v1.algorithm in out.decode()
    assert v1.key_id_hex in out.decode()
    assert "key file" in err  # a new store without a passphrase says how it is protected

    sig1 = tmp_path / "release.tar.sig"
    sign_to(capsysbinary, home, "release", document, sig1)
    assert DetachedSignature.from_bytes(sig1.read_bytes()).key_id == v1.key_id

    status, out, err = run(capsysbinary, "--home", home, "verify", "release", document, sig1)
    assert (status, err) == (0, "")
    assert out.decode().strip() == f"valid: release v1 (key id {v1.key_id_hex})"

    tampered = tmp_path / "tampered.tar"
    tampered.write_bytes(document.read_bytes() + b"!")
    status, out, err = run(capsysbinary, "--home", home, "verify", "release", tampered, sig1)
    assert (status, out) == (1, b"")
    assert_one_line_error(err, "invalid signature")

    status, out, err = run(capsysbinary, "--home", home, "keys", "rotate", "release")
    assert status == 0, err
    assert "release v2 is active" in out.decode()

    # Signatures made before the rotation still verify, with their own version.
    status, out, _ = run(capsysbinary, "--home", home, "verify", "release", document, sig1)
    assert status == 0
    assert out.decode().startswith("valid: release v1 ")
    sig2 = tmp_path / "release.tar.sig2"
    sign_to(capsysbinary, home, "release", document, sig2)
    status, out, _ = run(capsysbinary, "--home", home, "verify", "release", document, sig2)
    assert status == 0
    assert out.decode().startswith("valid: release v2 ")

    status, out, err = run(
        capsysbinary, "--home", home, "keys", "retire", "release", "--version", "1"
    )
    assert status == 0, err
    assert out.decode().strip() == "retired release v1"
    status, out, err = run(capsysbinary, "--home", home, "verify", "release", document, sig1)
    assert (status, out) == (1, b"")
    assert_one_line_error(err, "retired", "release v1")
    status, _, _ = run(capsysbinary, "--home", home, "verify", "release", document, sig2)
    assert status == 0


def test_revoke(
    capsysbinary: pytest.CaptureFixture[bytes], home: Path, document: Path, tmp_path: Path
) -> None:
    assert (
        run(capsysbinary, "--home", home, "keys", "generate", "k", "--algorithm", "ed25519")[0] == 0
    )
    sig = tmp_path / "doc.sig"
    sign_to(capsysbinary, home, "k", document, sig)
    status, out, err = run(
        capsysbinary, "--home", home, "keys", "revoke", "k", "--version", "1", "--reason", "leaked"
    )
    assert status == 0, err
    assert out.decode().strip() == "revoked k v1: leaked"
    status, _, err = run(capsysbinary, "--home", home, "verify", "k", document, sig)
    assert status == 1
    assert_one_line_error(err, "revoked", "leaked")
    status, _, err = run(capsysbinary, "--home", home, "sign", "k", document)
    assert status == 1
    assert_one_line_error(err, "revoked", "rotate k")


def test_keys_list(capsysbinary: pytest.CaptureFixture[bytes], home: Path) -> None:
    for argv in (
        ("keys", "generate", "alpha", "--algorithm", "ed25519"),
        ("keys", "generate", "inbox", "--algorithm", "x25519"),
        ("keys", "rotate", "alpha"),
        ("keys", "revoke", "alpha", "--version", "1", "--reason", "old laptop"),
    ):
        status, _, err = run(capsysbinary, "--home", home, *argv)
        assert status == 0, err
    status, out, err = run(capsysbinary, "--home", home, "keys", "list")
    assert (status, err) == (0, "")
    lines = out.decode().splitlines()
    assert lines[0] == f"key store {home} (protection: keyfile)"
    assert lines[1].split() == ["NAME", "VERSION", "ALGORITHM", "STATUS", "CREATED", "KEY", "ID"]
    with KeyStore.open(home) as store:
        infos = store.list()
    assert len(lines) == 2 + len(infos) == 5
    for line, info in zip(lines[2:], infos, strict=True):
        fields = line.split()
        assert fields[:4] == [info.name, f"v{info.version}", info.algorithm, str(info.status)]
        assert fields[-1] == info.key_id_hex[:16]
        assert info.created_at.strftime("%Y-%m-%dT%H:%M:%SZ") in fields
    assert "revoked (old laptop)" in lines[2]
    assert infos[0].status is KeyStatus.REVOKED


def test_list_empty_and_missing_store(
    capsysbinary: pytest.CaptureFixture[bytes], home: Path
) -> None:
    status, out, err = run(capsysbinary, "--home", home, "keys", "list")
    assert (status, out) == (1, b"")
    assert_one_line_error(err, "no key store")
    assert not home.exists()
    KeyStore.open(home).close()
    status, out, _ = run(capsysbinary, "--home", home, "keys", "list")
    assert status == 0
    assert out.decode().splitlines()[-1] == "no keys"


def test_trustchain_home_env(
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    document: Path,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv(ENV_HOME, str(home))
    status, _, err = run(capsysbinary, "keys", "generate", "k", "--algorithm", "ed25519")
    assert status == 0, err
    assert (home / DB_FILENAME).exists()
    assert (home / KEYFILE_FILENAME).exists()
    status, sig, _ = run(capsysbinary, "sign", "k", document)
    assert status == 0
    (tmp_path / "doc.sig").write_bytes(sig)
    status, out, _ = run(capsysbinary, "verify", "k", document, tmp_path / "doc.sig")
    assert status == 0
    assert out.startswith(b"valid: k v1 ")
    # --home wins over the environment.
    other = tmp_path / "other"
    status, _, err = run(
        capsysbinary, "--home", other, "verify", "k", document, tmp_path / "doc.sig"
    )
    assert status == 1
    assert_one_line_error(err, "no key store")


def test_export_public(
    capsysbinary: pytest.CaptureFixture[bytes], home: Path, tmp_path: Path
) -> None:
    run(capsysbinary, "--home", home, "keys", "generate", "k", "--algorithm", "ed25519")
    run(capsysbinary, "--home", home, "keys", "rotate", "k")
    with KeyStore.open(home) as store:
        v1, v2 = store.export_public("k", 1), store.export_public("k")
    status, out, _ = run(capsysbinary, "--home", home, "keys", "export-public", "k")
    assert (status, out) == (0, v2)
    target = tmp_path / "k1.pub"
    status, out, _ = run(
        capsysbinary,
        "--home",
        home,
        "keys",
        "export-public",
        "k",
        "--version",
        "1",
        "--out",
        target,
    )
    assert (status, out) == (0, b"")
    assert target.read_bytes() == v1
    status, out, _ = run(capsysbinary, "--home", home, "keys", "export-public", "k", "--armor")
    text = out.decode()
    assert status == 0
    lines = text.splitlines()
    assert lines[0] == "-----BEGIN TRUSTCHAIN SIGNING PUBLIC KEY-----"
    assert lines[-1] == "-----END TRUSTCHAIN SIGNING PUBLIC KEY-----"
    assert base64.b64decode("".join(lines[1:-1])) == v2


def test_malformed_and_missing_files(
    capsysbinary: pytest.CaptureFixture[bytes], home: Path, document: Path, tmp_path: Path
) -> None:
    run(capsysbinary, "--home", home, "keys", "generate", "k", "--algorithm", "ed25519")
    sig = tmp_path / "doc.sig"
    sign_to(capsysbinary, home, "k", document, sig)
    bad = tmp_path / "bad.sig"
    for content in (b"", b"not a signature", sig.read_bytes()[:-1], sig.read_bytes() + b"\x00"):
        bad.write_bytes(content)
        status, out, err = run(capsysbinary, "--home", home, "verify", "k", document, bad)
        assert (status, out) == (1, b"")
        assert_one_line_error(err, "malformed", str(bad))
    status, _, err = run(capsysbinary, "--home", home, "verify", "k", document, tmp_path / "nope")
    assert status == 1
    assert_one_line_error(err, "nope")
    status, _, err = run(capsysbinary, "--home", home, "sign", "k", tmp_path / "missing.txt")
    assert status == 1
    assert_one_line_error(err, "missing.txt")


def test_expected_failures_exit_1(
    capsysbinary: pytest.CaptureFixture[bytes], home: Path, document: Path, tmp_path: Path
) -> None:
    run(capsysbinary, "--home", home, "keys", "generate", "a", "--algorithm", "ed25519")
    run(capsysbinary, "--home", home, "keys", "generate", "b", "--algorithm", "ed25519")
    sig_b = tmp_path / "b.sig"
    sign_to(capsysbinary, home, "b", document, sig_b)
    cases = [
        (("verify", "a", document, sig_b), ("invalid signature", "not a version of a")),
        (("verify", "zzz", document, sig_b), ("key not found",)),
        (("keys", "generate", "a"), ("key exists",)),
        (("keys", "retire", "a", "--version", "1"), ("active version", "rotate a first")),
        (("keys", "retire", "a", "--version", "9"), ("key not found",)),
        (("keys", "generate", "bad name"), ("invalid key name",)),
        (("--passphrase-file", tmp_path / "pw", "keys", "rotate", "a"), ("pw",)),
    ]
    for argv, needles in cases:
        status, out, err = run(capsysbinary, "--home", home, *argv)
        assert (status, out) == (1, b""), argv
        assert_one_line_error(err, *needles)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["keys"],
        ["keys", "generate"],
        ["keys", "generate", "k", "--algorithm", "rsa-2048"],
        ["keys", "retire", "k"],
        ["keys", "retire", "k", "--version", "zero"],
        ["keys", "retire", "k", "--version", "0"],
        ["keys", "revoke", "k", "--version", "1"],
        ["verify", "k", "file"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(
    capsysbinary: pytest.CaptureFixture[bytes], home: Path, argv: list[str]
) -> None:
    status, _, err = run(capsysbinary, "--home", home, *argv)
    assert status == 2
    assert "usage:" in err
    assert "Traceback" not in err
    assert not home.exists()


def test_help_exits_0(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, _ = run(capsysbinary, "--help")
    assert status == 0
    assert b"keys" in out
    assert b"verify" in out


def test_passphrase_protection(
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    document: Path,
    tmp_path: Path,
) -> None:
    """A passphrase store (real Argon2id parameters): file, environment and public view."""
    pw = tmp_path / "passphrase.txt"
    pw.write_bytes(PASSPHRASE + b"\n")  # one trailing newline is stripped
    status, _, err = run(
        capsysbinary,
        "--home",
        home,
        "--passphrase-file",
        pw,
        "keys",
        "generate",
        "k",
        "--algorithm",
        "ed25519",
    )
    assert status == 0, err
    assert "key file" not in err
    assert KeyStore.protection_of(home) is Protection.PASSPHRASE
    assert not (home / KEYFILE_FILENAME).exists()

    sig = tmp_path / "doc.sig"
    status, out, err = run(
        capsysbinary, "--home", home, "--passphrase-file", pw, "sign", "k", document
    )
    assert status == 0, err
    sig.write_bytes(out)

    # No passphrase: verification and listing still work (public view) ...
    status, out, _ = run(capsysbinary, "--home", home, "verify", "k", document, sig)
    assert status == 0
    status, out, _ = run(capsysbinary, "--home", home, "keys", "list")
    assert status == 0
    assert b"protection: passphrase, public view" in out
    # ... signing and key changes do not.
    for argv in (("sign", "k", document), ("keys", "rotate", "k")):
        status, out, err = run(capsysbinary, "--home", home, *argv)
        assert (status, out) == (1, b"")
        assert_one_line_error(err, "needs the passphrase")

    wrong = tmp_path / "wrong.txt"
    wrong.write_bytes(b"not the passphrase")
    status, _, err = run(
        capsysbinary, "--home", home, "--passphrase-file", wrong, "sign", "k", document
    )
    assert status == 1
    assert_one_line_error(err, "wrong passphrase")

    monkeypatch.setenv(ENV_PASSPHRASE, PASSPHRASE.decode())
    status, out, err = run(capsysbinary, "--home", home, "keys", "rotate", "k")
    assert status == 0, err
    status, _, _ = run(capsysbinary, "--home", home, "verify", "k", document, sig)
    assert status == 0


def test_interactive_prompt(
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    document: Path,
    tmp_path: Path,
) -> None:
    """On a terminal the passphrase is prompted for -- only when a command needs it."""
    answers: list[str] = []
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return answers.pop(0)

    monkeypatch.setattr(cli_common, "stdin_is_tty", lambda: True)
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    generate = ("--home", home, "keys", "generate", "k", "--algorithm", "ed25519")

    answers[:] = ["first", "second"]
    status, _, err = run(capsysbinary, *generate)
    assert status == 1
    assert_one_line_error(err, "do not match")
    assert KeyStore.protection_of(home) is None

    answers[:] = [PASSPHRASE.decode(), PASSPHRASE.decode()]
    prompts.clear()
    status, _, err = run(capsysbinary, *generate)
    assert status == 0, err
    assert len(prompts) == 2  # new store: passphrase and confirmation
    assert KeyStore.protection_of(home) is Protection.PASSPHRASE

    answers[:] = [PASSPHRASE.decode()]
    prompts.clear()
    status, sig, err = run(capsysbinary, "--home", home, "sign", "k", document)
    assert status == 0, err
    assert len(prompts) == 1
    (tmp_path / "doc.sig").write_bytes(sig)

    prompts.clear()  # verifying needs no passphrase, so there is no prompt
    status, _, _ = run(capsysbinary, "--home", home, "verify", "k", document, tmp_path / "doc.sig")
    assert status == 0
    assert prompts == []


def test_rotate_due(capsysbinary: pytest.CaptureFixture[bytes], home: Path) -> None:
    run(capsysbinary, "--home", home, "keys", "generate", "k", "--algorithm", "ed25519")
    status, out, _ = run(
        capsysbinary, "--home", home, "keys", "rotate-due", "--max-age-days", "30", "--dry-run"
    )
    assert status == 0
    assert out.decode().strip() == "no key is older than 30 days"


def test_console_script_in_a_real_process(home: Path, document: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_HOME, ENV_PASSPHRASE)}
    # The child imports the very trustchain this test imported.
    src = str(Path(trustchain.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)

    def cli(*argv: str | Path) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "trustchain.cli", "--home", str(home), *map(str, argv)],
            capture_output=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )

    generated = cli("keys", "generate", "k", "--algorithm", "ed25519")
    assert generated.returncode == 0, generated.stderr
    signed = cli("sign", "k", document)
    assert signed.returncode == 0, signed.stderr
    sig = tmp_path / "doc.sig"
    sig.write_bytes(signed.stdout)  # binary stdout, byte for byte
    DetachedSignature.from_bytes(signed.stdout)

    verified = cli("verify", "k", document, sig)
    assert (verified.returncode, verified.stderr) == (0, b"")
    assert verified.stdout.decode().startswith("valid: k v1 (key id ")

    tampered = tmp_path / "tampered"
    tampered.write_bytes(b"x" + document.read_bytes())
    rejected = cli("verify", "k", tampered, sig)
    assert (rejected.returncode, rejected.stdout) == (1, b"")
    assert_one_line_error(rejected.stderr.decode(), "invalid signature")

    usage = cli("keys", "retire", "k")
    assert usage.returncode == 2
