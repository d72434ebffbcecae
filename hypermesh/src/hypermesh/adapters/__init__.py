"""Resource adapters: this machine's CPU, memory and storage, detected for real.

Each module's ``detect`` returns a frozen value (:class:`~.cpu.CpuResource`,
:class:`~.memory.MemoryResource`, :class:`~.storage.StorageResource`) that gives the
``ResourceSpec`` an asset offers and the descriptor bytes its custody proof covers (see
:mod:`.resources`). What cannot be read raises :class:`~.resources.ResourceUnavailable`.
"""

from __future__ import annotations

from pathlib import Path

from hypermesh.adapters import cpu, memory, storage
from hypermesh.adapters.resources import Resource, ResourceUnavailable

__all__ = ["Resource", "ResourceUnavailable", "cpu", "detect_all", "memory", "storage"]


def detect_all(data_dir: Path | str) -> tuple[Resource, ...]:
    """This machine's CPU, memory, and the storage holding ``data_dir``, in that order."""
    return (cpu.detect(), memory.detect(), storage.detect(data_dir))
