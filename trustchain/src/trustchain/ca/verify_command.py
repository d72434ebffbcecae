"""``trustchain ca verify``: validate a certificate chain from the command line.

Usage (global options ``--home`` / ``--passphrase-file`` as for every ``trustchain`` command)::

    trustchain --home DIR ca verify CHAIN.pem [--root ROOT.pem]... [--crl FILE]...
        [--purpose server|client|any] [--require-sct] [--require-revocation]
        [--at ISO8601] [--dns NAME] [--ip ADDRESS] [--uri URI] [--no-home-crls]

``CHAIN.pem``: the leaf first, then any other certificates (what ``ca issue --out`` writes);
PEM, or a single DER certificate.

Where trust comes from
======================

* **Anchors**: the ``--root`` files (PEM, several certificates per file allowed) when given,
  else the home's CA roots (``ca export-root``: the current root, and during a rollover the
  previous one). With neither: :class:`~trustchain.errors.AnchorNotFound`.
* **Extra certificates** (path building and CRL issuers): the presented chain's certificates
  and, when the home has a CA, every valid certificate of its CA keys that are not retired
  (intermediates, re-certifications, rollover cross-certificates).
* **CRLs**: the ``--crl`` files (PEM or DER; a stale one is skipped with a note), and, when the
  home has a CA whose key store opens unlocked (a key-file store, or ``--passphrase-file`` /
  ``$TRUSTCHAIN_PASSPHRASE``) and ``--no-home-crls`` is not given, a fresh full CRL signed by
  every non-retired key of every CA of the home: the home *is* the CA, so its revocations count
  at once. Signing a CRL advances that CA's CRL number, as ``ca crl`` does. Without an
  unlocked key store, a note says revocation comes from ``--crl`` only.
* **CT logs**: the home's transparency log (``HOME/ct/log.db``), if it exists.
* **Policy**: every anchor gets ``--require-sct`` / ``--require-revocation``; otherwise a
  missing SCT or revocation status lowers the level to PARTIAL (see
  :mod:`trustchain.ca.validation`).

Output and exit status
======================

Trusted: exit 0; standard output says ``trust level: <LEVEL>``, then the anchor, the path (leaf
first) and any notes. Rejected: exit 1; ``trust level: UNTRUSTED`` on standard output and
``trustchain: rejected: <REASON> (certificate <i>): <detail>`` on standard error. Other
failures (unreadable files, malformed PEM...) exit 1 with one line on standard error, as every
``trustchain`` command; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography import x509

from trustchain.ca.authority import CertificateAuthority
from trustchain.ca.store import CaKeyStatus, CertificateStatus
from trustchain.ca.trust import PARSE_ERRORS, TrustAnchor, TrustPolicy, TrustStore
from trustchain.ca.validation import Purpose, ValidationReport, validate
from trustchain.cli_common import home_dir, note, open_store, read_input
from trustchain.errors import (
    AnchorNotFound,
    CertificateRejected,
    MalformedData,
    StaleCrl,
)

__all__ = ["add_verify_command", "cmd_verify", "load_certificates", "load_crls"]

_PEM_MARKER: Final = b"-----BEGIN "
_CA_DATABASE: Final = Path("ca") / "ca.db"

Handler = Callable[[argparse.Namespace, Path], int]


# --- reading files ------------------------------------------------------------------------------


def _read(path: str) -> bytes:

    return read_input(path)


def load_certificates(path: str) -> list[x509.Certificate]:
    """The certificates in ``path``: PEM (any number) or one DER certificate.

    :class:`MalformedData` if there is none or one does not parse.
    """
    data = _read(path)
    try:
        if _PEM_MARKER in data:
            certificates = x509.load_pem_x509_certificates(data)
        else:
            certificates = [x509.load_der_x509_certificate(data)]
    except PARSE_ERRORS as exc:
        raise MalformedData(f"{path}: not a certificate file: {exc}") from exc
    if not certificates:
        raise MalformedData(f"{path}: no certificate")
    return certificates


def load_crls(path: str) -> list[x509.CertificateRevocationList]:
    """The CRLs in ``path``: PEM (any number of ``X509 CRL`` blocks) or one DER CRL."""
    data = _read(path)
    try:
        if _PEM_MARKER not in data:
            return [x509.load_der_x509_crl(data)]
        crls: list[x509.CertificateRevocationList] = []
        marker = b"-----BEGIN X509 CRL-----"
        end = b"-----END X509 CRL-----"
        offset = data.find(marker)
        while offset != -1:
            stop = data.find(end, offset)
            if stop == -1:
                raise MalformedData(f"{path}: unterminated X509 CRL block")
            crls.append(x509.load_pem_x509_crl(data[offset : stop + len(end)] + b"\n"))
            offset = data.find(marker, stop)
    except PARSE_ERRORS as exc:
        raise MalformedData(f"{path}: not a CRL file: {exc}") from exc
    if not crls:
        raise MalformedData(f"{path}: no X509 CRL block")
    return crls


def _common_name(certificate: x509.Certificate) -> str:
    try:
        names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    except PARSE_ERRORS:
        names = []
    value = names[0].value if names else certificate.subject.rfc4514_string()
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _anchor_names(certificates: Sequence[x509.Certificate]) -> list[str]:
    """Names for anchors: the common name, with the serial when two share one (rollover)."""
    names = [_common_name(cert) for cert in certificates]
    return [
        name if names.count(name) == 1 else f"{name}#{cert.serial_number:x}"[:80]
        for name, cert in zip(names, certificates, strict=True)
    ]


# --- the home's CA ------------------------------------------------------------------------------


@contextmanager
def _home_authority(args: argparse.Namespace, home: Path) -> Iterator[CertificateAuthority | None]:
    """The home's :class:`~trustchain.ca.authority.CertificateAuthority` (its key store opened
    without prompting), or None when the home has no CA database."""
    if not (home / _CA_DATABASE).exists():
        yield None
        return

    store_args = argparse.Namespace(**{**vars(args), "home": str(home)})
    store_args.passphrase_file = getattr(args, "passphrase_file", None)
    with ExitStack() as stack:
        keystore = stack.enter_context(open_store(store_args, private=False))
        yield stack.enter_context(CertificateAuthority(home, keystore))


def _home_ca_certificates(authority: CertificateAuthority) -> list[x509.Certificate]:
    certificates: list[x509.Certificate] = []
    for ca in authority.store.cas():
        for key in authority.store.ca_keys(ca.name):
            if key.status is CaKeyStatus.RETIRED:
                continue
            certificates.extend(
                record.certificate()
                for record in authority.store.certificates_for_key(key.key_id)
                if record.status is CertificateStatus.VALID
            )
    return certificates


def _home_crls(authority: CertificateAuthority) -> list[x509.CertificateRevocationList]:
    """A fresh full CRL from every non-retired key of every CA of the home."""
    crls: list[x509.CertificateRevocationList] = []
    for ca in authority.store.cas():
        for key in authority.store.ca_keys(ca.name):
            if key.status is not CaKeyStatus.RETIRED:
                crls.append(authority.crl(ca.name, key_version=key.version))
    return crls


def _home_log_key(home: Path, store: TrustStore) -> None:
    from trustchain.ct import commands as ct_commands
    from trustchain.ct.log import TransparencyLog

    path = ct_commands.log_path(home)
    if path.exists():
        with TransparencyLog.open(path, None, create=False) as log:
            store.add_log_key(log.public_key)


# --- the command --------------------------------------------------------------------------------


def _build_store(
    args: argparse.Namespace,
    home: Path,
    chain: Sequence[x509.Certificate],
    authority: CertificateAuthority | None,
) -> TrustStore:
    policy = TrustPolicy(
        require_sct=args.require_sct, require_revocation_info=args.require_revocation
    )
    roots = [cert for path in args.root for cert in load_certificates(path)]
    if not roots and authority is not None:
        roots = authority.export_root()
    if not roots:
        raise AnchorNotFound(f"no trust anchors: {home} has no CA and no --root was given")
    anchors = [
        TrustAnchor(cert, name, policy=policy)
        for cert, name in zip(roots, _anchor_names(roots), strict=True)
    ]
    store = TrustStore(anchors)
    extra = list(chain[1:])
    if authority is not None:
        extra += _home_ca_certificates(authority)
    for certificate in extra:
        try:
            store.add_certificate(certificate)
        except MalformedData:
            continue  # validation reports a malformed presented certificate itself
    crls = [crl for path in args.crl for crl in load_crls(path)]
    if authority is not None and not args.no_home_crls:
        if authority.keystore.unlocked:
            crls += _home_crls(authority)
        else:
            note(
                "the key store is locked: no fresh CRLs from the home's CA (revocation "
                "information from --crl only)"
            )
    for crl in crls:
        try:
            store.add_crl(crl)
        except StaleCrl as exc:
            note(f"skipped a CRL of {crl.issuer.rfc4514_string()}: {exc}")
    _home_log_key(home, store)
    return store


def _print_report(report: ValidationReport) -> None:
    print(f"trust level: {report.trust_level.name}")
    print(f"anchor: {report.anchor}")
    print("path:")
    for position, certificate in enumerate(report.path):
        print(
            f"  {position} {certificate.subject.rfc4514_string()} "
            f"(serial {certificate.serial_number:x})"
        )
    for remark in report.notes:
        print(f"note: {remark}")


def cmd_verify(args: argparse.Namespace, home: Path) -> int:
    """``ca verify CHAIN.pem``: 0 and the trust level if trusted, 1 and the reason if not."""
    chain = load_certificates(args.chain)
    with _home_authority(args, home) as authority:
        store = _build_store(args, home, chain, authority)
    try:
        report = validate(
            chain,
            store,
            at=args.at,
            purpose=Purpose(args.purpose),
            dns_name=args.dns,
            ip=args.ip,
            uri=args.uri,
        )
    except CertificateRejected as exc:
        print("trust level: UNTRUSTED")
        where = "" if exc.index is None else f" (certificate {exc.index})"
        note(f"rejected: {exc.reason.name}{where}: {exc.detail}")
        return 1
    _print_report(report)
    return 0


# --- parser -------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    """The ``handler`` :func:`trustchain.cli.main` calls: the home as the CLI resolves it."""

    handler: Handler = args.ca_handler
    return handler(args, home_dir(args))


def _time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def add_verify_command(ca_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``verify`` to the ``ca`` command's actions (``ca_subparsers``).

    Sets ``handler`` (what :func:`trustchain.cli.main` calls) and ``ca_handler`` ``(args,
    home) -> exit status``, like the other ``ca`` actions.
    """
    help_text = "validate a certificate chain (exit 0 and the trust level when trusted)"
    p: argparse.ArgumentParser = ca_subparsers.add_parser(
        "verify", help=help_text, description=help_text
    )
    p.set_defaults(handler=_run, ca_handler=cmd_verify, logs=False)
    p.add_argument("chain", metavar="CHAIN.pem", help="leaf first, then other certificates")
    p.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="ROOT.pem",
        help="trust anchor(s); default: the home's CA roots",
    )
    p.add_argument("--crl", action="append", default=[], metavar="FILE", help="a CRL to use")
    p.add_argument(
        "--purpose", choices=[purpose.value for purpose in Purpose], default=Purpose.ANY.value
    )
    p.add_argument("--require-sct", action="store_true", help="reject a leaf without an SCT")
    p.add_argument(
        "--require-revocation",
        action="store_true",
        help="reject a certificate no current CRL covers",
    )
    p.add_argument("--at", type=_time, metavar="ISO8601", help="validation time (default: now)")
    p.add_argument("--dns", metavar="NAME", help="the leaf must name this DNS name")
    p.add_argument("--ip", type=_ip, metavar="ADDRESS", help="the leaf must name this IP")
    p.add_argument("--uri", metavar="URI", help="the leaf must name this URI")
    p.add_argument(
        "--no-home-crls",
        action="store_true",
        help="do not have the home's CA sign fresh CRLs for this check",
    )
