"""Exact presets: quantised, packed integers whose sums the key holder recovers exactly."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import secagg
from secagg.crypto import layout as layout_module
from secagg.crypto.layout import FieldLayout
from secagg.crypto.presets import PRESETS, SEAL_NOISE_BOUND

EXACT = [name for name, preset in PRESETS.items() if preset.exact]


def _federation(preset: str, clients: int) -> secagg.FederationKeys:
    return secagg.FederationKeys.generate([f"c{i}" for i in range(clients)], preset=preset)


def _aggregate(
    keys: secagg.FederationKeys,
    updates: dict[str, dict[str, np.ndarray]],
    weights: dict[str, float],
    *,
    weight_bound: float,
) -> secagg.EncryptedAggregate:
    roster = list(keys.registry)
    aggregator = secagg.Aggregator(
        keys.server_context(), registry=keys.registry, round_id=1, roster=roster, min_clients=1
    )
    for cid, update in updates.items():
        aggregator.add(
            secagg.encrypt_update(
                keys.material,
                update,
                signing_key=keys.signing_keys[cid],
                round_id=1,
                roster=roster,
                weight=weights[cid],
                weight_bound=weight_bound,
            )
        )
    return aggregator.finalize()


@pytest.mark.parametrize("preset", EXACT)
def test_released_mean_is_the_exact_mean_of_the_quantised_updates_bit_for_bit(
    preset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = _federation(preset, 3)
    holder = keys.key_holder(min_clients=2)
    rng = np.random.default_rng(0)
    updates = {cid: {"w": rng.uniform(-0.5, 0.5, 20_000)} for cid in keys.registry}
    weights = {"c0": 10.0, "c1": 31.0, "c2": 57.0}
    recorded: list[np.ndarray] = []
    real_quantize = FieldLayout.quantize

    def record(self: FieldLayout, weighted: np.ndarray, weight: float) -> np.ndarray:
        quantized = real_quantize(self, weighted, weight)
        recorded.append(quantized.copy())  # what each client really encrypted
        return quantized

    monkeypatch.setattr(FieldLayout, "quantize", record)
    released = holder.release(_aggregate(keys, updates, weights, weight_bound=64))

    # The plaintext reference, from the clients' integers alone (Python ints: no overflow).
    spec = PRESETS[preset]
    sums = np.array([sum(int(q[i]) for q in recorded) for i in range(20_001)], dtype=np.uint64)
    weight_sum = float(sums[0]) / spec.levels
    values = sums[1:].astype(np.float64) * spec.quantization_step - 3 * spec.value_range
    reference = values / weight_sum
    assert released.weight_sum == weight_sum
    assert np.array_equal(released.mean["w"], reference)  # bit for bit
    assert released.flooding_std == 0.0  # nothing to flood: the error never leaves

    # ... and within the stated quantisation error of the unquantised weighted mean.
    exact = sum(weights[c] / 64 * updates[c]["w"] for c in updates) / (98 / 64)
    error = released.mean["w"] - exact
    stated = released.mean_error_std
    assert float(np.std(error)) == pytest.approx(stated, rel=0.1)
    assert abs(float(np.mean(error))) < 5 * stated / math.sqrt(error.size)  # unbiased


@pytest.mark.parametrize("preset", EXACT)
def test_quantisation_error_has_the_stated_std(preset: str) -> None:
    spec = PRESETS[preset]
    layout = FieldLayout(spec)
    rng = np.random.default_rng(1)
    values = rng.uniform(-spec.value_range, spec.value_range, 200_000)
    quantized = layout.quantize(values, 1.0)
    restored = quantized[1:].astype(np.float64) * spec.quantization_step - spec.value_range
    error = restored - values
    assert float(np.std(error)) == pytest.approx(spec.quantization_std, rel=0.1)
    assert abs(float(np.mean(error))) < 5 * spec.quantization_std / math.sqrt(error.size)
    assert float(np.abs(error).max()) < spec.quantization_step  # one step at most


def test_the_full_range_of_the_largest_roster_sums_without_a_carry() -> None:
    """max_clients clients at the top of the range: every field holds its exact sum."""
    spec = PRESETS["small"]
    keys = _federation("small", spec.max_clients)
    holder = keys.key_holder(min_clients=1)
    top = {cid: {"w": np.full(300, spec.value_range)} for cid in keys.registry}
    bottom = {cid: {"w": np.full(300, -spec.value_range)} for cid in keys.registry}
    weights = dict.fromkeys(keys.registry, 1.0)
    released = holder.release(_aggregate(keys, top, weights, weight_bound=1))
    assert released.weight_sum == spec.max_clients
    assert np.array_equal(released.mean["w"], np.full(300, spec.value_range))
    keys_two = _federation("small", spec.max_clients)
    again = keys_two.key_holder(min_clients=1).release(
        _aggregate(keys_two, bottom, weights, weight_bound=1)
    )
    assert np.array_equal(again.mean["w"], np.full(300, -spec.value_range))


@pytest.mark.parametrize("preset", EXACT)
def test_seals_encryption_error_is_within_the_bound_the_layout_relies_on(preset: str) -> None:
    """Every coefficient of a fresh encryption's error is at most 21: Δ/2 exceeds k·21."""
    material = secagg.KeyMaterial.generate(preset)
    session = material.session
    n = material.preset.poly_modulus_degree
    zero = np.zeros((3, n), dtype=np.uint64)
    q = material.moduli[0]
    errors = []
    for parts in session.encrypt_coefficients(zero):
        phase = session.decrypt_coefficients(parts.c0, [parts.seed]).astype(object)
        errors.append(np.array([int(p) if p < q // 2 else int(p) - q for p in phase]))
    noise = np.concatenate(errors).astype(np.int64)
    assert int(np.abs(noise).max()) <= SEAL_NOISE_BOUND
    assert float(noise.std()) == pytest.approx(3.2, rel=0.1)
    spec = material.preset
    assert 2 ** (spec.noise_shift - 1) > SEAL_NOISE_BOUND * spec.max_clients


def test_values_outside_the_declared_range_are_refused_never_clipped() -> None:
    keys = _federation("default", 2)
    spec = PRESETS["default"]
    with pytest.raises(secagg.errors.UpdateValueError, match="exact preset 'default'"):
        secagg.encrypt_update(
            keys.material,
            {"w": np.array([0.0, spec.value_range * 1.001])},
            signing_key=keys.signing_keys["c0"],
            round_id=1,
            roster=list(keys.registry),
        )
    accepted = secagg.encrypt_update(
        keys.material,
        {"w": np.array([-spec.value_range, spec.value_range])},
        signing_key=keys.signing_keys["c0"],
        round_id=1,
        roster=list(keys.registry),
    )
    assert accepted


def test_rounding_randomness_comes_from_the_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []
    real = layout_module.secure_bits32

    def spy(size: int) -> Any:
        drawn.append(size)
        return real(size)

    monkeypatch.setattr(layout_module, "secure_bits32", spy)
    layout = FieldLayout(PRESETS["default"])
    first = layout.quantize(np.full(5000, 0.1234567), 0.5)
    second = layout.quantize(np.full(5000, 0.1234567), 0.5)
    assert drawn == [5001, 5001]
    assert not np.array_equal(first, second)  # fresh randomness each time


@pytest.mark.parametrize(
    ("preset", "size", "limit"),
    [("default", 10**5, 5.0), ("default", 10**6, 4.0), ("small", 10**5, 5.0)],
)
def test_wire_size_is_within_the_targets(preset: str, size: int, limit: float) -> None:
    keys = _federation(preset, 2)
    payload = secagg.encrypt_update(
        keys.material,
        {"w": np.zeros(size, dtype=np.float32)},
        signing_key=keys.signing_keys["c0"],
        round_id=1,
        roster=list(keys.registry),
    )
    assert len(payload) / size <= limit
