"""Load: aggregate N clients x P parameters in one process; print RSS as clients grow.

Usage: ``python tests/crypto/load_aggregate.py --clients 100 --params 1000000 --dir DIR``.
Every client's update is really encrypted and signed first (written to DIR), then a
fresh aggregator adds them one by one, reading each file just before adding it, and
reports its resident memory after every client. The key holder then verifies and
releases the sum, which is checked against the exact mean: ``LOAD-SUMMARY {json}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np

import secagg


def rss_bytes() -> int:
    """Current resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    """Encrypt, then aggregate while measuring memory, then release."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    roster = [f"client-{i:03d}" for i in range(args.clients)]
    keys = secagg.FederationKeys.generate(roster)
    rng = np.random.default_rng(0)
    exact_sum = np.zeros(args.params)
    start = time.perf_counter()
    sizes = []
    for cid in roster:
        update = {"w": (rng.standard_normal(args.params) * 0.01).astype(np.float32)}
        exact_sum += update["w"]
        blob = secagg.encrypt_update(
            keys.material,
            update,
            signing_key=keys.signing_keys[cid],
            round_id=1,
            roster=roster,
        )
        (args.dir / f"{cid}.bin").write_bytes(blob)
        sizes.append(len(blob))
    encrypt_seconds = time.perf_counter() - start
    del update, blob
    gc.collect()

    aggregator = secagg.Aggregator(
        keys.server_context(), registry=keys.registry, round_id=1, roster=roster
    )
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
    aggregate_bytes = len(aggregate.to_bytes())
    start = time.perf_counter()
    released = keys.key_holder().release(aggregate)
    release_seconds = time.perf_counter() - start
    exact = exact_sum / args.clients
    tol = 7 * released.mean_error_std * np.sqrt(1 + exact**2) + 1e-6
    summary = {
        "clients": args.clients,
        "params": args.params,
        "payload_bytes": sizes[0],
        "aggregate_bytes": aggregate_bytes,
        "chunks": aggregate.num_chunks,
        "unpacked_update_bytes": aggregate.c0.nbytes,
        "rss_after_each_client": rss,
        "rss_after_release": rss_bytes(),
        "encrypt_seconds_total": encrypt_seconds,
        "add_seconds_total": add_seconds,
        "release_seconds": release_seconds,
        "add_us_per_param_per_client": add_seconds / args.clients / args.params * 1e6,
        "contributors": len(released.contributors),
        "mean_within_tolerance": bool((np.abs(released.mean["w"] - exact) <= tol).all()),
    }
    print("LOAD-SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
