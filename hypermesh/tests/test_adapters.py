"""hypermesh.adapters: CPU, memory and storage detected from this machine, never invented.

Sample ``/proc`` files are fed through ``proc_root``; the real machine is detected too and
compared with what the operating system reports directly.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypermesh.adapters import cpu, detect_all, memory, storage
from hypermesh.adapters.resources import (
    DESCRIPTOR_FORMAT,
    ResourceUnavailable,
    canonical_json,
    format_bytes,
)
from hypermesh_interfaces.v1 import common_pb2

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu vme de pse

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
"""

AARCH64_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
"""

OLD_ARM_CPUINFO = """Processor\t: ARMv7 Processor rev 4 (v7l)
processor\t: 0
BogoMIPS\t: 38.40
Hardware\t: BCM2835
"""

POWER_CPUINFO = """processor\t: 0
cpu\t\t: POWER9 (architected), altivec supported
clock\t\t: 2200.000000MHz
"""

MEMINFO = """MemTotal:       16314112 kB
MemFree:         1234567 kB
MemAvailable:   12000000 kB
Buffers:          100000 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


def write_proc(root: Path, name: str, text: str | bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return root


# --- CPU -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "model"),
    [
        (X86_CPUINFO, "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"),
        (AARCH64_CPUINFO, None),
        (OLD_ARM_CPUINFO, "ARMv7 Processor rev 4 (v7l)"),
        (POWER_CPUINFO, "POWER9 (architected), altivec supported"),
        ("", None),
        ("model name\t:\nmodel name: second one\n", "second one"),
        ("garbage without colons\n\x00\x01\nmodel name : X\n", "X"),
        # model name wins over Processor wherever it appears
        ("Processor : ARMv7\nmodel name : Cortex\n", "Cortex"),
    ],
)
def test_the_model_comes_from_cpuinfo(text: str, model: str | None) -> None:
    assert cpu.parse_model(text) == model


def test_a_very_long_model_is_cut() -> None:
    assert cpu.parse_model("model name : " + "x" * 1000) == "x" * cpu.MAX_MODEL


def test_cpu_detection_from_sample_files(tmp_path: Path) -> None:
    root = write_proc(tmp_path, "cpuinfo", X86_CPUINFO)
    detected = cpu.detect(proc_root=root, cpu_count=6)
    assert detected == cpu.CpuResource(
        logical_cpus=6,
        model="Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz",
        architecture=platform.machine() or None,
    )
    assert detected.resource_spec() == common_pb2.ResourceSpec(cpu_millicores=6000)
    assert detected.kind == "cpu"
    assert json.loads(detected.descriptor()) == {
        "architecture": detected.architecture,
        "format": DESCRIPTOR_FORMAT,
        "kind": "cpu",
        "logical_cpus": 6,
        "model": "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz",
    }
    assert detected.summary().startswith("6 logical CPUs, Intel(R) Xeon(R) Gold 6148")


def test_a_cpu_without_a_stated_model_says_so(tmp_path: Path) -> None:
    root = write_proc(tmp_path, "cpuinfo", AARCH64_CPUINFO)
    detected = cpu.detect(proc_root=root, cpu_count=1)
    assert detected.model is None
    assert json.loads(detected.descriptor())["model"] is None
    assert "1 logical CPU, model not stated by the kernel" in detected.summary()


def test_cpu_detection_fails_without_cpuinfo(tmp_path: Path) -> None:
    with pytest.raises(ResourceUnavailable, match=r"cpu: cannot read .*cpuinfo") as caught:
        cpu.detect(proc_root=tmp_path)
    assert caught.value.kind == "cpu"


def test_cpu_detection_fails_when_the_count_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_proc(tmp_path, "cpuinfo", X86_CPUINFO)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    with pytest.raises(ResourceUnavailable, match="does not say how many CPUs it has"):
        cpu.detect(proc_root=root)
    with pytest.raises(ResourceUnavailable, match="the CPU count 0 is not positive"):
        cpu.detect(proc_root=root, cpu_count=0)


