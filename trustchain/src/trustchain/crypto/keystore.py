"""The TrustChain key store: named, versioned signing and KEM keys, encrypted at rest.

Layout on disk
==============

A store is a directory (its *home*, created ``0700``) holding:

``keys.db``
    One SQLite database (created ``0600``; SQLite gives its ``-wal``/``-shm`` side files the
    same mode), in WAL mode with ``synchronous=FULL``. Every mutation is one ``BEGIN IMMEDIATE``
    transaction, so a crash (even ``SIGKILL``) leaves either the whole change or none of it
    (the mechanism is :mod:`trustchain.sqlite_db`, shared by every TrustChain store).
``store.key``
    Only for stores protected by a key file (see *Protection*): 32 random bytes, ``0600``,
    written to a temporary file, fsynced and renamed into place. An existing key file is reused,
    never overwritten.

Schema (version 1)
==================

``meta(key TEXT PRIMARY KEY, value BLOB)``, rows:

=================  ==========================================================================
``schema_version`` ``"1"``
``protection``     ``"passphrase"`` or ``"keyfile"``
``kdf``            JSON: ``{"algorithm": "argon2id", "version": 19, "time_cost": t,
                   "memory_cost_kib": m, "parallelism": p}``; ``{"algorithm": "none"}`` for a
                   key-file store (the key file is already 256 uniformly random bits)
``salt``           16 random bytes (Argon2id salt and HKDF salt)
``check_nonce``    12 bytes
``check_value``    AES-256-GCM encryption of a fixed constant under the check key: a wrong
                   passphrase (or key file) fails here and raises :class:`WrongPassphrase`
=================  ==========================================================================

``keys`` (primary key ``(name, version)``; ``key_id`` unique; a partial unique index allows at
most one ``active`` row per name): ``name, version, algorithm`` (16-bit identifier from
:mod:`trustchain.crypto.algorithms`), ``kind`` (``signing``/``kem``), ``key_id`` (SHA-256 of
``public_key``), ``public_key`` (the public key envelope), ``nonce`` (12 bytes),
``private_key`` (AES-256-GCM ciphertext of the private key envelope), ``status``
(``active``/``previous``/``retired``/``revoked``), ``created_at``/``retired_at``/``revoked_at``
(ISO 8601, UTC), ``reason``, ``row_mac`` (HMAC-SHA-256 over every other public column).

Key hierarchy
=============

``master`` = Argon2id(passphrase, salt, t, m, p) -- or the 32 bytes of ``store.key``. From it,
HKDF-SHA-256 (salt = ``salt``) derives three independent 32-byte keys: the *blob key*
(AES-256-GCM for private keys), the *check key* (the check value) and the *row MAC key*.

Each private key is encrypted with a fresh random 96-bit nonce and associated data binding it
to its row -- ``"trustchain-keystore-v1/private-key" || len(name) || name || version || key_id
|| algorithm`` -- so a blob copied into another row fails to decrypt. After decryption the
private key's public half must hash to the row's ``key_id``. The row MAC additionally
authenticates the mutable public columns (status, timestamps, reason): an edited ``status``
(say, un-revoking a key) is detected whenever the store is unlocked.

Protection
==========

``passphrase``: the master key comes from Argon2id (defaults: RFC 9106's second recommended
option, t=3, m=64 MiB, p=4). ``keyfile``: for non-interactive use, the master key is a random
file next to the database. Be clear about what that buys: it protects a copy of ``keys.db``
alone (a backup, a leaked file), **not** an attacker who can read the whole home directory --
the key file is right there. Use a passphrase (or keep ``store.key`` elsewhere) for that.

A passphrase store opened without its passphrase is a *public view*: ``list``, ``info``,
``public_key``, ``export_public`` and ``verify`` work; anything touching private keys or changing
the store raises :class:`WrongPassphrase`. The public view cannot check row MACs, so it trusts
the database file as far as its file permissions go; likewise no store can detect being rolled
back to an older copy of itself (a restored backup from before a revocation).

Private keys are decrypted for each operation and dropped afterwards; the derived store keys
stay in memory while the store is open. Python cannot reliably wipe memory, so a process dump
can reveal them.
"""

from __future__ import annotations

import builtins
import enum
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import struct
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Final

from argon2.low_level import Type as Argon2Type
from argon2.low_level import hash_secret_raw

from trustchain import sqlite_db
from trustchain.crypto import encoding, sealed_box
from trustchain.crypto.aead import AeadKey, hkdf
from trustchain.crypto.algorithms import AeadAlgorithm, KemAlgorithm, SignatureAlgorithm, from_id
from trustchain.crypto.kem import KemPrivateKey, KemPublicKey
from trustchain.crypto.signatures import Signature, SigningKey, VerifyKey
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
    UnknownAlgorithm,
    WrongPassphrase,
)
from trustchain.files import write_atomically

__all__ = [
    "DB_FILENAME",
    "DEFAULT_KDF_PARAMS",
    "INSECURE_TEST_KDF_PARAMS",
    "KEYFILE_FILENAME",
    "SCHEMA_VERSION",
    "DetachedSignature",
    "KdfParams",
    "KeyInfo",
    "KeyKind",
    "KeyStatus",
    "KeyStore",
    "Protection",
]

SCHEMA_VERSION: Final = 1
DB_FILENAME: Final = "keys.db"
KEYFILE_FILENAME: Final = "store.key"
KEY_ID_SIZE: Final = 32
SALT_SIZE: Final = 16
MASTER_KEY_SIZE: Final = 32

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:/+-]{0,127}")
_MAX_REASON = 1000
_CHECK_CONSTANT = b"trustchain-keystore-v1/check-value"
_AAD_LABEL = b"trustchain-keystore-v1/private-key"
_MAC_LABEL = b"trustchain-keystore-v1/row"


class KeyStatus(enum.StrEnum):
    """Lifecycle of one key version."""

    #: The version that signs; exactly one per name unless the newest was revoked.
    ACTIVE = "active"
    #: An older version: still verifies and decrypts, no longer the default for signing.
    PREVIOUS = "previous"
    #: Withdrawn from service: may no longer sign, verify or decrypt.
    RETIRED = "retired"
    #: Compromised: nothing made with it is trusted.
    REVOKED = "revoked"


