"""Default run settings per dataset: what ``secagg run`` uses when no option is given."""

from __future__ import annotations

from typing import Any

from .config import FederationConfig

__all__ = ["DEFAULT_DATASET", "RECIPES", "default_config"]

DEFAULT_DATASET = "mnist"

# Chosen from measured runs so that a DP + HE run learns within a dozen rounds on 2 cores
# (README, "Measured results"); every value can be overridden.
RECIPES: dict[str, dict[str, Any]] = {
    "mnist": {"client_optimizer": "sgd", "lr": 1.0, "batch_size": 64, "local_epochs": 2},
    "digits": {
        "client_optimizer": "sgd",
        "lr": 0.3,
        "batch_size": 32,
        "local_epochs": 3,
        "server_optimizer": "momentum",
    },
    "breast_cancer": {"client_optimizer": "sgd", "lr": 0.5, "batch_size": 16, "local_epochs": 2},
    "german_credit": {"client_optimizer": "sgd", "lr": 0.5, "batch_size": 32, "local_epochs": 2},
    "bbc_news": {"client_optimizer": "sgd", "lr": 2.0, "batch_size": 64, "local_epochs": 2},
    "rotten_tomatoes": {"client_optimizer": "sgd", "lr": 0.5, "batch_size": 64, "local_epochs": 1},
}


def default_config(dataset: str = DEFAULT_DATASET, **overrides: Any) -> FederationConfig:
    """The ``secagg run`` configuration for ``dataset`` (10 clients, 12 rounds), overridden.

    Raises
    ------
    ConfigurationError
        If an override is invalid (see :class:`FederationConfig`).
    """
    values: dict[str, Any] = {"dataset": dataset, "clients": 10, "rounds": 12}
    values.update(RECIPES.get(dataset, {}))
    values.update(overrides)
    return FederationConfig(**values)
