"""A short tour of TrustChain's security layer: ``python -m trustchain.demo`` (``nox -s demo``).

Two hybrid identities, an authenticated post-quantum channel between them, encrypted round trips
(and what happens to a tampered or replayed record), a sealed box, and a key rotation in a real
key store, with timings. Every step uses the real constructions; nothing is simulated.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from trustchain.crypto.algorithms import KemAlgorithm
from trustchain.crypto.handshake import Initiator, Responder
from trustchain.crypto.kem import KemPrivateKey
from trustchain.crypto.keystore import KeyStore
from trustchain.crypto.sealed_box import open_sealed, seal
from trustchain.crypto.signatures import SigningKey
from trustchain.errors import DecryptionFailed, ReplayDetected

T = TypeVar("T")


def timed(label: str, action: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = action()
    print(f"  {label:<52} {(time.perf_counter() - start) * 1000:9.2f} ms")
    return result


def rejected(expected: type[Exception], what: str, action: Callable[[], object]) -> None:
    """Run ``action``, which must fail with ``expected``; the tour stops if it does not."""
    try:
        action()
    except expected as error:
        print(f"  {what} rejected: {type(error).__name__} ({error})")
        return
    raise SystemExit(f"demo failed: the {what} was accepted")


def run(messages: int) -> None:
    print("1. Two identities (hybrid Ed25519 + FALCON-1024)")
    alice = timed("generate alice", SigningKey.generate)
    bob = timed("generate bob", SigningKey.generate)
    alice_pub, bob_pub = alice.public_key(), bob.public_key()
    print(f"  alice key id {alice_pub.key_id.hex()[:16]}…  ({len(alice_pub.to_bytes())} B public)")
    print(f"  bob   key id {bob_pub.key_id.hex()[:16]}…  ({len(bob_pub.to_bytes())} B public)")

    print("\n2. Channel handshake (X25519 + ML-KEM-1024, transcript signed by both identities)")
    initiator = Initiator(alice, expected_peer=bob_pub)
    responder = Responder(bob)
    m1 = timed("alice: message 1 (ephemeral hybrid KEM key)", initiator.start)
    m2 = timed("bob:   message 2 (ciphertext, identity, signature)", lambda: responder.receive(m1))
    assert m2 is not None
    m3 = timed("alice: verify bob, message 3 (identity, signature)", lambda: initiator.receive(m2))
    timed("bob:   verify alice, channel established", lambda: responder.receive(m3))
    a_channel, b_channel = initiator.channel, responder.channel
    print(f"  message sizes: {len(m1)} / {len(m2)} / {len(m3)} bytes")
    print(
        f"  channel id {a_channel.channel_id.hex()[:16]}… (same on both sides: "
        f"{a_channel.channel_id == b_channel.channel_id})"
    )
    print(
        f"  bob sees alice as {b_channel.peer.key_id.hex()[:16]}… "
        f"(authenticated: {b_channel.peer == alice_pub})"
    )

    print(f"\n3. Encrypted round trips ({a_channel.aead_algorithm.label})")
    payload = b"resource offer: 4 cores, 8 GiB" * 4

    def round_trips() -> int:
        for i in range(messages):
            record = a_channel.seal(payload + i.to_bytes(4, "big"))
            echoed = b_channel.open(record)
            back = a_channel.open(b_channel.seal(echoed))
            assert back == payload + i.to_bytes(4, "big")
        return messages

    timed(f"{messages} round trips ({len(payload) + 4} B each way)", round_trips)
    record = a_channel.seal(b"transfer 10 credits")
    tampered = bytearray(record)
    tampered[-1] ^= 1
    rejected(DecryptionFailed, "tampered record", lambda: b_channel.open(bytes(tampered)))
    print(f"  genuine record opens: {b_channel.open(record)!r}")
    rejected(ReplayDetected, "replayed record", lambda: b_channel.open(record))
    timed("rekey alice -> bob", a_channel.rekey)
    print(f"  after rekey: {b_channel.open(a_channel.seal(b'still talking'))!r}")

    print("\n4. Sealed box to a hybrid KEM key (for data at rest)")
    recipient = timed("generate X25519 + ML-KEM-1024 key", KemPrivateKey.generate)
    assert recipient.algorithm is KemAlgorithm.HYBRID_X25519_ML_KEM_1024
    secret = b"asset key material " * 54
    box = timed(f"seal {len(secret)} B", lambda: seal(recipient.public_key(), secret))
    opened = timed("open", lambda: open_sealed(recipient, box))
    print(f"  {len(box)} bytes sealed, opened intact: {opened == secret}")

    print("\n5. Key store and rotation")
    with tempfile.TemporaryDirectory() as home:
        store = timed(
            "open a new passphrase-protected store (Argon2id)",
            lambda: KeyStore.open(Path(home), passphrase=b"demo passphrase"),
        )
        with store:
            timed("generate node-identity v1", lambda: store.generate("node-identity"))
            old = timed("sign with v1", lambda: store.sign("node-identity", b"asset state 1"))
            rotated = timed("rotate to v2", lambda: store.rotate("node-identity"))
            new = store.sign("node-identity", b"asset state 2")
            v_old = store.verify("node-identity", b"asset state 1", old)
            v_new = store.verify("node-identity", b"asset state 2", new)
            print(
                f"  active version {rotated.version}; v1 signature verifies as v{v_old.version},"
                f" new signature as v{v_new.version}"
            )
            for info in store.versions("node-identity"):
                print(
                    f"  v{info.version} {info.status:<9} {info.algorithm} {info.key_id.hex()[:16]}…"
                )
    print("\nDone: every signature above was checked and every byte encrypted with a real key.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200, help="round trips in step 3")
    args = parser.parse_args(argv)
    run(args.messages)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
