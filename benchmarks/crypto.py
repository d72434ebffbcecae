"""TrustChain crypto benchmarks, each next to the raw library call it wraps, in the same run.

    python benchmarks/crypto.py [--seconds S] [--repeats N] [--update BENCHMARKS.md]

For every operation: our API's rate, the raw library's rate, and the ratio ours/raw (1.00 means no
wrapper overhead; below 1 is what the wrapper costs). Each figure is the median of ``--repeats``
runs of at least ``--seconds`` each. ``--update FILE`` replaces the text between
``<!-- crypto:begin -->`` and ``<!-- crypto:end -->`` in FILE with the tables.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchlib import machine, rate, update_section
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.x509.oid import NameOID
from pqcrypto.kem import ml_kem_1024 as pqclean_mlkem
from pqcrypto.sign import falcon_1024 as pqclean_falcon

from trustchain.crypto.aead import AeadKey
from trustchain.crypto.algorithms import AeadAlgorithm, KemAlgorithm, SignatureAlgorithm
from trustchain.crypto.handshake import Initiator, Responder
from trustchain.crypto.kem import KemPrivateKey
from trustchain.crypto.signatures import SigningKey

MESSAGE = b"m" * 64
PACKAGES = ("cryptography", "pqcrypto", "py-fn-dsa")


class Table:
    def __init__(self, title: str, unit: str, peer: str) -> None:
        self.title, self.unit, self.peer = title, unit, peer
        self.rows: list[tuple[str, float, float | None]] = []

    def add(self, name: str, ours: float, raw: float | None) -> None:
        self.rows.append((name, ours, raw))
        ratio = f"{ours / raw:.2f}" if raw else "-"
        raw_text = f"{raw:,.1f}" if raw else "-"
        print(f"  {name:<42} ours {ours:>12,.1f}  {self.peer} {raw_text:>12}  ratio {ratio}")

    def markdown(self) -> str:
        lines = [
            f"### {self.title}",
            "",
            f"| operation | ours ({self.unit}) | {self.peer} ({self.unit}) | ours / {self.peer} |",
            "|---|---:|---:|---:|",
        ]
        for name, ours, raw in self.rows:
            ratio = f"{ours / raw:.2f}" if raw else "—"
            raw_text = f"{raw:,.1f}" if raw else "—"
            lines.append(f"| {name} | {ours:,.1f} | {raw_text} | {ratio} |")
        return "\n".join(lines)


def bench_signatures(seconds: float, repeats: int) -> Table:
    table = Table("Signatures", "ops/s", "raw library")
    print(table.title)

    # Falcon-1024: our API vs PQClean through pqcrypto.
    pk, sk = pqclean_falcon.generate_keypair()
    raw_sig = pqclean_falcon.sign(sk, MESSAGE)
    ours = SigningKey.generate(SignatureAlgorithm.FALCON_1024)
    ours_pub = ours.public_key()
    ours_sig = ours.sign(MESSAGE)
    table.add(
        "falcon-1024 keygen (vs pqcrypto)",
        rate(lambda: SigningKey.generate(SignatureAlgorithm.FALCON_1024), seconds, repeats),
        rate(pqclean_falcon.generate_keypair, seconds, repeats),
    )
    table.add(
        "falcon-1024 sign (vs pqcrypto)",
        rate(lambda: ours.sign(MESSAGE), seconds, repeats),
        rate(lambda: pqclean_falcon.sign(sk, MESSAGE), seconds, repeats),
    )
    table.add(
        "falcon-1024 verify (vs pqcrypto)",
        rate(lambda: ours_pub.verify(ours_sig, MESSAGE), seconds, repeats),
        rate(lambda: pqclean_falcon.verify(pk, MESSAGE, raw_sig), seconds, repeats),
    )

    # FN-DSA-1024 (optional backend): our API vs py-fn-dsa.
    try:
        import py_fn_dsa
    except ImportError:
        print("  fn-dsa-1024: py-fn-dsa not installed, skipped")
    else:
        vk, fsk = py_fn_dsa.keygen(py_fn_dsa.LOGN_1024)
        fsig = py_fn_dsa.sign(fsk, MESSAGE)
        fours = SigningKey.generate(SignatureAlgorithm.FN_DSA_1024)
        fpub = fours.public_key()
        fsig_ours = fours.sign(MESSAGE)
        table.add(
            "fn-dsa-1024 keygen (vs py-fn-dsa)",
            rate(lambda: SigningKey.generate(SignatureAlgorithm.FN_DSA_1024), seconds, repeats),
            rate(lambda: py_fn_dsa.keygen(py_fn_dsa.LOGN_1024), seconds, repeats),
        )
        table.add(
            "fn-dsa-1024 sign (vs py-fn-dsa)",
            rate(lambda: fours.sign(MESSAGE), seconds, repeats),
            rate(lambda: py_fn_dsa.sign(fsk, MESSAGE), seconds, repeats),
        )
        table.add(
            "fn-dsa-1024 verify (vs py-fn-dsa)",
            rate(lambda: fpub.verify(fsig_ours, MESSAGE), seconds, repeats),
            rate(lambda: py_fn_dsa.verify(vk, fsig, MESSAGE), seconds, repeats),
        )

    # Ed25519: our API vs pyca/cryptography.
    eraw = ed25519.Ed25519PrivateKey.generate()
    eraw_pub = eraw.public_key()
    eraw_sig = eraw.sign(MESSAGE)
    eours = SigningKey.generate(SignatureAlgorithm.ED25519)
    epub = eours.public_key()
    esig = eours.sign(MESSAGE)
    table.add(
        "ed25519 sign (vs cryptography)",
        rate(lambda: eours.sign(MESSAGE), seconds, repeats),
        rate(lambda: eraw.sign(MESSAGE), seconds, repeats),
    )
    table.add(
        "ed25519 verify (vs cryptography)",
        rate(lambda: epub.verify(esig, MESSAGE), seconds, repeats),
        rate(lambda: eraw_pub.verify(eraw_sig, MESSAGE), seconds, repeats),
    )

    # Hybrid: our API vs the two raw calls it is made of, back to back.
    hours = SigningKey.generate()
    hpub = hours.public_key()
    hsig = hours.sign(MESSAGE)

    def raw_hybrid_sign() -> None:
        eraw.sign(MESSAGE)
        pqclean_falcon.sign(sk, MESSAGE)

    def raw_hybrid_verify() -> None:
        eraw_pub.verify(eraw_sig, MESSAGE)
        pqclean_falcon.verify(pk, MESSAGE, raw_sig)

    table.add(
        "hybrid ed25519+falcon-1024 sign (vs both raw)",
        rate(lambda: hours.sign(MESSAGE), seconds, repeats),
        rate(raw_hybrid_sign, seconds, repeats),
    )
    table.add(
        "hybrid ed25519+falcon-1024 verify (vs both raw)",
        rate(lambda: hpub.verify(hsig, MESSAGE), seconds, repeats),
        rate(raw_hybrid_verify, seconds, repeats),
    )
    return table


def bench_kem(seconds: float, repeats: int) -> Table:
    table = Table("Key encapsulation", "ops/s", "raw library")
    print(table.title)
    raw = mlkem.MLKEM1024PrivateKey.generate()
    raw_pub = raw.public_key()
    _, raw_ct = raw_pub.encapsulate()
    ours = KemPrivateKey.generate(KemAlgorithm.ML_KEM_1024)
    ours_pub = ours.public_key()
    _, ours_ct = ours_pub.encapsulate()
    table.add(
        "ml-kem-1024 keygen (vs cryptography)",
        rate(lambda: KemPrivateKey.generate(KemAlgorithm.ML_KEM_1024), seconds, repeats),
        rate(mlkem.MLKEM1024PrivateKey.generate, seconds, repeats),
    )
    table.add(
        "ml-kem-1024 encaps (vs cryptography)",
        rate(ours_pub.encapsulate, seconds, repeats),
        rate(raw_pub.encapsulate, seconds, repeats),
    )
    table.add(
        "ml-kem-1024 decaps (vs cryptography)",
        rate(lambda: ours.decapsulate(ours_ct), seconds, repeats),
        rate(lambda: raw.decapsulate(raw_ct), seconds, repeats),
    )
    ppk, psk = pqclean_mlkem.generate_keypair()
    pct, _ = pqclean_mlkem.encrypt(ppk)
    table.add(
        "ml-kem-1024 encaps (vs PQClean via pqcrypto)",
        rate(ours_pub.encapsulate, seconds, repeats),
        rate(lambda: pqclean_mlkem.encrypt(ppk), seconds, repeats),
    )
    table.add(
        "ml-kem-1024 decaps (vs PQClean via pqcrypto)",
        rate(lambda: ours.decapsulate(ours_ct), seconds, repeats),
        rate(lambda: pqclean_mlkem.decrypt(psk, pct), seconds, repeats),
    )

    hybrid = KemPrivateKey.generate()
    hybrid_pub = hybrid.public_key()
    _, hybrid_ct = hybrid_pub.encapsulate()
    xraw = x25519.X25519PrivateKey.generate()
    xraw_pub = xraw.public_key()

    def raw_hybrid_encaps() -> None:
        eph = x25519.X25519PrivateKey.generate()
        eph.exchange(xraw_pub)
        eph.public_key().public_bytes_raw()
        raw_pub.encapsulate()

    def raw_hybrid_decaps() -> None:
        xraw.exchange(xraw_pub)
        raw.decapsulate(raw_ct)

    table.add(
        "hybrid x25519+ml-kem-1024 encaps (vs both raw)",
        rate(hybrid_pub.encapsulate, seconds, repeats),
        rate(raw_hybrid_encaps, seconds, repeats),
    )
    table.add(
        "hybrid x25519+ml-kem-1024 decaps (vs both raw)",
        rate(lambda: hybrid.decapsulate(hybrid_ct), seconds, repeats),
        rate(raw_hybrid_decaps, seconds, repeats),
    )
    return table


def bench_aead(seconds: float, repeats: int) -> Table:
    table = Table("AEAD throughput", "MB/s", "cryptography")
    print(table.title)
    nonce = b"\x00" * 12
    for algorithm, raw_cls in (
        (AeadAlgorithm.AES_256_GCM, AESGCM),
        (AeadAlgorithm.CHACHA20_POLY1305, ChaCha20Poly1305),
    ):
        key = AeadKey.generate(algorithm)
        raw = raw_cls(key.key)
        for size in (1024, 65536):
            data = os.urandom(size)
            sealed = key.encrypt(nonce, data)
            mb = size / 1e6
            table.add(
                f"{algorithm.label} encrypt {size // 1024} KiB",
                rate(lambda k=key, d=data: k.encrypt(nonce, d), seconds, repeats) * mb,
                rate(lambda r=raw, d=data: r.encrypt(nonce, d, None), seconds, repeats) * mb,
            )
            table.add(
                f"{algorithm.label} decrypt {size // 1024} KiB",
                rate(lambda k=key, s=sealed: k.decrypt(nonce, s), seconds, repeats) * mb,
                rate(lambda r=raw, s=sealed: r.decrypt(nonce, s, None), seconds, repeats) * mb,
            )
    return table


def _tls_context_pair() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A TLS 1.3 server (Ed25519 certificate) and a client that pins it, for the peer figure."""
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bench")]), critical=False)
        .sign(key, None)
    )
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = Path(tmp, "c.pem"), Path(tmp, "k.pem")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1_3
        server.load_cert_chain(cert_path, key_path)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.minimum_version = ssl.TLSVersion.TLSv1_3
        client.load_verify_locations(cert_path)
    return server, client


