"""One validator's asset ledger: committees, locks, applied certificates and their Merkle log.

A :class:`Ledger` is the durable state of one validator of the quorum-certified asset ledger
(``hypermesh.v1`` ``ledger.proto``): the committee of every epoch it has seen, the (asset,
version) slots it has voted on (*locks*: a validator votes for one change per slot, whatever
the epoch; locks outlive committee changes and are released only when a certificate of the
asset at that version or later is applied), the certificates it has applied in its own order,
an append-only RFC 9162 Merkle log over them (:mod:`trustchain.ct.merkle`), each asset's
recorded state, and evidence of misbehaviour.

The ledger checks that what it is given fits together (a ballot matches its change and vote,
versions follow one another) but verifies no signature and no proof: the protocol core
(:mod:`trustchain.consensus.quorum`) does that before it calls in.

Byte layouts
============

Labels end in a zero byte; integers are unsigned big-endian::

    state record        STATE_RECORD_LABEL (b"hypermesh/ledger-state/v1\\x00", 26 bytes)
                        || epoch (u64) || asset id (32) || version (u64) || change digest (32)
                        (106 bytes: state_record_bytes)
    log leaf hash       SHA-256(0x00 || state record)                 (merkle.leaf_hash)
    certificate digest  SHA-256(state record)                         (StateHash.certificate_digest)
    committee digest    SHA-256(COMMITTEE_LABEL || deterministic encoding of the Committee message)
    evidence hash       SHA-256(deterministic encoding of the Evidence message)

Every protobuf message the database holds is its deterministic serialization
(``SerializeToString(deterministic=True)``); one that does not decode when read raises
:class:`~trustchain.errors.LedgerCorrupted`.

Database (schema version 1)
===========================

One SQLite file, opened through :mod:`trustchain.sqlite_db` (WAL, ``synchronous=FULL``)::

    meta(key TEXT PRIMARY KEY, value NOT NULL)
        schema_version   "1"
        validator_id     the validator's id (32 bytes): the ledger is that validator's
        genesis_digest   committee digest of the genesis committee (epoch 0, 32 bytes)
    committees(epoch INTEGER PRIMARY KEY,          0, 1, 2, ... without gaps
               committee BLOB,                     the Committee message
               digest BLOB (32),                   its committee digest
               certificate BLOB)                   the CommitteeCertificate that made it current;
                                                   NULL exactly for the genesis committee (epoch 0)
    assets(asset_id BLOB (32) PRIMARY KEY,         each asset's recorded state: its newest version,
           version INTEGER, state_hash BLOB (32),  that version's change digest (combined state
           poh_end BLOB (32),                      hash), PoH end hash, and where its
           log_index INTEGER UNIQUE)               certificate sits in the log
    locks(asset_id BLOB (32), version INTEGER,     the slots this validator voted on: the change
          epoch INTEGER, change_digest BLOB (32),  digest, and the epoch, AssetStateChange and
          change BLOB, vote BLOB,                  signed Vote of its newest vote for it (the same
          PRIMARY KEY (asset_id, version))         digest re-voted in a later epoch moves the
                                                   lock there); PRIMARY KEY (asset_id, version)
    certificates(log_index INTEGER PRIMARY KEY,    the applied StateCertificates in log order, with
                 asset_id BLOB (32), version,      the certified (asset, version, epoch, digest);
                 epoch, change_digest BLOB (32),   UNIQUE (asset_id, version)
                 certificate BLOB)
    log_leaves(idx INTEGER PRIMARY KEY,            leaf hash of log entry idx (0, 1, 2, ... without
               leaf_hash BLOB (32))                gaps): the hash of certificate idx's state record
    log_nodes(level INTEGER >= 1, idx INTEGER,     the hash of every complete (perfect) subtree:
              hash BLOB (32),                      leaves [idx * 2**level, (idx + 1) * 2**level),
              PRIMARY KEY (level, idx))            as the transparency log keeps them
    evidence(seq INTEGER PRIMARY KEY,              Evidence messages in the order stored,
             hash BLOB (32) UNIQUE, evidence BLOB) deduplicated by evidence hash

CHECK constraints hold every id and hash to 32 bytes, every integer to ``>= 0`` and every
message to at least one byte. A log of ``n`` entries holds ``n`` leaves and ``n - popcount(n)``
nodes; the root at any size and every inclusion proof take ``O(log n)`` primary-key reads
(:mod:`trustchain.ct.merkle`, "Subtrees"). Integers (epochs, versions, indices) are SQLite's
signed 64 bits: values from ``2**63`` on are refused (:class:`~trustchain.errors.LedgerError`).
Columns are read as bytes whatever their storage class, so a value of the wrong kind fails the
row's content checks (:class:`~trustchain.errors.LedgerCorrupted`), not a text decoder.

Durability
==========

Every change (:meth:`Ledger.record_locks`, :meth:`Ledger.apply`, :meth:`Ledger.add_evidence`,
:meth:`Ledger.advance_committee`) is one ``BEGIN IMMEDIATE`` transaction: a crash, even
``SIGKILL`` or power loss, leaves all of it or none of it. In particular a lock is durable
before :meth:`~Ledger.record_locks` returns, so a vote sent after it is never forgotten; and a
certificate, its log leaf and nodes, the asset's new state and the release of its locks are
written together. :meth:`Ledger.audit` rechecks the whole database.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from google.protobuf.message import DecodeError, Message

from hypermesh_interfaces.v1 import common_pb2, ledger_pb2
from trustchain import sqlite_db
from trustchain.consensus.committee import COMMITTEE_LABEL
from trustchain.consensus.proofs.bundle import PreviousState
from trustchain.consensus.votes import Ballot
from trustchain.ct import merkle
from trustchain.errors import (
    ChangeRefused,
    InvalidCommittee,
    InvalidVote,
    LedgerCorrupted,
    LedgerError,
    LedgerRefusal,
)

__all__ = [
    "SCHEMA_VERSION",
    "STATE_RECORD_LABEL",
    "Ledger",
    "RecordedState",
    "committee_digest",
    "evidence_hash",
    "state_record_bytes",
]

#: Version of the database layout.
SCHEMA_VERSION: Final = "1"
#: Domain label of a state record (the log entry of an applied certificate).
STATE_RECORD_LABEL: Final = b"hypermesh/ledger-state/v1\x00"

_HASH: Final = 32
_MAX_INTEGER: Final = (1 << 63) - 1
_NO_VALIDATOR: Final = bytes(_HASH)
#: Rows per chunk when :meth:`Ledger.audit` streams a table.
_AUDIT_CHUNK: Final = 1024
_TABLES: Final = frozenset(
    {"meta", "committees", "assets", "locks", "certificates", "log_leaves", "log_nodes", "evidence"}
)

_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL)",
    "CREATE TABLE committees ("
    " epoch INTEGER PRIMARY KEY CHECK (epoch >= 0),"
    " committee BLOB NOT NULL CHECK (length(committee) > 0),"
    " digest BLOB NOT NULL CHECK (length(digest) = 32),"
    " certificate BLOB CHECK (length(certificate) > 0),"
    " CHECK ((epoch = 0) = (certificate IS NULL)))",
    "CREATE TABLE assets ("
    " asset_id BLOB PRIMARY KEY CHECK (length(asset_id) = 32),"
    " version INTEGER NOT NULL CHECK (version >= 0),"
    " state_hash BLOB NOT NULL CHECK (length(state_hash) = 32),"
    " poh_end BLOB NOT NULL CHECK (length(poh_end) = 32),"
    " log_index INTEGER NOT NULL UNIQUE CHECK (log_index >= 0)) WITHOUT ROWID",
    "CREATE TABLE locks ("
    " asset_id BLOB NOT NULL CHECK (length(asset_id) = 32),"
    " version INTEGER NOT NULL CHECK (version >= 0),"
    " epoch INTEGER NOT NULL CHECK (epoch >= 0),"
    " change_digest BLOB NOT NULL CHECK (length(change_digest) = 32),"
    " change BLOB NOT NULL CHECK (length(change) > 0),"
    " vote BLOB NOT NULL CHECK (length(vote) > 0),"
    " PRIMARY KEY (asset_id, version)) WITHOUT ROWID",
    "CREATE TABLE certificates ("
    " log_index INTEGER PRIMARY KEY CHECK (log_index >= 0),"
    " asset_id BLOB NOT NULL CHECK (length(asset_id) = 32),"
    " version INTEGER NOT NULL CHECK (version >= 0),"
    " epoch INTEGER NOT NULL CHECK (epoch >= 0),"
    " change_digest BLOB NOT NULL CHECK (length(change_digest) = 32),"
    " certificate BLOB NOT NULL CHECK (length(certificate) > 0),"
    " UNIQUE (asset_id, version))",
    "CREATE TABLE log_leaves ("
    " idx INTEGER PRIMARY KEY CHECK (idx >= 0),"
    " leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32))",
    "CREATE TABLE log_nodes ("
    " level INTEGER NOT NULL CHECK (level >= 1),"
    " idx INTEGER NOT NULL CHECK (idx >= 0),"
    " hash BLOB NOT NULL CHECK (length(hash) = 32),"
    " PRIMARY KEY (level, idx)) WITHOUT ROWID",
    "CREATE TABLE evidence ("
    " seq INTEGER PRIMARY KEY,"
    " hash BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),"
    " evidence BLOB NOT NULL CHECK (length(evidence) > 0))",
)

_M = TypeVar("_M", bound=Message)


# --- values and byte layouts ----------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedState:
    """An asset's recorded state: its newest applied ``version``, that version's change digest
    (``state_hash``), its PoH end hash and the log index of its certificate."""

    asset_id: bytes
    version: int
    state_hash: bytes
    poh_end: bytes
    log_index: int

    def previous(self) -> PreviousState:
        """What the asset's next version builds on."""
        return PreviousState(self.version, self.state_hash, self.poh_end)


