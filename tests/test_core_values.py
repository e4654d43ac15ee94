"""Value checks before encryption: refuse, never clip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import secagg
from secagg.errors import ConfigurationError, UpdateValueError

ROSTER = ["a", "b"]


def _encrypt(keys: secagg.KeyHolder, update: dict[str, torch.Tensor], **kwargs: float) -> bytes:
    return secagg.encrypt_update(keys, update, round_id=1, client_id="a", roster=ROSTER, **kwargs)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_non_finite_values_are_rejected(
    keys: secagg.KeyHolder, bad: float, dtype: torch.dtype
) -> None:
    tensor = torch.zeros(50, dtype=dtype)
    tensor[17] = bad
    with pytest.raises(UpdateValueError, match="non-finite"):
        _encrypt(keys, {"ok": torch.zeros(3), "w": tensor})


def test_float16_values_that_overflowed_to_inf_are_rejected(keys: secagg.KeyHolder) -> None:
    tensor = torch.tensor([70000.0]).to(torch.float16)  # above float16's max: inf
    with pytest.raises(UpdateValueError):
        _encrypt(keys, {"w": tensor})


@pytest.mark.parametrize("preset", ["default", "wide"])
@pytest.mark.parametrize(("weight", "weight_bound"), [(1.0, 1.0), (30.0, 100.0), (7.0, 10.0)])
def test_values_just_over_the_bound_are_rejected_just_under_are_kept(
    preset: str, weight: float, weight_bound: float
) -> None:
    keys = secagg.KeyHolder.generate(preset)
    bound = keys.preset.max_client_magnitude
    normalised = weight / weight_bound
    limit = bound / normalised

    over = torch.zeros(20, dtype=torch.float64)
    over[5] = -limit * (1 + 1e-9)
    with pytest.raises(UpdateValueError) as info:
        _encrypt(keys, {"w": over}, weight=weight, weight_bound=weight_bound)
    message = str(info.value)
    assert f"bound {bound:.4g}" in message
    assert f"{bound:.4g}" in message
    assert "clip" in message  # it says nothing was clipped

    under = torch.zeros(20, dtype=torch.float64)
    under[5] = -limit * (1 - 1e-9)
    under[6] = limit * (1 - 1e-9)
    blob = _encrypt(keys, {"w": under}, weight=weight, weight_bound=weight_bound)
    # Not clipped: the encrypted slots hold exactly the weighted values (raw decryption,
    # before any flooding, agrees to within the CKKS noise bound).
    enc = secagg.EncryptedAggregate.from_update(keys, blob)
    plain = keys.session.decrypt(enc.ciphertexts[0])
    start = keys.preset.header_slots
    weighted = under.numpy() * normalised
    assert np.abs(plain[start : start + 20] - weighted).max() <= keys.preset.noise_bound(1)
    assert abs(plain[keys.preset.roster_slots] - normalised) <= keys.preset.noise_bound(1)
    assert abs(plain[start + 5]) > bound * (1 - 1e-6)


def test_the_bound_applies_to_the_weighted_value(keys: secagg.KeyHolder) -> None:
    bound = keys.preset.max_client_magnitude
    update = {"w": torch.full((4,), 1.5 * bound, dtype=torch.float64)}
    with pytest.raises(UpdateValueError):
        _encrypt(keys, update, weight=1.0, weight_bound=1.0)
    # With a normalised weight of 0.5 the same values weigh 0.75 · bound: accepted.
    assert _encrypt(keys, update, weight=1.0, weight_bound=2.0)


@pytest.mark.parametrize(
    ("weight", "weight_bound"),
    [
        (101.0, 100.0),
        (0.0, 100.0),
        (-1.0, 100.0),
        (math.nan, 100.0),
        (math.inf, 100.0),
        (1.0, 0.0),
        (1.0, -5.0),
        (1.0, math.inf),
        (1.0, math.nan),
    ],
)
def test_weights_out_of_range_are_rejected(
    keys: secagg.KeyHolder, weight: float, weight_bound: float
) -> None:
    with pytest.raises(UpdateValueError):
        _encrypt(keys, {"w": torch.zeros(3)}, weight=weight, weight_bound=weight_bound)


def test_weight_equal_to_its_bound_is_accepted(keys: secagg.KeyHolder) -> None:
    assert _encrypt(keys, {"w": torch.zeros(3)}, weight=100.0, weight_bound=100.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"round_id": -1}, "round_id"),
        ({"round_id": True}, "round_id"),
        ({"round_id": 1.0}, "round_id"),
        ({"client_id": ""}, "client_id"),
        ({"client_id": "x" * 257}, "client_id"),
        ({"client_id": "z"}, "not on the round's roster"),
        ({"roster": ["a", "a"]}, "repeats"),
        ({"roster": [f"c{i}" for i in range(129)] + ["a"]}, "roster slots"),
    ],
)
def test_invalid_round_arguments_are_rejected(
    keys: secagg.KeyHolder, kwargs: dict[str, object], match: str
) -> None:
    args: dict[str, object] = {"round_id": 1, "client_id": "a", "roster": ROSTER, **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        secagg.encrypt_update(keys, {"w": torch.zeros(3)}, **args)  # type: ignore[arg-type]
