"""PoStake (WHO): who owns an asset state, and that they stake enough on it.

A ``hypermesh.v1.StakeProof`` is accepted by :func:`verify_stake` when three things hold:

1. the owner's **signature** (a TrustChain signature envelope, hybrid Ed25519 + Falcon-1024)
   verifies, under the leaf key of the owner's certificate chain, over
   :func:`stake_signing_bytes`: the asset id, version, state digest, stake amount *and* the
   certificate chain, so no part of the proof can be swapped without the owner's key;
2. the owner's **certificate chain** validates against the caller's TrustChain trust store
   (:func:`trustchain.ca.validation.validate`) with at least the preset's ``min_trust_level``;
3. the **stake** is at least the preset's ``min_stake`` and is backed by the owner's entry in a
   :class:`StakeRegistry`: a balance signed by the registry's key, at least the amount staked.

Signed bytes of a proof
=======================

::

    STAKE_SIGNING_LABEL (b"hypermesh/stake-proof/v1\\x00", 25 bytes)
    || deterministic protobuf serialization of the StakeProof with owner_signature cleared

(``SerializeToString(deterministic=True)``: fields in field-number order; the label keeps a
stake signature from being replayed as any other signed message.)

Stake registry
==============

A registry is one SQLite file (opened through :mod:`trustchain.sqlite_db`: WAL,
``synchronous=FULL``, one ``BEGIN IMMEDIATE`` transaction per change) holding, for each owner
(the key id of the owner's signing key, i.e. its peer id), a sequence of signed balances; the
newest (highest sequence) is the owner's balance. Each :class:`StakeEntry` is signed by the
registry's key over :meth:`StakeEntry.signing_bytes`::

    STAKE_ENTRY_LABEL (b"hypermesh/stake-registry-entry/v1\\x00", 34 bytes)
    || owner_key_id     32 bytes
    || balance           8 bytes, unsigned big-endian (below 2**63)
    || sequence          8 bytes, unsigned big-endian (1, 2, ... per owner)
    || issued_at         8 bytes, signed big-endian: microseconds since 1970-01-01T00:00:00Z
    || registry_key_id  32 bytes (SHA-256 of the registry's public key envelope)

122 bytes in all. Schema (version 1)::

    meta(key TEXT PRIMARY KEY, value NOT NULL)
        schema_version  "1"
        registry_key    the registry's public key envelope (trustchain SIGNING_PUBLIC_KEY)
    entries(owner_key_id BLOB, sequence INTEGER, balance INTEGER, issued_at_us INTEGER,
            registry_key_id BLOB, signature BLOB, PRIMARY KEY (owner_key_id, sequence))

:meth:`StakeRegistry.credit` signs before it stores and checks the signature against the
registry's key inside the same transaction, so a wrong signer leaves nothing behind. Every read
re-verifies the row's signature: an edited row raises :class:`RegistryCorrupted`. What a
signature cannot show is a *deleted* newest row (a rollback to an older signed balance); the
registry is a local, signed ledger of balances until a later issue makes balances
consensus-backed.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hypermesh_interfaces.v1 import common_pb2
from trustchain import sqlite_db
from trustchain.ca import hybrid
from trustchain.ca.trust import TrustLevel, TrustStore
from trustchain.consensus.proofs import signers
from trustchain.consensus.proofs.challenges import ASSET_ID_SIZE, HASH_SIZE
from trustchain.consensus.proofs.presets import Preset
from trustchain.consensus.proofs.rejections import ProofKind, ProofReason, ProofRejected
from trustchain.consensus.proofs.signers import (
    MAX_CERTIFICATE_SIZE,
    MAX_CHAIN_CERTIFICATES,
    MAX_SIGNATURE_SIZE,
)
from trustchain.crypto.signatures import Signature, VerifyKey
from trustchain.errors import (
    AlgorithmMismatch,
    InvalidSignature,
    MalformedData,
    TrustChainError,
    UnknownAlgorithm,
)

__all__ = [
    "KEY_ID_SIZE",
    "MAX_BALANCE",
    "MAX_CERTIFICATE_SIZE",
    "MAX_CHAIN_CERTIFICATES",
    "MAX_SIGNATURE_SIZE",
    "SCHEMA_VERSION",
    "STAKE_ENTRY_LABEL",
    "STAKE_SIGNING_LABEL",
    "RegistryCorrupted",
    "StakeEntry",
    "StakeNotFound",
    "StakeRegistry",
    "StakeRegistryError",
    "StakeVerdict",
    "sign_stake",
    "stake_signing_bytes",
    "verify_stake",
]

#: Domain label prefixed to the serialized proof the owner signs.
STAKE_SIGNING_LABEL: Final = b"hypermesh/stake-proof/v1\x00"
#: Domain label prefixed to the fields of a registry entry the registry signs.
STAKE_ENTRY_LABEL: Final = b"hypermesh/stake-registry-entry/v1\x00"
#: Size of a key id (SHA-256 of a public key envelope).
KEY_ID_SIZE: Final = 32
#: Balances (and sequence numbers) are below this: they fit SQLite's signed 64-bit integers.
MAX_BALANCE: Final = (1 << 63) - 1
#: Version of the registry database layout.
SCHEMA_VERSION: Final = "1"

_UINT64_LIMIT: Final = 1 << 64
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_ENTRY_FIELDS: Final = struct.Struct(">QQq")

_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL)",
    "CREATE TABLE entries ("
    " owner_key_id BLOB NOT NULL CHECK (length(owner_key_id) = 32),"
    " sequence INTEGER NOT NULL CHECK (sequence >= 1),"
    " balance INTEGER NOT NULL CHECK (balance >= 0),"
    " issued_at_us INTEGER NOT NULL,"
    " registry_key_id BLOB NOT NULL CHECK (length(registry_key_id) = 32),"
    " signature BLOB NOT NULL,"
    " PRIMARY KEY (owner_key_id, sequence)) WITHOUT ROWID",
)
_COLUMNS: Final = "owner_key_id, sequence, balance, issued_at_us, registry_key_id, signature"


# --- errors ---------------------------------------------------------------------------------------


class StakeRegistryError(TrustChainError):
    """A stake registry operation failed (closed registry, wrong key, SQLite failure)."""


class StakeNotFound(StakeRegistryError, LookupError):
    """The registry holds no entry for that owner."""


class RegistryCorrupted(StakeRegistryError):
    """A stored entry fails its checks: unreadable columns, another registry key's id, or a
    signature that does not verify under the registry's key (an edited row)."""


