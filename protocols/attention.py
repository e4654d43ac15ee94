"""Privacy-preserving attention analysis: DP-noised, securely aggregated attention maps.

After the last training round, each client sums its examples' attention weights under
the final global model (one probability row per example: L2 norm <= 1, so one example
moves the sum by at most 1), adds Gaussian noise through its own privacy ledger
(:meth:`secagg.PrivateClient.release_noisy_sum`, noise from the OS CSPRNG), and sends
the noisy sum through the same aggregation as the model updates, weighted by its
example count. The key holder releases only the federation-wide mean map.

With ``K`` contributors holding ``N`` examples in all and noise σ per client, each unit
of the released mean carries noise of standard deviation ``sqrt(K)·σ / N``. The map
reports it, its ratio to the spread of the attention itself across units (the noise's
share of the released spread taken out), and how many units stand above the noise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

from ..dp.client import PrivateClient
from ..errors import ConfigurationError, PrivacyBudgetExceededError, UpdateValueError
from .backends import PayloadMaker
from .local import LocalClient, refused_report
from .roundlog import ClientReport, RoundPlan

__all__ = ["AttentionMap", "attention_round", "local_attention_rows"]

#: Family-wise error rate of :attr:`AttentionMap.units_above_noise` (Bonferroni).
FAMILY_WISE_ERROR = 0.05


@dataclass(frozen=True)
class AttentionMap:
    """Federation-wide mean attention per unit (feature, image patch or token bucket).

    Attributes
    ----------
    unit_names : tuple of str
        What each unit is.
    weights : tuple of float
        The released mean attention per unit (empty if nothing was released).
    contributors : tuple of str
        Clients whose statistics are in the map.
    noise_multiplier : float or None
        σ of each client's Gaussian noise (``None`` without DP).
    noise_std : float
        Standard deviation of the DP noise on each released unit.
    note : str
        Why the map is empty, or who declined.
    """

    unit_names: tuple[str, ...]
    weights: tuple[float, ...]
    contributors: tuple[str, ...]
    noise_multiplier: float | None
    noise_std: float = 0.0
    note: str = ""

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` units with the most attention, highest first."""
        order = np.argsort(self.weights)[::-1][:k]
        return [(self.unit_names[i], self.weights[i]) for i in order]

    @property
    def noise_to_signal(self) -> float:
        """The noise's standard deviation over the spread of the attention across units.

        The released map's variance across units is the attention's plus the noise's
        (independent, ``noise_std²`` per unit), so the attention's spread is estimated as
        ``sqrt(var(weights) - noise_std²)``. ``inf`` when the noise explains all of the
        released spread (dividing by the noisy spread instead would never exceed 1, and
        would call a map of pure noise "noise/signal 1").
        """
        if not self.weights:
            return math.inf
        attention_var = float(np.var(self.weights)) - self.noise_std**2
        return self.noise_std / math.sqrt(attention_var) if attention_var > 0 else math.inf

    @property
    def noise_threshold(self) -> float:
        """What a unit's released attention must exceed to stand above the noise.

        A one-sided test of each unit against zero at ``z = Φ⁻¹(1 - 0.05 / units)``
        standard deviations of the noise (Bonferroni: a map of pure noise shows no unit
        with probability 95%). ``0.0`` without noise (any positive attention counts).
        """
        if not self.weights or self.noise_std == 0:
            return 0.0
        z = NormalDist().inv_cdf(1.0 - FAMILY_WISE_ERROR / len(self.weights))
        return z * self.noise_std

    def above_noise(self, weight: float) -> bool:
        """Whether a released weight stands above the noise (:attr:`noise_threshold`)."""
        return weight > self.noise_threshold

    @property
    def units_above_noise(self) -> int:
        """How many units' released attention is above zero beyond what the noise explains
        (:meth:`above_noise`)."""
        weights = np.asarray(self.weights, dtype=np.float64)
        return int(np.count_nonzero(weights > self.noise_threshold))

    @property
    def all_within_noise(self) -> bool:
        """Whether the map was noised and no unit stands above the noise: it ranks nothing."""
        return bool(self.weights) and self.noise_std > 0 and self.units_above_noise == 0

    def describe(self, k: int = 5) -> list[str]:
        """What a reader should be told first: the top ``k`` units, each marked when the
        noise could explain it, and how many units stand above the noise.

        When no unit does, the map cannot rank its units, and the lines say so before
        naming any (a list of the largest noisy values reads as a finding otherwise).
        """
        if not self.weights:
            return [self.note or "no attention map was released"]
        if self.all_within_noise:
            values = ", ".join(f"{name} ({weight:.3f})" for name, weight in self.top(k))
            return [
                f"No unit stands above the DP noise (std {self.noise_std:.1e} per unit, 5% "
                f"family-wise): this map cannot rank its {len(self.weights)} units at this "
                "privacy level.",
                f"Its largest released values, all within the noise: {values}",
            ]
        top = ", ".join(
            f"{name} ({weight:.3f}{'' if self.above_noise(weight) else ', within the noise'})"
            for name, weight in self.top(k)
        )
        noisy = self.noise_std > 0
        lines = [f"Top attended units (federation-wide{', DP' if noisy else ''}): {top}"]
        if noisy:
            lines.append(
                f"{self.units_above_noise} of {len(self.weights)} units stand above the DP "
                f"noise (std {self.noise_std:.1e} per unit, 5% family-wise)"
            )
        return lines


