"""The SQLite transparency log: persistence, SCT/STH encodings, crash safety, the CLI commands."""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

import trustchain
from trustchain.cli import ENV_HOME, ENV_PASSPHRASE
from trustchain.crypto.algorithms import SignatureAlgorithm
from trustchain.crypto.keystore import KeyStore
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.ct import merkle
from trustchain.ct.commands import (
    LOG_KEY_NAME,
    add_ct_commands,
    dispatch,
    log_path,
    open_log,
)
from trustchain.ct.log import TransparencyLog
from trustchain.ct.merkle import leaf_hash, verify_consistency, verify_inclusion
from trustchain.ct.sct import (
    SIGNED_SIZE,
    SIGNING_DOMAIN,
    SignedCertificateTimestamp,
    SignedTreeHead,
)
from trustchain.errors import (
    InvalidSignature,
    LogCorrupted,
    LogEntryNotFound,
    LogError,
    MalformedData,
    ProofRequestError,
)

HYBRID = SignatureAlgorithm.HYBRID_ED25519_FALCON_1024


@pytest.fixture(scope="module")
def signer() -> SigningKey:
    return SigningKey.generate(HYBRID)


@pytest.fixture(scope="module")
def other_signer() -> SigningKey:
    return SigningKey.generate(HYBRID)


class FakeClock:
    """Milliseconds that the test moves by hand."""

    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "ct" / "log.db"


def naive_root(log: TransparencyLog) -> bytes:
    """The root recomputed from the stored entries' bytes, ignoring every stored hash."""
    return merkle.root_from_leaf_hashes([leaf_hash(log.entry(i).data) for i in range(log.size)])


# --- the log --------------------------------------------------------------------------------------


def test_appends_persist_across_reopen(log_file: Path, signer: SigningKey) -> None:
    clock = FakeClock()
    with TransparencyLog.open(log_file, signer, clock=clock) as log:
        assert log.size == 0
        assert log.root() == merkle.EMPTY_ROOT
        first = log.append(b"certificate 0")
        clock.now += 5
        batch = log.append_many([b"certificate 1", b"certificate 2", b"certificate 3"])
        bulk = log.extend(b"bulk %d" % i for i in range(20))
        root_before = log.root()
        log_id = log.log_id
    assert first.leaf_index == 0
    assert [s.leaf_index for s in batch] == [1, 2, 3]
    assert {s.timestamp for s in batch} == {clock.now}
    assert bulk == range(4, 24)
    assert log_id == signer.public_key().key_id

    with TransparencyLog.open(log_file, None, create=False) as reader:
        assert reader.size == 24
        assert reader.root() == root_before == naive_root(reader)
        assert reader.log_id == log_id
        assert reader.public_key == signer.public_key()
        assert not reader.can_sign
        for sct, data in zip(
            [first, *batch], [b"certificate %d" % i for i in range(4)], strict=True
        ):
            sct.verify(reader.public_key, entry=data)
            assert reader.entry(sct.leaf_index).data == data
            assert reader.entry(sct.leaf_index).timestamp == sct.timestamp
            verify_inclusion(
                sct.leaf_hash,
                sct.leaf_index,
                24,
                reader.inclusion_proof(sct.leaf_index),
                root_before,
            )

    with TransparencyLog.open(log_file, signer, log_id=log_id, clock=clock) as log:
        later = log.append(b"certificate 24")
        assert later.leaf_index == 24
        sth = log.signed_tree_head()
        assert sth.tree_size == 25
        verify_consistency(24, 25, log.consistency_proof(24), root_before, sth.root_hash)
        assert log.audit() == sth.root_hash == naive_root(log)
        # An SCT can be re-issued later, for an entry logged in bulk too.
        again = log.sct(7)
        again.verify(log.public_key, entry=b"bulk 3")


