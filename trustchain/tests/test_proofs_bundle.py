"""trustchain.consensus.proofs.bundle: the four proofs together, and the chain of versions.

One LocalNetwork (own CA, CT log, stake registry, one k=18 plot) makes real bundles: version 0
and 1 of asset ``photos`` and version 0 of asset ``videos``. Every test changes copies of
them: each field of each proof, each byte of the encoding, whole proofs swapped between
assets and versions. Nothing is mocked: the validator runs chiapos, chiavdf, Falcon, SQLite.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hypermesh_interfaces.v1 import common_pb2
from trustchain.consensus.proofs import challenges, custody, work
from trustchain.consensus.proofs.bundle import (
    MAX_BUNDLE_BYTES,
    PreviousState,
    ProofVerdict,
    ValidationContext,
    ValidationResult,
    decode_bundle,
    prove_four_proofs,
    state_digest,
    state_hash,
    validate_four_proofs,
)
from trustchain.consensus.proofs.local_network import LocalNetwork
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING
from trustchain.consensus.proofs.rejections import ProofKind, ProofReason, ProofRejected
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore

K = ProofKind
R = ProofReason
PRESET = LOCALHOST_TESTING
DATA = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(4096))
Path_ = tuple[tuple[str, int | None], ...]


@dataclass(frozen=True)
class World:
    network: LocalNetwork
    context: ValidationContext
    v0: common_pb2.FourProof
    v1: common_pb2.FourProof
    other: common_pb2.FourProof  # version 0 of another asset

    def validate(
        self, bundle: common_pb2.FourProof, previous: PreviousState | None
    ) -> ValidationResult:
        return validate_four_proofs(bundle, previous=previous, context=self.context)

    @property
    def after_v0(self) -> PreviousState:
        return PreviousState.of(self.v0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home: Path = tmp_path_factory.mktemp("bundle")
    keys = KeyStore.open(
        home / "keys", passphrase=b"pw", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    )
    with keys, LocalNetwork.open(home / "network", keys) as network:
        v0 = network.prove("photos", DATA, preset=PRESET)
        v1 = network.prove("photos", DATA[::-1], preset=PRESET, previous=PreviousState.of(v0))
        other = network.prove("videos", DATA, preset=PRESET)
        yield World(network, network.context(PRESET), v0, v1, other)


def _copy(bundle: common_pb2.FourProof) -> common_pb2.FourProof:
    copy = common_pb2.FourProof()
    copy.CopyFrom(bundle)
    return copy


def _found(result: ValidationResult) -> set[tuple[ProofKind, ProofReason]]:
    return {(r.kind, r.reason) for r in result.rejections}


# --- the valid chain ------------------------------------------------------------------------------


def test_versions_zero_and_one_validate(world: World) -> None:
    first = world.validate(world.v0, None)
    second = world.validate(world.v1, world.after_v0)
    for result in (first, second):
        assert result.valid, result.rejections
        assert [v.kind for v in result.verdicts] == [K.SPACE, K.STAKE, K.WORK, K.TIME]
        assert all(v.valid for v in result.verdicts)
        message = result.to_message()
        assert message.verdict == common_pb2.VERDICT_VALID
        assert list(message.rejections) == []
    assert world.v1.stake.version == 1
    assert world.v1.stake.asset_id.id == world.v0.stake.asset_id.id


def test_previous_state_of_a_bundle(world: World) -> None:
    previous = PreviousState.of(world.v0)
    assert previous.version == 0
    assert previous.state_hash == state_hash(world.v0)
    assert previous.poh_end == world.v0.time.poh.end_hash
    # Version 1's VDF answers version 0's combined hash; its PoH continues version 0's.
    assert world.v1.time.vdf.challenge == previous.state_hash
    assert world.v1.time.poh.start_hash == previous.poh_end
    asset = world.v0.stake.asset_id.id
    assert world.v0.time.vdf.challenge == challenges.genesis_hash(asset)
    assert world.v0.time.poh.start_hash == challenges.poh_genesis(asset)


def test_state_digest_is_what_the_owner_signed(world: World) -> None:
    bundle = world.v1
    digest = state_digest(
        asset=bundle.stake.asset_id.id,
        version=1,
        previous=state_hash(world.v0),
        space=bundle.space,
        work=bundle.work,
    )
    assert bundle.stake.state_digest == digest
    assert bundle.time.poh.mixin == digest


def test_state_hash_covers_every_proof(world: World) -> None:
    base = state_hash(world.v0)
    hashes = {base}
    for field in ("space", "stake", "work", "time"):
        changed = _copy(world.v0)
        getattr(changed, field).CopyFrom(getattr(world.other, field))
        hashes.add(state_hash(changed))
    assert len(hashes) == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"asset": b"short"}, "32 bytes"),
        ({"previous": bytes(31)}, "32 bytes"),
        ({"version": -1}, "64 unsigned bits"),
        ({"version": 1 << 64}, "64 unsigned bits"),
    ],
)
def test_state_digest_arguments(kwargs: dict[str, object], message: str) -> None:
    values: dict[str, object] = {
        "asset": bytes(32),
        "version": 0,
        "previous": bytes(32),
        "space": common_pb2.SpaceProof(),
        "work": common_pb2.WorkProof(),
    }
    values.update(kwargs)
    with pytest.raises(ValueError, match=message):
        state_digest(**values)  # type: ignore[arg-type]


# --- every field of every proof -------------------------------------------------------------------


def _paths(message: Message, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every scalar field of ``message`` (the first element of repeated ones)."""
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            if not value:
                continue
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                yield from _paths(value[0], (*prefix, (field.name, 0)))
            else:
                yield (*prefix, (field.name, 0))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            yield from _paths(value, (*prefix, (field.name, None)))
        else:
            yield (*prefix, (field.name, None))


