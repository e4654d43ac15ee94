"""End to end: the released encrypted weighted mean equals the plaintext weighted mean.

Exact presets release ``S' / W'`` where ``S'`` and ``W'`` are the exact sums of the
clients' stochastically rounded values and weights: each rounding is unbiased with
standard deviation at most ``quantization_std``, so the same 7-sigma band as below holds
with ``release.mean_error_std = sqrt(k)·quantization_std / W'`` (rounding errors are
bounded by one step each; for the few clients summed here the band covers even the
worst case). Approximate presets flood:

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
from secagg._random import secure_normal, secure_uniform
from secagg.crypto.release import ReleasedAggregate
from secagg.dp.tensors import to_torch


def _make_update(
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]], seed: int
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        name: ((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * 0.9).to(dtype)
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
    noise = 0.0 if preset.exact else preset.noise_bound(k)  # exact sums carry none
    ckks = (1.0 + magnitude) * noise / release.weight_sum
    finfo = torch.finfo(dtype)
    rounding = magnitude * finfo.eps + finfo.tiny
    return flooding + ckks + rounding


def _run_round(
    preset: str,
    updates: list[dict[str, torch.Tensor]],
    weights: list[float],
    weight_bound: float,
    round_id: int = 7,
) -> tuple[secagg.FederationKeys, ReleasedAggregate]:
    roster = [f"client-{i}" for i in range(len(updates))]
    fed = secagg.FederationKeys.generate(roster, preset=preset)
    agg = secagg.Aggregator(
        fed.server_context(),
        registry=fed.registry,
        round_id=round_id,
        roster=roster,
        min_clients=len(roster),
    )
    for client_id, update, weight in zip(roster, updates, weights, strict=True):
        blob = secagg.encrypt_update(
            fed.material,
            update,
            signing_key=fed.signing_keys[client_id],
            weight=weight,
            weight_bound=weight_bound,
            round_id=round_id,
            roster=roster,
        )
        assert agg.add(blob) == client_id
    return fed, fed.key_holder().release(agg.finalize())


SINGLE_CHUNK = {
    "encoder.weight": ((40, 50), torch.float32),
    "encoder.bias": ((50,), torch.float64),
    "norm.scale": ((), torch.float16),
}
MULTI_CHUNK = {
    "emb.weight": ((100, 280), torch.float32),  # 28,000 values: several chunks
    "head.bias": ((1000,), torch.float16),
    "head.scale": ((3, 1, 7), torch.float64),
    "head.gate": ((16,), torch.bfloat16),
}


@pytest.mark.parametrize(
    ("preset", "layout", "weights", "weight_bound"),
    [
        ("default", SINGLE_CHUNK, [3.0, 7.0], 10.0),
        ("default", MULTI_CHUNK, [120.0, 45.5, 1000.0], 1000.0),
        ("small", MULTI_CHUNK, [1.0, 9.0, 2.0], 16.0),
        ("default", SINGLE_CHUNK, [1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0, 89.0], 100.0),
        ("small", MULTI_CHUNK, [float(w) for w in range(10, 110, 10)], 250.0),
        ("approx", SINGLE_CHUNK, [3.0, 7.0], 10.0),
        ("approx", MULTI_CHUNK, [120.0, 45.5, 1000.0], 1000.0),
        ("precise", MULTI_CHUNK, [float(w) for w in range(10, 110, 10)], 250.0),
    ],
    ids=[
        "2-single",
        "3-multi-default",
        "3-multi-small",
        "10-single",
        "10-multi-small",
        "2-single-approx",
        "3-multi-approx",
        "10-multi-precise",
    ],
)
def test_released_mean_matches_plaintext_weighted_mean(
    preset: str,
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]],
    weights: list[float],
    weight_bound: float,
) -> None:
    updates = [_make_update(layout, seed) for seed in range(len(weights))]
    numel = sum(int(np.prod(shape)) for shape, _ in layout.values())
    assert (secagg.get_preset(preset).num_chunks(numel) > 1) == (layout is MULTI_CHUNK)

    fed, release = _run_round(preset, updates, weights, weight_bound)
    keys = fed.material
    mean = to_torch(release.mean, release.spec)
    exact = _exact_weighted_mean(updates, weights, weight_bound)
    k = len(weights)

    assert release.contributors == tuple(f"client-{i}" for i in range(k))
    assert release.round_id == 7
    assert list(release.mean) == list(layout)
    assert all(isinstance(v, np.ndarray) for v in release.mean.values())
    weight_sum = sum(weights) / weight_bound
    assert abs(release.weight_sum - weight_sum) <= 7 * release.flooding_std + (
        k / keys.preset.levels if keys.preset.exact else keys.preset.noise_bound(k)
    )

    unweighted_far = False
    for name, (shape, dtype) in layout.items():
        got = mean[name]
        assert release.mean[name].shape == shape
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
    numel = 30_000
    layout = {"w": ((numel,), torch.float64)}
    weights, weight_bound = [30.0, 50.0, 20.0], 64.0
    updates = [_make_update(layout, seed) for seed in (11, 12, 13)]
    fed, release = _run_round("approx", updates, weights, weight_bound)
    holder = fed.key_holder()

    exact_sum = sum(
        (w / weight_bound) * u["w"].numpy() for w, u in zip(weights, updates, strict=True)
    )
    # released · W' = S + σ·g + CKKS noise (|CKKS noise| <= noise_bound, ~1e-7 σ).
    residual = release.mean["w"] * release.weight_sum - exact_sum
    sigma = release.flooding_std
    assert sigma == pytest.approx(holder.flooding_std(3))
    assert sigma > 1e6 * fed.material.preset.noise_bound(3)  # flooding swamps the CKKS error
    empirical = float(residual.std())
    # The std of 3e4 normal draws is within 0.4% (one sd) of σ: 10% is a 25-sd band,
    # far inside the factor 2 the acceptance criterion allows.
    assert 0.9 * sigma <= empirical <= 1.1 * sigma
    assert abs(float(residual.mean())) <= 6 * sigma / np.sqrt(numel)
    assert np.count_nonzero(residual) == numel
    # The mean's error is nonzero and of the order of mean_error_std.
    error = release.mean["w"] - exact_sum / (sum(weights) / weight_bound)
    assert float(np.abs(error).max()) > 0
    assert 0.5 * release.mean_error_std <= float(error.std()) <= 5 * release.mean_error_std


def test_equal_sums_of_two_rounds_get_independent_flooding() -> None:
    layout = {"w": ((4000,), torch.float64)}
    updates = [_make_update(layout, seed) for seed in (1, 2)]
    roster = ["a", "b"]
    fed = secagg.FederationKeys.generate(roster, preset="approx")
    holder = fed.key_holder()
    released = []
    for round_id in (1, 2):
        agg = secagg.Aggregator(
            fed.server_context(), registry=fed.registry, round_id=round_id, roster=roster
        )
        for cid, upd in zip(roster, updates, strict=True):
            agg.add(
                secagg.encrypt_update(
                    fed.material,
                    upd,
                    signing_key=fed.signing_keys[cid],
                    round_id=round_id,
                    roster=roster,
                )
            )
        enc = agg.finalize()
        released.append(holder.release(enc))
        with pytest.raises(secagg.errors.RoundAlreadyReleasedError):
            holder.release(enc)
    first, second = released
    # released · W' = S + σ·g: the difference of two releases is σ·(g1 - g2), std sqrt(2)·σ.
    diff = first.mean["w"] * first.weight_sum - second.mean["w"] * second.weight_sum
    assert np.count_nonzero(diff) == diff.size
    expected = np.sqrt(2.0) * holder.flooding_std(2)
    assert 0.9 * expected <= float(diff.std()) <= 1.1 * expected
    assert first.weight_sum != second.weight_sum


def test_exact_release_error_is_the_clients_rounding_with_the_stated_std() -> None:
    # released · W = S' exactly: the residual against the exact weighted sum is the sum of
    # the clients' stochastic roundings, whose standard deviation the release states.
    numel = 30_000
    layout = {"w": ((numel,), torch.float64)}
    updates = [_make_update(layout, seed) for seed in (11, 12, 13)]
    fed, release = _run_round("default", updates, [1.0, 1.0, 1.0], 1.0)
    preset = fed.material.preset
    assert release.flooding_std == 0.0 and release.weight_sum == 3.0
    exact_sum = sum(u["w"].numpy() for u in updates)
    residual = release.mean["w"] * release.weight_sum - exact_sum
    stated = release.mean_error_std * release.weight_sum
    assert stated == pytest.approx(np.sqrt(3) * preset.quantization_std)
    assert 0.85 * stated <= float(residual.std()) <= 1.15 * stated
    assert abs(float(residual.mean())) <= 6 * stated / np.sqrt(numel)  # unbiased
    assert float(np.abs(residual).max()) <= 3 * preset.quantization_step  # bounded


def test_privacy_noise_is_standard_normal_from_the_os_csprng() -> None:
    # 2e5 draws: mean within 5 standard errors of 0, std within 1% of 1, tails as a
    # normal's (|x| > 3 about 0.27%), and two draws never repeat (no fixed seed).
    draws = secure_normal(200_000)
    assert abs(float(draws.mean())) < 5 / np.sqrt(draws.size)
    assert 0.99 < float(draws.std()) < 1.01
    assert 0.0022 < float(np.mean(np.abs(draws) > 3)) < 0.0032
    assert not np.array_equal(secure_normal(8), secure_normal(8))
    uniforms = secure_uniform(100_000)
    assert float(uniforms.min()) >= 0.0 and float(uniforms.max()) < 1.0
    assert abs(float(uniforms.mean()) - 0.5) < 0.005
    with pytest.raises(ValueError):
        secure_normal(-1)
