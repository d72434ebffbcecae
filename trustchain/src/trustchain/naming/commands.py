"""The ``trustchain names`` subcommands: federated names from the command line.

Usage (global options ``--home`` / ``--passphrase-file`` as for every ``trustchain`` command)::

    trustchain --home DIR names add NAME --address ADDR [--address ADDR]... --signer PREFIX
        [--node-id HEX] [--ttl S] [--serial N] [--valid-days N]
        [--service SERVICE/PROTO:PORT]... [--text T]...
    trustchain --home DIR names revoke NAME --signer PREFIX [--serial N]
    trustchain --home DIR names export --out FILE
    trustchain --home DIR names import FILE
    trustchain --home DIR names list
    trustchain --home DIR names show NAME
    trustchain --home DIR names trust ROOT.pem

State
=====

The registry is ``HOME/names/names.db`` (:mod:`trustchain.naming.registry`).
``HOME/names/anchors.pem`` holds further roots trusted for names (``names trust``: another
federation's root, so its records can be imported and resolved here).

Trust
=====

Every command builds one trust store from the home: anchors = the home CA's roots
(``ca export-root``) and the roots of ``HOME/names/anchors.pem``; extra certificates = every
valid certificate of the home CA's non-retired keys; CRLs = a fresh full CRL signed by every
non-retired key of every CA of the home when the key store opens unlocked (a key-file store,
or ``--passphrase-file`` / ``$TRUSTCHAIN_PASSPHRASE``; otherwise a note says revocation of
signer certificates is not checked, as ``ca verify`` does); the CT log key of
``HOME/ct/log.db`` when it exists. A home with neither a CA nor trusted roots has no anchors
(:class:`~trustchain.errors.AnchorNotFound`).

Commands
========

* ``add``: the signer is what ``ca issue --out PREFIX`` wrote: ``PREFIX.pem`` (the chain, leaf
  first) and ``PREFIX.hybrid.key`` (the armored hybrid private key). The record is valid from
  now for ``--valid-days`` days, at most until the signer's certificate expires (a record
  cannot verify longer; the default is exactly that). ``--node-id`` defaults to the signer
  leaf's key id, ``--serial`` to one above the highest serial the registry knows for the name
  (or 1), ``--ttl`` to 300. ``--service stoq/udp:443`` adds an SRV endpoint. The record is
  signed, verified and stored; the serial is the only line on standard output.
* ``revoke``: signs a revocation of every record of NAME up to ``--serial`` (default: the
  current record's serial) and applies it; the name stops resolving. Prints ``revoked NAME
  through serial N``.
* ``export``: writes a record set (:mod:`trustchain.naming.zone`) of every unexpired record
  and every revocation, with the home's anchors and fresh CRLs; the file is what
  ``stoq dns-server --zone-file`` serves and ``names import`` replicates.
* ``import``: merges a peer's record set (verified against this home's trust store, not the
  file's anchors); prints ``accepted NAME serial N``, ``revoked NAME through serial N`` and
  ``refused NAME serial N: REASON: detail`` lines and a summary. Exit 1 if anything was
  refused.
* ``list``: one line per stored name: name, serial, TTL, expiry, status (``ok`` or the reason
  it no longer verifies), addresses.
* ``show``: the record of NAME, verified now; exit 1 with the reason if it does not resolve.
* ``trust``: adds the certificate(s) of ROOT.pem to ``HOME/names/anchors.pem``.

Wiring: :func:`add_names_commands` adds ``names`` to the top-level parser's subparsers; each
action sets ``handler`` (what :func:`trustchain.cli.main` calls) and ``names_handler``
``(args, home) -> exit status``, as :mod:`trustchain.ca.commands` does.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from trustchain.ca import hybrid
from trustchain.ca.authority import CertificateAuthority
from trustchain.ca.commands import HYBRID_KEY_LABEL
from trustchain.ca.store import CaKeyStatus, CertificateStatus
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.ca.verify_command import load_certificates
from trustchain.cli_common import home_dir, note, open_store, read_input
from trustchain.crypto.signatures import SigningKey
from trustchain.errors import AnchorNotFound, MalformedData, TrustChainError
from trustchain.files import write_atomically
from trustchain.naming.records import (
    InvalidNameRecord,
    NameRecord,
    NameRecordRejected,
    NamingError,
    Revocation,
    ServiceEndpoint,
    normalize_name,
    sign_record,
    sign_revocation,
)
from trustchain.naming.registry import NameNotFound, NameRegistry
from trustchain.naming.zone import add_crls, decode_record_set, encode_record_set

__all__ = [
    "ANCHORS_FILENAME",
    "NAMES_DIRNAME",
    "REGISTRY_FILENAME",
    "HomeTrust",
    "NamesCliError",
    "add_names_commands",
    "home_trust",
    "open_home_registry",
    "registry_path",
]

NAMES_DIRNAME: Final = "names"
REGISTRY_FILENAME: Final = "names.db"
ANCHORS_FILENAME: Final = "anchors.pem"
_CA_DATABASE: Final = Path("ca") / "ca.db"
_SERVICE: Final = re.compile(r"([^/:]+)/([^/:]+):([0-9]{1,5})")

Handler = Callable[[argparse.Namespace, Path], int]


class NamesCliError(NamingError):
    """A failure specific to the ``names`` command line (an unusable signer file, a signer
    certificate that has expired)."""


def _signers_path(home: Path) -> Path:
    """Which signer PREFIX ``names add`` used for each name on this home (local bookkeeping,
    never exported: a JSON object NAME -> absolute PREFIX)."""
    return home / NAMES_DIRNAME / "signers.json"


def _remember_signer(home: Path, name: str, prefix: str) -> None:
    path = _signers_path(home)
    known = _known_signers(home)
    known[name] = str(Path(prefix).resolve())
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(known, indent=1, sort_keys=True))
    os.replace(partial, path)  # readers see the old file or the new one, never half of one


def _known_signers(home: Path) -> dict[str, str]:
    path = _signers_path(home)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise NamesCliError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise NamesCliError(f"{path} is not a JSON object of names to prefixes")
    return data


def registry_path(home: Path) -> Path:
    """Where the registry of ``home`` lives."""
    return home / NAMES_DIRNAME / REGISTRY_FILENAME


def _anchors_path(home: Path) -> Path:
    return home / NAMES_DIRNAME / ANCHORS_FILENAME


# --- the home's trust -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HomeTrust:
    """What a home trusts for names (see "Trust" in the module docs): the store, its anchors
    (for ``names export``) and the fresh CRLs of the home's CA."""

    store: TrustStore
    anchors: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