# --- the proof ------------------------------------------------------------------------------------


def _decode_signature(data: bytes, what: str) -> Signature:
    """``data`` as a signature envelope; :class:`MalformedData` if it is none (an unknown
    algorithm included)."""
    try:
        return Signature.from_bytes(data)
    except UnknownAlgorithm as exc:
        raise MalformedData(f"{what}: {exc}") from exc


def stake_signing_bytes(proof: common_pb2.StakeProof) -> bytes:
    """``STAKE_SIGNING_LABEL`` || the deterministic serialization of a copy of ``proof`` with
    ``owner_signature`` cleared (the bytes the owner signs; see the module docs)."""
    unsigned = common_pb2.StakeProof()
    unsigned.CopyFrom(proof)
    unsigned.ClearField("owner_signature")
    return STAKE_SIGNING_LABEL + unsigned.SerializeToString(deterministic=True)


def sign_stake(
    *,
    asset: bytes,
    version: int,
    state_digest: bytes,
    amount: int,
    chain: Sequence[x509.Certificate],
    sign: Callable[[bytes], bytes],
) -> common_pb2.StakeProof:
    """The owner's StakeProof of staking ``amount`` on ``asset`` at ``version`` in the state
    whose SHA-256 digest is ``state_digest``.

    ``chain``: the owner's certificate chain, leaf first (stored DER-encoded). ``sign``: signs
    bytes with the leaf's private key and returns the TrustChain signature envelope (e.g.
    ``lambda m: keystore.sign(name, m).signature.to_bytes()``). The signature is checked under
    the leaf's key before the proof is returned: :class:`InvalidSignature` if ``sign`` used
    another key, :class:`MalformedData` if it returned no signature envelope or the leaf is
    not a hybrid certificate. :class:`ValueError` for out-of-range arguments.
    """
    if not isinstance(asset, bytes) or len(asset) != ASSET_ID_SIZE:
        raise ValueError(f"asset must be {ASSET_ID_SIZE} bytes")
    if not isinstance(state_digest, bytes) or len(state_digest) != HASH_SIZE:
        raise ValueError(f"state_digest must be {HASH_SIZE} bytes")
    for what, value in (("version", version), ("amount", amount)):
        if type(value) is not int or not 0 <= value < _UINT64_LIMIT:
            raise ValueError(f"{what} must be an integer in [0, 2**64)")
    if not chain:
        raise ValueError("the owner's certificate chain is empty")
    if len(chain) > MAX_CHAIN_CERTIFICATES:
        raise ValueError(f"at most {MAX_CHAIN_CERTIFICATES} certificates per chain")
    proof = common_pb2.StakeProof(
        asset_id=common_pb2.AssetId(id=asset),
        version=version,
        state_digest=state_digest,
        stake_amount=amount,
        owner_certificate_chain=common_pb2.CertificateChain(
            certificates=[certificate.public_bytes(Encoding.DER) for certificate in chain]
        ),
    )
    message = stake_signing_bytes(proof)
    signature_bytes = bytes(sign(message))
    leaf_key = hybrid.certificate_public_key(chain[0])
    try:
        leaf_key.verify(_decode_signature(signature_bytes, "owner signature"), message)
    except AlgorithmMismatch as exc:
        raise InvalidSignature(f"the signature is not by the leaf's key: {exc}") from exc
    proof.owner_signature = signature_bytes
    return proof