def test_this_machines_cpu() -> None:
    detected = cpu.detect()
    assert detected.logical_cpus == os.cpu_count()
    assert detected.resource_spec().cpu_millicores == 1000 * detected.logical_cpus
    assert detected.model == cpu.parse_model(Path("/proc/cpuinfo").read_text(errors="replace"))


# --- memory --------------------------------------------------------------------------------------


def test_memory_detection_from_a_sample_file(tmp_path: Path) -> None:
    detected = memory.detect(proc_root=write_proc(tmp_path, "meminfo", MEMINFO))
    assert detected == memory.MemoryResource(
        total_bytes=16314112 * 1024, available_bytes=12000000 * 1024
    )
    assert detected.resource_spec() == common_pb2.ResourceSpec(memory_bytes=12000000 * 1024)
    assert json.loads(detected.descriptor()) == {
        "available_bytes": 12000000 * 1024,
        "format": DESCRIPTOR_FORMAT,
        "kind": "memory",
        "total_bytes": 16314112 * 1024,
    }
    assert detected.summary() == "11.4 GiB available of 15.6 GiB"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("MemTotal: 100 kB\n", "meminfo has no MemAvailable line"),
        ("MemAvailable: 100 kB\n", "meminfo has no MemTotal line"),
        ("MemTotal: 100 kB\nMemTotal: 100 kB\nMemAvailable: 1 kB\n", "has 2 MemTotal lines"),
        ("MemTotal: 100\nMemAvailable: 1 kB\n", "MemTotal is '100', not '<number> kB'"),
        ("MemTotal: 100 MB\nMemAvailable: 1 kB\n", "MemTotal is '100 MB', not '<number> kB'"),
        ("MemTotal: -5 kB\nMemAvailable: 1 kB\n", "MemTotal is '-5 kB', not '<number> kB'"),
        ("MemTotal: ١٢ kB\nMemAvailable: 1 kB\n", "MemTotal is '١٢ kB', not '<number> kB'"),
        ("MemTotal: 100 kB\nMemAvailable: 200 kB\n", "more available .* than total"),
        ("MemTotal: 0 kB\nMemAvailable: 0 kB\n", "states MemTotal 0, MemAvailable 0"),
        (f"MemTotal: {1 << 60} kB\nMemAvailable: 1 kB\n", "is beyond 64 bits"),
    ],
)
def test_malformed_meminfo_is_refused(tmp_path: Path, text: str, reason: str) -> None:
    root = write_proc(tmp_path, "meminfo", text)
    with pytest.raises(ResourceUnavailable, match=reason) as caught:
        memory.detect(proc_root=root)
    assert caught.value.kind == "memory"


def test_memory_detection_fails_without_meminfo(tmp_path: Path) -> None:
    with pytest.raises(ResourceUnavailable, match=r"memory: cannot read .*meminfo"):
        memory.detect(proc_root=tmp_path)


_JUNK_LINE = st.text(
    alphabet=st.characters(
        blacklist_categories=["Cs"], blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    ),
    max_size=40,
).filter(lambda line: line.partition(":")[0].strip() not in ("MemTotal", "MemAvailable"))


