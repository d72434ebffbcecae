"""PoSpace capacity: Chia proofs of space (chiapos) over plots bound to a node's identity key.

Plot identity
=============

Chia derives a plot's id from the farmer's and pool's keys, so a plot cannot be farmed for
someone else. Here the id comes from the storage node's TrustChain signing key::

    plot_id = SHA-256( b"hypermesh/plot-id/v1\\x00"    21 bytes, domain label
                     || node_key.to_bytes()           the SIGNING_PUBLIC_KEY envelope
                     || seed )                        32 bytes, random per plot

A verifier recomputes it from the key of the certificate the proof is signed under and the
seed published with the proof, so a proof from a plot made for another key (or another seed)
names the wrong plot id and fails.

Plot files
==========

A plot is a chiapos (format v1.0) file named ``plot-k<k>-<plot id hex>.plot``. Its memo
(which Chia fills with its pool and farmer keys) holds, in 87 bytes::

    b"hypermesh/plot-memo/v1\\x00"   23 bytes, :data:`PLOT_MEMO_LABEL`
    || node key id                   32 bytes, SHA-256 of the node key's envelope
    || seed                          32 bytes

so :func:`open_plot` can re-derive and check the id from the file and the node's key alone.
:func:`create_plot` runs the chiapos plotter in a child Python process: chiapos sets the
open-file limit of the process that plots to 600, soft and hard (for good: a process cannot
raise its hard limit again), and writes its progress to file descriptor 1. The child plots
in a hidden temporary directory (``.plotting-*``) next to the final file; the plot is then
fsynced and renamed into place: a half-written plot never has a plot's name.

Proofs and qualities
====================

For a 32-byte challenge, a plot of size ``k`` holds on average one proof (the first ``k``
bits of the challenge must match the proof's final output). A proof is the 64 x-values of
the proof, each ``k`` bits, packed into ``8 * k`` bytes; its quality string is 32 bytes
(SHA-256 of the challenge and two of the x-values). A proof meets ``bits`` when its quality
string has at least ``bits`` leading zero bits (:func:`quality_meets`); lower is better.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import chiapos

from trustchain.consensus.proofs.rejections import ProofKind, ProofReason, ProofRejected
from trustchain.crypto.signatures import VerifyKey
from trustchain.errors import TrustChainError

__all__ = [
    "DEFAULT_BUFFER_MB",
    "MAX_K",
    "MIN_K",
    "PLOT_ID_LABEL",
    "PLOT_ID_SIZE",
    "PLOT_MEMO_LABEL",
    "PLOT_MEMO_SIZE",
    "PLOT_SEED_SIZE",
    "QUALITY_SIZE",
    "InvalidPlot",
    "Plot",
    "PlotError",
    "PlotMismatch",
    "PlottingFailed",
    "create_plot",
    "find_plots",
    "open_plot",
    "plot_filename",
    "plot_id",
    "plot_memo",
    "proof_size",
    "prove_capacity",
    "quality_meets",
    "verify_capacity",
]

#: Domain label of :func:`plot_id`.
PLOT_ID_LABEL: Final = b"hypermesh/plot-id/v1\x00"
#: Domain label at the start of a HyperMesh plot's memo (:func:`plot_memo`).
PLOT_MEMO_LABEL: Final = b"hypermesh/plot-memo/v1\x00"
PLOT_ID_SIZE: Final = 32
PLOT_SEED_SIZE: Final = 32
QUALITY_SIZE: Final = 32
CHALLENGE_SIZE: Final = 32
_KEY_ID_SIZE: Final = 32
#: Size of :func:`plot_memo`: label, node key id, seed.
PLOT_MEMO_SIZE: Final = len(PLOT_MEMO_LABEL) + _KEY_ID_SIZE + PLOT_SEED_SIZE
#: chiapos' plot sizes (kMinPlotSize, kMaxPlotSize).
MIN_K: Final = 18
MAX_K: Final = 50
#: Sort buffer of :func:`create_plot`, MiB: plenty for the presets' test and default sizes
#: (k=18..21 plot with 128). chiapos zero-fills the whole buffer, so it is resident memory of
#: the plotting process. Chia uses 3389 for k=32; too small a buffer for ``k`` is refused.
DEFAULT_BUFFER_MB: Final = 256
#: chiapos' stripe size (entries per thread batch); its own default. Larger stripes are
#: refused for small k ("Stripe size too large").
_STRIPE_SIZE: Final = 8192
#: Open provers kept by :func:`prove_capacity` (least recently used dropped first).
_PROVER_CACHE_SIZE: Final = 256
_MAX_QUALITY_BITS: Final = 8 * QUALITY_SIZE

# Run by create_plot in a child interpreter: argv = parent pid, directory, file name, k, memo
# (hex), plot id (hex), buffer MiB, threads. On Linux the child asks to be killed when its
# parent dies (PR_SET_PDEATHSIG = 1), so an abandoned plot stops filling the disk; chiapos holds
# the GIL for the whole plot, so a watcher thread could not do it. Buckets 0: chiapos picks
# the count from the buffer.
_PLOTTER_SCRIPT: Final = f"""\
import os, sys
parent, d, name, k, memo, pid, buffer_mb, threads = sys.argv[1:]
if sys.platform.startswith("linux"):
    import ctypes, signal
    if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) != 0:
        sys.exit("prctl(PR_SET_PDEATHSIG) failed")