@dataclass(frozen=True)
class StakeVerdict:
    """An accepted StakeProof: the owner's peer id (its leaf key id), the trust level of its
    certificate chain, the amount staked and the registry balance backing it."""

    owner_peer_id: bytes
    trust_level: TrustLevel
    amount: int
    balance: int


def _reject(reason: ProofReason, detail: str) -> ProofRejected:
    return ProofRejected(ProofKind.STAKE, reason, detail)


def _decoded_parts(
    proof: common_pb2.StakeProof,
) -> tuple[bytes, list[x509.Certificate], Signature]:
    """The asset id, certificates and signature of ``proof`` after the MISSING and MALFORMED
    checks (every size bounded before anything is decoded)."""
    ders = list(proof.owner_certificate_chain.certificates)
    asset = bytes(proof.asset_id.id)
    if not ders:
        raise _reject(ProofReason.MISSING, "no owner certificate chain")
    if not proof.owner_signature:
        raise _reject(ProofReason.MISSING, "no owner signature")
    if not proof.HasField("asset_id") or not asset:
        raise _reject(ProofReason.MISSING, "no asset id")
    if not proof.state_digest:
        raise _reject(ProofReason.MISSING, "no state digest")
    if len(asset) != ASSET_ID_SIZE:
        raise _reject(
            ProofReason.MALFORMED, f"asset id is {len(asset)} bytes, expected {ASSET_ID_SIZE}"
        )
    if len(proof.state_digest) != HASH_SIZE:
        raise _reject(
            ProofReason.MALFORMED,
            f"state digest is {len(proof.state_digest)} bytes, expected {HASH_SIZE}",
        )
    certificates = signers.decode_chain(ders, ProofKind.STAKE)
    signature = signers.decode_signature(proof.owner_signature, ProofKind.STAKE, "owner signature")
    return asset, certificates, signature


