"""What every benchmark script shares: timing, the machine line, and BENCHMARKS.md sections.

Each script owns one section of BENCHMARKS.md, delimited by ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->``; :func:`update_section` replaces what lies between them.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar


def rate(fn: Callable[[], object], seconds: float, repeats: int) -> float:
    """Median operations per second of ``fn`` over ``repeats`` runs of >= ``seconds`` each."""
    fn()  # warm up
    rates = []
    for _ in range(repeats):
        count = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            fn()
            count += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        rates.append(count / (now - start))
    return statistics.median(rates)


def machine(packages: Iterable[str] = ()) -> str:
    """One line naming the CPU, OS, Python, SQLite and the versions of ``packages``."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = "".join(
        f", {name} {importlib.metadata.version(name)}" for name in packages if _installed(name)
    )
    return (
        f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}{versions}, "
        f"host {socket.gethostname()}"
    )


def update_section(path: Path, name: str, text: str) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path``."""
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(\n?<!-- {name}:end -->)", re.S)
    document = path.read_text(encoding="utf-8")
    if not pattern.search(document):
        raise SystemExit(f"{path} has no <!-- {name}:begin/end --> markers")
    path.write_text(
        pattern.sub(
            lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(2).lstrip("\n"), document
        ),
        encoding="utf-8",
    )
    print(f"updated the {name} section of {path}")


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


#: Milliseconds per second.
MS = 1000.0


@dataclass(frozen=True)
class Stats:
    """p50, p99 (nearest rank), smallest and largest of ``n`` samples, in milliseconds."""

    p50: float
    p99: float
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ordered = sorted(seconds)
        rank = max(1, math.ceil(0.99 * len(ordered)))
        return cls(
            statistics.median(ordered) * MS,
            ordered[rank - 1] * MS,
            len(ordered),
            ordered[0] * MS,
            ordered[-1] * MS,
        )


def measure(
    fn: Callable[[int], object], n: int, before: Callable[[], object] | None = None
) -> Stats:
    """Time ``fn(i)`` for ``i`` in ``0..n-1``; ``before`` runs untimed ahead of each call."""
    samples = []
    for i in range(n):
        if before is not None:
            before()
        start = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - start)
    return Stats.of(samples)


def ms(value: float) -> str:
    """Milliseconds with three significant digits at least (sub-microsecond values too)."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def stop_process(process: subprocess.Popen[Any], what: str) -> None:
    """SIGTERM ``process`` (a server the benchmark started); it must exit within 10 s, else it
    is killed and :class:`RuntimeError` says so."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError(f"{what} did not exit within 10 s of SIGTERM") from None


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of every core since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    hertz = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / hertz, sum(fields) / hertz


T = TypeVar("T")


def median_by(items: Sequence[T], key: Callable[[T], float]) -> T:
    """The median item by ``key`` (the lower one of an even count): a whole trial, not a mix."""
    ordered = sorted(items, key=key)
    return ordered[(len(ordered) - 1) // 2]
