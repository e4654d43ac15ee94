"""What every engine derives from a run's configuration: data, partitions, models, clients.

The in-process federation builds everything in one process; on Flower the ServerApp
and each ClientApp rebuild what they need from the run config (and, for a client, its
node config). Both go through :class:`RunPlan`, so they train the same model on the
same data with the same recipe.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..dp.client import PrivateClient, plan_noise_multiplier
from ..errors import ConfigurationError
from .config import FederationConfig, client_id
from .datasets import Dataset, load_dataset
from .local import LocalClient, NonPrivateClient, derive_seed, make_loader, make_optimizer
from .partition import dirichlet_partition

__all__ = ["RunPlan", "client_id", "update_scale"]

#: Largest per-coordinate step of Adam with torch's default betas, in units of the
#: learning rate: (1 - β1) / sqrt(1 - β2) (Kingma and Ba 2015, section 2.1).
ADAM_STEP_BOUND = (1 - 0.9) / math.sqrt(1 - 0.999)
#: Gaussian tail used for the DP noise in the bound: P(|z| > 8) < 1.3e-15 per coordinate.
NOISE_TAIL = 8.0
#: A non-private SGD client clips nothing: its gradient coordinates are assumed to stay
#: within this many clipping norms (an update beyond the bound is refused, never clipped).
NONPRIVATE_GRADIENT_BOUND = 10.0


@dataclass
class RunPlan:
    """A run's dataset, partitions and weight bound, and the model and client builders.

    Build it with :meth:`load`.
    """

    config: FederationConfig
    dataset: Dataset
    partitions: list[np.ndarray[Any, np.dtype[np.int64]]]
    weight_bound: float
    update_scale: float = 1.0

    @classmethod
    def load(cls, config: FederationConfig) -> RunPlan:
        """Load the dataset and partition it (the seed makes both reproducible)."""
        dataset = load_dataset(config.dataset, seed=config.seed, max_examples=config.max_examples)
        labels = dataset.y_train.numpy()
        partitions = dirichlet_partition(
            labels, config.clients, alpha=config.dirichlet_alpha, seed=config.seed, min_size=2
        )
        largest = max(len(p) for p in partitions)
        weight_bound = float(2 ** math.ceil(math.log2(largest)))
        scale = update_scale(config, [len(p) for p in partitions])
        return cls(config, dataset, list(partitions), weight_bound, scale)

    @property
    def attention_scale(self) -> float:
        """The public bound on the analysis round's values: a client's noisy attention
        sum over at most ``weight_bound`` examples, each row a distribution, divided by
        ``weight_bound``: at most ``1 + NOISE_TAIL·σ/weight_bound``."""
        config = self.config
        sigma = config.attention_noise_multiplier if config.dp else 0.0
        return 1.0 + NOISE_TAIL * float(sigma) / self.weight_bound

    @property
    def digest(self) -> str:
        """What a checkpoint of this run must match: the configuration and the model.

        :meth:`FederationConfig.digest` covers every option; the model's kind and every
        constructor argument cover what a library upgrade can change under the same options
        (weights trained by a text model that weighed its tokens otherwise must not resume).
        """
        model = {"kind": self.dataset.kind, "kwargs": self.model_kwargs}
        text = json.dumps({"config": self.config.digest(), "model": model}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def client_ids(self) -> list[str]:
        """Every client's id, in partition order."""
        return [client_id(i) for i in range(self.config.clients)]

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """Every constructor argument of the run's model: the dataset's defaults with
        ``config.model_overrides`` applied."""
        return {**self.dataset.default_model_kwargs, **(self.config.model_overrides or {})}

    def build_model(self) -> nn.Module:
        """The dataset's default model with ``config.model_overrides`` applied."""
        model = self.dataset.default_model()
        if not self.config.model_overrides:
            return model
        try:
            return type(model)(**self.model_kwargs)
        except TypeError as exc:
            raise ConfigurationError(f"invalid model override: {exc}") from None

    def initial_state(self) -> dict[str, torch.Tensor]:
        """The initial global weights (the model built right after seeding torch)."""
        torch.manual_seed(self.config.seed)
        model = self.build_model()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def round_seed(self, round_id: int, index: int) -> int | None:
        """The seed client ``index`` trains round ``round_id`` with, if any.

        The baseline's batch order follows the run seed. A DP client gets no seed: its
        noise and batch sampling come from the OS CSPRNG, unless the run is in the
        research-only deterministic mode.
        """
        config = self.config
        torch.manual_seed(derive_seed(config.seed, round_id, index, "torch"))
        if config.dp and not config.insecure_deterministic:
            return None
        return derive_seed(config.seed, round_id, index)

    def make_client(
        self, index: int, *, global_state: Mapping[str, torch.Tensor]
    ) -> LocalClient | PrivateClient:
        """Build partition ``index``'s client with the run's recipe.

        A DP client plans its own σ for the target ε over the whole run (every round,
        every local epoch and the attention release), with the sample rate and step
        count it really uses.
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
        if not config.dp:
            return NonPrivateClient(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                epochs_per_round=config.local_epochs,
            )
        extra = [config.attention_noise_multiplier] if config.attention_analysis else []
        privacy: dict[str, Any] = (
            {"noise_multiplier": config.noise_multiplier}
            if config.noise_multiplier is not None
            else {"target_epsilon": config.epsilon, "planned_rounds": config.rounds}
        )
        return PrivateClient(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            max_grad_norm=config.clip,
            epochs_per_round=config.local_epochs,
            delta=config.delta,
            accountant=config.accountant,
            epsilon_budget=config.epsilon,
            max_physical_batch_size=config.max_physical_batch_size,
            extra_noise_multipliers=extra,
            randomness="deterministic" if config.insecure_deterministic else "secure",
            **privacy,
        )


def update_scale(config: FederationConfig, sizes: list[int]) -> float:
    """A public bound on any coordinate of any client's update in this run.

    Clients send ``update / update_scale`` (and the coordinator multiplies the released
    mean back), so that the encrypted values stay inside the preset's range. The bound
    follows from the recipe alone (public): ``S`` local steps of learning rate ``lr``
    move a coordinate by at most ``lr·S·C`` with per-sample clipping to ``C``, plus the
    DP noise (``NOISE_TAIL`` standard deviations of ``lr·σ·C·sqrt(S)/B``, with the σ each
    client plans), or ``ADAM_STEP_BOUND·lr·S`` with Adam. A client whose update still
    exceeds it is refused with a typed error (nothing is clipped) and keeps its spending.
    """
    bound = 0.0
    for n in sorted(set(sizes)):
        batch = min(config.batch_size, n)
        per_epoch = math.ceil(n / batch)  # len(DataLoader): the DP client's 1/q
        steps = config.local_epochs * per_epoch
        if config.client_optimizer == "adam":
            bound = max(bound, ADAM_STEP_BOUND * config.lr * steps)
            continue
        if not config.dp:
            bound = max(bound, config.lr * steps * NONPRIVATE_GRADIENT_BOUND * config.clip)
            continue
        sigma = config.noise_multiplier
        if sigma is None:
            extra = [config.attention_noise_multiplier] if config.attention_analysis else []
            sigma = plan_noise_multiplier(
                target_epsilon=float(config.epsilon or 0.0),
                delta=config.delta,
                sample_rate=1.0 / per_epoch,
                steps=config.rounds * steps,
                accountant=config.accountant,
                extra_noise_multipliers=extra,
            )
        expected_batch = max(1, int(n / per_epoch))
        noise = NOISE_TAIL * sigma * math.sqrt(steps) / expected_batch
        bound = max(bound, config.lr * config.clip * (steps + noise))
    return bound if bound > 0 else 1.0