def _name(path: Path_) -> str:
    return ".".join(name for name, _ in path)


def _field(bundle: common_pb2.FourProof, path: Path_) -> tuple[Message, str, int | None]:
    parent: Message = bundle
    for name, index in path[:-1]:
        child = getattr(parent, name)
        parent = child if index is None else child[index]
    name, index = path[-1]
    return parent, name, index


def _get(bundle: common_pb2.FourProof, path: Path_) -> object:
    parent, name, index = _field(bundle, path)
    value = getattr(parent, name)
    return value if index is None else value[index]


def _set(bundle: common_pb2.FourProof, path: Path_, value: object) -> None:
    parent, name, index = _field(bundle, path)
    if index is None:
        setattr(parent, name, value)
    else:
        getattr(parent, name)[index] = value


def _type(bundle: common_pb2.FourProof, path: Path_) -> int:
    parent, name, _ = _field(bundle, path)
    kind: int = parent.DESCRIPTOR.fields_by_name[name].type
    return kind


def _nudged(value: object, field_type: int) -> object:
    """The smallest change of a field: one bit of its last byte, one more, one more character."""
    if field_type == FieldDescriptor.TYPE_BYTES:
        assert isinstance(value, bytes)
        assert value
        return value[:-1] + bytes([value[-1] ^ 1])
    if field_type == FieldDescriptor.TYPE_STRING:
        assert isinstance(value, str)
        return value + "x"
    assert isinstance(value, int)
    return value + 1


_SIGNED_SPACE = {(K.SPACE, R.INVALID_SIGNATURE), (K.STAKE, R.INCONSISTENT)}
_SPEC = {(K.WORK, R.VERIFICATION_FAILED), (K.STAKE, R.INCONSISTENT)}