if os.getppid() != int(parent):
    sys.exit("the process that asked for the plot is gone")
from chiapos import DiskPlotter
DiskPlotter().create_plot_disk(
    d, d, d, name, int(k), bytes.fromhex(memo), bytes.fromhex(pid),
    int(buffer_mb), 0, {_STRIPE_SIZE}, int(threads), False,
)
"""
_PLOTTER_ERROR_PREFIX: Final = "Caught plotting error: "


class PlotError(TrustChainError):
    """A plot cannot be made or used."""


class PlotMismatch(PlotError):
    """A plot is not bound to the expected node key: its memo names another key, or its id is
    not :func:`plot_id` of that key and the memo's seed."""


class InvalidPlot(PlotError):
    """A file is not a readable HyperMesh plot: chiapos cannot read it, its memo is not
    :func:`plot_memo`'s format, its ``k`` is outside chiapos' range, or it gave a proof that
    does not verify (the file is damaged)."""


class PlottingFailed(PlotError):
    """The chiapos plotter failed; the message carries chiapos' reason (for example too
    little buffer memory for ``k``)."""


def plot_id(node_key: VerifyKey, seed: bytes) -> bytes:
    """The 32-byte id of the plot of ``node_key`` with ``seed`` (32 bytes):
    ``SHA-256(PLOT_ID_LABEL || node_key.to_bytes() || seed)``. :class:`ValueError` if
    ``seed`` is not 32 bytes."""
    _check_size(seed, PLOT_SEED_SIZE, "plot seed")
    return hashlib.sha256(PLOT_ID_LABEL + node_key.to_bytes() + seed).digest()


def plot_memo(node_key_id: bytes, seed: bytes) -> bytes:
    """The 87-byte memo written into a plot: ``PLOT_MEMO_LABEL || node_key_id || seed``."""
    _check_size(node_key_id, _KEY_ID_SIZE, "node key id")
    _check_size(seed, PLOT_SEED_SIZE, "plot seed")
    return PLOT_MEMO_LABEL + node_key_id + seed


def plot_filename(k: int, plot_id_value: bytes) -> str:
    """The file name of a plot: ``plot-k<k>-<plot id, lowercase hex>.plot``."""
    return f"plot-k{k}-{plot_id_value.hex()}.plot"


def find_plots(directory: Path, k: int) -> list[Path]:
    """The files named like plots of size ``k`` in ``directory`` (see :func:`plot_filename`),
    sorted by name; none if the directory does not exist. Open them with :func:`open_plot`."""
    return sorted(directory.glob(f"plot-k{k}-*.plot")) if directory.is_dir() else []


def proof_size(k: int) -> int:
    """Bytes of a proof of space for plot size ``k``: 64 x-values of ``k`` bits."""
    return 8 * k


