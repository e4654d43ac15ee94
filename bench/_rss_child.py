"""Child process of the server-memory benchmark: aggregate payload files, report peak RSS.

Run by :func:`bench.memory.measure_server_memory` as ``python -m bench._rss_child SPEC``
where ``SPEC`` is a JSON file naming the scheme kind, the files the server is
provisioned with (context, registry), the roster and the payload files. The child
imports only what that scheme's server needs, loads its provisioning, resets its
peak-RSS counter (``/proc/self/clear_refs``), then reads and adds each payload in turn
(one payload in memory at a time, as a server receiving them would), finalizes, and
prints one JSON line: resident memory before the adds, the peak (``VmHWM``) during adds
and finalize, and the time taken. ``tracemalloc`` cannot see SEAL's C++ allocations;
the kernel's RSS counters can.
"""

from __future__ import annotations

import gc
import json
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _status_kb() -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of this process, in KiB."""
    values: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); ``False`` if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


Server = tuple[Callable[[bytes, float], None], Callable[[], int]]


def _flare_server(files: dict[str, str]) -> Server:
    from bench.flare_reference import FlareServer

    flare = FlareServer(Path(files["context"]).read_bytes())

    def add(data: bytes, weight: float) -> None:
        flare.add(pickle.loads(data), weight)

    def finish() -> int:
        return sum(len(layer) for layer in flare.finalize())

    return add, finish


def _secagg_server(files: dict[str, str], roster: list[str]) -> Server:
    import secagg

    aggregator = secagg.Aggregator(
        Path(files["context"]).read_bytes(),
        registry=secagg.ClientRegistry.from_bytes(Path(files["registry"]).read_bytes()),
        round_id=1,
        roster=roster,
        min_clients=1,
    )

    def add(data: bytes, weight: float) -> None:
        aggregator.add(data)

    def finish() -> int:
        return len(aggregator.finalize().to_bytes())

    return add, finish


def _plaintext_server(roster: list[str]) -> Server:
    from secagg.protocols.backends import round_server

    plain = round_server(he=False, round_id=1, roster=roster, min_clients=1)

    def add(data: bytes, weight: float) -> None:
        plain.add(data)

    def finish() -> int:
        return len(plain.finalize())

    return add, finish


def _server(spec: dict[str, Any]) -> Server:
    """Build the add and finalize functions of the scheme's server (finalize returns bytes)."""
    kind = spec["kind"]
    files = dict(spec.get("files", {}))
    roster = list(spec["roster"])
    if kind == "flare":
        return _flare_server(files)
    if kind == "secagg":
        return _secagg_server(files, roster)
    if kind == "plaintext":
        return _plaintext_server(roster)
    raise ValueError(f"unknown scheme kind {kind!r}")


def main(argv: list[str]) -> int:
    """Aggregate the payloads named in the spec file ``argv[0]``; print a JSON result."""
    spec = json.loads(Path(argv[0]).read_text())
    add, finish = _server(spec)
    gc.collect()
    before = _status_kb()
    reset = _reset_peak()
    start = time.perf_counter()
    for path, weight in zip(spec["payloads"], spec["weights"], strict=True):
        data = Path(path).read_bytes()
        add(data, float(weight))
        del data
    after_adds = _status_kb()
    aggregate_bytes = finish()
    seconds = time.perf_counter() - start
    after = _status_kb()
    print(
        json.dumps(
            {
                "clients": len(spec["payloads"]),
                "rss_before_kb": before["VmRSS"],
                "hwm_before_kb": before["VmHWM"],
                "peak_kb": after["VmHWM"],
                "rss_after_adds_kb": after_adds["VmRSS"],
                "rss_after_kb": after["VmRSS"],
                "peak_was_reset": reset,
                "aggregate_bytes": aggregate_bytes,
                "seconds": seconds,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
