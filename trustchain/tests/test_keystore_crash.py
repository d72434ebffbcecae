"""Crash safety: a writer SIGKILLed at random moments never leaves a half-written key.

A child process opens the store and loops generating and rotating keys, printing one line after
each commit. The test kills it at random moments, several rounds in a row, then reopens the store
and checks that it is intact: the keys written before the children ran still work, every commit a
child reported is there and complete, and every row that exists decrypts and matches its key id.
"""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import pytest

import trustchain
from trustchain.crypto import sealed_box
from trustchain.crypto.algorithms import KemAlgorithm, SignatureAlgorithm
from trustchain.crypto.kem import KemPublicKey
from trustchain.crypto.keystore import (
    DB_FILENAME,
    INSECURE_TEST_KDF_PARAMS,
    KeyKind,
    KeyStatus,
    KeyStore,
)

PASSPHRASE = "crash test passphrase"
ROUNDS = 15
SEED = 20240601

CHILD = textwrap.dedent(
    """
    import sys
    from trustchain.crypto.algorithms import KemAlgorithm, SignatureAlgorithm
    from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore

    home, prefix, passphrase = sys.argv[1], sys.argv[2], sys.argv[3].encode()
    algorithms = [
        SignatureAlgorithm.ED25519,
        KemAlgorithm.X25519,
        SignatureAlgorithm.ED25519,
        SignatureAlgorithm.HYBRID_ED25519_FALCON_1024,
    ]
    store = KeyStore.open(
        home,
        passphrase=passphrase,
        create=False,
        kdf_params=INSECURE_TEST_KDF_PARAMS,
        allow_weak_kdf=True,
    )
    print("ready", flush=True)
    i = 0
    while True:
        name = f"{prefix}-{i}"
        store.generate(name, algorithms[i % len(algorithms)])
        print(f"committed {name} 1", flush=True)
        for _ in range(2):
            info = store.rotate(name)
            print(f"committed {name} {info.version}", flush=True)
        i += 1
    """
)


def _open(home: Path) -> KeyStore:
    return KeyStore.open(
        home,
        passphrase=PASSPHRASE.encode(),
        kdf_params=INSECURE_TEST_KDF_PARAMS,
        allow_weak_kdf=True,
    )


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child imports the very trustchain this test imported.
    src = str(Path(trustchain.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _run_and_kill(home: Path, prefix: str, delay: float) -> list[str]:
    """Start a writer, wait until it is writing, SIGKILL it after ``delay``; its output lines."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(home), prefix, PASSPHRASE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(),
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
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"writer ended on its own: {err}"
    return out.splitlines()


def test_sigkilled_writer_never_leaves_partial_keys(tmp_path: Path) -> None:
    home = tmp_path / "store"
    with _open(home) as store:
        store.generate("base-hybrid", SignatureAlgorithm.HYBRID_ED25519_FALCON_1024)
        store.generate("base-ed", SignatureAlgorithm.ED25519)
        store.rotate("base-ed")
        store.generate("base-kem", KemAlgorithm.HYBRID_X25519_ML_KEM_1024)
        signatures = {name: store.sign(name, b"before") for name in ("base-hybrid", "base-ed")}
        kem_public = store.public_key("base-kem")
        assert isinstance(kem_public, KemPublicKey)
        box = sealed_box.seal(kem_public, b"before")
        baseline = store.list()

    rng = random.Random(SEED)
    reported: dict[str, int] = defaultdict(int)
    for round_ in range(ROUNDS):
        lines = _run_and_kill(home, f"r{round_}", rng.uniform(0.0, 0.3))
        for line in lines:
            word, name, number = line.split()
            assert word == "committed"
            assert int(number) == reported[name] + 1, f"{line} out of order"
            reported[name] = int(number)
    assert sum(reported.values()) > ROUNDS, "the writers committed almost nothing"

    db = sqlite3.connect(home / DB_FILENAME)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()

    with _open(home) as store:
        # Keys from before the crashes: unchanged, and still usable.
        assert [i for i in store.list() if i.name.startswith("base-")] == baseline
        for name, detached in signatures.items():
            assert store.verify(name, b"before", detached).name == name
            assert store.verify(name, b"after", store.sign(name, b"after")).name == name
        assert store.open_sealed("base-kem", box) == b"before"

        # Every reported commit is present.
        by_name: dict[str, list[int]] = defaultdict(list)
        for info in store.list():
            by_name[info.name].append(info.version)
        for name, version in reported.items():
            assert name in by_name, f"committed key {name} is missing"
            # At most one more commit than reported: killed between COMMIT and print.
            assert version <= max(by_name[name]) <= version + 1, name

        # Every row is whole: versions contiguous, exactly one active (the newest), and each
        # private key decrypts, matches its key id and works.
        for name, versions in by_name.items():
            assert versions == list(range(1, len(versions) + 1)), name
            infos = store.versions(name)
            statuses = [i.status for i in infos]
            assert statuses[-1] is KeyStatus.ACTIVE, name
            assert all(s is KeyStatus.PREVIOUS for s in statuses[:-1]), name
            for info in infos:
                if info.kind is KeyKind.SIGNING:
                    key = store.signing_key(name, info.version)
                    assert key.public_key().key_id == info.key_id
                else:
                    kem = store.kem_key(name, info.version)
                    assert kem.public_key().key_id == info.key_id
            if infos[-1].kind is KeyKind.SIGNING:
                assert store.verify(name, b"m", store.sign(name, b"m")).version == versions[-1]
            else:
                public = store.public_key(name)
                assert isinstance(public, KemPublicKey)
                assert store.open_sealed(name, sealed_box.seal(public, b"m")) == b"m"
