"""The options of a federated run, shared by the in-process federation and Flower."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from .datasets import DATASET_NAMES
from ..errors import ConfigurationError
from ..presets import get_preset
from .server_opt import SERVER_OPTIMIZERS

__all__ = ["FederationConfig"]


@dataclass(frozen=True)
class FederationConfig:
    """Everything that determines a federated run (and its checkpoint digest).

    Give ``epsilon`` to plan the noise multiplier once for the whole run (every
    round, every local epoch and the attention release), or ``noise_multiplier``.
    """

    dataset: str = "digits"
    clients: int = 10
    rounds: int = 10
    fraction: float = 0.5
    min_clients: int = 2
    dirichlet_alpha: float | None = 1.0
    dropout: float = 0.0
    seed: int = 0
    he: bool = True
    dp: bool = True
    epsilon: float | None = None
    noise_multiplier: float | None = 1.0
    clip: float = 1.0
    delta: float = 1e-5
    local_epochs: int = 1
    batch_size: int = 32
    max_physical_batch_size: int = 64
    lr: float = 0.01
    client_optimizer: str = "adam"
    server_optimizer: str = "fedavg"
    server_lr: float = 1.0
    preset: str = "default"
    max_examples: int | None = None
    attention_analysis: bool = True
    attention_noise_multiplier: float = 2.0
    model_overrides: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        """Validate every option with a clear :class:`ConfigurationError`."""
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
        if self.dp and (self.epsilon is None) == (self.noise_multiplier is None):
            raise ConfigurationError("with DP give exactly one of epsilon or noise_multiplier")
        if self.clip <= 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigurationError("clip, batch_size and lr must be positive")
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise ConfigurationError(f"server_optimizer must be one of {SERVER_OPTIMIZERS}")
        if self.he:
            preset = get_preset(self.preset)
            if self.sampled_per_round > preset.max_clients:
                raise ConfigurationError(
                    f"{self.sampled_per_round} clients per round exceed preset "
                    f"{preset.name!r}'s roster of {preset.max_clients}"
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
    def from_json(cls, data: dict[str, Any]) -> FederationConfig:
        """Rebuild from :meth:`to_json` output."""
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigurationError(f"invalid configuration: {exc}") from None
