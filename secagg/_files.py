"""Crash-safe file writes (a write lands whole or not at all) and guarded secret reads."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ContextError

__all__ = ["atomic_write_bytes", "read_secret_file"]


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


def read_secret_file(path: str | os.PathLike[str], what: str) -> bytes:
    """Read a secret file, refusing one that group or others can read or write.

    Parameters
    ----------
    path : path-like
        The file.
    what : str
        What the file is, for error messages ("secret context", "signing key", ...).

    Raises
    ------
    ContextError
        If ``path`` is not a path, the file cannot be read, is not a regular file, or
        its permissions let anyone but its owner read or write it (``chmod 600`` it).
    """
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise ContextError(f"the {what} path must be a file path, got {path!r:.60}")
    target = Path(path)
    try:
        with open(target, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ContextError(f"{what} {target} is not a regular file")
            if info.st_mode & 0o077:
                raise ContextError(
                    f"{what} {target} is accessible to group or others (mode "
                    f"{stat.S_IMODE(info.st_mode):o}); run `chmod 600 {target}`"
                )
            return handle.read()
    except OSError as exc:
        raise ContextError(f"cannot read {what} {target}: {exc.strerror or exc}") from None