#: What changing each field (by :func:`_nudged`) must be rejected with, at least. A SpaceProof
#: field first breaks the storage node's signature; every space and work field also breaks the
#: owner's state digest; fields that feed other proofs' challenges break those too.
EXPECTED: dict[str, set[tuple[ProofKind, ProofReason]]] = {
    "space.pos_proof": _SIGNED_SPACE,
    "space.plot_id": _SIGNED_SPACE,
    "space.k": {(K.SPACE, R.MALFORMED), (K.STAKE, R.INCONSISTENT)},
    "space.challenge": _SIGNED_SPACE,
    "space.quality": _SIGNED_SPACE,
    "space.custody_merkle_root": _SIGNED_SPACE,
    "space.custody_proofs.chunk_index": _SIGNED_SPACE,
    "space.custody_proofs.chunk_digest": _SIGNED_SPACE,
    "space.custody_proofs.sibling_hashes": _SIGNED_SPACE,
    "space.custody_proofs.chunk": _SIGNED_SPACE,
    "space.storage_node_id.id": {(K.SPACE, R.IDENTITY_MISMATCH), (K.STAKE, R.INCONSISTENT)},
    "space.storage_address.ip": _SIGNED_SPACE,
    "space.storage_address.port": _SIGNED_SPACE,
    "space.storage_address.transport": _SIGNED_SPACE,
    "space.storage_zone": _SIGNED_SPACE,
    "space.node_signature": _SIGNED_SPACE,
    "space.storage_node_certificate_chain.certificates": {
        (K.CERTIFICATE_CHAIN, R.INVALID_SIGNATURE),
        (K.STAKE, R.INCONSISTENT),
    },
    "space.plot_seed": _SIGNED_SPACE,
    "space.custody_chunk_count": _SIGNED_SPACE,
    "stake.asset_id.id": {
        (K.STAKE, R.INCONSISTENT),
        (K.WORK, R.VERIFICATION_FAILED),
        (K.SPACE, R.CHALLENGE_MISMATCH),
    },
    "stake.version": {
        (K.COMBINED, R.CHALLENGE_MISMATCH),
        (K.STAKE, R.INCONSISTENT),
        (K.WORK, R.VERIFICATION_FAILED),
        (K.SPACE, R.CHALLENGE_MISMATCH),
    },
    "stake.state_digest": {(K.STAKE, R.INCONSISTENT), (K.TIME, R.INCONSISTENT)},
    "stake.stake_amount": {(K.STAKE, R.INVALID_SIGNATURE)},
    "stake.owner_signature": {(K.STAKE, R.INVALID_SIGNATURE)},
    "stake.owner_certificate_chain.certificates": {(K.CERTIFICATE_CHAIN, R.INVALID_SIGNATURE)},
    "work.resource_spec.cpu_millicores": _SPEC,
    "work.resource_spec.gpu_count": _SPEC,
    "work.resource_spec.gpu_memory_bytes": _SPEC,
    "work.resource_spec.memory_bytes": _SPEC,
    "work.resource_spec.storage_bytes": _SPEC,
    "work.challenge": {(K.WORK, R.CHALLENGE_MISMATCH), (K.STAKE, R.INCONSISTENT)},
    # The work hash may meet one more bit by chance; the owner's digest still pins the claim.
    "work.difficulty_bits": {(K.STAKE, R.INCONSISTENT)},
    "work.nonce": {(K.WORK, R.VERIFICATION_FAILED), (K.STAKE, R.INCONSISTENT)},
    "time.vdf.discriminant_size_bits": {(K.TIME, R.UNSUPPORTED_ALGORITHM)},
    "time.vdf.iterations": {(K.TIME, R.VERIFICATION_FAILED)},
    "time.vdf.challenge": {(K.TIME, R.CHALLENGE_MISMATCH)},
    "time.vdf.output": {
        (K.TIME, R.VERIFICATION_FAILED),
        (K.WORK, R.CHALLENGE_MISMATCH),
        (K.SPACE, R.CHALLENGE_MISMATCH),
    },
    "time.vdf.proof": {(K.TIME, R.VERIFICATION_FAILED)},
    "time.poh.start_hash": {(K.TIME, R.CHALLENGE_MISMATCH)},
    "time.poh.num_hashes": {(K.TIME, R.VERIFICATION_FAILED)},
    "time.poh.mixin": {(K.TIME, R.INCONSISTENT)},
    "time.poh.end_hash": {(K.TIME, R.VERIFICATION_FAILED)},
}


def _v1_paths() -> list[Path_]:
    """The field paths of a full bundle (built from the protobuf schema, not a fixture)."""
    bundle = common_pb2.FourProof()
    for message in (
        bundle.space.custody_proofs.add(),
        bundle.space.storage_node_id,
        bundle.space.storage_address,
        bundle.stake.asset_id,
        bundle.work.resource_spec,
        bundle.time.vdf,
        bundle.time.poh,
    ):
        message.SetInParent()
    bundle.space.custody_proofs[0].sibling_hashes.append(b"x")
    bundle.space.storage_node_certificate_chain.certificates.append(b"x")
    bundle.stake.owner_certificate_chain.certificates.append(b"x")
    return list(_paths(bundle))


PATHS = _v1_paths()