def test_two_handles_on_one_file_stay_consistent(log_file: Path, signer: SigningKey) -> None:
    a = TransparencyLog.open(log_file, signer)
    b = TransparencyLog.open(log_file, signer)
    try:
        a.extend(b"a%d" % i for i in range(5))
        b.extend(b"b%d" % i for i in range(6))  # b must notice a's entries first
        sct = a.append(b"a-last")
        assert sct.leaf_index == 11
        assert a.root() == b.root() == naive_root(a)
        assert a.audit() == b.signed_tree_head().root_hash
    finally:
        a.close()
        b.close()


def test_timestamps_never_go_back(log_file: Path, signer: SigningKey) -> None:
    clock = FakeClock(10_000)
    with TransparencyLog.open(log_file, signer, clock=clock) as log:
        log.extend([b"x"])
        clock.now = 5_000  # the clock steps back
        sct = log.append(b"y")
        assert sct.timestamp == 10_000
        assert log.signed_tree_head().timestamp == 10_000
        clock.now = 20_000
        assert log.signed_tree_head().timestamp == 20_000
        clock.now = -1
        with pytest.raises(LogError):
            log.append(b"z")
        assert log.size == 2


def test_lookups(log_file: Path, signer: SigningKey) -> None:
    with TransparencyLog.open(log_file, signer) as log:
        log.extend([b"one", b"two", b"one"])
        assert log.find(leaf_hash(b"one")) == 0  # duplicates: the first
        assert log.find(leaf_hash(b"two")) == 1
        with pytest.raises(LogEntryNotFound):
            log.find(leaf_hash(b"three"))
        with pytest.raises(LogEntryNotFound):
            log.entry(3)
        with pytest.raises(LogEntryNotFound):
            log.entry(-1)
        with pytest.raises(LogEntryNotFound):
            log.sct(3)
        with pytest.raises(ProofRequestError):
            log.inclusion_proof(0, 4)
        with pytest.raises(ProofRequestError):
            log.consistency_proof(2, 4)


def test_open_refuses_the_wrong_key_or_a_missing_log(
    tmp_path: Path, log_file: Path, signer: SigningKey, other_signer: SigningKey
) -> None:
    with pytest.raises(LogError):
        TransparencyLog.open(log_file, signer, create=False)
    with pytest.raises(LogError):
        TransparencyLog.open(log_file, None)  # creating needs the key
    assert not log_file.exists()
    TransparencyLog.open(log_file, signer).close()
    with pytest.raises(LogError):
        TransparencyLog.open(log_file, other_signer)
    with pytest.raises(LogError):
        TransparencyLog.open(log_file, None, log_id=other_signer.public_key().key_id)

    not_a_log = tmp_path / "other.db"
    with sqlite3.connect(not_a_log) as conn:
        conn.execute("CREATE TABLE something (x)")
    conn.close()
    with pytest.raises(LogCorrupted):
        TransparencyLog.open(not_a_log, signer)


def test_a_log_without_its_key_only_reads(log_file: Path, signer: SigningKey) -> None:
    TransparencyLog.open(log_file, signer).close()
    with TransparencyLog.open(log_file, None) as reader:
        for attempt in (
            lambda: reader.append(b"x"),
            lambda: reader.extend([b"x"]),
            reader.signed_tree_head,
        ):
            with pytest.raises(LogError):
                attempt()
    with pytest.raises(LogError):
        reader.size  # noqa: B018 - closed


