"""The ``trustchain ct`` subcommands: add, sth, prove-inclusion, prove-consistency.

Wiring: ``add_ct_commands(subparsers)`` adds a ``ct`` command (with its own actions) to the
top-level parser's subparsers. Each action sets two defaults: ``ct_handler``, a function
``(args, home: Path) -> exit code``, and ``handler``, which computes the home directory the way
:mod:`trustchain.cli` does and calls ``ct_handler`` -- so :func:`trustchain.cli.main` runs the
actions unchanged. Failures raise :class:`~trustchain.errors.TrustChainError` subclasses, which
``main`` reports on one line with exit status 1.

Files: the log is ``HOME/ct/log.db`` (:mod:`trustchain.ct.log`); its signing key is the key
store key ``ct-log`` (hybrid Ed25519 + Falcon-1024), generated on first use. Once a log exists,
the key store version whose id is the log id signs for it, so rotating ``ct-log`` does not
orphan the log (a log's key is fixed for its lifetime; a new key means a new log). ``add`` and
``sth`` need the private key (the store's passphrase, if it has one); ``prove-inclusion`` and
``prove-consistency`` only read the log. Other commands that log (the CA's) get the same log
with :func:`open_log` (a key store they already hold open) or :func:`open_signing_log` (opens
the store like the CLI does).

Inputs: ``ct add FILE`` logs FILE's bytes; a PEM file (``-----BEGIN CERTIFICATE-----``) stands
for the DER of its first certificate, unless ``--raw`` says to take the file as it is. ``-``
reads standard input. ``prove-inclusion --leaf-file FILE`` looks the entry up the same way, and
for a certificate issued by the TrustChain CA (one that carries embedded SCTs) first looks up
what the CA logged for it: :func:`trustchain.ca.embedded_sct.log_entry`, its preTBSCertificate
without the SCT extension.

Output: readable text, or with ``--json`` one JSON object whose binary fields are standard
base64. The proof objects use the field names of the transparency-dev/merkle test vectors::

    prove-inclusion    {"logId", "leafIdx", "treeSize", "leafHash", "root", "proof": [...]}
    prove-consistency  {"logId", "size1", "size2", "root1", "root2", "proof": [...]}
    add                {"logId", "leafIdx", "leafHash", "timestamp", "sct"}
    sth                {"logId", "treeSize", "timestamp", "root", "sth"}

``sct`` and ``sth`` are the binary encodings of :mod:`trustchain.ct.sct`; ``--out FILE`` also
writes that binary encoding to FILE. Every proof printed has been verified against the root
before it is printed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from trustchain.cli_common import home_dir, note, open_store, read_input
from trustchain.crypto.keystore import KeyStore
from trustchain.crypto.signatures import SigningKey
from trustchain.ct import merkle
from trustchain.ct.log import TransparencyLog
from trustchain.errors import KeyNotFound, LogEntryNotFound, LogError, MalformedData

LOG_KEY_NAME: Final = "ct-log"
LOG_DIRECTORY: Final = "ct"
LOG_FILENAME: Final = "log.db"

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.DOTALL
)

Handler = Callable[[argparse.Namespace, Path], int]


def log_path(home: Path) -> Path:
    """Where the log of the TrustChain home ``home`` lives."""
    return Path(home) / LOG_DIRECTORY / LOG_FILENAME


# --- helpers ----------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _when(timestamp_ms: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{timestamp_ms % 1000:03d}Z"


def _hashes(count: int) -> str:
    return "1 hash" if count == 1 else f"{count} hashes"


def _print_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, indent=2))


def _store_args(args: argparse.Namespace, home: Path) -> argparse.Namespace:
    """``args`` with ``home`` as the key store directory (what the CLI's store helper reads)."""
    values = vars(args).copy()
    values["home"] = str(home)
    values.setdefault("passphrase_file", None)
    return argparse.Namespace(**values)


def _entry_bytes(path: str, raw: bool) -> bytes:
    """The bytes to log for ``path``: a PEM certificate's DER unless ``raw``, else the file."""

    data = read_input(path)
    if raw or not data.lstrip().startswith(b"-----BEGIN CERTIFICATE-----"):
        return data
    match = _PEM_CERTIFICATE.search(data)
    if match is None:
        raise MalformedData(f"{path}: no complete PEM certificate block")
    try:
        return base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedData(f"{path}: the PEM certificate is not valid base64: {exc}") from exc


def _lookup_candidates(path: str, raw: bool) -> list[bytes]:
    """The entries that may stand for ``path`` in the log, most specific first: for a
    certificate with embedded SCTs, the entry the CA logged; then :func:`_entry_bytes`."""
    data = _entry_bytes(path, raw)
    if raw:
        return [data]
    from cryptography import x509

    from trustchain.ca import embedded_sct  # late: the CA builds on this package

    try:
        certificate = x509.load_der_x509_certificate(data)
    except ValueError:
        return [data]  # not a certificate: the bytes themselves
    logged: bytes | None
    try:
        scts = embedded_sct.embedded_scts(certificate)
        logged = embedded_sct.log_entry(certificate) if scts else None
    except MalformedData:
        logged = None  # not a CA-issued certificate after all: look up its DER
    return [data] if logged is None else [logged, data]


def log_signer(store: KeyStore, home: Path) -> SigningKey:
    """The key that signs for the log of ``home``, from the open (unlocked) key store ``store``.

    For an existing log: the version of ``ct-log`` whose id is the log id (so rotating
    ``ct-log`` does not orphan the log). Without a log: the active ``ct-log`` version, generated
    first if the store has none. :class:`LogError` if the store holds no key for the log.
    """

    path = log_path(home)
    if path.exists():
        with TransparencyLog.open(path, None, create=False) as existing:
            log_id = existing.log_id
        try:
            info = store.find(log_id)
        except KeyNotFound as exc:
            raise LogError(
                f"the key store in {store.home} holds no version of {LOG_KEY_NAME} with the id "
                f"of the log {path} ({log_id.hex()})"
            ) from exc
        if info.name != LOG_KEY_NAME:
            raise LogError(
                f"the log {path} is signed by {info.label}, not a version of {LOG_KEY_NAME}"
            )
        return store.signing_key(LOG_KEY_NAME, info.version)
    try:
        store.info(LOG_KEY_NAME)
    except KeyNotFound:
        created = store.generate(LOG_KEY_NAME)
        note(f"generated the log key {created.label} (key id {created.key_id_hex})")
    return store.signing_key(LOG_KEY_NAME)


def open_log(store: KeyStore, home: Path) -> TransparencyLog:
    """The log of ``home`` with its signing key from the open key store ``store`` (both the log
    and the key are created on first use). For callers that already hold the store open."""
    return TransparencyLog.open(log_path(home), log_signer(store, home))


def open_signing_log(args: argparse.Namespace, home: Path) -> TransparencyLog:
    """The log of ``home`` with its signing key: opens the key store the way the CLI does
    (``--passphrase-file``, ``$TRUSTCHAIN_PASSPHRASE`` or a prompt), creating it if needed."""

    with open_store(_store_args(args, home), private=True, create=True) as store:
        return open_log(store, home)


#: Former private name, still called by :mod:`trustchain.ca.commands`.
_open_signing_log = open_signing_log


def _open_reading_log(home: Path) -> TransparencyLog:
    return TransparencyLog.open(log_path(home), None, create=False)


def _write_out(data: bytes, out: str | None) -> None:
    if out is not None:
        Path(out).write_bytes(data)


# --- commands ---------------------------------------------------------------------------------


def _find(log: TransparencyLog, candidates: list[bytes], path: str) -> int:
    for candidate in candidates:
        try:
            return log.find(merkle.leaf_hash(candidate))
        except LogEntryNotFound:
            continue
    raise LogEntryNotFound(f"{path} is not in the log {log.path}")


def cmd_add(args: argparse.Namespace, home: Path) -> int:
    """``ct add FILE``: log FILE's bytes (a PEM certificate's DER) and print its SCT."""
    data = _entry_bytes(args.file, args.raw)
    with open_signing_log(args, home) as log:
        sct = log.append(data)
        sct.verify(log.public_key, entry=data)
    encoded = sct.to_bytes()
    _write_out(encoded, args.out)
    if args.json:
        _print_json(
            {
                "logId": _b64(sct.log_id),
                "leafIdx": sct.leaf_index,
                "leafHash": _b64(sct.leaf_hash),
                "timestamp": sct.timestamp,
                "sct": _b64(encoded),
            }
        )
        return 0
    print(f"logged entry {sct.leaf_index}")
    print(f"  log id:    {sct.log_id.hex()}")
    print(f"  leaf hash: {sct.leaf_hash.hex()}")
    print(f"  timestamp: {_when(sct.timestamp)} ({sct.timestamp} ms)")
    print(f"  SCT:       {args.out if args.out else _b64(encoded)}")
    return 0


def cmd_sth(args: argparse.Namespace, home: Path) -> int:
    """``ct sth``: sign and print the current tree head."""
    with open_signing_log(args, home) as log:
        sth = log.signed_tree_head()
        sth.verify(log.public_key)
    encoded = sth.to_bytes()
    _write_out(encoded, args.out)
    if args.json:
        _print_json(
            {
                "logId": _b64(sth.log_id),
                "treeSize": sth.tree_size,
                "timestamp": sth.timestamp,
                "root": _b64(sth.root_hash),
                "sth": _b64(encoded),
            }
        )
        return 0
    print(f"tree size: {sth.tree_size}")
    print(f"root hash: {sth.root_hash.hex()}")
    print(f"timestamp: {_when(sth.timestamp)} ({sth.timestamp} ms)")
    print(f"log id:    {sth.log_id.hex()}")
    print(f"STH:       {args.out if args.out else _b64(encoded)}")
    return 0


def cmd_prove_inclusion(args: argparse.Namespace, home: Path) -> int:
    """``ct prove-inclusion (--index N | --leaf-file FILE) [--tree-size N]``."""
    with _open_reading_log(home) as log:
        if args.leaf_file is not None:
            index = _find(log, _lookup_candidates(args.leaf_file, args.raw), args.leaf_file)
        else:
            index = args.index
        tree_size = log.size if args.tree_size is None else args.tree_size
        proof = log.inclusion_proof(index, tree_size)
        root = log.root(tree_size)
        digest = log.entry(index).leaf_hash
        log_id = log.log_id
    merkle.verify_inclusion(digest, index, tree_size, proof, root)
    if args.json:
        _print_json(
            {
                "logId": _b64(log_id),
                "leafIdx": index,
                "treeSize": tree_size,
                "leafHash": _b64(digest),
                "root": _b64(root),
                "proof": [_b64(p) for p in proof],
            }
        )
        return 0
    print(f"entry {index} is in the tree of size {tree_size}")
    print(f"  leaf hash: {digest.hex()}")
    print(f"  root hash: {root.hex()}")
    print(f"  proof ({_hashes(len(proof))}, leaf to root):")
    for value in proof:
        print(f"    {value.hex()}")
    return 0


def cmd_prove_consistency(args: argparse.Namespace, home: Path) -> int:
    """``ct prove-consistency SIZE1 [SIZE2]`` (SIZE2 defaults to the current size)."""
    with _open_reading_log(home) as log:
        size2 = log.size if args.size2 is None else args.size2
        proof = log.consistency_proof(args.size1, size2)
        root1 = log.root(args.size1)
        root2 = log.root(size2)
        log_id = log.log_id
    merkle.verify_consistency(args.size1, size2, proof, root1, root2)
    if args.json:
        _print_json(
            {
                "logId": _b64(log_id),
                "size1": args.size1,
                "size2": size2,
                "root1": _b64(root1),
                "root2": _b64(root2),
                "proof": [_b64(p) for p in proof],
            }
        )
        return 0
    print(f"the tree of size {size2} extends the tree of size {args.size1}")
    print(f"  root at {args.size1}: {root1.hex()}")
    print(f"  root at {size2}: {root2.hex()}")
    print(f"  proof ({_hashes(len(proof))}):")
    for value in proof:
        print(f"    {value.hex()}")
    return 0


# --- parser -----------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    """The ``handler`` :func:`trustchain.cli.main` calls: home as the CLI resolves it."""

    handler: Handler = args.ct_handler
    return handler(args, home_dir(args))


def _size(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def _index(text: str) -> int:
    return _size(text, 0)


def _tree_size(text: str) -> int:
    return _size(text, 1)


def add_ct_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``ct`` and its actions to the top-level parser's ``subparsers``."""
    ct = subparsers.add_parser(
        "ct",
        help="the certificate transparency log",
        description="The RFC 6962/9162 transparency log in HOME/ct/log.db, signed by the key "
        f"store key {LOG_KEY_NAME}.",
    )
    actions = ct.add_subparsers(dest="ct_command", metavar="ACTION", required=True)

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=help_text
        )
        sub.set_defaults(handler=_run, ct_handler=handler)
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        return sub

    p = add("add", cmd_add, "log FILE and print its signed certificate timestamp")
    p.add_argument("file", metavar="FILE", help="certificate (PEM or DER) or other bytes; '-'")
    p.add_argument("--raw", action="store_true", help="log a PEM file as is, not its DER")
    p.add_argument("--out", metavar="SCT", help="also write the binary SCT to SCT")

    p = add("sth", cmd_sth, "sign and print the current tree head")
    p.add_argument("--out", metavar="STH", help="also write the binary STH to STH")

    p = add("prove-inclusion", cmd_prove_inclusion, "print the inclusion proof of an entry")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--index", type=_index, metavar="N", help="the entry's index")
    which.add_argument("--leaf-file", metavar="FILE", help="the entry's bytes (as for add)")
    p.add_argument("--raw", action="store_true", help="take a PEM --leaf-file as is")
    p.add_argument("--tree-size", type=_tree_size, metavar="N", help="default: current size")

    p = add(
        "prove-consistency",
        cmd_prove_consistency,
        "print the proof that the tree of SIZE2 extends that of SIZE1",
    )
    p.add_argument("size1", type=_tree_size, metavar="SIZE1")
    p.add_argument("size2", type=_tree_size, nargs="?", metavar="SIZE2", help="default: current")


def dispatch(args: argparse.Namespace, home: Path) -> int:
    """Run the ``ct`` action ``args`` selects, for the TrustChain home ``home``."""
    handler: Handler = args.ct_handler
    return handler(args, home)
