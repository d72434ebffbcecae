"""The ``hypermesh`` command.

* ``hypermesh demo [--data-dir DIR] [--validators N]``: the local network demo
  (:mod:`hypermesh.demo`; what ``nox -s demo`` runs).
* ``hypermesh validator --home DIR [--federation DIR] [options]``: run one validator of a
  local federation (:func:`hypermesh.node.validator.main`). ``--federation`` defaults to the
  federation the home lies in (a validator's home is ``<federation>/validators/<name>``);
  further options (``--preset``, ``--grpc-port``, ``--no-batch``) are passed on unchanged.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hypermesh import demo
from hypermesh.node import validator

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hypermesh", description="HyperMesh: verifiable resource assets."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo_parser = commands.add_parser(
        "demo",
        help="bring up a local validator network and certify this machine's resources",
        description="Bring up a local validator network and record this machine's CPU, "
        "memory and storage as certified assets.",
    )
    demo.add_arguments(demo_parser)
    validator_parser = commands.add_parser(
        "validator",
        help="run one validator of a local federation",
        description="Run one validator of a local federation; options after --home and "
        "--federation go to the validator (see: python -m hypermesh.node.validator --help).",
    )
    validator_parser.add_argument("--home", required=True, type=Path, help="the validator's home")
    validator_parser.add_argument(
        "--federation",
        type=Path,
        help="the federation directory (default: the one the home lies in, ../..)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hypermesh`` with ``argv`` (default: the process arguments); the exit status."""
    args, rest = _parser().parse_known_args(argv)
    if args.command == "demo":
        if rest:
            _parser().error(f"unrecognized arguments: {' '.join(rest)}")
        return demo.run_main(args)
    federation = args.federation or args.home.resolve().parent.parent
    return validator.main(["--home", str(args.home), "--federation", str(federation), *rest])


if __name__ == "__main__":
    sys.exit(main())
