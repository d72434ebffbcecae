"""Messages survive the wire, defaults fail safe, and older readers keep newer fields."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from hypermesh_interfaces import common_pb2, consensus_pb2, ledger_pb2, security_pb2

M = TypeVar("M", bound=Message)

UINT32 = st.integers(min_value=0, max_value=2**32 - 1)
UINT64 = st.integers(min_value=0, max_value=2**64 - 1)
DIGEST = st.binary(min_size=32, max_size=32)
BLOB = st.binary(max_size=256)
TEXT = st.text(max_size=64)
# Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
TIMESTAMPS = st.builds(
    Timestamp,
    seconds=st.integers(min_value=-62_135_596_800, max_value=253_402_300_799),
    nanos=st.integers(min_value=0, max_value=999_999_999),
)


def round_trip(message: M) -> M:
    """``message`` serialized and parsed back into a fresh instance of its class."""
    parsed = type(message)()
    parsed.ParseFromString(message.SerializeToString())
    return parsed


network_addresses = st.builds(
    common_pb2.NetworkAddress,
    ip=st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16)),
    port=st.integers(min_value=0, max_value=65_535),
    transport=st.sampled_from(common_pb2.Transport.values()),
)
peer_ids = st.builds(common_pb2.PeerId, id=DIGEST)
asset_ids = st.builds(common_pb2.AssetId, id=DIGEST)

space_proofs = st.builds(
    common_pb2.SpaceProof,
    pos_proof=BLOB,
    plot_id=DIGEST,
    k=st.integers(min_value=18, max_value=50),
    challenge=DIGEST,
    quality=DIGEST,
    custody_merkle_root=DIGEST,
    custody_proofs=st.lists(
        st.builds(
            common_pb2.ChunkInclusionProof,
            chunk_index=UINT64,
            chunk_digest=DIGEST,
            sibling_hashes=st.lists(DIGEST, max_size=8),
        ),
        max_size=4,
    ),
    storage_node_id=peer_ids,
    storage_address=network_addresses,
    storage_zone=TEXT,
    node_signature=BLOB,
)
stake_proofs = st.builds(
    common_pb2.StakeProof,
    asset_id=asset_ids,
    version=UINT64,
    state_digest=DIGEST,
    stake_amount=UINT64,
    owner_signature=BLOB,
    owner_certificate_chain=st.builds(
        common_pb2.CertificateChain, certificates=st.lists(BLOB, max_size=4)
    ),
)
work_proofs = st.builds(
    common_pb2.WorkProof,
    resource_spec=st.builds(
        common_pb2.ResourceSpec,
        cpu_millicores=UINT64,
        gpu_count=UINT32,
        gpu_memory_bytes=UINT64,
        memory_bytes=UINT64,
        storage_bytes=UINT64,
    ),
    challenge=DIGEST,
    difficulty_bits=st.integers(min_value=0, max_value=256),
    nonce=UINT64,
)
time_proofs = st.builds(
    common_pb2.TimeProof,
    vdf=st.builds(
        common_pb2.VdfProof,
        discriminant_size_bits=st.sampled_from([512, 1024, 2048]),
        iterations=UINT64,
        challenge=DIGEST,
        output=BLOB,
        proof=BLOB,
    ),
    poh=st.builds(
        common_pb2.PohSegment,
        start_hash=DIGEST,
        num_hashes=UINT64,
        mixin=BLOB,
        end_hash=DIGEST,
    ),
)
four_proofs = st.builds(
    common_pb2.FourProof, space=space_proofs, stake=stake_proofs, work=work_proofs, time=time_proofs
)
rejections = st.builds(
    common_pb2.Rejection,
    proof_kind=st.sampled_from(common_pb2.ProofKind.values()),
    reason=st.sampled_from(common_pb2.RejectionReason.values()),
    detail=TEXT,
)


@given(
    address=network_addresses,
    origin=st.sampled_from(common_pb2.AddressOrigin.values()),
    nat_type=st.sampled_from(common_pb2.NatType.values()),
)
def test_public_address_round_trips(
    address: common_pb2.NetworkAddress,
    origin: common_pb2.AddressOrigin.ValueType,
    nat_type: common_pb2.NatType.ValueType,
) -> None:
    message = common_pb2.PublicAddress(address=address, origin=origin, nat_type=nat_type)
    parsed = round_trip(message)
    assert parsed == message
    assert parsed.address.ip == address.ip
    assert parsed.address.port == address.port
    assert parsed.address.transport == address.transport
    assert parsed.origin == origin
    assert parsed.nat_type == nat_type


@given(
    channel_id=BLOB,
    peer_id=peer_ids,
    peer_key=BLOB,
    kem=TEXT,
    aead=TEXT,
    established_at=TIMESTAMPS,
    binding=DIGEST,
)
def test_secure_channel_round_trips(
    channel_id: bytes,
    peer_id: common_pb2.PeerId,
    peer_key: bytes,
    kem: str,
    aead: str,
    established_at: Timestamp,
    binding: bytes,
) -> None:
    message = common_pb2.SecureChannel(
        channel_id=channel_id,
        peer_id=peer_id,
        peer_signing_public_key=peer_key,
        kem_algorithm=kem,
        aead_algorithm=aead,
        established_at=established_at,
        binding=binding,
    )
    parsed = round_trip(message)
    assert parsed == message
    assert parsed.channel_id == channel_id
    assert parsed.peer_id.id == peer_id.id
    assert parsed.kem_algorithm == kem
    assert parsed.established_at.seconds == established_at.seconds
    assert parsed.established_at.nanos == established_at.nanos


@given(proofs=four_proofs, epoch=st.integers(0, 2**64 - 1), signature=st.binary(max_size=64))
def test_four_proofs_round_trip_inside_a_request(
    proofs: common_pb2.FourProof, epoch: int, signature: bytes
) -> None:
    change = ledger_pb2.AssetStateChange(proofs=proofs, epoch=epoch, owner_signature=signature)
    message = consensus_pb2.RecordAssetStateRequest(change=change)
    parsed = round_trip(message)
    assert parsed == message
    assert parsed.change.proofs.space.custody_proofs == proofs.space.custody_proofs
    assert parsed.change.proofs.stake.stake_amount == proofs.stake.stake_amount
    assert parsed.change.proofs.work.nonce == proofs.work.nonce
    assert parsed.change.proofs.time.vdf.iterations == proofs.time.vdf.iterations
    assert (parsed.change.epoch, parsed.change.owner_signature) == (epoch, signature)
    # Deterministic serialization is what signatures inside the proofs are computed over.
    assert parsed.SerializeToString(deterministic=True) == message.SerializeToString(
        deterministic=True
    )


@given(verdict=st.sampled_from(common_pb2.Verdict.values()), found=st.lists(rejections))
def test_validation_result_keeps_every_rejection_in_order(
    verdict: common_pb2.Verdict.ValueType, found: list[common_pb2.Rejection]
) -> None:
    message = common_pb2.ValidationResult(verdict=verdict, rejections=found)
    parsed = round_trip(message)
    assert parsed == message
    assert parsed.verdict == verdict
    assert [(r.proof_kind, r.reason, r.detail) for r in parsed.rejections] == [
        (r.proof_kind, r.reason, r.detail) for r in found
    ]


@given(
    asset_id=asset_ids,
    keys=st.tuples(BLOB, BLOB, DIGEST, DIGEST),
    version=UINT32,
    created_at=TIMESTAMPS,
    algorithms=st.tuples(TEXT, TEXT),
)
def test_asset_key_pair_round_trips(
    asset_id: common_pb2.AssetId,
    keys: tuple[bytes, bytes, bytes, bytes],
    version: int,
    created_at: Timestamp,
    algorithms: tuple[str, str],
) -> None:
    signing, kem, signing_id, kem_id = keys
    message = common_pb2.AssetKeyPair(
        asset_id=asset_id,
        signing_public_key=signing,
        kem_public_key=kem,
        signing_key_id=signing_id,
        kem_key_id=kem_id,
        version=version,
        created_at=created_at,
        signature_algorithm=algorithms[0],
        kem_algorithm=algorithms[1],
    )
    parsed = round_trip(message)
    assert parsed == message
    assert (parsed.signing_public_key, parsed.kem_public_key) == (signing, kem)
    assert (parsed.signing_key_id, parsed.kem_key_id) == (signing_id, kem_id)
    assert parsed.version == version


@given(channel_id=BLOB, plaintext=BLOB, associated_data=BLOB)
def test_encrypt_transport_request_round_trips(
    channel_id: bytes, plaintext: bytes, associated_data: bytes
) -> None:
    message = security_pb2.EncryptTransportRequest(
        channel_id=channel_id, plaintext=plaintext, associated_data=associated_data
    )
    parsed = round_trip(message)
    assert parsed == message
    assert (parsed.channel_id, parsed.plaintext, parsed.associated_data) == (
        channel_id,
        plaintext,
        associated_data,
    )


@given(
    src_eid=UINT32,
    dst_eid=UINT32,
    nonce=UINT64,
    guid=DIGEST,
    payload_hash=DIGEST,
    status=st.sampled_from(common_pb2.SyncStatus.values()),
)
def test_sync_result_round_trips(
    src_eid: int,
    dst_eid: int,
    nonce: int,
    guid: bytes,
    payload_hash: bytes,
    status: common_pb2.SyncStatus.ValueType,
) -> None:
    message = common_pb2.SyncResult(
        src_eid=src_eid,
        dst_eid=dst_eid,
        nonce=nonce,
        guid=guid,
        payload_hash=payload_hash,
        status=status,
    )
    parsed = round_trip(message)
    assert parsed == message
    assert (parsed.src_eid, parsed.dst_eid, parsed.nonce) == (src_eid, dst_eid, nonce)
    assert (parsed.guid, parsed.payload_hash, parsed.status) == (guid, payload_hash, status)


def test_unset_existing_keys_policy_is_fail() -> None:
    request = round_trip(
        security_pb2.GenerateAssetKeysRequest(asset_id=common_pb2.AssetId(id=bytes(32)))
    )
    assert request.if_exists == security_pb2.EXISTING_KEYS_POLICY_FAIL
    assert security_pb2.ExistingKeysPolicy.Value("EXISTING_KEYS_POLICY_FAIL") == 0


def test_unset_trust_level_is_untrusted_and_unset_verdict_is_not_valid() -> None:
    response = round_trip(security_pb2.ValidateCertificatesResponse())
    assert response.trust_level == common_pb2.TRUST_LEVEL_UNTRUSTED
    assert response.result.verdict == common_pb2.VERDICT_UNSPECIFIED
    assert response.result.verdict != common_pb2.VERDICT_VALID


@given(stake=stake_proofs, future_value=UINT64)
def test_a_field_added_later_survives_an_older_reader(
    stake: common_pb2.StakeProof, future_value: int
) -> None:
    # A later revision may add field 100 to StakeProof. A v1 reader that parses and re-serializes
    # such a message must keep it, so that signatures by newer peers still verify.
    future_field = _varint((100 << 3) | 0) + _varint(future_value)
    newer = stake.SerializeToString() + future_field
    parsed = common_pb2.StakeProof()
    parsed.ParseFromString(newer)
    assert parsed.SerializeToString() == newer
    known_only = common_pb2.StakeProof()
    known_only.CopyFrom(parsed)
    known_only.DiscardUnknownFields()
    assert known_only == stake


def _varint(value: int) -> bytes:
    """``value`` as a protobuf base-128 varint."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)