@dataclass(frozen=True)
class Plot:
    """A plot on disk: where it is, its id, size ``k``, seed and the id of the node key it is
    bound to (``plot_id == plot_id(node key, seed)``, checked by :func:`create_plot` and
    :func:`open_plot`)."""

    path: Path
    plot_id: bytes
    k: int
    seed: bytes
    node_key_id: bytes

    def __post_init__(self) -> None:
        _check_size(self.plot_id, PLOT_ID_SIZE, "plot id")
        _check_size(self.seed, PLOT_SEED_SIZE, "plot seed")
        _check_size(self.node_key_id, _KEY_ID_SIZE, "node key id")
        _check_k(self.k)


def create_plot(
    directory: Path,
    node_key: VerifyKey,
    k: int,
    *,
    seed: bytes | None = None,
    buffer_mb: int = DEFAULT_BUFFER_MB,
    threads: int = 2,
) -> Plot:
    """Plot ``k`` in ``directory`` for ``node_key`` and return it (opened, see
    :func:`open_plot`).

    ``seed``: 32 bytes (default: random); the same key and seed give the same plot id, and
    the file named after it is replaced. ``buffer_mb``: the plotter's sort buffer in MiB (at
    least 10; chiapos refuses too small a buffer for ``k`` with :class:`PlottingFailed`);
    ``threads``: plotting threads (1..64). A plot of k=18 is about 3.8 MiB and k=21 34 MiB.

    :class:`ValueError` for arguments out of range, :class:`PlottingFailed` if chiapos fails,
    :class:`OSError` for file system errors. On any failure nothing is left in ``directory``.
    """
    _check_k(k)
    if seed is None:
        seed = secrets.token_bytes(PLOT_SEED_SIZE)
    _check_size(seed, PLOT_SEED_SIZE, "plot seed")
    if not 10 <= buffer_mb <= 1 << 20:
        raise ValueError("buffer_mb must be 10..1048576")
    if not 1 <= threads <= 64:
        raise ValueError("threads must be 1..64")
    directory = Path(directory)
    identifier = plot_id(node_key, seed)
    memo = plot_memo(node_key.key_id, seed)
    name = plot_filename(k, identifier)
    final = directory / name
    with tempfile.TemporaryDirectory(prefix=".plotting-", dir=directory) as work:
        _run_plotter(Path(work), name, k, memo, identifier, buffer_mb, threads)
        written = Path(work) / name
        with written.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(written, final)
    _fsync_directory(directory)
    _PROVERS.forget(final)
    return open_plot(final, node_key)


def open_plot(path: Path, node_key: VerifyKey) -> Plot:
    """Open the plot at ``path`` and check it is bound to ``node_key``.

    Reads the plot's id, ``k`` and memo; :class:`InvalidPlot` if chiapos cannot read the file,
    the memo is not :func:`plot_memo`'s format or ``k`` is out of range;
    :class:`PlotMismatch` if the memo names another key or the id is not
    ``plot_id(node_key, seed)``. The opened prover is kept for :func:`prove_capacity`.
    """
    path = Path(path)
    prover = _open_prover(path)
    identifier = bytes(prover.get_id())
    k = int(prover.get_size())
    memo = bytes(prover.get_memo())
    if len(memo) != PLOT_MEMO_SIZE or not memo.startswith(PLOT_MEMO_LABEL):
        raise InvalidPlot(f"{path}: the memo is not a HyperMesh plot memo")
    if len(identifier) != PLOT_ID_SIZE or not MIN_K <= k <= MAX_K:
        raise InvalidPlot(f"{path}: plot id of {len(identifier)} bytes, k={k}")
    key_id = memo[len(PLOT_MEMO_LABEL) : len(PLOT_MEMO_LABEL) + _KEY_ID_SIZE]
    seed = memo[len(PLOT_MEMO_LABEL) + _KEY_ID_SIZE :]
    if key_id != node_key.key_id:
        raise PlotMismatch(
            f"{path}: the plot is bound to key {key_id.hex()}, not {node_key.key_id.hex()}"
        )
    if identifier != plot_id(node_key, seed):
        raise PlotMismatch(f"{path}: plot id {identifier.hex()} is not derived from the key")
    plot = Plot(path=path, plot_id=identifier, k=k, seed=seed, node_key_id=key_id)
    _PROVERS.put(plot, prover)
    return plot


