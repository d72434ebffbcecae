"""Tests of the key store: lifecycle, encryption at rest, tamper detection, formats."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustchain.crypto import encoding, sealed_box
from trustchain.crypto.algorithms import KemAlgorithm, SignatureAlgorithm
from trustchain.crypto.kem import KemPrivateKey, KemPublicKey
from trustchain.crypto.keystore import (
    DB_FILENAME,
    DEFAULT_KDF_PARAMS,
    INSECURE_TEST_KDF_PARAMS,
    KEYFILE_FILENAME,
    DetachedSignature,
    KdfParams,
    KeyKind,
    KeyStatus,
    KeyStore,
    Protection,
)
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.errors import (
    AlgorithmMismatch,
    DecryptionFailed,
    InvalidSignature,
    KeyExists,
    KeyNotFound,
    KeyRetired,
    KeyRevoked,
    KeyStoreCorrupted,
    KeyStoreError,
    MalformedData,
    WrongPassphrase,
)

PASSPHRASE = b"correct horse battery staple"
ED25519 = SignatureAlgorithm.ED25519
HYBRID = SignatureAlgorithm.HYBRID_ED25519_FALCON_1024
HYBRID_KEM = KemAlgorithm.HYBRID_X25519_ML_KEM_1024


def open_store(
    home: Path,
    passphrase: bytes | None = PASSPHRASE,
    *,
    create: bool = True,
    clock: Callable[[], datetime] | None = None,
) -> KeyStore:
    """A store with fast (insecure, test-only) Argon2id parameters."""
    if clock is None:
        return KeyStore.open(
            home,
            passphrase=passphrase,
            create=create,
            kdf_params=INSECURE_TEST_KDF_PARAMS,
            allow_weak_kdf=True,
        )
    return KeyStore.open(
        home,
        passphrase=passphrase,
        create=create,
        kdf_params=INSECURE_TEST_KDF_PARAMS,
        allow_weak_kdf=True,
        clock=clock,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(home: Path) -> Iterator[KeyStore]:
    with open_store(home) as opened:
        yield opened


def raw_db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / DB_FILENAME, isolation_level=None)


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


# --- basic lifecycle ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [ED25519, HYBRID])
def test_generate_sign_verify(store: KeyStore, algorithm: SignatureAlgorithm) -> None:
    info = store.generate("release", algorithm)
    assert (info.name, info.version, info.algorithm) == ("release", 1, algorithm.label)
    assert info.kind is KeyKind.SIGNING
    assert info.status is KeyStatus.ACTIVE
    assert info.created_at.tzinfo is not None
    public = store.public_key("release")
    assert isinstance(public, VerifyKey)
    assert public.algorithm is algorithm
    assert info.key_id == public.key_id
    assert store.export_public("release") == public.to_bytes()
    assert store.find(info.key_id) == info

    detached = store.sign("release", b"payload")
    assert detached.key_id == info.key_id
    assert detached.signature.algorithm is algorithm
    assert store.verify("release", b"payload", detached) == info
    # The public key alone verifies it too: the store adds no hidden context.
    public.verify(detached.signature, b"payload")

    with pytest.raises(InvalidSignature):
        store.verify("release", b"payload!", detached)


def test_signature_by_another_key_is_invalid(store: KeyStore) -> None:
    store.generate("a", ED25519)
    store.generate("b", ED25519)
    by_b = store.sign("b", b"msg")
    with pytest.raises(InvalidSignature, match="not a version of a"):
        store.verify("a", b"msg", by_b)
    # Same key id but a signature made by another key: the signature check itself fails.
    forged = DetachedSignature(key_id=store.info("a").key_id, signature=by_b.signature)
    with pytest.raises(InvalidSignature):
        store.verify("a", b"msg", forged)


def test_unknown_names_and_versions(store: KeyStore) -> None:
    store.generate("k", ED25519)
    sig = store.sign("k", b"m")
    with pytest.raises(KeyNotFound):
        store.verify("nope", b"m", sig)
    with pytest.raises(KeyNotFound):
        store.sign("nope", b"m")
    with pytest.raises(KeyNotFound):
        store.info("k", 2)
    with pytest.raises(KeyNotFound):
        store.versions("nope")
    with pytest.raises(KeyNotFound):
        store.find(bytes(32))
    with pytest.raises(KeyNotFound):
        store.rotate("nope")


def test_generate_existing_name_raises(store: KeyStore) -> None:
    store.generate("k", ED25519)
    with pytest.raises(KeyExists):
        store.generate("k", ED25519)
    store.rotate("k")
    with pytest.raises(KeyExists):
        store.generate("k", HYBRID)
    assert [i.version for i in store.versions("k")] == [1, 2]


def test_kem_key_open_sealed(store: KeyStore) -> None:
    info = store.generate("inbox", HYBRID_KEM)
    assert info.kind is KeyKind.KEM
    public = store.public_key("inbox")
    assert isinstance(public, KemPublicKey)
    assert public.key_id == info.key_id
    box = sealed_box.seal(public, b"secret", associated_data=b"ctx")
    assert store.open_sealed("inbox", box, associated_data=b"ctx") == b"secret"
    with pytest.raises(DecryptionFailed):
        store.open_sealed("inbox", box, associated_data=b"other")
    assert isinstance(store.kem_key("inbox"), KemPrivateKey)

    # A box for a key that is not one of inbox's versions.
    stranger = KemPrivateKey.generate(KemAlgorithm.X25519).public_key()
    with pytest.raises(DecryptionFailed, match="not a version of inbox"):
        store.open_sealed("inbox", sealed_box.seal(stranger, b"x"))
    # KEM keys do not sign; signing keys do not decrypt.
    with pytest.raises(AlgorithmMismatch):
        store.sign("inbox", b"m")
    with pytest.raises(AlgorithmMismatch):
        store.signing_key("inbox")
    store.generate("signer", ED25519)
    with pytest.raises(AlgorithmMismatch):
        store.kem_key("signer")


def test_kem_rotation_keeps_old_boxes_openable(store: KeyStore) -> None:
    store.generate("inbox", KemAlgorithm.X25519)
    old_public = store.public_key("inbox")
    assert isinstance(old_public, KemPublicKey)
    old_box = sealed_box.seal(old_public, b"before")
    new = store.rotate("inbox")
    assert new.algorithm == KemAlgorithm.X25519.label
    new_public = store.public_key("inbox")
    assert isinstance(new_public, KemPublicKey)
    assert new_public.key_id == new.key_id != old_public.key_id
    assert store.open_sealed("inbox", old_box) == b"before"
    assert store.open_sealed("inbox", sealed_box.seal(new_public, b"after")) == b"after"
    store.retire("inbox", 1)
    with pytest.raises(KeyRetired):
        store.open_sealed("inbox", old_box)


# --- rotation, retirement, revocation ------------------------------------------------------------


def test_rotate_keeps_old_signatures_valid(store: KeyStore) -> None:
    v1 = store.generate("release", HYBRID)
    old_sig = store.sign("release", b"v1 artefact")
    v2 = store.rotate("release")
    assert (v2.version, v2.algorithm, v2.status) == (2, HYBRID.label, KeyStatus.ACTIVE)
    assert v2.key_id != v1.key_id
    assert store.info("release", 1).status is KeyStatus.PREVIOUS
    assert store.info("release") == v2

    assert store.verify("release", b"v1 artefact", old_sig).version == 1
    new_sig = store.sign("release", b"v2 artefact")
    assert new_sig.key_id == v2.key_id
    assert store.verify("release", b"v2 artefact", new_sig).version == 2
    assert store.public_key("release").key_id == v2.key_id
    assert store.public_key("release", 1).key_id == v1.key_id
    assert [i.status for i in store.versions("release")] == [KeyStatus.PREVIOUS, KeyStatus.ACTIVE]


def test_retire(store: KeyStore) -> None:
    store.generate("k", ED25519)
    old_sig = store.sign("k", b"m")
    with pytest.raises(KeyStoreError, match="rotate k first") as excinfo:
        store.retire("k", 1)
    assert type(excinfo.value) is KeyStoreError
    store.rotate("k")
    info = store.retire("k", 1)
    assert info.status is KeyStatus.RETIRED
    assert info.retired_at is not None
    with pytest.raises(KeyRetired, match="retired"):
        store.verify("k", b"m", old_sig)
    with pytest.raises(KeyRetired):
        store.signing_key("k", 1)
    with pytest.raises(KeyRetired):
        store.public_key("k", 1)
    with pytest.raises(KeyRetired):
        store.retire("k", 1)
    # The active version is untouched.
    assert store.verify("k", b"n", store.sign("k", b"n")).version == 2
    with pytest.raises(KeyNotFound):
        store.retire("k", 7)


def test_revoke(store: KeyStore) -> None:
    store.generate("k", ED25519)
    old_sig = store.sign("k", b"m")
    store.rotate("k")
    info = store.revoke("k", 1, "laptop stolen")
    assert (info.status, info.reason) == (KeyStatus.REVOKED, "laptop stolen")
    assert info.revoked_at is not None
    with pytest.raises(KeyRevoked, match="laptop stolen"):
        store.verify("k", b"m", old_sig)
    with pytest.raises(KeyRevoked):
        store.revoke("k", 1, "again")
    with pytest.raises(KeyStoreError, match="reason"):
        store.revoke("k", 2, "  ")
    with pytest.raises(KeyStoreError, match="control"):
        store.revoke("k", 2, "bad\nreason")


def test_revoke_active_then_rotate(store: KeyStore) -> None:
    store.generate("k", ED25519)
    sig = store.sign("k", b"m")
    store.revoke("k", 1, "compromised")
    with pytest.raises(KeyRevoked, match="rotate k"):
        store.sign("k", b"m")
    with pytest.raises(KeyRevoked):
        store.verify("k", b"m", sig)
    assert store.info("k").status is KeyStatus.REVOKED
    new = store.rotate("k")
    assert (new.version, new.status) == (2, KeyStatus.ACTIVE)
    assert store.verify("k", b"m2", store.sign("k", b"m2")).version == 2
    assert store.info("k", 1).status is KeyStatus.REVOKED


def test_revoke_retired_version(store: KeyStore) -> None:
    store.generate("k", ED25519)
    sig = store.sign("k", b"m")
    store.rotate("k")
    retired = store.retire("k", 1)
    revoked = store.revoke("k", 1, "found in a leak")
    assert revoked.status is KeyStatus.REVOKED
    assert revoked.retired_at == retired.retired_at
    with pytest.raises(KeyRevoked):
        store.verify("k", b"m", sig)


# --- passphrase, key file, public view ------------------------------------------------------------


def test_wrong_passphrase(home: Path) -> None:
    with open_store(home) as store:
        store.generate("k", ED25519)
    with pytest.raises(WrongPassphrase):
        open_store(home, passphrase=b"not it")
    with pytest.raises(WrongPassphrase, match="empty"):
        open_store(home, passphrase=b"")


def test_public_view_without_passphrase(home: Path) -> None:
    with open_store(home) as store:
        store.generate("k", HYBRID)
        sig = store.sign("k", b"m")
        exported = store.export_public("k")
        listing = store.list()
    with open_store(home, passphrase=None) as view:
        assert not view.unlocked
        assert view.protection is Protection.PASSPHRASE
        assert view.list() == listing
        assert view.export_public("k") == exported
        assert view.verify("k", b"m", sig).version == 1
        with pytest.raises(InvalidSignature):
            view.verify("k", b"x", sig)
        for action in (
            lambda: view.sign("k", b"m"),
            lambda: view.signing_key("k"),
            lambda: view.generate("other", ED25519),
            lambda: view.rotate("k"),
            lambda: view.revoke("k", 1, "r"),
        ):
            with pytest.raises(WrongPassphrase, match="needs the passphrase"):
                action()


def test_keyfile_store(home: Path) -> None:
    with KeyStore.open(home) as store:
        assert store.protection is Protection.KEYFILE
        assert store.unlocked
        store.generate("k", ED25519)
        sig = store.sign("k", b"m")
    key_file = home / KEYFILE_FILENAME
    assert len(key_file.read_bytes()) == 32
    assert KeyStore.protection_of(home) is Protection.KEYFILE
    with KeyStore.open(home) as store:
        assert store.verify("k", b"m", sig).version == 1
    with pytest.raises(WrongPassphrase, match="key file"):
        KeyStore.open(home, passphrase=PASSPHRASE)
    key_file.write_bytes(bytes(32))
    with pytest.raises(WrongPassphrase):
        KeyStore.open(home)
    key_file.unlink()
    with pytest.raises(WrongPassphrase, match="missing"):
        KeyStore.open(home)


def test_existing_key_file_is_reused_not_overwritten(home: Path, tmp_path: Path) -> None:
    with KeyStore.open(home) as store:
        store.generate("k", ED25519)
        sig = store.sign("k", b"m")
    key = (home / KEYFILE_FILENAME).read_bytes()
    backup = tmp_path / "keys.db.backup"
    (home / DB_FILENAME).rename(backup)
    for leftover in home.glob(f"{DB_FILENAME}-*"):
        leftover.unlink()
    with KeyStore.open(home) as fresh:  # a new, empty store next to the old key file
        assert fresh.list() == []
    assert (home / KEYFILE_FILENAME).read_bytes() == key
    # ... so the backup of the old database still opens.
    backup.replace(home / DB_FILENAME)
    for leftover in home.glob(f"{DB_FILENAME}-*"):
        leftover.unlink()
    with KeyStore.open(home) as restored:
        assert restored.verify("k", b"m", sig).version == 1


def test_file_permissions(tmp_path: Path) -> None:
    for protection, passphrase in ((Protection.PASSPHRASE, PASSPHRASE), (Protection.KEYFILE, None)):
        home = tmp_path / protection / "nested"
        with open_store(home, passphrase=passphrase) as store:
            store.generate("k", ED25519)
            assert stat.S_IMODE(home.stat().st_mode) == 0o700
            assert stat.S_IMODE((home / DB_FILENAME).stat().st_mode) == 0o600
            wal = home / f"{DB_FILENAME}-wal"
            assert wal.exists()
            assert stat.S_IMODE(wal.stat().st_mode) == 0o600
        if protection is Protection.KEYFILE:
            assert stat.S_IMODE((home / KEYFILE_FILENAME).stat().st_mode) == 0o600
        else:
            assert not (home / KEYFILE_FILENAME).exists()
        assert not [p for p in home.iterdir() if p.name.endswith(".tmp")]


def test_missing_store_without_create(home: Path) -> None:
    with pytest.raises(KeyStoreError, match="no key store"):
        open_store(home, create=False)
    assert not home.exists()
    assert KeyStore.protection_of(home) is None


def test_closed_store_raises(home: Path) -> None:
    store = open_store(home)
    store.close()
    with pytest.raises(KeyStoreError, match="closed"):
        store.list()


def test_two_handles_see_each_others_commits(home: Path) -> None:
    with open_store(home) as first, open_store(home) as second:
        first.generate("k", ED25519)
        assert second.info("k").version == 1
        second.rotate("k")
        assert first.info("k").version == 2


def test_shared_between_threads(store: KeyStore) -> None:
    store.generate("k", ED25519)

    def work(i: int) -> int:
        if i % 5 == 0:
            return store.rotate("k").version
        detached = store.sign("k", b"m%d" % i)
        return store.verify("k", b"m%d" % i, detached).version

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(40)))
    assert all(v >= 1 for v in results)
    versions = store.versions("k")
    assert [i.version for i in versions] == list(range(1, 9 + 1))
    assert [i.status for i in versions].count(KeyStatus.ACTIVE) == 1


# --- persistence and schema ----------------------------------------------------------------------


def test_reopen_keeps_everything(home: Path) -> None:
    with open_store(home) as store:
        store.generate("sig", HYBRID)
        store.generate("ed", ED25519)
        store.generate("kem", HYBRID_KEM)
        old_sig = store.sign("sig", b"old")
        store.rotate("sig")
        store.rotate("ed")
        store.retire("ed", 1)
        store.revoke("sig", 1, "test")
        new_sig = store.sign("sig", b"new")
        kem_public = store.public_key("kem")
        assert isinstance(kem_public, KemPublicKey)
        box = sealed_box.seal(kem_public, b"boxed")
        before = store.list()
    with open_store(home) as store:
        assert store.list() == before
        assert [(i.name, i.version, i.status) for i in before] == [
            ("ed", 1, KeyStatus.RETIRED),
            ("ed", 2, KeyStatus.ACTIVE),
            ("kem", 1, KeyStatus.ACTIVE),
            ("sig", 1, KeyStatus.REVOKED),
            ("sig", 2, KeyStatus.ACTIVE),
        ]
        assert store.verify("sig", b"new", new_sig).version == 2
        with pytest.raises(KeyRevoked):
            store.verify("sig", b"old", old_sig)
        assert store.open_sealed("kem", box) == b"boxed"
        assert isinstance(store.signing_key("ed"), SigningKey)


def test_schema_and_meta(home: Path) -> None:
    with open_store(home) as store:
        store.generate("k", ED25519)
    db = raw_db(home)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        assert meta["schema_version"] == "1"
        assert meta["protection"] == "passphrase"
        assert len(meta["salt"]) == 16
        assert '"algorithm": "argon2id"' in meta["kdf"]
        row = db.execute("SELECT public_key, private_key, nonce FROM keys").fetchone()
        public, private, nonce = row
        assert len(nonce) == 12
        # Encrypted at rest: the stored blob is not the private key envelope.
        assert private[:2] != bytes([encoding.FORMAT_VERSION, encoding.Kind.SIGNING_PRIVATE_KEY])
        assert public[:2] == bytes([encoding.FORMAT_VERSION, encoding.Kind.SIGNING_PUBLIC_KEY])
    finally:
        db.close()


def test_newer_schema_refused(home: Path) -> None:
    open_store(home).close()
    db = raw_db(home)
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(KeyStoreError, match="schema version"):
        open_store(home)


def test_not_a_database(home: Path) -> None:
    home.mkdir()
    (home / DB_FILENAME).write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(KeyStoreCorrupted):
        open_store(home)


# --- Argon2id parameters -------------------------------------------------------------------------


def test_default_kdf_params_are_rfc9106_second_option(home: Path) -> None:
    assert KdfParams(time_cost=3, memory_cost_kib=65536, parallelism=4) == DEFAULT_KDF_PARAMS
    with KeyStore.open(home, passphrase=PASSPHRASE) as store:
        store.generate("k", ED25519)
    meta = dict(raw_db(home).execute("SELECT key, value FROM meta").fetchall())
    assert '"memory_cost_kib": 65536' in meta["kdf"]
    assert '"time_cost": 3' in meta["kdf"]
    assert '"parallelism": 4' in meta["kdf"]
    with pytest.raises(WrongPassphrase):
        KeyStore.open(home, passphrase=b"wrong")


def test_weak_kdf_params_need_the_test_flag(home: Path) -> None:
    with pytest.raises(KeyStoreError, match="too weak"):
        KeyStore.open(home, passphrase=PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS)
    assert not (home / DB_FILENAME).exists()
    open_store(home).close()
    # A store created with weak parameters does not open without the flag either.
    with pytest.raises(KeyStoreError, match="too weak"):
        KeyStore.open(home, passphrase=PASSPHRASE)


@pytest.mark.parametrize(
    "params",
    [
        KdfParams(time_cost=0, memory_cost_kib=65536, parallelism=4),
        KdfParams(time_cost=3, memory_cost_kib=4, parallelism=1),
        KdfParams(time_cost=3, memory_cost_kib=65536, parallelism=0),
        KdfParams(time_cost=3, memory_cost_kib=1 << 30, parallelism=4),
    ],
)
def test_invalid_kdf_params_refused_even_with_flag(params: KdfParams) -> None:
    with pytest.raises(KeyStoreError):
        params.check(allow_weak=True)


@pytest.mark.parametrize("column", ["kdf", "salt"])
def test_tampered_kdf_meta_means_wrong_passphrase(home: Path, column: str) -> None:
    open_store(home).close()
    db = raw_db(home)
    if column == "kdf":
        new = INSECURE_TEST_KDF_PARAMS.to_json().replace('"time_cost": 1', '"time_cost": 2')
        db.execute("UPDATE meta SET value = ? WHERE key = 'kdf'", (new,))
    else:
        db.execute("UPDATE meta SET value = ? WHERE key = 'salt'", (bytes(16),))
    db.close()
    with pytest.raises(WrongPassphrase):
        open_store(home)


# --- tampering at rest ----------------------------------------------------------------------------


def _flip(home: Path, column: str, name: str, version: int, index: int) -> bytes:
    db = raw_db(home)
    try:
        (value,) = db.execute(
            f"SELECT {column} FROM keys WHERE name = ? AND version = ?",  # noqa: S608
            (name, version),
        ).fetchone()
        original = bytes(value)
        tampered = bytearray(original)
        tampered[index % len(tampered)] ^= 0x01
        db.execute(
            f"UPDATE keys SET {column} = ? WHERE name = ? AND version = ?",  # noqa: S608
            (bytes(tampered), name, version),
        )
    finally:
        db.close()
    return original


def _restore(home: Path, column: str, name: str, version: int, original: bytes) -> None:
    db = raw_db(home)
    db.execute(
        f"UPDATE keys SET {column} = ? WHERE name = ? AND version = ?",  # noqa: S608
        (original, name, version),
    )
    db.close()


@pytest.fixture(scope="module")
def tamper_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("tamper") / "store"
    with open_store(home) as store:
        store.generate("victim", ED25519)
        store.generate("other", ED25519)
    return home


@settings(max_examples=40, deadline=None)
@given(index=st.integers(min_value=0, max_value=10_000))
def test_tampered_private_blob_is_detected(tamper_home: Path, index: int) -> None:
    original = _flip(tamper_home, "private_key", "victim", 1, index)
    try:
        with open_store(tamper_home) as store:
            with pytest.raises(KeyStoreCorrupted, match="fails authentication"):
                store.signing_key("victim")
            with pytest.raises(KeyStoreCorrupted):
                store.sign("victim", b"m")
            # The other key is unaffected.
            store.verify("other", b"m", store.sign("other", b"m"))
    finally:
        _restore(tamper_home, "private_key", "victim", 1, original)
    with open_store(tamper_home) as store:
        store.verify("victim", b"m", store.sign("victim", b"m"))


@settings(max_examples=12, deadline=None)
@given(index=st.integers(min_value=0, max_value=1_000))
def test_tampered_nonce_is_detected(tamper_home: Path, index: int) -> None:
    original = _flip(tamper_home, "nonce", "victim", 1, index)
    try:
        with open_store(tamper_home) as store, pytest.raises(KeyStoreCorrupted):
            store.signing_key("victim")
    finally:
        _restore(tamper_home, "nonce", "victim", 1, original)


@settings(max_examples=12, deadline=None)
@given(index=st.integers(min_value=0, max_value=1_000))
def test_tampered_public_key_is_detected(tamper_home: Path, index: int) -> None:
    original = _flip(tamper_home, "public_key", "victim", 1, index)
    try:
        # Even the public view (no passphrase) checks key id = SHA-256(public key).
        for passphrase in (PASSPHRASE, None):
            with open_store(tamper_home, passphrase=passphrase) as store:
                with pytest.raises(KeyStoreCorrupted):
                    store.public_key("victim")
                with pytest.raises(KeyStoreCorrupted):
                    store.list()
    finally:
        _restore(tamper_home, "public_key", "victim", 1, original)


def test_blob_swapped_between_rows_is_detected(store: KeyStore, home: Path) -> None:
    store.generate("a", ED25519)
    store.generate("b", ED25519)
    db = raw_db(home)
    rows = {
        name: (nonce, blob)
        for name, nonce, blob in db.execute("SELECT name, nonce, private_key FROM keys")
    }
    for name, other in (("a", "b"), ("b", "a")):
        db.execute(
            "UPDATE keys SET nonce = ?, private_key = ? WHERE name = ?", (*rows[other], name)
        )
    db.close()
    for name in ("a", "b"):
        with pytest.raises(KeyStoreCorrupted, match="another row"):
            store.signing_key(name)
        with pytest.raises(KeyStoreCorrupted):
            store.sign(name, b"m")


def test_blob_moved_to_another_version_is_detected(store: KeyStore, home: Path) -> None:
    store.generate("k", ED25519)
    store.rotate("k")
    db = raw_db(home)
    nonce, blob = db.execute(
        "SELECT nonce, private_key FROM keys WHERE name = 'k' AND version = 1"
    ).fetchone()
    db.execute(
        "UPDATE keys SET nonce = ?, private_key = ? WHERE name = 'k' AND version = 2",
        (nonce, blob),
    )
    db.close()
    with pytest.raises(KeyStoreCorrupted):
        store.sign("k", b"m")


def test_edited_status_is_detected(store: KeyStore, home: Path) -> None:
    store.generate("k", ED25519)
    sig = store.sign("k", b"m")
    store.rotate("k")
    store.revoke("k", 1, "compromised")
    db = raw_db(home)
    db.execute(
        "UPDATE keys SET status = 'previous', revoked_at = NULL, reason = NULL "
        "WHERE name = 'k' AND version = 1"
    )
    db.close()
    # Un-revoking by editing the database does not make the old signature valid again.
    with pytest.raises(KeyStoreCorrupted, match="integrity"):
        store.verify("k", b"m", sig)


def test_public_keys_swapped_between_names_is_detected(store: KeyStore, home: Path) -> None:
    store.generate("a", ED25519)
    store.generate("b", ED25519)
    sig_b = store.sign("b", b"m")
    db = raw_db(home)
    rows = {n: (k, p) for n, k, p in db.execute("SELECT name, key_id, public_key FROM keys")}
    db.execute("BEGIN")
    db.execute("UPDATE keys SET key_id = zeroblob(32) WHERE name = 'a'")
    db.execute("UPDATE keys SET key_id = ?, public_key = ? WHERE name = 'b'", rows["a"])
    db.execute("UPDATE keys SET key_id = ?, public_key = ? WHERE name = 'a'", rows["b"])
    db.execute("COMMIT")
    db.close()
    # b's signature now looks like a's -- the row MAC of an unlocked store notices.
    with pytest.raises(KeyStoreCorrupted):
        store.verify("a", b"m", sig_b)


# --- rotation policy ------------------------------------------------------------------------------


def test_due_for_rotation_with_injected_clock(home: Path) -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    clock = FakeClock(t0)
    with open_store(home, clock=clock) as store:
        store.generate("old", ED25519)
        clock.now = t0 + timedelta(days=10)
        store.generate("young", ED25519)
        clock.now = t0 + timedelta(days=30)
        assert store.info("old").created_at == t0
        due = store.due_for_rotation(timedelta(days=25))
        assert [(i.name, i.version) for i in due] == [("old", 1)]
        assert store.due_for_rotation(timedelta(days=30)) == due  # boundary is inclusive
        assert store.due_for_rotation(timedelta(days=31)) == []
        assert [i.name for i in store.due_for_rotation(timedelta(days=15))] == ["old", "young"]
        # An explicit `now` overrides the clock.
        assert store.due_for_rotation(timedelta(days=25), now=t0) == []

        rotated = store.rotate_due(timedelta(days=25))
        assert [(i.name, i.version, i.created_at) for i in rotated] == [
            ("old", 2, t0 + timedelta(days=30))
        ]
        assert store.due_for_rotation(timedelta(days=25)) == []
        clock.now = t0 + timedelta(days=36)
        assert [i.name for i in store.due_for_rotation(timedelta(days=25))] == ["young"]
        with pytest.raises(KeyStoreError):
            store.due_for_rotation(timedelta(0))


def test_naive_clock_is_refused(home: Path) -> None:
    with (
        open_store(home, clock=lambda: datetime(2030, 1, 1)) as store,
        pytest.raises(KeyStoreError, match="aware"),
    ):
        store.generate("k", ED25519)


# --- names ----------------------------------------------------------------------------------------

_NAME_CHARS = "abcXYZ019._@:/+-"
valid_names = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from("aZ9"),
    st.text(alphabet=_NAME_CHARS, max_size=20),
)


@pytest.fixture(scope="module")
def names_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyStore]:
    with open_store(tmp_path_factory.mktemp("names") / "store") as store:
        yield store


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=valid_names)
def test_valid_names_round_trip(names_store: KeyStore, name: str) -> None:
    try:
        info = names_store.generate(name, ED25519)
    except KeyExists:
        info = names_store.rotate(name)
    assert info.name == name
    assert names_store.verify(name, b"m", names_store.sign(name, b"m")) == info
    assert info in names_store.list()


@settings(max_examples=40, deadline=None)
@given(
    name=st.one_of(
        st.just(""),
        st.text(min_size=129, max_size=140, alphabet="ab"),
        st.builds(lambda s: "-" + s, st.text(alphabet="ab", max_size=5)),
        st.builds(
            lambda a, bad, b: a + bad + b,
            st.text(alphabet="ab", min_size=1, max_size=5),
            st.sampled_from([" ", "\n", "\x00", "é", "*", ";", "'", "\u202e"]),
            st.text(alphabet="ab", max_size=5),
        ),
    )
)
def test_invalid_names_refused(names_store: KeyStore, name: str) -> None:
    with pytest.raises(KeyStoreError, match="invalid key name") as excinfo:
        names_store.generate(name, ED25519)
    assert type(excinfo.value) is KeyStoreError


# --- detached signature encoding ------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyStore]:
    with open_store(tmp_path_factory.mktemp("signer") / "store") as store:
        store.generate("ed", ED25519)
        store.generate("hybrid", HYBRID)
        yield store


@settings(max_examples=25, deadline=None)
@given(message=st.binary(max_size=256), name=st.sampled_from(["ed", "hybrid"]))
def test_detached_signature_round_trip(signer: KeyStore, message: bytes, name: str) -> None:
    detached = signer.sign(name, message)
    data = detached.to_bytes()
    alg_id, body = encoding.decode(data, encoding.Kind.DETACHED_SIGNATURE)
    assert alg_id == detached.signature.algorithm
    assert body[:32] == detached.key_id
    assert body[32:] == detached.signature.to_bytes()
    parsed = DetachedSignature.from_bytes(data)
    assert parsed == detached
    assert signer.verify(name, message, parsed).name == name


@pytest.fixture(scope="module")
def encoded_signature(signer: KeyStore) -> bytes:
    return signer.sign("ed", b"message").to_bytes()


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_truncated_detached_signature(encoded_signature: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded_signature) - 1))
    with pytest.raises(MalformedData):
        DetachedSignature.from_bytes(encoded_signature[:cut])


@settings(max_examples=30, deadline=None)
@given(extra=st.binary(min_size=1, max_size=64))
def test_trailing_bytes_after_detached_signature(encoded_signature: bytes, extra: bytes) -> None:
    with pytest.raises(MalformedData):
        DetachedSignature.from_bytes(encoded_signature + extra)


def _malformed_cases(encoded: bytes) -> dict[str, bytes]:
    detached = DetachedSignature.from_bytes(encoded)
    header = encoding.HEADER
    _, kind, alg, length = header.unpack_from(encoded)
    body = encoded[header.size :]
    kind_sig = encoding.Kind.DETACHED_SIGNATURE
    return {
        "bare signature, wrong kind": detached.signature.to_bytes(),
        "wrong format version": header.pack(2, kind, alg, length) + body,
        "outer algorithm disagrees": header.pack(1, kind, HYBRID, length) + body,
        "unknown algorithm": header.pack(1, kind, 0x7777, length) + body,
        "length too long": header.pack(1, kind, alg, length + 1) + body,
        "length too short": header.pack(1, kind, alg, length - 1) + body,
        "no inner signature": encoding.encode(kind_sig, alg, detached.key_id),
        "short key id": encoding.encode(kind_sig, alg, detached.key_id[:31]),
        "inner signature with trailing byte": encoding.encode(
            kind_sig, alg, detached.key_id + body[32:] + b"\x00"
        ),
        "inner envelope is a public key": encoding.encode(
            kind_sig,
            alg,
            detached.key_id + encoding.encode(encoding.Kind.SIGNING_PUBLIC_KEY, alg, bytes(32)),
        ),
        "empty": b"",
    }


_MALFORMED_LABELS = [
    "bare signature, wrong kind",
    "wrong format version",
    "outer algorithm disagrees",
    "unknown algorithm",
    "length too long",
    "length too short",
    "no inner signature",
    "short key id",
    "inner signature with trailing byte",
    "inner envelope is a public key",
    "empty",
]


@pytest.mark.parametrize("label", _MALFORMED_LABELS)
def test_malformed_detached_signatures(encoded_signature: bytes, label: str) -> None:
    data = _malformed_cases(encoded_signature)[label]
    with pytest.raises(MalformedData):
        DetachedSignature.from_bytes(data)


def test_detached_signature_key_id_size(encoded_signature: bytes) -> None:
    signature = DetachedSignature.from_bytes(encoded_signature).signature
    with pytest.raises(MalformedData):
        DetachedSignature(key_id=b"short", signature=signature)


def test_tampered_detached_signature_never_verifies(
    signer: KeyStore, encoded_signature: bytes
) -> None:
    for index in range(len(encoded_signature)):
        tampered = bytearray(encoded_signature)
        tampered[index] ^= 0x40
        try:
            parsed = DetachedSignature.from_bytes(bytes(tampered))
        except MalformedData:
            continue
        with pytest.raises((InvalidSignature, AlgorithmMismatch)):
            signer.verify("ed", b"message", parsed)
