"""Encrypt ciphertext chunks in several processes (TenSEAL never releases the GIL).

The calling process forks one child per extra worker. A child inherits everything the
block function needs (the SEAL session, the MAC, the matrix: nothing is pickled; it
only reads them, so few pages are copied), turns its block of rows into bytes,
writes them to a pipe as length-prefixed records and exits; the parent does the first
share itself meanwhile, then reads the pipes. Children never return into the caller's
code: whatever happens they end with ``os._exit``.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable

import numpy as np

from ..errors import ConfigurationError

__all__ = ["PARALLEL_MIN_CHUNKS", "PARALLEL_MIN_CORES", "default_workers", "map_blocks"]

# Below this many chunks, forking costs more than it saves.
PARALLEL_MIN_CHUNKS = 24
# With fewer cores, forking never paid off where measured: on a 2-core VM two processes
# gave SEAL 1.24x the throughput of one, less than the fork and the copied pages cost
# a parent that has torch loaded (bench.md, "Client encryption side by side").
PARALLEL_MIN_CORES = 4
_LENGTH = struct.Struct(">Q")

# (index of the block's first row, the block) -> one bytes result per row
BlockFunction = Callable[[int, np.ndarray], list[bytes]]


def default_workers(count: int) -> int:
    """Processes used for ``count`` rows by default: one per core (at most 8) for large
    jobs on machines with at least :data:`PARALLEL_MIN_CORES` cores, else one."""
    cores = len(os.sched_getaffinity(0))
    if count < PARALLEL_MIN_CHUNKS or cores < PARALLEL_MIN_CORES:
        return 1
    return min(cores, 8)


def map_blocks(function: BlockFunction, matrix: np.ndarray, workers: int | None) -> list[bytes]:
    """Split ``matrix`` into ``workers`` blocks of rows and apply ``function`` to each.

    Returns one result per row, in row order.

    Raises
    ------
    ConfigurationError
        If ``workers`` is not a positive int.
    RuntimeError
        If a worker process fails.
    """
    count = matrix.shape[0]
    if workers is None:
        workers = default_workers(count)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigurationError(f"workers must be a positive int, got {workers!r:.40}")
    workers = min(workers, count)
    if workers == 1:
        return _checked(function(0, matrix), count)
    bounds = np.linspace(0, count, workers + 1).astype(int).tolist()
    shares = list(itertools.pairwise(bounds))
    children = [_fork_worker(function, matrix, a, b) for a, b in shares[1:]]
    first, last = shares[0]
    results = _checked(function(first, matrix[first:last]), last - first)
    for (pid, read_fd), (a, b) in zip(children, shares[1:], strict=True):
        results.extend(_collect(pid, read_fd, b - a))
    return results


def _checked(results: list[bytes], expected: int) -> list[bytes]:
    if len(results) != expected:
        raise RuntimeError(f"a block function returned {len(results)} results for {expected} rows")
    return results


def _fork_worker(
    function: BlockFunction, matrix: np.ndarray, first: int, last: int
) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        status = 1
        try:
            os.close(read_fd)
            # Compute everything first: writing as we go would block on the full pipe
            # until the parent, busy with its own share, starts reading.
            results = _checked(function(first, matrix[first:last]), last - first)
            with os.fdopen(write_fd, "wb") as pipe:
                for result in results:
                    pipe.write(_LENGTH.pack(len(result)))
                    pipe.write(result)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    return pid, read_fd


def _collect(pid: int, read_fd: int, expected: int) -> list[bytes]:
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    results = []
    offset = 0
    while offset + _LENGTH.size <= len(data):
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        results.append(data[offset : offset + size])
        offset += size
    if status != 0 or len(results) != expected or offset != len(data):
        raise RuntimeError(f"an encryption worker failed (exit status {status})")
    return results
