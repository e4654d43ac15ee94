"""What the released attention map tells a reader about its own noise."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from secagg.protocols import default_config
from secagg.protocols.attention import AttentionMap
from secagg.protocols.inprocess import RunResult
from secagg.protocols.report import write_report


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


def test_threshold_is_what_a_unit_must_exceed_to_count() -> None:
    attention = np.zeros(400)
    attention[:5] = 0.1
    released = _released(attention, noise_std=0.005)
    threshold = released.noise_threshold
    assert 3 * 0.005 < threshold < 5 * 0.005  # z of a 5% Bonferroni bar over 400 units
    above = [w for w in released.weights if released.above_noise(w)]
    assert len(above) == released.units_above_noise and min(above) > threshold
    assert _released(attention, noise_std=0.0).noise_threshold == 0.0


def test_a_map_of_pure_noise_says_so_before_naming_any_unit() -> None:
    released = _released(np.full(4000, 1 / 4000), noise_std=0.002)
    assert released.all_within_noise
    first, second = released.describe(5)
    assert first.startswith("No unit stands above the DP noise")
    assert not re.search(r"unit \d", first)  # no unit named before the warning
    assert "all within the noise" in second and len(re.findall(r"unit \d+", second)) == 5


def test_top_units_are_marked_when_the_noise_could_explain_them() -> None:
    attention = np.zeros(400)
    attention[:3] = [0.3, 0.25, 0.2]  # three clear units; the next two in the top 5: noise
    released = _released(attention, noise_std=0.005)
    top, count = released.describe(5)
    assert not released.all_within_noise
    assert top.startswith("Top attended units (federation-wide, DP)")
    assert top.count("within the noise") == 2 and "unit 0 (0.3" in top
    assert count.startswith("3 of 400 units stand above the DP noise")
    exact = _released(attention, noise_std=0.0)
    assert exact.describe(1) == ["Top attended units (federation-wide): unit 0 (0.300)"]


def test_the_report_of_a_noise_only_map_says_it_ranks_nothing(tmp_path: Path) -> None:
    config = default_config("breast_cancer", rounds=1)
    noise_only = _released(np.full(30, 1 / 30), noise_std=0.05)
    write_report(RunResult(config, [], {}, attention=noise_only), tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "No unit stands above the noise" in report
    assert "| above the noise |" in report and "| yes |" not in report
    clear = np.zeros(30)
    clear[0] = 1.0
    write_report(RunResult(config, [], {}, attention=_released(clear, 0.01)), tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "No unit stands above" not in report and report.count("| yes |") == 1
