"""The committed generated modules match the .proto files and the runtimes pyproject requires."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
GENERATE = PACKAGE_ROOT / "tools" / "generate.py"
GENERATED_DIR = PACKAGE_ROOT / "src" / "hypermesh_interfaces" / "v1"


def test_generated_code_is_current() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools not installed (codegen extra)")
    result = subprocess.run(
        [sys.executable, str(GENERATE), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is current" in result.stdout


def _dependency_floor(name: str) -> str:
    project = tomllib.loads((PACKAGE_ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    floors = [
        m.group(1)
        for requirement in project["dependencies"]
        if (m := re.fullmatch(rf"{re.escape(name)}>=([0-9.]+)(?:,<[0-9.]+)?", requirement))
    ]
    assert len(floors) == 1, f"expected one '{name}>=' requirement in {project['dependencies']}"
    return floors[0]


def test_protobuf_floor_is_the_gencode_version() -> None:
    # Generated *_pb2.py refuse to import on a protobuf runtime older than the protoc that wrote
    # them, so the declared floor must be exactly that version.
    versions = {
        m.group(1)
        for path in GENERATED_DIR.glob("*_pb2.py")
        if (m := re.search(r"^# Protobuf Python Version: (\S+)$", path.read_text("utf-8"), re.M))
    }
    assert versions == {_dependency_floor("protobuf")}


def test_grpcio_floor_is_the_grpc_gencode_version() -> None:
    # Likewise *_pb2_grpc.py raise RuntimeError on a grpcio older than GRPC_GENERATED_VERSION.
    versions = {
        m.group(1)
        for path in GENERATED_DIR.glob("*_pb2_grpc.py")
        if (m := re.search(r"^GRPC_GENERATED_VERSION = '(\S+)'$", path.read_text("utf-8"), re.M))
    }
    assert versions == {_dependency_floor("grpcio")}


def test_generated_modules_do_not_import_the_hypermesh_package() -> None:
    # protoc's raw output says `from hypermesh.v1 import common_pb2`; the generator rewrites that.
    # Run in a fresh interpreter so nothing else has populated sys.modules.
    probe = (
        "import sys, hypermesh_interfaces, hypermesh_interfaces.protocols\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'hypermesh'))\n"
        "print(hypermesh_interfaces.network_pb2.HandleNatTraversalRequest.__module__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "hypermesh_interfaces.v1.network_pb2"]
