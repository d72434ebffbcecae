"""Command-line plumbing shared by every ``trustchain`` command module.

Where the key store lives and how it is unlocked (``--home`` / ``$TRUSTCHAIN_HOME``,
``--passphrase-file`` / ``$TRUSTCHAIN_PASSPHRASE`` / a prompt on a terminal / a key file for a new
store), how messages reach stderr, and how binary data is read, written and armored.
:mod:`trustchain.cli` builds the parser; the ``keys``, ``ca`` and ``ct`` commands use this.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import os
import sys
import textwrap
from pathlib import Path
from typing import BinaryIO

from trustchain.crypto import keystore
from trustchain.crypto.keystore import KeyStore, Protection
from trustchain.errors import TrustChainError

PROG = "trustchain"
ENV_HOME = "TRUSTCHAIN_HOME"
ENV_PASSPHRASE = "TRUSTCHAIN_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret
DEFAULT_HOME = "~/.trustchain"


class CliError(TrustChainError):
    """A failure specific to the command line (e.g. refusing to write binary to a terminal)."""


# --- passphrase and store ---------------------------------------------------------------------


def home_dir(args: argparse.Namespace) -> Path:
    home = args.home or os.environ.get(ENV_HOME) or DEFAULT_HOME
    return Path(home).expanduser()


def stdin_is_tty() -> bool:
    stream = sys.stdin
    return stream is not None and stream.isatty()


def explicit_passphrase(args: argparse.Namespace) -> bytes | None:
    """The passphrase from ``--passphrase-file`` or the environment, if given."""
    if args.passphrase_file is not None:
        data = Path(args.passphrase_file).read_bytes()
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        if not data:
            raise CliError(f"passphrase file {args.passphrase_file} is empty")
        return data
    env = os.environ.get(ENV_PASSPHRASE)
    if env is not None:
        if not env:
            raise CliError(f"${ENV_PASSPHRASE} is set but empty")
        return os.fsencode(env)
    return None


def prompt_passphrase(home: Path, *, confirm: bool) -> bytes:
    first = getpass.getpass(f"Passphrase for the key store in {home}: ")
    if not first:
        raise CliError("empty passphrase")
    if confirm and getpass.getpass("Repeat the passphrase: ") != first:
        raise CliError("the passphrases do not match")
    return first.encode()


def open_store(args: argparse.Namespace, *, private: bool, create: bool = False) -> KeyStore:
    """Open the store for a command; ``private``: the command needs private keys."""
    home = home_dir(args)
    protection = KeyStore.protection_of(home)
    passphrase = explicit_passphrase(args)
    if passphrase is None and stdin_is_tty():
        if protection is None and create:
            passphrase = prompt_passphrase(home, confirm=True)
        elif protection is Protection.PASSPHRASE and private:
            passphrase = prompt_passphrase(home, confirm=False)
    store = KeyStore.open(home, passphrase=passphrase, create=create)
    if protection is None and store.protection is Protection.KEYFILE:
        note(
            f"created a key store in {home} protected by the key file "
            f"{home / keystore.KEYFILE_FILENAME}; it protects copies of the database alone, "
            f"not anyone who can read that directory (set ${ENV_PASSPHRASE} or use "
            "--passphrase-file for passphrase protection)"
        )
    return store


# --- output helpers ---------------------------------------------------------------------------


def note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def write_binary(data: bytes, out: str | None, what: str) -> None:
    if out is not None and out != "-":
        Path(out).write_bytes(data)
        return
    stream: BinaryIO = sys.stdout.buffer
    if sys.stdout.isatty():
        raise CliError(f"refusing to write a binary {what} to a terminal; redirect or use --out")
    stream.write(data)
    stream.flush()


def read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def armor(data: bytes, label: str) -> bytes:
    body = textwrap.fill(base64.b64encode(data).decode("ascii"), 64)
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode("ascii")
