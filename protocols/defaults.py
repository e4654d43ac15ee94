"""The one table of defaults: what ``secagg run``, the Python API and the Flower app use.

:data:`GENERAL` holds the options every dataset shares; :data:`RECIPES` the training
recipe of each dataset (measured; see the README's "Measured results"). A value given
explicitly always wins. :func:`default_config` is the only place they are combined.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

__all__ = [
    "DATASET_NAMES",
    "DEFAULT_DATASET",
    "GENERAL",
    "RECIPES",
    "SERVER_OPTIMIZERS",
    "recipe_fields",
]

#: The bundled datasets (see :mod:`secagg.protocols.datasets`), in a stable order.
DATASET_NAMES: tuple[str, ...] = (
    "digits",
    "breast_cancer",
    "mnist",
    "bbc_news",
    "rotten_tomatoes",
    "german_credit",
)
#: Server optimisers (see :mod:`secagg.protocols.server_opt`).
SERVER_OPTIMIZERS: tuple[str, ...] = ("fedavg", "fedadam", "momentum")
DEFAULT_DATASET = "mnist"

#: Options every dataset shares (also :class:`~secagg.protocols.FederationConfig`'s defaults).
GENERAL: MappingProxyType[str, Any] = MappingProxyType(
    {
        "dataset": DEFAULT_DATASET,
        "clients": 10,
        "rounds": 12,
        "fraction": 0.5,
        "min_clients": 2,
        "dirichlet_alpha": 1.0,
        "dropout": 0.0,
        "seed": 0,
        "he": True,
        "dp": True,
        "epsilon": 8.0,
        "noise_multiplier": None,
        "clip": 1.0,
        "delta": 1e-5,
        "local_epochs": 1,
        "batch_size": 32,
        "max_physical_batch_size": 64,
        "lr": 0.01,
        "client_optimizer": "adam",
        "server_optimizer": "fedavg",
        "server_lr": 1.0,
        "preset": "default",
        "max_examples": None,
        "attention_analysis": True,
        "attention_noise_multiplier": 2.0,
        "model_overrides": None,
        "insecure_deterministic": False,
    }
)

#: Per-dataset training recipes, applied over :data:`GENERAL`.
RECIPES: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {
        name: MappingProxyType(recipe)
        for name, recipe in {
            "mnist": {"client_optimizer": "sgd", "lr": 1.0, "batch_size": 64, "local_epochs": 2},
            "digits": {
                "client_optimizer": "sgd",
                "lr": 0.3,
                "batch_size": 32,
                "local_epochs": 3,
                "server_optimizer": "momentum",
            },
            "breast_cancer": {
                "client_optimizer": "sgd",
                "lr": 0.5,
                "batch_size": 16,
                "local_epochs": 2,
            },
            "german_credit": {
                "client_optimizer": "sgd",
                "lr": 0.5,
                "batch_size": 32,
                "local_epochs": 2,
            },
            "bbc_news": {"client_optimizer": "sgd", "lr": 2.0, "batch_size": 64, "local_epochs": 2},
            "rotten_tomatoes": {
                "client_optimizer": "sgd",
                "lr": 0.5,
                "batch_size": 64,
                "local_epochs": 1,
            },
        }.items()
    }
)


def recipe_fields() -> frozenset[str]:
    """Options some dataset's recipe sets (their default depends on the dataset)."""
    return frozenset(key for recipe in RECIPES.values() for key in recipe)