def test_the_table_names_every_field() -> None:
    assert sorted(_name(p) for p in PATHS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", PATHS, ids=_name)
def test_each_field_change_is_rejected_with_its_reason(world: World, path: Path_) -> None:
    changed = _copy(world.v1)
    _set(changed, path, _nudged(_get(changed, path), _type(changed, path)))
    result = world.validate(changed, world.after_v0)
    assert not result.valid
    assert _without_chance(EXPECTED[_name(path)], changed) <= _found(result)
    assert result.to_message().verdict == common_pb2.VERDICT_REJECTED


def _without_chance(
    expected: set[tuple[ProofKind, ProofReason]], bundle: common_pb2.FourProof
) -> set[tuple[ProofKind, ProofReason]]:
    """``expected`` less the work's VERIFICATION_FAILED when the changed bundle's work hash
    meets its bits anyway: a change to what the hash covers gives a new, random hash, which
    with the preset's 8 bits still has enough leading zeros once in 256 runs. Every other
    reason stays required."""
    if not _work_meets_its_bits_by_chance(bundle):
        return expected
    rest = expected - {(K.WORK, R.VERIFICATION_FAILED)}
    assert rest, "nothing left to expect"
    return rest


def _work_meets_its_bits_by_chance(bundle: common_pb2.FourProof) -> bool:
    """Whether the (changed) bundle's work hash, over what it claims, has the leading zero
    bits the proof claims: then the work itself verifies whatever else changed."""
    proof = bundle.work
    try:
        prefix = work.work_prefix(
            bundle.stake.asset_id.id, bundle.stake.version, proof.resource_spec, proof.challenge
        )
        digest = work.work_hash(prefix, proof.nonce)
    except ValueError:
        return False
    return work.leading_zero_bits(digest) >= proof.difficulty_bits


def _any_value(field_type: int) -> st.SearchStrategy[object]:
    if field_type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=80)
    if field_type == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=24)
    if field_type == FieldDescriptor.TYPE_ENUM:
        return st.integers(0, 5)
    if field_type == FieldDescriptor.TYPE_UINT32:
        return st.integers(0, (1 << 32) - 1)
    return st.integers(0, (1 << 64) - 1)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_value_in_any_field_is_rejected(world: World, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(PATHS), label="field")
    changed = _copy(world.v1)
    original = _get(changed, path)
    value = data.draw(_any_value(_type(changed, path)), label="value")
    assume(value != original)
    _set(changed, path, value)
    result = world.validate(changed, world.after_v0)
    assert not result.valid, _name(path)
    assert result.rejections