def quality_meets(quality: bytes, bits: int) -> bool:
    """Whether the 32-byte quality string has at least ``bits`` (0..256) leading zero bits,
    the first bit being the most significant bit of the first byte. :class:`ValueError` for
    a quality of another size or ``bits`` out of range."""
    _check_size(quality, QUALITY_SIZE, "quality")
    _check_quality_bits(bits)
    return 8 * QUALITY_SIZE - int.from_bytes(quality, "big").bit_length() >= bits


def prove_capacity(plot: Plot, challenge: bytes, quality_bits: int) -> tuple[bytes, bytes] | None:
    """The best proof of ``plot`` for the 32-byte ``challenge``: ``(proof, quality)`` of the
    proof with the lowest quality string, if that one has at least ``quality_bits`` leading
    zero bits; ``None`` if the plot has no proof for the challenge or none meets the target.

    The proof is checked with the chiapos verifier before it is returned (:class:`InvalidPlot`
    if it does not verify: the plot is damaged; also if the file can no longer be read).
    :class:`ValueError` for a challenge that is not 32 bytes or ``quality_bits`` out of 0..256.
    """
    _check_size(challenge, CHALLENGE_SIZE, "challenge")
    _check_quality_bits(quality_bits)
    prover = _prover(plot)
    try:
        qualities = [bytes(q) for q in prover.get_qualities_for_challenge(challenge)]
    except (RuntimeError, ValueError) as exc:
        raise InvalidPlot(f"{plot.path}: cannot read qualities: {exc}") from exc
    if not qualities:
        return None
    index = min(range(len(qualities)), key=qualities.__getitem__)
    quality = qualities[index]
    if not quality_meets(quality, quality_bits):
        return None
    try:
        proof = bytes(prover.get_full_proof(challenge, index))
    except (RuntimeError, ValueError) as exc:
        raise InvalidPlot(f"{plot.path}: cannot read proof {index}: {exc}") from exc
    try:
        verify_capacity(plot.plot_id, plot.k, challenge, proof, quality, quality_bits=quality_bits)
    except ProofRejected as exc:
        raise InvalidPlot(
            f"{plot.path}: the plot gave a proof that does not verify: {exc}"
        ) from exc
    return proof, quality


def verify_capacity(
    plot_id: bytes,
    k: int,
    challenge: bytes,
    proof: bytes,
    quality: bytes,
    *,
    quality_bits: int,
) -> None:
    """Return if ``proof`` is a chiapos proof of space of plot ``plot_id`` (size ``k``) for
    ``challenge`` whose quality string is ``quality`` and meets ``quality_bits``; else raise
    :class:`ProofRejected` (kind ``SPACE``), at the first failure of:

    * ``MALFORMED``: ``plot_id``, ``challenge`` or ``quality`` not 32 bytes;
    * ``UNSUPPORTED_ALGORITHM``: ``k`` outside chiapos' 18..50;
    * ``MALFORMED``: ``proof`` not ``8 * k`` bytes;
    * ``VERIFICATION_FAILED``: chiapos rejects the proof (another plot id, challenge or ``k``,
      or any changed x-value), or ``quality`` is not the quality string chiapos derives;
    * ``INSUFFICIENT``: the quality has fewer than ``quality_bits`` leading zero bits.

    Every size is checked before chiapos sees the bytes (its verifier reads 32 bytes of id
    and challenge whatever their length). :class:`ValueError` for ``quality_bits`` out of 0..256.
    """
    _check_quality_bits(quality_bits)
    for value, size, what in (
        (plot_id, PLOT_ID_SIZE, "plot id"),
        (challenge, CHALLENGE_SIZE, "challenge"),
        (quality, QUALITY_SIZE, "quality"),
    ):
        if not isinstance(value, bytes) or len(value) != size:
            raise _reject(ProofReason.MALFORMED, f"{what} must be {size} bytes")
    if isinstance(k, bool) or not isinstance(k, int) or not MIN_K <= k <= MAX_K:
        raise _reject(ProofReason.UNSUPPORTED_ALGORITHM, f"plot size k={k} is not {MIN_K}..{MAX_K}")
    if not isinstance(proof, bytes) or len(proof) != proof_size(k):
        raise _reject(
            ProofReason.MALFORMED,
            f"a proof for k={k} is {proof_size(k)} bytes, got {len(proof)}",
        )
    derived: Any = _VERIFIER.validate_proof(plot_id, k, challenge, proof)
    if derived is None:
        raise _reject(ProofReason.VERIFICATION_FAILED, "chiapos rejects the proof of space")
    if bytes(derived) != quality:
        raise _reject(ProofReason.VERIFICATION_FAILED, "the quality string is not the proof's")
    if not quality_meets(quality, quality_bits):
        raise _reject(
            ProofReason.INSUFFICIENT, f"the quality has fewer than {quality_bits} leading zero bits"
        )


