"""HyperMesh protobuf/gRPC contracts: the NetworkLayer, ConsensusLayer and SecurityLayer services.

The generated modules of the current contract version are re-exported here, so both spellings
work::

    from hypermesh_interfaces import security_pb2, security_pb2_grpc
    from hypermesh_interfaces.v1 import security_pb2, security_pb2_grpc

:mod:`hypermesh_interfaces.protocols` has :class:`typing.Protocol` counterparts of the three
services for in-process use.
"""

from hypermesh_interfaces.v1 import (
    common_pb2,
    consensus_pb2,
    consensus_pb2_grpc,
    ledger_pb2,
    network_pb2,
    network_pb2_grpc,
    security_pb2,
    security_pb2_grpc,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "common_pb2",
    "consensus_pb2",
    "consensus_pb2_grpc",
    "ledger_pb2",
    "network_pb2",
    "network_pb2_grpc",
    "security_pb2",
    "security_pb2_grpc",
]
