"""The one table of defaults: what ``secagg run``, the Python API and the Flower app use.

:data:`GENERAL` holds the options every dataset shares; :data:`RECIPES` the DP-SGD
recipe of each dataset and :data:`NONPRIVATE_RECIPES` its non-private baseline's
(measured; see the README's "Measured results"). A value given explicitly always wins.
:func:`~secagg.protocols.config.default_config` is the only place they are combined.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

__all__ = [
    "CLIENT_OPTIMIZERS",
    "DATASET_NAMES",
    "DEFAULT_DATASET",
    "GENERAL",
    "NONPRIVATE_RECIPES",
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
#: Client optimisers (see :func:`secagg.protocols.local.make_optimizer`).
CLIENT_OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
#: Server optimisers (see :mod:`secagg.protocols.server_opt`).
SERVER_OPTIMIZERS: tuple[str, ...] = ("fedavg", "fedadam", "momentum")
DEFAULT_DATASET = "mnist"

#: Options every dataset shares (also :class:`~secagg.protocols.FederationConfig`'s defaults).
GENERAL: MappingProxyType[str, Any] = MappingProxyType(
    {
        "dataset": DEFAULT_DATASET,
        "clients": 10,
        "rounds": 20,
        "fraction": 1.0,
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
        # Exact accounting for full-batch plans (see secagg.dp.accounting), RDP otherwise.
        "accountant": "auto",
        "local_epochs": 1,
        # Full-batch DP-GD: at a fixed ε, one noisy step over all of a client's examples
        # has the least noise per unit of signal (Poisson rate q = 1, one step per epoch).
        "batch_size": 4096,
        "max_physical_batch_size": 512,
        "lr": 2.0,
        "client_optimizer": "sgd",
        "server_optimizer": "fedavg",
        "server_lr": 1.0,
        "preset": "default",
        "max_examples": None,
        "attention_analysis": True,
        "attention_noise_multiplier": 3.0,
        "model_overrides": None,
        "insecure_deterministic": False,
    }
)


def _frozen(table: dict[str, dict[str, Any]]) -> MappingProxyType[str, MappingProxyType[str, Any]]:
    return MappingProxyType({name: MappingProxyType(recipe) for name, recipe in table.items()})


#: Per-dataset DP-SGD recipes, applied over :data:`GENERAL` (measured at ε = 8 with
#: ``python -m bench.accuracy``; see the README's "Measured results").
RECIPES: MappingProxyType[str, MappingProxyType[str, Any]] = _frozen(
    {
        "mnist": {"lr": 4.0, "local_epochs": 3, "rounds": 20},
        "digits": {"lr": 3.0, "local_epochs": 2, "rounds": 20},
        "breast_cancer": {"lr": 2.0, "local_epochs": 1, "rounds": 30},
        "german_credit": {"lr": 2.0, "local_epochs": 1, "rounds": 30},
        # A map over 4,097 token buckets needs a quieter release than one over 16 patches:
        # σ 1.5 leaves training σ 3.59 instead of 3.36, with no measured accuracy cost.
        "bbc_news": {
            "lr": 1.5,
            "local_epochs": 1,
            "rounds": 30,
            "attention_noise_multiplier": 1.5,
        },
        "rotten_tomatoes": {"lr": 6.0, "local_epochs": 1, "rounds": 30},
    }
)

#: The non-private baseline's own recipes (``dp=False``), applied over :data:`RECIPES`:
#: the best honest non-private training of the same model, not the DP recipe without
#: noise (Adam, mini-batches, no clipping; learning rate picked from {0.003, 0.01, 0.03}).
NONPRIVATE_RECIPES: MappingProxyType[str, MappingProxyType[str, Any]] = _frozen(
    {
        name: {
            "client_optimizer": "adam",
            "batch_size": 32,
            "local_epochs": 1,
            "rounds": 30,
            "lr": lr,
        }
        for name, lr in {
            "mnist": 0.01,
            "digits": 0.03,
            "breast_cancer": 0.01,
            "german_credit": 0.03,
            "bbc_news": 0.003,
            "rotten_tomatoes": 0.003,
        }.items()
    }
)


def recipe_fields() -> frozenset[str]:
    """Options some recipe sets (their default depends on the dataset and on ``dp``)."""
    tables = (*RECIPES.values(), *NONPRIVATE_RECIPES.values())
    return frozenset(key for recipe in tables for key in recipe)