# --- internals --------------------------------------------------------------------------------

_VERIFIER: Final[Any] = chiapos.Verifier()


def _reject(reason: ProofReason, detail: str) -> ProofRejected:
    return ProofRejected(ProofKind.SPACE, reason, detail)


def _check_size(value: bytes, size: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{what} must be {size} bytes")


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not MIN_K <= k <= MAX_K:
        raise ValueError(f"k must be {MIN_K}..{MAX_K}")


def _check_quality_bits(bits: int) -> None:
    if not 0 <= bits <= _MAX_QUALITY_BITS:
        raise ValueError(f"quality bits must be 0..{_MAX_QUALITY_BITS}")


def _run_plotter(
    work: Path, name: str, k: int, memo: bytes, identifier: bytes, buffer_mb: int, threads: int
) -> None:
    argv = [
        str(os.getpid()),
        str(work),
        name,
        str(k),
        memo.hex(),
        identifier.hex(),
        str(buffer_mb),
        str(threads),
    ]
    result = subprocess.run(
        [sys.executable, "-c", _PLOTTER_SCRIPT, *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        reasons = [
            line.split(_PLOTTER_ERROR_PREFIX, 1)[1].strip()
            for line in result.stdout.splitlines()
            if _PLOTTER_ERROR_PREFIX in line
        ]
        tail = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        raise PlottingFailed(f"plotting k={k} failed: {(reasons or tail)[0]}")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_prover(path: Path) -> Any:
    try:
        return chiapos.DiskProver(str(path))
    except (RuntimeError, ValueError) as exc:
        raise InvalidPlot(f"{path}: chiapos cannot read the plot: {exc}") from exc


class _ProverCache:
    """Open chiapos provers by plot, least recently used dropped first; thread-safe."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[Plot, Any] = OrderedDict()

    def get(self, plot: Plot) -> Any | None:
        with self._lock:
            prover = self._entries.get(plot)
            if prover is not None:
                self._entries.move_to_end(plot)
            return prover

    def put(self, plot: Plot, prover: Any) -> None:
        with self._lock:
            self._entries[plot] = prover
            self._entries.move_to_end(plot)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def forget(self, path: Path) -> None:
        with self._lock:
            for plot in [p for p in self._entries if p.path == path]:
                del self._entries[plot]


_PROVERS: Final = _ProverCache(_PROVER_CACHE_SIZE)


def _prover(plot: Plot) -> Any:
    """The open prover of ``plot`` (opened on first use; :class:`InvalidPlot` if the file is
    no longer that plot)."""
    prover = _PROVERS.get(plot)
    if prover is None:
        prover = _open_prover(plot.path)
        if bytes(prover.get_id()) != plot.plot_id or int(prover.get_size()) != plot.k:
            raise InvalidPlot(f"{plot.path} no longer holds plot {plot.plot_id.hex()}")
        _PROVERS.put(plot, prover)
    return prover
