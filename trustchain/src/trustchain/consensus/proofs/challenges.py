"""Every challenge of the four proofs, derived from the chain of an asset's states.

All values are SHA-256 with a distinct ASCII domain label, so no value can stand in for
another. The chain, for version ``n`` of an asset:

* ``previous`` — the state hash of version ``n-1`` (:func:`bundle.state_hash`), or
  :func:`genesis_hash` for version 0;
* the VDF runs over ``previous`` (PoTime): its output cannot exist before ``previous`` did;
* :func:`beacon` of the VDF output is the randomness the other proofs answer: the work
  challenge (PoWork), the proof-of-space challenges (:func:`space_challenge`) and, through
  the space challenge, the custody chunk indices (:func:`custody_indices`).

So a proof made for one asset, version or previous state answers the wrong challenges anywhere
else, and none of them can be computed before the previous state exists.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "ASSET_ID_SIZE",
    "HASH_SIZE",
    "asset_id",
    "beacon",
    "custody_indices",
    "genesis_hash",
    "poh_genesis",
    "space_challenge",
]

HASH_SIZE = 32
ASSET_ID_SIZE = 32


def _h(label: bytes, *parts: bytes) -> bytes:
    digest = hashlib.sha256(label)
    for part in parts:
        digest.update(part)
    return digest.digest()


def _check(value: bytes, size: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{what} must be {size} bytes")


def asset_id(owner_key_id: bytes, name: str) -> bytes:
    """The id of the asset ``name`` of the owner whose signing key id is ``owner_key_id``."""
    _check(owner_key_id, HASH_SIZE, "owner_key_id")
    return _h(b"hypermesh/asset-id/v1\x00", owner_key_id, name.encode("utf-8"))


def genesis_hash(asset: bytes) -> bytes:
    """The "previous state hash" of an asset's version 0."""
    _check(asset, ASSET_ID_SIZE, "asset id")
    return _h(b"hypermesh/genesis/v1\x00", asset)


def poh_genesis(asset: bytes) -> bytes:
    """Where the proof-of-history chain of an asset's version 0 starts."""
    _check(asset, ASSET_ID_SIZE, "asset id")
    return _h(b"hypermesh/poh-genesis/v1\x00", asset)


def beacon(vdf_output: bytes) -> bytes:
    """The randomness beacon of a state: the hash of its VDF output."""
    if not isinstance(vdf_output, bytes) or not vdf_output:
        raise ValueError("vdf_output must be non-empty bytes")
    return _h(b"hypermesh/beacon/v1\x00", vdf_output)


def space_challenge(beacon_value: bytes, asset: bytes, version: int, attempt: int) -> bytes:
    """The proof-of-space challenge number ``attempt`` (0-based, below the preset's
    ``space_attempts``) for ``asset`` at ``version``."""
    _check(beacon_value, HASH_SIZE, "beacon")
    _check(asset, ASSET_ID_SIZE, "asset id")
    if not 0 <= version < 1 << 64 or not 0 <= attempt < 1 << 32:
        raise ValueError("version must fit 64 bits and attempt 32 bits")
    return _h(
        b"hypermesh/space-challenge/v1\x00",
        beacon_value,
        asset,
        version.to_bytes(8, "big"),
        attempt.to_bytes(4, "big"),
    )


def custody_indices(challenge: bytes, chunk_count: int, count: int) -> list[int]:
    """``count`` chunk indices in ``[0, chunk_count)``, drawn with replacement from
    ``challenge`` (uniform: rejection sampling on 64-bit draws)."""
    _check(challenge, HASH_SIZE, "challenge")
    if chunk_count < 1 or count < 1:
        raise ValueError("chunk_count and count must be >= 1")
    limit = (1 << 64) - (1 << 64) % chunk_count
    indices: list[int] = []
    counter = 0
    while len(indices) < count:
        draw = int.from_bytes(
            _h(b"hypermesh/custody-index/v1\x00", challenge, counter.to_bytes(8, "big"))[:8],
            "big",
        )
        counter += 1
        if draw < limit:
            indices.append(draw % chunk_count)
    return indices
