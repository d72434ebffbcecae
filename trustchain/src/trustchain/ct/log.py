"""The TrustChain transparency log: an append-only RFC 9162 Merkle log persisted in SQLite.

Every entry is a byte string (for the CA: a certificate's DER). Its Merkle leaf hash is
``SHA-256(0x00 || entry)``; the tree is RFC 9162 section 2.1's (:mod:`trustchain.ct.merkle`).
Appending an entry returns a :class:`~trustchain.ct.sct.SignedCertificateTimestamp` signed by
the log's key; :meth:`TransparencyLog.signed_tree_head` signs the current root.

Database (schema version 1)
===========================

One SQLite file in WAL mode with ``synchronous=FULL``::

    meta(key TEXT PRIMARY KEY, value NOT NULL)
        schema_version  "1"
        hash            "sha256"
        public_key      the log's public key envelope (trustchain SIGNING_PUBLIC_KEY)
        log_id          SHA-256 of public_key (32 bytes)
    entries(idx INTEGER PRIMARY KEY,          0, 1, 2, ... without gaps
            timestamp_ms INTEGER NOT NULL,    when the entry was logged (ms since the epoch)
            leaf_hash BLOB NOT NULL,          SHA-256(0x00 || data); indexed (find)
            data BLOB NOT NULL)
    nodes(level INTEGER, idx INTEGER, hash BLOB, PRIMARY KEY (level, idx)) WITHOUT ROWID
        the hash of every complete (perfect) subtree of level >= 1: leaves
        [idx * 2**level, (idx + 1) * 2**level); level 0 is entries.leaf_hash

A log of ``n`` entries holds ``n - popcount(n)`` node rows, each written once, in the same
transaction as the entry that completes it (:class:`~trustchain.ct.merkle.Frontier`, kept in
memory, says which).

Costs
=====

* Root at any size ``m <= n``: the ``popcount(m)`` perfect subtrees of ``[0, m)``, i.e. at most
  ``log2(m) + 1`` primary-key row reads.
* Inclusion and consistency proofs: each of the ``O(log n)`` components is an aligned range;
  all but at most one are perfect subtrees (one row each); that one, ending at the right edge
  of the tree, splits into at most ``log2(n)`` perfect subtrees. Nothing is rehashed beyond
  folding those few rows: about ``2 log2(n)`` row reads per proof, 40 at 10^6 entries.
* Append: one entry row plus on average one node row; the frontier (``popcount(n)`` hashes)
  stays in memory and is reloaded (``O(log n)`` reads) when another process has appended.

Durability
==========

Each :meth:`~TransparencyLog.append` / :meth:`~TransparencyLog.append_many` /
:meth:`~TransparencyLog.extend` call is one ``BEGIN IMMEDIATE`` transaction holding every entry
and node row it adds, so a crash (even ``SIGKILL`` or power loss, given ``synchronous=FULL``)
leaves all of the call or none of it. SCTs are signed only **after** the commit: the log never
hands out a promise for an entry that is not durably in the tree. Several processes may share a
log file; SQLite serialises writers, and each write first re-reads the tree size. (The SQLite
settings and transactions are those of every TrustChain store: :mod:`trustchain.sqlite_db`.)

Timestamps are milliseconds since the Unix epoch from ``clock`` (default: the system clock),
made non-decreasing along the log (an entry's timestamp is at least its predecessor's); a tree
head's timestamp is at least that of every entry it covers.

The log's key is fixed for the log's lifetime (the log id is the SHA-256 of its public key
envelope, as RFC 6962's LogID is of the log's key): opening a log with another key raises
:class:`~trustchain.errors.LogError`. A log opened without its key (``signer=None``) reads,
proves and audits, but cannot append or sign tree heads.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from trustchain import sqlite_db
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.ct import merkle
from trustchain.ct.merkle import Frontier, leaf_hash, node_hash
from trustchain.ct.sct import MAX_UINT63, SignedCertificateTimestamp, SignedTreeHead
from trustchain.errors import (
    LogCorrupted,
    LogEntryNotFound,
    LogError,
    MalformedData,
    ProofRequestError,
)

__all__ = ["SCHEMA_VERSION", "LogEntry", "TransparencyLog"]

SCHEMA_VERSION: Final = "1"
HASH_NAME: Final = "sha256"
#: Entries per chunk when :meth:`TransparencyLog.audit` streams the log.
_AUDIT_CHUNK = 4096

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL)",
    "CREATE TABLE entries ("
    " idx INTEGER PRIMARY KEY CHECK (idx >= 0),"
    " timestamp_ms INTEGER NOT NULL CHECK (timestamp_ms >= 0),"
    " leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32),"
    " data BLOB NOT NULL)",
    "CREATE INDEX entries_by_leaf_hash ON entries (leaf_hash)",
    "CREATE TABLE nodes ("
    " level INTEGER NOT NULL CHECK (level >= 1),"
    " idx INTEGER NOT NULL CHECK (idx >= 0),"
    " hash BLOB NOT NULL CHECK (length(hash) = 32),"
    " PRIMARY KEY (level, idx)) WITHOUT ROWID",
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class LogEntry:
    """One logged entry: its index, when it was logged (ms), its leaf hash and its bytes."""

    index: int
    timestamp: int
    leaf_hash: bytes
    data: bytes


@contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    """Translate SQLite failures into the log's typed errors."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise LogCorrupted(f"transparency log {path}: constraint violated: {exc}") from exc
    except sqlite3.DatabaseError as exc:  # includes OperationalError (locked, I/O, not a db)
        raise LogError(f"transparency log {path}: {exc}") from exc


