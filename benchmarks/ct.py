"""TrustChain transparency log benchmarks: appends/s and proof generation at 10^6 entries.

    python benchmarks/ct.py [--entries N] [--update BENCHMARKS.md]

Builds a log of ``--entries`` 128-byte entries in a temporary SQLite file (WAL,
``synchronous=FULL``), then measures, in the same run, each next to a peer:

* appends: bulk loading (``TransparencyLog.extend``, no SCTs) beside raw ``sqlite3``
  ``executemany`` of the same entry rows into the same table without any tree bookkeeping;
  single-entry transactions beside a raw single-row insert transaction; and appends that issue
  hybrid (Ed25519 + Falcon-1024) SCTs, whose cost is the signature;
* proofs at the full size: inclusion proofs, consistency proofs and roots generated from the
  stored subtree hashes, beside the *naive peer*: RFC 9162 section 2.1 transcribed directly
  (recursive MTH / PATH / SUBPROOF) over the same entries held in memory as a Python list, with
  nothing cached -- every call hashes every leaf under it, i.e. all 10^6 for a proof.

``--update FILE`` replaces the text between ``<!-- ct:begin -->`` and ``<!-- ct:end -->`` in
FILE with the tables.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from benchlib import machine, update_section

from trustchain.crypto.signatures import SigningKey
from trustchain.ct.log import TransparencyLog
from trustchain.ct.merkle import verify_consistency, verify_inclusion

ENTRY_SIZE = 128


def entry(i: int) -> bytes:
    """Entry ``i``: 128 bytes, distinct for every ``i``."""
    return hashlib.sha512(b"entry %d" % i).digest() * (ENTRY_SIZE // 64)


# --- the naive peer ---------------------------------------------------------------------------


class NaiveTree:
    """RFC 9162 section 2.1 as written: recursive, in memory, nothing cached."""

    def __init__(self, entries: list[bytes]) -> None:
        self.entries = entries

    @staticmethod
    def _split(n: int) -> int:
        k = 1
        while k * 2 < n:
            k *= 2
        return k

    def mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return hashlib.sha256(b"").digest()
        if n == 1:
            return hashlib.sha256(b"\x00" + self.entries[lo]).digest()
        k = self._split(n)
        return hashlib.sha256(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi)).digest()

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = self._split(n)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def subproof(self, m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if complete else [self.mth(lo, hi)]
        k = self._split(n)
        if m <= k:
            return [*self.subproof(m, lo, lo + k, complete), self.mth(lo + k, hi)]
        return [*self.subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return self.path(index, 0, size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        return self.subproof(size1, 0, size2, True)


# --- measuring --------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fns: list[Callable[[], object]]) -> float:
    return statistics.median(timed(fn) for fn in fns)


class Table:
    def __init__(self, title: str, unit: str, peer: str, ratio: str) -> None:
        self.title, self.unit, self.peer, self.ratio = title, unit, peer, ratio
        self.rows: list[tuple[str, float, float | None, str]] = []

    def add(self, name: str, ours: float, peer: float | None, peer_name: str = "") -> None:
        self.rows.append((name, ours, peer, peer_name))
        peer_text = f"{peer:,.3f}" if peer is not None else "-"
        print(f"  {name:<64} ours {ours:>14,.3f}  peer {peer_text:>14}", flush=True)

    def _number(self, value: float) -> str:
        if self.unit == "ms":
            return f"{value:,.3f}"
        return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"

    def markdown(self) -> str:
        lines = [
            f"### {self.title}",
            "",
            f"| operation | ours ({self.unit}) | peer | peer ({self.unit}) | {self.ratio} |",
            "|---|---:|---|---:|---:|",
        ]
        for name, ours, peer, peer_name in self.rows:
            if peer is None:
                lines.append(f"| {name} | {self._number(ours)} | - | - | - |")
                continue
            ratio = ours / peer if self.ratio.startswith("ours") else peer / ours
            lines.append(
                f"| {name} | {self._number(ours)} | {peer_name} | {self._number(peer)} "
                f"| {ratio:,.2f} |"
            )
        return "\n".join(lines)


def bench_appends(
    log: TransparencyLog, work: Path, entries: int, batch: int, singles: int, sct_batch: int
) -> Table:
    table = Table("Appends", "entries/s", "peer", "ours / peer")
    print(f"bulk loading {entries:,} entries in batches of {batch:,}", flush=True)
    spent = 0.0
    for start in range(0, entries, batch):
        items = [entry(i) for i in range(start, min(entries, start + batch))]
        spent += timed(partial(log.extend, items))
    size_mib = sum(p.stat().st_size for p in work.glob("log.db*")) / 2**20

    peer_path = work / "peer.db"
    conn = sqlite3.connect(peer_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE entries (idx INTEGER PRIMARY KEY, timestamp_ms INTEGER NOT NULL,"
        " leaf_hash BLOB NOT NULL, data BLOB NOT NULL)"
    )
    conn.execute("CREATE INDEX entries_by_leaf_hash ON entries (leaf_hash)")

    def peer_insert(rows: list[bytes], first: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        now = time.time_ns() // 1_000_000
        conn.executemany(
            "INSERT INTO entries VALUES (?, ?, ?, ?)",
            [(first + i, now, hashlib.sha256(b"\x00" + d).digest(), d) for i, d in enumerate(rows)],
        )
        conn.execute("COMMIT")

    peer_spent = 0.0
    for start in range(0, entries, batch):
        items = [entry(i) for i in range(start, min(entries, start + batch))]
        peer_spent += timed(partial(peer_insert, items, start))
    table.add(
        f"bulk load to {entries:,} entries (`extend`, batches of {batch:,}, no SCTs)",
        entries / spent,
        entries / peer_spent,
        "raw sqlite3 executemany of the same entry rows, no tree nodes",
    )

    extra = [entry(entries + i) for i in range(singles)]

    def ours_singles() -> None:
        for item in extra:
            log.extend([item])

    def peer_singles() -> None:
        for i, item in enumerate(extra):
            peer_insert([item], entries + i)

    one = timed(ours_singles)
    peer_one = timed(peer_singles)
    conn.close()
    table.add(
        "one entry per transaction (`extend([x])`, no SCT)",
        singles / one,
        singles / peer_one,
        "raw sqlite3 one-row insert transaction",
    )

    base = entries + singles
    with_sct = timed(lambda: [log.append(entry(base + i)) for i in range(singles)])
    table.add(
        f"`append` (one transaction and one hybrid SCT each; {singles} appends)",
        singles / with_sct,
        None,
    )
    base += singles
    items = [entry(base + i) for i in range(sct_batch * 4)]
    many = timed(
        lambda: [log.append_many(items[i : i + sct_batch]) for i in range(0, len(items), sct_batch)]
    )
    table.add(
        f"`append_many` with SCTs (batches of {sct_batch}, signed on "
        f"{min(8, os.cpu_count() or 1)} threads)",
        len(items) / many,
        None,
    )
    print(f"  log file: {size_mib:,.0f} MiB at {entries:,} entries", flush=True)
    return table


def bench_proofs(
    log: TransparencyLog, naive: NaiveTree, size: int, samples: int, naive_samples: int
) -> Table:
    table = Table(f"Proofs at {size:,} entries", "ms", "naive peer", "speed-up (peer / ours)")
    rng = random.Random(20261124)
    root = log.root(size)
    indices = [rng.randrange(size) for _ in range(samples)]
    sizes = [rng.randrange(1, size) for _ in range(samples)]

    ours_inclusion = median_seconds([partial(log.inclusion_proof, i, size) for i in indices])
    ours_consistency = median_seconds([partial(log.consistency_proof, s, size) for s in sizes])
    ours_root = median_seconds([partial(log.root, s) for s in sizes])
    leaf = log.entry(indices[0]).leaf_hash
    proof = log.inclusion_proof(indices[0], size)
    verify = median_seconds(
        [lambda: verify_inclusion(leaf, indices[0], size, proof, root)] * samples
    )

    print(f"naive peer: {naive_samples} proofs of each kind over {size:,} entries", flush=True)
    naive_inclusion, naive_consistency, naive_root = [], [], []
    for i, s in zip(indices[:naive_samples], sizes[:naive_samples], strict=True):
        start = time.perf_counter()
        expected = naive.inclusion_proof(i, size)
        naive_inclusion.append(time.perf_counter() - start)
        if expected != log.inclusion_proof(i, size):
            raise SystemExit(f"inclusion proof mismatch at {i}")
        start = time.perf_counter()
        expected = naive.consistency_proof(s, size)
        naive_consistency.append(time.perf_counter() - start)
        if expected != log.consistency_proof(s, size):
            raise SystemExit(f"consistency proof mismatch at {s}")
        verify_consistency(s, size, expected, log.root(s), root)
        start = time.perf_counter()
        if naive.mth(0, s) != log.root(s):
            raise SystemExit(f"root mismatch at {s}")
        naive_root.append(time.perf_counter() - start)

    ms = 1000.0
    table.add(
        "inclusion proof, random leaf, full tree",
        ours_inclusion * ms,
        statistics.median(naive_inclusion) * ms,
        "recursive RFC 9162 PATH over the in-memory entries",
    )
    table.add(
        "consistency proof, random first size to the full tree",
        ours_consistency * ms,
        statistics.median(naive_consistency) * ms,
        "recursive RFC 9162 PROOF over the in-memory entries",
    )
    table.add(
        "root at a random size",
        ours_root * ms,
        statistics.median(naive_root) * ms,
        "recursive RFC 9162 MTH over the in-memory entries",
    )
    table.add(
        f"verify an inclusion proof ({len(proof)} hashes; same code for both)",
        verify * ms,
        None,
    )
    sth = median_seconds([log.signed_tree_head] * 20)
    table.add("signed tree head (root + hybrid signature)", sth * ms, None)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="log size to build")
    parser.add_argument("--batch", type=int, default=10_000, help="entries per bulk load")
    parser.add_argument("--singles", type=int, default=200, help="single appends to time")
    parser.add_argument("--sct-batch", type=int, default=64, help="append_many batch size")
    parser.add_argument("--samples", type=int, default=2000, help="proofs of each kind (ours)")
    parser.add_argument("--naive-samples", type=int, default=5, help="proofs of each kind (peer)")
    parser.add_argument("--dir", type=Path, help="where to put the temporary databases")
    parser.add_argument("--update", type=Path, help="markdown file whose ct section to replace")
    args = parser.parse_args()
    if args.entries < 2:
        parser.error("--entries must be at least 2")

    signer = SigningKey.generate()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ct-bench-") as tmp:
        work = Path(tmp)
        with TransparencyLog.open(work / "log.db", signer) as log:
            appends = bench_appends(
                log, work, args.entries, args.batch, args.singles, args.sct_batch
            )
            naive = NaiveTree([entry(i) for i in range(args.entries)])
            proofs = bench_proofs(log, naive, args.entries, args.samples, args.naive_samples)

    header = (
        "## Transparency log (`benchmarks/ct.py`)\n\n"
        f"Command: `python benchmarks/ct.py --entries {args.entries} --update BENCHMARKS.md`. "
        f"Measured {datetime.date.today().isoformat()} on: {machine()}.\n"
        f"Log: one SQLite file (WAL, `synchronous=FULL`, a temporary directory on the local "
        f"disk), {ENTRY_SIZE}-byte entries. Appends: entries per second over the whole run. "
        f"Proofs: median of {args.samples:,} random cases for ours, of {args.naive_samples} for "
        "the naive peer (each of which rehashes all the leaves under it, so it is slow by "
        "design: it shows what the stored subtree hashes save). Every peer proof was checked "
        "equal to ours."
    )
    text = header + "\n\n" + appends.markdown() + "\n\n" + proofs.markdown()
    if args.update:
        update_section(args.update, "ct", text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
