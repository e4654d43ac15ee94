"""Privacy accounting: ε of a history of DP-SGD steps, and the σ that plans a target ε.

A history is a list of ``(noise multiplier σ, Poisson sample rate q, steps)``, the form
Opacus's accountants keep. Pure functions of numbers: no torch, no model. NumPy, Opacus
and SciPy load on first use, so the command line can import :data:`ACCOUNTANTS` (to
validate a configuration) and still start in a tenth of a second.

Accountants (:data:`ACCOUNTANTS`):

- ``"auto"`` (the default): :func:`gaussian_epsilon` when every step of the history is
  full batch (``q = 1``, as in secagg's recipes: DP gradient descent and the attention
  release), which is exact; :func:`rdp_epsilon` otherwise;
- ``"rdp"``: Rényi DP at :data:`RDP_ORDERS` (Mironov 2017), an upper bound that is loose
  by about 6% in σ at secagg's plans;
- ``"prv"`` and ``"gdp"``: Opacus's accountants of those names (``"prv"`` is tight for
  subsampled steps too but takes about half a second per evaluation).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ConfigurationError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "ACCOUNTANTS",
    "RDP_ORDERS",
    "check_accountant",
    "epsilon_of",
    "gaussian_epsilon",
    "plan_noise_multiplier",
    "rdp_epsilon",
]

#: Accountants secagg accepts: ``"auto"`` and Opacus's names.
ACCOUNTANTS = ("auto", "rdp", "prv", "gdp")

#: The Rényi orders of secagg's RDP accounting: dense where ε ≈ 1–10 is decided, integer
#: beyond (Mironov, Talwar and Zhang 2019 give exact integer-order bounds, cheaply).
RDP_ORDERS: tuple[float, ...] = (1.25, 1.5, 1.75, *range(2, 65), 80, 96, 128, 256)


def check_accountant(accountant: str) -> None:
    """Raise :class:`~secagg.errors.ConfigurationError` unless ``accountant`` is one of
    :data:`ACCOUNTANTS`."""
    if accountant not in ACCOUNTANTS:
        raise ConfigurationError(f"accountant must be one of {ACCOUNTANTS}")


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of one subsampled Gaussian step at every order (cached: pure function)."""
    import numpy as np
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDP_ORDERS)
    return np.asarray(rdp, dtype=np.float64)


def rdp_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """ε at ``delta`` of a history of ``(σ, sample rate, steps)`` under the RDP accountant.

    The same composition and conversion as Opacus's ``RDPAccountant.get_epsilon`` with
    ``alphas=RDP_ORDERS``; each step's RDP is computed once per (σ, q) and cached.
    """
    from opacus.accountants.analysis.rdp import get_privacy_spent

    if not history:
        return 0.0
    total = sum(int(n) * _rdp_per_step(float(q), float(s)) for s, q, n in history)
    epsilon, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=total, delta=delta)
    return float(epsilon)


def _gaussian_delta(epsilon: float, mu: float) -> float:
    """δ(ε) of a μ-GDP mechanism: Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2), in log space."""
    from scipy.special import log_ndtr

    first = math.exp(log_ndtr(-epsilon / mu + mu / 2))
    second = math.exp(epsilon + log_ndtr(-epsilon / mu - mu / 2))
    return first - second


def gaussian_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """ε at ``delta`` of a history of full-batch Gaussian releases, exactly.

    Each entry ``(σ, 1, n)`` is ``n`` releases of a sum of sensitivity 1 with
    ``N(0, σ²)`` noise on every coordinate. Their adaptive composition is exactly
    μ-GDP with ``μ = sqrt(Σ n / σ²)`` (Dong, Roth and Su 2022, Corollary 3.3), and a
    μ-GDP mechanism is (ε, δ)-DP exactly when ``δ ≥ Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)``
    (Balle and Wang 2018, Theorem 8): ε is the root of that equation. Opacus's PRV
    accountant converges to the same value (it bounds it within its ``eps_error``).

    Raises
    ------
    ConfigurationError
        If an entry is subsampled (``q < 1``) or ``delta`` is not in ``(0, 1)``.
    """
    if not 0 < delta < 1:
        raise ConfigurationError("delta must be in (0, 1)")
    if any(float(q) != 1.0 for _, q, _ in history):
        raise ConfigurationError("gaussian_epsilon covers full-batch releases only (q = 1)")
    if any(float(s) == 0.0 and int(n) > 0 for s, _, n in history):
        return math.inf
    mu = math.sqrt(sum(int(n) / float(s) ** 2 for s, _, n in history))
    if mu == 0.0 or _gaussian_delta(0.0, mu) <= delta:
        return 0.0
    high = 1.0
    while _gaussian_delta(high, mu) > delta:
        high *= 2.0
    from scipy.optimize import brentq

    return float(brentq(lambda e: _gaussian_delta(e, mu) - delta, 0.0, high, xtol=1e-10))


def epsilon_of(
    history: Sequence[tuple[float, float, int]], delta: float, *, accountant: str = "auto"
) -> float:
    """ε at ``delta`` of ``history`` under ``accountant`` (0 for an empty history)."""
    check_accountant(accountant)
    if not history:
        return 0.0
    if accountant == "auto":
        if all(float(q) == 1.0 for _, q, _ in history):
            return gaussian_epsilon(history, delta)
        return rdp_epsilon(history, delta)
    if accountant == "rdp":
        return rdp_epsilon(history, delta)
    from opacus.accountants import create_accountant

    probe = create_accountant(accountant)
    probe.history = list(history)
    return float(probe.get_epsilon(delta=delta))


def plan_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "auto",
    extra_noise_multipliers: Sequence[float] = (),
) -> float:
    """Smallest noise multiplier σ whose whole plan of DP-SGD steps stays within ``target_epsilon``.

    Plan with what the client really does: Poisson sampling at ``sample_rate`` (for
    :class:`PrivateClient`, ``1 / len(data_loader)``) for ``steps`` steps in total (every
    round of the run, ``len(data_loader)`` steps per local epoch). ``extra_noise_multipliers``
    adds full-batch Gaussian releases of sensitivity 1 (such as the attention statistics)
    to the same ledger. The result is within 0.1% above the exact threshold.

    Raises
    ------
    ConfigurationError
        If the arguments are out of range or no σ up to 1000 reaches the target.
    """
    if not (
        isinstance(target_epsilon, int | float)
        and math.isfinite(target_epsilon)
        and target_epsilon > 0
        and 0 < delta < 1
        and 0 < sample_rate <= 1
        and steps >= 1
    ):
        raise ConfigurationError("need target_epsilon > 0, 0 < delta < 1, 0 < q <= 1, steps >= 1")
    check_accountant(accountant)
    extras = [(float(s), 1.0, 1) for s in extra_noise_multipliers]

    def epsilon_for(sigma: float) -> float:
        return epsilon_of([(sigma, sample_rate, int(steps)), *extras], delta, accountant=accountant)

    low, high = 0.05, 1000.0
    if epsilon_for(high) > target_epsilon:
        raise ConfigurationError(f"ε={target_epsilon} is out of reach for this plan")
    # Bisection on log σ: ε(σ) is decreasing; about 20 evaluations to 0.1%.
    while high / low > 1.001:
        middle = math.sqrt(low * high)
        if epsilon_for(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    return high
