"""The storage behind a directory as a resource: its file system's size and free space.

Figures, from :func:`os.statvfs` of the directory (the data directory the node stores
assets in):

* ``total_bytes``: ``f_blocks * f_frsize``, the file system's size;
* ``available_bytes``: ``f_bavail * f_frsize``, what an unprivileged process may still
  write. The asset offers this much: ``storage_bytes = available_bytes``.
* ``path``: the directory, absolute and with symbolic links resolved.

A directory that cannot be examined, or a file system that reports no blocks or no block
size, fails detection with :class:`~.resources.ResourceUnavailable`.

Descriptor (see :mod:`.resources`): ``{"available_bytes", "format", "kind": "storage", "path",
"total_bytes"}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hypermesh.adapters.resources import ResourceUnavailable, canonical_json, format_bytes
from hypermesh_interfaces.v1 import common_pb2

__all__ = ["StorageResource", "detect"]

_KIND: Final = "storage"


@dataclass(frozen=True)
class StorageResource:
    """The storage figures of one directory's file system (see the module docs)."""

    path: str
    total_bytes: int
    available_bytes: int

    def __post_init__(self) -> None:
        if not 0 <= self.available_bytes <= self.total_bytes or self.total_bytes == 0:
            raise ValueError("storage figures need 0 <= available_bytes <= total_bytes, total > 0")

    @property
    def kind(self) -> str:
        return _KIND

    def resource_spec(self) -> common_pb2.ResourceSpec:
        """The space still available."""
        return common_pb2.ResourceSpec(storage_bytes=self.available_bytes)

    def descriptor(self) -> bytes:
        return canonical_json(
            _KIND,
            {
                "available_bytes": self.available_bytes,
                "path": self.path,
                "total_bytes": self.total_bytes,
            },
        )

    def summary(self) -> str:
        return (
            f"{format_bytes(self.available_bytes)} available of "
            f"{format_bytes(self.total_bytes)} at {self.path}"
        )


def detect(path: Path | str) -> StorageResource:
    """Detect the storage of the file system holding ``path``; :class:`ResourceUnavailable`
    if it cannot be examined or reports no size."""
    try:
        resolved = Path(path).resolve(strict=True)
        stats = os.statvfs(resolved)
    except OSError as exc:
        raise ResourceUnavailable(_KIND, f"cannot examine {path}: {exc.strerror}") from exc
    if stats.f_frsize == 0 or stats.f_blocks == 0:
        raise ResourceUnavailable(
            _KIND,
            f"the file system of {resolved} reports {stats.f_blocks} blocks of "
            f"{stats.f_frsize} bytes",
        )
    total = stats.f_blocks * stats.f_frsize
    available = stats.f_bavail * stats.f_frsize
    if available > total:
        raise ResourceUnavailable(
            _KIND, f"the file system of {resolved} reports more available than total space"
        )
    return StorageResource(path=str(resolved), total_bytes=total, available_bytes=available)