def _home_ca(
    args: argparse.Namespace, home: Path
) -> tuple[list[x509.Certificate], list[x509.Certificate], list[x509.CertificateRevocationList]]:
    """The home CA's roots, its other valid certificates and fresh CRLs (none if locked)."""
    if not (home / _CA_DATABASE).exists():
        return [], [], []
    store_args = argparse.Namespace(**{**vars(args), "home": str(home)})
    store_args.passphrase_file = getattr(args, "passphrase_file", None)
    roots: list[x509.Certificate] = []
    certificates: list[x509.Certificate] = []
    crls: list[x509.CertificateRevocationList] = []
    with ExitStack() as stack:
        keystore = stack.enter_context(open_store(store_args, private=False))
        authority = stack.enter_context(CertificateAuthority(home, keystore))
        roots = authority.export_root()
        for ca in authority.store.cas():
            for key in authority.store.ca_keys(ca.name):
                if key.status is CaKeyStatus.RETIRED:
                    continue
                certificates += [
                    record.certificate()
                    for record in authority.store.certificates_for_key(key.key_id)
                    if record.status is CertificateStatus.VALID
                ]
                if keystore.unlocked:
                    crls.append(authority.crl(ca.name, key_version=key.version))
        if not keystore.unlocked:
            note(
                "the key store is locked: no fresh CRLs from the home's CA (revoked signer "
                "certificates are not detected)"
            )
    return roots, certificates, crls


def _trusted_roots(home: Path) -> list[x509.Certificate]:
    path = _anchors_path(home)
    return load_certificates(str(path)) if path.exists() else []


def _anchor_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = names[0].value if names else certificate.subject.rfc4514_string()
    text = value if isinstance(value, str) else value.decode("utf-8", "replace")
    return f"{text}#{certificate.serial_number:x}"[:100]


