"""The name registry: a TrustChain node's signed name records, in SQLite.

A :class:`NameRegistry` keeps, per name, the signed record with the highest serial it has
accepted, and the signed revocations it has accepted. Everything that enters is verified first
(:func:`~trustchain.naming.records.verify_record` /
:func:`~trustchain.naming.records.verify_revocation`) against the registry's
:class:`~trustchain.ca.trust.TrustStore`, and every lookup verifies the stored record again, so
a record stops resolving when it expires, when its signer's certificate expires or is revoked
(a CRL in the store), or when it is revoked.

Storage
=======

One SQLite file (the CLI uses ``HOME/names/names.db``), opened by
:func:`trustchain.sqlite_db.connect` (WAL, ``synchronous=FULL``). Every change is one
``BEGIN IMMEDIATE`` transaction: a crash, or any failure inside a change, leaves all of it or
none of it. Schema (version 1)::

    meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)     schema_version = '1'
    records(name TEXT PRIMARY KEY, serial INTEGER NOT NULL, not_after INTEGER NOT NULL,
            signed BLOB NOT NULL, stored_at INTEGER NOT NULL)
        the current signed record of each name (SignedRecord.encode(); times in seconds
        since the epoch)
    serials(name TEXT PRIMARY KEY, serial INTEGER NOT NULL)
        the highest serial ever accepted per name; kept when an expired record is purged, so
        an older record can never be replayed in its place
    revocations(name TEXT PRIMARY KEY, serial INTEGER NOT NULL, revoked_at INTEGER NOT NULL,
                signed BLOB NOT NULL)
        the accepted revocation with the highest serial per name

Rules
=====

* :meth:`NameRegistry.add`: after verification, a record whose serial a held revocation covers
  is ``REVOKED``; one whose serial is below the highest accepted for its name, or equal to it
  with other contents, is ``STALE_SERIAL``; the same record again is accepted without change;
  a higher serial replaces the current record.
* :meth:`NameRegistry.revoke`: keeps the revocation if its serial is above the one held and
  deletes the records it covers, in one transaction. A revocation at or below the held serial
  changes nothing. Revocations are kept for good (they are small, and they stop replays).
* :meth:`NameRegistry.merge` (replication: a record set a peer sent): the set's CRLs are
  offered to the store (:func:`~trustchain.naming.zone.add_crls`), then each revocation, then
  each record goes through the rules above, each in its own transaction; the
  :class:`MergeReport` says what was taken, what was refused and why. The set's anchors are
  not used: the registry's store decides.
* :meth:`NameRegistry.lookup` returns ``None`` when there is no record, or when the stored
  record no longer verifies (expired, not yet valid, signer chain no longer valid...);
  :meth:`NameRegistry.resolve` raises the reason instead.
* :meth:`NameRegistry.purge_expired` deletes records expired at the given time (allowing the
  clock skew, as verification does).

SQLite failures raise :class:`RegistryError`; rows that do not decode raise
:class:`RegistryCorrupted`. A registry is thread-safe (one connection behind a lock).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509

from trustchain import sqlite_db
from trustchain.ca.trust import TrustStore
from trustchain.ca.validation import DEFAULT_CLOCK_SKEW
from trustchain.naming.records import (
    InvalidNameRecord,
    NameRecord,
    NameRecordRejected,
    NameRejection,
    NamingError,
    Revocation,
    SignedRecord,
    SignedRevocation,
    normalize_name,
    verify_record,
    verify_revocation,
)
from trustchain.naming.zone import RecordSet, add_crls, chain_certificates, revoked_rejection

__all__ = [
    "SCHEMA_VERSION",
    "MergeReport",
    "NameNotFound",
    "NameRegistry",
    "RegistryCorrupted",
    "RegistryError",
]

SCHEMA_VERSION: Final = 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS records (name TEXT PRIMARY KEY, serial INTEGER NOT NULL, "
    "not_after INTEGER NOT NULL, signed BLOB NOT NULL, stored_at INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS serials (name TEXT PRIMARY KEY, serial INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS revocations (name TEXT PRIMARY KEY, serial INTEGER NOT NULL, "
    "revoked_at INTEGER NOT NULL, signed BLOB NOT NULL)",
)


class RegistryError(NamingError):
    """The registry database cannot be opened, read or written (a SQLite failure, a database
    of another schema version, a closed registry)."""


class RegistryCorrupted(RegistryError):
    """A stored row does not decode."""


class NameNotFound(NamingError, LookupError):
    """The registry holds no record for that name (never had one, purged, or revoked)."""


@dataclass(frozen=True)
class MergeReport:
    """What :meth:`NameRegistry.merge` did with a record set.

    ``accepted``: records stored (new names or higher serials); ``revoked``: revocations
    stored; ``refused``: every record or revocation not taken, with its reason; ``unchanged``:
    how many were already held (the same record, or a revocation at or below the held one).
    """

    accepted: list[NameRecord]
    refused: list[NameRecordRejected]
    revoked: list[Revocation] = field(default_factory=list)
    unchanged: int = 0


def _seconds(value: datetime) -> int:
    return int((value.astimezone(UTC) - _EPOCH).total_seconds())


def _now(at: datetime | None) -> datetime:
    when = datetime.now(UTC) if at is None else at
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("times must be timezone-aware")
    return when.astimezone(UTC)


class NameRegistry(sqlite_db.ConnectionOwner):
    """Signed name records of one node (see the module docs). Open with :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection, store: TrustStore, clock_skew: timedelta) -> None:
        super().__init__(conn)
        self._store = store
        self._skew = clock_skew

    @classmethod
    def open(
        cls,
        path: Path | str,
        store: TrustStore,
        *,
        clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    ) -> NameRegistry:
        """Open (creating it and its directory if needed) the registry database ``path``;
        records are verified against ``store`` with ``clock_skew``."""
        path = Path(path).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite_db.connect(path, error=RegistryError)
        except (OSError, sqlite3.Error) as exc:
            raise RegistryError(f"cannot open the name registry {path}: {exc}") from exc
        try:
            with sqlite_db.transaction(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),),
                    )
                elif row[0] != str(SCHEMA_VERSION):
                    raise RegistryError(
                        f"{path} has schema version {row[0]}, expected {SCHEMA_VERSION}"
                    )
        except sqlite3.Error as exc:
            conn.close()
            raise RegistryError(f"cannot open the name registry {path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, store, clock_skew)

    @property
    def store(self) -> TrustStore:
        """The trust store records are verified against."""
        return self._store

    # -- plumbing -----------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RegistryError("the name registry is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            try:
                with sqlite_db.transaction(conn):
                    yield conn
            except sqlite3.Error as exc:
                raise RegistryError(f"the name registry could not be updated: {exc}") from exc

    def _query(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return list(self._connection().execute(sql, tuple(parameters)).fetchall())
            except sqlite3.Error as exc:
                raise RegistryError(f"the name registry could not be read: {exc}") from exc

    @staticmethod
    def _decode_record(name: str, blob: object) -> SignedRecord:
        if not isinstance(blob, bytes):
            raise RegistryCorrupted(f"the stored record of {name} is not a blob")
        try:
            return SignedRecord.decode(blob)
        except NameRecordRejected as exc:
            raise RegistryCorrupted(f"the stored record of {name} does not decode: {exc}") from exc

    @staticmethod
    def _decode_revocation(name: str, blob: object) -> SignedRevocation:
        if not isinstance(blob, bytes):
            raise RegistryCorrupted(f"the stored revocation of {name} is not a blob")
        try:
            return SignedRevocation.decode(blob)
        except NameRecordRejected as exc:
            raise RegistryCorrupted(
                f"the stored revocation of {name} does not decode: {exc}"
            ) from exc

    # -- changes ------------------------------------------------------------------------------

    def add(self, signed: SignedRecord | bytes, *, at: datetime | None = None) -> NameRecord:
        """Verify ``signed`` at ``at`` (default now) and store it (see "Rules"); returns the
        record. :class:`NameRecordRejected` with the reason if it is refused."""
        record, _ = self._add(signed, at)
        return record

    def _add(self, signed: SignedRecord | bytes, at: datetime | None) -> tuple[NameRecord, bool]:
        if not isinstance(signed, SignedRecord):
            signed = SignedRecord.decode(signed)
        when = _now(at)
        record = verify_record(signed, self._store, at=when, clock_skew=self._skew)
        name = record.name
        with self._write() as conn:
            held = conn.execute(
                "SELECT serial, signed FROM revocations WHERE name = ?", (name,)
            ).fetchone()
            if held is not None and record.serial <= held[0]:
                revocation = self._decode_revocation(name, held[1]).revocation
                raise revoked_rejection(record, revocation)
            high = conn.execute("SELECT serial FROM serials WHERE name = ?", (name,)).fetchone()
            if high is not None and record.serial <= high[0]:
                current = conn.execute(
                    "SELECT serial, signed FROM records WHERE name = ?", (name,)
                ).fetchone()
                if current is not None and current[0] == record.serial:
                    if self._decode_record(name, current[1]).record == record:
                        return record, False
                    detail = (
                        f"{name} already has another record with serial {record.serial} (a "
                        "serial must not be reused for other contents)"
                    )
                else:
                    detail = (
                        f"{name} serial {record.serial} is not above serial {high[0]}, already "
                        "accepted"
                    )
                raise NameRecordRejected(
                    NameRejection.STALE_SERIAL, detail, name=name, serial=record.serial
                )
            conn.execute(
                "INSERT INTO records (name, serial, not_after, signed, stored_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET serial = "
                "excluded.serial, not_after = excluded.not_after, signed = excluded.signed, "
                "stored_at = excluded.stored_at",
                (name, record.serial, _seconds(record.not_after), signed.encode(), _seconds(when)),
            )
            conn.execute(
                "INSERT INTO serials (name, serial) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
                "SET serial = excluded.serial",
                (name, record.serial),
            )
        return record, True

    def revoke(self, signed: SignedRevocation | bytes, *, at: datetime | None = None) -> Revocation:
        """Verify ``signed`` and apply it: the records it covers are deleted and later ones
        with a serial it covers are refused. Returns the revocation;
        :class:`NameRecordRejected` if it does not verify."""
        revocation, _ = self._revoke(signed, at)
        return revocation

    def _revoke(
        self, signed: SignedRevocation | bytes, at: datetime | None
    ) -> tuple[Revocation, bool]:
        if not isinstance(signed, SignedRevocation):
            signed = SignedRevocation.decode(signed)
        revocation = verify_revocation(signed, self._store, at=_now(at), clock_skew=self._skew)
        name = revocation.name
        with self._write() as conn:
            held = conn.execute("SELECT serial FROM revocations WHERE name = ?", (name,)).fetchone()
            if held is not None and held[0] >= revocation.serial:
                return revocation, False
            conn.execute(
                "INSERT INTO revocations (name, serial, revoked_at, signed) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET serial = excluded.serial, revoked_at = "
                "excluded.revoked_at, signed = excluded.signed",
                (name, revocation.serial, _seconds(revocation.revoked_at), signed.encode()),
            )
            conn.execute(
                "DELETE FROM records WHERE name = ? AND serial <= ?", (name, revocation.serial)
            )
        return revocation, True

    def merge(self, record_set: RecordSet, *, at: datetime | None = None) -> MergeReport:
        """Take what a peer sent (see "Rules"); :class:`RegistryError` stops the merge (what
        was stored before stays)."""
        add_crls(self._store, record_set.crls, chain_certificates(record_set))
        accepted: list[NameRecord] = []
        refused: list[NameRecordRejected] = []
        revoked: list[Revocation] = []
        unchanged = 0
        for signed_revocation in record_set.revocations:
            try:
                revocation, changed = self._revoke(signed_revocation, at)
            except NameRecordRejected as exc:
                refused.append(exc)
                continue
            if changed:
                revoked.append(revocation)
            else:
                unchanged += 1
        for signed in record_set.records:
            try:
                record, changed = self._add(signed, at)
            except NameRecordRejected as exc:
                refused.append(exc)
                continue
            if changed:
                accepted.append(record)
            else:
                unchanged += 1
        return MergeReport(accepted, refused, revoked, unchanged)

    def purge_expired(self, *, at: datetime | None = None) -> int:
        """Delete the records expired at ``at`` (default now, allowing the clock skew);
        returns how many. The highest serial of each name is remembered."""
        limit = _seconds(_now(at) - self._skew)
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM records WHERE not_after < ?", (limit,))
            return int(cursor.rowcount)

    # -- lookups ------------------------------------------------------------------------------

    def resolve(self, name: str, *, at: datetime | None = None) -> NameRecord:
        """The record of ``name``, verified again at ``at`` (default now).

        :class:`NameNotFound` if there is none (or ``name`` is not a valid record name),
        :class:`NameRecordRejected` if the stored record no longer verifies.
        """
        try:
            name = normalize_name(name)
        except InvalidNameRecord as exc:
            raise NameNotFound(f"no record: {exc}") from exc
        rows = self._query("SELECT signed FROM records WHERE name = ?", (name,))
        if not rows:
            revocation = self.revocation(name)
            if revocation is not None:
                raise NameNotFound(
                    f"no record for {name}: revoked through serial {revocation.serial} at "
                    f"{revocation.revoked_at.isoformat()}"
                )
            raise NameNotFound(f"no record for {name}")
        signed = self._decode_record(name, rows[0][0])
        return verify_record(signed, self._store, at=_now(at), clock_skew=self._skew)

    def lookup(self, name: str, *, at: datetime | None = None) -> NameRecord | None:
        """The record of ``name`` if it resolves at ``at`` (default now): ``None`` if there is
        none, or if it no longer verifies (expired, revoked signer...; :meth:`resolve` says
        why)."""
        try:
            return self.resolve(name, at=at)
        except (NameNotFound, NameRecordRejected):
            return None

    def signed(self, name: str) -> SignedRecord | None:
        """The stored signed record of ``name`` (not verified again), or ``None``."""
        name = normalize_name(name)
        rows = self._query("SELECT signed FROM records WHERE name = ?", (name,))
        return self._decode_record(name, rows[0][0]) if rows else None

    def revocation(self, name: str) -> Revocation | None:
        """The held revocation of ``name`` (the highest serial), or ``None``."""
        name = normalize_name(name)
        rows = self._query("SELECT signed FROM revocations WHERE name = ?", (name,))
        return self._decode_revocation(name, rows[0][0]).revocation if rows else None

    def names(self) -> list[str]:
        """Every name with a stored record, sorted."""
        rows = self._query("SELECT name FROM records ORDER BY name")
        return [str(row[0]) for row in rows]

    def next_serial(self, name: str) -> int:
        """One above the highest serial this registry knows for ``name`` (accepted or
        revoked), or 1."""
        name = normalize_name(name)
        rows = self._query(
            "SELECT MAX(serial) FROM (SELECT serial FROM serials WHERE name = ? UNION ALL "
            "SELECT serial FROM revocations WHERE name = ?)",
            (name, name),
        )
        high = rows[0][0] if rows else None
        if high is None:
            return 1
        if not isinstance(high, int):
            raise RegistryCorrupted(f"a stored serial of {name} is not an integer: {high!r}")
        return high + 1

    def record_set(
        self,
        anchors: Iterable[x509.Certificate],
        *,
        crls: Iterable[x509.CertificateRevocationList] = (),
        at: datetime | None = None,
    ) -> RecordSet:
        """Every stored record not expired at ``at`` (default now) and every revocation, with
        ``anchors`` and ``crls``, sorted by name: what to export or send to a peer."""
        limit = _seconds(_now(at) - self._skew)
        rows = self._query(
            "SELECT name, signed FROM records WHERE not_after >= ? ORDER BY name", (limit,)
        )
        records = tuple(self._decode_record(str(name), blob) for name, blob in rows)
        revocation_rows = self._query("SELECT name, signed FROM revocations ORDER BY name")
        revocations = tuple(
            self._decode_revocation(str(name), blob) for name, blob in revocation_rows
        )
        return RecordSet(records, revocations, tuple(anchors), tuple(crls))
