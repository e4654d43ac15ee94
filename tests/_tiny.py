"""The tiny federation the engine tests run (fast on 2 cores), shared by their files."""

from __future__ import annotations

import dataclasses
from typing import Any

from secagg.protocols import FederationConfig

TINY_MODEL = {"embed_dim": 16, "num_heads": 2, "num_layers": 1, "ff_dim": 16}


def tiny_config(**changes: Any) -> FederationConfig:
    """Digits subsampled to 300 examples, a 4k-parameter model, SGD; ``changes`` applied."""
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
        model_overrides=TINY_MODEL,
        attention_analysis=False,
    )
    return dataclasses.replace(base, **changes)
