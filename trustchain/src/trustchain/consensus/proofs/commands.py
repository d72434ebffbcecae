"""The ``trustchain proofs`` subcommands: prove, verify, stake.

Usage (global options ``--home`` / ``--passphrase-file`` as for every ``trustchain`` command)::

    trustchain --home DIR proofs prove ASSET_NAME --data FILE --preset NAME --out BUNDLE
                                       [--previous PREV_BUNDLE] [--stake N]
    trustchain --home DIR proofs verify BUNDLE [--previous PREV_BUNDLE] [--preset NAME]
    trustchain --home DIR proofs stake [--set N]

``NAME`` is a preset of :mod:`.presets`: ``localhost_testing``, ``default`` or ``production``.

Wiring: :func:`add_proofs_commands` adds ``proofs`` to the top-level parser's subparsers; each
action sets ``handler`` (what :func:`trustchain.cli.main` calls) and ``proofs_handler``
``(args, home) -> exit status``, as :mod:`trustchain.ct.commands` does. Failures raise
:class:`~trustchain.errors.TrustChainError` subclasses, which ``main`` reports on one line of
standard error with exit status 1.

State: the proving network :class:`~.local_network.LocalNetwork` in ``HOME/proofs`` (its CA,
transparency log, stake registry and plots) with its keys in the home's key store, which must
open unlocked (a key-file store, ``--passphrase-file`` or ``$TRUSTCHAIN_PASSPHRASE``).
``prove`` and ``stake`` create the network on first use (the node is credited
:data:`~.local_network.DEFAULT_INITIAL_STAKE`); ``verify`` never does: without
``HOME/proofs`` it fails. ``prove`` makes the node's plot of the preset's ``k`` on first use
when ``k`` is at most the ``default`` preset's (k=21: seconds and tens of MiB); a larger plot
(``production``'s k=32 needs over 100 GB of temporary space and hours) must already be in
``HOME/proofs/plots``, else ``prove`` refuses before touching anything.

Files: ``ASSET_NAME``'s content is ``--data FILE`` (1 byte to :data:`MAX_ASSET_BYTES`). A
bundle file is the ``hypermesh.v1.FourProof`` message, serialized deterministically
(``SerializeToString(deterministic=True)``), at most
:data:`~.bundle.MAX_BUNDLE_BYTES`; ``prove`` writes it atomically (a temporary file in the same
directory, fsynced, then renamed over ``BUNDLE``), so ``BUNDLE`` is either the whole new bundle
or untouched. ``--previous`` names the bundle of the version before (the recorded state the new
version builds on; it is not itself re-verified): the new version is its version + 1, and both
must be of the same asset.

Output (standard output, one ``key: value`` per line):

* ``prove``: ``asset id: <hex>``, ``version: <n>``, ``state hash: <hex>``; progress on
  standard error. It checks the new bundle under the network (as ``verify`` would with the
  same preset) before writing it, and writes nothing if it does not validate.
* ``verify``: ``asset id``, ``version``, ``state hash`` and ``preset``, then one line per proof
  (``space: valid`` or ``stake: rejected (INSUFFICIENT): <detail>``; a certificate chain
  rejection also names ``certificate chain``), one ``combined: rejected (...)`` line per
  failed check across the proofs, and last ``valid`` or ``rejected: <failing parts>`` (comma
  separated, of ``space``, ``stake``, ``work``, ``time``, ``combined``). Exit 0 iff valid.
* ``stake``: ``owner: <key id hex>``, ``balance: <n>``, ``sequence: <n>``,
  ``issued at: <ISO 8601>``; ``--set N`` first records ``N`` as the balance (signed by the
  network's registry key).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from hypermesh_interfaces.v1 import common_pb2
from trustchain.cli_common import home_dir, note, open_store
from trustchain.consensus.proofs.bundle import (
    MAX_BUNDLE_BYTES,
    PreviousState,
    ValidationResult,
    decode_bundle,
    state_hash,
)
from trustchain.consensus.proofs.challenges import ASSET_ID_SIZE
from trustchain.consensus.proofs.local_network import LocalNetwork
from trustchain.consensus.proofs.plots import find_plots
from trustchain.consensus.proofs.presets import DEFAULT, LOCALHOST_TESTING, PRESETS, Preset, preset
from trustchain.consensus.proofs.rejections import ProofKind, ProofRejected
from trustchain.consensus.proofs.stake import MAX_BALANCE, StakeEntry
from trustchain.errors import TrustChainError
from trustchain.files import write_atomically

__all__ = [
    "MAX_ASSET_BYTES",
    "NETWORK_DIRECTORY",
    "ProofsCliError",
    "add_proofs_commands",
    "dispatch",
]

#: The largest asset content ``prove`` reads: the whole asset is held in memory and chunked.
MAX_ASSET_BYTES: Final = 256 << 20
#: The proving network's directory inside the TrustChain home.
NETWORK_DIRECTORY: Final = "proofs"
#: Plots up to this size are made on demand; larger ones must exist beforehand.
_LARGEST_PLOT_ON_DEMAND: Final = DEFAULT.plot_k

Handler = Callable[[argparse.Namespace, Path], int]


class ProofsCliError(TrustChainError):
    """A failure specific to the ``proofs`` command line: an unusable input file, a missing
    proving network or plot, a new bundle that does not validate."""


# --- helpers ------------------------------------------------------------------------------------


def _network_dir(home: Path) -> Path:
    return home / NETWORK_DIRECTORY


def _read_bounded(path: str, limit: int, what: str) -> bytes:
    """The bytes of the file ``path``: :class:`ProofsCliError` if it is empty or larger than
    ``limit``, which is checked before reading (and again while reading, for files whose size
    the file system does not know), so a huge file is never loaded."""
    with Path(path).open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise ProofsCliError(f"{what} {path} has {size} bytes, more than the {limit} allowed")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ProofsCliError(f"{what} {path} has more than the {limit} bytes allowed")
    if not data:
        raise ProofsCliError(f"{what} {path} is empty")
    return data


def _read_bundle(path: str, what: str) -> common_pb2.FourProof:
    data = _read_bounded(path, MAX_BUNDLE_BYTES, what)
    try:
        return decode_bundle(data)
    except ProofRejected as exc:
        raise ProofsCliError(f"{what} {path} is not a bundle: {exc.detail}") from exc


def _printable(text: str) -> str:
    """``text`` on one line: line breaks, control and other non-printable characters are
    written as Python escapes (``\\n``, ``\\x1b``, ``\\u200b``)."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _describe(rejection: ProofRejected, slot: ProofKind | None) -> str:
    where = ""
    if slot is not None and rejection.kind is not slot:
        where = f", {rejection.kind.name.lower().replace('_', ' ')}"
    return f"rejected ({rejection.reason.name}{where}): {_printable(rejection.detail)}"


