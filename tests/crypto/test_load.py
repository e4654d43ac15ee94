"""Load: 100 clients x 10^6 parameters aggregate in memory bounded by one update's worth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("load_aggregate.py")


@pytest.mark.slow
def test_hundred_clients_of_a_million_parameters_in_bounded_memory(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--clients", "100", "--params", "1000000", "--dir",
         str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("LOAD-SUMMARY "))
    summary = json.loads(line.removeprefix("LOAD-SUMMARY "))
    print(json.dumps({k: v for k, v in summary.items() if k != "rss_after_each_client"}))
    rss = summary["rss_after_each_client"]
    assert summary["contributors"] == 100
    assert summary["mean_within_tolerance"] is True
    # One update (default exact preset) is ~3.8 MB on the wire (62 chunks of 61.5 kB) and
    # ~4 MB unpacked (the running sum's size). After the first two clients the running sum
    # exists; 98 more must not grow memory by more than one update's worth (a transient
    # unpacked update the allocator may keep) plus the seeds: the aggregator keeps only 64
    # bytes per chunk and client beyond the sum (0.4 MB for 100 clients), which the
    # aggregate's size shows.
    seeds = 64 * summary["chunks"] * summary["clients"]
    update = max(summary["payload_bytes"], summary["unpacked_update_bytes"])
    growth = max(rss[2:]) - rss[1]
    print(f"RSS after 2 clients {rss[1] / 2**20:.1f} MiB, peak after 100 "
          f"{max(rss) / 2**20:.1f} MiB, growth {growth / 2**20:.1f} MiB")  # fmt: skip
    assert growth < update + seeds
    # And no per-client growth at all beyond the seeds once the allocator has settled.
    assert max(rss[10:]) - rss[10] < seeds + (1 << 20)
    assert summary["aggregate_bytes"] <= summary["payload_bytes"] + seeds + 8192
