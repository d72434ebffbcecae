"""The ``trustchain`` command line: manage the key store, sign files, verify signatures.

Usage (global options come before the command)::

    trustchain [--home DIR] [--passphrase-file FILE] keys generate NAME [--algorithm ALG]
    trustchain [--home DIR] keys list
    trustchain [--home DIR] keys rotate NAME
    trustchain [--home DIR] keys rotate-due --max-age-days N [--dry-run]
    trustchain [--home DIR] keys retire NAME --version N
    trustchain [--home DIR] keys revoke NAME --version N --reason TEXT
    trustchain [--home DIR] keys export-public NAME [--version N] [--out FILE] [--armor]
    trustchain [--home DIR] sign NAME FILE [--out SIG]          (binary signature on stdout)
    trustchain [--home DIR] verify NAME FILE SIG
    trustchain [--home DIR] proofs prove ASSET_NAME --data FILE --preset NAME --out BUNDLE
                                         [--previous PREV_BUNDLE] [--stake N]
    trustchain [--home DIR] proofs verify BUNDLE [--previous PREV_BUNDLE] [--preset NAME]
    trustchain [--home DIR] proofs stake [--set N]

(``proofs``: see :mod:`trustchain.consensus.proofs.commands`; ``names``, signed name records:
see :mod:`trustchain.naming.commands`.)

The store lives in ``--home``, else ``$TRUSTCHAIN_HOME``, else ``~/.trustchain``. The passphrase
comes from ``--passphrase-file`` (one trailing newline is stripped), else
``$TRUSTCHAIN_PASSPHRASE``, else an interactive prompt when stdin is a terminal. With none of
those, a *new* store is protected by a random key file (``store.key``) next to the database --
that protects copies of ``keys.db`` alone, not someone who can read the whole directory -- and an
existing passphrase store opens as a public view (list, export-public and verify work; signing
and key changes need the passphrase).

Signature files are :class:`~trustchain.crypto.keystore.DetachedSignature` envelopes: they carry
the signing key's id, so ``verify`` picks the right version and signatures made before a
rotation still verify afterwards.

Exit status: 0 on success (``verify``: the signature is valid), 1 for any failure TrustChain
reports (invalid signature, retired or revoked key, wrong passphrase, malformed files...; one
line on stderr, no traceback), 2 for usage errors.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from datetime import UTC, timedelta

from trustchain.ca.commands import add_ca_commands
from trustchain.ca.verify_command import add_verify_command
from trustchain.cli_common import (
    DEFAULT_HOME,
    ENV_HOME,
    ENV_PASSPHRASE,
    PROG,
    armor,
    note,
    open_store,
    read_input,
    write_binary,
)
from trustchain.consensus.proofs.commands import add_proofs_commands
from trustchain.crypto.algorithms import KemAlgorithm, SignatureAlgorithm
from trustchain.crypto.keystore import DetachedSignature, KeyInfo
from trustchain.crypto.signatures import VerifyKey
from trustchain.ct.commands import add_ct_commands
from trustchain.errors import (
    CaError,
    InvalidSignature,
    KeyExists,
    KeyNotFound,
    KeyRetired,
    KeyRevoked,
    KeyStoreCorrupted,
    KeyStoreError,
    LogError,
    MalformedData,
    ProofError,
    TrustChainError,
    TrustStoreError,
    UnknownAlgorithm,
    WrongPassphrase,
)
from trustchain.naming.commands import add_names_commands

_ALGORITHMS: tuple[SignatureAlgorithm | KemAlgorithm, ...] = (*SignatureAlgorithm, *KemAlgorithm)

#: One-line error prefixes, most specific class first.
_CATEGORIES: tuple[tuple[type[TrustChainError], str], ...] = (
    (InvalidSignature, "invalid signature"),
    (KeyRevoked, "key revoked"),
    (KeyRetired, "key retired"),
    (KeyNotFound, "key not found"),
    (KeyExists, "key exists"),
    (WrongPassphrase, "cannot unlock the key store"),
    (KeyStoreCorrupted, "key store corrupted"),
    (UnknownAlgorithm, "unknown algorithm"),
    (MalformedData, "malformed data"),
    (KeyStoreError, "key store"),
    (CaError, "certificate authority"),
    (TrustStoreError, "trust store"),
    (ProofError, "proof"),
    (LogError, "transparency log"),
)


def _when(info: KeyInfo) -> str:
    return info.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(info: KeyInfo) -> str:
    if info.reason:
        return f"{info.status} ({info.reason})"
    return str(info.status)


# --- commands ---------------------------------------------------------------------------------


def _cmd_generate(args: argparse.Namespace) -> int:
    with open_store(args, private=True, create=True) as store:
        info = store.generate(args.name, args.algorithm)
    print(f"generated {info.label}")
    print(f"  algorithm: {info.algorithm} ({info.kind})")
    print(f"  key id:    {info.key_id_hex}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    with open_store(args, private=False) as store:
        infos = store.list()
        view = "" if store.unlocked else ", public view"
        print(f"key store {store.home} (protection: {store.protection}{view})")
    if not infos:
        print("no keys")
        return 0
    header = ("NAME", "VERSION", "ALGORITHM", "STATUS", "CREATED", "KEY ID")
    rows = [
        (i.name, f"v{i.version}", i.algorithm, _status(i), _when(i), i.key_id_hex[:16])
        for i in infos
    ]
    widths = [max(len(r[c]) for r in (header, *rows)) for c in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    with open_store(args, private=True) as store:
        info = store.rotate(args.name)
    print(f"rotated {args.name}: {info.label} is active (key id {info.key_id_hex})")
    if info.version > 1:
        print(f"  {args.name} v{info.version - 1} stays valid for verification until retired")
    return 0


def _cmd_rotate_due(args: argparse.Namespace) -> int:
    max_age = timedelta(days=args.max_age_days)
    with open_store(args, private=not args.dry_run) as store:
        due = store.due_for_rotation(max_age)
        if args.dry_run:
            for info in due:
                print(f"due: {info.label} (created {_when(info)})")
        else:
            for info in due:
                new = store.rotate(info.name)
                print(f"rotated {info.name}: {new.label} is active (key id {new.key_id_hex})")
    if not due:
        print(f"no key is older than {args.max_age_days} days")
    return 0


def _cmd_retire(args: argparse.Namespace) -> int:
    with open_store(args, private=True) as store:
        info = store.retire(args.name, args.version)
    print(f"retired {info.label}")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    with open_store(args, private=True) as store:
        info = store.revoke(args.name, args.version, args.reason)
    print(f"revoked {info.label}: {info.reason}")
    return 0


def _cmd_export_public(args: argparse.Namespace) -> int:
    with open_store(args, private=False) as store:
        public = store.public_key(args.name, args.version)
    data = public.to_bytes()
    if args.armor:
        kind = "SIGNING" if isinstance(public, VerifyKey) else "KEM"
        data = armor(data, f"TRUSTCHAIN {kind} PUBLIC KEY")
    write_binary(data, args.out, "public key")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    message = read_input(args.file)
    with open_store(args, private=True) as store:
        detached = store.sign(args.name, message)
    write_binary(detached.to_bytes(), args.out, "signature")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    raw = read_input(args.signature)
    try:
        detached = DetachedSignature.from_bytes(raw)
    except MalformedData as exc:
        raise MalformedData(f"signature file {args.signature} is malformed: {exc}") from exc
    message = read_input(args.file)
    with open_store(args, private=False) as store:
        info = store.verify(args.name, message, detached)
    print(f"valid: {info.label} (key id {info.key_id_hex})")
    return 0


# --- parser -----------------------------------------------------------------------------------


def _algorithm(text: str) -> SignatureAlgorithm | KemAlgorithm:
    for algorithm in _ALGORITHMS:
        if algorithm.label == text:
            return algorithm
    known = ", ".join(a.label for a in _ALGORITHMS)
    raise argparse.ArgumentTypeError(f"unknown algorithm {text!r}; known: {known}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="TrustChain keys, signatures and verification.",
        epilog=f"Store: --home, else ${ENV_HOME}, else {DEFAULT_HOME}. Passphrase: "
        f"--passphrase-file, else ${ENV_PASSPHRASE}, else a prompt on a terminal, else a key "
        "file for a new store.",
    )
    parser.add_argument("--home", metavar="DIR", help="key store directory")
    parser.add_argument(
        "--passphrase-file", metavar="FILE", help="read the store passphrase from FILE"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    keys = commands.add_parser("keys", help="manage keys in the store")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    def add(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help_text: str,
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    p = add(key_commands, "generate", _cmd_generate, "create a new key (version 1)")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--algorithm",
        type=_algorithm,
        default=SignatureAlgorithm.HYBRID_ED25519_FALCON_1024,
        metavar="ALG",
        help="one of: "
        + ", ".join(a.label for a in _ALGORITHMS)
        + f" (default: {SignatureAlgorithm.HYBRID_ED25519_FALCON_1024.label})",
    )

    add(key_commands, "list", _cmd_list, "list every key version")

    p = add(key_commands, "rotate", _cmd_rotate, "add a new active version of a key")
    p.add_argument("name", metavar="NAME")

    p = add(key_commands, "rotate-due", _cmd_rotate_due, "rotate every key older than a limit")
    p.add_argument("--max-age-days", type=_positive_int, required=True, metavar="N")
    p.add_argument("--dry-run", action="store_true", help="only list the keys that are due")

    p = add(key_commands, "retire", _cmd_retire, "retire a non-active key version")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--version", type=_positive_int, required=True, metavar="N")

    p = add(key_commands, "revoke", _cmd_revoke, "revoke a (compromised) key version")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--version", type=_positive_int, required=True, metavar="N")
    p.add_argument("--reason", required=True, metavar="TEXT")

    p = add(key_commands, "export-public", _cmd_export_public, "write a public key envelope")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--version", type=_positive_int, metavar="N", help="default: active")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--armor", action="store_true", help="base64 text between BEGIN/END lines")

    p = add(commands, "sign", _cmd_sign, "sign FILE; the signature goes to stdout")
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", metavar="FILE", help="file to sign ('-' for stdin)")
    p.add_argument("--out", metavar="SIG", help="write the signature to SIG instead of stdout")

    p = add(commands, "verify", _cmd_verify, "verify SIG over FILE against key NAME")
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", metavar="FILE", help="signed file ('-' for stdin)")
    p.add_argument("signature", metavar="SIG", help="detached signature file")

    ca_actions = add_ca_commands(commands)
    add_verify_command(ca_actions)
    add_ct_commands(commands)
    add_proofs_commands(commands)
    add_names_commands(commands)
    return parser


def _describe(exc: TrustChainError) -> str:
    for cls, category in _CATEGORIES:
        if isinstance(exc, cls):
            return f"{category}: {exc}"
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 failure, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except TrustChainError as exc:
        note(_describe(exc))
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        note(f"error:{where}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