@settings(max_examples=200, deadline=None)
@given(
    total_kib=st.integers(min_value=1, max_value=(1 << 50)),
    available_share=st.floats(min_value=0.0, max_value=1.0),
    junk=st.lists(_JUNK_LINE, max_size=12),
    positions=st.tuples(st.integers(0, 12), st.integers(0, 12)),
    spaces=st.integers(0, 10),
)
def test_the_two_figures_are_found_among_any_other_lines(
    total_kib: int,
    available_share: float,
    junk: list[str],
    positions: tuple[int, int],
    spaces: int,
) -> None:
    available_kib = max(1, int(total_kib * available_share))
    lines = list(junk)
    lines.insert(min(positions[0], len(lines)), f"MemTotal:{' ' * spaces}{total_kib} kB")
    lines.insert(min(positions[1], len(lines)), f"MemAvailable:{' ' * spaces}{available_kib} kB")
    parsed = memory.parse_meminfo("\n".join(lines))
    assert parsed.total_bytes == total_kib * 1024
    assert parsed.available_bytes == available_kib * 1024


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_never_break_detection(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    """Whatever the files hold, detection answers or raises ResourceUnavailable."""
    root = tmp_path_factory.mktemp("proc")
    (root / "meminfo").write_bytes(data)
    (root / "cpuinfo").write_bytes(data)
    outcome: memory.MemoryResource | ResourceUnavailable
    try:
        outcome = memory.detect(proc_root=root)
    except ResourceUnavailable as error:
        outcome = error
    if isinstance(outcome, ResourceUnavailable):
        assert outcome.kind == "memory"
    else:
        assert 0 < outcome.available_bytes <= outcome.total_bytes
    detected = cpu.detect(proc_root=root, cpu_count=2)
    assert detected.logical_cpus == 2
    json.loads(detected.descriptor())


def test_this_machines_memory() -> None:
    detected = memory.detect()
    figures = memory.parse_meminfo(Path("/proc/meminfo").read_text())
    assert detected.total_bytes == figures.total_bytes  # MemTotal does not change
    assert 0 < detected.available_bytes <= detected.total_bytes


# --- storage -------------------------------------------------------------------------------------


def test_storage_detection_matches_statvfs(tmp_path: Path) -> None:
    detected = storage.detect(tmp_path)
    stats = os.statvfs(tmp_path)
    assert detected.path == str(tmp_path.resolve())
    assert detected.total_bytes == stats.f_blocks * stats.f_frsize
    # Free space moves as other processes write; the size of the file system does not.
    assert 0 <= detected.available_bytes <= detected.total_bytes
    assert detected.resource_spec() == common_pb2.ResourceSpec(
        storage_bytes=detected.available_bytes
    )
    assert json.loads(detected.descriptor()) == {
        "available_bytes": detected.available_bytes,
        "format": DESCRIPTOR_FORMAT,
        "kind": "storage",
        "path": str(tmp_path.resolve()),
        "total_bytes": detected.total_bytes,
    }
    assert detected.summary().endswith(f" at {tmp_path.resolve()}")


def test_storage_detection_resolves_links(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert storage.detect(tmp_path / "link").path == str((tmp_path / "real").resolve())


def test_storage_detection_fails_for_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ResourceUnavailable, match=r"storage: cannot examine .*absent") as caught:
        storage.detect(tmp_path / "absent")
    assert caught.value.kind == "storage"


# --- descriptors and the rest --------------------------------------------------------------------


def test_descriptors_are_canonical() -> None:
    encoded = canonical_json("cpu", {"b": 1, "a": "é", "c": None})
    assert encoded == (
        b'{"a":"\\u00e9","b":1,"c":null,"format":"hypermesh/resource/v1","kind":"cpu"}'
    )
    with pytest.raises(ValueError, match="descriptors hold no floats"):
        canonical_json("cpu", {"a": 1.5})
    with pytest.raises(ValueError, match="format and kind are set by the descriptor itself"):
        canonical_json("cpu", {"kind": "memory"})


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536 * 1024 * 1024, "1.5 GiB"),
        (5 * (1 << 50), "5.0 PiB"),
    ],
)
def test_byte_counts_for_people(count: int, text: str) -> None:
    assert format_bytes(count) == text


def test_values_refuse_impossible_figures() -> None:
    with pytest.raises(ValueError, match="logical_cpus must be a positive integer"):
        cpu.CpuResource(logical_cpus=0, model=None, architecture=None)
    with pytest.raises(ValueError, match="0 < available_bytes <= total_bytes"):
        memory.MemoryResource(total_bytes=1, available_bytes=2)
    with pytest.raises(ValueError, match="0 <= available_bytes <= total_bytes, total > 0"):
        storage.StorageResource(path="/", total_bytes=0, available_bytes=0)


def test_detect_all_gives_cpu_memory_and_storage(tmp_path: Path) -> None:
    kinds = [resource.kind for resource in detect_all(tmp_path)]
    assert kinds == ["cpu", "memory", "storage"]
