"""End to end: the released encrypted weighted mean equals the plaintext weighted mean.

Tolerance, per coordinate, for a released mean ``m'`` of an exact weighted mean ``m``:
the key holder releases ``(S + σ·g) / (W + σ·z)`` with ``g, z`` independent standard
normals (the flooding of the value slots and of the weight slot), so
``m' - m = σ·(g - m·z) / W'`` with ``W' = W + σ·z`` the released weight sum and
``σ / W' = release.mean_error_std``. ``g - m·z`` is normal with standard deviation
``sqrt(1 + m²)``: a 7-sigma band fails with probability 2.6e-12 per coordinate, under
1e-6 per test for up to 1e5 coordinates. CKKS adds at most ``preset.noise_bound(k)``
(an 8-sigma bound) to each slot of the sum and to the weight slot, i.e. at most
``(1 + |m|)·noise_bound(k) / W'`` on the mean; the cast back to the caller's dtype adds
half an ulp (``eps·|m|`` bounds it with a factor 2 to spare, plus ``tiny`` for subnormals).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import secagg
from secagg.release import ReleasedAggregate


def _make_update(
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]], seed: int
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        name: (torch.randn(shape, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
        for name, (shape, dtype) in layout.items()
    }


def _exact_weighted_mean(
    updates: list[dict[str, torch.Tensor]], weights: list[float], weight_bound: float
) -> dict[str, np.ndarray]:
    normalised = [w / weight_bound for w in weights]
    total = sum(normalised)
    return {
        name: sum(
            (
                w * u[name].to(torch.float64).numpy()
                for w, u in zip(normalised, updates, strict=True)
            ),
            start=np.zeros(updates[0][name].shape),
        )
        / total
        for name in updates[0]
    }


def _tolerance(
    release: ReleasedAggregate, preset: secagg.Preset, k: int, exact: np.ndarray, dtype: torch.dtype
) -> np.ndarray:
    magnitude = np.abs(exact)
    flooding = 7.0 * release.mean_error_std * np.sqrt(1.0 + exact**2)
    ckks = (1.0 + magnitude) * preset.noise_bound(k) / release.weight_sum
    finfo = torch.finfo(dtype)
    rounding = magnitude * finfo.eps + finfo.tiny
    return flooding + ckks + rounding


def _run_round(
    keys: secagg.KeyHolder,
    updates: list[dict[str, torch.Tensor]],
    weights: list[float],
    weight_bound: float,
) -> ReleasedAggregate:
    roster = [f"client-{i}" for i in range(len(updates))]
    agg = secagg.Aggregator(
        keys.server_context(), round_id=7, roster=roster, min_clients=len(roster)
    )
    for client_id, update, weight in zip(roster, updates, weights, strict=True):
        blob = secagg.encrypt_update(
            keys,
            update,
            weight=weight,
            weight_bound=weight_bound,
            round_id=7,
            client_id=client_id,
            roster=roster,
        )
        assert agg.add(blob) == client_id
    return keys.release(agg.finalize())


SINGLE_CHUNK = {
    "encoder.weight": ((40, 50), torch.float32),
    "encoder.bias": ((50,), torch.float64),
    "norm.scale": ((), torch.float16),
}
MULTI_CHUNK = {
    "emb.weight": ((100, 280), torch.float32),  # 28,000 values: several chunks
    "head.bias": ((1000,), torch.float16),
    "head.scale": ((3, 1, 7), torch.float64),
}


@pytest.mark.parametrize(
    ("preset", "layout", "weights", "weight_bound"),
    [
        ("default", SINGLE_CHUNK, [3.0, 7.0], 10.0),
        ("default", MULTI_CHUNK, [120.0, 45.5, 1000.0], 1000.0),
        ("small", MULTI_CHUNK, [1.0, 9.0, 2.0], 16.0),
        ("default", SINGLE_CHUNK, [1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0, 89.0], 100.0),
        ("small", MULTI_CHUNK, [float(w) for w in range(10, 110, 10)], 250.0),
    ],
    ids=["2-single", "3-multi-default", "3-multi-small", "10-single", "10-multi-small"],
)
def test_released_mean_matches_plaintext_weighted_mean(
    preset: str,
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]],
    weights: list[float],
    weight_bound: float,
) -> None:
    keys = secagg.KeyHolder.generate(preset)
    updates = [_make_update(layout, seed) for seed in range(len(weights))]
    numel = sum(int(np.prod(shape)) for shape, _ in layout.values())
    chunks = -(-numel // keys.preset.values_per_chunk)
    assert (chunks > 1) == (layout is MULTI_CHUNK)

    release = _run_round(keys, updates, weights, weight_bound)
    exact = _exact_weighted_mean(updates, weights, weight_bound)
    k = len(weights)

    assert release.contributors == tuple(f"client-{i}" for i in range(k))
    assert release.round_id == 7
    assert list(release.mean) == list(layout)
    weight_sum = sum(weights) / weight_bound
    assert abs(
        release.weight_sum - weight_sum
    ) <= 7 * release.flooding_std + keys.preset.noise_bound(k)

    unweighted_far = False
    for name, (shape, dtype) in layout.items():
        got = release.mean[name]
        assert got.shape == torch.Size(shape)
        assert got.dtype == dtype
        err = np.abs(got.to(torch.float64).numpy() - exact[name])
        tol = _tolerance(release, keys.preset, k, exact[name], dtype)
        worst = float((err / tol).max())
        assert worst <= 1.0, f"{name}: error reaches {worst:.3g} x tolerance"
        plain_mean = np.mean([u[name].to(torch.float64).numpy() for u in updates], axis=0)
        unweighted_far |= bool((np.abs(plain_mean - exact[name]) > 10 * tol).any())
    # The weights matter: the unweighted mean is far outside the tolerance somewhere.
    assert unweighted_far


def test_flooding_noise_is_really_added_with_the_stated_std() -> None:
    keys = secagg.KeyHolder.generate("default")
    numel = 30_000
    layout = {"w": ((numel,), torch.float64)}
    weights, weight_bound = [30.0, 50.0, 20.0], 64.0
    updates = [_make_update(layout, seed) for seed in (11, 12, 13)]
    release = _run_round(keys, updates, weights, weight_bound)

    exact_sum = sum(
        (w / weight_bound) * u["w"].numpy() for w, u in zip(weights, updates, strict=True)
    )
    # released · W' = S + σ·g + CKKS noise (|CKKS noise| <= noise_bound, ~1e-7 σ).
    residual = release.mean["w"].numpy() * release.weight_sum - exact_sum
    sigma = release.flooding_std
    assert sigma == pytest.approx(keys.flooding_std(3))
    assert sigma > 1e6 * keys.preset.noise_bound(3)  # flooding swamps the CKKS error
    empirical = float(residual.std())
    # The std of 3e4 normal draws is within 0.4% (one sd) of σ: 10% is a 25-sd band,
    # far inside the factor 2 the acceptance criterion allows.
    assert 0.9 * sigma <= empirical <= 1.1 * sigma
    assert abs(float(residual.mean())) <= 6 * sigma / np.sqrt(numel)
    assert np.count_nonzero(residual) == numel
    # The mean's error is nonzero and of the order of mean_error_std.
    error = release.mean["w"].numpy() - exact_sum / (sum(weights) / weight_bound)
    assert float(np.abs(error).max()) > 0
    assert 0.5 * release.mean_error_std <= float(error.std()) <= 5 * release.mean_error_std


def test_an_aggregate_is_released_once_and_equal_sums_get_independent_flooding(
    keys: secagg.KeyHolder,
) -> None:
    layout = {"w": ((4000,), torch.float64)}
    updates = [_make_update(layout, seed) for seed in (1, 2)]
    roster = ["a", "b"]
    released = []
    for round_id in (1, 2):
        agg = secagg.Aggregator(
            keys.server_context(), round_id=round_id, roster=roster, min_clients=2
        )
        for cid, upd in zip(roster, updates, strict=True):
            agg.add(
                secagg.encrypt_update(keys, upd, round_id=round_id, client_id=cid, roster=roster)
            )
        enc = agg.finalize()
        released.append(keys.release(enc))
        with pytest.raises(secagg.errors.RoundAlreadyReleasedError):
            keys.release(enc)
    first, second = released
    # released · W' = S + σ·g: the difference of two releases is σ·(g1 - g2), std sqrt(2)·σ.
    diff = first.mean["w"].numpy() * first.weight_sum - second.mean["w"].numpy() * second.weight_sum
    assert np.count_nonzero(diff) == diff.size
    expected = np.sqrt(2.0) * keys.flooding_std(2)
    assert 0.9 * expected <= float(diff.std()) <= 1.1 * expected
    assert first.weight_sum != second.weight_sum
