"""Writing a file all or nothing.

:func:`write_atomically` is how TrustChain writes every file that is not a SQLite database
(key files, bundles, federation manifests): a reader sees the old file or the whole new one,
never part of it, and a crash leaves no half-written file under the final name.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write ``data`` to ``path``: a new file beside it (created with ``mode``, less the umask;
    exactly ``mode`` when it is 0600), written and fsynced, renamed over ``path``, then the
    directory fsynced so the rename survives a crash. On any failure the temporary file is
    removed and ``path`` is untouched. The directory must exist."""
    directory = path.parent
    temporary = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            if mode == 0o600:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
