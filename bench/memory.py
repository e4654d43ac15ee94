"""Server peak memory against the number of clients, each count in a fresh process.

Payloads are encrypted here once and written to files; for each client count a child
process (:mod:`bench._rss_child`) loads what the server is provisioned with, then reads
and adds the first ``N`` payloads one at a time and finalizes, and reports its peak RSS
(``tracemalloc`` cannot see SEAL's C++ allocations; the kernel's counters can).

secagg's aggregator keeps, beyond the running sum, 32 bytes of seeds per chunk and
client (:func:`seed_bytes_per_client`); :func:`memory_slope` fits the peak growth
against the client count, and the slope beyond the seeds is what must stay near zero.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import secagg
from secagg.crypto._rlwe import SEED_BYTES

from ._subprocess import run_json_child
from .he_cost import FLARE_DISTINCT_PAYLOADS
from .schemes import Scheme
from .updates import client_weights, coefficient, make_update, scaled

__all__ = [
    "FIXED_MMAP_THRESHOLD",
    "MEMORY_SLOPE_TARGET",
    "measure_server_memory",
    "memory_slope",
    "seed_bytes_per_client",
    "series",
    "series_label",
]

#: Server memory counts as independent of the client count when the least-squares slope
#: of its peak growth against the client count, less the seeds the aggregator keeps, is
#: at most this fraction of one payload per client (a server that kept payloads would
#: grow by one payload or more per client; allocator noise is a few MiB whatever the count).
MEMORY_SLOPE_TARGET = 0.05
#: The fixed glibc mmap threshold of the second series (1 MiB: every payload-sized
#: buffer is its own mapping, returned to the system when freed).
FIXED_MMAP_THRESHOLD = 1 << 20


def seed_bytes_per_client(scheme: str, num_params: int) -> int:
    """Bytes the server keeps per client beyond the sum: a seed per chunk for secagg, else 0."""
    if not scheme.startswith("secagg:"):
        return 0
    preset = secagg.get_preset(scheme.removeprefix("secagg:").split("/")[0])
    return SEED_BYTES * preset.num_chunks(num_params)


def series_label(report: Mapping[str, Any]) -> str:
    """``scheme``, or ``scheme (mmap ≥ N KiB)`` for a fixed-threshold series."""
    threshold = report.get("mmap_threshold")
    suffix = "" if threshold is None else f" (mmap ≥ {threshold // 1024} KiB)"
    return f"{report['scheme']}{suffix}"


def series(reports: Sequence[Mapping[str, Any]], label: str) -> list[Mapping[str, Any]]:
    """The reports of one series (:func:`series_label`), by client count."""
    found = [r for r in reports if series_label(r) == label]
    return sorted(found, key=lambda r: r["clients"])


def memory_slope(reports: Sequence[Mapping[str, Any]]) -> float:
    """Least-squares slope of peak growth (bytes) against the client count."""
    xs = [float(r["clients"]) for r in reports]
    ys = [float(r["growth_kb"]) * 1024 for r in reports]
    if len(xs) < 2:
        return 0.0
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def _write_payloads(
    scheme: Scheme, num_params: int, distinct: int, workdir: Path
) -> tuple[list[Path], int]:
    base = make_update(num_params, seed=2)
    weights = client_weights(distinct)
    files, payload_bytes = [], 0
    for client in range(distinct):
        update = scaled(base, coefficient(client))
        payload = scheme.encrypt(update, client=client, weight=weights[client])
        payload_bytes = scheme.payload_nbytes(payload)
        path = workdir / f"payload-{client:03d}.bin"
        path.write_bytes(scheme.to_file_bytes(payload))
        files.append(path)
        del payload, update
    return files, payload_bytes


def _write_provisioning(scheme: Scheme, workdir: Path) -> dict[str, str]:
    paths = {}
    for name, data in scheme.provisioning().items():
        path = workdir / f"{name}.bin"
        path.write_bytes(data)
        paths[name] = str(path)
    return paths


def _series(
    scheme: Scheme,
    files: Sequence[Path],
    client_counts: Sequence[int],
    workdir: Path,
    mmap_threshold: int | None,
    timeout: float,
) -> list[dict[str, Any]]:
    distinct = len(files)
    weights = client_weights(distinct)
    provisioning = _write_provisioning(scheme, workdir)
    env = {} if mmap_threshold is None else {"MALLOC_MMAP_THRESHOLD_": str(mmap_threshold)}
    reports = []
    for count in client_counts:
        spec = {
            "kind": scheme.kind,
            "files": provisioning,
            "roster": list(scheme.roster),
            "payloads": [str(files[i % distinct]) for i in range(count)],
            "weights": [weights[i % distinct] for i in range(count)],
        }
        path = workdir / f"spec-{count}.json"
        path.write_text(json.dumps(spec))
        report: dict[str, Any] = run_json_child(
            "bench._rss_child", [str(path)], timeout=timeout, env=env
        )
        report["mmap_threshold"] = mmap_threshold
        reports.append(report)
    return reports


def measure_server_memory(
    scheme: Scheme,
    num_params: int,
    client_counts: Sequence[int],
    workdir: Path,
    *,
    mmap_thresholds: Sequence[int | None] = (None,),
    timeout: float = 600.0,
) -> list[dict[str, Any]]:
    """Peak RSS of a fresh server process aggregating ``N`` real payloads, for each ``N``.

    FLARE-style payloads cycle through :data:`~bench.he_cost.FLARE_DISTINCT_PAYLOADS`
    distinct ones (its server cannot tell them apart); the others are one per client.

    Parameters
    ----------
    scheme : Scheme
        The scheme, whose roster holds at least ``max(client_counts)`` clients.
    num_params : int
        Update size.
    client_counts : sequence of int
        Numbers of clients to aggregate, one child process each.
    workdir : Path
        Scratch directory for the payload files (removed by the caller).
    mmap_thresholds : sequence of int or None, optional
        Run the series once per glibc setting: ``None`` is the default allocator (whose
        mmap threshold adapts, so freed payload buffers may stay in the heap); a number
        fixes ``MALLOC_MMAP_THRESHOLD_``, so that only what the server keeps remains.
    timeout : float, optional
        Seconds allowed per child.

    Returns
    -------
    list of dict
        One child report per setting and client count (``rss_before_kb``, ``peak_kb``,
        ``rss_after_adds_kb``, ``seconds``…), plus ``mmap_threshold``, ``payload_bytes``,
        ``seed_bytes_per_client`` and ``growth_kb = peak_kb - rss_before_kb``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    most = max(client_counts)
    distinct = most if scheme.distinct_payloads else min(most, FLARE_DISTINCT_PAYLOADS)
    files, payload_bytes = _write_payloads(scheme, num_params, distinct, workdir)
    reports = []
    for threshold in mmap_thresholds:
        reports += _series(scheme, files, client_counts, workdir, threshold, timeout)
    for report in reports:
        report.update(
            scheme=scheme.name,
            num_params=num_params,
            payload_bytes=payload_bytes,
            seed_bytes_per_client=seed_bytes_per_client(scheme.name, num_params),
            distinct_payloads=distinct,
            growth_kb=report["peak_kb"] - report["rss_before_kb"],
        )
    return reports
