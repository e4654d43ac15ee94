"""Fuzz the checkpoint and client-ledger loaders (run in a subprocess by test_fuzz_checkpoint).

Prints ``FUZZ-SUMMARY {json}``; exits 1 if any input raised something other than a
:class:`secagg.errors.SecaggError` (a crash kills the process, which the test sees).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

from secagg.errors import SecaggError
from secagg.protocols import Checkpoint, load_checkpoint, save_checkpoint


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random corruption of ``data``."""
    kind = rng.choice(["flip", "overwrite", "truncate", "insert", "random", "json"])
    buf = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == "overwrite":
        i = rng.randrange(len(buf))
        n = rng.randint(1, 16)
        buf[i : i + n] = rng.randbytes(n)
    elif kind == "truncate":
        del buf[rng.randrange(len(buf)) :]
    elif kind == "insert":
        i = rng.randrange(len(buf))
        buf[i:i] = rng.randbytes(rng.randint(1, 32))
    elif kind == "random":
        buf = bytearray(data[:4] + rng.randbytes(rng.randint(0, 200)))
    else:  # rewrite a JSON header value in place, keeping the length
        start = data.index(b"{")
        digits = [i for i in range(start, min(len(buf), start + 400)) if chr(buf[i]).isdigit()]
        if digits:
            i = rng.choice(digits)
            buf[i] = ord(rng.choice([c for c in "0123456789-e.x" if ord(c) != buf[i]]))
    if bytes(buf) == data:  # a no-op mutation (e.g. truncating nothing) is no test
        buf.append(0)
    return kind, bytes(buf)


def main() -> int:
    """Run the fuzz cases and print the summary."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.secagg"
        checkpoint = Checkpoint(
            config_digest="a" * 64,
            rounds_completed=2,
            global_state={"w": torch.randn(8, 4), "b": torch.zeros(4)},
            server_optimizer={"m": {"w": torch.ones(8, 4)}, "v": {}},
            ledgers={
                "client-000": {"accountant": {"mechanism": "rdp", "history": [[1.0, 0.2, 9]]}}
            },
            metrics=[{"round": 1, "accuracy": 0.5}],
        )
        valid = save_checkpoint(path, checkpoint).read_bytes()
        errors: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        accepted = 0
        for _ in range(args.cases):
            kind, data = mutate(valid, rng)
            path.write_bytes(data)
            try:
                load_checkpoint(path)
                accepted += 1
            except SecaggError as exc:
                errors[type(exc).__name__] += 1
            except Exception as exc:
                failures[f"{kind}:{type(exc).__name__}:{exc}"[:200]] += 1
    summary = {
        "seed": args.seed,
        "cases": args.cases,
        "accepted": accepted,
        "errors": dict(errors),
        "failures": dict(failures),
    }
    print("FUZZ-SUMMARY " + json.dumps(summary))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
