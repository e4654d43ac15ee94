"""A whole round of the default ``secagg run``: local training against HE time.

The configuration is ``secagg run``'s default (its default dataset and recipe); the fast
slice runs 1 round with 3 clients on a subsample of ``SECAGG_BENCH_MAX_EXAMPLES``
examples (default 1,200; ``0`` for the whole dataset), and ``SECAGG_BENCH_ROUNDS`` and
``SECAGG_BENCH_CLIENTS`` raise it (the CLI default is 12 rounds of 10 clients). The
split (train, encrypt, aggregate, release) comes from ``RoundMetrics.seconds`` and is
recorded in ``extra_info`` with the HE share of the round wall time (not asserted).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from bench.round_cost import HE_PHASES, default_run_config, measure_round_split

ROUNDS = int(os.environ.get("SECAGG_BENCH_ROUNDS", "1"))
CLIENTS = int(os.environ.get("SECAGG_BENCH_CLIENTS", "3"))
MAX_EXAMPLES = int(os.environ.get("SECAGG_BENCH_MAX_EXAMPLES", "1200")) or None

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
]


def test_default_run_round(benchmark: Any) -> None:
    """Wall time of the default run's rounds, split into training and HE."""
    config = default_run_config(rounds=ROUNDS, clients=CLIENTS, max_examples=MAX_EXAMPLES)
    result = benchmark.pedantic(measure_round_split, args=(config,), rounds=1)
    benchmark.group = "round"
    seconds = {
        key: sum(r["seconds"].get(key, 0.0) for r in result["rounds"])
        for key in ("train", *HE_PHASES)
    }
    benchmark.extra_info.update(
        rounds=ROUNDS,
        clients=CLIENTS,
        max_examples=MAX_EXAMPLES,
        wall_s=result["wall_s"],
        he_s=result["he_s"],
        he_share=result["he_share"],
        **{f"{key}_s": value for key, value in seconds.items()},
    )
    assert [r["status"] for r in result["rounds"]] == ["completed"] * ROUNDS
    assert result["he_s"] > 0 and seconds["train"] > 0