def state_record_bytes(ballot: Ballot) -> bytes:
    """The log entry of the certificate for ``ballot``: ``STATE_RECORD_LABEL || epoch (u64) ||
    asset id (32) || version (u64) || change digest (32)`` (the validator id is not part of it)."""
    return (
        STATE_RECORD_LABEL
        + ballot.epoch.to_bytes(8, "big")
        + ballot.asset_id
        + ballot.version.to_bytes(8, "big")
        + ballot.change_digest
    )


def committee_digest(committee: ledger_pb2.Committee) -> bytes:
    """SHA-256 over ``COMMITTEE_LABEL`` and the deterministic encoding of ``committee`` (for a
    message made by :meth:`Committee.to_message`, equal to :meth:`Committee.digest`)."""
    return _digest_of_encoding(_encode(committee))


def evidence_hash(evidence: ledger_pb2.Evidence) -> bytes:
    """SHA-256 over the deterministic encoding of ``evidence``: what the ledger dedupes by."""
    return hashlib.sha256(_encode(evidence)).digest()


def _digest_of_encoding(encoded: bytes) -> bytes:
    return hashlib.sha256(COMMITTEE_LABEL + encoded).digest()


def _encode(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)


# --- reading rows ---------------------------------------------------------------------------------


def _decode(kind: type[_M], value: object, what: str) -> _M:
    """``value`` (a stored BLOB) parsed as ``kind``; :class:`LedgerCorrupted` if it is no BLOB,
    does not parse, or is not the deterministic encoding of what it parses to."""
    data = _blob(value, what)
    message = kind()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise LedgerCorrupted(f"{what} does not decode: {exc}") from exc
    if _encode(message) != data:
        raise LedgerCorrupted(f"{what} is not a deterministic encoding")
    return message


