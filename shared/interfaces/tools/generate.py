#!/usr/bin/env python3
"""Regenerate the committed Python code for the HyperMesh protobuf contracts.

Usage (from anywhere; paths are relative to this script)::

    python tools/generate.py           # rewrite src/hypermesh_interfaces/v1/*_pb2*.py*
    python tools/generate.py --check   # regenerate into a temporary directory; exit 1 and list
                                       # the stale files if the committed code differs

Needs the ``codegen`` extra (``pip install -e 'shared/interfaces[codegen]'``): grpcio-tools for
protoc and its gRPC plugin, mypy-protobuf for the ``protoc-gen-mypy`` / ``protoc-gen-mypy_grpc``
plugins. The output depends on their versions, which is why the extra pins them.

For every ``proto/hypermesh/v1/*.proto`` this produces ``<name>_pb2.py`` (protoc),
``<name>_pb2.pyi`` (mypy-protobuf) and, for files that define a service, ``<name>_pb2_grpc.py``
(grpcio-tools) and ``<name>_pb2_grpc.pyi`` (mypy-protobuf). Files without a service get no gRPC
modules: they would hold nothing but a grpcio version check.

protoc names Python modules after the proto package, so the raw output says
``from hypermesh.v1 import common_pb2``. That would import from the unrelated ``hypermesh``
distribution, so every such module reference is rewritten to ``hypermesh_interfaces.v1``. Proto
full names (``hypermesh.v1.PeerId``, ``/hypermesh.v1.SecurityLayer/OpenChannel``) are wire-level
names and stay as they are.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = PACKAGE_ROOT / "proto"
PROTO_PACKAGE_DIR = Path("hypermesh") / "v1"
OUTPUT_DIR = PACKAGE_ROOT / "src" / "hypermesh_interfaces" / "v1"

#: The Python package protoc derives from ``package hypermesh.v1;`` and the one we ship instead.
PROTOC_MODULE_PREFIX = "hypermesh.v1"
SHIPPED_MODULE_PREFIX = "hypermesh_interfaces.v1"

#: Names of the files this script owns in OUTPUT_DIR (everything else there is hand-written).
GENERATED_NAME = re.compile(r"^[a-z0-9_]+_pb2(?:_grpc)?\.pyi?$")

#: ``from hypermesh.v1 import x_pb2`` (generated .py and .pyi files).
_FROM_IMPORT = re.compile(r"^(\s*)from hypermesh\.v1 import ", re.MULTILINE)
#: Dotted or slashed module paths: ``hypermesh.v1.x_pb2`` (module names passed to the protobuf
#: builder, ``import hypermesh.v1.x_pb2``) and ``hypermesh/v1/x_pb2_grpc.py`` (error messages).
_MODULE_PATH = re.compile(r"\bhypermesh([./])v1\1(\w+_pb2(?:_grpc)?)\b")
#: What must not survive the rewrite: any Python-level reference to the ``hypermesh.v1`` module.
_LEFTOVER = re.compile(
    r"\bfrom hypermesh(?:\.v1)? import\b|\bimport hypermesh\b|\bhypermesh\.v1\.\w+_pb2"
)

_SERVICE = re.compile(r"^\s*service\s+\w+\s*\{", re.MULTILINE)


class GenerationError(Exception):
    """protoc or a plugin is missing or failed, or the output is not what we can rewrite."""


def rewrite_imports(source: str, filename: str) -> str:
    """``source`` with every reference to the ``hypermesh.v1`` Python modules pointed at
    ``hypermesh_interfaces.v1``; :class:`GenerationError` if one would remain."""
    shipped_dir = SHIPPED_MODULE_PREFIX.replace(".", "/")
    rewritten = _FROM_IMPORT.sub(rf"\1from {SHIPPED_MODULE_PREFIX} import ", source)
    rewritten = _MODULE_PATH.sub(
        lambda m: (
            (SHIPPED_MODULE_PREFIX if m.group(1) == "." else shipped_dir) + m.group(1) + m.group(2)
        ),
        rewritten,
    )
    leftover = _LEFTOVER.search(rewritten)
    if leftover is not None:
        raise GenerationError(
            f"{filename}: reference to {PROTOC_MODULE_PREFIX!r} left after rewriting: "
            f"{leftover.group(0)!r}"
        )
    return rewritten


def _plugin(name: str) -> Path:
    """The protoc plugin executable ``name``: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found is None:
        raise GenerationError(f"{name} not found; install the codegen extra (mypy-protobuf)")
    return Path(found)