# --- every byte of the encoding -------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_changed_byte_of_the_encoding_is_rejected(world: World, data: st.DataObject) -> None:
    encoded = world.v1.SerializeToString(deterministic=True)
    position = data.draw(st.integers(0, len(encoded) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="xor")
    changed = bytearray(encoded)
    changed[position] ^= mask
    try:
        bundle = decode_bundle(bytes(changed))
    except ProofRejected as exc:
        rejection = exc
    else:
        rejection = None
    if rejection is not None:
        assert (rejection.kind, rejection.reason) == (K.COMBINED, R.MALFORMED)
        return
    result = world.validate(bundle, world.after_v0)
    if bundle.SerializeToString(deterministic=True) == encoded:
        # Another encoding of the very same proofs (e.g. a field number turned unknown and
        # dropped is NOT this case: that changes the message).
        assert result.valid
    else:
        assert not result.valid


def test_each_region_of_the_encoding_is_covered(world: World) -> None:
    """One changed byte inside each proof's encoding is rejected as that proof (or as what it
    feeds): a deterministic companion of the random test above."""
    encoded = world.v1.SerializeToString(deterministic=True)
    for field, kinds in (
        ("space", {K.SPACE, K.CERTIFICATE_CHAIN}),
        ("stake", {K.STAKE, K.CERTIFICATE_CHAIN}),
        ("work", {K.WORK}),
        ("time", {K.TIME}),
    ):
        part = getattr(world.v1, field).SerializeToString(deterministic=True)
        start = encoded.index(part)
        changed = bytearray(encoded)
        changed[start + len(part) - 1] ^= 0x01  # the last byte: inside a value, not a tag
        result = world.validate(decode_bundle(bytes(changed)), world.after_v0)
        assert not result.valid
        assert kinds & {r.kind for r in result.rejections}, field


# --- asset A is not asset B; version n is not version n+1 -----------------------------------------


#: Asset A's proof in asset B's bundle (version 0 of both): what it must be rejected with.
SWAPPED: dict[str, set[tuple[ProofKind, ProofReason]]] = {
    # A's space proof answers A's challenges; B's owner signed B's space proof.
    "space": {(K.SPACE, R.CHALLENGE_MISMATCH), (K.STAKE, R.INCONSISTENT)},
    # The bundle now claims asset A: B's VDF answers B's genesis, B's work and space are B's.
    "stake": {
        (K.TIME, R.CHALLENGE_MISMATCH),
        (K.WORK, R.VERIFICATION_FAILED),
        (K.SPACE, R.CHALLENGE_MISMATCH),
    },
    "work": {(K.WORK, R.CHALLENGE_MISMATCH), (K.STAKE, R.INCONSISTENT)},
    # A's VDF answers A's genesis; its beacon is not the one B's work and space answer.
    "time": {
        (K.TIME, R.CHALLENGE_MISMATCH),
        (K.WORK, R.CHALLENGE_MISMATCH),
        (K.SPACE, R.CHALLENGE_MISMATCH),
    },
}


@pytest.mark.parametrize("field", sorted(SWAPPED))
def test_a_proof_of_asset_a_does_not_validate_for_asset_b(world: World, field: str) -> None:
    assert world.validate(world.other, None).valid
    mixed = _copy(world.other)
    getattr(mixed, field).CopyFrom(getattr(world.v0, field))
    result = world.validate(mixed, None)
    assert not result.valid
    assert _without_chance(SWAPPED[field], mixed) <= _found(result)


def test_the_whole_bundle_of_asset_a_is_not_asset_b(world: World) -> None:
    # Relabelling A's bundle as B's breaks the owner's signature and every derived challenge.
    relabelled = _copy(world.v0)
    relabelled.stake.asset_id.id = world.other.stake.asset_id.id
    result = world.validate(relabelled, None)
    expected = {
        (K.TIME, R.CHALLENGE_MISMATCH),
        (K.WORK, R.VERIFICATION_FAILED),
        (K.SPACE, R.CHALLENGE_MISMATCH),
        (K.STAKE, R.INCONSISTENT),
    }
    assert _without_chance(expected, relabelled) <= _found(result)


def test_version_n_does_not_validate_as_n_plus_1(world: World) -> None:
    # Version 0 presented as the successor of version 0 (a replay).
    replayed = world.validate(world.v0, world.after_v0)
    assert (K.COMBINED, R.CHALLENGE_MISMATCH) in _found(replayed)
    assert (K.TIME, R.CHALLENGE_MISMATCH) in _found(replayed)
    # Version 1 presented as version 2 (after itself).
    assert (K.COMBINED, R.CHALLENGE_MISMATCH) in _found(
        world.validate(world.v1, PreviousState.of(world.v1))
    )
    # Version 1 presented as the first version (its predecessor unknown).
    assert not world.validate(world.v1, None).valid
    # Version 1 relabelled as version 2 after version 1: the owner's digest and every
    # challenge name version 1.
    relabelled = _copy(world.v1)
    relabelled.stake.version = 2
    result = world.validate(relabelled, PreviousState.of(world.v1))
    assert {(K.STAKE, R.INCONSISTENT), (K.TIME, R.CHALLENGE_MISMATCH)} <= _found(result)


def test_a_back_dated_successor_is_rejected(world: World) -> None:
    # "Version 1" built on the genesis instead of on version 0: it skips version 0's time.
    asset = world.v0.stake.asset_id.id
    genesis = PreviousState(0, challenges.genesis_hash(asset), challenges.poh_genesis(asset))
    back_dated = world.network.prove("photos", DATA, preset=PRESET, previous=genesis)
    assert back_dated.stake.version == 1
    assert world.validate(back_dated, genesis).valid  # it is sound on its own terms...
    result = world.validate(back_dated, world.after_v0)  # ...but does not follow version 0
    assert {(K.TIME, R.CHALLENGE_MISMATCH), (K.STAKE, R.INCONSISTENT)} <= _found(result)


def test_a_fork_of_version_zero_is_not_its_successor(world: World) -> None:
    # Another version 0 of the same asset (different content) cannot follow the first.
    fork = world.network.prove("photos", DATA + b"!", preset=PRESET)
    assert world.validate(fork, None).valid
    assert state_hash(fork) != state_hash(world.v0)
    assert not world.validate(fork, world.after_v0).valid


# --- missing and malformed ------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["space", "stake", "work", "time"])
def test_a_missing_proof_is_reported(world: World, field: str) -> None:
    partial = _copy(world.v1)
    partial.ClearField(field)  # type: ignore[arg-type]
    result = world.validate(partial, world.after_v0)
    assert not result.valid
    kind = K[field.upper()]
    verdict = next(v for v in result.verdicts if v.kind is kind)
    assert verdict.rejection is not None
    assert verdict.rejection.reason is R.MISSING
    if field == "time":
        # Without the VDF output there is no beacon: work and space cannot be checked.
        for dependent in (K.WORK, K.SPACE):
            rejection = next(v for v in result.verdicts if v.kind is dependent).rejection
            assert rejection is not None
            assert rejection.reason is R.MISSING
            assert "cannot be derived" in rejection.detail


def test_an_empty_bundle(world: World) -> None:
    result = world.validate(common_pb2.FourProof(), None)
    assert not result.valid
    assert (K.COMBINED, R.MALFORMED) in _found(result)
    assert all(not v.valid for v in result.verdicts)
    assert len(result.to_message().rejections) == 5


def test_decode_bundle_round_trip_drops_unknown_fields(world: World) -> None:
    encoded = world.v1.SerializeToString(deterministic=True)
    assert decode_bundle(encoded) == world.v1
    # An unknown field (number 15, bytes) appended: parsed, dropped, hash unchanged.
    extra = bytes([15 << 3 | 2, 3]) + b"abc"
    decoded = decode_bundle(encoded + extra)
    assert decoded.SerializeToString(deterministic=True) == encoded
    assert state_hash(decoded) == state_hash(world.v1)


@pytest.mark.parametrize(
    "data",
    [b"\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x05abc"],
    ids=["bad-tag", "huge-length", "truncated"],
)
def test_decode_bundle_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ProofRejected) as info:
        decode_bundle(data)
    assert (info.value.kind, info.value.reason) == (K.COMBINED, R.MALFORMED)