def test_audit_and_reads_catch_a_tampered_database(log_file: Path, signer: SigningKey) -> None:
    with TransparencyLog.open(log_file, signer) as log:
        log.extend(b"e%d" % i for i in range(37))
        assert log.audit() == naive_root(log)

    def tamper(sql: str, *params: object) -> None:
        with sqlite3.connect(log_file) as conn:
            conn.execute(sql, params)
        conn.close()

    tamper("UPDATE nodes SET hash = ? WHERE level = 2 AND idx = 3", b"\x00" * 32)
    with TransparencyLog.open(log_file, None) as log, pytest.raises(LogCorrupted):
        log.audit()
    tamper("DELETE FROM nodes WHERE level = 2 AND idx = 3")
    with TransparencyLog.open(log_file, None) as log:
        with pytest.raises(LogCorrupted):
            log.inclusion_proof(8, 16)  # needs the hash of leaves 12..15
        with pytest.raises(LogCorrupted):
            log.audit()
    restored = merkle.root_from_leaf_hashes([leaf_hash(b"e%d" % i) for i in range(12, 16)])
    tamper("INSERT INTO nodes VALUES (2, 3, ?)", restored)
    tamper("UPDATE entries SET data = ? WHERE idx = 30", b"forged")
    with TransparencyLog.open(log_file, None) as log, pytest.raises(LogCorrupted):
        log.audit()


# --- SCT and STH encodings ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issued(
    tmp_path_factory: pytest.TempPathFactory, signer: SigningKey
) -> tuple[SignedCertificateTimestamp, SignedTreeHead]:
    path = tmp_path_factory.mktemp("sct") / "log.db"
    with TransparencyLog.open(path, signer) as log:
        log.extend([b"first"])
        sct = log.append(b"certificate DER")
        return sct, log.signed_tree_head()


def test_sct_round_trip(
    issued: tuple[SignedCertificateTimestamp, SignedTreeHead], signer: SigningKey
) -> None:
    sct, _ = issued
    encoded = sct.to_bytes()
    assert encoded[:2] == b"\x01\x00"
    assert encoded[2:34] == signer.public_key().key_id
    assert int.from_bytes(encoded[42:50], "big") == sct.leaf_index == 1
    assert encoded[50:82] == leaf_hash(b"certificate DER")
    assert int.from_bytes(encoded[82:84], "big") == len(encoded) - 84
    parsed = SignedCertificateTimestamp.from_bytes(encoded)
    assert parsed == sct
    assert parsed.signed_data() == SIGNING_DOMAIN + encoded[:SIGNED_SIZE]
    parsed.verify(signer.public_key())
    parsed.verify(signer.public_key(), entry=b"certificate DER")


def test_sth_round_trip(
    issued: tuple[SignedCertificateTimestamp, SignedTreeHead], signer: SigningKey
) -> None:
    _, sth = issued
    encoded = sth.to_bytes()
    assert encoded[:2] == b"\x01\x01"
    assert int.from_bytes(encoded[42:50], "big") == sth.tree_size == 2
    assert encoded[50:82] == merkle.root_from_leaf_hashes(
        [leaf_hash(b"first"), leaf_hash(b"certificate DER")]
    )
    parsed = SignedTreeHead.from_bytes(encoded)
    assert parsed == sth
    parsed.verify(signer.public_key())


def _expected_error(offset: int, bit: int) -> type[Exception] | tuple[type[Exception], ...]:
    if offset in (0, 1, 82, 83):  # version, type, signature length
        return MalformedData
    if offset in (34, 42) and bit == 7:  # a 64-bit field at or above 2**63
        return MalformedData
    if offset < SIGNED_SIZE:  # log id, timestamp, index/size, hash
        return InvalidSignature
    # Inside the signature envelope: headers and encodings fail to parse, the rest to verify.
    return (InvalidSignature, MalformedData)


@pytest.mark.parametrize("which", ["sct", "sth"])
def test_every_flipped_byte_is_rejected(
    issued: tuple[SignedCertificateTimestamp, SignedTreeHead], signer: SigningKey, which: str
) -> None:
    obj = issued[0] if which == "sct" else issued[1]
    cls = type(obj)
    encoded = obj.to_bytes()
    rng = random.Random(which)
    for offset in range(len(encoded)):
        tampered = bytearray(encoded)
        bit = rng.randrange(8)
        tampered[offset] ^= 1 << bit
        with pytest.raises(_expected_error(offset, bit)):
            cls.from_bytes(bytes(tampered)).verify(signer.public_key())