def _well_known_protos() -> Path:
    """The directory holding google/protobuf/*.proto as shipped with grpcio-tools."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or not spec.submodule_search_locations:
        raise GenerationError("grpc_tools is not importable; install the codegen extra")
    return Path(spec.submodule_search_locations[0]).resolve() / "_proto"


def proto_files() -> list[Path]:
    """The .proto files to compile, relative to PROTO_ROOT, sorted."""
    found = sorted((PROTO_ROOT / PROTO_PACKAGE_DIR).glob("*.proto"))
    if not found:
        raise GenerationError(f"no .proto files under {PROTO_ROOT / PROTO_PACKAGE_DIR}")
    return [path.relative_to(PROTO_ROOT) for path in found]


def generate() -> dict[str, bytes]:
    """Compile every proto file; the generated files by name, imports already rewritten."""
    protos = proto_files()
    with tempfile.TemporaryDirectory(prefix="hypermesh-protoc-") as tmp:
        out = Path(tmp)
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={_well_known_protos()}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out=quiet:{out}",
            f"--mypy_grpc_out=quiet:{out}",
            *(str(p) for p in protos),
        ]
        result = subprocess.run(
            command, cwd=PROTO_ROOT, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise GenerationError(
                f"protoc failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )

        files: dict[str, bytes] = {}
        for proto in protos:
            stem = proto.stem
            with_service = _SERVICE.search((PROTO_ROOT / proto).read_text("utf-8")) is not None
            names = [f"{stem}_pb2.py", f"{stem}_pb2.pyi"]
            if with_service:
                names += [f"{stem}_pb2_grpc.py", f"{stem}_pb2_grpc.pyi"]
            for name in names:
                produced = out / PROTO_PACKAGE_DIR / name
                if not produced.is_file():
                    raise GenerationError(f"protoc did not produce {PROTO_PACKAGE_DIR / name}")
                text = produced.read_text("utf-8")
                files[name] = rewrite_imports(text, name).encode("utf-8")
        return files


def committed() -> dict[str, bytes]:
    """The generated files currently in OUTPUT_DIR, by name."""
    return {
        path.name: path.read_bytes()
        for path in sorted(OUTPUT_DIR.iterdir())
        if path.is_file() and GENERATED_NAME.match(path.name)
    }


def stale_files(fresh: dict[str, bytes], current: dict[str, bytes]) -> list[str]:
    """One line per file that differs between ``fresh`` and ``current``, sorted by name."""
    lines = []
    for name in sorted(fresh.keys() | current.keys()):
        if name not in current:
            lines.append(f"missing: {name}")
        elif name not in fresh:
            lines.append(f"obsolete: {name}")
        elif fresh[name] != current[name]:
            lines.append(f"stale: {name}")
    return lines


def write(fresh: dict[str, bytes]) -> list[str]:
    """Make OUTPUT_DIR hold exactly ``fresh``; the changes made, one line each."""
    current = committed()
    changes = []
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in sorted(fresh):
        if current.get(name) != fresh[name]:
            (OUTPUT_DIR / name).write_bytes(fresh[name])
            changes.append(f"{'updated' if name in current else 'created'}: {name}")
    for name in sorted(current.keys() - fresh.keys()):
        (OUTPUT_DIR / name).unlink()
        changes.append(f"removed: {name}")
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 listing the committed files that differ from fresh output",
    )
    args = parser.parse_args(argv)
    try:
        fresh = generate()
    except GenerationError as exc:
        print(f"generate.py: {exc}", file=sys.stderr)
        return 2
    out_dir = OUTPUT_DIR.relative_to(PACKAGE_ROOT)
    if args.check:
        problems = stale_files(fresh, committed())
        if problems:
            print(f"generated code in {out_dir} is not current:")
            for line in problems:
                print(f"  {line}")
            print(
                "run `python tools/generate.py` and commit the result (if the .proto files did "
                "not change, your grpcio-tools / mypy-protobuf differ from the codegen extra's)"
            )
            return 1
        print(f"generated code in {out_dir} is current ({len(fresh)} files)")
        return 0
    changes = write(fresh)
    for line in changes:
        print(f"  {line}")
    print(f"{out_dir}: {len(changes)} file(s) changed, {len(fresh)} generated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
