"""DP-SGD cost: one logical batch step of PrivateClient (Opacus hooks) against plain SGD.

For each default model (digits, breast_cancer, mnist, rotten_tomatoes), a batch of 64
examples, one torch thread (restored afterwards). ``test_step`` benchmarks each mode;
``test_overhead`` measures both alternately and records the ratio in ``extra_info``
(not asserted: timings on shared CI are noisy).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from bench.dp_cost import dp_step_overhead, make_dp_steps

DATASETS = ["digits", "breast_cancer", "mnist", "rotten_tomatoes"]
BATCH_SIZE = 64
MAX_EXAMPLES = 400
STEPS = int(os.environ.get("SECAGG_BENCH_DP_STEPS", "3"))

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run with one torch thread, as ``secagg run`` does by default."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("mode", ["plain", "private"])
@pytest.mark.parametrize("dataset", DATASETS)
def test_step(benchmark: Any, one_thread: None, dataset: str, mode: str) -> None:
    """One training step (forward, backward, optimizer step) of the default model."""
    steps = make_dp_steps(dataset, batch_size=BATCH_SIZE, max_examples=MAX_EXAMPLES)
    try:
        step = steps.private_step if mode == "private" else steps.plain_step
        benchmark.group = f"dp-step-{dataset}"
        benchmark.extra_info.update(dataset=dataset, mode=mode, params=steps.params)
        benchmark.pedantic(step, rounds=max(STEPS, 1), warmup_rounds=1)
    finally:
        steps.close()


@pytest.mark.parametrize("dataset", DATASETS)
def test_overhead(benchmark: Any, dataset: str) -> None:
    """Private/plain step-time ratio, both measured alternately in one call."""
    result = benchmark.pedantic(
        dp_step_overhead,
        args=(dataset,),
        kwargs={
            "batch_size": BATCH_SIZE,
            "steps": max(STEPS, 1),
            "warmup": 1,
            "max_examples": MAX_EXAMPLES,
        },
        rounds=1,
    )
    benchmark.group = "dp-overhead"
    benchmark.extra_info.update(
        dataset=dataset,
        params=result["params"],
        plain_ms=result["plain_s"] * 1e3,
        private_ms=result["private_s"] * 1e3,
        ratio=result["ratio"],
    )
    assert result["private_s"] > 0 and result["plain_s"] > 0