@pytest.mark.parametrize("which", ["sct", "sth"])
def test_truncated_extended_or_retyped_encodings_are_malformed(
    issued: tuple[SignedCertificateTimestamp, SignedTreeHead], which: str
) -> None:
    obj = issued[0] if which == "sct" else issued[1]
    other: type[SignedCertificateTimestamp | SignedTreeHead] = (
        SignedTreeHead if which == "sct" else SignedCertificateTimestamp
    )
    encoded = obj.to_bytes()
    for length in (0, 1, 50, 83, 84, 100, len(encoded) - 1):
        with pytest.raises(MalformedData):
            type(obj).from_bytes(encoded[:length])
    with pytest.raises(MalformedData):
        type(obj).from_bytes(encoded + b"\x00")
    with pytest.raises(MalformedData):
        other.from_bytes(encoded)


def test_an_sct_signature_does_not_make_a_tree_head(
    issued: tuple[SignedCertificateTimestamp, SignedTreeHead], signer: SigningKey
) -> None:
    sct, _ = issued
    forged = SignedTreeHead(sct.log_id, sct.timestamp, sct.leaf_index, sct.leaf_hash, sct.signature)
    with pytest.raises(InvalidSignature):
        forged.verify(signer.public_key())


def test_verify_needs_the_right_log_and_entry(
    issued: tuple[SignedCertificateTimestamp, SignedTreeHead],
    signer: SigningKey,
    other_signer: SigningKey,
) -> None:
    sct, sth = issued
    with pytest.raises(InvalidSignature):
        sct.verify(other_signer.public_key())
    with pytest.raises(InvalidSignature):
        sth.verify(other_signer.public_key())
    with pytest.raises(InvalidSignature):
        sct.verify(signer.public_key(), entry=b"another certificate")
    # The right log id with a signature by another key.
    impostor = SignedCertificateTimestamp.issue(
        other_signer, timestamp=sct.timestamp, leaf_index=sct.leaf_index, leaf_hash=sct.leaf_hash
    )
    swapped = SignedCertificateTimestamp(
        sct.log_id, sct.timestamp, sct.leaf_index, sct.leaf_hash, impostor.signature
    )
    with pytest.raises(InvalidSignature):
        swapped.verify(signer.public_key())


@pytest.mark.parametrize(
    "fields",
    [
        {"log_id": b"\x00" * 31},
        {"timestamp": -1},
        {"timestamp": 1 << 63},
        {"leaf_index": -1},
        {"leaf_hash": b"\x00" * 33},
        {"version": 2},
    ],
)
def test_sct_fields_are_validated(
    issued: tuple[SignedCertificateTimestamp, SignedTreeHead], fields: dict[str, Any]
) -> None:
    sct, _ = issued
    values: dict[str, Any] = {
        "log_id": sct.log_id,
        "timestamp": sct.timestamp,
        "leaf_index": sct.leaf_index,
        "leaf_hash": sct.leaf_hash,
        "signature": sct.signature,
    }
    values.update(fields)
    with pytest.raises(MalformedData):
        SignedCertificateTimestamp(**values)


