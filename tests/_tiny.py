"""The tiny federation the engine tests run (fast on 2 cores), shared by their files."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from secagg.protocols import Federation, FederationConfig


def tiny_config(**changes: Any) -> FederationConfig:
    """Digits subsampled to 300 examples, mini-batch SGD, σ = 1; ``changes`` applied."""
    base = FederationConfig(
        dataset="digits",
        clients=4,
        rounds=2,
        fraction=0.75,
        min_clients=2,
        max_examples=300,
        batch_size=32,
        lr=0.5,
        client_optimizer="sgd",
        attention_analysis=False,
        epsilon=None,
        noise_multiplier=1.0,
    )
    return dataclasses.replace(base, **changes)


def release_std(federation: Federation, contributors: int) -> float:
    """Standard deviation secure aggregation adds to one coordinate of a released sum.

    Flooding for approximate presets; the contributors' stochastic rounding for exact
    presets (``sqrt(k)`` clients' rounding errors); both on values divided by the run's
    public update scale, which the coordinator multiplies back.
    """
    holder = federation.key_holder
    assert holder is not None  # an HE federation after run()
    preset = holder.keys.preset
    flooding = holder.flooding_std(contributors)
    scale = federation.plan.update_scale
    return scale * math.sqrt(flooding**2 + contributors * preset.quantization_std**2)