def home_trust(args: argparse.Namespace, home: Path) -> HomeTrust:
    """The trust of ``home`` (``args``: the CLI's, for ``--passphrase-file``);
    :class:`~trustchain.errors.AnchorNotFound` without any anchor."""
    roots, certificates, crls = _home_ca(args, home)
    seen = {_der(root) for root in roots}
    for root in _trusted_roots(home):
        if _der(root) not in seen:
            seen.add(_der(root))
            roots.append(root)
    if not roots:
        raise AnchorNotFound(
            f"no trust anchors: {home} has no CA and trusts no roots for names "
            "(trustchain names trust ROOT.pem)"
        )
    store = TrustStore([TrustAnchor(root, _anchor_name(root)) for root in roots])
    for certificate in certificates:
        store.add_certificate(certificate)
    for problem in add_crls(store, crls):
        note(f"a CRL of the home's CA was not used: {problem}")
    _add_log_key(home, store)
    return HomeTrust(store, tuple(roots), tuple(crls))


def _add_log_key(home: Path, store: TrustStore) -> None:
    from trustchain.ct import commands as ct_commands
    from trustchain.ct.log import TransparencyLog

    path = ct_commands.log_path(home)
    if path.exists():
        with TransparencyLog.open(path, None, create=False) as log:
            store.add_log_key(log.public_key)


@contextmanager
def open_home_registry(
    args: argparse.Namespace, home: Path
) -> Iterator[tuple[NameRegistry, HomeTrust]]:
    """The registry of ``home``, verifying with :func:`home_trust`, and that trust."""
    trust = home_trust(args, home)
    with NameRegistry.open(registry_path(home), trust.store) as registry:
        yield registry, trust


# --- the signer -----------------------------------------------------------------------------------


def _read_signing_key(path: Path) -> SigningKey:
    data = read_input(str(path))
    stripped = data.strip()
    begin = f"-----BEGIN {HYBRID_KEY_LABEL}-----".encode()
    end = f"-----END {HYBRID_KEY_LABEL}-----".encode()
    if stripped.startswith(begin):
        if not stripped.endswith(end):
            raise NamesCliError(f"{path}: unterminated {HYBRID_KEY_LABEL} block")
        try:
            data = base64.b64decode(
                b"".join(stripped[len(begin) : -len(end)].split()), validate=True
            )
        except (binascii.Error, ValueError) as exc:
            raise NamesCliError(f"{path}: the armored key is not valid base64") from exc
    try:
        return SigningKey.from_bytes(data)
    except TrustChainError as exc:
        raise NamesCliError(f"{path}: not a hybrid private key: {exc}") from exc


def _signer(prefix: str) -> tuple[SigningKey, list[x509.Certificate]]:
    chain = load_certificates(f"{prefix}.pem")
    key = _read_signing_key(Path(f"{prefix}.hybrid.key"))
    return key, chain


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --- commands -------------------------------------------------------------------------------------


def cmd_add(args: argparse.Namespace, home: Path) -> int:
    """``names add NAME --address ADDR... --signer PREFIX``: sign and store a record."""
    name = normalize_name(args.name)
    key, chain = _signer(args.signer)
    leaf = chain[0]
    now = _now()
    leaf_end = leaf.not_valid_after_utc
    if leaf_end <= now:
        raise NamesCliError(f"the signer's certificate expired at {leaf_end.isoformat()}")
    not_after = leaf_end
    if args.valid_days is not None:
        wanted = now + timedelta(days=args.valid_days)
        if wanted > leaf_end:
            note(
                f"the record ends when the signer's certificate does ({leaf_end.isoformat()}), "
                f"not after {args.valid_days} days"
            )
        not_after = min(wanted, leaf_end)
    node_id = args.node_id
    if node_id is None:
        try:
            node_id = hybrid.certificate_public_key(leaf).key_id
        except MalformedData as exc:
            raise NamesCliError(f"{args.signer}.pem: the leaf has no hybrid key: {exc}") from exc
    with open_home_registry(args, home) as (registry, _):
        serial = args.serial if args.serial is not None else registry.next_serial(name)
        record = NameRecord(
            name,
            node_id,
            tuple(args.address),
            tuple(args.service),
            tuple(args.text),
            args.ttl,
            serial,
            not_before=now,
            not_after=not_after,
        )
        registry.add(sign_record(record, key, chain), at=now)
    _remember_signer(home, record.name, args.signer)
    note(
        f"added {record.name} serial {record.serial}: {', '.join(record.addresses)}, valid "
        f"until {record.not_after.isoformat()}"
    )
    print(record.serial)
    return 0