def verify_stake(
    proof: common_pb2.StakeProof,
    *,
    expected_asset: bytes,
    expected_version: int,
    expected_state_digest: bytes,
    trust_store: TrustStore,
    registry: StakeRegistry,
    preset: Preset,
    at: datetime | None = None,
) -> StakeVerdict:
    """Check ``proof`` completely; return a :class:`StakeVerdict` or raise
    :class:`ProofRejected` at the first failure, in this order:

    1. STAKE MISSING: no certificate chain, no owner signature, no asset id, no state digest;
    2. STAKE MALFORMED: asset id or state digest not 32 bytes, too many or too large
       certificates, a certificate or the signature that does not decode
       (UNSUPPORTED_ALGORITHM: a signature that is not hybrid Ed25519 + Falcon-1024);
    3. STAKE INCONSISTENT: asset id, version or state digest differ from the expected ones;
    4. CERTIFICATE_CHAIN: :func:`~trustchain.ca.validation.validate` at ``at`` (default now)
       with the preset's clock skew rejects the chain (the reason is the rejection's
       ``proto_code``: EXPIRED, REVOKED, UNTRUSTED_ROOT, INVALID_SIGNATURE, MALFORMED...), or
       UNTRUSTED_ROOT if its trust level is below the preset's ``min_trust_level``;
    5. STAKE INVALID_SIGNATURE: the owner signature does not verify under the leaf's key over
       :func:`stake_signing_bytes`;
    6. STAKE INSUFFICIENT: the amount is below the preset's ``min_stake``, the registry has no
       entry for the owner (its leaf key id), or the entry's balance is below the amount;
       STAKE VERIFICATION_FAILED if the owner's registry entry fails its integrity checks.

    ``ValueError`` for expected values of the wrong size or a naive ``at`` (caller errors).
    """
    if len(expected_asset) != ASSET_ID_SIZE or len(expected_state_digest) != HASH_SIZE:
        raise ValueError("expected_asset and expected_state_digest must be 32 bytes")
    asset, certificates, signature = _decoded_parts(proof)
    if asset != expected_asset:
        raise _reject(
            ProofReason.INCONSISTENT,
            f"proof is for asset {asset.hex()}, expected {bytes(expected_asset).hex()}",
        )
    if proof.version != expected_version:
        raise _reject(
            ProofReason.INCONSISTENT,
            f"proof is for version {proof.version}, expected {expected_version}",
        )
    if proof.state_digest != expected_state_digest:
        raise _reject(ProofReason.INCONSISTENT, "proof is for another state digest")
    report = signers.validate_signer(
        certificates, trust_store=trust_store, preset=preset, at=at, whose="owner"
    )
    try:
        report.leaf_key.verify(signature, stake_signing_bytes(proof))
    except (InvalidSignature, AlgorithmMismatch) as exc:
        raise _reject(ProofReason.INVALID_SIGNATURE, f"owner signature: {exc}") from exc
    amount = proof.stake_amount
    if amount < preset.min_stake:
        raise _reject(
            ProofReason.INSUFFICIENT,
            f"stake {amount} is below the {preset.name} minimum {preset.min_stake}",
        )
    owner = report.peer_id
    try:
        entry = registry.entry(owner)
    except StakeNotFound as exc:
        raise _reject(
            ProofReason.INSUFFICIENT, f"no registry entry for owner {owner.hex()}"
        ) from exc
    except RegistryCorrupted as exc:
        raise _reject(
            ProofReason.VERIFICATION_FAILED, f"registry entry of owner {owner.hex()}: {exc}"
        ) from exc
    if entry.balance < amount:
        raise _reject(
            ProofReason.INSUFFICIENT,
            f"stake {amount} exceeds the owner's registry balance {entry.balance}",
        )
    return StakeVerdict(
        owner_peer_id=owner, trust_level=report.trust_level, amount=amount, balance=entry.balance
    )


# --- the stake registry ---------------------------------------------------------------------------


