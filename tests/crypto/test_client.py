"""Value and argument checks before encryption: refuse with a typed error, never clip."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch

import secagg
from secagg.crypto._codec import unpack_coefficients
from secagg.crypto._seal import SEED_BYTES
from secagg.crypto.layout import FieldLayout
from secagg.errors import ConfigurationError, UpdateValueError

ROSTER = ["a", "b"]


def _encrypt(fed: secagg.FederationKeys, update: dict[str, Any], **kwargs: Any) -> bytes:
    args: dict[str, Any] = {
        "signing_key": fed.signing_keys["a"],
        "round_id": 1,
        "roster": ROSTER,
        **kwargs,
    }
    return secagg.encrypt_update(fed.material, update, **args)


def _decrypt_payload(fed: secagg.FederationKeys, payload: bytes) -> tuple[np.ndarray, float]:
    """The weight and values of a payload's first chunk, decrypted (before any flooding),
    and how far they may be from the client's (CKKS noise or one rounding step)."""
    chunk = secagg.EncryptedUpdate.from_bytes(payload).chunks[0]
    preset = fed.material.preset
    c0 = unpack_coefficients(chunk[SEED_BYTES:], preset.poly_modulus_degree, 60)
    session = fed.material.session
    if not preset.exact:
        return session.decrypt_sum(c0, [chunk[:SEED_BYTES]]), preset.noise_bound(1)
    phases = session.decrypt_coefficients(c0, [chunk[:SEED_BYTES]])[None, :]
    layout = FieldLayout(preset)
    sums = layout.field_sums(phases, fed.material.parameters.modulus_column(), 1)
    weight, values = layout.dequantize(sums, preset.slots - 1, 1)
    return np.concatenate([[weight], values]), preset.quantization_step


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_non_finite_values_are_rejected(
    small_federation: secagg.FederationKeys, bad: float, dtype: torch.dtype
) -> None:
    tensor = torch.zeros(50, dtype=dtype)
    tensor[17] = bad
    with pytest.raises(UpdateValueError, match="non-finite"):
        _encrypt(small_federation, {"ok": torch.zeros(3), "w": tensor})
    with pytest.raises(UpdateValueError, match="non-finite"):
        _encrypt(small_federation, {"w": tensor.numpy()})


def test_float16_values_that_overflowed_to_inf_are_rejected(
    small_federation: secagg.FederationKeys,
) -> None:
    tensor = torch.tensor([70000.0]).to(torch.float16)  # above float16's max: inf
    with pytest.raises(UpdateValueError):
        _encrypt(small_federation, {"w": tensor})


@pytest.mark.parametrize("preset", ["default", "small", "approx", "wide"])
@pytest.mark.parametrize(("weight", "weight_bound"), [(1.0, 1.0), (30.0, 100.0), (7.0, 10.0)])
def test_values_just_over_the_bound_are_rejected_just_under_are_kept(
    preset: str, weight: float, weight_bound: float
) -> None:
    fed = secagg.FederationKeys.generate(ROSTER, preset=preset)
    bound = fed.material.preset.max_client_magnitude
    normalised = weight / weight_bound
    limit = bound / normalised

    over = np.zeros(20)
    over[5] = -limit * (1 + 1e-9)
    with pytest.raises(UpdateValueError) as info:
        _encrypt(fed, {"w": over}, weight=weight, weight_bound=weight_bound)
    message = str(info.value)
    assert f"bound {bound:.4g}" in message
    assert "clip" in message  # it says nothing was clipped

    under = np.zeros(20)
    under[5] = -limit * (1 - 1e-9)
    under[6] = limit * (1 - 1e-9)
    blob = _encrypt(fed, {"w": under}, weight=weight, weight_bound=weight_bound)
    # Not clipped: the encrypted slots hold exactly the weighted values (raw decryption,
    # before any flooding, agrees to within the CKKS noise bound).
    plain, noise = _decrypt_payload(fed, blob)
    assert np.abs(plain[1:21] - under * normalised).max() <= noise
    assert abs(plain[0] - normalised) <= noise  # slot 0: the normalised weight
    assert abs(plain[1 + 5]) > bound * (1 - 1e-4)


