"""This machine's CPU as a resource: how many logical CPUs it has, and what they are.

Figures and where they come from:

* ``logical_cpus``: :func:`os.cpu_count` (the logical CPUs of the machine); the asset offers
  all of them, ``cpu_millicores = logical_cpus * 1000``. If Python cannot tell, detection
  fails with :class:`~.resources.ResourceUnavailable`.
* ``model``: from ``<proc_root>/cpuinfo``, the first non-empty value of the first of these
  keys the file has: ``model name`` (x86, most ARM), ``cpu model`` (MIPS), ``cpu``
  (POWER), ``Processor`` (older ARM), ``uarch`` (RISC-V). Some kernels state no model
  (aarch64 often lists only implementer and part numbers): then ``model`` is None, said as
  such, not made up. An unreadable ``cpuinfo`` fails detection.
* ``architecture``: :func:`platform.machine` (``x86_64``, ``aarch64``...), None if unknown.

``cpuinfo`` is parsed leniently: lines are ``key : value`` split at the first colon, keys
and values stripped; lines without a colon, and bytes that are not UTF-8 (replaced), do not
stop the parse. A model longer than :data:`MAX_MODEL` characters is cut there.

Descriptor (see :mod:`.resources`): ``{"architecture", "format", "kind": "cpu",
"logical_cpus", "model"}``.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hypermesh.adapters.resources import ResourceUnavailable, canonical_json
from hypermesh_interfaces.v1 import common_pb2

__all__ = ["MAX_MODEL", "MODEL_KEYS", "CpuResource", "detect", "parse_model"]

#: cpuinfo keys that state the CPU model, in order of preference.
MODEL_KEYS: Final = ("model name", "cpu model", "cpu", "Processor", "uarch")
#: The longest model string kept.
MAX_MODEL: Final = 200
_KIND: Final = "cpu"


@dataclass(frozen=True)
class CpuResource:
    """The CPU figures of this machine (see the module docs)."""

    logical_cpus: int
    model: str | None
    architecture: str | None

    def __post_init__(self) -> None:
        if type(self.logical_cpus) is not int or self.logical_cpus < 1:
            raise ValueError(f"logical_cpus must be a positive integer, got {self.logical_cpus!r}")

    @property
    def kind(self) -> str:
        return _KIND

    def resource_spec(self) -> common_pb2.ResourceSpec:
        """All logical CPUs, in millicores."""
        return common_pb2.ResourceSpec(cpu_millicores=self.logical_cpus * 1000)

    def descriptor(self) -> bytes:
        return canonical_json(
            _KIND,
            {
                "architecture": self.architecture,
                "logical_cpus": self.logical_cpus,
                "model": self.model,
            },
        )

    def summary(self) -> str:
        model = self.model if self.model is not None else "model not stated by the kernel"
        arch = self.architecture if self.architecture is not None else "unknown architecture"
        plural = "" if self.logical_cpus == 1 else "s"
        return f"{self.logical_cpus} logical CPU{plural}, {model} ({arch})"


def parse_model(cpuinfo: str) -> str | None:
    """The CPU model ``cpuinfo`` (the text of ``/proc/cpuinfo``) states, or None."""
    found: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, colon, value = line.partition(":")
        if not colon:
            continue
        key, value = key.strip(), value.strip()
        if key in MODEL_KEYS and value and key not in found:
            found[key] = value
    for key in MODEL_KEYS:
        if key in found:
            return found[key][:MAX_MODEL]
    return None


def detect(*, proc_root: Path = Path("/proc"), cpu_count: int | None = None) -> CpuResource:
    """Detect this machine's CPU (``proc_root``: where ``cpuinfo`` is read; ``cpu_count``:
    the logical CPU count, default :func:`os.cpu_count`). :class:`ResourceUnavailable` if
    ``cpuinfo`` cannot be read or the CPU count is unknown."""
    path = proc_root / "cpuinfo"
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise ResourceUnavailable(_KIND, f"cannot read {path}: {exc.strerror}") from exc
    count = os.cpu_count() if cpu_count is None else cpu_count
    if count is None:
        raise ResourceUnavailable(_KIND, "the operating system does not say how many CPUs it has")
    if count < 1:
        raise ResourceUnavailable(_KIND, f"the CPU count {count} is not positive")
    return CpuResource(
        logical_cpus=count, model=parse_model(text), architecture=platform.machine() or None
    )
