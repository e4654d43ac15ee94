"""Server-side optimisers applied to the released mean update (FedAvg, FedAdam, momentum)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ConfigurationError

__all__ = ["SERVER_OPTIMIZERS", "ServerOptimizer"]

from .defaults import SERVER_OPTIMIZERS


class ServerOptimizer:
    """Applies a released mean update ``Δ`` to the global weights.

    - ``fedavg``: ``w += lr · Δ`` (``lr=1`` is plain FedAvg);
    - ``momentum``: ``m = β1·m + Δ``; ``w += lr · m`` (server momentum, FedAvgM);
    - ``fedadam``: Adam on ``-Δ`` as the pseudo-gradient (Reddi et al., 2021), with
      ``tau`` as the adaptivity constant.

    Parameters
    ----------
    name : {"fedavg", "fedadam", "momentum"}
        The rule.
    lr : float
        Server learning rate.
    beta1, beta2, tau : float
        Momentum, second-moment decay and adaptivity constants.
    """

    def __init__(
        self,
        name: str = "fedavg",
        *,
        lr: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        if name not in SERVER_OPTIMIZERS:
            raise ConfigurationError(f"server optimizer must be one of {SERVER_OPTIMIZERS}")
        if lr <= 0:
            raise ConfigurationError("server learning rate must be positive")
        self.name = name
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau
        self._m: dict[str, torch.Tensor] = {}
        self._v: dict[str, torch.Tensor] = {}

    def apply(
        self, weights: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Return new global weights (the inputs are not modified)."""
        out = {name: tensor.clone() for name, tensor in weights.items()}
        for name, step in delta.items():
            step = step.to(out[name].dtype)
            if self.name == "fedavg":
                out[name] += self.lr * step
            elif self.name == "momentum":
                m = self._m.get(name, torch.zeros_like(step))
                self._m[name] = self.beta1 * m + step
                out[name] += self.lr * self._m[name]
            else:
                m = self._m.get(name, torch.zeros_like(step))
                v = self._v.get(name, torch.zeros_like(step))
                self._m[name] = self.beta1 * m + (1 - self.beta1) * step
                self._v[name] = self.beta2 * v + (1 - self.beta2) * step * step
                out[name] += self.lr * self._m[name] / (self._v[name].sqrt() + self.tau)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Moment estimates, for checkpoints."""
        return {"m": dict(self._m), "v": dict(self._v)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore moment estimates from :meth:`state_dict`."""
        self._m = {str(k): v for k, v in state.get("m", {}).items()}
        self._v = {str(k): v for k, v in state.get("v", {}).items()}