def _failures(result: ValidationResult) -> list[str]:
    """The names of the parts that failed, in output order."""
    names = [v.kind.name.lower() for v in result.verdicts if not v.valid]
    if result.combined:
        names.append("combined")
    return names


def _asset_hex(bundle: common_pb2.FourProof) -> str:
    asset = bundle.stake.asset_id.id
    if len(asset) != ASSET_ID_SIZE:
        return f"(malformed: {len(asset)} bytes)"
    return asset.hex()


def _previous_of(
    previous: common_pb2.FourProof, asset: bytes, path: str, asset_desc: str
) -> PreviousState:
    """The state ``previous`` leaves, after checking it is a bundle of ``asset``."""
    if previous.stake.asset_id.id != asset:
        raise ProofsCliError(
            f"previous bundle {path} is of asset {_asset_hex(previous)}, not of {asset_desc}"
        )
    return PreviousState.of(previous)


def _existing_plots(home: Path, k: int) -> list[Path]:
    """The plots of size ``k`` the network of ``home`` has (the names LocalNetwork.plot uses)."""
    return find_plots(_network_dir(home) / "plots", k)


def _check_plot_available(home: Path, chosen: Preset) -> None:
    """Refuse a preset whose plot is too large to make on demand when there is none."""
    if chosen.plot_k <= _LARGEST_PLOT_ON_DEMAND or _existing_plots(home, chosen.plot_k):
        return
    raise ProofsCliError(
        f"the {chosen.name} preset needs a k={chosen.plot_k} plot and "
        f"{_network_dir(home) / 'plots'} has none; trustchain makes plots up to "
        f"k={_LARGEST_PLOT_ON_DEMAND} on demand only (k={chosen.plot_k} needs over 100 GB of "
        "temporary space and hours): make one for the node key proofs/node "
        "(trustchain.consensus.proofs.plots.create_plot) in that directory first"
    )