def _microseconds(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


@dataclass(frozen=True)
class StakeEntry:
    """One signed balance of the registry: ``owner_key_id``'s balance from ``issued_at`` on,
    the ``sequence``-th entry of that owner, signed by the registry key ``registry_key_id``
    over :meth:`signing_bytes`.

    Constructing one checks the field sizes and ranges (:class:`ValueError`); ``issued_at``
    must be timezone-aware and is kept in UTC (microsecond precision).
    """

    owner_key_id: bytes
    balance: int
    sequence: int
    issued_at: datetime
    registry_key_id: bytes
    signature: bytes

    def __post_init__(self) -> None:
        for what, key_id in (
            ("owner_key_id", self.owner_key_id),
            ("registry_key_id", self.registry_key_id),
        ):
            if not isinstance(key_id, bytes) or len(key_id) != KEY_ID_SIZE:
                raise ValueError(f"{what} must be {KEY_ID_SIZE} bytes")
        if type(self.balance) is not int or not 0 <= self.balance <= MAX_BALANCE:
            raise ValueError("balance must be an integer in [0, 2**63)")
        if type(self.sequence) is not int or not 1 <= self.sequence <= MAX_BALANCE:
            raise ValueError("sequence must be an integer in [1, 2**63)")
        if not isinstance(self.issued_at, datetime) or self.issued_at.utcoffset() is None:
            raise ValueError("issued_at must be a timezone-aware datetime")
        if not isinstance(self.signature, bytes):
            raise ValueError("signature must be bytes")
        object.__setattr__(self, "issued_at", self.issued_at.astimezone(UTC))

    def signing_bytes(self) -> bytes:
        """The 122 bytes the registry signs (layout in the module docs)."""
        return (
            STAKE_ENTRY_LABEL
            + self.owner_key_id
            + _ENTRY_FIELDS.pack(self.balance, self.sequence, _microseconds(self.issued_at))
            + self.registry_key_id
        )

    def verify(self, registry_key: VerifyKey) -> None:
        """Return if ``registry_key`` signed this entry; :class:`InvalidSignature` if the entry
        names another registry key or the signature does not verify (of another algorithm
        included), :class:`MalformedData` if the signature does not decode (an unknown
        algorithm included)."""
        if self.registry_key_id != registry_key.key_id:
            raise InvalidSignature(
                f"entry is signed by registry key {self.registry_key_id.hex()}, not "
                f"{registry_key.key_id.hex()}"
            )
        signature = _decode_signature(self.signature, "entry signature")
        try:
            registry_key.verify(signature, self.signing_bytes())
        except AlgorithmMismatch as exc:
            raise InvalidSignature(f"entry signature: {exc}") from exc


@contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    """Translate SQLite failures into the registry's typed errors."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise RegistryCorrupted(f"stake registry {path}: constraint violated: {exc}") from exc
    except sqlite3.DatabaseError as exc:  # includes OperationalError (locked, I/O, not a db)
        raise StakeRegistryError(f"stake registry {path}: {exc}") from exc


class StakeRegistry(sqlite_db.ConnectionOwner):
    """Signed stake balances in one SQLite file (see the module docs).

    Open with :meth:`open`; close with :meth:`close` or a ``with`` block. Safe to share between
    threads (one lock guards the connection) and processes (SQLite locking).
    """

    def __init__(self, *, path: Path, conn: sqlite3.Connection, registry_key: VerifyKey) -> None:
        """Internal: use :meth:`open`."""
        super().__init__(conn)
        self._path = path
        self._registry_key = registry_key

    @classmethod
    def open(cls, path: Path | str, *, registry_key: VerifyKey) -> StakeRegistry:
        """Open (or create, with its directory) the registry in the SQLite file ``path``.

        ``registry_key``: the public key that signs the registry's entries; a new registry
        records it, an existing one must have been created with it
        (:class:`StakeRegistryError` otherwise). :class:`RegistryCorrupted` if the file is not
        a sound registry.
        """
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        with _sqlite_errors(path):
            conn = sqlite_db.connect(path, error=StakeRegistryError)
        try:
            with _sqlite_errors(path):
                stored = cls._initialise_or_load(conn, path, registry_key)
            if stored != registry_key.to_bytes():
                raise StakeRegistryError(
                    f"the key {registry_key.key_id.hex()[:16]}... is not the key of the stake "
                    f"registry {path}"
                )
        except BaseException:
            conn.close()
            raise
        return cls(path=path, conn=conn, registry_key=registry_key)

    @staticmethod
    def _initialise_or_load(conn: sqlite3.Connection, path: Path, registry_key: VerifyKey) -> bytes:
        """The stored registry key envelope (creating the schema on a fresh file)."""
        with sqlite_db.transaction(conn):
            tables = {
                row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if not tables:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("schema_version", SCHEMA_VERSION), ("registry_key", registry_key.to_bytes())],
                )
            elif tables != {"meta", "entries"}:
                raise RegistryCorrupted(f"{path} is not a stake registry (tables {sorted(tables)})")
            meta = {str(key): value for key, value in conn.execute("SELECT key, value FROM meta")}
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise RegistryCorrupted(
                f"{path}: unsupported schema version {meta.get('schema_version')!r}"
            )
        stored = meta.get("registry_key")
        if not isinstance(stored, bytes):
            raise RegistryCorrupted(f"{path}: the registry key is missing")
        return stored

    def __repr__(self) -> str:
        return f"<StakeRegistry {str(self._path)!r} key={self._registry_key.key_id.hex()[:16]}>"

    @property
    def path(self) -> Path:
        return self._path

    @property
    def registry_key(self) -> VerifyKey:
        """The public key that signs every entry."""
        return self._registry_key

    def credit(
        self,
        owner_key_id: bytes,
        balance: int,
        sign: Callable[[bytes], bytes],
        at: datetime | None = None,
    ) -> StakeEntry:
        """Record ``balance`` as ``owner_key_id``'s balance from ``at`` (default now) on.

        ``balance`` is the new balance, not an increment. In one transaction: the next sequence
        number of the owner, the entry's :meth:`~StakeEntry.signing_bytes` signed by ``sign``
        (returns a TrustChain signature envelope made with the registry's private key), the
        signature checked under the registry key, the row written. A signature by another key
        raises :class:`InvalidSignature` (:class:`MalformedData` if ``sign`` returns no
        signature envelope) and nothing is stored. :class:`ValueError` for an owner key id
        that is not 32 bytes, a balance outside [0, 2**63) or a naive ``at``.
        """
        owner = bytes(owner_key_id)
        issued_at = datetime.now(UTC) if at is None else at
        if len(owner) != KEY_ID_SIZE:
            raise ValueError(f"owner_key_id must be {KEY_ID_SIZE} bytes")
        if type(balance) is not int or not 0 <= balance <= MAX_BALANCE:
            raise ValueError("balance must be an integer in [0, 2**63)")
        if issued_at.utcoffset() is None:
            raise ValueError("at must be timezone-aware")
        with (
            self._lock,
            _sqlite_errors(self._path),
            sqlite_db.transaction(self._db()) as conn,
        ):
            (last,) = conn.execute(
                "SELECT MAX(sequence) FROM entries WHERE owner_key_id = ?", (owner,)
            ).fetchone()
            unsigned = StakeEntry(
                owner_key_id=owner,
                balance=balance,
                sequence=1 if last is None else int(last) + 1,
                issued_at=issued_at,
                registry_key_id=self._registry_key.key_id,
                signature=b"",
            )
            signature = bytes(sign(unsigned.signing_bytes()))
            entry = replace(unsigned, signature=signature)
            entry.verify(self._registry_key)
            conn.execute(
                f"INSERT INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    entry.owner_key_id,
                    entry.sequence,
                    entry.balance,
                    _microseconds(entry.issued_at),
                    entry.registry_key_id,
                    entry.signature,
                ),
            )
        return entry

    def entry(self, owner_key_id: bytes) -> StakeEntry:
        """``owner_key_id``'s newest entry, its signature re-verified.

        :class:`StakeNotFound` if the owner has none, :class:`RegistryCorrupted` if the stored
        row fails its checks.
        """
        owner = bytes(owner_key_id)
        with self._lock, _sqlite_errors(self._path):
            row = (
                self._db()
                .execute(
                    f"SELECT {_COLUMNS} FROM entries WHERE owner_key_id = ? "  # noqa: S608
                    "ORDER BY sequence DESC LIMIT 1",
                    (owner,),
                )
                .fetchone()
            )
        if row is None:
            raise StakeNotFound(f"no stake registry entry for owner {owner.hex()}")
        return self._checked(row)

    def history(self, owner_key_id: bytes) -> list[StakeEntry]:
        """Every entry of ``owner_key_id``, oldest first, each re-verified (empty if none;
        :class:`RegistryCorrupted` if any row fails its checks)."""
        owner = bytes(owner_key_id)
        with self._lock, _sqlite_errors(self._path):
            rows = (
                self._db()
                .execute(
                    f"SELECT {_COLUMNS} FROM entries WHERE owner_key_id = ? "  # noqa: S608
                    "ORDER BY sequence",
                    (owner,),
                )
                .fetchall()
            )
        return [self._checked(row) for row in rows]

    def _checked(self, row: tuple[object, ...]) -> StakeEntry:
        owner, sequence, balance, issued_us, key_id, signature = row
        label = f"entry {sequence!r} of owner {owner.hex() if isinstance(owner, bytes) else owner}"
        if (
            not isinstance(owner, bytes)
            or type(sequence) is not int
            or type(balance) is not int
            or type(issued_us) is not int
            or not isinstance(key_id, bytes)
            or not isinstance(signature, bytes)
        ):
            raise RegistryCorrupted(f"stake registry {self._path}: {label} has malformed columns")
        try:
            entry = StakeEntry(
                owner_key_id=owner,
                balance=balance,
                sequence=sequence,
                issued_at=_EPOCH + timedelta(microseconds=issued_us),
                registry_key_id=key_id,
                signature=signature,
            )
        except (ValueError, OverflowError) as exc:
            raise RegistryCorrupted(f"stake registry {self._path}: {label}: {exc}") from exc
        try:
            entry.verify(self._registry_key)
        except (InvalidSignature, MalformedData) as exc:
            raise RegistryCorrupted(
                f"stake registry {self._path}: {label} fails its signature check: {exc}"
            ) from exc
        return entry

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StakeRegistryError(f"the stake registry {self._path} is closed")
        return self._conn