def test_decode_bundle_rejects_oversized() -> None:
    with pytest.raises(ProofRejected, match="exceeds") as info:
        decode_bundle(bytes(MAX_BUNDLE_BYTES + 1))
    assert info.value.reason is R.MALFORMED


def test_a_verdict_is_valid_only_without_a_rejection() -> None:
    assert ProofVerdict(K.WORK, None).valid
    assert not ProofVerdict(K.WORK, ProofRejected(K.WORK, R.MISSING, "absent")).valid


def test_steps_and_verdicts_report_their_time(world: World) -> None:
    steps: list[ProofKind] = []
    seconds: list[float] = []

    def lap(kind: ProofKind, took: float) -> None:
        steps.append(kind)
        seconds.append(took)

    net = world.network
    previous = PreviousState.of(world.v0)
    chain = net.node_chain()
    bundle = prove_four_proofs(
        asset=net.asset_id("photos"),
        previous=previous,
        chunks=custody.chunk(DATA),
        resources=common_pb2.ResourceSpec(storage_bytes=len(DATA)),
        amount=PRESET.min_stake,
        preset=PRESET,
        plot=net.plot(PRESET.plot_k),
        storage_chain=chain,
        storage_sign=net.sign,
        address=common_pb2.NetworkAddress(ip=bytes(4), port=1),
        zone="z",
        owner_chain=chain,
        owner_sign=net.sign,
        on_step=lap,
    )
    assert steps == [K.TIME, K.WORK, K.SPACE, K.STAKE, K.TIME]
    assert all(took >= 0 for took in seconds)
    result = world.validate(bundle, previous)
    assert result.valid
    assert all(v.seconds > 0 for v in result.verdicts)
    # A proof that could not be checked took no time.
    empty = world.validate(common_pb2.FourProof(), None)
    assert all(v.seconds == 0 for v in empty.verdicts)


def test_the_chance_check_reads_the_real_work(world: World) -> None:
    assert _work_meets_its_bits_by_chance(world.v1)  # real work meets its bits
    impossible = _copy(world.v1)
    impossible.work.difficulty_bits = 256
    assert not _work_meets_its_bits_by_chance(impossible)
