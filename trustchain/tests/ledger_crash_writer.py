"""The writer process of the ledger crash test (``test_ledger.py``): applies certificates into a
ledger, one after the other, until it is killed.

Usage: ``python ledger_crash_writer.py LEDGER SETUP``. ``SETUP`` is a folder holding
``genesis.bin`` (the genesis ``Committee``) and ``signer-0.key``, ``signer-1.key``, ...
(``SigningKey`` envelopes of committee members that together hold a quorum; signer 0 is the
validator whose ledger it is).

Entry ``i`` of the schedule is version ``i // ASSETS`` of asset ``asset_id(i % ASSETS)``,
whose change is :func:`change_at` (synthetic proofs: the ledger checks neither proofs nor owner
signatures). The writer opens the ledger, prints ``ready N`` (its log size), then from entry
``N`` on: signs the votes of ``BATCH`` entries (one batch signature per signer), and for each
entry locks it with signer 0's vote (``record_locks``), applies its certificate and prints
``applied i``, flushed, after ``apply`` returned.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from hypermesh_interfaces.v1 import common_pb2, ledger_pb2
from trustchain.consensus.ledger import Ledger
from trustchain.consensus.votes import Ballot, sign_ballots
from trustchain.crypto.signatures import SigningKey

#: Assets the schedule cycles through.
ASSETS: Final = 5
#: Entries whose votes are signed together.
BATCH: Final = 256
#: The certified ballot's validator id.
NO_VALIDATOR: Final = bytes(32)


def asset_id(slot: int) -> bytes:
    return hashlib.sha256(b"crash-test asset" + slot.to_bytes(4, "big")).digest()


def change_at(index: int) -> ledger_pb2.AssetStateChange:
    """The change of schedule entry ``index`` (epoch 0)."""
    asset = asset_id(index % ASSETS)
    version = index // ASSETS
    tag = asset + version.to_bytes(8, "big")
    proofs = common_pb2.FourProof(
        space=common_pb2.SpaceProof(plot_id=hashlib.sha256(b"plot" + tag).digest(), k=18),
        stake=common_pb2.StakeProof(
            asset_id=common_pb2.AssetId(id=asset),
            version=version,
            state_digest=hashlib.sha256(b"state" + tag).digest(),
            stake_amount=1000 + index,
        ),
        work=common_pb2.WorkProof(challenge=hashlib.sha256(b"work" + tag).digest(), nonce=index),
        time=common_pb2.TimeProof(
            poh=common_pb2.PohSegment(
                start_hash=hashlib.sha256(b"poh start" + tag).digest(),
                num_hashes=64,
                end_hash=hashlib.sha256(b"poh end" + tag).digest(),
            )
        ),
    )
    return ledger_pb2.AssetStateChange(proofs=proofs, epoch=0)


def _signer(key: SigningKey) -> Callable[[bytes], bytes]:
    return lambda message: key.sign(message).to_bytes()


def main(argv: list[str]) -> None:
    path, setup = Path(argv[1]), Path(argv[2])
    genesis = ledger_pb2.Committee.FromString((setup / "genesis.bin").read_bytes())
    keys = [
        SigningKey.from_bytes((setup / f"signer-{n}.key").read_bytes())
        for n in range(len(list(setup.glob("signer-*.key"))))
    ]
    own = keys[0].public_key().key_id
    ledger = Ledger.open(path, validator_id=own, genesis=genesis)
    index = ledger.log_size
    print(f"ready {index}", flush=True)
    while True:
        changes = [change_at(i) for i in range(index, index + BATCH)]
        votes = [
            sign_ballots(
                [Ballot.for_change(c, key.public_key().key_id) for c in changes],
                _signer(key),
                batch=True,
            )
            for key in keys
        ]
        for offset, change in enumerate(changes):
            ledger.record_locks([(Ballot.for_change(change, own), change, votes[0][offset])])
            certificate = ledger_pb2.StateCertificate(
                change=change, votes=[signed[offset] for signed in votes]
            )
            applied = ledger.apply(certificate, Ballot.for_change(change, NO_VALIDATOR))
            if applied.log_index != index + offset:
                raise SystemExit(f"entry {index + offset} went to log index {applied.log_index}")
            print(f"applied {index + offset}", flush=True)
        index += BATCH


if __name__ == "__main__":
    main(sys.argv)
