"""The one way TrustChain stores use SQLite.

The key store (:mod:`trustchain.crypto.keystore`), the CA database (:mod:`trustchain.ca.store`)
and the transparency log (:mod:`trustchain.ct.log`) each keep one SQLite file, opened by
:func:`connect`: WAL mode (checked: a file that cannot be put in WAL mode is refused) with
``synchronous=FULL``, so a committed transaction survives a crash or power loss. Every change
is one :func:`transaction` (``BEGIN IMMEDIATE`` ... ``COMMIT``, ``ROLLBACK`` on any exception),
so a crash (even ``SIGKILL``) leaves all of a change or none of it; ``IMMEDIATE`` takes the
write lock up front, so processes sharing a file serialise their writes instead of failing to
upgrade a read lock half-way. Connections are in autocommit mode (``isolation_level=None``):
the Python module never opens or commits a transaction behind the store's back.

A store holds one connection, shared by its threads behind a lock (:class:`ConnectionOwner`).
Which TrustChain error a SQLite failure becomes is each store's own business: this module
raises only the error class its caller passes in.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from trustchain.errors import TrustChainError

__all__ = ["ConnectionOwner", "connect", "transaction"]

#: Seconds a connection waits for another process's write lock before giving up.
_BUSY_TIMEOUT: Final = 30.0


def connect(path: Path, *, error: type[TrustChainError]) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode, WAL journal, ``synchronous=FULL``.

    Raises ``error`` if the database cannot be put in WAL mode; SQLite's own exceptions pass
    through for the caller to translate. The connection is closed if anything fails.
    """
    conn = sqlite3.connect(
        path, isolation_level=None, timeout=_BUSY_TIMEOUT, check_same_thread=False
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise error(f"cannot put {path} in WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction on ``conn``, yielded to the block.

    Any exception, from the block or from the ``COMMIT``, rolls the transaction back (unless
    SQLite already has) and propagates unchanged.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class ConnectionOwner:
    """Base of a store that owns one connection, shared by threads behind ``_lock``.

    Every use of ``_conn`` (a whole transaction for writes) holds ``_lock``; :meth:`close`
    (or leaving a ``with`` block) closes the connection, after which ``_conn`` is None.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()

    def close(self) -> None:
        """Close the connection; closing again does nothing."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
