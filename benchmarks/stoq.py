"""STOQ transport benchmarks beside raw aioquic, qh3 and TCP+TLS, all in one run.

    python benchmarks/stoq.py [--mb N] [--repeats N] [--soak-seconds S] [--update BENCHMARKS.md]

Figures (every one measured by :mod:`stoq.benchmark`, whose docs give the method):

* bulk throughput on one connection and one stream, ``--mb`` MiB client to server, median of
  ``--repeats`` runs each with a fresh server process, at 1200-byte and path-MTU datagrams,
  for STOQ (each installed QUIC engine), raw aioquic, qh3 and TCP + TLS 1.3; each figure also as
  a ratio to raw aioquic at the same datagram size;
* handshake latency (median and 90th percentile of ``--handshakes`` sequential connections);
* 1, 10 and 100 concurrent streams on one connection sharing ``--streams-mb`` MiB;
* sequential connect + close cycles per second for ``--conn-seconds``;
* a soak of ``--soak-seconds`` (0 skips it): a STOQ server under garbage datagrams, forged and
  mutated QUIC Initials, oversized messages and continuous round trips, with its RSS.

``--update FILE`` replaces the text between ``<!-- stoq:begin -->`` and ``<!-- stoq:end -->`` in
FILE; ``--json FILE`` also writes every record as one JSON object per line. A figure that fails
is reported as failed in the section (and the script exits 1); the other figures still run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from benchlib import machine, update_section

# This script is named like the package it measures: with its own directory first on sys.path,
# "import stoq" would import this file. Drop that directory (benchlib is already imported).
_HERE = os.path.realpath(os.path.dirname(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or ".") != _HERE]

from stoq.benchmark import (  # noqa: E402
    IMPLS,
    BenchmarkFailed,
    concurrent_streams,
    connection_rate,
    handshake_latency,
    run_comparison,
    soak,
)
from stoq.engine import available_engines  # noqa: E402

PACKAGES = ("aioquic", "qh3", "cryptography", "pqcrypto")
RAW_PEERS = ("aioquic", "qh3", "tcp-tls")
#: Issue 4's targets for STOQ on one connection, loopback, 2 cores (Gbps).
TARGETS = {1200: 1.0, "pmtu": 5.0}


class Figures:
    """The records of one run, and the failures, per figure."""

    def __init__(self) -> None:
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.failures: dict[str, list[str]] = {}

    def collect(self, figure: str, what: str, produce: Callable[[], Iterable[Any]]) -> None:
        """Run ``produce`` and keep its records; a failure is kept (and printed), not raised."""
        kept = self.records.setdefault(figure, [])
        try:
            for record in produce():
                body = record.to_json()
                kept.append(body)
                print(json.dumps(body), flush=True)
        except (BenchmarkFailed, OSError) as exc:
            message = f"{what}: {exc}"
            self.failures.setdefault(figure, []).append(message)
            print(f"FAILED {message}", file=sys.stderr, flush=True)
            traceback.print_exc()

    def lines(self) -> Iterator[str]:
        for records in self.records.values():
            for body in records:
                yield json.dumps(body)

    def failed(self, figure: str) -> list[str]:
        return [f"**Failed:** {_cell(message)}" for message in self.failures.get(figure, [])]


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _name(body: dict[str, Any]) -> str:
    impl = body["impl"]
    label = {"stoq": "STOQ", "aioquic": "raw aioquic", "qh3": "raw qh3", "tcp-tls": "TCP + TLS 1.3"}
    name = label.get(impl, impl)
    if impl == "stoq" and "engine" in body:
        name += f" ({body['engine']} engine)"
    return name


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "—"
    return f"{value / base:.2f}"


def _number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def bulk_table(figures: Figures, mb: int, repeats: int) -> str:
    order = {impl: index for index, impl in enumerate(IMPLS)}
    records = sorted(
        figures.records.get("bulk", []),
        key=lambda r: (r["datagram"] != 1200, str(r["datagram"]), order.get(r["impl"], 99)),
    )
    base = {
        r["datagram"]: r.get("gbps")
        for r in records
        if r["impl"] == "aioquic" and r.get("gbps") is not None
    }
    lines = [
        f"### Bulk throughput: one connection, one stream, {mb} MiB client to server "
        f"(median of {repeats} runs)",
        "",
        "| implementation | datagram | max datagram bytes (largest seen) | Gbps | runs (Gbps) "
        "| vs raw aioquic, same datagram | notes |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for r in records:
        if r.get("skipped"):
            lines.append(
                f"| {_name(r)} | {r['datagram']} | — | — | — | — | skipped: {_cell(r['skipped'])} |"
            )
            continue
        configured = r.get("datagram_bytes")
        seen = r.get("largest_datagram")
        size = "—" if configured is None and seen is None else f"{configured or 'path'}"
        if seen is not None:
            size += f" ({seen})"
        notes = [r["note"]] if r.get("note") else []
        target = TARGETS.get(r["datagram"]) if r["impl"] == "stoq" else None
        if target is not None:
            verdict = "met" if r["gbps"] >= target else "missed"
            notes.append(f"issue target ≥ {target:g} Gbps: {verdict}")
        runs = ", ".join(f"{s:.3f}" for s in r["samples"])
        lines.append(
            f"| {_name(r)} | {r['datagram']} | {size} | {r['gbps']:.3f} | {runs} "
            f"| {_ratio(r['gbps'], base.get(r['datagram']))} | {_cell('; '.join(notes))} |"
        )
    return "\n".join([*lines, "", *figures.failed("bulk")]).rstrip()


def handshake_table(figures: Figures, count: int) -> str:
    records = figures.records.get("handshake", [])
    base = next((r.get("median_ms") for r in records if r["impl"] == "aioquic"), None)
    includes = {
        "stoq": "QUIC TLS 1.3 + hybrid PQ channel handshake, both TrustChain chains validated",
        "aioquic": "QUIC TLS 1.3 (no PQ channel), self-signed P-256 certificate not verified",
        "qh3": "QUIC TLS 1.3 (no PQ channel), self-signed P-256 certificate not verified",
        "tcp-tls": "TCP connect + TLS 1.3, self-signed P-256 certificate not verified",
    }
    lines = [
        f"### Handshake latency: time to a usable connection ({count} sequential connections "
        "after 3 warm-ups)",
        "",
        "| implementation | the handshake includes | median ms | p90 ms "
        "| vs raw aioquic (median) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in records:
        if r.get("skipped"):
            lines.append(f"| {_name(r)} | — | — | — | skipped: {_cell(r['skipped'])} |")
            continue
        lines.append(
            f"| {_name(r)} | {includes.get(r['impl'], '')} | {r['median_ms']:.2f} "
            f"| {r['p90_ms']:.2f} | {_ratio(r['median_ms'], base)} |"
        )
    lines += [
        "",
        "STOQ has no switch to run without the PQ channel (it is how the client is "
        "authenticated), so the figure without it is raw aioquic's, STOQ's default engine.",
    ]
    return "\n".join([*lines, "", *figures.failed("handshake")]).rstrip()


def streams_table(figures: Figures, mb: int, repeats: int) -> str:
    records = figures.records.get("streams", [])
    single = {(r["impl"], r.get("engine")): r.get("gbps") for r in records if r["streams"] == 1}
    lines = [
        f"### Concurrent streams: one connection, {mb} MiB split equally, path-MTU datagrams "
        f"(median of {repeats} runs)",
        "",
        "| implementation | streams | aggregate Gbps | runs (Gbps) | vs 1 stream |",
        "|---|---:|---:|---|---:|",
    ]
    for r in records:
        if r.get("skipped"):
            lines.append(f"| {_name(r)} | {r['streams']} | — | — | skipped: {r['skipped']} |")
            continue
        runs = ", ".join(f"{s:.3f}" for s in r["samples"])
        base = single.get((r["impl"], r.get("engine")))
        lines.append(
            f"| {_name(r)} | {r['streams']} | {r['gbps']:.3f} | {runs} "
            f"| {_ratio(r['gbps'], base)} |"
        )
    return "\n".join([*lines, "", *figures.failed("streams")]).rstrip()


def connections_table(figures: Figures, seconds: float) -> str:
    records = figures.records.get("connections", [])
    base = next((r.get("per_second") for r in records if r["impl"] == "aioquic"), None)
    lines = [
        f"### Connections per second: sequential connect + close for {seconds:g} s",
        "",
        "| implementation | connections/s | connections | vs raw aioquic |",
        "|---|---:|---:|---:|",
    ]
    for r in records:
        if r.get("skipped"):
            lines.append(f"| {_name(r)} | — | — | skipped: {r['skipped']} |")
            continue
        lines.append(
            f"| {_name(r)} | {r['per_second']:,.1f} | {r['connections']:,} "
            f"| {_ratio(r['per_second'], base)} |"
        )
    lines += [
        "",
        "A QUIC close sends CONNECTION_CLOSE and releases the socket without waiting out the "
        "closing period (STOQ's close; the raw peers are closed the same way).",
    ]
    return "\n".join([*lines, "", *figures.failed("connections")]).rstrip()


def soak_table(figures: Figures, seconds: float) -> str:
    if seconds <= 0:
        return "### Soak\n\nNot run (`--soak-seconds 0`)."
    records = figures.records.get("soak", [])
    lines = [
        f"### Soak: one STOQ server process for {seconds:g} s under hostile traffic",
        "",
        "Garbage datagrams (random bytes, forged Initials with random connection ids, mutated "
        "and replayed real QUIC Initials), a new connection every second sending a message twice "
        "the server's 1 MiB limit (which must be refused with ERROR_MESSAGE_TOO_LARGE), and "
        "back-to-back request/answer round trips on one long-lived connection, each on a new "
        "stream. RSS from `/proc/<pid>/status`.",
        "",
    ]
    for r in records:
        stats = r.get("server_stats", {})
        rows = [
            ("engine", r["engine"]),
            ("server RSS start / peak / end (MiB)", _rss(r)),
            ("round trips completed", f"{r['round_trips']:,}"),
            (
                "hostile datagrams sent (random / forged Initials / mutated Initials)",
                f"{r['random_datagrams']:,} / {r['forged_initials']:,} / {r['mutated_initials']:,}",
            ),
            ("oversized messages refused", f"{r['oversized_rejected']:,}"),
            (
                "new connections during the soak / failed",
                f"{r['new_connections']:,} / {r['connect_failures']:,}",
            ),
            (
                "server accepting new connections at the end",
                "yes" if r["accepting_at_end"] else "NO",
            ),
            ("server process alive at the end", "yes" if r["server_alive"] else "NO"),
            (
                "server counters at the end",
                ", ".join(f"{key} {value:,}" for key, value in stats.items()) or "—",
            ),
        ]
        if r.get("last_connect_error"):
            rows.append(("last connect failure", r["last_connect_error"]))
        lines += ["| | |", "|---|---|"]
        lines += [f"| {label} | {_cell(value)} |" for label, value in rows]
    return "\n".join([*lines, "", *figures.failed("soak")]).rstrip()


def _rss(r: dict[str, Any]) -> str:
    return " / ".join(
        f"{r[key] / 1024:.1f}" for key in ("rss_start_kib", "rss_peak_kib", "rss_end_kib")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64, help="MiB per bulk run")
    parser.add_argument("--repeats", type=int, default=5, help="bulk runs per figure (median)")
    parser.add_argument("--streams-mb", type=int, help="MiB per concurrent-streams run (--mb)")
    parser.add_argument("--streams-repeats", type=int, default=3, help="runs per streams figure")
    parser.add_argument("--handshakes", type=int, default=50, help="connections per latency")
    parser.add_argument("--conn-seconds", type=float, default=5.0, help="seconds per conn/s")
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="soak length; 0 skips")
    parser.add_argument("--engines", nargs="*", help="STOQ engines (default: every installed)")
    parser.add_argument("--update", type=Path, help="markdown file whose stoq section to replace")
    parser.add_argument("--json", type=Path, help="also write the records here, one per line")
    args = parser.parse_args()
    if args.update:
        # Fail now, not after the soak: update_section needs the section's markers.
        document = args.update.read_text(encoding="utf-8")
        if "<!-- stoq:begin -->" not in document or "<!-- stoq:end -->" not in document:
            parser.error(f"{args.update} has no <!-- stoq:begin/end --> markers")
    engines = tuple(args.engines) if args.engines else available_engines()
    streams_mb = args.streams_mb or args.mb

    figures = Figures()
    # One comparison per implementation (and STOQ engine), so one failing does not stop the
    # others; the table orders them by datagram size.
    for engine in engines:
        figures.collect(
            "bulk",
            f"STOQ bulk throughput ({engine})",
            lambda e=engine: run_comparison(
                mb=args.mb, repeats=args.repeats, impls=("stoq",), engines=(e,)
            ),
        )
    for impl in RAW_PEERS:
        figures.collect(
            "bulk",
            f"{impl} bulk throughput",
            lambda i=impl: run_comparison(mb=args.mb, repeats=args.repeats, impls=(i,)),
        )
    for engine in engines:
        figures.collect(
            "handshake",
            f"STOQ handshakes ({engine})",
            lambda e=engine: handshake_latency(count=args.handshakes, impls=("stoq",), engine=e),
        )
    figures.collect(
        "handshake",
        "raw handshakes",
        lambda: handshake_latency(count=args.handshakes, impls=RAW_PEERS),
    )
    for engine in engines:
        figures.collect(
            "streams",
            f"STOQ concurrent streams ({engine})",
            lambda e=engine: concurrent_streams(
                mb=streams_mb, repeats=args.streams_repeats, impls=("stoq",), engine=e
            ),
        )
    figures.collect(
        "streams",
        "raw concurrent streams",
        lambda: concurrent_streams(
            mb=streams_mb, repeats=args.streams_repeats, impls=("aioquic", "qh3")
        ),
    )
    for engine in engines:
        figures.collect(
            "connections",
            f"STOQ connections/s ({engine})",
            lambda e=engine: connection_rate(seconds=args.conn_seconds, impls=("stoq",), engine=e),
        )
    figures.collect(
        "connections",
        "raw connections/s",
        lambda: connection_rate(seconds=args.conn_seconds, impls=RAW_PEERS),
    )
    if args.soak_seconds > 0:
        figures.collect("soak", "soak", lambda: [soak(args.soak_seconds)])
        for report in figures.records.get("soak", []):
            if not (report["accepting_at_end"] and report["server_alive"]):
                figures.failures.setdefault("soak", []).append(
                    "the server stopped taking new connections under the soak's traffic "
                    f"({report['connect_failures']} of {report['new_connections']} failed)"
                )

    command = (
        f"python benchmarks/stoq.py --mb {args.mb} --repeats {args.repeats} "
        f"--streams-mb {streams_mb} --streams-repeats {args.streams_repeats} "
        f"--handshakes {args.handshakes} --conn-seconds {args.conn_seconds:g} "
        f"--soak-seconds {args.soak_seconds:g}"
        + (f" --engines {' '.join(engines)}" if args.engines else "")
        + " --update BENCHMARKS.md"
    )
    header = (
        "## STOQ (`benchmarks/stoq.py`)\n\n"
        f"Command: `python3 -m nox -s bench` (runs `{command}`). "
        f"Measured {datetime.date.today().isoformat()} on: {machine(PACKAGES)}.\n"
        "Loopback (127.0.0.1). Every server runs in a fresh process of its own and the client "
        "in the benchmark's process. A bulk run is timed from the first byte written until the "
        "server has confirmed receiving exactly the bytes sent; Gbps = bits / seconds / 10^9. "
        "The raw peers run with their default settings except the datagram size; STOQ protects "
        "every message with its post-quantum channel (hybrid X25519 + ML-KEM-1024 keys, "
        "AES-256-GCM records) on top of QUIC's TLS."
    )
    sections = [
        header,
        bulk_table(figures, args.mb, args.repeats),
        handshake_table(figures, args.handshakes),
        streams_table(figures, streams_mb, args.streams_repeats),
        connections_table(figures, args.conn_seconds),
        soak_table(figures, args.soak_seconds),
        "<details><summary>Every record of this run (JSON lines, as "
        "<code>stoq bench --json</code> prints the bulk ones)</summary>\n\n```\n"
        + "\n".join(figures.lines())
        + "\n```\n\n</details>",
    ]
    text = "\n\n".join(sections)
    if args.json:
        args.json.write_text("".join(f"{line}\n" for line in figures.lines()), encoding="utf-8")
    if args.update:
        update_section(args.update, "stoq", text)
    else:
        print(text)
    if figures.failures:
        failed = [message for messages in figures.failures.values() for message in messages]
        print(f"{len(failed)} measurement(s) failed:", *failed, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