def _read_meta(conn: sqlite3.Connection, path: Path) -> dict[str, object] | None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        if tables:
            raise LogCorrupted(f"{path} is not a transparency log (tables: {sorted(tables)})")
        return None
    missing = {"entries", "nodes"} - tables
    if missing:
        raise LogCorrupted(f"{path} lacks the tables {sorted(missing)}")
    return {str(k): v for k, v in conn.execute("SELECT key, value FROM meta")}


class TransparencyLog(sqlite_db.ConnectionOwner):
    """An append-only Merkle log in one SQLite file (see the module docs).

    Open with :meth:`open`; close with :meth:`close` or a ``with`` block. Safe to share between
    threads (one lock guards the connection) and processes (SQLite locking).
    """

    def __init__(
        self,
        *,
        path: Path,
        conn: sqlite3.Connection,
        public_key: VerifyKey,
        signer: SigningKey | None,
        clock: Callable[[], int],
        sign_workers: int,
    ) -> None:
        """Internal: use :meth:`open`."""
        super().__init__(conn)
        self._path = path
        self._public_key = public_key
        self._signer = signer
        self._clock = clock
        self._sign_workers = sign_workers
        self._frontier = Frontier()
        self._last_timestamp = 0

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path | str,
        signer: SigningKey | None = None,
        *,
        log_id: bytes | None = None,
        clock: Callable[[], int] = _now_ms,
        create: bool = True,
        sign_workers: int | None = None,
    ) -> TransparencyLog:
        """Open the log in the SQLite file ``path`` (created, with its directory, if absent and
        ``create``; a new log needs ``signer``, whose public key becomes the log's).

        ``signer``: the log's signing key (a trustchain hybrid key); None opens the log without
        it (read, prove, audit only). ``log_id``: if given, the log's id must be this (else
        :class:`LogError`). ``clock``: milliseconds since the epoch. ``sign_workers``: threads
        that sign the SCTs of one :meth:`append_many` (default: the CPU count, at most 8).

        :class:`LogError` if there is no log and ``create`` is false, or ``signer`` is not the
        log's key; :class:`LogCorrupted` if the file is not a sound log.
        """
        path = Path(path).expanduser()
        if not path.exists():
            if not create:
                raise LogError(f"no transparency log at {path}")
            if signer is None:
                raise LogError(f"creating the transparency log {path} needs its signing key")
            path.parent.mkdir(parents=True, exist_ok=True)
        workers = sign_workers if sign_workers is not None else min(8, os.cpu_count() or 1)
        if workers < 1:
            raise LogError(f"sign_workers must be at least 1, got {workers}")
        with _sqlite_errors(path):
            conn = sqlite_db.connect(path, error=LogError)
        try:
            with _sqlite_errors(path):
                public_key = cls._initialise_or_load(conn, path, signer, create)
            if signer is not None and signer.public_key() != public_key:
                raise LogError(
                    f"the signing key {signer.public_key().key_id.hex()[:16]}... is not the key "
                    f"of the transparency log {path} (log id {public_key.key_id.hex()})"
                )
            if log_id is not None and bytes(log_id) != public_key.key_id:
                raise LogError(
                    f"transparency log {path} has id {public_key.key_id.hex()}, "
                    f"expected {bytes(log_id).hex()}"
                )
            log = cls(
                path=path,
                conn=conn,
                public_key=public_key,
                signer=signer,
                clock=clock,
                sign_workers=workers,
            )
            with _sqlite_errors(path):
                log._refresh(conn)
        except BaseException:
            conn.close()
            raise
        return log

    @staticmethod
    def _initialise_or_load(
        conn: sqlite3.Connection, path: Path, signer: SigningKey | None, create: bool
    ) -> VerifyKey:
        meta = _read_meta(conn, path)
        if meta is None:
            if not create:
                raise LogError(f"no transparency log at {path} (database not initialised)")
            if signer is None:
                raise LogError(f"creating the transparency log {path} needs its signing key")
            with sqlite_db.transaction(conn):
                meta = _read_meta(conn, path)  # another process may have won the race
                if meta is None:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    public = signer.public_key()
                    meta = {
                        "schema_version": SCHEMA_VERSION,
                        "hash": HASH_NAME,
                        "public_key": public.to_bytes(),
                        "log_id": public.key_id,
                    }
                    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise LogCorrupted(f"{path}: unsupported schema version {meta.get('schema_version')!r}")
        if meta.get("hash") != HASH_NAME:
            raise LogCorrupted(f"{path}: unsupported hash {meta.get('hash')!r}")
        raw_key = meta.get("public_key")
        if not isinstance(raw_key, bytes):
            raise LogCorrupted(f"{path}: the log's public key is missing")
        try:
            public_key = VerifyKey.from_bytes(raw_key)
        except MalformedData as exc:
            raise LogCorrupted(f"{path}: the log's public key is malformed: {exc}") from exc
        if meta.get("log_id") != public_key.key_id:
            raise LogCorrupted(f"{path}: the stored log id is not the hash of the log's key")
        return public_key

    def __repr__(self) -> str:
        return f"<TransparencyLog {str(self._path)!r} log_id={self.log_id.hex()[:16]}>"

    # -- identity --------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def public_key(self) -> VerifyKey:
        """The log's public key: what verifies its SCTs and tree heads."""
        return self._public_key

    @property
    def log_id(self) -> bytes:
        """SHA-256 of the log's public key envelope (32 bytes)."""
        return self._public_key.key_id

    @property
    def can_sign(self) -> bool:
        """Whether the log was opened with its signing key."""
        return self._signer is not None

    # -- appending -------------------------------------------------------------------------------

    def append(self, data: bytes) -> SignedCertificateTimestamp:
        """Log ``data`` (one transaction) and return its SCT, signed after the commit."""
        (sct,) = self.append_many([data])
        return sct

    def append_many(self, items: Iterable[bytes]) -> list[SignedCertificateTimestamp]:
        """Log every item of ``items`` in one transaction; their SCTs, in order.

        The SCTs are signed after the commit, on up to ``sign_workers`` threads (a hybrid
        signature costs milliseconds; the Merkle bookkeeping microseconds).
        """
        signer = self._require_signer("append")
        first, timestamp, hashes = self._append(items)

        def issue(offset: int) -> SignedCertificateTimestamp:
            return SignedCertificateTimestamp.issue(
                signer, timestamp=timestamp, leaf_index=first + offset, leaf_hash=hashes[offset]
            )

        if len(hashes) > 1 and self._sign_workers > 1:
            with ThreadPoolExecutor(max_workers=self._sign_workers) as pool:
                return list(pool.map(issue, range(len(hashes))))
        return [issue(offset) for offset in range(len(hashes))]

    def extend(self, items: Iterable[bytes]) -> range:
        """Log every item of ``items`` in one transaction **without** issuing SCTs.

        For bulk loading and mirroring: the entries are in the tree (tree heads cover them,
        proofs work, :meth:`sct` can still issue an SCT for any of them later), but the log
        makes no per-entry promise now. Returns the indices of the new entries.
        """
        self._require_signer("append")
        first, _, hashes = self._append(items)
        return range(first, first + len(hashes))

    def _append(self, items: Iterable[bytes]) -> tuple[int, int, list[bytes]]:
        """Write the entries; returns (first index, timestamp, leaf hashes)."""
        datas = [bytes(item) for item in items]
        with self._lock, _sqlite_errors(self._path):
            with sqlite_db.transaction(self._db()) as conn:
                self._refresh(conn)
                frontier = self._frontier.copy()
                first = frontier.size
                timestamp = max(self._read_clock(), self._last_timestamp)
                entries = []
                nodes: list[tuple[int, int, bytes]] = []
                hashes = []
                for offset, data in enumerate(datas):
                    digest = leaf_hash(data)
                    hashes.append(digest)
                    entries.append((first + offset, timestamp, digest, data))
                    nodes.extend(frontier.append(digest))
                conn.executemany(
                    "INSERT INTO entries (idx, timestamp_ms, leaf_hash, data) VALUES (?, ?, ?, ?)",
                    entries,
                )
                conn.executemany("INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
            self._frontier = frontier
            if datas:
                self._last_timestamp = timestamp
        return first, timestamp, hashes

    def _read_clock(self) -> int:
        value = self._clock()
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_UINT63:
            raise LogError(f"the clock returned {value!r}, not milliseconds since the epoch")
        return value

    def _require_signer(self, what: str) -> SigningKey:
        if self._signer is None:
            raise LogError(f"cannot {what}: the log {self._path} was opened without its key")
        return self._signer

    # -- reading ---------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The number of entries (the current tree size)."""
        with self._lock, _sqlite_errors(self._path):
            return self._db_size(self._db())

    def root(self, size: int | None = None) -> bytes:
        """The Merkle tree hash of the first ``size`` entries (default: all of them)."""
        with self._lock, _sqlite_errors(self._path):
            conn = self._db()
            size = self._tree_size(conn, size)
            return merkle.root(size, self._subtree_getter(conn))

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        """The audit path of entry ``index`` in the tree of ``tree_size`` entries (default: the
        current size); :class:`ProofRequestError` unless ``index < tree_size <= size``."""
        with self._lock, _sqlite_errors(self._path):
            conn = self._db()
            tree_size = self._tree_size(conn, tree_size)
            return merkle.inclusion_proof(index, tree_size, self._subtree_getter(conn))

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """The proof that the tree of ``size2`` entries (default: current) extends that of
        ``size1``; :class:`ProofRequestError` unless ``0 < size1 <= size2 <= size``."""
        with self._lock, _sqlite_errors(self._path):
            conn = self._db()
            size2 = self._tree_size(conn, size2)
            return merkle.consistency_proof(size1, size2, self._subtree_getter(conn))

    def entry(self, index: int) -> LogEntry:
        """Entry ``index``; :class:`LogEntryNotFound` if the log has no such entry."""
        if not isinstance(index, int) or not 0 <= index <= MAX_UINT63:
            raise LogEntryNotFound(f"no log entry {index!r}")
        with self._lock, _sqlite_errors(self._path):
            row = (
                self._db()
                .execute(
                    "SELECT idx, timestamp_ms, leaf_hash, data FROM entries WHERE idx = ?",
                    (index,),
                )
                .fetchone()
            )
        if row is None:
            raise LogEntryNotFound(f"no log entry {index}")
        return LogEntry(int(row[0]), int(row[1]), bytes(row[2]), bytes(row[3]))

    def find(self, leaf_hash: bytes) -> int:
        """The (first) index of the entry with this leaf hash; :class:`LogEntryNotFound`."""
        digest = bytes(leaf_hash)
        with self._lock, _sqlite_errors(self._path):
            row = (
                self._db()
                .execute("SELECT MIN(idx) FROM entries WHERE leaf_hash = ?", (digest,))
                .fetchone()
            )
        if row is None or row[0] is None:
            raise LogEntryNotFound(f"no log entry has leaf hash {digest.hex()}")
        return int(row[0])

    def sct(self, index: int) -> SignedCertificateTimestamp:
        """A (fresh) SCT for the existing entry ``index``, with the entry's own timestamp."""
        signer = self._require_signer("issue an SCT")
        found = self.entry(index)
        return SignedCertificateTimestamp.issue(
            signer, timestamp=found.timestamp, leaf_index=found.index, leaf_hash=found.leaf_hash
        )

    def signed_tree_head(self) -> SignedTreeHead:
        """Sign the current tree: its size, root and a timestamp >= its newest entry's."""
        signer = self._require_signer("sign a tree head")
        with self._lock, _sqlite_errors(self._path):
            conn = self._db()
            conn.execute("BEGIN")  # one snapshot for the size, root and newest timestamp
            try:
                size = self._db_size(conn)
                root_hash = merkle.root(size, self._subtree_getter(conn))
                newest = self._timestamp_at(conn, size - 1) if size else 0
            finally:
                conn.execute("COMMIT")
        timestamp = max(self._read_clock(), newest)
        return SignedTreeHead.issue(
            signer, timestamp=timestamp, tree_size=size, root_hash=root_hash
        )

    def audit(self) -> bytes:
        """Recheck the whole database; returns the root. :class:`LogCorrupted` on any fault.

        Checks that entries are numbered without gaps, timestamps never decrease, every leaf
        hash is the hash of its data, every stored node is the hash of its two children, and
        the log holds exactly the nodes its size implies. Reads everything once: O(n).
        """
        with self._lock, _sqlite_errors(self._path):
            conn = self._db()
            conn.execute("BEGIN")
            try:
                size = self._audit_entries(conn)
                for level in range(1, size.bit_length()):
                    self._audit_level(conn, level, size)
                stray = conn.execute(
                    "SELECT COUNT(*) FROM nodes WHERE level >= ? OR (idx + 1) << level > ?",
                    (max(size.bit_length(), 1), size),
                ).fetchone()[0]
                if stray:
                    raise LogCorrupted(f"{stray} stored nodes lie outside a tree of size {size}")
                return merkle.root(size, self._subtree_getter(conn))
            finally:
                conn.execute("COMMIT")

    def _audit_entries(self, conn: sqlite3.Connection) -> int:
        expected = 0
        previous = 0
        cursor = conn.execute("SELECT idx, timestamp_ms, leaf_hash, data FROM entries ORDER BY idx")
        while rows := cursor.fetchmany(_AUDIT_CHUNK):
            for index, timestamp, digest, data in rows:
                if index != expected:
                    raise LogCorrupted(f"entry {expected} is missing (next is {index})")
                if timestamp < previous:
                    raise LogCorrupted(f"entry {index}'s timestamp goes back in time")
                if leaf_hash(data) != digest:
                    raise LogCorrupted(f"entry {index}'s leaf hash is not the hash of its data")
                expected += 1
                previous = timestamp
        return expected

    @staticmethod
    def _audit_level(conn: sqlite3.Connection, level: int, size: int) -> None:
        if level == 1:
            children = conn.execute("SELECT leaf_hash FROM entries ORDER BY idx")
        else:
            children = conn.execute(
                "SELECT hash FROM nodes WHERE level = ? ORDER BY idx", (level - 1,)
            )
        parents = conn.execute("SELECT idx, hash FROM nodes WHERE level = ? ORDER BY idx", (level,))
        count = size >> level
        expected = 0
        while rows := parents.fetchmany(_AUDIT_CHUNK):
            pairs = children.fetchmany(2 * len(rows))
            if len(pairs) != 2 * len(rows):
                raise LogCorrupted(f"level {level - 1} lacks the children of level {level}")
            for (index, value), left, right in zip(rows, pairs[::2], pairs[1::2], strict=True):
                if index != expected or index >= count:
                    raise LogCorrupted(f"node ({level}, {expected}) is missing or misplaced")
                if node_hash(left[0], right[0]) != value:
                    raise LogCorrupted(f"node ({level}, {index}) is not the hash of its children")
                expected += 1
        if expected != count:
            raise LogCorrupted(
                f"level {level} holds {expected} nodes, a tree of size {size} has {count}"
            )

    # -- internals -------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LogError(f"the transparency log {self._path} is closed")
        return self._conn

    @staticmethod
    def _db_size(conn: sqlite3.Connection) -> int:
        value = conn.execute("SELECT MAX(idx) FROM entries").fetchone()[0]
        return 0 if value is None else int(value) + 1

    def _tree_size(self, conn: sqlite3.Connection, size: int | None) -> int:
        current = self._db_size(conn)
        if size is None:
            return current
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= current:
            raise ProofRequestError(f"tree size {size!r} is not within the log's 0..{current}")
        return size

    def _timestamp_at(self, conn: sqlite3.Connection, index: int) -> int:
        row = conn.execute("SELECT timestamp_ms FROM entries WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise LogCorrupted(f"entry {index} is missing")
        return int(row[0])

    def _subtree_getter(self, conn: sqlite3.Connection) -> merkle.SubtreeHash:
        def get(level: int, index: int) -> bytes:
            if level == 0:
                row = conn.execute(
                    "SELECT leaf_hash FROM entries WHERE idx = ?", (index,)
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)
                ).fetchone()
            if row is None:
                raise LogCorrupted(f"the hash of subtree ({level}, {index}) is missing")
            return bytes(row[0])

        return get

    def _refresh(self, conn: sqlite3.Connection) -> None:
        """Reload the frontier if the database grew behind our back (another process)."""
        size = self._db_size(conn)
        if size == self._frontier.size:
            return
        if size < self._frontier.size:
            raise LogCorrupted(f"the log shrank from {self._frontier.size} to {size} entries")
        get = self._subtree_getter(conn)
        hashes: Sequence[bytes] = [get(s.level, s.index) for s in Frontier.subtrees(size)]
        self._frontier = Frontier(size, hashes)
        self._last_timestamp = self._timestamp_at(conn, size - 1)
