"""Privacy accounting: exact ε for full-batch plans, checked against independent derivations."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import PRVAccountant
from scipy import integrate
from scipy.stats import norm

from secagg.dp.accounting import (
    epsilon_of,
    gaussian_epsilon,
    plan_noise_multiplier,
    rdp_epsilon,
)
from secagg.errors import ConfigurationError

# Opacus's PRV code takes log(1 - q) at q = 1 on its way to the right answer.
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")

FULL_BATCH_HISTORIES = [
    [(1.0, 1.0, 1)],
    [(3.36, 1.0, 30), (3.0, 1.0, 1)],  # bbc_news's plan: 30 rounds and the attention release
    [(2.0, 1.0, 20), (3.0, 1.0, 1)],
    [(10.0, 1.0, 1)],
]


def _delta_by_integration(epsilon: float, sigma: float) -> float:
    """δ(ε) of one Gaussian release of sensitivity 1, from its privacy-loss distribution.

    Under the first of the two neighbouring outputs the privacy loss is distributed as
    N(μ²/2, μ²) with μ = 1/σ, and δ(ε) = E[(1 - e^(ε - L))+] (the hockey-stick divergence).
    """
    mu = 1.0 / sigma

    def integrand(loss: float) -> float:
        return -math.expm1(epsilon - loss) * norm.pdf(loss, loc=mu * mu / 2, scale=mu)

    value, _ = integrate.quad(integrand, epsilon, math.inf, epsabs=1e-13, epsrel=1e-10)
    return value


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.5])
def test_one_gaussian_release_matches_its_privacy_loss_distribution(sigma: float) -> None:
    epsilon = gaussian_epsilon([(sigma, 1.0, 1)], 1e-5)
    assert _delta_by_integration(epsilon, sigma) == pytest.approx(1e-5, rel=1e-4)


def test_composition_of_full_batch_releases_is_one_gaussian() -> None:
    # n releases at σ are one release at σ/√n (μ-GDP composes as √(Σ μ²)).
    assert gaussian_epsilon([(2.0, 1.0, 16)], 1e-5) == pytest.approx(
        gaussian_epsilon([(0.5, 1.0, 1)], 1e-5), rel=1e-9
    )
    assert gaussian_epsilon([(2.0, 1.0, 4), (2.0, 1.0, 12)], 1e-5) == pytest.approx(
        gaussian_epsilon([(2.0, 1.0, 16)], 1e-5), rel=1e-9
    )


@pytest.mark.parametrize("history", FULL_BATCH_HISTORIES)
def test_exact_epsilon_is_what_opacus_prv_bounds_and_below_rdp(
    history: list[tuple[float, float, int]],
) -> None:
    prv = PRVAccountant()
    prv.history = list(history)
    upper = prv.get_epsilon(delta=1e-5, eps_error=0.01)
    exact = gaussian_epsilon(history, 1e-5)
    # Opacus's PRV returns an upper bound within its eps_error of the true value.
    assert upper - 0.02 <= exact <= upper
    assert exact < rdp_epsilon(history, 1e-5)
    assert epsilon_of(history, 1e-5) == exact  # "auto" is exact on full-batch plans


def test_auto_falls_back_to_rdp_for_subsampled_steps() -> None:
    subsampled = [(1.1, 0.1, 50)]
    mixed = [(1.1, 0.1, 50), (3.0, 1.0, 1)]
    assert epsilon_of(subsampled, 1e-5) == rdp_epsilon(subsampled, 1e-5)
    assert epsilon_of(mixed, 1e-5) == rdp_epsilon(mixed, 1e-5)
    with pytest.raises(ConfigurationError, match="full-batch"):
        gaussian_epsilon(subsampled, 1e-5)


def test_edge_cases_and_bad_input() -> None:
    assert gaussian_epsilon([(0.0, 1.0, 1)], 1e-5) == math.inf
    assert gaussian_epsilon([(1000.0, 1.0, 1)], 0.5) == 0.0  # δ alone already covers it
    assert epsilon_of([], 1e-5) == 0.0
    with pytest.raises(ConfigurationError, match="accountant"):
        epsilon_of([(1.0, 1.0, 1)], 1e-5, accountant="moments")
    with pytest.raises(ConfigurationError, match="delta"):
        gaussian_epsilon([(1.0, 1.0, 1)], 1.5)


def test_exact_planning_gives_less_noise_for_the_same_guarantee() -> None:
    plan = {"target_epsilon": 8.0, "delta": 1e-5, "sample_rate": 1.0, "steps": 30}
    exact = plan_noise_multiplier(**plan, extra_noise_multipliers=[3.0])
    loose = plan_noise_multiplier(**plan, accountant="rdp", extra_noise_multipliers=[3.0])
    history = [(exact, 1.0, 30), (3.0, 1.0, 1)]
    # Within 0.1% above the exact threshold: ε just under the target, not over it.
    assert 7.99 < gaussian_epsilon(history, 1e-5) <= 8.0
    assert exact < 0.95 * loose