def _blob(value: object, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise LedgerCorrupted(f"{what} is stored as {type(value).__name__}, not bytes")
    if size is not None and len(value) != size:
        raise LedgerCorrupted(f"{what} is {len(value)} bytes, not {size}")
    return value


def _integer(value: object, what: str) -> int:
    if not isinstance(value, int) or value < 0:
        raise LedgerCorrupted(f"{what} is {value!r}, not a non-negative integer")
    return value


def _storable(value: int, what: str) -> int:
    if not 0 <= value <= _MAX_INTEGER:
        raise LedgerError(f"{what} {value} is beyond what the ledger stores (at most 2**63 - 1)")
    return value


@contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    """Translate SQLite failures: a violated constraint or an unreadable file is corruption,
    anything else (locked, I/O, closed) a :class:`LedgerError`."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise LedgerCorrupted(f"ledger {path}: constraint violated: {exc}") from exc
    except sqlite3.OperationalError as exc:
        raise LedgerError(f"ledger {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:  # not a database, malformed image
        raise LedgerCorrupted(f"ledger {path}: {exc}") from exc


@contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A read transaction: every query of the block sees the same database state."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _check_committee(committee: ledger_pb2.Committee, what: str) -> None:
    if not committee.members:
        raise InvalidCommittee(f"{what} has no members")
    if committee.epoch > _MAX_INTEGER:
        raise InvalidCommittee(f"{what} has epoch {committee.epoch}, beyond 2**63 - 1")


class Ledger(sqlite_db.ConnectionOwner):
    """One validator's ledger in one SQLite file (see the module docs).

    Open with :meth:`open`; close with :meth:`close` or a ``with`` block. Safe to share between
    threads (one lock guards the connection).
    """

    def __init__(
        self,
        *,
        path: Path,
        conn: sqlite3.Connection,
        validator_id: bytes,
        genesis_digest: bytes,
    ) -> None:
        """Internal: use :meth:`open`."""
        super().__init__(conn)
        self._path = path
        self._validator_id = validator_id
        self._genesis_digest = genesis_digest
        self._frontier = merkle.Frontier()

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: Path | str, *, validator_id: bytes, genesis: ledger_pb2.Committee
    ) -> Ledger:
        """Open the ledger in the SQLite file ``path``, creating it (and its directory) for
        ``validator_id`` with the ``genesis`` committee (epoch 0) if there is none.

        :class:`InvalidCommittee` if ``genesis`` is not of epoch 0 or has no members;
        :class:`LedgerError` if the ledger was created for another validator id or genesis
        committee (by committee digest), or cannot be opened; :class:`LedgerCorrupted` if the
        file is not a sound ledger.
        """
        path = Path(path).expanduser()
        validator_id = bytes(validator_id)
        if len(validator_id) != _HASH:
            raise LedgerError(f"a validator id is {_HASH} bytes, got {len(validator_id)}")
        _check_committee(genesis, "the genesis committee")
        if genesis.epoch != 0:
            raise InvalidCommittee(f"the genesis committee is of epoch 0, not {genesis.epoch}")
        encoded = _encode(genesis)
        digest = _digest_of_encoding(encoded)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        with _sqlite_errors(path):
            conn = sqlite_db.connect(path, error=LedgerError)
        try:
            # Every column is read as bytes, even a TEXT value someone stored in a BLOB column:
            # the row's content checks then report it, instead of a UTF-8 decoding failure.
            conn.text_factory = bytes
            with _sqlite_errors(path):
                cls._initialise_or_check(conn, path, validator_id, encoded, digest)
                ledger = cls(path=path, conn=conn, validator_id=validator_id, genesis_digest=digest)
                with _snapshot(conn):
                    ledger._refresh(conn)
        except BaseException:
            conn.close()
            raise
        return ledger

    @staticmethod
    def _initialise_or_check(
        conn: sqlite3.Connection, path: Path, validator_id: bytes, genesis: bytes, digest: bytes
    ) -> None:
        with sqlite_db.transaction(conn):
            tables = {
                bytes(r[0]).decode(errors="replace")
                for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if not tables:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema_version", SCHEMA_VERSION),
                        ("validator_id", validator_id),
                        ("genesis_digest", digest),
                    ],
                )
                conn.execute(
                    "INSERT INTO committees (epoch, committee, digest, certificate)"
                    " VALUES (0, ?, ?, NULL)",
                    (genesis, digest),
                )
                return
        if tables != _TABLES:
            raise LedgerCorrupted(
                f"{path} is not a ledger: tables {sorted(tables)}, expected {sorted(_TABLES)}"
            )
        meta = {bytes(k): v for k, v in conn.execute("SELECT key, value FROM meta")}
        if meta.get(b"schema_version") != SCHEMA_VERSION.encode():
            raise LedgerCorrupted(
                f"{path}: unsupported schema version {meta.get(b'schema_version')!r}"
            )
        stored_id = _blob(meta.get(b"validator_id"), f"{path}: the validator id", _HASH)
        stored_digest = _blob(meta.get(b"genesis_digest"), f"{path}: the genesis digest", _HASH)
        if stored_id != validator_id:
            raise LedgerError(
                f"the ledger {path} is validator {stored_id.hex()}'s, not {validator_id.hex()}'s"
            )
        if stored_digest != digest:
            raise LedgerError(
                f"the ledger {path} was created with the genesis committee {stored_digest.hex()},"
                f" not {digest.hex()}"
            )
        row = conn.execute("SELECT committee, digest FROM committees WHERE epoch = 0").fetchone()
        if row is None:
            raise LedgerCorrupted(f"{path}: the genesis committee is missing")
        if _blob(row[1], "the genesis committee digest") != digest or (
            _digest_of_encoding(_blob(row[0], "the genesis committee")) != digest
        ):
            raise LedgerCorrupted(f"{path}: the stored genesis committee is not the ledger's")

    def __repr__(self) -> str:
        return f"<Ledger {str(self._path)!r} validator={self._validator_id.hex()[:16]}>"

    # -- identity --------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def validator_id(self) -> bytes:
        """The id of the validator whose ledger this is."""
        return self._validator_id

    # -- committees ------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The current committee epoch (the newest committee's)."""
        with self._lock, _sqlite_errors(self._path):
            return self._epoch(self._db())

    def committee_message(self, epoch: int | None = None) -> ledger_pb2.Committee:
        """The committee of ``epoch`` (None: the current one); :class:`LedgerError` if the
        ledger has none for that epoch."""
        with self._lock, _sqlite_errors(self._path):
            conn = self._db()
            with _snapshot(conn):
                if epoch is None:
                    epoch = self._epoch(conn)
                elif not 0 <= epoch <= _MAX_INTEGER:
                    raise LedgerError(f"no committee for epoch {epoch}")
                row = conn.execute(
                    "SELECT committee FROM committees WHERE epoch = ?", (epoch,)
                ).fetchone()
        if row is None:
            raise LedgerError(f"no committee for epoch {epoch}")
        committee = _decode(ledger_pb2.Committee, row[0], f"the committee of epoch {epoch}")
        if committee.epoch != epoch:
            raise LedgerCorrupted(f"the committee stored for epoch {epoch} is {committee.epoch}'s")
        return committee

    def advance_committee(self, certificate: ledger_pb2.CommitteeCertificate) -> None:
        """Make ``certificate.next`` (verified by the caller) the current committee, in one
        transaction. Locks are kept: a slot this validator voted on in an earlier epoch stays
        locked to that change (see :mod:`trustchain.consensus.quorum` for why). The same
        committee again is a no-op;
        :class:`LedgerError` if its epoch is not the current one + 1 (or a stored epoch holds
        another committee), :class:`InvalidCommittee` if it has no members."""
        nxt = certificate.next
        _check_committee(nxt, "the next committee")
        encoded = _encode(nxt)
        with (
            self._lock,
            _sqlite_errors(self._path),
            sqlite_db.transaction(self._db()) as conn,
        ):
            current = self._epoch(conn)
            if nxt.epoch <= current:
                row = conn.execute(
                    "SELECT committee FROM committees WHERE epoch = ?", (nxt.epoch,)
                ).fetchone()
                if row is not None and row[0] == encoded:
                    return
                raise LedgerError(f"epoch {nxt.epoch} already has another committee")
            if nxt.epoch != current + 1:
                raise LedgerError(f"the next committee is of epoch {current + 1}, not {nxt.epoch}")
            conn.execute(
                "INSERT INTO committees (epoch, committee, digest, certificate)"
                " VALUES (?, ?, ?, ?)",
                (nxt.epoch, encoded, _digest_of_encoding(encoded), _encode(certificate)),
            )

    # -- assets and locks ------------------------------------------------------------------------

    def state(self, asset_id: bytes) -> RecordedState | None:
        """The asset's recorded state; None if no version of it is applied here."""
        asset = bytes(asset_id)
        with self._lock, _sqlite_errors(self._path):
            row = (
                self._db()
                .execute(
                    "SELECT version, state_hash, poh_end, log_index FROM assets WHERE asset_id = ?",
                    (asset,),
                )
                .fetchone()
            )
        if row is None:
            return None
        what = f"asset {asset.hex()}'s"
        return RecordedState(
            asset_id=asset,
            version=_integer(row[0], f"{what} version"),
            state_hash=_blob(row[1], f"{what} state hash", _HASH),
            poh_end=_blob(row[2], f"{what} PoH end", _HASH),
            log_index=_integer(row[3], f"{what} log index"),
        )

    def locked_vote(self, asset_id: bytes, version: int) -> ledger_pb2.Vote | None:
        """The newest vote this validator cast for (asset, version) while it is locked (of
        whatever epoch); else None."""
        if not 0 <= version <= _MAX_INTEGER:
            return None
        with self._lock, _sqlite_errors(self._path):
            row = (
                self._db()
                .execute(
                    "SELECT vote FROM locks WHERE asset_id = ? AND version = ?",
                    (bytes(asset_id), version),
                )
                .fetchone()
            )
        if row is None:
            return None
        return _decode(ledger_pb2.Vote, row[0], f"the vote locking {bytes(asset_id).hex()}")

    def record_locks(
        self,
        entries: Sequence[tuple[Ballot, ledger_pb2.AssetStateChange, ledger_pb2.Vote]],
    ) -> None:
        """Lock each entry's (asset, version) to its change and signed vote, in ONE transaction.

        A slot already locked to the same change digest is left as it is, unless the entry is
        of a later epoch than the lock: then the lock moves to it (its epoch, change and vote
        replace the stored ones), so the lock always holds the newest vote. If any slot is
        locked to another digest, in any epoch (by an earlier call or an earlier entry of this
        one), :class:`ChangeRefused` (``CONFLICT``, ``locked_vote`` the vote cast for it) is
        raised and nothing is written. :class:`LedgerError` if an entry does not fit together
        (the ballot is not this validator's, or not the vote's or the change's).
        """
        rows = [self._lock_row(*entry) for entry in entries]
        if not rows:
            return
        with (
            self._lock,
            _sqlite_errors(self._path),
            sqlite_db.transaction(self._db()) as conn,
        ):
            for row in rows:
                asset, version, epoch, digest, change, vote = row
                found = conn.execute(
                    "SELECT epoch, change_digest, vote FROM locks"
                    " WHERE asset_id = ? AND version = ?",
                    (asset, version),
                ).fetchone()
                if found is None:
                    conn.execute(
                        "INSERT INTO locks (asset_id, version, epoch, change_digest, change,"
                        " vote) VALUES (?, ?, ?, ?, ?, ?)",
                        row,
                    )
                    continue
                locked = _blob(found[1], "a locked change digest", _HASH)
                if locked != digest:
                    raise ChangeRefused(
                        LedgerRefusal.CONFLICT,
                        f"asset {asset.hex()} version {version} is locked to change {locked.hex()}",
                        locked_vote=_decode(ledger_pb2.Vote, found[2], "a locked vote"),
                    )
                if _integer(found[0], "a lock's epoch") < epoch:
                    conn.execute(
                        "UPDATE locks SET epoch = ?, change = ?, vote = ?"
                        " WHERE asset_id = ? AND version = ?",
                        (epoch, change, vote, asset, version),
                    )

    def _lock_row(
        self, ballot: Ballot, change: ledger_pb2.AssetStateChange, vote: ledger_pb2.Vote
    ) -> tuple[bytes, int, int, bytes, bytes, bytes]:
        if ballot.validator_id != self._validator_id:
            raise LedgerError(
                f"a lock holds this validator's vote; the ballot is {ballot.validator_id.hex()}'s"
            )
        _storable(ballot.epoch, "epoch")
        _storable(ballot.version, "version")
        if Ballot.of(vote) != ballot:
            raise LedgerError("the vote is not for the ballot")
        if not vote.signature:
            raise LedgerError("the vote is not signed")
        if _certified(change, ballot.validator_id) != ballot:
            raise LedgerError("the ballot is not for the change")
        return (
            ballot.asset_id,
            ballot.version,
            ballot.epoch,
            ballot.change_digest,
            _encode(change),
            _encode(vote),
        )

    # -- applying certificates -------------------------------------------------------------------

    def apply(
        self, certificate: ledger_pb2.StateCertificate, ballot: Ballot
    ) -> common_pb2.StateHash:
        """Apply ``certificate``, whose certified ballot (its votes verified by the caller
        against the committee of its epoch, the current one or an earlier one) is ``ballot``,
        in ONE transaction; return where it sits in the log.

        * already applied with this digest: its StateHash (at the current log size);
        * applied with another digest: the equivocations the two certificates prove (votes of
          one validator in both, same epoch) are stored as evidence, and
          :class:`LedgerCorrupted` ("conflicting certificates ...") is raised;
        * the asset's recorded version is not ``version - 1`` (absent, for version 0):
          :class:`ChangeRefused` (``WRONG_VERSION``, detail "missing predecessor ...");
        * else the certificate is stored, its state record appended to the log, the asset's
          state set (state hash = change digest, the change's PoH end hash, the log index) and
          the asset's locks up to this version released; the StateHash after the append.

        :class:`ChangeRefused` (``MALFORMED``) if the change's PoH end hash is not 32 bytes;
        :class:`LedgerError` if ``ballot`` is not the certificate's change's.
        """
        change = certificate.change
        if _certified(change, ballot.validator_id) != ballot:
            raise LedgerError("the ballot is not for the certificate's change")
        _storable(ballot.epoch, "epoch")
        _storable(ballot.version, "version")
        poh_end = bytes(change.proofs.time.poh.end_hash)
        if len(poh_end) != _HASH:
            raise ChangeRefused(
                LedgerRefusal.MALFORMED,
                f"the change's PoH end hash is {len(poh_end)} bytes, not {_HASH}",
            )
        asset, version = ballot.asset_id, ballot.version
        encoded = _encode(certificate)
        record = state_record_bytes(ballot)
        leaf = merkle.leaf_hash(record)
        conflict: str | None = None
        with self._lock, _sqlite_errors(self._path):
            with sqlite_db.transaction(self._db()) as conn:
                found = conn.execute(
                    "SELECT log_index, change_digest, certificate FROM certificates"
                    " WHERE asset_id = ? AND version = ?",
                    (asset, version),
                ).fetchone()
                if found is not None:
                    index = _integer(found[0], "a certificate's log index")
                    applied = _blob(found[1], f"certificate {index}'s change digest", _HASH)
                    if applied == ballot.change_digest:
                        return self._state_hash(conn, index)
                    stored = _decode(ledger_pb2.StateCertificate, found[2], f"certificate {index}")
                    proofs = _equivocations(stored, certificate)
                    conn.executemany(
                        "INSERT OR IGNORE INTO evidence (hash, evidence) VALUES (?, ?)",
                        [(evidence_hash(e), _encode(e)) for e in proofs],
                    )
                    conflict = (
                        f"conflicting certificates for asset {asset.hex()} version {version}: "
                        f"change {applied.hex()} is applied (log index {index}), "
                        f"{ballot.change_digest.hex()} is certified too; {len(proofs)} "
                        "equivocations stored as evidence"
                    )
                else:
                    self._check_predecessor(conn, asset, version)
                    self._refresh(conn)
                    frontier = self._frontier.copy()
                    index = frontier.size
                    nodes = frontier.append(leaf)
                    conn.execute(
                        "INSERT INTO certificates (log_index, asset_id, version, epoch,"
                        " change_digest, certificate) VALUES (?, ?, ?, ?, ?, ?)",
                        (index, asset, version, ballot.epoch, ballot.change_digest, encoded),
                    )
                    conn.execute(
                        "INSERT INTO log_leaves (idx, leaf_hash) VALUES (?, ?)", (index, leaf)
                    )
                    conn.executemany(
                        "INSERT INTO log_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes
                    )
                    conn.execute(
                        "INSERT OR REPLACE INTO assets (asset_id, version, state_hash, poh_end,"
                        " log_index) VALUES (?, ?, ?, ?, ?)",
                        (asset, version, ballot.change_digest, poh_end, index),
                    )
                    conn.execute(
                        "DELETE FROM locks WHERE asset_id = ? AND version <= ?", (asset, version)
                    )
            if conflict is not None:
                raise LedgerCorrupted(conflict)
            self._frontier = frontier
            return common_pb2.StateHash(
                certificate_digest=hashlib.sha256(record).digest(),
                log_index=index,
                log_root=frontier.root(),
                log_size=frontier.size,
            )

    @staticmethod
    def _check_predecessor(conn: sqlite3.Connection, asset: bytes, version: int) -> None:
        row = conn.execute("SELECT version FROM assets WHERE asset_id = ?", (asset,)).fetchone()
        if row is None:
            if version != 0:
                raise ChangeRefused(
                    LedgerRefusal.WRONG_VERSION,
                    f"missing predecessor: asset {asset.hex()} is unknown here, the certificate"
                    f" is for version {version}",
                )
            return
        recorded = _integer(row[0], f"asset {asset.hex()}'s version")
        if version > recorded + 1:
            raise ChangeRefused(
                LedgerRefusal.WRONG_VERSION,
                f"missing predecessor: asset {asset.hex()} is at version {recorded} here, the"
                f" certificate is for version {version}",
            )
        if version <= recorded:
            raise LedgerCorrupted(
                f"asset {asset.hex()} is at version {recorded} but holds no certificate for"
                f" version {version}"
            )

    # -- the log ---------------------------------------------------------------------------------

    @property
    def log_size(self) -> int:
        """The number of applied certificates (log entries)."""
        with self._lock, _sqlite_errors(self._path):
            return _log_size(self._db())

    def log_root(self, size: int | None = None) -> bytes:
        """The Merkle tree hash of the first ``size`` log entries (None: all of them);
        :class:`LedgerError` unless ``0 <= size <= log_size``."""
        with self._lock, _sqlite_errors(self._path):
            conn = self._db()
            with _snapshot(conn):
                size = _tree_size(conn, size)
                return merkle.root(size, _subtree_getter(conn))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of log entry ``index`` in the tree of the first ``size`` entries
        (None: all); :class:`LedgerError` unless ``0 <= index < size <= log_size``."""
        with self._lock, _sqlite_errors(self._path):
            conn = self._db()
            with _snapshot(conn):
                size = _tree_size(conn, size)
                if not 0 <= index < size:
                    raise LedgerError(f"log index {index} is not in a tree of size {size}")
                return merkle.inclusion_proof(index, size, _subtree_getter(conn))

    def state_hash_at(self, log_index: int) -> common_pb2.StateHash:
        """Where the certificate at ``log_index`` sits: its certificate digest, index, and the
        log's current root and size; :class:`LedgerError` if there is no such entry."""
        with self._lock, _sqlite_errors(self._path):
            conn = self._db()
            with _snapshot(conn):
                return self._state_hash(conn, log_index)

    def certificates_since(self, log_index: int, limit: int) -> list[ledger_pb2.StateCertificate]:
        """At most ``limit`` applied certificates from log index ``log_index`` on, in log order
        (the order a peer catching up applies them in)."""
        if log_index < 0 or limit < 0:
            raise LedgerError(f"no certificates from index {log_index}, limit {limit}")
        if log_index > _MAX_INTEGER or limit == 0:
            return []
        with self._lock, _sqlite_errors(self._path):
            rows = (
                self._db()
                .execute(
                    "SELECT log_index, certificate FROM certificates WHERE log_index >= ?"
                    " ORDER BY log_index LIMIT ?",
                    (log_index, min(limit, _MAX_INTEGER)),
                )
                .fetchall()
            )
        return [_decode(ledger_pb2.StateCertificate, c, f"certificate {i}") for i, c in rows]

    # -- evidence --------------------------------------------------------------------------------

    def add_evidence(self, evidence: ledger_pb2.Evidence) -> bool:
        """Store ``evidence`` (verified by the caller); False if it is already stored (same
        evidence hash). :class:`LedgerError` for an Evidence that holds nothing."""
        if evidence.WhichOneof("kind") is None:
            raise LedgerError("the evidence holds no proof")
        encoded = _encode(evidence)
        with (
            self._lock,
            _sqlite_errors(self._path),
            sqlite_db.transaction(self._db()) as conn,
        ):
            cursor = conn.execute(
                "INSERT OR IGNORE INTO evidence (hash, evidence) VALUES (?, ?)",
                (hashlib.sha256(encoded).digest(), encoded),
            )
            return cursor.rowcount == 1

    def evidence(self) -> list[ledger_pb2.Evidence]:
        """Every stored evidence, in the order stored."""
        with self._lock, _sqlite_errors(self._path):
            rows = self._db().execute("SELECT seq, evidence FROM evidence ORDER BY seq").fetchall()
        return [_decode(ledger_pb2.Evidence, e, f"evidence {s}") for s, e in rows]

    # -- audit -----------------------------------------------------------------------------------

    def audit(self) -> None:
        """Recheck the whole database; :class:`LedgerCorrupted` naming the first fault.

        Checks that the committees run from the genesis one without gaps (each decoding, with
        its digest, made current by a certificate for it); that the log's leaves are numbered
        without gaps, every stored node is the hash of its children and there are exactly the
        nodes its size implies (the root recomputed from the leaves is the one served); that
        the certificates are exactly one per log entry, each decoding to a change with the
        stored (asset, version, epoch, digest) whose state record is that entry's leaf; that
        every asset's state is its newest certificate's (versions 0..n all applied) and every
        certified asset has a state; that every lock holds this validator's vote for its
        change; and that every evidence decodes under its hash. O(n) reads.
        """
        with self._lock, _sqlite_errors(self._path):
            conn = self._db()
            with _snapshot(conn):
                self._audit_committees(conn)
                size = _audit_log(conn)
                _audit_certificates(conn, size)
                _audit_assets(conn)
                self._audit_locks(conn)
                _audit_evidence(conn)

    def _audit_committees(self, conn: sqlite3.Connection) -> None:
        cursor = conn.execute(
            "SELECT epoch, committee, digest, certificate FROM committees ORDER BY epoch"
        )
        expected = 0
        while rows := cursor.fetchmany(_AUDIT_CHUNK):
            for epoch, encoded, digest, certificate in rows:
                if epoch != expected:
                    raise LedgerCorrupted(f"the committee of epoch {expected} is missing")
                what = f"the committee of epoch {epoch}"
                committee = _decode(ledger_pb2.Committee, encoded, what)
                if committee.epoch != epoch:
                    raise LedgerCorrupted(f"{what} names epoch {committee.epoch}")
                if _digest_of_encoding(encoded) != _blob(digest, f"{what}'s digest", _HASH):
                    raise LedgerCorrupted(f"{what}'s digest is not its digest")
                if epoch == 0:
                    if digest != self._genesis_digest:
                        raise LedgerCorrupted("the genesis committee is not the ledger's")
                else:
                    made = _decode(
                        ledger_pb2.CommitteeCertificate, certificate, f"{what}'s certificate"
                    )
                    if _encode(made.next) != encoded:
                        raise LedgerCorrupted(f"{what}'s certificate is for another committee")
                expected += 1
        if expected == 0:
            raise LedgerCorrupted("the ledger holds no committee")

    def _audit_locks(self, conn: sqlite3.Connection) -> None:
        cursor = conn.execute(
            "SELECT asset_id, version, epoch, change_digest, change, vote FROM locks"
        )
        while rows := cursor.fetchmany(_AUDIT_CHUNK):
            for asset, version, epoch, digest, change, vote in rows:
                what = f"the lock of asset {_blob(asset, 'a locked asset id').hex()} v{version}"
                try:
                    expected = Ballot(epoch, self._validator_id, asset, version, digest)
                except (ValueError, TypeError) as exc:
                    raise LedgerCorrupted(f"{what} is malformed: {exc}") from exc
                decoded_vote = _decode(ledger_pb2.Vote, vote, f"{what}'s vote")
                decoded_change = _decode(ledger_pb2.AssetStateChange, change, f"{what}'s change")
                try:
                    cast = Ballot.of(decoded_vote)
                except InvalidVote as exc:
                    raise LedgerCorrupted(f"{what}'s vote is malformed: {exc}") from exc
                if cast != expected:
                    raise LedgerCorrupted(f"{what} holds a vote for something else")
                if _certified(decoded_change, self._validator_id) != expected:
                    raise LedgerCorrupted(f"{what} holds another change")

    # -- internals -------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"the ledger {self._path} is closed")
        return self._conn

    @staticmethod
    def _epoch(conn: sqlite3.Connection) -> int:
        value = conn.execute("SELECT MAX(epoch) FROM committees").fetchone()[0]
        if value is None:
            raise LedgerCorrupted("the ledger holds no committee")
        return _integer(value, "the current epoch")

    def _state_hash(self, conn: sqlite3.Connection, log_index: int) -> common_pb2.StateHash:
        if not 0 <= log_index <= _MAX_INTEGER:
            raise LedgerError(f"no certificate at log index {log_index}")
        row = conn.execute(
            "SELECT epoch, asset_id, version, change_digest FROM certificates WHERE log_index = ?",
            (log_index,),
        ).fetchone()
        if row is None:
            raise LedgerError(f"no certificate at log index {log_index}")
        ballot = _row_ballot(row, f"certificate {log_index}")
        size = _log_size(conn)
        return common_pb2.StateHash(
            certificate_digest=hashlib.sha256(state_record_bytes(ballot)).digest(),
            log_index=log_index,
            log_root=merkle.root(size, _subtree_getter(conn)),
            log_size=size,
        )

    def _refresh(self, conn: sqlite3.Connection) -> None:
        """Reload the frontier if the log's size is not the one it holds."""
        size = _log_size(conn)
        if size == self._frontier.size:
            return
        get = _subtree_getter(conn)
        hashes = [get(s.level, s.index) for s in merkle.Frontier.subtrees(size)]
        self._frontier = merkle.Frontier(size, hashes)


# --- helpers over a connection --------------------------------------------------------------------


def _certified(change: ledger_pb2.AssetStateChange, validator_id: bytes) -> Ballot | None:
    """``validator_id``'s ballot for ``change``; None if the change's fields have wrong sizes."""
    try:
        return Ballot.for_change(change, validator_id)
    except ValueError:
        return None


def _row_ballot(row: Sequence[object], what: str) -> Ballot:
    epoch, asset, version, digest = row
    try:
        return Ballot(
            _integer(epoch, f"{what}'s epoch"),
            _NO_VALIDATOR,
            _blob(asset, f"{what}'s asset id"),
            _integer(version, f"{what}'s version"),
            _blob(digest, f"{what}'s change digest"),
        )
    except ValueError as exc:
        raise LedgerCorrupted(f"{what} is malformed: {exc}") from exc


def _equivocations(
    stored: ledger_pb2.StateCertificate, other: ledger_pb2.StateCertificate
) -> list[ledger_pb2.Evidence]:
    """Evidence of every validator with a vote in both certificates for the same (epoch,
    asset, version) and different digests: (the stored vote, the other vote)."""
    votes: dict[bytes, tuple[Ballot, ledger_pb2.Vote]] = {}
    for index, vote in enumerate(stored.votes):
        try:
            ballot = Ballot.of(vote)
        except InvalidVote as exc:
            raise LedgerCorrupted(f"an applied certificate's vote {index}: {exc}") from exc
        votes[ballot.validator_id] = (ballot, vote)
    found = []
    for vote in other.votes:
        ballot = Ballot.of(vote)
        earlier = votes.get(ballot.validator_id)
        if earlier is None:
            continue
        first_ballot, first = earlier
        if first_ballot.slot == ballot.slot and first_ballot.change_digest != ballot.change_digest:
            found.append(
                ledger_pb2.Evidence(equivocation=ledger_pb2.Equivocation(first=first, second=vote))
            )
    return found


def _log_size(conn: sqlite3.Connection) -> int:
    value = conn.execute("SELECT MAX(idx) FROM log_leaves").fetchone()[0]
    return 0 if value is None else _integer(value, "the last log index") + 1


def _tree_size(conn: sqlite3.Connection, size: int | None) -> int:
    current = _log_size(conn)
    if size is None:
        return current
    if not 0 <= size <= current:
        raise LedgerError(f"tree size {size} is not within the log's 0..{current}")
    return size


def _subtree_getter(conn: sqlite3.Connection) -> merkle.SubtreeHash:
    def get(level: int, index: int) -> bytes:
        if level == 0:
            row = conn.execute(
                "SELECT leaf_hash FROM log_leaves WHERE idx = ?", (index,)
            ).fetchone()
        else:
            row = conn.execute(
                "SELECT hash FROM log_nodes WHERE level = ? AND idx = ?", (level, index)
            ).fetchone()
        if row is None:
            raise LedgerCorrupted(f"the hash of log subtree ({level}, {index}) is missing")
        return _blob(row[0], f"the hash of log subtree ({level}, {index})", _HASH)

    return get


def _audit_log(conn: sqlite3.Connection) -> int:
    """Check the leaves and nodes; return the log size."""
    frontier = merkle.Frontier()
    cursor = conn.execute("SELECT idx, leaf_hash FROM log_leaves ORDER BY idx")
    while rows := cursor.fetchmany(_AUDIT_CHUNK):
        for index, leaf in rows:
            if index != frontier.size:
                raise LedgerCorrupted(f"log leaf {frontier.size} is missing (next is {index})")
            for level, position, value in frontier.append(_blob(leaf, f"leaf {index}", _HASH)):
                stored = conn.execute(
                    "SELECT hash FROM log_nodes WHERE level = ? AND idx = ?", (level, position)
                ).fetchone()
                if stored is None or stored[0] != value:
                    raise LedgerCorrupted(
                        f"log node ({level}, {position}) is missing or not the hash of its leaves"
                    )
    size = frontier.size
    count = conn.execute("SELECT COUNT(*) FROM log_nodes").fetchone()[0]
    if count != size - size.bit_count():
        raise LedgerCorrupted(
            f"the log holds {count} nodes, a tree of size {size} has {size - size.bit_count()}"
        )
    if merkle.root(size, _subtree_getter(conn)) != frontier.root():
        raise LedgerCorrupted("the log root is not the root of its leaves")
    return size


def _audit_certificates(conn: sqlite3.Connection, size: int) -> None:
    cursor = conn.execute(
        "SELECT log_index, epoch, asset_id, version, change_digest, certificate FROM certificates"
        " ORDER BY log_index"
    )
    expected = 0
    while rows := cursor.fetchmany(_AUDIT_CHUNK):
        for index, epoch, asset, version, digest, encoded in rows:
            what = f"certificate {index}"
            if index != expected:
                raise LedgerCorrupted(f"certificate {expected} is missing (next is {index})")
            ballot = _row_ballot((epoch, asset, version, digest), what)
            certificate = _decode(ledger_pb2.StateCertificate, encoded, what)
            if _certified(certificate.change, _NO_VALIDATOR) != ballot:
                raise LedgerCorrupted(f"{what} is not for the change it is stored as")
            leaf = conn.execute(
                "SELECT leaf_hash FROM log_leaves WHERE idx = ?", (index,)
            ).fetchone()
            if leaf is None:
                raise LedgerCorrupted(f"{what} has no log leaf")
            if leaf[0] != merkle.leaf_hash(state_record_bytes(ballot)):
                raise LedgerCorrupted(f"log leaf {index} is not {what}'s state record")
            expected += 1
    if expected != size:
        raise LedgerCorrupted(f"the log has {size} leaves but {expected} certificates")


def _audit_assets(conn: sqlite3.Connection) -> None:
    chains = {
        bytes(asset): (count, low, high)
        for asset, count, low, high in conn.execute(
            "SELECT asset_id, COUNT(*), MIN(version), MAX(version) FROM certificates"
            " GROUP BY asset_id"
        )
    }
    cursor = conn.execute("SELECT asset_id, version, state_hash, poh_end, log_index FROM assets")
    seen = 0
    while rows := cursor.fetchmany(_AUDIT_CHUNK):
        for asset, version, state_hash, poh_end, index in rows:
            what = f"asset {_blob(asset, 'an asset id').hex()}"
            version = _integer(version, f"{what}'s version")
            chain = chains.get(asset)
            if chain is None:
                raise LedgerCorrupted(f"{what} has a state but no certificate")
            if chain != (version + 1, 0, version):
                raise LedgerCorrupted(
                    f"{what} is at version {version}, its certificates (count, lowest, highest)"
                    f" are {chain}"
                )
            row = conn.execute(
                "SELECT asset_id, version, change_digest, certificate FROM certificates"
                " WHERE log_index = ?",
                (index,),
            ).fetchone()
            if row is None or (row[0], row[1], row[2]) != (asset, version, state_hash):
                raise LedgerCorrupted(f"{what}'s state is not its certificate's")
            certificate = _decode(ledger_pb2.StateCertificate, row[3], f"certificate {index}")
            if certificate.change.proofs.time.poh.end_hash != poh_end:
                raise LedgerCorrupted(f"{what}'s PoH end is not its certificate's")
            seen += 1
    if seen != len(chains):
        raise LedgerCorrupted(f"{len(chains) - seen} certified assets have no state")


def _audit_evidence(conn: sqlite3.Connection) -> None:
    cursor = conn.execute("SELECT seq, hash, evidence FROM evidence ORDER BY seq")
    while rows := cursor.fetchmany(_AUDIT_CHUNK):
        for seq, digest, encoded in rows:
            evidence = _decode(ledger_pb2.Evidence, encoded, f"evidence {seq}")
            if evidence_hash(evidence) != digest:
                raise LedgerCorrupted(f"evidence {seq} is not stored under its hash")
