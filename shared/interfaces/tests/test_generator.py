"""tools/generate.py: the import rewrite and the staleness report (no protoc needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

GENERATE = Path(__file__).resolve().parent.parent / "tools" / "generate.py"


@pytest.fixture(scope="module")
def generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hypermesh_interfaces_generate", GENERATE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rewrites_module_references_but_not_proto_names(generate: ModuleType) -> None:
    raw = (
        "from hypermesh.v1 import common_pb2 as hypermesh_dot_v1_dot_common__pb2\n"
        "_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, 'hypermesh.v1.network_pb2', g)\n"
        "' generated code in hypermesh/v1/network_pb2_grpc.py depends on'\n"
        "import hypermesh.v1.security_pb2\n"
        "from hypermesh.v1.common_pb2 import PeerId\n"
        "'/hypermesh.v1.NetworkLayer/ResolveAssetAddress'\n"
        "b'\\n\\x1ahypermesh/v1/network.proto\\x12\\x0chypermesh.v1'\n"
        "x: hypermesh_dot_v1_dot_common__pb2.PeerId\n"
    )
    assert generate.rewrite_imports(raw, "network_pb2.py") == (
        "from hypermesh_interfaces.v1 import common_pb2 as hypermesh_dot_v1_dot_common__pb2\n"
        "_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, "
        "'hypermesh_interfaces.v1.network_pb2', g)\n"
        "' generated code in hypermesh_interfaces/v1/network_pb2_grpc.py depends on'\n"
        "import hypermesh_interfaces.v1.security_pb2\n"
        "from hypermesh_interfaces.v1.common_pb2 import PeerId\n"
        "'/hypermesh.v1.NetworkLayer/ResolveAssetAddress'\n"
        "b'\\n\\x1ahypermesh/v1/network.proto\\x12\\x0chypermesh.v1'\n"
        "x: hypermesh_dot_v1_dot_common__pb2.PeerId\n"
    )


def test_rewrite_is_idempotent(generate: ModuleType) -> None:
    once = generate.rewrite_imports("from hypermesh.v1 import common_pb2\n", "a_pb2.py")
    assert generate.rewrite_imports(once, "a_pb2.py") == once


@pytest.mark.parametrize(
    "line", ["import hypermesh.v1 as v1\n", "from hypermesh import v1\n", "import hypermesh\n"]
)
def test_reference_the_rewrite_cannot_handle_is_an_error(generate: ModuleType, line: str) -> None:
    with pytest.raises(generate.GenerationError, match="left after rewriting"):
        generate.rewrite_imports(line, "a_pb2.pyi")


def test_staleness_report_names_every_difference(generate: ModuleType) -> None:
    fresh = {"a_pb2.py": b"new", "b_pb2.py": b"same", "c_pb2.pyi": b"added"}
    current = {"a_pb2.py": b"old", "b_pb2.py": b"same", "z_pb2_grpc.py": b"gone"}
    assert generate.stale_files(fresh, current) == [
        "stale: a_pb2.py",
        "missing: c_pb2.pyi",
        "obsolete: z_pb2_grpc.py",
    ]
    assert generate.stale_files(fresh, dict(fresh)) == []


@pytest.mark.parametrize(
    ("name", "owned"),
    [
        ("common_pb2.py", True),
        ("common_pb2.pyi", True),
        ("security_pb2_grpc.py", True),
        ("security_pb2_grpc.pyi", True),
        ("__init__.py", False),
        ("notes_pb2.txt", False),
    ],
)
def test_generator_owns_only_pb2_modules(generate: ModuleType, name: str, owned: bool) -> None:
    assert bool(generate.GENERATED_NAME.match(name)) is owned
