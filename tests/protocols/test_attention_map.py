"""What the released attention map tells a reader about its own noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from secagg.protocols.attention import AttentionMap


def _released(attention: np.ndarray, noise_std: float, seed: int = 0) -> AttentionMap:
    noise = np.random.default_rng(seed).normal(0.0, noise_std, attention.shape)
    return AttentionMap(
        unit_names=tuple(f"unit {i}" for i in range(len(attention))),
        weights=tuple(float(w) for w in attention + noise),
        contributors=("client-000",),
        noise_multiplier=3.0,
        noise_std=noise_std,
    )


def test_noise_to_signal_measures_the_attention_not_the_noisy_map() -> None:
    attention = np.zeros(4000)
    attention[:40] = np.linspace(0.05, 0.005, 40)
    attention /= attention.sum()
    spread = float(np.std(attention))
    released = _released(attention, noise_std=0.5 * spread)
    assert released.noise_to_signal == pytest.approx(0.5, rel=0.1)
    # Pure noise has no attention spread to speak of: not "noise/signal 1".
    assert _released(np.zeros(4000), noise_std=1e-3).noise_to_signal > 3
    assert math.isinf(_released(np.zeros(4000), noise_std=0.0).noise_to_signal)


def test_units_above_noise_finds_the_planted_units_and_few_false_ones() -> None:
    attention = np.zeros(4000)
    attention[:10] = 0.08  # 10 units far above the noise, the rest at zero
    attention[10:] = 0.2 / 3990
    noise_std = 0.005
    counts = [_released(attention, noise_std, seed=s).units_above_noise for s in range(20)]
    # Every planted unit is found; pure-noise units pass the Bonferroni bar rarely
    # (5% family-wise), so at most one extra in 20 maps is expected.
    assert min(counts) == 10 and sum(c - 10 for c in counts) <= 3
    assert _released(np.zeros(4000), noise_std).units_above_noise <= 1
    exact = _released(attention, noise_std=0.0)
    assert exact.units_above_noise == 4000  # no noise: every unit with attention counts