@contextmanager
def _open_network(args: argparse.Namespace, home: Path, *, create: bool) -> Iterator[LocalNetwork]:
    """The proving network of ``home`` with the home's key store (unlocked), both open for
    the ``with`` block."""
    with (
        open_store(args, private=True, create=create) as store,
        LocalNetwork.open(_network_dir(home), store) as network,
    ):
        yield network


# --- commands -----------------------------------------------------------------------------------


def cmd_prove(args: argparse.Namespace, home: Path) -> int:
    """``proofs prove NAME --data FILE --preset P --out BUNDLE [--previous B] [--stake N]``."""
    chosen = preset(args.preset)
    _check_plot_available(home, chosen)
    data = _read_bounded(args.data, MAX_ASSET_BYTES, "asset data")
    previous = None if args.previous is None else _read_bundle(args.previous, "previous bundle")
    out = Path(args.out)
    if out.is_dir():
        raise ProofsCliError(f"--out {out} is a directory")
    if not out.parent.is_dir():
        raise ProofsCliError(f"--out {out}: the directory {out.parent} does not exist")
    with _open_network(args, home, create=True) as network:
        asset = network.asset_id(args.name)
        state = (
            None
            if previous is None
            else _previous_of(previous, asset, args.previous, f"{args.name} ({asset.hex()})")
        )
        version = 0 if state is None else state.version + 1
        if not _existing_plots(home, chosen.plot_k):
            note(f"making the node's k={chosen.plot_k} plot (first use; this can take a while)")
        note(f"proving version {version} of {args.name} with the {chosen.name} preset")
        bundle = network.prove(args.name, data, preset=chosen, previous=state, amount=args.stake)
        result = network.validate(bundle, preset=chosen, previous=state)
    if not result.valid:
        parts = "; ".join(f"{r.kind.name.lower()}: {_describe(r, None)}" for r in result.rejections)
        raise ProofsCliError(f"the new bundle does not validate, nothing written: {parts}")
    encoded = bundle.SerializeToString(deterministic=True)
    if len(encoded) > MAX_BUNDLE_BYTES:
        raise ProofsCliError(
            f"the bundle has {len(encoded)} bytes, more than a verifier accepts "
            f"({MAX_BUNDLE_BYTES}); nothing written"
        )
    write_atomically(out, encoded)
    note(f"wrote {out} ({len(encoded)} bytes)")
    print(f"asset id: {asset.hex()}")
    print(f"version: {bundle.stake.version}")
    print(f"state hash: {state_hash(bundle).hex()}")
    return 0


def cmd_verify(args: argparse.Namespace, home: Path) -> int:
    """``proofs verify BUNDLE [--previous B] [--preset P]``: exit 0 iff all four verify."""
    if not _network_dir(home).is_dir():
        raise ProofsCliError(f"no proving network in {home}: run `trustchain proofs prove` first")
    chosen = preset(args.preset)
    bundle = _read_bundle(args.bundle, "bundle")
    state = None
    if args.previous is not None:
        previous = _read_bundle(args.previous, "previous bundle")
        state = _previous_of(previous, bundle.stake.asset_id.id, args.previous, _asset_hex(bundle))
    with _open_network(args, home, create=False) as network:
        result = network.validate(bundle, preset=chosen, previous=state)
    print(f"asset id: {_asset_hex(bundle)}")
    print(f"version: {bundle.stake.version}")
    print(f"state hash: {state_hash(bundle).hex()}")
    print(f"preset: {chosen.name}")
    for verdict in result.verdicts:
        outcome = "valid"
        if verdict.rejection is not None:
            outcome = _describe(verdict.rejection, verdict.kind)
        print(f"{verdict.kind.name.lower()}: {outcome}")
    for rejection in result.combined:
        print(f"combined: {_describe(rejection, ProofKind.COMBINED)}")
    if result.valid:
        print("valid")
        return 0
    print(f"rejected: {', '.join(_failures(result))}")
    return 1