def cmd_revoke(args: argparse.Namespace, home: Path) -> int:
    """``names revoke NAME [--signer PREFIX] [--serial N]`` (default signer: the one
    ``names add`` used for NAME on this home)."""
    name = normalize_name(args.name)
    prefix = args.signer
    if prefix is None:
        prefix = _known_signers(home).get(name)
        if prefix is None:
            raise NamesCliError(
                f"no --signer given, and {name} was not added on this home: give --signer PREFIX"
            )
    key, chain = _signer(prefix)
    now = _now()
    with open_home_registry(args, home) as (registry, _):
        serial = args.serial
        if serial is None:
            current = registry.signed(name)
            if current is None:
                raise NameNotFound(f"{name} has no record to revoke (give --serial)")
            serial = current.record.serial
        revocation = Revocation(name, serial, now)
        registry.revoke(sign_revocation(revocation, key, chain), at=now)
    print(f"revoked {name} through serial {serial}")
    return 0


def cmd_export(args: argparse.Namespace, home: Path) -> int:
    """``names export --out FILE``: the record set of this home."""
    with open_home_registry(args, home) as (registry, trust):
        record_set = registry.record_set(trust.anchors, crls=trust.crls)
    out = Path(args.out)
    write_atomically(out, encode_record_set(record_set))
    print(
        f"exported {len(record_set.records)} record(s) and {len(record_set.revocations)} "
        f"revocation(s) to {out}"
    )
    return 0


def _who(rejection: NameRecordRejected) -> str:
    name = rejection.name or "(undecodable)"
    return name if rejection.serial is None else f"{name} serial {rejection.serial}"


def cmd_import(args: argparse.Namespace, home: Path) -> int:
    """``names import FILE``: merge a peer's record set."""
    record_set = decode_record_set(read_input(args.file))
    with open_home_registry(args, home) as (registry, _):
        report = registry.merge(record_set)
    for revocation in report.revoked:
        print(f"revoked {revocation.name} through serial {revocation.serial}")
    for record in report.accepted:
        print(f"accepted {record.name} serial {record.serial}")
    for rejection in report.refused:
        print(f"refused {_who(rejection)}: {rejection}")
    print(
        f"{len(report.accepted)} accepted, {len(report.revoked)} revoked, "
        f"{report.unchanged} unchanged, {len(report.refused)} refused"
    )
    return 1 if report.refused else 0


