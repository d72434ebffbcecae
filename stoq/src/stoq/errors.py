"""Every error STOQ raises on purpose. Catch :class:`StoqError` for all of them.

Errors from the layers below keep their own types where a caller would want them: a peer whose
certificate TrustChain refuses is a :class:`PeerRejected` with the
:class:`~trustchain.errors.CertificateRejected` chained as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConnectError",
    "ConnectionLost",
    "MessageTooLarge",
    "PeerRejected",
    "ProtocolViolation",
    "ResolutionError",
    "StoqError",
    "StreamClosed",
]


class StoqError(Exception):
    """Base class of STOQ's errors."""


class ConnectError(StoqError):
    """No connection could be made. ``attempts`` lists every ``(address, reason)`` tried."""

    def __init__(self, message: str, attempts: Sequence[tuple[str, str]] = ()) -> None:
        self.attempts: tuple[tuple[str, str], ...] = tuple(attempts)
        if self.attempts:
            tried = "; ".join(f"{address}: {reason}" for address, reason in self.attempts)
            message = f"{message} (tried {tried})"
        super().__init__(message)


class ResolutionError(ConnectError):
    """A name resolved to no address at all."""


class PeerRejected(StoqError):
    """The peer connected but is not accepted: its certificate chain, its identity proof or the
    channel binding failed. ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ConnectionLost(StoqError):
    """The connection is closed (by either side, or by the idle timeout)."""

    def __init__(self, error_code: int, reason: str) -> None:
        self.error_code = error_code
        self.reason = reason
        super().__init__(f"connection closed (code {error_code:#x}): {reason}")


class MessageTooLarge(StoqError):
    """A message exceeds the configured maximum size (sending, or announced by the peer)."""


class StreamClosed(StoqError):
    """The stream has ended: the peer finished or reset it, or it was closed locally."""


class ProtocolViolation(StoqError):
    """The peer broke the STOQ protocol (malformed framing, a record that does not open)."""
