"""The three services have exactly the agreed RPCs, and unimplemented ones say UNIMPLEMENTED."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from hypermesh_interfaces import (
    consensus_pb2,
    consensus_pb2_grpc,
    network_pb2,
    network_pb2_grpc,
    security_pb2,
    security_pb2_grpc,
)

#: service -> RPC -> (request type, response type), by proto full name. The SecurityLayer rows are
#: what the TrustChain server is written against; change them only together with it.
EXPECTED_RPCS: dict[str, dict[str, tuple[str, str]]] = {
    "hypermesh.v1.NetworkLayer": {
        "EstablishSecureChannel": (
            "hypermesh.v1.EstablishSecureChannelRequest",
            "hypermesh.v1.EstablishSecureChannelResponse",
        ),
        "ResolveAssetAddress": (
            "hypermesh.v1.ResolveAssetAddressRequest",
            "hypermesh.v1.ResolveAssetAddressResponse",
        ),
        "HandleNatTraversal": (
            "hypermesh.v1.HandleNatTraversalRequest",
            "hypermesh.v1.HandleNatTraversalResponse",
        ),
    },
    "hypermesh.v1.ConsensusLayer": {
        "ValidateFourProofs": (
            "hypermesh.v1.ValidateFourProofsRequest",
            "hypermesh.v1.ValidateFourProofsResponse",
        ),
        "RecordAssetState": (
            "hypermesh.v1.RecordAssetStateRequest",
            "hypermesh.v1.RecordAssetStateResponse",
        ),
        "CrossChainSync": (
            "hypermesh.v1.CrossChainSyncRequest",
            "hypermesh.v1.CrossChainSyncResponse",
        ),
    },
    "hypermesh.v1.SecurityLayer": {
        "OpenChannel": ("hypermesh.v1.OpenChannelRequest", "hypermesh.v1.OpenChannelResponse"),
        "CompleteChannel": ("hypermesh.v1.CompleteChannelRequest", "hypermesh.v1.SecureChannel"),
        "EncryptTransport": (
            "hypermesh.v1.EncryptTransportRequest",
            "hypermesh.v1.EncryptTransportResponse",
        ),
        "DecryptTransport": (
            "hypermesh.v1.DecryptTransportRequest",
            "hypermesh.v1.DecryptTransportResponse",
        ),
        "ValidateCertificates": (
            "hypermesh.v1.ValidateCertificatesRequest",
            "hypermesh.v1.ValidateCertificatesResponse",
        ),
        "GenerateAssetKeys": ("hypermesh.v1.GenerateAssetKeysRequest", "hypermesh.v1.AssetKeyPair"),
    },
}

#: (messages module, gRPC module, service name) for every service.
SERVICES: list[tuple[ModuleType, ModuleType, str]] = [
    (network_pb2, network_pb2_grpc, "NetworkLayer"),
    (consensus_pb2, consensus_pb2_grpc, "ConsensusLayer"),
    (security_pb2, security_pb2_grpc, "SecurityLayer"),
]


def _service(messages: ModuleType, name: str) -> ServiceDescriptor:
    descriptor: ServiceDescriptor = messages.DESCRIPTOR.services_by_name[name]
    return descriptor


def _all_rpcs() -> list[tuple[ModuleType, ModuleType, str, MethodDescriptor]]:
    return [
        (messages, grpc_module, name, method)
        for messages, grpc_module, name in SERVICES
        for method in _service(messages, name).methods
    ]


def test_the_package_defines_exactly_these_services() -> None:
    defined = {
        service.full_name
        for module in (network_pb2, consensus_pb2, security_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
    }
    assert defined == set(EXPECTED_RPCS)


@pytest.mark.parametrize(
    ("messages", "name"), [(m, n) for m, _, n in SERVICES], ids=[n for *_, n in SERVICES]
)
def test_service_has_exactly_the_agreed_rpcs(messages: ModuleType, name: str) -> None:
    service = _service(messages, name)
    actual = {
        method.name: (method.input_type.full_name, method.output_type.full_name)
        for method in service.methods
    }
    assert actual == EXPECTED_RPCS[service.full_name]
    for method in service.methods:
        assert not method.client_streaming, method.full_name
        assert not method.server_streaming, method.full_name


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    """A channel to a real server on which every service is registered with the generated,
    empty servicer base class."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    # The generated servicer classes are concrete at runtime (each method answers
    # UNIMPLEMENTED); the mypy-protobuf stubs declare the methods abstract so that real
    # implementations are made to override all of them.
    network_pb2_grpc.add_NetworkLayerServicer_to_server(
        network_pb2_grpc.NetworkLayerServicer(),  # type: ignore[abstract]
        server,
    )
    consensus_pb2_grpc.add_ConsensusLayerServicer_to_server(
        consensus_pb2_grpc.ConsensusLayerServicer(),  # type: ignore[abstract]
        server,
    )
    security_pb2_grpc.add_SecurityLayerServicer_to_server(
        security_pb2_grpc.SecurityLayerServicer(),  # type: ignore[abstract]
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    assert port != 0
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as open_channel:
            yield open_channel
    finally:
        server.stop(grace=None).wait()


@pytest.mark.parametrize(
    ("messages", "grpc_module", "service_name", "method"),
    _all_rpcs(),
    ids=[method.full_name for *_, method in _all_rpcs()],
)
def test_empty_servicer_answers_unimplemented(
    channel: grpc.Channel,
    messages: ModuleType,
    grpc_module: ModuleType,
    service_name: str,
    method: MethodDescriptor,
) -> None:
    stub = getattr(grpc_module, f"{service_name}Stub")(channel)
    call: Callable[..., Any] = getattr(stub, method.name)
    request_class = getattr(messages, method.input_type.name)
    assert request_class.DESCRIPTOR is method.input_type
    with pytest.raises(grpc.RpcError) as raised:
        call(request_class(), timeout=30)
    error: Any = raised.value  # grpc raises an RpcError that is also a grpc.Call
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED
