"""What every detected resource has in common: its typed error, its protocol, its descriptor.

A detected resource (:mod:`.cpu`, :mod:`.memory`, :mod:`.storage`) is a frozen value holding
only figures read from this machine. It offers two things to the asset ledger:

* :meth:`Resource.resource_spec`: the ``hypermesh.v1.ResourceSpec`` the asset's work proof is
  claimed for (CPU in millicores, memory and storage in bytes);
* :meth:`Resource.descriptor`: the asset's content, the bytes its custody proof covers -- the
  canonical JSON encoding (:func:`canonical_json`) of an object whose ``format`` is
  :data:`DESCRIPTOR_FORMAT`, whose ``kind`` is the resource kind, and whose other members are
  the resource's figures. Canonical: keys sorted, no whitespace, ASCII only (other characters
  as ``\\uXXXX`` escapes), integers in decimal, no floats; the same figures always give the
  same bytes.

A figure that cannot be read is never guessed: detection raises :class:`ResourceUnavailable`
naming the resource and what could not be read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final, Protocol

from hypermesh_interfaces.v1 import common_pb2
from trustchain.errors import TrustChainError

__all__ = [
    "DESCRIPTOR_FORMAT",
    "Resource",
    "ResourceUnavailable",
    "canonical_json",
    "format_bytes",
]

#: The ``format`` member of every descriptor.
DESCRIPTOR_FORMAT: Final = "hypermesh/resource/v1"


class ResourceUnavailable(TrustChainError):
    """A figure of resource ``kind`` (``cpu``, ``memory``, ``storage``) could not be read from
    this machine; ``detail`` says which and why."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class Resource(Protocol):
    """A detected resource (see the module docs)."""

    @property
    def kind(self) -> str:
        """``cpu``, ``memory`` or ``storage``."""
        ...

    def resource_spec(self) -> common_pb2.ResourceSpec:
        """What the asset offers."""
        ...

    def descriptor(self) -> bytes:
        """The asset's content: the canonical JSON of its figures."""
        ...

    def summary(self) -> str:
        """One line for people."""
        ...


def canonical_json(kind: str, figures: Mapping[str, object]) -> bytes:
    """The canonical JSON descriptor of resource ``kind`` with ``figures`` (see the module
    docs). ``figures`` hold strings, integers, booleans or None; :class:`ValueError` for a
    float or for a figure named ``format`` or ``kind``."""
    if {"format", "kind"} & set(figures):
        raise ValueError("format and kind are set by the descriptor itself")
    if any(isinstance(value, float) for value in figures.values()):
        raise ValueError("descriptors hold no floats (their text is not canonical)")
    document = {"format": DESCRIPTOR_FORMAT, "kind": kind, **figures}
    text = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def format_bytes(count: int) -> str:
    """``count`` bytes for people: ``512 B``, else binary units with one decimal
    (``1.5 GiB``), up to PiB."""
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"