@torch.no_grad()
def local_attention_rows(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Per-example attention over ``model``'s units (one probability row per example).

    ``model.unit_attention(x)`` when the model defines it (the text model adds its
    position weights up by token bucket), else ``model.attention_weights(x)``.
    """
    model.eval()
    attention = getattr(model, "unit_attention", None) or getattr(model, "attention_weights", None)
    if not callable(attention):
        raise ConfigurationError(
            f"{type(model).__name__} has no unit_attention(x) or attention_weights(x) method"
        )
    rows = [attention(inputs[i : i + 256]) for i in range(0, len(inputs), 256)]
    return torch.cat(rows).double()


def attention_round(
    client: LocalClient | PrivateClient,
    payloads: PayloadMaker,
    *,
    client_id: str,
    plan: RoundPlan,
    global_state: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    weight_bound: float,
    noise_multiplier: float | None,
    seed: int | None,
) -> ClientReport:
    """One client's part of the analysis round: its noisy attention sum as a payload.

    With DP the release is pending in the client's ledger until the round is settled.
    """
    epsilon_before = client.epsilon()
    start = time.perf_counter()
    client.module.load_state_dict(dict(global_state))
    rows = local_attention_rows(client.module, inputs)
    if isinstance(client, PrivateClient) and noise_multiplier is not None:
        try:
            total = client.release_noisy_sum(rows, noise_multiplier=noise_multiplier, seed=seed)
        except PrivacyBudgetExceededError as exc:
            return ClientReport(
                client_id, "declined", None, epsilon_before, epsilon_before, note=str(exc)
            )
    else:
        total = rows.sum(dim=0)
    computed = time.perf_counter()
    try:
        payload = payloads.payload(
            {"attention": (total / len(inputs)).float()},
            weight=float(len(inputs)),
            weight_bound=weight_bound,
            round_id=plan.aggregation_round,
            roster=plan.roster,
            scale=plan.update_scale,
        )
    except UpdateValueError as exc:
        return refused_report(
            client_id, client, epsilon_before, exc, train_seconds=computed - start
        )
    return ClientReport(
        client_id,
        "trained",
        payload,
        epsilon_before,
        client.epsilon(),
        train_seconds=computed - start,
        encrypt_seconds=time.perf_counter() - computed,
        payload_bytes=len(payload),
    )