# --- crash safety ---------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from trustchain.crypto.signatures import SigningKey
    from trustchain.ct.log import TransparencyLog

    path, key_file, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
    log = TransparencyLog.open(path, SigningKey.from_bytes(Path(key_file).read_bytes()))
    print("ready", flush=True)
    i = 0
    while True:
        print(log.append(f"{prefix} {i}".encode()).to_bytes().hex(), flush=True)
        batch = [f"{prefix} {i + 1 + j}".encode() for j in range(3)]
        for sct in log.append_many(batch):
            print(sct.to_bytes().hex(), flush=True)
        i += 4
        log.extend(f"{prefix} bulk {i} {j} ".encode() * 30 for j in range(BULK))
    """
)
BULK = 1500
ROUNDS = 4


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(trustchain.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _run_and_kill(path: Path, key_file: Path, prefix: str, delay: float) -> list[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD.replace("BULK", str(BULK)),
            str(path),
            str(key_file),
            prefix,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(),
        bufsize=0,  # unbuffered: readline must not swallow what os.read should see
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        first = proc.stdout.readline() if ready else b""
        if first != b"ready\n":
            proc.kill()
            proc.wait()
            pytest.fail(f"writer did not start: {first!r} {proc.stderr.read().decode()}")
        # Drain stdout while waiting: a full pipe would block the writer, not crash it.
        received = bytearray()
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([proc.stdout], [], [], left)
            if readable:
                received += os.read(proc.stdout.fileno(), 1 << 16)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = (bytes(received) + proc.stdout.read()).decode()
    err = proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"writer ended on its own: {err}"
    return out.splitlines()


def test_sigkilled_appender_never_leaves_half_an_entry(tmp_path: Path, signer: SigningKey) -> None:
    path = tmp_path / "log.db"
    key_file = tmp_path / "log.key"
    key_file.write_bytes(signer.to_bytes())
    with TransparencyLog.open(path, signer) as log:
        before = log.append(b"before the crashes")

    rng = random.Random(20261124)
    printed: list[SignedCertificateTimestamp] = []
    for round_ in range(ROUNDS):
        lines = _run_and_kill(path, key_file, f"r{round_}", rng.uniform(0.3, 1.0))
        printed.extend(SignedCertificateTimestamp.from_bytes(bytes.fromhex(x)) for x in lines)
    assert printed, "no writer got as far as one SCT"

    with TransparencyLog.open(path, signer) as log:
        size = log.size
        stored_root = log.root()
        assert log.audit() == stored_root == naive_root(log)
        sth = log.signed_tree_head()
        assert sth.tree_size == size
        for sct in [before, *printed]:
            entry = log.entry(sct.leaf_index)
            sct.verify(log.public_key, entry=entry.data)
            assert entry.timestamp == sct.timestamp
            proof = log.inclusion_proof(sct.leaf_index, size)
            verify_inclusion(sct.leaf_hash, sct.leaf_index, size, proof, sth.root_hash)
        # Every transaction is whole: per writer, the numbered entries come in groups of
        # 1 + 3 (append, append_many) and bulk loads are complete.
        numbered: dict[str, int] = {}
        bulk: dict[tuple[str, str], int] = {}
        for i in range(1, size):
            words = log.entry(i).data.decode().split(" ")
            if words[1] == "bulk":
                bulk[(words[0], words[2])] = bulk.get((words[0], words[2]), 0) + 1
            else:
                numbered[words[0]] = numbered.get(words[0], 0) + 1
        assert all(count % 4 in (0, 1) for count in numbered.values()), numbered
        assert set(bulk.values()) <= {BULK}, bulk
        # And the log still appends.
        log.append(b"after the crashes").verify(log.public_key)


# --- the CLI commands -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_HOME, raising=False)
    monkeypatch.delenv(ENV_PASSPHRASE, raising=False)


def _parser() -> argparse.ArgumentParser:
    """The top level of ``trustchain`` as far as ``ct`` needs it."""
    parser = argparse.ArgumentParser(prog="trustchain")
    parser.add_argument("--home")
    parser.add_argument("--passphrase-file")
    add_ct_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def ct(capsys: pytest.CaptureFixture[str], home: Path, *argv: str | Path) -> tuple[int, str, str]:
    """Run ``trustchain --home HOME ct ARGV`` the way ``cli.main`` does (via ``handler``)."""
    capsys.readouterr()
    args = _parser().parse_args(["--home", str(home), "ct", *(str(a) for a in argv)])
    status: int = args.handler(args)
    out, err = capsys.readouterr()
    return status, out, err


def ct_json(capsys: pytest.CaptureFixture[str], home: Path, *argv: str | Path) -> dict[str, Any]:
    status, out, err = ct(capsys, home, *argv, "--json")
    assert status == 0, err
    obj: dict[str, Any] = json.loads(out)
    return obj


def b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, bytes]:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ct test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None)
    )
    path = tmp_path / "leaf.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _log_key(home: Path) -> VerifyKey:
    with KeyStore.open(home, create=False) as store:
        key = store.public_key(LOG_KEY_NAME, 1)
    assert isinstance(key, VerifyKey)
    return key


def test_cli_add_sth_and_proofs(
    capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path, certificate: tuple[Path, bytes]
) -> None:
    pem, der = certificate
    added = ct_json(capsys, home, "add", pem)  # creates the store, the key and the log
    assert log_path(home).exists()
    key = _log_key(home)
    sct = SignedCertificateTimestamp.from_bytes(b64(added["sct"]))
    sct.verify(key, entry=der)  # a PEM file logs its certificate's DER
    assert added["leafIdx"] == 0
    assert b64(added["leafHash"]) == leaf_hash(der)
    assert b64(added["logId"]) == key.key_id

    others = []
    for i in range(6):
        other = tmp_path / f"blob{i}"
        other.write_bytes(b"blob %d" % i)
        others.append(other)
        status, out, _ = ct(capsys, home, "add", other, "--out", tmp_path / f"blob{i}.sct")
        assert status == 0
        assert f"logged entry {i + 1}" in out
    raw = ct_json(capsys, home, "add", pem, "--raw")
    assert b64(raw["leafHash"]) == leaf_hash(pem.read_bytes())
    SignedCertificateTimestamp.from_bytes((tmp_path / "blob3.sct").read_bytes()).verify(
        key, entry=b"blob 3"
    )

    head = ct_json(capsys, home, "sth", "--out", tmp_path / "head.sth")
    sth = SignedTreeHead.from_bytes(b64(head["sth"]))
    sth.verify(key)
    assert (
        SignedTreeHead.from_bytes((tmp_path / "head.sth").read_bytes()).root_hash == sth.root_hash
    )
    assert head["treeSize"] == sth.tree_size == 8
    assert b64(head["root"]) == sth.root_hash

    # Inclusion, by index and by file, in the vectors' JSON form.
    proof = ct_json(capsys, home, "prove-inclusion", "--leaf-file", pem)
    assert proof["leafIdx"] == 0
    assert proof["treeSize"] == 8
    assert b64(proof["root"]) == sth.root_hash
    verify_inclusion(leaf_hash(der), 0, 8, [b64(p) for p in proof["proof"]], sth.root_hash)
    by_index = ct_json(capsys, home, "prove-inclusion", "--index", "4", "--tree-size", "5")
    old_root = b64(by_index["root"])
    verify_inclusion(leaf_hash(b"blob 3"), 4, 5, [b64(p) for p in by_index["proof"]], old_root)
    status, out, _ = ct(capsys, home, "prove-inclusion", "--index", "2")
    assert status == 0
    assert "entry 2 is in the tree of size 8" in out
    assert sth.root_hash.hex() in out

    # Consistency from the old size to the STH, and between two explicit sizes.
    consistency = ct_json(capsys, home, "prove-consistency", "5")
    assert consistency["size2"] == 8
    verify_consistency(5, 8, [b64(p) for p in consistency["proof"]], old_root, sth.root_hash)
    status, out, _ = ct(capsys, home, "prove-consistency", "3", "6")
    assert status == 0
    assert "the tree of size 6 extends the tree of size 3" in out


def test_cli_errors(
    capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path, certificate: tuple[Path, bytes]
) -> None:
    pem, _ = certificate
    with pytest.raises(LogError):
        ct(capsys, home, "prove-inclusion", "--index", "0")  # no log yet
    ct(capsys, home, "add", pem)
    with pytest.raises(ProofRequestError):
        ct(capsys, home, "prove-inclusion", "--index", "1")
    with pytest.raises(ProofRequestError):
        ct(capsys, home, "prove-consistency", "1", "2")
    missing = tmp_path / "never-logged"
    missing.write_bytes(b"never logged")
    with pytest.raises(LogEntryNotFound):
        ct(capsys, home, "prove-inclusion", "--leaf-file", missing)
    broken = tmp_path / "broken.pem"
    broken.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    with pytest.raises(MalformedData):
        ct(capsys, home, "add", broken)
    for argv in (
        ["prove-inclusion"],
        ["prove-inclusion", "--index", "0", "--leaf-file", str(pem)],
        ["prove-inclusion", "--index", "-1"],
        ["prove-consistency", "0"],
    ):
        with pytest.raises(SystemExit) as exc:
            _parser().parse_args(["--home", str(home), "ct", *argv])
        assert exc.value.code == 2


def test_cli_keeps_signing_with_the_logs_key_after_rotation(
    capsys: pytest.CaptureFixture[str], home: Path, certificate: tuple[Path, bytes]
) -> None:
    pem, _ = certificate
    first = ct_json(capsys, home, "add", pem, "--raw")
    with KeyStore.open(home, create=False) as store:
        rotated = store.rotate(LOG_KEY_NAME)
    assert rotated.version == 2
    second = ct_json(capsys, home, "add", pem)
    assert second["logId"] == first["logId"]
    SignedCertificateTimestamp.from_bytes(b64(second["sct"])).verify(_log_key(home))


def test_dispatch_uses_the_home_it_is_given(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, certificate: tuple[Path, bytes]
) -> None:
    pem, der = certificate
    elsewhere = tmp_path / "elsewhere"
    args = _parser().parse_args(["--home", str(tmp_path / "ignored"), "ct", "add", str(pem)])
    assert dispatch(args, elsewhere) == 0
    capsys.readouterr()
    assert not (tmp_path / "ignored").exists()
    with TransparencyLog.open(log_path(elsewhere), None, create=False) as log:
        assert log.entry(0).data == der


def test_open_log_with_a_store_already_open(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with KeyStore.open(home) as store:
        with open_log(store, home) as log:
            sct = log.append(b"from the CA")
        key = store.public_key(LOG_KEY_NAME)
        assert isinstance(key, VerifyKey)
        sct.verify(key, entry=b"from the CA")
        store.rotate(LOG_KEY_NAME)
        with open_log(store, home) as log:  # still the version that made the log
            assert log.log_id == key.key_id
            assert log.append(b"after rotation").leaf_index == 1


def test_prove_inclusion_finds_a_ca_issued_certificate(
    capsys: pytest.CaptureFixture[str], home: Path, tmp_path: Path
) -> None:
    """A certificate with embedded SCTs is found by the entry the CA logged for it."""
    from trustchain.ca import embedded_sct, hybrid

    issuer = SigningKey.generate(HYBRID)
    subject = SigningKey.generate(HYBRID).public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node.ct.hypermesh")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    entry = embedded_sct.precertificate_entry(builder, subject_key=subject)
    with KeyStore.open(home) as store, open_log(store, home) as log:
        log.extend([b"something else"])
        sct = log.append(entry)
    cert = hybrid.build_certificate(
        embedded_sct.with_scts(builder, [sct]), subject_key=subject, issuer_key=issuer
    )
    pem = tmp_path / "node.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    proof = ct_json(capsys, home, "prove-inclusion", "--leaf-file", pem)
    assert proof["leafIdx"] == sct.leaf_index == 1
    assert b64(proof["leafHash"]) == leaf_hash(entry) == sct.leaf_hash
    with pytest.raises(LogEntryNotFound):
        ct(capsys, home, "prove-inclusion", "--leaf-file", pem, "--raw")
