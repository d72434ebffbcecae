"""This machine's main memory as a resource: how much there is, and how much is available.

Figures, both from ``<proc_root>/meminfo``:

* ``total_bytes``: ``MemTotal``, the usable RAM;
* ``available_bytes``: ``MemAvailable``, the kernel's estimate of what new work can use
  without swapping (Linux 3.14 and later). The asset offers this much:
  ``memory_bytes = available_bytes``.

``meminfo`` lines are ``Key: <decimal> kB`` (kB meaning KiB, 1024 bytes). Parsing is lenient
about everything else in the file (other keys, blank or odd lines, non-UTF-8 bytes) and
strict about the two figures it needs: each must appear exactly once, as a decimal number
with the unit ``kB``, with ``0 < MemAvailable <= MemTotal``; otherwise detection fails with
:class:`~.resources.ResourceUnavailable` saying what is wrong.

Descriptor (see :mod:`.resources`): ``{"available_bytes", "format", "kind": "memory",
"total_bytes"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hypermesh.adapters.resources import ResourceUnavailable, canonical_json, format_bytes
from hypermesh_interfaces.v1 import common_pb2

__all__ = ["MemoryResource", "detect", "parse_meminfo"]

_KIND: Final = "memory"
_KIB: Final = 1024
_NEEDED: Final = ("MemTotal", "MemAvailable")
#: Larger figures are refused as nonsense (ResourceSpec fields are 64-bit).
_MAX_KIB: Final = (1 << 64) // _KIB - 1


@dataclass(frozen=True)
class MemoryResource:
    """The memory figures of this machine (see the module docs)."""

    total_bytes: int
    available_bytes: int

    def __post_init__(self) -> None:
        if not 0 < self.available_bytes <= self.total_bytes:
            raise ValueError("memory figures need 0 < available_bytes <= total_bytes")

    @property
    def kind(self) -> str:
        return _KIND

    def resource_spec(self) -> common_pb2.ResourceSpec:
        """The available memory."""
        return common_pb2.ResourceSpec(memory_bytes=self.available_bytes)

    def descriptor(self) -> bytes:
        return canonical_json(
            _KIND, {"available_bytes": self.available_bytes, "total_bytes": self.total_bytes}
        )

    def summary(self) -> str:
        return f"{format_bytes(self.available_bytes)} available of {format_bytes(self.total_bytes)}"


def parse_meminfo(text: str) -> MemoryResource:
    """The figures of ``text`` (the contents of ``/proc/meminfo``); :class:`ResourceUnavailable`
    if either is missing, repeated or malformed (see the module docs)."""
    seen: dict[str, list[str]] = {key: [] for key in _NEEDED}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip() in seen:
            seen[key.strip()].append(value.strip())
    figures: dict[str, int] = {}
    for key, values in seen.items():
        if not values:
            raise ResourceUnavailable(_KIND, f"meminfo has no {key} line")
        if len(values) > 1:
            raise ResourceUnavailable(_KIND, f"meminfo has {len(values)} {key} lines")
        figures[key] = _kib(key, values[0]) * _KIB
    total, available = figures["MemTotal"], figures["MemAvailable"]
    if total == 0 or available == 0:
        raise ResourceUnavailable(
            _KIND, f"meminfo states MemTotal {total}, MemAvailable {available}"
        )
    if available > total:
        raise ResourceUnavailable(
            _KIND, f"meminfo states more available ({available} B) than total ({total} B)"
        )
    return MemoryResource(total_bytes=total, available_bytes=available)


def _kib(key: str, value: str) -> int:
    number, _, unit = value.partition(" ")
    unit = unit.strip()
    if unit != "kB" or not number.isascii() or not number.isdigit():
        raise ResourceUnavailable(_KIND, f"meminfo's {key} is {value!r}, not '<number> kB'")
    kib = int(number)
    if kib > _MAX_KIB:
        raise ResourceUnavailable(_KIND, f"meminfo's {key} of {kib} kB is beyond 64 bits")
    return kib


def detect(*, proc_root: Path = Path("/proc")) -> MemoryResource:
    """Detect this machine's memory from ``<proc_root>/meminfo``; :class:`ResourceUnavailable`
    if the file cannot be read or lacks a figure."""
    path = proc_root / "meminfo"
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise ResourceUnavailable(_KIND, f"cannot read {path}: {exc.strerror}") from exc
    return parse_meminfo(text)