def _tls_handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="bench")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done_c = done_s = False
    while not (done_c and done_s):
        for obj, done_attr in ((client, "c"), (server, "s")):
            try:
                obj.do_handshake()
                if done_attr == "c":
                    done_c = True
                else:
                    done_s = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())


def bench_handshake(seconds: float, repeats: int) -> Table:
    table = Table("Channel handshake (both sides, in memory)", "handshakes/s", "TLS 1.3")
    print(table.title)
    alice = SigningKey.generate()
    bob = SigningKey.generate()

    def ours() -> None:
        initiator = Initiator(alice, expected_peer=bob.public_key())
        responder = Responder(bob)
        m2 = responder.receive(initiator.start())
        assert m2 is not None
        m3 = initiator.receive(m2)
        responder.receive(m3)

    server_ctx, client_ctx = _tls_context_pair()
    table.add(
        "hybrid PQ handshake (X25519+ML-KEM-1024, Ed25519+Falcon-1024 both ways)"
        " vs OpenSSL TLS 1.3 (X25519, Ed25519 server auth)",
        rate(ours, seconds, repeats),
        rate(lambda: _tls_handshake(server_ctx, client_ctx), seconds, repeats),
    )

    return table


def bench_channel(seconds: float, repeats: int) -> Table:
    table = Table("Channel records (seal on one side, open on the other)", "MB/s", "raw AES-GCM")
    print(table.title)
    alice = SigningKey.generate()
    bob = SigningKey.generate()
    initiator = Initiator(alice, expected_peer=bob.public_key())
    responder = Responder(bob)
    m2 = responder.receive(initiator.start())
    assert m2 is not None
    responder.receive(initiator.receive(m2))
    sender, receiver = initiator.channel, responder.channel
    raw = AESGCM(os.urandom(32))
    for size in (1024, 65536):
        data = os.urandom(size)
        mb = size / 1e6
        nonces = itertools.count()

        def raw_round_trip(d: bytes = data, counter: Iterator[int] = nonces) -> None:
            nonce = next(counter).to_bytes(12, "big")
            raw.decrypt(nonce, raw.encrypt(nonce, d, None), None)

        def round_trip(d: bytes = data) -> None:
            receiver.open(sender.seal(d))

        table.add(
            f"{size // 1024} KiB records (vs AESGCM encrypt+decrypt, no framing or replay window)",
            rate(round_trip, seconds, repeats) * mb,
            rate(raw_round_trip, seconds, repeats) * mb,
        )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="minimum time per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--update", type=Path, help="markdown file whose crypto section to replace")
    args = parser.parse_args()

    tables = [
        bench_signatures(args.seconds, args.repeats),
        bench_kem(args.seconds, args.repeats),
        bench_aead(args.seconds, args.repeats),
        bench_handshake(args.seconds, args.repeats),
        bench_channel(args.seconds, args.repeats),
    ]
    command = "python3 -m nox -s bench"
    header = (
        f"## Crypto (`benchmarks/crypto.py`)\n\n"
        f"Command: `{command}` (runs `python benchmarks/crypto.py --seconds {args.seconds} "
        f"--repeats {args.repeats} --update BENCHMARKS.md`). "
        f"Measured {datetime.date.today().isoformat()} on: {machine(PACKAGES)}.\n"
        f"Each figure is the median of {args.repeats} runs of at least {args.seconds} s; "
        f"single thread."
    )
    text = header + "\n\n" + "\n\n".join(t.markdown() for t in tables)
    if args.update:
        update_section(args.update, "crypto", text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