class KeyKind(enum.StrEnum):
    SIGNING = "signing"
    KEM = "kem"


class Protection(enum.StrEnum):
    PASSPHRASE = "passphrase"  # noqa: S105 - a label, not a secret
    KEYFILE = "keyfile"


@dataclass(frozen=True)
class KdfParams:
    """Argon2id parameters (version 0x13). Defaults: RFC 9106 section 4, second option."""

    time_cost: int = 3
    memory_cost_kib: int = 64 * 1024
    parallelism: int = 4

    #: Below these, a store is refused unless the caller passes ``allow_weak_kdf=True``.
    MIN_TIME_COST: ClassVar[int] = 2
    MIN_MEMORY_KIB: ClassVar[int] = 19 * 1024
    #: Hard bounds (also protect against a tampered ``meta`` asking for absurd work).
    MAX_TIME_COST: ClassVar[int] = 64
    MAX_MEMORY_KIB: ClassVar[int] = 4 * 1024 * 1024
    MAX_PARALLELISM: ClassVar[int] = 64

    def check(self, *, allow_weak: bool) -> None:
        """Raise :class:`KeyStoreError` for invalid parameters, or weak ones without the flag."""
        for field, value in (
            ("time_cost", self.time_cost),
            ("memory_cost_kib", self.memory_cost_kib),
            ("parallelism", self.parallelism),
        ):
            if type(value) is not int or value < 1:
                raise KeyStoreError(f"Argon2id {field} must be a positive integer, got {value!r}")
        if self.time_cost > self.MAX_TIME_COST or self.parallelism > self.MAX_PARALLELISM:
            raise KeyStoreError(f"Argon2id parameters out of range: {self}")
        if not 8 * self.parallelism <= self.memory_cost_kib <= self.MAX_MEMORY_KIB:
            raise KeyStoreError(
                f"Argon2id memory_cost_kib must be between 8 * parallelism and "
                f"{self.MAX_MEMORY_KIB}, got {self.memory_cost_kib}"
            )
        if not allow_weak and (
            self.time_cost < self.MIN_TIME_COST or self.memory_cost_kib < self.MIN_MEMORY_KIB
        ):
            raise KeyStoreError(
                f"Argon2id parameters too weak ({self}); need time_cost >= {self.MIN_TIME_COST} "
                f"and memory_cost_kib >= {self.MIN_MEMORY_KIB} (allow_weak_kdf=True is for tests)"
            )

    def to_json(self) -> str:
        return json.dumps(
            {
                "algorithm": "argon2id",
                "version": 19,
                "time_cost": self.time_cost,
                "memory_cost_kib": self.memory_cost_kib,
                "parallelism": self.parallelism,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> KdfParams:
        try:
            obj = json.loads(text)
            if obj["algorithm"] != "argon2id" or obj["version"] != 19:
                raise KeyStoreCorrupted(f"unsupported key derivation {text!r}")
            return cls(
                time_cost=obj["time_cost"],
                memory_cost_kib=obj["memory_cost_kib"],
                parallelism=obj["parallelism"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyStoreCorrupted(f"unreadable key derivation parameters {text!r}") from exc


DEFAULT_KDF_PARAMS: Final = KdfParams()
#: Fast and worthless: only with ``allow_weak_kdf=True``, only in tests.
INSECURE_TEST_KDF_PARAMS: Final = KdfParams(time_cost=1, memory_cost_kib=8, parallelism=1)


@dataclass(frozen=True)
class KeyInfo:
    """Public facts about one key version (no key material)."""

    name: str
    version: int
    algorithm: str
    kind: KeyKind
    key_id: bytes
    status: KeyStatus
    created_at: datetime
    retired_at: datetime | None = None
    revoked_at: datetime | None = None
    reason: str | None = None

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    @property
    def label(self) -> str:
        """``name vN``, as messages spell it."""
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class DetachedSignature:
    """A signature plus the id of the key that made it.

    Encoding: a :attr:`~trustchain.crypto.encoding.Kind.DETACHED_SIGNATURE` envelope whose
    algorithm field is the signature's algorithm identifier and whose body is
    ``key_id (32 bytes) || signature envelope``. Parsing is strict: the outer and inner
    algorithms must agree and nothing may follow the inner envelope.
    """

    key_id: bytes
    signature: Signature

    def __post_init__(self) -> None:
        if len(self.key_id) != KEY_ID_SIZE:
            raise MalformedData(f"key id must be {KEY_ID_SIZE} bytes, got {len(self.key_id)}")

    @property
    def algorithm(self) -> SignatureAlgorithm:
        return self.signature.algorithm

    def to_bytes(self) -> bytes:
        return encoding.encode(
            encoding.Kind.DETACHED_SIGNATURE,
            self.signature.algorithm,
            self.key_id + self.signature.to_bytes(),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DetachedSignature:
        alg_id, body = encoding.decode(bytes(data), encoding.Kind.DETACHED_SIGNATURE)
        try:
            algorithm = from_id(SignatureAlgorithm, alg_id)
        except UnknownAlgorithm as exc:
            raise MalformedData(f"detached signature names an unknown algorithm: {exc}") from exc
        if len(body) < KEY_ID_SIZE:
            raise MalformedData(
                f"truncated detached signature: {len(body)} body bytes, key id needs {KEY_ID_SIZE}"
            )
        inner = body[KEY_ID_SIZE:]
        inner_alg, _ = encoding.decode(inner, encoding.Kind.SIGNATURE)
        if inner_alg != algorithm:
            raise MalformedData(
                f"detached signature declares {algorithm.label} but carries a signature of "
                f"algorithm 0x{inner_alg:04x}"
            )
        return cls(key_id=body[:KEY_ID_SIZE], signature=Signature.from_bytes(inner))


# --- helpers --------------------------------------------------------------------------------------

Algorithm = SignatureAlgorithm | KemAlgorithm


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _format_time(value: datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise KeyStoreError(f"timestamps must be timezone-aware, got naive {value!r}")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_time(text: object, column: str) -> datetime:
    if not isinstance(text, str):
        raise KeyStoreCorrupted(f"{column} is not a timestamp: {text!r}")
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise KeyStoreCorrupted(f"{column} is not a timestamp: {text!r}") from exc
    if value.tzinfo is None:
        raise KeyStoreCorrupted(f"{column} lacks a time zone: {text!r}")
    return value.astimezone(UTC)


def _optional_time(text: object, column: str) -> datetime | None:
    return None if text is None else _parse_time(text, column)


def _algorithm_of(alg_id: int) -> Algorithm:
    try:
        return from_id(SignatureAlgorithm, alg_id)
    except UnknownAlgorithm:
        return from_id(KemAlgorithm, alg_id)


def _kind_of(algorithm: Algorithm) -> KeyKind:
    return KeyKind.SIGNING if isinstance(algorithm, SignatureAlgorithm) else KeyKind.KEM


def _check_name(name: str) -> None:
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise KeyStoreError(
            f"invalid key name {name!r}: use 1-128 of A-Z a-z 0-9 . _ @ : / + -, "
            "starting with a letter or digit"
        )


def _check_version(version: int) -> None:
    if type(version) is not int or version < 1:
        raise KeyStoreError(f"key versions are integers >= 1, got {version!r}")


def _u16(value: int) -> bytes:
    return struct.pack(">H", value)


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def _field(value: bytes | str | None) -> bytes:
    """Unambiguous encoding of an optional field: 0x00 for NULL, else 0x01 || u32 len || bytes."""
    if value is None:
        return b"\x00"
    raw = value.encode() if isinstance(value, str) else value
    return b"\x01" + _u32(len(raw)) + raw


def _private_aad(name: str, version: int, key_id: bytes, algorithm: int) -> bytes:
    raw_name = name.encode()
    return _AAD_LABEL + _u32(len(raw_name)) + raw_name + _u32(version) + key_id + _u16(algorithm)


@contextmanager
def _sqlite_errors() -> Iterator[None]:
    """Translate SQLite failures into the key store's typed errors."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise KeyStoreError(f"key store constraint violated: {exc}") from exc
    except (sqlite3.OperationalError, sqlite3.ProgrammingError, sqlite3.InterfaceError) as exc:
        raise KeyStoreError(f"key store database error: {exc}") from exc
    except sqlite3.DatabaseError as exc:  # "file is not a database", malformed pages...
        raise KeyStoreCorrupted(f"key store database is damaged: {exc}") from exc


_SCHEMA = (
    """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID""",
    """
CREATE TABLE keys (
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    algorithm   INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('signing', 'kem')),
    key_id      BLOB    NOT NULL UNIQUE CHECK (length(key_id) = 32),
    public_key  BLOB    NOT NULL,
    nonce       BLOB    NOT NULL CHECK (length(nonce) = 12),
    private_key BLOB    NOT NULL,
    status      TEXT    NOT NULL
                CHECK (status IN ('active', 'previous', 'retired', 'revoked')),
    created_at  TEXT    NOT NULL,
    retired_at  TEXT,
    revoked_at  TEXT,
    reason      TEXT,
    row_mac     BLOB    NOT NULL CHECK (length(row_mac) = 32),
    PRIMARY KEY (name, version)
) WITHOUT ROWID""",
    "CREATE UNIQUE INDEX keys_one_active ON keys (name) WHERE status = 'active'",
)

_COLUMNS = (
    "name, version, algorithm, kind, key_id, public_key, nonce, private_key, status, "
    "created_at, retired_at, revoked_at, reason, row_mac"
)
_INSERT_SQL = f"INSERT INTO keys ({_COLUMNS}) VALUES ({', '.join('?' * 14)})"  # noqa: S608


def _select_sql(tail: str) -> str:
    """``SELECT <every column> FROM keys <tail>``; callers pass only literal ``tail``s."""
    return f"SELECT {_COLUMNS} FROM keys {tail}"  # noqa: S608 - constant columns, literal tail


@dataclass(frozen=True, repr=False)
class _Row:
    """One ``keys`` row, type-checked (not yet authenticated)."""

    name: str
    version: int
    algorithm: Algorithm
    kind: KeyKind
    key_id: bytes
    public_key: bytes
    nonce: bytes
    private_key: bytes
    status: KeyStatus
    created_at: datetime
    retired_at: datetime | None
    revoked_at: datetime | None
    reason: str | None
    row_mac: bytes

    # Raw timestamp text, as MACed (re-formatting could differ from what was stored).
    created_text: str
    retired_text: str | None
    revoked_text: str | None

    @classmethod
    def from_sql(cls, row: tuple[Any, ...]) -> _Row:
        (name, version, alg_id, kind, key_id, public_key, nonce, private_key, status) = row[:9]
        created, retired, revoked, reason, row_mac = row[9:]
        label = f"{name!r} v{version!r}"
        if not isinstance(name, str) or type(version) is not int:
            raise KeyStoreCorrupted(f"key row {label} has a malformed name or version")
        for column, value in (
            ("key_id", key_id),
            ("public_key", public_key),
            ("nonce", nonce),
            ("private_key", private_key),
            ("row_mac", row_mac),
        ):
            if not isinstance(value, bytes):
                raise KeyStoreCorrupted(f"key row {label}: {column} is not a blob")
        if type(alg_id) is not int:
            raise KeyStoreCorrupted(f"key row {label}: algorithm is not an integer")
        try:
            algorithm = _algorithm_of(alg_id)
            kind_value = KeyKind(kind)
            status_value = KeyStatus(status)
        except (UnknownAlgorithm, ValueError) as exc:
            raise KeyStoreCorrupted(f"key row {label}: {exc}") from exc
        if kind_value != _kind_of(algorithm):
            raise KeyStoreCorrupted(f"key row {label}: kind {kind} contradicts its algorithm")
        if reason is not None and not isinstance(reason, str):
            raise KeyStoreCorrupted(f"key row {label}: reason is not text")
        return cls(
            name=name,
            version=version,
            algorithm=algorithm,
            kind=kind_value,
            key_id=key_id,
            public_key=public_key,
            nonce=nonce,
            private_key=private_key,
            status=status_value,
            created_at=_parse_time(created, "created_at"),
            retired_at=_optional_time(retired, "retired_at"),
            revoked_at=_optional_time(revoked, "revoked_at"),
            reason=reason,
            row_mac=row_mac,
            created_text=created,
            retired_text=retired,
            revoked_text=revoked,
        )

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def info(self) -> KeyInfo:
        return KeyInfo(
            name=self.name,
            version=self.version,
            algorithm=self.algorithm.label,
            kind=self.kind,
            key_id=self.key_id,
            status=self.status,
            created_at=self.created_at,
            retired_at=self.retired_at,
            revoked_at=self.revoked_at,
            reason=self.reason,
        )

    def require_usable(self, purpose: str) -> None:
        """Raise :class:`KeyRevoked` / :class:`KeyRetired` if this version may not ``purpose``."""
        if self.status is KeyStatus.REVOKED:
            why = f": {self.reason}" if self.reason else ""
            raise KeyRevoked(f"key {self.label} is revoked{why}; it may not {purpose}")
        if self.status is KeyStatus.RETIRED:
            raise KeyRetired(f"key {self.label} is retired; it may no longer {purpose}")


def _mac_input(
    *,
    name: str,
    version: int,
    algorithm: int,
    kind: str,
    key_id: bytes,
    public_key: bytes,
    status: str,
    created_at: str,
    retired_at: str | None,
    revoked_at: str | None,
    reason: str | None,
) -> bytes:
    return b"".join(
        (
            _MAC_LABEL,
            _field(name),
            _u32(version),
            _u16(algorithm),
            _field(kind),
            _field(key_id),
            _field(public_key),
            _field(status),
            _field(created_at),
            _field(retired_at),
            _field(revoked_at),
            _field(reason),
        )
    )


@dataclass(frozen=True, repr=False)
class _Secrets:
    """Keys derived from the master key; present only when the store is unlocked."""

    blob: AeadKey
    check: AeadKey
    mac: bytes

    @classmethod
    def derive(cls, master: bytes, salt: bytes) -> _Secrets:
        def sub(info: bytes) -> bytes:
            return hkdf(master, salt=salt, info=b"trustchain-keystore-v1/" + info)

        return cls(
            blob=AeadKey(AeadAlgorithm.AES_256_GCM, sub(b"blob-key")),
            check=AeadKey(AeadAlgorithm.AES_256_GCM, sub(b"check-key")),
            mac=sub(b"row-mac-key"),
        )

    def row_mac(self, **fields: Any) -> bytes:
        return hmac.new(self.mac, _mac_input(**fields), hashlib.sha256).digest()


def _argon2(passphrase: bytes, salt: bytes, params: KdfParams) -> bytes:
    return hash_secret_raw(
        secret=passphrase,
        salt=salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_cost_kib,
        parallelism=params.parallelism,
        hash_len=MASTER_KEY_SIZE,
        type=Argon2Type.ID,
        version=19,
    )


def _write_keyfile(path: Path, key: bytes) -> None:
    """Create ``path`` (0600) holding ``key``, all or nothing."""
    write_atomically(path, key, mode=0o600)


def _read_keyfile(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WrongPassphrase(
            f"this key store is protected by the key file {path}, which is missing"
        ) from None
    except OSError as exc:
        raise KeyStoreError(f"cannot read key file {path}: {exc.strerror}") from exc
    if len(data) != MASTER_KEY_SIZE:
        raise WrongPassphrase(f"key file {path} holds {len(data)} bytes, not {MASTER_KEY_SIZE}")
    return data


# --- the store ------------------------------------------------------------------------------------


class KeyStore(sqlite_db.ConnectionOwner):
    """Named, versioned keys in one SQLite file; see the module docstring for formats.

    Create with :meth:`open`. A store may be shared by threads (its connection is guarded by a
    lock) and by processes (SQLite locking; each mutation is one immediate transaction).
    """

    def __init__(
        self,
        *,
        home: Path,
        conn: sqlite3.Connection,
        protection: Protection,
        secrets_: _Secrets | None,
        clock: Callable[[], datetime],
    ) -> None:
        super().__init__(conn)
        self._home = home
        self._protection = protection
        self._secrets = secrets_
        self._clock = clock

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        home: Path | str,
        *,
        passphrase: bytes | None = None,
        create: bool = True,
        kdf_params: KdfParams = DEFAULT_KDF_PARAMS,
        allow_weak_kdf: bool = False,
        clock: Callable[[], datetime] = _utc_now,
    ) -> KeyStore:
        """Open (or, with ``create``, create) the store in ``home``.

        New store: protected by ``passphrase`` (Argon2id with ``kdf_params``) or, when
        ``passphrase`` is None, by a fresh key file. Existing store: its recorded protection
        and parameters apply; a passphrase store opened with ``passphrase=None`` is a
        public view. Raises :class:`WrongPassphrase` when the secret does not open it.
        """
        home = Path(home).expanduser()
        if passphrase is not None:
            if not passphrase:
                raise WrongPassphrase("the passphrase is empty")
            passphrase = bytes(passphrase)
        db_path = home / DB_FILENAME
        if not db_path.exists():
            if not create:
                raise KeyStoreError(f"no key store at {home}")
            if passphrase is not None:
                kdf_params.check(allow_weak=allow_weak_kdf)
            _create_files(home, db_path)
        with _sqlite_errors():
            conn = sqlite_db.connect(db_path, error=KeyStoreError)
        try:
            with _sqlite_errors():
                meta = _read_meta(conn)
                if meta is None:
                    if not create:
                        raise KeyStoreError(f"no key store at {home} (database not initialised)")
                    if passphrase is not None:
                        kdf_params.check(allow_weak=allow_weak_kdf)
                    meta = _initialise(conn, home, passphrase, kdf_params)
            protection, store_secrets = _unlock(
                home, meta, passphrase, allow_weak_kdf=allow_weak_kdf
            )
        except BaseException:
            conn.close()
            raise
        return cls(home=home, conn=conn, protection=protection, secrets_=store_secrets, clock=clock)

    @staticmethod
    def protection_of(home: Path | str) -> Protection | None:
        """How the store in ``home`` is protected, or None if there is no (initialised) store."""
        db_path = Path(home).expanduser() / DB_FILENAME
        if not db_path.exists():
            return None
        with _sqlite_errors():
            conn = sqlite_db.connect(db_path, error=KeyStoreError)
        try:
            with _sqlite_errors():
                meta = _read_meta(conn)
        finally:
            conn.close()
        if meta is None:
            return None
        return _protection_from_meta(meta)

    def __repr__(self) -> str:
        state = "unlocked" if self._secrets is not None else "public view"
        return f"<KeyStore {str(self._home)!r} {self._protection} {state}>"

    @property
    def home(self) -> Path:
        return self._home

    @property
    def protection(self) -> Protection:
        return self._protection

    @property
    def unlocked(self) -> bool:
        """True when private keys are available (False for a public view)."""
        return self._secrets is not None

    # -- queries ---------------------------------------------------------------------------------

    def list(self) -> builtins.list[KeyInfo]:
        """Every version of every key, by name then version."""
        rows = self._select(_select_sql("ORDER BY name, version"))
        return [row.info() for row in rows]

    def versions(self, name: str) -> builtins.list[KeyInfo]:
        """Every version of ``name``, oldest first; :class:`KeyNotFound` if there are none."""
        return [row.info() for row in self._rows_of(name)]

    def info(self, name: str, version: int | None = None) -> KeyInfo:
        """``name``'s given version, or its active one (its newest if none is active)."""
        if version is not None:
            return self._row(name, version).info()
        rows = self._rows_of(name)
        active = [row for row in rows if row.status is KeyStatus.ACTIVE]
        return (active or rows)[-1].info()

    def find(self, key_id: bytes) -> KeyInfo:
        """The key version whose id is ``key_id``; :class:`KeyNotFound` if none."""
        rows = self._select(_select_sql("WHERE key_id = ?"), (bytes(key_id),))
        if not rows:
            raise KeyNotFound(f"no key with id {bytes(key_id).hex()}")
        return rows[0].info()

    def public_key(self, name: str, version: int | None = None) -> VerifyKey | KemPublicKey:
        """The public key of ``name`` (active version by default)."""
        row = self._pick(name, version)
        row.require_usable("be used")
        return self._public(row)

    def export_public(self, name: str, version: int | None = None) -> bytes:
        """The public key envelope of ``name`` (active version by default)."""
        return self.public_key(name, version).to_bytes()

    def signing_key(self, name: str, version: int | None = None) -> SigningKey:
        """Decrypt ``name``'s signing key (active version by default)."""
        row = self._pick(name, version)
        self._require_kind(row, KeyKind.SIGNING)
        row.require_usable("sign")
        key = self._private(row)
        if not isinstance(key, SigningKey):  # pragma: no cover - kind checked above
            raise KeyStoreCorrupted(f"{row.label} does not hold a signing key")
        return key

    def kem_key(self, name: str, version: int | None = None) -> KemPrivateKey:
        """Decrypt ``name``'s KEM private key (active version by default)."""
        row = self._pick(name, version)
        self._require_kind(row, KeyKind.KEM)
        row.require_usable("decrypt")
        key = self._private(row)
        if not isinstance(key, KemPrivateKey):  # pragma: no cover - kind checked above
            raise KeyStoreCorrupted(f"{row.label} does not hold a KEM key")
        return key

    # -- signing, verifying, opening ------------------------------------------------------------

    def sign(self, name: str, message: bytes) -> DetachedSignature:
        """Sign ``message`` with ``name``'s active version."""
        row = self._active_row(name)
        self._require_kind(row, KeyKind.SIGNING)
        row.require_usable("sign")
        key = self._private(row)
        if not isinstance(key, SigningKey):  # pragma: no cover - kind checked above
            raise KeyStoreCorrupted(f"{row.label} does not hold a signing key")
        return DetachedSignature(key_id=row.key_id, signature=key.sign(bytes(message)))

    def verify(self, name: str, message: bytes, detached: DetachedSignature) -> KeyInfo:
        """Check ``detached`` over ``message`` against the version of ``name`` it names.

        Returns that version's :class:`KeyInfo`. Raises :class:`KeyNotFound` (no key ``name``),
        :class:`InvalidSignature` (bad signature, or made by a key that is not ``name``'s),
        :class:`KeyRetired` / :class:`KeyRevoked` (the version may no longer verify).
        """
        row = self._row_by_id(name, detached.key_id)
        if row is None:
            raise InvalidSignature(
                f"signature was made by key id {detached.key_id.hex()[:16]}..., "
                f"which is not a version of {name}"
            )
        self._require_kind(row, KeyKind.SIGNING)
        row.require_usable("verify")
        public = self._public(row)
        if not isinstance(public, VerifyKey):  # pragma: no cover - kind checked above
            raise KeyStoreCorrupted(f"{row.label} does not hold a verify key")
        try:
            public.verify(detached.signature, bytes(message))
        except InvalidSignature as exc:
            raise InvalidSignature(f"signature by {row.label} does not verify: {exc}") from exc
        return row.info()

    def open_sealed(self, name: str, sealed: bytes, *, associated_data: bytes = b"") -> bytes:
        """Open a sealed box addressed to one of ``name``'s KEM key versions."""
        key_id = sealed_box.recipient_key_id(sealed)
        row = self._row_by_id(name, key_id)
        if row is None:
            raise DecryptionFailed(
                f"sealed box is addressed to key id {key_id.hex()[:16]}..., "
                f"which is not a version of {name}"
            )
        self._require_kind(row, KeyKind.KEM)
        row.require_usable("decrypt")
        key = self._private(row)
        if not isinstance(key, KemPrivateKey):  # pragma: no cover - kind checked above
            raise KeyStoreCorrupted(f"{row.label} does not hold a KEM key")
        return sealed_box.open_sealed(key, sealed, associated_data=associated_data)

    # -- mutations ------------------------------------------------------------------------------

    def generate(
        self,
        name: str,
        algorithm: Algorithm = SignatureAlgorithm.HYBRID_ED25519_FALCON_1024,
    ) -> KeyInfo:
        """Create key ``name`` version 1; :class:`KeyExists` if the name is taken."""
        _check_name(name)
        store_secrets = self._require_unlocked(f"generating {name}")
        private, public = _new_keypair(algorithm)
        now = self._now()
        with self._write() as conn:
            exists = conn.execute("SELECT 1 FROM keys WHERE name = ? LIMIT 1", (name,)).fetchone()
            if exists is not None:
                raise KeyExists(f"key {name} already exists; rotate it instead")
            self._insert(conn, store_secrets, name, 1, algorithm, private, public, now)
        return self._row(name, 1).info()

    def rotate(self, name: str) -> KeyInfo:
        """Add version n+1 of ``name`` (same algorithm) and make it active.

        The previous active version becomes ``previous``: still valid for verify/decrypt.
        """
        store_secrets = self._require_unlocked(f"rotating {name}")
        algorithm = self._rows_of(name)[-1].algorithm
        private, public = _new_keypair(algorithm)
        now = self._now()
        with self._write() as conn:
            rows = self._rows_in(conn, name)
            if not rows:
                raise KeyNotFound(f"no key named {name}")
            if rows[-1].algorithm != algorithm:  # pragma: no cover - algorithms never change
                raise KeyStoreCorrupted(f"{name} changed algorithm during rotation")
            version = rows[-1].version + 1
            for row in rows:
                self._authenticate(row)
                if row.status is KeyStatus.ACTIVE:
                    self._update_status(conn, store_secrets, row, KeyStatus.PREVIOUS)
            self._insert(conn, store_secrets, name, version, algorithm, private, public, now)
        return self._row(name, version).info()

    def retire(self, name: str, version: int) -> KeyInfo:
        """Withdraw a non-active version: it may no longer sign, verify or decrypt."""
        _check_version(version)
        store_secrets = self._require_unlocked(f"retiring {name} v{version}")
        now = self._now()
        with self._write() as conn:
            row = self._row_in(conn, name, version)
            self._authenticate(row)
            if row.status is KeyStatus.ACTIVE:
                raise KeyStoreError(
                    f"{row.label} is the active version; rotate {name} first, then retire it"
                )
            row.require_usable("be retired again")
            self._update_status(
                conn, store_secrets, row, KeyStatus.RETIRED, retired_at=_format_time(now)
            )
        return self._row(name, version).info()

    def revoke(self, name: str, version: int, reason: str) -> KeyInfo:
        """Mark a version compromised. Any version may be revoked, including the active one
        (``name`` then has no active version until it is rotated)."""
        _check_version(version)
        if not isinstance(reason, str) or not reason.strip():
            raise KeyStoreError("a revocation needs a reason")
        if len(reason) > _MAX_REASON or any(unicodedata.category(c) == "Cc" for c in reason):
            raise KeyStoreError(
                f"revocation reason must be at most {_MAX_REASON} characters without control "
                "characters"
            )
        store_secrets = self._require_unlocked(f"revoking {name} v{version}")
        now = self._now()
        with self._write() as conn:
            row = self._row_in(conn, name, version)
            self._authenticate(row)
            if row.status is KeyStatus.REVOKED:
                raise KeyRevoked(f"{row.label} is already revoked")
            self._update_status(
                conn,
                store_secrets,
                row,
                KeyStatus.REVOKED,
                retired_at=row.retired_text,
                revoked_at=_format_time(now),
                reason=reason,
            )
        return self._row(name, version).info()

    def due_for_rotation(
        self, max_age: timedelta, now: datetime | None = None
    ) -> builtins.list[KeyInfo]:
        """Active versions created at least ``max_age`` before ``now`` (default: the clock)."""
        if max_age <= timedelta(0):
            raise KeyStoreError(f"max_age must be positive, got {max_age}")
        current = self._now() if now is None else now
        if current.tzinfo is None:
            raise KeyStoreError("now must be timezone-aware")
        rows = self._select(_select_sql("WHERE status = 'active' ORDER BY name, version"))
        return [row.info() for row in rows if current - row.created_at >= max_age]

    def rotate_due(self, max_age: timedelta, now: datetime | None = None) -> builtins.list[KeyInfo]:
        """Rotate every key :meth:`due_for_rotation`; returns the new versions."""
        return [self.rotate(info.name) for info in self.due_for_rotation(max_age, now)]

    # -- internals: reading ---------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise KeyStoreError("the key store is closed")
        return self._conn

    def _now(self) -> datetime:
        value = self._clock()
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise KeyStoreError(f"the clock must return an aware datetime, got {value!r}")
        return value.astimezone(UTC)

    def _select(self, sql: str, params: tuple[object, ...] = ()) -> builtins.list[_Row]:
        with self._lock, _sqlite_errors():
            raw = self._db().execute(sql, params).fetchall()
        rows = [_Row.from_sql(r) for r in raw]
        for row in rows:
            self._authenticate(row)
        return rows

    def _rows_in(self, conn: sqlite3.Connection, name: str) -> builtins.list[_Row]:
        raw = conn.execute(_select_sql("WHERE name = ? ORDER BY version"), (name,)).fetchall()
        return [_Row.from_sql(r) for r in raw]

    def _rows_of(self, name: str) -> builtins.list[_Row]:
        rows = self._select(_select_sql("WHERE name = ? ORDER BY version"), (name,))
        if not rows:
            raise KeyNotFound(f"no key named {name}")
        return rows

    def _row_in(self, conn: sqlite3.Connection, name: str, version: int) -> _Row:
        raw = conn.execute(
            _select_sql("WHERE name = ? AND version = ?"), (name, version)
        ).fetchone()
        if raw is None:
            if conn.execute("SELECT 1 FROM keys WHERE name = ? LIMIT 1", (name,)).fetchone():
                raise KeyNotFound(f"key {name} has no version {version}")
            raise KeyNotFound(f"no key named {name}")
        return _Row.from_sql(raw)

    def _row(self, name: str, version: int) -> _Row:
        _check_version(version)
        with self._lock, _sqlite_errors():
            row = self._row_in(self._db(), name, version)
        self._authenticate(row)
        return row

    def _active_row(self, name: str) -> _Row:
        rows = self._rows_of(name)
        active = [row for row in rows if row.status is KeyStatus.ACTIVE]
        if active:
            return active[0]
        newest = rows[-1]
        if newest.status is KeyStatus.REVOKED:
            why = f" ({newest.reason})" if newest.reason else ""
            raise KeyRevoked(
                f"{name} has no active version: {newest.label} was revoked{why}; "
                f"rotate {name} to create a new one"
            )
        raise KeyStoreCorrupted(f"{name} has no active version and {newest.label} is not revoked")

    def _pick(self, name: str, version: int | None) -> _Row:
        return self._active_row(name) if version is None else self._row(name, version)

    def _row_by_id(self, name: str, key_id: bytes) -> _Row | None:
        rows = self._select(_select_sql("WHERE name = ? AND key_id = ?"), (name, bytes(key_id)))
        if rows:
            return rows[0]
        self._rows_of(name)  # KeyNotFound for an unknown name
        return None

    @staticmethod
    def _require_kind(row: _Row, kind: KeyKind) -> None:
        if row.kind is not kind:
            raise AlgorithmMismatch(
                f"{row.label} is a {row.kind} key ({row.algorithm.label}), not a {kind} key"
            )

    def _authenticate(self, row: _Row) -> None:
        """Check the row's public columns: key id = SHA-256(public key), and the row MAC
        when the store is unlocked. :class:`KeyStoreCorrupted` otherwise."""
        if hashlib.sha256(row.public_key).digest() != row.key_id:
            raise KeyStoreCorrupted(f"{row.label}: public key does not match its key id")
        if self._secrets is None:
            return
        expected = self._secrets.row_mac(
            name=row.name,
            version=row.version,
            algorithm=int(row.algorithm),
            kind=str(row.kind),
            key_id=row.key_id,
            public_key=row.public_key,
            status=str(row.status),
            created_at=row.created_text,
            retired_at=row.retired_text,
            revoked_at=row.revoked_text,
            reason=row.reason,
        )
        if not hmac.compare_digest(expected, row.row_mac):
            raise KeyStoreCorrupted(f"{row.label}: row fails its integrity check (edited?)")

    @staticmethod
    def _public(row: _Row) -> VerifyKey | KemPublicKey:
        try:
            public: VerifyKey | KemPublicKey
            if row.kind is KeyKind.SIGNING:
                public = VerifyKey.from_bytes(row.public_key)
            else:
                public = KemPublicKey.from_bytes(row.public_key)
        except (MalformedData, UnknownAlgorithm) as exc:
            raise KeyStoreCorrupted(
                f"{row.label}: stored public key does not parse: {exc}"
            ) from exc
        if public.algorithm != row.algorithm or public.key_id != row.key_id:
            raise KeyStoreCorrupted(f"{row.label}: stored public key contradicts its row")
        return public

    def _private(self, row: _Row) -> SigningKey | KemPrivateKey:
        store_secrets = self._require_unlocked(f"using the private key of {row.label}")
        aad = _private_aad(row.name, row.version, row.key_id, int(row.algorithm))
        try:
            plain = store_secrets.blob.decrypt(row.nonce, row.private_key, aad)
        except DecryptionFailed as exc:
            raise KeyStoreCorrupted(
                f"{row.label}: private key fails authentication (tampered, or moved from "
                "another row)"
            ) from exc
        try:
            private: SigningKey | KemPrivateKey
            public_id: bytes
            if row.kind is KeyKind.SIGNING:
                signing = SigningKey.from_bytes(plain)
                private, public_id = signing, signing.public_key().key_id
            else:
                kem = KemPrivateKey.from_bytes(plain)
                private, public_id = kem, kem.public_key().key_id
        except (MalformedData, UnknownAlgorithm) as exc:
            raise KeyStoreCorrupted(f"{row.label}: private key does not parse: {exc}") from exc
        if private.algorithm != row.algorithm or public_id != row.key_id:
            raise KeyStoreCorrupted(f"{row.label}: private key does not match its public key")
        return private

    def _require_unlocked(self, what: str) -> _Secrets:
        if self._secrets is None:
            raise WrongPassphrase(
                f"{what} needs the passphrase: this key store was opened without it "
                "(public keys and verification only)"
            )
        return self._secrets

    # -- internals: writing ---------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction; rolled back on any exception."""
        with self._lock, _sqlite_errors(), sqlite_db.transaction(self._db()) as conn:
            yield conn

    def _insert(
        self,
        conn: sqlite3.Connection,
        store_secrets: _Secrets,
        name: str,
        version: int,
        algorithm: Algorithm,
        private: bytes,
        public: VerifyKey | KemPublicKey,
        now: datetime,
    ) -> None:
        public_bytes = public.to_bytes()
        key_id = public.key_id
        nonce = secrets.token_bytes(AeadKey.NONCE_SIZE)
        blob = store_secrets.blob.encrypt(
            nonce, private, _private_aad(name, version, key_id, int(algorithm))
        )
        kind = str(_kind_of(algorithm))
        created = _format_time(now)
        status = str(KeyStatus.ACTIVE)
        mac = store_secrets.row_mac(
            name=name,
            version=version,
            algorithm=int(algorithm),
            kind=kind,
            key_id=key_id,
            public_key=public_bytes,
            status=status,
            created_at=created,
            retired_at=None,
            revoked_at=None,
            reason=None,
        )
        if conn.execute("SELECT 1 FROM keys WHERE key_id = ?", (key_id,)).fetchone():
            raise KeyStoreError(f"key id {key_id.hex()} is already in the store")
        conn.execute(
            _INSERT_SQL,
            (
                name,
                version,
                int(algorithm),
                kind,
                key_id,
                public_bytes,
                nonce,
                blob,
                status,
                created,
                None,
                None,
                None,
                mac,
            ),
        )

    @staticmethod
    def _update_status(
        conn: sqlite3.Connection,
        store_secrets: _Secrets,
        row: _Row,
        status: KeyStatus,
        *,
        retired_at: str | None = None,
        revoked_at: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Set ``row``'s status columns (timestamps as stored text) and its new row MAC."""
        mac = store_secrets.row_mac(
            name=row.name,
            version=row.version,
            algorithm=int(row.algorithm),
            kind=str(row.kind),
            key_id=row.key_id,
            public_key=row.public_key,
            status=str(status),
            created_at=row.created_text,
            retired_at=retired_at,
            revoked_at=revoked_at,
            reason=reason,
        )
        conn.execute(
            "UPDATE keys SET status = ?, retired_at = ?, revoked_at = ?, reason = ?, row_mac = ? "
            "WHERE name = ? AND version = ?",
            (str(status), retired_at, revoked_at, reason, mac, row.name, row.version),
        )


def _new_keypair(algorithm: Algorithm) -> tuple[bytes, VerifyKey | KemPublicKey]:
    """A fresh key pair: (private key envelope, public key)."""
    if isinstance(algorithm, SignatureAlgorithm):
        signing = SigningKey.generate(algorithm)
        return signing.to_bytes(), signing.public_key()
    kem = KemPrivateKey.generate(algorithm)
    return kem.to_bytes(), kem.public_key()


# --- opening internals ----------------------------------------------------------------------------


def _create_files(home: Path, db_path: Path) -> None:
    """Create ``home`` (0700, if new) and an empty ``keys.db`` (0600)."""
    try:
        if not home.exists():
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            home.chmod(0o700)
        fd = os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # created concurrently; initialisation below is transactional
    except OSError as exc:
        raise KeyStoreError(f"cannot create key store in {home}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _read_meta(conn: sqlite3.Connection) -> dict[str, object] | None:
    tables = {
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    }
    if "meta" not in tables:
        if tables:
            raise KeyStoreCorrupted(f"not a TrustChain key store (tables: {sorted(tables)})")
        return None
    return {str(k): v for k, v in conn.execute("SELECT key, value FROM meta").fetchall()}


def _initialise(
    conn: sqlite3.Connection, home: Path, passphrase: bytes | None, params: KdfParams
) -> dict[str, object]:
    """Create the schema and meta in one transaction (re-checking under the write lock)."""
    with sqlite_db.transaction(conn):
        meta = _read_meta(conn)
        if meta is not None:  # another process initialised it first
            return meta
        salt = secrets.token_bytes(SALT_SIZE)
        if passphrase is None:
            protection, kdf_json = Protection.KEYFILE, json.dumps({"algorithm": "none"})
            key_file = home / KEYFILE_FILENAME
            if key_file.exists():
                # Left by an interrupted initialisation, or by a store whose keys.db was
                # removed (a backup of which it may still open): reuse it, never overwrite.
                master = _read_keyfile(key_file)
            else:
                master = secrets.token_bytes(MASTER_KEY_SIZE)
                _write_keyfile(key_file, master)
        else:
            protection, kdf_json = Protection.PASSPHRASE, params.to_json()
            master = _argon2(passphrase, salt, params)
        check_key = _Secrets.derive(master, salt).check
        nonce = secrets.token_bytes(AeadKey.NONCE_SIZE)
        check_value = check_key.encrypt(nonce, _CHECK_CONSTANT, str(protection).encode())
        # Not executescript(): it would COMMIT the open transaction first.
        for statement in _SCHEMA:
            conn.execute(statement)
        meta = {
            "schema_version": str(SCHEMA_VERSION),
            "protection": str(protection),
            "kdf": kdf_json,
            "salt": salt,
            "check_nonce": nonce,
            "check_value": check_value,
        }
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
    return meta


def _protection_from_meta(meta: dict[str, object]) -> Protection:
    version = meta.get("schema_version")
    if version != str(SCHEMA_VERSION):
        raise KeyStoreError(
            f"key store schema version {version!r} is not supported (this TrustChain reads "
            f"version {SCHEMA_VERSION})"
        )
    try:
        return Protection(str(meta.get("protection")))
    except ValueError as exc:
        raise KeyStoreCorrupted(f"unknown protection {meta.get('protection')!r}") from exc


def _unlock(
    home: Path, meta: dict[str, object], passphrase: bytes | None, *, allow_weak_kdf: bool
) -> tuple[Protection, _Secrets | None]:
    protection = _protection_from_meta(meta)
    salt, nonce, check_value, kdf = (
        meta.get("salt"),
        meta.get("check_nonce"),
        meta.get("check_value"),
        meta.get("kdf"),
    )
    if not (
        isinstance(salt, bytes)
        and len(salt) == SALT_SIZE
        and isinstance(nonce, bytes)
        and isinstance(check_value, bytes)
        and isinstance(kdf, str)
    ):
        raise KeyStoreCorrupted("key store meta table is incomplete or malformed")
    if protection is Protection.PASSPHRASE:
        if passphrase is None:
            return protection, None
        params = KdfParams.from_json(kdf)
        params.check(allow_weak=allow_weak_kdf)
        master = _argon2(passphrase, salt, params)
    else:
        if passphrase is not None:
            raise WrongPassphrase(
                f"this key store is protected by the key file {home / KEYFILE_FILENAME}, "
                "not a passphrase"
            )
        master = _read_keyfile(home / KEYFILE_FILENAME)
    store_secrets = _Secrets.derive(master, salt)
    try:
        plain = store_secrets.check.decrypt(nonce, check_value, str(protection).encode())
    except DecryptionFailed:
        what = "passphrase" if protection is Protection.PASSPHRASE else "key file"
        raise WrongPassphrase(f"wrong {what}: it does not open the key store in {home}") from None
    if not hmac.compare_digest(plain, _CHECK_CONSTANT):
        raise KeyStoreCorrupted("key store check value decrypts to the wrong constant")
    return protection, store_secrets
