"""Encrypt ciphertext chunks in several processes (TenSEAL never releases the GIL).

The calling process forks one child per extra worker. A child inherits the SEAL session
and the slot matrix (nothing is pickled; it only reads them, so few pages are copied),
encrypts its share of the rows, writes the
ciphertexts to a pipe as length-prefixed records and exits; the parent encrypts the first
share itself meanwhile, then reads the pipes. Children never return into the caller's code:
whatever happens they end with ``os._exit``.
"""

from __future__ import annotations

import itertools
import os
import struct

import numpy as np

from ._seal import SealSession
from .errors import ConfigurationError

__all__ = ["PARALLEL_MIN_CHUNKS", "encrypt_rows"]

# Below this many chunks, forking costs more than it saves.
PARALLEL_MIN_CHUNKS = 24
_LENGTH = struct.Struct(">Q")


def encrypt_rows(session: SealSession, matrix: np.ndarray, workers: int | None) -> list[bytes]:
    """Encrypt every row of ``matrix`` in ``workers`` processes (default: one per core).

    Raises
    ------
    ConfigurationError
        If ``workers`` is below 1.
    RuntimeError
        If a worker process fails.
    """
    count = matrix.shape[0]
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)), 8) if count >= PARALLEL_MIN_CHUNKS else 1
    if workers < 1:
        raise ConfigurationError("workers must be at least 1")
    workers = min(workers, count)
    if workers == 1:
        return [session.encrypt(row) for row in matrix]
    bounds = np.linspace(0, count, workers + 1).astype(int).tolist()
    shares = list(itertools.pairwise(bounds))
    children = [_fork_worker(session, matrix[a:b]) for a, b in shares[1:]]
    chunks = [session.encrypt(row) for row in matrix[shares[0][0] : shares[0][1]]]
    for (pid, read_fd), (a, b) in zip(children, shares[1:], strict=True):
        chunks.extend(_collect(pid, read_fd, b - a))
    return chunks


def _fork_worker(session: SealSession, block: np.ndarray) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        status = 1
        try:
            os.close(read_fd)
            # Encrypt everything first: writing as we go would block on the full pipe
            # until the parent, busy with its own share, starts reading.
            chunks = [session.encrypt(row) for row in block]
            with os.fdopen(write_fd, "wb") as pipe:
                for chunk in chunks:
                    pipe.write(_LENGTH.pack(len(chunk)))
                    pipe.write(chunk)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    return pid, read_fd


def _collect(pid: int, read_fd: int, expected: int) -> list[bytes]:
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    chunks = []
    offset = 0
    while offset + _LENGTH.size <= len(data):
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        chunks.append(data[offset : offset + size])
        offset += size
    if status != 0 or len(chunks) != expected or offset != len(data):
        raise RuntimeError(f"an encryption worker failed (exit status {status})")
    return chunks
