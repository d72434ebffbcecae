"""transparency-dev/merkle's inclusion and consistency vectors through our RFC 9162 verifier.

Every file in ``data/ct-merkle`` (see its PROVENANCE.md) must give its ``wantErr`` verdict:
valid proofs verify, tampered ones raise the typed proof error.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from trustchain.ct.merkle import verify_consistency, verify_inclusion
from trustchain.errors import ConsistencyProofError, InclusionProofError

DATA = Path(__file__).parent / "data" / "ct-merkle"


def _files(kind: str) -> list[Path]:
    # os.walk, not glob: the file names contain [ ] and @.
    found = [
        Path(directory, name)
        for directory, _, names in os.walk(DATA / kind)
        for name in names
        if name.endswith(".json")
    ]
    return sorted(found)


INCLUSION = _files("inclusion")
CONSISTENCY = _files("consistency")


def _load(path: Path) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return obj


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "", validate=True)


def _proof(obj: dict[str, Any]) -> list[bytes]:
    return [_b64(p) for p in obj["proof"] or []]


def _id(path: Path) -> str:
    return str(path.relative_to(DATA))


def test_every_vector_is_present() -> None:
    assert len(INCLUSION) == 98
    assert len(CONSISTENCY) == 98
    verdicts = [_load(p)["wantErr"] for p in INCLUSION + CONSISTENCY]
    # Both verdicts occur in both sets: the suite checks acceptance and rejection.
    assert verdicts.count(False) >= 10
    assert verdicts.count(True) >= 100


@pytest.mark.parametrize("path", INCLUSION, ids=_id)
def test_inclusion_vector(path: Path) -> None:
    obj = _load(path)
    args = (_b64(obj["leafHash"]), obj["leafIdx"], obj["treeSize"], _proof(obj), _b64(obj["root"]))
    if obj["wantErr"]:
        with pytest.raises(InclusionProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY, ids=_id)
def test_consistency_vector(path: Path) -> None:
    obj = _load(path)
    args = (obj["size1"], obj["size2"], _proof(obj), _b64(obj["root1"]), _b64(obj["root2"]))
    if obj["wantErr"]:
        with pytest.raises(ConsistencyProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)
