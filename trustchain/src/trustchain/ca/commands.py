"""The ``trustchain ca`` subcommands: init, issue-intermediate, issue, renew, export-root,
revoke, crl.

Usage (global options ``--home`` / ``--passphrase-file`` as for every ``trustchain`` command)::

    trustchain --home DIR ca init --name NAME [--validity-days N] [--path-length N]
                                  [--crl-shards N]
    trustchain --home DIR ca issue-intermediate --name ENTITY --namespace ENTITY.hypermesh
                                  [--issuer NAME] [--path-length N] [--validity-days N]
                                  [--ip-range CIDR]... [--crl-shards N]
    trustchain --home DIR ca issue --issuer ENTITY --kind node|service|asset --name NAME
                                  --out PREFIX [--dns NAME]... [--ip ADDRESS]...
                                  [--asset-id HEX] [--service-id HEX] [--validity-hours N]
                                  [--public-key FILE]
    trustchain --home DIR ca renew SERIAL [--no-rekey] [--validity-hours N] [--out PREFIX]
    trustchain --home DIR ca export-root --out ROOT.pem
    trustchain --home DIR ca revoke SERIAL [--reason keyCompromise]
    trustchain --home DIR ca crl [--issuer NAME] [--shard N] --out FILE [--der]

Wiring: :func:`add_ca_commands` adds ``ca`` to the top-level parser's subparsers; each action
sets ``handler`` (what :func:`trustchain.cli.main` calls) and ``ca_handler`` ``(args, home) ->
exit status``, as :mod:`trustchain.ct.commands` does.

State: the CA database ``HOME/ca/ca.db`` and the key store in ``HOME`` (CA keys ``ca/<name>``,
generated leaf keys ``leaf/<name>``). Every issuing command logs the certificate in the
transparency log ``HOME/ct/log.db`` (signed by the key-store key ``ct-log``, created on first
use; opened by :mod:`trustchain.ct.commands`) and embeds the SCT.

Output: issuing commands print the new certificate's serial number (lowercase hex) as the only
line on standard output, details on standard error. ``issue`` (and ``renew --out``) write
``PREFIX.pem`` (the leaf, then its intermediates), and, when the CA generated the key,
``PREFIX.key`` (the Ed25519 component as an unencrypted PKCS#8 PEM private key, what TLS
stacks such as aioquic load) and ``PREFIX.hybrid.key`` (the whole hybrid private key envelope,
armored ``TRUSTCHAIN SIGNING PRIVATE KEY``), both created ``0600``. SERIAL arguments take hex,
with or without ``0x`` or colons. ``--reason`` takes RFC 5280 reason names.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustchain.ca import hybrid
from trustchain.ca.authority import CertificateAuthority, Issued
from trustchain.ca.profiles import (
    DEFAULT_CRL_SHARDS,
    DEFAULT_INTERMEDIATE_PATH_LENGTH,
    DEFAULT_INTERMEDIATE_VALIDITY,
    DEFAULT_LEAF_VALIDITY,
    DEFAULT_ROOT_VALIDITY,
    LEAF_KINDS,
)
from trustchain.ca.store import parse_serial
from trustchain.cli_common import armor, home_dir, note, open_store, read_input
from trustchain.crypto.keystore import KeyStore
from trustchain.crypto.signatures import VerifyKey
from trustchain.errors import CertificateNotFound, MalformedData, TrustChainError

__all__ = ["HYBRID_KEY_LABEL", "add_ca_commands", "dispatch"]

#: Armor label of ``PREFIX.hybrid.key``.
HYBRID_KEY_LABEL: Final = "TRUSTCHAIN SIGNING PRIVATE KEY"
_PUBLIC_KEY_LABEL: Final = "TRUSTCHAIN SIGNING PUBLIC KEY"
_REASONS: Final = tuple(
    flag.value
    for flag in x509.ReasonFlags
    if flag not in (x509.ReasonFlags.certificate_hold, x509.ReasonFlags.remove_from_crl)
)

Handler = Callable[[argparse.Namespace, Path], int]


class CaCliError(TrustChainError):
    """A failure specific to the ``ca`` command line (a bad input file)."""


# --- plumbing -----------------------------------------------------------------------------------


@contextmanager
def _authority(
    args: argparse.Namespace, home: Path, *, signs: bool, create: bool = False
) -> Iterator[CertificateAuthority]:
    """The CA of ``home``: its key store (unlocked when ``signs``) and, for issuing commands,
    the transparency log with its key."""
    from trustchain.ct import commands as ct_commands

    store_args = argparse.Namespace(**{**vars(args), "home": str(home)})
    store_args.passphrase_file = getattr(args, "passphrase_file", None)
    with open_store(store_args, private=signs, create=create) as store:
        if not getattr(args, "logs", False):
            with CertificateAuthority(home, store) as authority:
                yield authority
            return
        with (
            ct_commands.open_log(store, home) as log,
            CertificateAuthority(home, store, log) as authority,
        ):
            yield authority


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file: created (or truncated) ``0600`` before any byte is written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_issued(store: KeyStore, issued: Issued, prefix: str) -> list[Path]:
    """Write PREFIX.pem and, if the key store holds the key, PREFIX.key and PREFIX.hybrid.key."""

    written = [Path(f"{prefix}.pem")]
    written[0].write_bytes(issued.pem())
    if issued.key_name is None or issued.key_version is None:
        return written
    key = store.signing_key(issued.key_name, issued.key_version)
    pkcs8 = hybrid.classical_private_key(key).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_path, hybrid_path = Path(f"{prefix}.key"), Path(f"{prefix}.hybrid.key")
    _write_private(key_path, pkcs8)
    _write_private(hybrid_path, armor(key.to_bytes(), HYBRID_KEY_LABEL))
    return [*written, key_path, hybrid_path]


def _report(issued: Issued, what: str, files: Sequence[Path] = ()) -> None:
    cert = issued.certificate
    start = f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
    end = f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    note(
        f"issued {what} {cert.subject.rfc4514_string()} serial {issued.serial:x}, "
        f"valid {start} to {end}"
    )
    for path in files:
        note(f"  wrote {path}")
    print(f"{issued.serial:x}")


def _read_public_key(path: str) -> VerifyKey:

    data = read_input(path)
    stripped = data.strip()
    begin = f"-----BEGIN {_PUBLIC_KEY_LABEL}-----".encode()
    end = f"-----END {_PUBLIC_KEY_LABEL}-----".encode()
    if stripped.startswith(begin):
        if not stripped.endswith(end):
            raise CaCliError(f"{path}: unterminated {_PUBLIC_KEY_LABEL} block")
        try:
            data = base64.b64decode(
                b"".join(stripped[len(begin) : -len(end)].split()), validate=True
            )
        except (binascii.Error, ValueError) as exc:
            raise MalformedData(f"{path}: the armored key is not valid base64") from exc
    return VerifyKey.from_bytes(data)


# --- commands -----------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, home: Path) -> int:
    """``ca init --name NAME``: create the root CA."""
    with _authority(args, home, signs=True, create=True) as authority:
        issued = authority.init_root(
            args.name,
            timedelta(days=args.validity_days),
            path_length=args.path_length,
            crl_shards=args.crl_shards,
        )
    _report(issued, "root CA")
    return 0


def cmd_issue_intermediate(args: argparse.Namespace, home: Path) -> int:
    """``ca issue-intermediate --name ENTITY --namespace NS``: create an entity CA."""
    with _authority(args, home, signs=True) as authority:
        issued = authority.issue_intermediate(
            args.name,
            args.namespace,
            issuer=args.issuer,
            path_length=args.path_length,
            validity=timedelta(days=args.validity_days),
            ip_networks=args.ip_range,
            crl_shards=args.crl_shards,
        )
    _report(issued, "intermediate CA")
    return 0


def cmd_issue(args: argparse.Namespace, home: Path) -> int:
    """``ca issue --issuer ENTITY --kind KIND --name NAME --out PREFIX``: issue a leaf."""
    subject_key = None if args.public_key is None else _read_public_key(args.public_key)
    with _authority(args, home, signs=True) as authority:
        issued = authority.issue(
            args.issuer,
            args.kind,
            args.name,
            subject_key=subject_key,
            dns_names=args.dns,
            ip_addresses=args.ip,
            asset_id=args.asset_id,
            service_id=args.service_id,
            validity=timedelta(hours=args.validity_hours),
        )
        files = _write_issued(authority.keystore, issued, args.out)
    _report(issued, f"{args.kind} certificate", files)
    return 0


def cmd_renew(args: argparse.Namespace, home: Path) -> int:
    """``ca renew SERIAL``: issue the successor of a leaf (a new key unless --no-rekey)."""
    validity = None if args.validity_hours is None else timedelta(hours=args.validity_hours)
    with _authority(args, home, signs=True) as authority:
        issued = authority.renew(args.serial, rekey=not args.no_rekey, validity=validity)
        files = [] if args.out is None else _write_issued(authority.keystore, issued, args.out)
    _report(issued, "renewed certificate", files)
    return 0


def cmd_export_root(args: argparse.Namespace, home: Path) -> int:
    """``ca export-root --out ROOT.pem``: the trust anchors (two during a root rollover)."""
    with _authority(args, home, signs=False) as authority:
        roots = authority.export_root()
    Path(args.out).write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in roots))
    for cert in roots:
        note(f"exported {cert.subject.rfc4514_string()} serial {cert.serial_number:x}")
    return 0


def cmd_revoke(args: argparse.Namespace, home: Path) -> int:
    """``ca revoke SERIAL --reason REASON``."""
    with _authority(args, home, signs=True) as authority:
        authority.revoke(args.serial, args.reason)
        record = authority.record(args.serial)
    print(f"revoked {record.serial:x} ({record.kind} {record.name}): {args.reason}")
    return 0


def cmd_crl(args: argparse.Namespace, home: Path) -> int:
    """``ca crl [--issuer NAME] [--shard N] --out FILE``: sign a fresh CRL."""
    with _authority(args, home, signs=True) as authority:
        crl = authority.crl(args.issuer, args.shard)
    encoding = serialization.Encoding.DER if args.der else serialization.Encoding.PEM
    Path(args.out).write_bytes(crl.public_bytes(encoding))
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    scope = "full CRL" if args.shard is None else f"CRL shard {args.shard}"
    print(f"wrote {scope} number {number} of {crl.issuer.rfc4514_string()}: {len(crl)} revoked")
    return 0


# --- parser -------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    """The ``handler`` :func:`trustchain.cli.main` calls: home as the CLI resolves it."""

    handler: Handler = args.ca_handler
    return handler(args, home_dir(args))


def dispatch(args: argparse.Namespace, home: Path) -> int:
    """Run the ``ca`` action ``args`` selects, for the TrustChain home ``home``."""
    handler: Handler = args.ca_handler
    return handler(args, home)


def _serial(text: str) -> int:
    try:
        return parse_serial(text)
    except CertificateNotFound as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _hex_bytes(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hexadecimal: {text!r}") from None
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def add_ca_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add ``ca`` and its actions to the top-level parser's ``subparsers``.

    Returns the ``ca`` command's own subparsers, so further actions (``ca verify``, from
    :mod:`trustchain.ca.verify_command`) can be added next to these.
    """
    ca = subparsers.add_parser(
        "ca",
        help="the certificate authority",
        description="The TrustChain certificate authority in HOME/ca (keys in the key store, "
        "certificates logged in HOME/ct/log.db).",
    )
    actions = ca.add_subparsers(dest="ca_command", metavar="ACTION", required=True)

    def add(name: str, handler: Handler, help_text: str, *, logs: bool) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=help_text
        )
        sub.set_defaults(handler=_run, ca_handler=handler, logs=logs)
        return sub

    p = add("init", cmd_init, "create the root CA", logs=True)
    p.add_argument("--name", required=True, metavar="NAME")
    p.add_argument(
        "--validity-days", type=_count(1), default=DEFAULT_ROOT_VALIDITY.days, metavar="N"
    )
    p.add_argument("--path-length", type=_count(0), metavar="N", help="default: unlimited")
    p.add_argument("--crl-shards", type=_count(1), default=DEFAULT_CRL_SHARDS, metavar="N")

    p = add(
        "issue-intermediate",
        cmd_issue_intermediate,
        "create an entity (intermediate) CA",
        logs=True,
    )
    p.add_argument("--name", required=True, metavar="ENTITY")
    p.add_argument("--namespace", required=True, metavar="DNS", help="e.g. ENTITY.hypermesh")
    p.add_argument("--issuer", metavar="NAME", help="issuing CA (default: the root)")
    p.add_argument(
        "--path-length", type=_count(0), default=DEFAULT_INTERMEDIATE_PATH_LENGTH, metavar="N"
    )
    p.add_argument(
        "--validity-days", type=_count(1), default=DEFAULT_INTERMEDIATE_VALIDITY.days, metavar="N"
    )
    p.add_argument("--ip-range", action="append", default=[], metavar="CIDR")
    p.add_argument("--crl-shards", type=_count(1), default=DEFAULT_CRL_SHARDS, metavar="N")

    p = add("issue", cmd_issue, "issue a node, service or asset certificate", logs=True)
    p.add_argument("--issuer", required=True, metavar="ENTITY")
    p.add_argument("--kind", required=True, choices=[k.value for k in LEAF_KINDS])
    p.add_argument("--name", required=True, metavar="NAME", help="DNS name in the namespace")
    p.add_argument("--out", required=True, metavar="PREFIX")
    p.add_argument("--dns", action="append", default=[], metavar="NAME", help="extra DNS name")
    p.add_argument("--ip", action="append", default=[], type=_ip, metavar="ADDRESS")
    p.add_argument("--asset-id", type=_hex_bytes, metavar="HEX")
    p.add_argument("--service-id", type=_hex_bytes, metavar="HEX")
    p.add_argument(
        "--validity-hours",
        type=_count(1),
        default=int(DEFAULT_LEAF_VALIDITY.total_seconds() // 3600),
        metavar="N",
    )
    p.add_argument(
        "--public-key",
        metavar="FILE",
        help="certify this hybrid public key (trustchain keys export-public) instead of "
        "generating one; no key files are written",
    )

    p = add("renew", cmd_renew, "issue the successor of a leaf certificate", logs=True)
    p.add_argument("serial", type=_serial, metavar="SERIAL")
    p.add_argument("--no-rekey", action="store_true", help="keep the subject's key")
    p.add_argument("--validity-hours", type=_count(1), metavar="N", help="default: as before")
    p.add_argument("--out", metavar="PREFIX", help="write PREFIX.pem (and key files)")

    p = add("export-root", cmd_export_root, "write the root certificate(s)", logs=False)
    p.add_argument("--out", required=True, metavar="ROOT.pem")

    p = add("revoke", cmd_revoke, "revoke a certificate", logs=False)
    p.add_argument("serial", type=_serial, metavar="SERIAL")
    p.add_argument(
        "--reason", choices=_REASONS, default=x509.ReasonFlags.unspecified.value, metavar="REASON"
    )

    p = add("crl", cmd_crl, "sign a CRL (full, or one shard)", logs=False)
    p.add_argument("--issuer", metavar="NAME", help="default: the root")
    p.add_argument("--shard", type=_count(0), metavar="N", help="default: the full CRL")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--der", action="store_true", help="DER instead of PEM")
    return actions
