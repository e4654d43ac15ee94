"""Crash-safe file writes: a write either lands whole or leaves the old file untouched."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write_bytes"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> Path:
    """Write ``data`` to ``path`` atomically, creating the file with permissions ``mode``.

    The bytes go to a temporary file in the same directory (created with ``mode``, so a
    secret is never readable by others, not even briefly), are flushed to disk, and the
    temporary file is renamed over ``path``. A crash or a full disk at any point leaves
    the previous file intact.

    Parameters
    ----------
    path : path-like
        Destination file.
    data : bytes
        Content to write.
    mode : int, optional
        Permission bits of the new file (default ``0o600``).

    Returns
    -------
    pathlib.Path
        The destination path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target
