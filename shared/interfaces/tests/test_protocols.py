"""The in-process Protocol classes mirror the services and are checked structurally."""

from __future__ import annotations

import asyncio
import inspect
import re
from types import ModuleType

import pytest

from hypermesh_interfaces import common_pb2, consensus_pb2, network_pb2, security_pb2
from hypermesh_interfaces.protocols import ConsensusLayer, NetworkLayer, SecurityLayer


class InMemoryNetwork:
    async def establish_secure_channel(
        self, request: network_pb2.EstablishSecureChannelRequest
    ) -> network_pb2.EstablishSecureChannelResponse:
        channel = common_pb2.SecureChannel(peer_id=request.peer_id)
        return network_pb2.EstablishSecureChannelResponse(
            channel=channel, remote_address=request.address
        )

    async def resolve_asset_address(
        self, request: network_pb2.ResolveAssetAddressRequest
    ) -> network_pb2.ResolveAssetAddressResponse:
        return network_pb2.ResolveAssetAddressResponse(asset_id=request.asset_id)

    async def handle_nat_traversal(
        self, request: network_pb2.HandleNatTraversalRequest
    ) -> network_pb2.HandleNatTraversalResponse:
        return network_pb2.HandleNatTraversalResponse()


class InMemoryConsensus:
    async def validate_four_proofs(
        self, request: consensus_pb2.ValidateFourProofsRequest
    ) -> consensus_pb2.ValidateFourProofsResponse:
        result = common_pb2.ValidationResult(verdict=common_pb2.VERDICT_VALID)
        return consensus_pb2.ValidateFourProofsResponse(result=result)

    async def record_asset_state(
        self, request: consensus_pb2.RecordAssetStateRequest
    ) -> consensus_pb2.RecordAssetStateResponse:
        return consensus_pb2.RecordAssetStateResponse()

    async def cross_chain_sync(
        self, request: consensus_pb2.CrossChainSyncRequest
    ) -> consensus_pb2.CrossChainSyncResponse:
        return consensus_pb2.CrossChainSyncResponse()


class InMemorySecurity:
    """Echoes plaintext as the record: enough to exercise the shapes, no protection at all."""

    async def open_channel(
        self, request: security_pb2.OpenChannelRequest
    ) -> security_pb2.OpenChannelResponse:
        return security_pb2.OpenChannelResponse(channel_id=b"c1", handshake=request.handshake)

    async def complete_channel(
        self, request: security_pb2.CompleteChannelRequest
    ) -> common_pb2.SecureChannel:
        return common_pb2.SecureChannel(channel_id=request.channel_id)

    async def encrypt_transport(
        self, request: security_pb2.EncryptTransportRequest
    ) -> security_pb2.EncryptTransportResponse:
        return security_pb2.EncryptTransportResponse(record=request.plaintext, sequence=7)

    async def decrypt_transport(
        self, request: security_pb2.DecryptTransportRequest
    ) -> security_pb2.DecryptTransportResponse:
        return security_pb2.DecryptTransportResponse(plaintext=request.record, sequence=7)

    async def validate_certificates(
        self, request: security_pb2.ValidateCertificatesRequest
    ) -> security_pb2.ValidateCertificatesResponse:
        return security_pb2.ValidateCertificatesResponse()

    async def generate_asset_keys(
        self, request: security_pb2.GenerateAssetKeysRequest
    ) -> common_pb2.AssetKeyPair:
        return common_pb2.AssetKeyPair(asset_id=request.asset_id, version=1)


# Static check (mypy): the in-memory classes satisfy the protocols, signatures included.
_network: NetworkLayer = InMemoryNetwork()
_consensus: ConsensusLayer = InMemoryConsensus()
_security: SecurityLayer = InMemorySecurity()

#: (protocol, a class satisfying it, its service's messages module, service name)
CASES: list[tuple[type, type, ModuleType, str]] = [
    (NetworkLayer, InMemoryNetwork, network_pb2, "NetworkLayer"),
    (ConsensusLayer, InMemoryConsensus, consensus_pb2, "ConsensusLayer"),
    (SecurityLayer, InMemorySecurity, security_pb2, "SecurityLayer"),
]


def _snake_case(rpc_name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc_name).lower()


def _members(protocol: type) -> set[str]:
    return {name for name, value in vars(protocol).items() if callable(value) and name[0] != "_"}


CASE_IDS = [service for *_, service in CASES]


@pytest.mark.parametrize(("protocol", "_impl", "messages", "service"), CASES, ids=CASE_IDS)
def test_protocol_has_one_method_per_rpc(
    protocol: type, _impl: type, messages: ModuleType, service: str
) -> None:
    rpcs = messages.DESCRIPTOR.services_by_name[service].methods
    assert _members(protocol) == {_snake_case(method.name) for method in rpcs}
    for name in _members(protocol):
        assert inspect.iscoroutinefunction(getattr(protocol, name)), name


@pytest.mark.parametrize(("protocol", "impl", "_messages", "_service"), CASES, ids=CASE_IDS)
def test_complete_class_satisfies_protocol(
    protocol: type, impl: type, _messages: ModuleType, _service: str
) -> None:
    assert isinstance(impl(), protocol)


@pytest.mark.parametrize(
    ("protocol", "impl", "missing"),
    [
        (protocol, impl, name)
        for protocol, impl, _, _ in CASES
        for name in sorted(_members(protocol))
    ],
    ids=lambda value: value if isinstance(value, str) else value.__name__,
)
def test_class_missing_a_method_does_not_satisfy_protocol(
    protocol: type, impl: type, missing: str
) -> None:
    incomplete = type(
        f"Without_{missing}",
        (),
        {name: value for name, value in vars(impl).items() if name[0] != "_" and name != missing},
    )
    assert hasattr(impl(), missing)
    assert not hasattr(incomplete(), missing)
    assert not isinstance(incomplete(), protocol)


def test_protocol_methods_are_awaited_with_pb2_messages() -> None:
    security: SecurityLayer = InMemorySecurity()
    request = security_pb2.EncryptTransportRequest(channel_id=b"c1", plaintext=b"hello")
    response = asyncio.run(security.encrypt_transport(request))
    assert isinstance(response, security_pb2.EncryptTransportResponse)
    assert response.record == b"hello"
    assert response.sequence == 7