def _print_entry(entry: StakeEntry) -> None:
    print(f"owner: {entry.owner_key_id.hex()}")
    print(f"balance: {entry.balance}")
    print(f"sequence: {entry.sequence}")
    print(f"issued at: {entry.issued_at.isoformat()}")


def cmd_stake(args: argparse.Namespace, home: Path) -> int:
    """``proofs stake [--set N]``: show (or first record) the node's stake balance."""
    with _open_network(args, home, create=True) as network:
        if args.set is not None:
            entry = network.credit(args.set)
            note(f"recorded balance {entry.balance} (entry {entry.sequence})")
        else:
            entry = network.registry.entry(network.node_key.key_id)
    _print_entry(entry)
    return 0


# --- parser -------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    """The ``handler`` :func:`trustchain.cli.main` calls: home as the CLI resolves it."""
    handler: Handler = args.proofs_handler
    return handler(args, home_dir(args))


def dispatch(args: argparse.Namespace, home: Path) -> int:
    """Run the ``proofs`` action ``args`` selects, for the TrustChain home ``home``."""
    handler: Handler = args.proofs_handler
    return handler(args, home)


def _amount(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_BALANCE:
        raise argparse.ArgumentTypeError(f"must be 0..{MAX_BALANCE}, got {value}")
    return value


def _asset_name(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("the asset name is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("the asset name is not valid UTF-8") from None
    return text


def add_proofs_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``proofs`` and its actions to the top-level parser's ``subparsers``."""
    proofs = subparsers.add_parser(
        "proofs",
        help="make and check four-proof bundles (space, stake, work, time)",
        description="Four-proof bundles made and checked by the one-machine proving network "
        f"in HOME/{NETWORK_DIRECTORY} (its own CA, transparency log, stake registry and plots; "
        "keys in the key store).",
    )
    actions = proofs.add_subparsers(dest="proofs_command", metavar="ACTION", required=True)

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=help_text
        )
        sub.set_defaults(handler=_run, proofs_handler=handler)
        return sub

    presets = list(PRESETS)
    p = add("prove", cmd_prove, "prove the next version of an asset and write its bundle")
    p.add_argument("name", type=_asset_name, metavar="ASSET_NAME", help="the node's asset")
    p.add_argument("--data", required=True, metavar="FILE", help="the asset's content")
    p.add_argument("--preset", required=True, choices=presets, help="thresholds to prove for")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="where to write the bundle")
    p.add_argument(
        "--previous",
        metavar="PREV_BUNDLE",
        help="bundle of the version before (default: prove version 0)",
    )
    p.add_argument(
        "--stake", type=_amount, metavar="N", help="amount staked (default: the preset's minimum)"
    )

    p = add("verify", cmd_verify, "check the four proofs of a bundle (exit 0 iff all verify)")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument(
        "--previous",
        metavar="PREV_BUNDLE",
        help="bundle of the version before, the recorded state it must build on (default: "
        "the bundle must be version 0)",
    )
    p.add_argument(
        "--preset",
        choices=presets,
        default=LOCALHOST_TESTING.name,
        help=f"thresholds to check against (default: {LOCALHOST_TESTING.name}); the verifier "
        "chooses them, the bundle does not",
    )

    p = add("stake", cmd_stake, "show (or set) the node's stake balance")
    p.add_argument("--set", type=_amount, metavar="N", help="record N as the new balance")
