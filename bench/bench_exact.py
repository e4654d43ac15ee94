"""Exactness of the exact presets: the release is the quantised updates' mean, exactly.

For every exact preset, three clients send their own float64 updates with their own
weights; the clients' quantised integers are recorded (``FieldLayout.quantize``
wrapped) and averaged in the clear. The released mean must equal that mean exactly,
and lie within the stated error (``ReleasedAggregate.mean_error_std``) of the
unquantised weighted mean: with three clients no coordinate can be more than
``sqrt(6·3) ≈ 4.2`` stated σ away (each rounding error is at most one step).
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.exactness import MAX_SIGMAS, RMS_SIGMAS, exact_presets, measure_exactness

SIZE = 10_000


@pytest.mark.parametrize("preset", exact_presets())
def test_exact_release_equals_the_quantised_mean(benchmark: Any, preset: str) -> None:
    """Max |release − plaintext mean of the quantised updates| is 0.0."""
    result = benchmark.pedantic(measure_exactness, args=(preset, SIZE, 3), rounds=1)
    benchmark.group = "exact"
    benchmark.extra_info.update(result)
    assert result["max_abs_diff_quantised"] == 0.0
    assert result["flooding_std"] == 0.0
    assert result["rms_sigmas"] <= RMS_SIGMAS
    assert result["max_sigmas"] <= MAX_SIGMAS
