"""The options of a federated run, shared by the in-process federation and Flower."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from ..crypto.presets import get_preset
from ..dp.accounting import check_accountant
from ..errors import ConfigurationError
from .defaults import (
    CLIENT_OPTIMIZERS,
    DATASET_NAMES,
    GENERAL,
    NONPRIVATE_RECIPES,
    RECIPES,
    SERVER_OPTIMIZERS,
)

__all__ = ["FederationConfig", "client_id", "default_config"]


def client_id(index: int) -> str:
    """The client id of partition ``index`` (the same in both engines)."""
    return f"client-{index:03d}"


@dataclass(frozen=True)
class FederationConfig:
    """Everything that determines a federated run (and its checkpoint digest).

    The defaults are :data:`secagg.protocols.defaults.GENERAL`; use
    :func:`default_config` to get a dataset's recipe as well. With DP, give
    ``epsilon`` (default 8: σ is planned once per client for the whole run, every
    round, every local epoch and the attention release, with the sample rate and step
    count the client really uses) or a fixed ``noise_multiplier``.

    ``insecure_deterministic`` makes DP noise and batch sampling follow the run seed so
    that a run is bit-reproducible: research only, since whoever knows the seed can
    remove the noise. The Flower app refuses it and reports mark it.
    """

    dataset: str = GENERAL["dataset"]
    clients: int = GENERAL["clients"]
    rounds: int = GENERAL["rounds"]
    fraction: float = GENERAL["fraction"]
    min_clients: int = GENERAL["min_clients"]
    dirichlet_alpha: float | None = GENERAL["dirichlet_alpha"]
    dropout: float = GENERAL["dropout"]
    seed: int = GENERAL["seed"]
    he: bool = GENERAL["he"]
    dp: bool = GENERAL["dp"]
    epsilon: float | None = GENERAL["epsilon"]
    noise_multiplier: float | None = GENERAL["noise_multiplier"]
    clip: float = GENERAL["clip"]
    delta: float = GENERAL["delta"]
    accountant: str = GENERAL["accountant"]
    local_epochs: int = GENERAL["local_epochs"]
    batch_size: int = GENERAL["batch_size"]
    max_physical_batch_size: int = GENERAL["max_physical_batch_size"]
    lr: float = GENERAL["lr"]
    client_optimizer: str = GENERAL["client_optimizer"]
    server_optimizer: str = GENERAL["server_optimizer"]
    server_lr: float = GENERAL["server_lr"]
    preset: str = GENERAL["preset"]
    max_examples: int | None = GENERAL["max_examples"]
    attention_analysis: bool = GENERAL["attention_analysis"]
    attention_noise_multiplier: float = GENERAL["attention_noise_multiplier"]
    model_overrides: dict[str, Any] | None = GENERAL["model_overrides"]
    insecure_deterministic: bool = GENERAL["insecure_deterministic"]

    def __post_init__(self) -> None:
        """Validate every option with a clear :class:`ConfigurationError`."""
        _check_types(self)
        if self.dataset not in DATASET_NAMES:
            raise ConfigurationError(f"dataset must be one of {DATASET_NAMES}")
        if self.clients < 1 or self.rounds < 1 or self.local_epochs < 1:
            raise ConfigurationError("clients, rounds and local_epochs must be at least 1")
        if not 0 < self.fraction <= 1:
            raise ConfigurationError("fraction must be in (0, 1]")
        if not 1 <= self.min_clients <= self.clients:
            raise ConfigurationError("min_clients must be between 1 and clients")
        if self.dirichlet_alpha is not None and self.dirichlet_alpha <= 0:
            raise ConfigurationError("dirichlet_alpha must be positive (or None for IID)")
        if not 0 <= self.dropout < 1:
            raise ConfigurationError("dropout must be in [0, 1)")
        if not 0 <= self.seed < 2**32:
            raise ConfigurationError("seed must be in [0, 2^32)")
        if self.dp and (self.epsilon is None) == (self.noise_multiplier is None):
            raise ConfigurationError("with DP give exactly one of epsilon or noise_multiplier")
        if self.epsilon is not None and self.epsilon <= 0:
            raise ConfigurationError("epsilon must be positive")
        if self.noise_multiplier is not None and self.noise_multiplier < 0:
            raise ConfigurationError("noise_multiplier must be non-negative")
        if self.clip <= 0 or self.lr <= 0 or self.server_lr <= 0:
            raise ConfigurationError("clip, lr and server_lr must be positive")
        if self.batch_size < 1 or self.max_physical_batch_size < 1:
            raise ConfigurationError("batch sizes must be at least 1")
        if not 0 < self.delta < 1:
            raise ConfigurationError("delta must be in (0, 1)")
        check_accountant(self.accountant)
        if self.attention_noise_multiplier <= 0:
            raise ConfigurationError("attention_noise_multiplier must be positive")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigurationError("max_examples must be positive (or None for all)")
        if self.client_optimizer not in CLIENT_OPTIMIZERS:
            raise ConfigurationError(f"client_optimizer must be one of {CLIENT_OPTIMIZERS}")
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise ConfigurationError(f"server_optimizer must be one of {SERVER_OPTIMIZERS}")
        if self.model_overrides is not None and not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in self.model_overrides.items()
        ):
            raise ConfigurationError("model_overrides maps argument names to integers")
        preset = get_preset(self.preset)
        if self.he and self.clients > preset.max_clients:
            raise ConfigurationError(
                f"{self.clients} clients exceed preset {preset.name!r}'s "
                f"{preset.max_clients} clients per aggregate (use preset 'large')"
            )

    @property
    def sampled_per_round(self) -> int:
        """Clients sampled each round."""
        return min(self.clients, max(self.min_clients, round(self.fraction * self.clients)))

    def digest(self) -> str:
        """SHA-256 of the configuration (checkpoints refuse another run's config)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> FederationConfig:
        """Rebuild from :meth:`to_json` output."""
        if not isinstance(data, dict):
            raise ConfigurationError("a configuration is a JSON object")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigurationError(f"invalid configuration: {exc}") from None


def _check_types(config: FederationConfig) -> None:
    """Refuse values of the wrong type (booleans are not numbers; floats must be finite)."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        default = GENERAL[item.name]
        kind = type(default) if default is not None else None
        if item.name in ("dirichlet_alpha", "epsilon", "noise_multiplier"):
            kind = float
        if item.name == "max_examples":
            kind = int
        if value is None:
            if default is None or item.name in ("dirichlet_alpha", "epsilon", "noise_multiplier"):
                continue
            raise ConfigurationError(f"{item.name} must not be None")
        if item.name == "model_overrides":
            if not isinstance(value, dict):
                raise ConfigurationError("model_overrides must be a dict")
            continue
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            )
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ConfigurationError(f"{item.name} has an invalid value {value!r:.40}")


def default_config(dataset: str | None = None, **overrides: Any) -> FederationConfig:
    """The defaults for ``dataset`` (general options, then its recipe), then ``overrides``.

    With ``dp=False`` the dataset's non-private recipe replaces the DP-SGD one (and
    ``epsilon`` defaults to ``None``): a baseline gets its own best recipe.

    Raises
    ------
    ConfigurationError
        If the dataset is unknown or an override is invalid.
    """
    name = dataset if dataset is not None else overrides.pop("dataset", GENERAL["dataset"])
    if name not in RECIPES:
        raise ConfigurationError(f"dataset must be one of {sorted(RECIPES)}")
    recipe: dict[str, Any] = dict(RECIPES[name])
    if overrides.get("dp", GENERAL["dp"]) is False:
        recipe.update(NONPRIVATE_RECIPES[name], epsilon=None, noise_multiplier=None)
    values: dict[str, Any] = {**GENERAL, **recipe, **overrides, "dataset": name}
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(FederationConfig)})
    if unknown:
        raise ConfigurationError(f"unknown options: {', '.join(unknown)}")
    return FederationConfig(**values)