def cmd_list(args: argparse.Namespace, home: Path) -> int:
    """``names list``: every stored name and whether it resolves now."""
    rows: list[tuple[str, ...]] = []
    with open_home_registry(args, home) as (registry, _):
        for name in registry.names():
            signed = registry.signed(name)
            if signed is None:  # deleted between the two reads
                continue
            record = signed.record
            try:
                registry.resolve(name)
                status = "ok"
            except NameRecordRejected as exc:
                status = exc.reason.name
            except NameNotFound:
                continue
            rows.append(
                (
                    name,
                    str(record.serial),
                    str(record.ttl),
                    f"{record.not_after:%Y-%m-%dT%H:%M:%SZ}",
                    status,
                    " ".join(record.addresses),
                )
            )
    if not rows:
        print("no names")
        return 0
    header = ("NAME", "SERIAL", "TTL", "NOT AFTER", "STATUS", "ADDRESSES")
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    for row in (header, *rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def cmd_show(args: argparse.Namespace, home: Path) -> int:
    """``names show NAME``: the verified record."""
    with open_home_registry(args, home) as (registry, _):
        record = registry.resolve(args.name)
        signed = registry.signed(record.name)
    print(f"name: {record.name}")
    print(f"node id: {record.node_id.hex()}")
    print(f"addresses: {', '.join(record.addresses)}")
    for service in record.services:
        print(
            f"service: {service.owner(record.name)} port {service.port} priority "
            f"{service.priority} weight {service.weight}"
        )
    for text in record.texts:
        print(f"text: {text!r}")
    print(f"ttl: {record.ttl}")
    print(f"serial: {record.serial}")
    print(f"valid: {record.not_before.isoformat()} to {record.not_after.isoformat()}")
    if signed is not None:
        leaf = signed.signer
        print(f"signer: {leaf.subject.rfc4514_string()} (serial {leaf.serial_number:x})")
    return 0


def cmd_trust(args: argparse.Namespace, home: Path) -> int:
    """``names trust ROOT.pem``: trust further roots for names."""
    added = load_certificates(args.root)
    for index, certificate in enumerate(added):
        try:
            TrustAnchor(certificate, f"candidate {index}")
        except MalformedData as exc:
            raise NamesCliError(
                f"{args.root}: certificate {index} cannot be an anchor: {exc}"
            ) from exc
    held = _trusted_roots(home)
    seen = {_der(certificate) for certificate in held}
    fresh = [certificate for certificate in added if _der(certificate) not in seen]
    if fresh:
        path = _anchors_path(home)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(path, b"".join(c.public_bytes(Encoding.PEM) for c in (*held, *fresh)))
    for certificate in added:
        state = "now trusted" if certificate in fresh else "already trusted"
        subject = certificate.subject.rfc4514_string()
        print(f"{state} for names: {subject} (serial {certificate.serial_number:x})")
    return 0


# --- parser ---------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    """The ``handler`` :func:`trustchain.cli.main` calls: the home as the CLI resolves it."""
    handler: Handler = args.names_handler
    return handler(args, home_dir(args))


def _count(minimum: int, maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be {minimum} to {maximum}, got {value}")
        return value

    return parse


def _node_id(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hexadecimal: {text!r}") from None
    if len(value) != 32:
        raise argparse.ArgumentTypeError(f"a node id is 32 bytes (64 hex digits), got {len(value)}")
    return value


def _service(text: str) -> ServiceEndpoint:
    match = _SERVICE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected SERVICE/PROTO:PORT (e.g. stoq/udp:443), got {text!r}"
        )
    try:
        return ServiceEndpoint(match.group(1), match.group(2), int(match.group(3)))
    except InvalidNameRecord as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_names_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``names`` and its actions to the top-level parser's ``subparsers``."""
    names = subparsers.add_parser(
        "names",
        help="federated names signed by TrustChain certificates",
        description="Signed name records in HOME/names/names.db, trusted through the home's CA.",
    )
    actions = names.add_subparsers(dest="names_command", metavar="ACTION", required=True)

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=help_text
        )
        sub.set_defaults(handler=_run, names_handler=handler)
        return sub

    p = add("add", cmd_add, "sign and store a name record")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--address", action="append", required=True, metavar="ADDR")
    p.add_argument(
        "--signer", required=True, metavar="PREFIX", help="PREFIX.pem, PREFIX.hybrid.key"
    )
    p.add_argument("--node-id", type=_node_id, metavar="HEX", help="default: the signer's key id")
    p.add_argument("--ttl", type=_count(0, 2**31 - 1), default=300, metavar="S")
    p.add_argument("--serial", type=_count(1, 2**63 - 1), metavar="N")
    p.add_argument(
        "--valid-days",
        type=_count(1, 36500),
        metavar="N",
        help="default: until the signer's certificate expires",
    )
    p.add_argument(
        "--service", type=_service, action="append", default=[], metavar="SERVICE/PROTO:PORT"
    )
    p.add_argument("--text", action="append", default=[], metavar="T")

    p = add("revoke", cmd_revoke, "revoke every record of a name up to a serial")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--signer",
        metavar="PREFIX",
        help="PREFIX.pem, PREFIX.hybrid.key (default: the signer `names add` used here)",
    )
    p.add_argument("--serial", type=_count(1, 2**63 - 1), metavar="N", help="default: current")

    p = add("export", cmd_export, "write the record set (records, revocations, anchors)")
    p.add_argument("--out", required=True, metavar="FILE")

    p = add("import", cmd_import, "merge a record set from a peer")
    p.add_argument("file", metavar="FILE")

    add("list", cmd_list, "list the stored names")

    p = add("show", cmd_show, "show the verified record of a name")
    p.add_argument("name", metavar="NAME")

    p = add("trust", cmd_trust, "trust further roots for names")
    p.add_argument("root", metavar="ROOT.pem")
