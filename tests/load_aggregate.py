"""Load: aggregate N clients x P parameters in one process; print RSS as clients grow.

Usage: ``python tests/load_aggregate.py --clients 100 --params 1000000 --dir DIR``.
Payloads are encrypted first (written to DIR), then a fresh process state aggregates
them one by one, reading each file just before adding it, and reports its resident
memory after every client: ``LOAD-SUMMARY {json}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

import secagg


def rss_bytes() -> int:
    """Current resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    """Encrypt, then aggregate while measuring memory."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    keys = secagg.KeyHolder.generate()
    roster = [f"client-{i:03d}" for i in range(args.clients)]
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    sizes = []
    for cid in roster:
        update = {"w": torch.randn(args.params, generator=generator, dtype=torch.float32) * 0.01}
        blob = secagg.encrypt_update(keys, update, round_id=1, client_id=cid, roster=roster)
        (args.dir / f"{cid}.bin").write_bytes(blob)
        sizes.append(len(blob))
    encrypt_seconds = time.perf_counter() - start
    del update, blob
    gc.collect()

    aggregator = secagg.Aggregator(keys.server_context(), round_id=1, roster=roster)
    rss: list[int] = []
    start = time.perf_counter()
    for cid in roster:
        path = args.dir / f"{cid}.bin"
        aggregator.add(path.read_bytes())
        path.unlink()
        gc.collect()
        rss.append(rss_bytes())
    add_seconds = time.perf_counter() - start
    aggregate = aggregator.finalize()
    released = keys.release(aggregate)
    summary = {
        "clients": args.clients,
        "params": args.params,
        "payload_bytes": sizes[0],
        "rss_after_each_client": rss,
        "encrypt_seconds_total": encrypt_seconds,
        "add_seconds_total": add_seconds,
        "add_us_per_param_per_client": add_seconds / args.clients / args.params * 1e6,
        "contributors": len(released.contributors),
    }
    print("LOAD-SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
