"""What both Flower apps derive from a run's configuration, exactly as the in-process federation.

:class:`~secagg.protocols.Federation` builds everything in one process; on Flower the
ServerApp and each ClientApp process rebuild the parts they need from the run config
(and, for a client, its node config). Every step below repeats the federation's own
set-up with the same seeds, so the two engines train the same model on the same data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..client import PrivateClient, plan_noise_multiplier
from .datasets import Dataset, load_dataset
from ..errors import ConfigurationError
from .partition import dirichlet_partition
from .config import FederationConfig
from .local import LocalClient, NonPrivateClient, make_loader, make_optimizer

__all__ = ["RunPlan"]


@dataclass
class RunPlan:
    """A run's dataset, partitions and weight bound, and the model and client builders.

    Build it with :meth:`load`.
    """

    config: FederationConfig
    dataset: Dataset
    partitions: list[np.ndarray[Any, np.dtype[np.int64]]]
    weight_bound: float

    @classmethod
    def load(cls, config: FederationConfig) -> RunPlan:
        """Load the dataset and partition it as :class:`~secagg.protocols.Federation` does."""
        dataset = load_dataset(config.dataset, seed=config.seed, max_examples=config.max_examples)
        labels = dataset.y_train.numpy()
        partitions = dirichlet_partition(
            labels, config.clients, alpha=config.dirichlet_alpha, seed=config.seed, min_size=2
        )
        largest = max(len(p) for p in partitions)
        weight_bound = float(2 ** math.ceil(math.log2(largest)))
        return cls(config, dataset, list(partitions), weight_bound)

    def build_model(self) -> nn.Module:
        """The dataset's default model with ``config.model_overrides`` applied."""
        model = self.dataset.default_model()
        overrides = self.config.model_overrides
        if not overrides:
            return model
        kwargs = {**self.dataset.default_model_kwargs, **overrides}
        try:
            return type(model)(**kwargs)
        except TypeError as exc:
            raise ConfigurationError(f"invalid model override: {exc}") from None

    def initial_state(self) -> dict[str, torch.Tensor]:
        """The initial global weights (the model built right after seeding torch)."""
        torch.manual_seed(self.config.seed)
        model = self.build_model()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def noise_multiplier(self) -> float | None:
        """The DP-SGD noise multiplier of the whole run (``None`` without DP)."""
        config = self.config
        if not config.dp:
            return None
        if config.noise_multiplier is not None:
            return config.noise_multiplier
        assert config.epsilon is not None  # checked in FederationConfig
        # The worst case: a client sampled every round; its sample rate is the smallest
        # client's, whose batches are most numerous relative to its size.
        sample_rate = min(1.0, max(config.batch_size / len(p) for p in self.partitions))
        extra = [config.attention_noise_multiplier] if config.attention_analysis else []
        return plan_noise_multiplier(
            target_epsilon=config.epsilon,
            delta=config.delta,
            sample_rate=sample_rate,
            rounds=config.rounds,
            epochs_per_round=config.local_epochs,
            extra_noise_multipliers=extra,
        )

    def make_client(
        self,
        index: int,
        *,
        global_state: Mapping[str, torch.Tensor],
        noise_multiplier: float | None,
    ) -> tuple[LocalClient | PrivateClient, torch.Generator]:
        """Build partition ``index``'s client; also return its loader's generator.

        The generator draws the client's batches (Poisson sampling with DP); its
        state must carry over from round to round, as in the in-process federation.
        """
        config = self.config
        if not 0 <= index < len(self.partitions):
            raise ConfigurationError(f"partition {index} is outside [0, {len(self.partitions)})")
        idx = torch.as_tensor(self.partitions[index])
        model = self.build_model()
        model.load_state_dict(dict(global_state))
        optimizer = make_optimizer(config.client_optimizer, model.parameters(), config.lr)
        loader = make_loader(
            self.dataset.x_train[idx],
            self.dataset.y_train[idx],
            batch_size=min(config.batch_size, len(idx)),
            seed=config.seed * 1_000_003 + index,
        )
        generator = loader.generator
        assert generator is not None  # make_loader always seeds its own generator
        if not config.dp:
            plain = NonPrivateClient(
                module=model, optimizer=optimizer, data_loader=loader, max_grad_norm=config.clip
            )
            return plain, generator
        if noise_multiplier is None:
            raise ConfigurationError("a DP run needs a noise multiplier")
        client = PrivateClient(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=config.clip,
            epochs_per_round=config.local_epochs,
            delta=config.delta,
            epsilon_budget=config.epsilon,
            max_physical_batch_size=config.max_physical_batch_size,
        )
        return client, generator
