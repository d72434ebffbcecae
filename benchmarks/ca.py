"""TrustChain CA benchmarks: issuance and 3-link chain validation, next to classical-only peers.

    python benchmarks/ca.py [--seconds S] [--repeats N] [--update BENCHMARKS.md]

* Issuance: ``CertificateAuthority.issue`` of a node certificate (hybrid: Ed25519 signature plus
  Falcon-1024 alternative signature over the preTBSCertificate, persisted in SQLite, logged in
  the transparency log with a hybrid SCT) beside ``cryptography``'s ``CertificateBuilder`` signing
  the same profile with Ed25519 alone, in memory. With and without the log, so the cost of the SCT
  shows separately.
* Validation of leaf -> intermediate -> root: ``trustchain.ca.validation.validate`` (path
  building, both signatures on every link, validity, constraints, name constraints, CRL and SCT
  policy) beside ``cryptography``'s classical-only check of the same chain
  (``verify_directly_issued_by`` on each link: Ed25519 signatures and issuer names only, no
  policy). ``cryptography``'s full path validator (``x509.verification``) is not usable as a peer:
  its Web PKI profile does not accept Ed25519 chains.

``--update FILE`` replaces the ``ca`` section of FILE (between its markers) with the tables.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

from benchlib import machine, rate, update_section
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trustchain.ca.authority import CertificateAuthority
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.ca.validation import Purpose, validate
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore
from trustchain.crypto.signatures import SigningKey
from trustchain.ct.log import TransparencyLog

PACKAGES = ("cryptography", "pqcrypto")


def classical_certificate(
    subject_key: ed25519.Ed25519PublicKey, issuer_key: ed25519.Ed25519PrivateKey, serial: int
) -> x509.Certificate:
    """The peer: the node profile, Ed25519 only, built and signed by ``cryptography``."""
    now = datetime.datetime.now(datetime.UTC)
    name = "node.bank.hypermesh"
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank")]))
        .public_key(subject_key)
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(hours=24))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(issuer_key, None)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum time per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--update", type=Path, help="markdown file whose ca section to replace")
    args = parser.parse_args()
    rows: list[tuple[str, float, float, str]] = []

    with tempfile.TemporaryDirectory(prefix="ca-bench-") as tmp:
        work = Path(tmp)
        # The benchmark's own throwaway store: Argon2id cost is not what is measured here.
        store = KeyStore.open(
            work / "keys",
            passphrase=b"bench",
            kdf_params=INSECURE_TEST_KDF_PARAMS,
            allow_weak_kdf=True,
        )
        with store, TransparencyLog.open(work / "log.db", SigningKey.generate()) as log:
            logged = CertificateAuthority(work / "ca-logged", store, log)
            plain = CertificateAuthority(work / "ca-plain", store)
            try:
                for ca in (logged, plain):
                    ca.init_root("root")
                    ca.issue_intermediate("bank", "bank.hypermesh")
                subject = SigningKey.generate().public_key()
                counter = iter(range(10**9))

                def issue(ca: CertificateAuthority) -> None:
                    ca.issue(
                        "bank", "node", f"n{next(counter)}.bank.hypermesh", subject_key=subject
                    )

                peer_issuer = ed25519.Ed25519PrivateKey.generate()
                peer_subject = ed25519.Ed25519PrivateKey.generate().public_key()
                peer_serials = iter(range(1, 10**9))
                peer_rate = rate(
                    lambda: classical_certificate(peer_subject, peer_issuer, next(peer_serials)),
                    args.seconds,
                    args.repeats,
                )
                rows.append(
                    (
                        "issue a node certificate, hybrid, stored, logged with a hybrid SCT",
                        rate(lambda: issue(logged), args.seconds, args.repeats),
                        peer_rate,
                        "certificates/s",
                    )
                )
                rows.append(
                    (
                        "issue a node certificate, hybrid, stored, no log",
                        rate(lambda: issue(plain), args.seconds, args.repeats),
                        peer_rate,
                        "certificates/s",
                    )
                )

                issued = plain.issue("bank", "node", "v.bank.hypermesh", subject_key=subject)
                root = plain.export_root()[0]
                chain = [issued.certificate, *issued.chain]
                trust = TrustStore([TrustAnchor(root, "bench")])
                intermediate = issued.chain[0]

                def classical_only() -> None:
                    issued.certificate.verify_directly_issued_by(intermediate)
                    intermediate.verify_directly_issued_by(root)

                rows.append(
                    (
                        "validate leaf -> intermediate -> root (both signatures, full policy)",
                        rate(
                            lambda: validate(chain, trust, purpose=Purpose.SERVER),
                            args.seconds,
                            args.repeats,
                        ),
                        rate(classical_only, args.seconds, args.repeats),
                        "chains/s",
                    )
                )
            finally:
                logged.close()
                plain.close()

    lines = [
        "## Certificate authority (`benchmarks/ca.py`)",
        "",
        f"Command: `python3 -m nox -s bench` (runs `python benchmarks/ca.py --seconds "
        f"{args.seconds} --repeats {args.repeats} --update BENCHMARKS.md`). Measured "
        f"{datetime.date.today().isoformat()} on: {machine(PACKAGES)}. Median of "
        f"{args.repeats} runs of at least {args.seconds} s; single thread. Peer: `cryptography` "
        "with Ed25519 only (issuance: `CertificateBuilder.sign` in memory; validation: "
        "`verify_directly_issued_by` on each link, which checks signatures and names, no policy).",
        "",
        "| operation | ours | classical-only peer | ours / peer | unit |",
        "|---|---:|---:|---:|---|",
    ]
    for name, ours, peer, unit in rows:
        print(f"  {name:<72} ours {ours:>10,.1f}  peer {peer:>10,.1f}  {unit}")
        lines.append(f"| {name} | {ours:,.1f} | {peer:,.1f} | {ours / peer:.3f} | {unit} |")
    text = "\n".join(lines)
    if args.update:
        update_section(args.update, "ca", text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
