"""How TrustChain's gRPC services turn failures into statuses.

A handler raises :class:`Abort` for a status it chooses, or lets a
:class:`~trustchain.errors.TrustChainError` escape; :func:`abort_on_errors` turns either into
``context.abort`` with the status the service's table gives (the first class that matches;
``INTERNAL`` if none does). The detail names the error class, so clients see what failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import grpc

from trustchain import errors

__all__ = ["Abort", "StatusTable", "abort_on_errors"]

#: (error class, status) pairs, most specific first.
StatusTable = Sequence[tuple[type[errors.TrustChainError], grpc.StatusCode]]


class Abort(Exception):
    """Raised inside a handler to end the call with ``code`` and ``detail``."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@contextmanager
def abort_on_errors(
    context: grpc.ServicerContext,
    status_of: StatusTable,
    *,
    special: Callable[[errors.TrustChainError], tuple[grpc.StatusCode, str] | None] | None = None,
) -> Iterator[None]:
    """Turn :class:`Abort` and TrustChain errors raised in the block into a status on
    ``context``. ``special``, if given, is asked first and may choose the status and detail
    of an error itself (None: use the table)."""
    try:
        yield
    except Abort as abort:
        context.abort(abort.code, abort.detail)
    except errors.TrustChainError as error:
        chosen = special(error) if special is not None else None
        if chosen is not None:
            context.abort(*chosen)
        for kind, code in status_of:
            if isinstance(error, kind):
                context.abort(code, f"{type(error).__name__}: {error}")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
