"""In-process counterparts of the HyperMesh gRPC services.

Each :class:`typing.Protocol` here mirrors one service of ``proto/hypermesh/v1``: one ``async``
method per RPC, named in snake_case after it, taking the RPC's request message and returning its
response message (the generated ``*_pb2`` classes). A layer implemented in Python satisfies the
protocol structurally and can be called directly by another layer in the same process; a gRPC
servicer can wrap the same object for out-of-process callers.

Failures are raised as exceptions by the implementing package (TrustChain raises
:mod:`trustchain.errors`); the mapping of those exceptions to gRPC status codes belongs to the
servicer adapters, not to these protocols.

The protocols are :func:`typing.runtime_checkable`, so ``isinstance(obj, SecurityLayer)`` checks
that every method is present (not their signatures; mypy does that).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from hypermesh_interfaces.v1 import common_pb2, consensus_pb2, network_pb2, security_pb2

__all__ = ["ConsensusLayer", "NetworkLayer", "SecurityLayer"]


@runtime_checkable
class NetworkLayer(Protocol):
    """The ``hypermesh.v1.NetworkLayer`` service: reaching peers and assets across NATs."""

    async def establish_secure_channel(
        self, request: network_pb2.EstablishSecureChannelRequest
    ) -> network_pb2.EstablishSecureChannelResponse:
        """Connect to ``request.peer_id`` and return the channel once it proved that identity."""
        ...

    async def resolve_asset_address(
        self, request: network_pb2.ResolveAssetAddressRequest
    ) -> network_pb2.ResolveAssetAddressResponse:
        """The node serving ``request.asset_id`` and its addresses, most preferred first."""
        ...

    async def handle_nat_traversal(
        self, request: network_pb2.HandleNatTraversalRequest
    ) -> network_pb2.HandleNatTraversalResponse:
        """Find a working path to ``request.peer_id``; the local and remote ends that worked."""
        ...


@runtime_checkable
class ConsensusLayer(Protocol):
    """The ``hypermesh.v1.ConsensusLayer`` service: the four proofs, asset state, cross-chain."""

    async def validate_four_proofs(
        self, request: consensus_pb2.ValidateFourProofsRequest
    ) -> consensus_pb2.ValidateFourProofsResponse:
        """Check the four proofs; a verdict plus every failed check. Records nothing."""
        ...

    async def record_asset_state(
        self, request: consensus_pb2.RecordAssetStateRequest
    ) -> consensus_pb2.RecordAssetStateResponse:
        """Validate the proofs and, if valid, record the state; where it was recorded."""
        ...

    async def cross_chain_sync(
        self, request: consensus_pb2.CrossChainSyncRequest
    ) -> consensus_pb2.CrossChainSyncResponse:
        """Send a recorded state to another chain; the packet sent and how far it got."""
        ...


@runtime_checkable
class SecurityLayer(Protocol):
    """The ``hypermesh.v1.SecurityLayer`` service: handshake responder, transport records,
    certificate validation, asset keys."""

    async def open_channel(
        self, request: security_pb2.OpenChannelRequest
    ) -> security_pb2.OpenChannelResponse:
        """Handshake message 1 -> message 2, and the id of the pending handshake."""
        ...

    async def complete_channel(
        self, request: security_pb2.CompleteChannelRequest
    ) -> common_pb2.SecureChannel:
        """Handshake message 3 -> the established channel."""
        ...

    async def encrypt_transport(
        self, request: security_pb2.EncryptTransportRequest
    ) -> security_pb2.EncryptTransportResponse:
        """Protect one record on an established channel; the record and its sequence number."""
        ...

    async def decrypt_transport(
        self, request: security_pb2.DecryptTransportRequest
    ) -> security_pb2.DecryptTransportResponse:
        """Authenticate and decrypt one record; the plaintext and its sequence number."""
        ...

    async def validate_certificates(
        self, request: security_pb2.ValidateCertificatesRequest
    ) -> security_pb2.ValidateCertificatesResponse:
        """Validate a certificate chain against a trust policy."""
        ...

    async def generate_asset_keys(
        self, request: security_pb2.GenerateAssetKeysRequest
    ) -> common_pb2.AssetKeyPair:
        """Generate, return or rotate an asset's keys (per ``request.if_exists``); the public
        halves."""
        ...