def test_the_bound_applies_to_the_weighted_value(small_federation: secagg.FederationKeys) -> None:
    bound = small_federation.material.preset.max_client_magnitude
    update = {"w": torch.full((4,), 1.5 * bound, dtype=torch.float64)}
    with pytest.raises(UpdateValueError):
        _encrypt(small_federation, update, weight=1.0, weight_bound=1.0)
    # With a normalised weight of 0.5 the same values weigh 0.75 · bound: accepted.
    assert _encrypt(small_federation, update, weight=1.0, weight_bound=2.0)


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
        ("1", 100.0),  # a string
        (None, 100.0),
        (1 + 0j, 100.0),  # complex
        (True, 100.0),  # a boolean is not a weight
        (10**400, 10**400),  # an int too large for a float
        (1.0, 10**400),
        (1.0, "100"),
        (1.0, None),
    ],
    ids=str,
)
def test_weights_of_the_wrong_type_or_range_are_rejected(
    small_federation: secagg.FederationKeys, weight: Any, weight_bound: Any
) -> None:
    with pytest.raises(UpdateValueError) as info:
        _encrypt(small_federation, {"w": torch.zeros(3)}, weight=weight, weight_bound=weight_bound)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("weight", "weight_bound"),
    [(100.0, 100.0), (3, 7), (np.float32(0.5), 1.0), (Fraction(1, 3), 1), (1e-300, 1.0)],
    ids=str,
)
def test_real_weights_in_range_are_accepted(
    small_federation: secagg.FederationKeys, weight: Any, weight_bound: Any
) -> None:
    assert _encrypt(
        small_federation, {"w": torch.zeros(3)}, weight=weight, weight_bound=weight_bound
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"round_id": -1}, "round_id"),
        ({"round_id": True}, "round_id"),
        ({"round_id": 1.0}, "round_id"),
        ({"round_id": "1"}, "round_id"),
        ({"round_id": None}, "round_id"),
        ({"round_id": 2**63}, "round_id"),
        ({"roster": ["a", "a"]}, "repeats"),
        ({"roster": None}, "roster"),
        ({"roster": [1, 2]}, "client id"),
        ({"roster": "ab"}, "roster"),
        ({"roster": []}, "empty"),
        ({"roster": ["b", "c"]}, "not on the round's roster"),
        ({"roster": [f"c{i}" for i in range(64)] + ["a"]}, "64 clients"),
        ({"signing_key": "a"}, "SigningKey"),
        ({"signing_key": None}, "SigningKey"),
        ({"workers": 0}, "workers"),
        ({"workers": 1.5}, "workers"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_invalid_round_arguments_are_rejected(
    small_federation: secagg.FederationKeys, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        _encrypt(small_federation, {"w": torch.zeros(3)}, **kwargs)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("keys", [None, "secret", b"SAKM"], ids=str)
def test_keys_that_are_not_key_material_are_rejected(
    small_federation: secagg.FederationKeys, keys: Any
) -> None:
    with pytest.raises(ConfigurationError, match="KeyMaterial"):
        secagg.encrypt_update(
            keys,
            {"w": np.zeros(3)},
            signing_key=small_federation.signing_keys["a"],
            round_id=1,
            roster=ROSTER,
        )


def test_a_server_context_cannot_encrypt(small_federation: secagg.FederationKeys) -> None:
    with pytest.raises(ConfigurationError, match="KeyMaterial"):
        secagg.encrypt_update(
            small_federation.server_context(),  # type: ignore[arg-type]
            {"w": np.zeros(3)},
            signing_key=small_federation.signing_keys["a"],
            round_id=1,
            roster=ROSTER,
        )
