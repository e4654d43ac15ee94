"""Privacy-preserving attention analysis: DP-noised, securely aggregated attention maps.

Each client sums its examples' attention weights under the final global model
(one row per example, each a probability vector, so L2 norm <= 1 and one
example moves the sum by at most 1), adds Gaussian noise through its own privacy
ledger (:meth:`secagg.PrivateClient.release_noisy_sum`), and sends the noisy sum
through the same aggregation backend as the model updates, weighted by its
example count. The key holder releases only the federation-wide mean map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..client import PrivateClient
from ..errors import (
    AggregationError,
    ConfigurationError,
    NotEnoughClientsError,
    PayloadError,
    PrivacyBudgetExceededError,
    ReleaseError,
)
from .local import derive_seed

if TYPE_CHECKING:
    from .federation import Federation

__all__ = ["AttentionMap", "federated_attention"]


@dataclass(frozen=True)
class AttentionMap:
    """Federation-wide mean attention per unit (feature, token position or patch)."""

    unit_names: tuple[str, ...]
    weights: tuple[float, ...]
    contributors: tuple[str, ...]
    noise_multiplier: float | None
    note: str = ""

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` units with the most attention, highest first."""
        order = np.argsort(self.weights)[::-1][:k]
        return [(self.unit_names[i], self.weights[i]) for i in order]


@torch.no_grad()
def local_attention_rows(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Per-example attention weights of ``model`` (one probability row per example)."""
    model.eval()
    attention = getattr(model, "attention_weights", None)
    if not callable(attention):
        raise ConfigurationError(f"{type(model).__name__} has no attention_weights(x) method")
    rows = [attention(inputs[i : i + 256]) for i in range(0, len(inputs), 256)]
    return torch.cat(rows).double()


def federated_attention(federation: Federation) -> AttentionMap:
    """Run the analysis round on every client with the final global model."""
    config = federation.config
    dataset = federation.dataset
    round_id = config.rounds + 1  # the analysis is the round after the last training round
    roster = list(federation.client_ids)
    sigma = config.attention_noise_multiplier if config.dp else None
    payloads: list[bytes] = []
    declined: list[str] = []
    for index, (cid, client) in enumerate(zip(roster, federation.clients, strict=True)):
        idx = torch.as_tensor(federation.partitions[index])
        client.module.load_state_dict(federation.global_state)
        torch.manual_seed(derive_seed(config.seed, "attention", index))
        rows = local_attention_rows(client.module, dataset.x_train[idx])
        if isinstance(client, PrivateClient) and sigma is not None:
            try:
                total = client.release_noisy_sum(rows, noise_multiplier=sigma)
            except PrivacyBudgetExceededError:
                declined.append(cid)
                continue
        else:
            total = rows.sum(dim=0)
        mean = (total / len(idx)).float()
        payloads.append(
            federation.backend.client_payload(
                {"attention": mean},
                weight=float(len(idx)),
                weight_bound=federation.weight_bound,
                round_id=round_id,
                client_id=cid,
                roster=roster,
            )
        )
    server = federation.backend.server(
        round_id=round_id, roster=roster, min_clients=config.min_clients
    )
    for payload in payloads:
        try:
            server.add(payload)
        except (PayloadError, AggregationError):
            continue
    contributors = set(server.contributors)
    try:
        aggregate = server.finalize()
    except NotEnoughClientsError as exc:
        _settle(federation, contributors=set())
        return _empty(dataset.unit_names, sigma, f"skipped: {exc}")
    _settle(federation, contributors=contributors)
    federation.write_checkpoint(federation.rounds_completed)  # write-ahead, as for training
    try:
        released = federation.backend.release(aggregate)
    except ReleaseError as exc:
        return _empty(dataset.unit_names, sigma, f"not released: {exc}")
    weights = released.mean["attention"].double().numpy()
    note = f"over budget: {', '.join(declined)}" if declined else ""
    return AttentionMap(
        unit_names=tuple(dataset.unit_names),
        weights=tuple(float(w) for w in weights),
        contributors=released.contributors,
        noise_multiplier=sigma,
        note=note,
    )


def _settle(federation: Federation, *, contributors: set[str]) -> None:
    """Commit the contributors' releases, discard the rest (as for a training round)."""
    for cid, client in zip(federation.client_ids, federation.clients, strict=True):
        if not isinstance(client, PrivateClient) or not client.round_pending:
            continue
        if cid in contributors:
            client.commit_round()
        else:
            client.discard_round()


def _empty(units: tuple[str, ...], sigma: float | None, note: str) -> AttentionMap:
    return AttentionMap(tuple(units), (), (), sigma, note)
