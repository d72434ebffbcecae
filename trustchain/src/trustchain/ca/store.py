"""The certificate authority's database: CAs, their keys, every issued certificate, CRL numbers.

Layout on disk
==============

``HOME/ca/ca.db``: one SQLite database (directory created ``0700``, file ``0600``) in WAL mode
with ``synchronous=FULL``; every mutation is one ``BEGIN IMMEDIATE`` transaction, so a crash
leaves all of a change or none of it (the mechanism is :mod:`trustchain.sqlite_db`). The CA's
private keys are **not** here: they live in the key store
(:class:`~trustchain.crypto.keystore.KeyStore`) under ``ca/<CA name>``, one key version per CA
key; leaf keys the CA generated live there too, under ``leaf/<leaf name>``. This database
records which key store version each CA and certificate uses.

Schema (version 1)
==================

``meta(key TEXT PRIMARY KEY, value TEXT)``: ``schema_version`` = ``"1"``.

``cas`` -- one row per certificate authority::

    name TEXT PRIMARY KEY          CA name (profiles.ca_name)
    kind TEXT                      'root' | 'intermediate' (at most one root per database)
    namespace TEXT                 DNS namespace (intermediates; NULL for the root)
    parent TEXT                    issuing CA (NULL for the root)
    path_length INTEGER            basicConstraints pathLenConstraint (NULL: none)
    ip_networks TEXT               permitted IP ranges, comma-separated ('' for none)
    crl_shards INTEGER             N: a leaf's CRL shard is serial mod N
    validity_seconds INTEGER       lifetime of the CA's own certificates (used by rollover)
    key_name TEXT UNIQUE           key store name of the CA key ('ca/<name>')
    key_version INTEGER            key store version of the *current* key
    serial TEXT                    the current CA certificate (serial, 40 hex digits)
    created_at TEXT                ISO 8601 UTC

``ca_keys`` -- every key a CA has had, primary key ``(ca, key_version)``::

    ca TEXT, key_version INTEGER, key_id BLOB UNIQUE (the hybrid key id),
    status TEXT ('current' | 'previous' | 'retired'), created_at TEXT, retired_at TEXT

``certificates`` -- every certificate issued (CA certificates included)::

    serial TEXT PRIMARY KEY        40 lowercase hex digits (a random 159-bit positive integer)
    issuer TEXT                    issuing CA's name (a root's own name for its certificates)
    issuer_key_version INTEGER     the issuing CA key version that signed it
    issuer_key_id BLOB             that key's hybrid key id
    subject TEXT                   RFC 4514 subject
    name TEXT                      CA name or leaf name
    kind TEXT                      root | intermediate | node | service | asset
    subject_key_id BLOB            hybrid key id of the certified key
    key_name TEXT, key_version INTEGER
                                   where the key store holds the subject's private key (NULL
                                   when the key came from outside)
    not_before TEXT, not_after TEXT
    crl_shard INTEGER              leaves: serial mod the issuer's shard count; NULL for CA
                                   certificates (they appear on the issuer's full CRL only)
    status TEXT                    'valid' | 'revoked'
    revoked_at TEXT, reason TEXT   revocation time and RFC 5280 reason name
    renewal_of TEXT                serial this certificate renews (NULL otherwise)
    issued_at TEXT
    der BLOB                       the certificate

``serials(serial TEXT PRIMARY KEY, reserved_at TEXT)`` -- serials are reserved here before
signing (RFC 5280 §4.1.2.2 uniqueness: a random draw that collides is simply redrawn).

``crl_numbers(issuer TEXT, shard INTEGER, number INTEGER)``, primary key ``(issuer, shard)``
-- the last CRL number issued per CRL scope; shard ``-1`` is the full CRL.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography import x509

from trustchain import sqlite_db
from trustchain.ca.profiles import CertificateKind, IpNetwork
from trustchain.errors import (
    AlreadyRevoked,
    CaError,
    CaExists,
    CaNotFound,
    CaStoreCorrupted,
    CertificateNotFound,
)

__all__ = [
    "DB_DIRNAME",
    "DB_FILENAME",
    "SCHEMA_VERSION",
    "SERIAL_BITS",
    "CaKeyRecord",
    "CaKeyStatus",
    "CaRecord",
    "CaStore",
    "CertificateRecord",
    "CertificateStatus",
    "format_serial",
    "parse_serial",
]

SCHEMA_VERSION: Final = 1
DB_DIRNAME: Final = "ca"
DB_FILENAME: Final = "ca.db"
#: Serial numbers are uniformly random in [1, 2**159): positive and at most 20 DER octets.
SERIAL_BITS: Final = 159
_SERIAL_HEX_DIGITS: Final = 40
_SERIAL_ATTEMPTS: Final = 16
#: The ``crl_numbers.shard`` value of the full CRL.
FULL_CRL_SHARD: Final = -1


class CertificateStatus(enum.StrEnum):
    VALID = "valid"
    REVOKED = "revoked"


class CaKeyStatus(enum.StrEnum):
    #: The key that issues.
    CURRENT = "current"
    #: Replaced by a rollover: its certificates remain valid (and anchors, for a root).
    PREVIOUS = "previous"
    #: Withdrawn: no longer usable, its certificates are no longer anchors.
    RETIRED = "retired"


def format_serial(serial: int) -> str:
    """A serial as stored: 40 lowercase hex digits."""
    if not 0 < serial < 1 << 160:
        raise ValueError(f"serial out of range: {serial}")
    return f"{serial:0{_SERIAL_HEX_DIGITS}x}"


def parse_serial(text: str) -> int:
    """A serial from hex text (any case, optional ``0x`` and ``:`` separators)."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise CertificateNotFound(f"not a hexadecimal serial number: {text!r}") from None
    if not 0 < value < 1 << 160:
        raise CertificateNotFound(f"serial number out of range: {text!r}")
    return value


def _format_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise CaError("timestamps must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: object, column: str) -> datetime:
    if not isinstance(value, str):
        raise CaStoreCorrupted(f"{column} is not a timestamp: {value!r}")
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise CaStoreCorrupted(f"{column} is not a timestamp: {value!r}") from exc


def _optional_time(value: object, column: str) -> datetime | None:
    return None if value is None else _parse_time(value, column)


# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaRecord:
    """One certificate authority."""

    name: str
    kind: CertificateKind
    namespace: str | None
    parent: str | None
    path_length: int | None
    ip_networks: tuple[IpNetwork, ...]
    crl_shards: int
    validity: timedelta
    key_name: str
    key_version: int
    serial: int
    created_at: datetime


@dataclass(frozen=True)
class CaKeyRecord:
    """One key version of a CA."""

    ca: str
    version: int
    key_id: bytes
    status: CaKeyStatus
    created_at: datetime
    retired_at: datetime | None = None


@dataclass(frozen=True)
class CertificateRecord:
    """One issued certificate and its state."""

    serial: int
    issuer: str
    issuer_key_version: int
    issuer_key_id: bytes
    subject: str
    name: str
    kind: CertificateKind
    subject_key_id: bytes
    key_name: str | None
    key_version: int | None
    not_before: datetime
    not_after: datetime
    crl_shard: int | None
    der: bytes
    issued_at: datetime
    renewal_of: int | None = None
    status: CertificateStatus = CertificateStatus.VALID
    revoked_at: datetime | None = None
    reason: x509.ReasonFlags | None = None

    @property
    def self_signed(self) -> bool:
        """A root's self-signed certificate (issued by the very key it certifies)."""
        return self.kind is CertificateKind.ROOT and self.issuer_key_id == self.subject_key_id

    def certificate(self) -> x509.Certificate:
        """The parsed certificate (:class:`CaStoreCorrupted` if it does not match its row)."""
        try:
            cert = x509.load_der_x509_certificate(self.der)
        except ValueError as exc:
            raise CaStoreCorrupted(f"certificate {self.serial:x} does not parse: {exc}") from exc
        if cert.serial_number != self.serial:
            raise CaStoreCorrupted(f"certificate {self.serial:x} carries another serial")
        return cert


_CA_COLUMNS: Final = (
    "name, kind, namespace, parent, path_length, ip_networks, crl_shards, validity_seconds, "
    "key_name, key_version, serial, created_at"
)
_KEY_COLUMNS: Final = "ca, key_version, key_id, status, created_at, retired_at"
_CERT_COLUMNS: Final = (
    "serial, issuer, issuer_key_version, issuer_key_id, subject, name, kind, subject_key_id, "
    "key_name, key_version, not_before, not_after, crl_shard, der, issued_at, renewal_of, "
    "status, revoked_at, reason"
)

_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE cas (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('root', 'intermediate')),
        namespace TEXT,
        parent TEXT REFERENCES cas(name),
        path_length INTEGER CHECK (path_length IS NULL OR path_length >= 0),
        ip_networks TEXT NOT NULL,
        crl_shards INTEGER NOT NULL CHECK (crl_shards >= 1),
        validity_seconds INTEGER NOT NULL CHECK (validity_seconds > 0),
        key_name TEXT NOT NULL UNIQUE,
        key_version INTEGER NOT NULL,
        serial TEXT NOT NULL,
        created_at TEXT NOT NULL)""",
    "CREATE UNIQUE INDEX one_root ON cas(kind) WHERE kind = 'root'",
    """CREATE TABLE ca_keys (
        ca TEXT NOT NULL REFERENCES cas(name),
        key_version INTEGER NOT NULL,
        key_id BLOB NOT NULL UNIQUE,
        status TEXT NOT NULL CHECK (status IN ('current', 'previous', 'retired')),
        created_at TEXT NOT NULL,
        retired_at TEXT,
        PRIMARY KEY (ca, key_version))""",
    "CREATE UNIQUE INDEX one_current_key ON ca_keys(ca) WHERE status = 'current'",
    """CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        issuer TEXT NOT NULL,
        issuer_key_version INTEGER NOT NULL,
        issuer_key_id BLOB NOT NULL,
        subject TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL
            CHECK (kind IN ('root', 'intermediate', 'node', 'service', 'asset')),
        subject_key_id BLOB NOT NULL,
        key_name TEXT,
        key_version INTEGER,
        not_before TEXT NOT NULL,
        not_after TEXT NOT NULL,
        crl_shard INTEGER,
        der BLOB NOT NULL,
        issued_at TEXT NOT NULL,
        renewal_of TEXT,
        status TEXT NOT NULL CHECK (status IN ('valid', 'revoked')),
        revoked_at TEXT,
        reason TEXT,
        CHECK ((status = 'revoked') = (revoked_at IS NOT NULL)))""",
    "CREATE INDEX certificates_by_issuer ON certificates(issuer, status, crl_shard)",
    "CREATE INDEX certificates_by_subject_key ON certificates(subject_key_id)",
    "CREATE TABLE serials (serial TEXT PRIMARY KEY, reserved_at TEXT NOT NULL)",
    """CREATE TABLE crl_numbers (
        issuer TEXT NOT NULL,
        shard INTEGER NOT NULL,
        number INTEGER NOT NULL,
        PRIMARY KEY (issuer, shard))""",
)


@contextmanager
def _sqlite_errors() -> Iterator[None]:
    """Translate SQLite failures into typed errors."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise CaError(f"CA database constraint violated: {exc}") from exc
    except (sqlite3.OperationalError, sqlite3.ProgrammingError, sqlite3.InterfaceError) as exc:
        raise CaError(f"CA database error: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise CaStoreCorrupted(f"CA database is damaged: {exc}") from exc


def _networks(text: object) -> tuple[IpNetwork, ...]:
    if not isinstance(text, str):
        raise CaStoreCorrupted(f"ip_networks is not text: {text!r}")
    try:
        return tuple(ipaddress.ip_network(part) for part in text.split(",") if part)
    except ValueError as exc:
        raise CaStoreCorrupted(f"unreadable ip_networks {text!r}") from exc


def _int(value: object, column: str) -> int:
    if type(value) is not int:
        raise CaStoreCorrupted(f"{column} is not an integer: {value!r}")
    return value


def _optional_int(value: object, column: str) -> int | None:
    return None if value is None else _int(value, column)


def _text(value: object, column: str) -> str:
    if not isinstance(value, str):
        raise CaStoreCorrupted(f"{column} is not text: {value!r}")
    return value


def _optional_text(value: object, column: str) -> str | None:
    return None if value is None else _text(value, column)


def _blob(value: object, column: str) -> bytes:
    if not isinstance(value, bytes):
        raise CaStoreCorrupted(f"{column} is not a blob")
    return value


def _serial(value: object, column: str) -> int:
    text = _text(value, column)
    if len(text) != _SERIAL_HEX_DIGITS:
        raise CaStoreCorrupted(f"{column} is not a 40-digit serial: {text!r}")
    try:
        return int(text, 16)
    except ValueError as exc:
        raise CaStoreCorrupted(f"{column} is not a serial: {text!r}") from exc


def _enum_value(enum_type: type[enum.StrEnum], value: object, column: str) -> Any:
    try:
        return enum_type(_text(value, column))
    except ValueError as exc:
        raise CaStoreCorrupted(f"{column} has an unknown value {value!r}") from exc


def _ca_from_row(row: tuple[Any, ...]) -> CaRecord:
    (name, kind, namespace, parent, path_length, networks, shards, seconds) = row[:8]
    key_name, key_version, serial, created_at = row[8:]
    return CaRecord(
        name=_text(name, "cas.name"),
        kind=_enum_value(CertificateKind, kind, "cas.kind"),
        namespace=_optional_text(namespace, "cas.namespace"),
        parent=_optional_text(parent, "cas.parent"),
        path_length=_optional_int(path_length, "cas.path_length"),
        ip_networks=_networks(networks),
        crl_shards=_int(shards, "cas.crl_shards"),
        validity=timedelta(seconds=_int(seconds, "cas.validity_seconds")),
        key_name=_text(key_name, "cas.key_name"),
        key_version=_int(key_version, "cas.key_version"),
        serial=_serial(serial, "cas.serial"),
        created_at=_parse_time(created_at, "cas.created_at"),
    )


def _key_from_row(row: tuple[Any, ...]) -> CaKeyRecord:
    ca, version, key_id, status, created_at, retired_at = row
    return CaKeyRecord(
        ca=_text(ca, "ca_keys.ca"),
        version=_int(version, "ca_keys.key_version"),
        key_id=_blob(key_id, "ca_keys.key_id"),
        status=_enum_value(CaKeyStatus, status, "ca_keys.status"),
        created_at=_parse_time(created_at, "ca_keys.created_at"),
        retired_at=_optional_time(retired_at, "ca_keys.retired_at"),
    )


def _certificate_from_row(row: tuple[Any, ...]) -> CertificateRecord:
    (serial, issuer, issuer_version, issuer_key_id, subject, name, kind, subject_key_id) = row[:8]
    (key_name, key_version, not_before, not_after, shard, der, issued_at, renewal_of) = row[8:16]
    status, revoked_at, reason = row[16:]
    reason_flag: x509.ReasonFlags | None = None
    if reason is not None:
        try:
            reason_flag = x509.ReasonFlags(_text(reason, "certificates.reason"))
        except ValueError as exc:
            raise CaStoreCorrupted(f"unknown revocation reason {reason!r}") from exc
    return CertificateRecord(
        serial=_serial(serial, "certificates.serial"),
        issuer=_text(issuer, "certificates.issuer"),
        issuer_key_version=_int(issuer_version, "certificates.issuer_key_version"),
        issuer_key_id=_blob(issuer_key_id, "certificates.issuer_key_id"),
        subject=_text(subject, "certificates.subject"),
        name=_text(name, "certificates.name"),
        kind=_enum_value(CertificateKind, kind, "certificates.kind"),
        subject_key_id=_blob(subject_key_id, "certificates.subject_key_id"),
        key_name=_optional_text(key_name, "certificates.key_name"),
        key_version=_optional_int(key_version, "certificates.key_version"),
        not_before=_parse_time(not_before, "certificates.not_before"),
        not_after=_parse_time(not_after, "certificates.not_after"),
        crl_shard=_optional_int(shard, "certificates.crl_shard"),
        der=_blob(der, "certificates.der"),
        issued_at=_parse_time(issued_at, "certificates.issued_at"),
        renewal_of=None if renewal_of is None else _serial(renewal_of, "certificates.renewal_of"),
        status=_enum_value(CertificateStatus, status, "certificates.status"),
        revoked_at=_optional_time(revoked_at, "certificates.revoked_at"),
        reason=reason_flag,
    )


def _ca_values(ca: CaRecord) -> tuple[object, ...]:
    return (
        ca.name,
        ca.kind.value,
        ca.namespace,
        ca.parent,
        ca.path_length,
        ",".join(str(net) for net in ca.ip_networks),
        ca.crl_shards,
        int(ca.validity.total_seconds()),
        ca.key_name,
        ca.key_version,
        format_serial(ca.serial),
        _format_time(ca.created_at),
    )


def _key_values(key: CaKeyRecord) -> tuple[object, ...]:
    return (
        key.ca,
        key.version,
        key.key_id,
        key.status.value,
        _format_time(key.created_at),
        None if key.retired_at is None else _format_time(key.retired_at),
    )


def _certificate_values(cert: CertificateRecord) -> tuple[object, ...]:
    return (
        format_serial(cert.serial),
        cert.issuer,
        cert.issuer_key_version,
        cert.issuer_key_id,
        cert.subject,
        cert.name,
        cert.kind.value,
        cert.subject_key_id,
        cert.key_name,
        cert.key_version,
        _format_time(cert.not_before),
        _format_time(cert.not_after),
        cert.crl_shard,
        cert.der,
        _format_time(cert.issued_at),
        None if cert.renewal_of is None else format_serial(cert.renewal_of),
        cert.status.value,
        None if cert.revoked_at is None else _format_time(cert.revoked_at),
        None if cert.reason is None else cert.reason.value,
    )


def _parameter_marks(columns: str) -> str:
    return ", ".join("?" for _ in columns.split(","))


# --- the store -----------------------------------------------------------------------------------


class CaStore(sqlite_db.ConnectionOwner):
    """The CA database (see the module docs). Create with :meth:`open`.

    Safe to share between threads (one connection behind a lock) and processes (SQLite
    locking; each mutation is one immediate transaction).
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        super().__init__(conn)
        self._path = path

    @classmethod
    def open(cls, home: Path | str) -> CaStore:
        """Open (creating if needed) ``HOME/ca/ca.db``."""
        directory = Path(home).expanduser() / DB_DIRNAME
        path = directory / DB_FILENAME
        try:
            if not directory.exists():
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                directory.chmod(0o700)
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.close(fd)
        except FileExistsError:
            pass  # created concurrently; the schema below is transactional
        except OSError as exc:
            raise CaError(f"cannot create the CA database in {directory}: {exc.strerror}") from exc
        with _sqlite_errors():
            conn = sqlite_db.connect(path, error=CaError)
        store = cls(path, conn)
        try:
            store._initialise()
        except BaseException:
            store.close()
            raise
        return store

    def _initialise(self) -> None:
        with self._lock, _sqlite_errors():
            # Per connection, and only outside a transaction.
            self._db().execute("PRAGMA foreign_keys=ON")
        with self._write() as conn:
            tables = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if not tables:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif "meta" not in tables:
                raise CaStoreCorrupted(f"{self._path} is not a TrustChain CA database")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None or row[0] != str(SCHEMA_VERSION):
                raise CaStoreCorrupted(
                    f"unsupported CA database schema {row[0] if row else None!r}"
                )

    @property
    def path(self) -> Path:
        return self._path

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CaError("the CA database is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, _sqlite_errors(), sqlite_db.transaction(self._db()) as conn:
            yield conn

    def _select(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock, _sqlite_errors():
            return self._db().execute(sql, params).fetchall()

    # -- queries ------------------------------------------------------------------------------

    def ca(self, name: str) -> CaRecord:
        """The CA ``name``; :class:`CaNotFound` if there is none."""
        rows = self._select(f"SELECT {_CA_COLUMNS} FROM cas WHERE name = ?", (name,))  # noqa: S608
        if not rows:
            raise CaNotFound(f"no certificate authority named {name!r}")
        return _ca_from_row(rows[0])

    def cas(self) -> list[CaRecord]:
        """Every CA, the root first, then by name."""
        rows = self._select(
            f"SELECT {_CA_COLUMNS} FROM cas ORDER BY kind != 'root', name"  # noqa: S608
        )
        return [_ca_from_row(row) for row in rows]

    def root(self) -> CaRecord | None:
        """The root CA, if one was created."""
        rows = self._select(f"SELECT {_CA_COLUMNS} FROM cas WHERE kind = 'root'")  # noqa: S608
        return _ca_from_row(rows[0]) if rows else None

    def ca_keys(self, name: str) -> list[CaKeyRecord]:
        """Every key version of CA ``name``, oldest first."""
        rows = self._select(
            f"SELECT {_KEY_COLUMNS} FROM ca_keys WHERE ca = ? ORDER BY key_version",  # noqa: S608
            (name,),
        )
        return [_key_from_row(row) for row in rows]

    def ca_key(self, name: str, version: int) -> CaKeyRecord:
        rows = self._select(
            f"SELECT {_KEY_COLUMNS} FROM ca_keys WHERE ca = ? AND key_version = ?",  # noqa: S608
            (name, version),
        )
        if not rows:
            raise CaNotFound(f"CA {name!r} has no key version {version}")
        return _key_from_row(rows[0])

    def certificate(self, serial: int) -> CertificateRecord:
        """The certificate with ``serial``; :class:`CertificateNotFound` if none."""
        rows = self._select(
            f"SELECT {_CERT_COLUMNS} FROM certificates WHERE serial = ?",  # noqa: S608
            (format_serial(serial),),
        )
        if not rows:
            raise CertificateNotFound(f"no certificate with serial {serial:x}")
        return _certificate_from_row(rows[0])

    def certificates(self, issuer: str | None = None) -> list[CertificateRecord]:
        """Every certificate (of ``issuer``, if given), oldest first."""
        if issuer is None:
            rows = self._select(
                f"SELECT {_CERT_COLUMNS} FROM certificates ORDER BY issued_at, serial"  # noqa: S608
            )
        else:
            rows = self._select(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE issuer = ? "  # noqa: S608
                "ORDER BY issued_at, serial",
                (issuer,),
            )
        return [_certificate_from_row(row) for row in rows]

    def certificates_for_key(self, key_id: bytes) -> list[CertificateRecord]:
        """Every certificate of the subject key ``key_id``, oldest first."""
        rows = self._select(
            f"SELECT {_CERT_COLUMNS} FROM certificates WHERE subject_key_id = ? "  # noqa: S608
            "ORDER BY issued_at, serial",
            (bytes(key_id),),
        )
        return [_certificate_from_row(row) for row in rows]

    def revoked(
        self, issuer: str, shard: int | None, *, expired_after: datetime
    ) -> list[CertificateRecord]:
        """Revoked certificates of ``issuer`` for a CRL: all (``shard`` None) or one shard's
        leaves; only those whose notAfter is at or after ``expired_after``."""
        sql = (
            f"SELECT {_CERT_COLUMNS} FROM certificates "  # noqa: S608
            "WHERE issuer = ? AND status = 'revoked' AND not_after >= ?"
        )
        params: tuple[object, ...] = (issuer, _format_time(expired_after))
        if shard is not None:
            sql += " AND crl_shard = ?"
            params += (shard,)
        rows = self._select(sql + " ORDER BY serial", params)
        return [_certificate_from_row(row) for row in rows]

    # -- mutations ----------------------------------------------------------------------------

    def reserve_serial(self, now: datetime) -> int:
        """A fresh random serial in [1, 2**159), recorded so it is never drawn again."""
        for _ in range(_SERIAL_ATTEMPTS):
            serial = secrets.randbits(SERIAL_BITS)
            if serial == 0:
                continue
            try:
                with self._write() as conn:
                    conn.execute(
                        "INSERT INTO serials (serial, reserved_at) VALUES (?, ?)",
                        (format_serial(serial), _format_time(now)),
                    )
            except CaError as exc:
                if isinstance(exc.__cause__, sqlite3.IntegrityError):
                    continue  # collision: draw again
                raise
            return serial
        raise CaError(f"no unused serial number after {_SERIAL_ATTEMPTS} random draws")

    def create_ca(
        self, ca: CaRecord, key: CaKeyRecord, certificates: Sequence[CertificateRecord]
    ) -> None:
        """Record a new CA, its first key and its certificate(s), atomically."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM cas WHERE name = ?", (ca.name,)).fetchone():
                raise CaExists(f"a certificate authority named {ca.name!r} already exists")
            if (
                ca.kind is CertificateKind.ROOT
                and conn.execute("SELECT 1 FROM cas WHERE kind = 'root'").fetchone()
            ):
                raise CaExists("this CA database already has a root")
            conn.execute(
                f"INSERT INTO cas ({_CA_COLUMNS}) VALUES ({_parameter_marks(_CA_COLUMNS)})",  # noqa: S608
                _ca_values(ca),
            )
            self._insert_key(conn, key)
            self._insert_certificates(conn, certificates)

    def add_certificates(self, certificates: Sequence[CertificateRecord]) -> None:
        """Record issued certificates, atomically."""
        with self._write() as conn:
            self._insert_certificates(conn, certificates)

    def rotate_ca_key(
        self, name: str, key: CaKeyRecord, serial: int, certificates: Sequence[CertificateRecord]
    ) -> None:
        """Make ``key`` the current key of CA ``name`` (the old one becomes previous), its
        certificate ``serial`` the CA's current one, and record ``certificates``."""
        with self._write() as conn:
            conn.execute(
                "UPDATE ca_keys SET status = 'previous' WHERE ca = ? AND status = 'current'",
                (name,),
            )
            self._insert_key(conn, key)
            self._insert_certificates(conn, certificates)
            updated = conn.execute(
                "UPDATE cas SET key_version = ?, serial = ? WHERE name = ?",
                (key.version, format_serial(serial), name),
            ).rowcount
            if updated != 1:
                raise CaNotFound(f"no certificate authority named {name!r}")

    def retire_ca_key(
        self,
        name: str,
        version: int,
        at: datetime,
        *,
        revoke: Sequence[int] = (),
        reason: x509.ReasonFlags = x509.ReasonFlags.superseded,
    ) -> None:
        """Mark key ``version`` of CA ``name`` retired, revoking ``revoke`` in the same
        transaction."""
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE ca_keys SET status = 'retired', retired_at = ? "
                "WHERE ca = ? AND key_version = ? AND status = 'previous'",
                (_format_time(at), name, version),
            ).rowcount
            if updated != 1:
                raise CaError(f"CA {name!r} has no previous key version {version} to retire")
            self._revoke(conn, revoke, at, reason)

    def revoke(self, serials: Sequence[int], at: datetime, reason: x509.ReasonFlags) -> None:
        """Revoke ``serials`` (all or none): :class:`CertificateNotFound` for an unknown
        serial, :class:`AlreadyRevoked` for one already revoked."""
        with self._write() as conn:
            self._revoke(conn, serials, at, reason)

    def next_crl_number(self, issuer: str, shard: int | None) -> int:
        """Allocate the next CRL number of ``issuer``'s full CRL (``shard`` None) or shard."""
        key = FULL_CRL_SHARD if shard is None else shard
        with self._write() as conn:
            row = conn.execute(
                "SELECT number FROM crl_numbers WHERE issuer = ? AND shard = ?", (issuer, key)
            ).fetchone()
            number = 1 if row is None else _int(row[0], "crl_numbers.number") + 1
            conn.execute(
                "INSERT OR REPLACE INTO crl_numbers (issuer, shard, number) VALUES (?, ?, ?)",
                (issuer, key, number),
            )
        return number

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _insert_key(conn: sqlite3.Connection, key: CaKeyRecord) -> None:
        conn.execute(
            f"INSERT INTO ca_keys ({_KEY_COLUMNS}) VALUES ({_parameter_marks(_KEY_COLUMNS)})",  # noqa: S608
            _key_values(key),
        )

    @staticmethod
    def _insert_certificates(
        conn: sqlite3.Connection, certificates: Sequence[CertificateRecord]
    ) -> None:
        conn.executemany(
            f"INSERT INTO certificates ({_CERT_COLUMNS}) "  # noqa: S608
            f"VALUES ({_parameter_marks(_CERT_COLUMNS)})",
            [_certificate_values(cert) for cert in certificates],
        )

    @staticmethod
    def _revoke(
        conn: sqlite3.Connection, serials: Sequence[int], at: datetime, reason: x509.ReasonFlags
    ) -> None:
        for serial in serials:
            text = format_serial(serial)
            row = conn.execute(
                "SELECT status FROM certificates WHERE serial = ?", (text,)
            ).fetchone()
            if row is None:
                raise CertificateNotFound(f"no certificate with serial {serial:x}")
            if row[0] == CertificateStatus.REVOKED:
                raise AlreadyRevoked(f"certificate {serial:x} is already revoked")
            conn.execute(
                "UPDATE certificates SET status = 'revoked', revoked_at = ?, reason = ? "
                "WHERE serial = ?",
                (_format_time(at), reason.value, text),
            )
