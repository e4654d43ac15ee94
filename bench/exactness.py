"""Exactness of the exact presets' releases, and the error the key holder states.

An exact preset quantises each client's weighted update to integers
(:meth:`secagg.crypto.layout.FieldLayout.quantize`, unbiased stochastic rounding) and
the key holder releases a deterministic function of the integer sums. This module
records every client's quantised integers by wrapping ``FieldLayout.quantize``, sums
them in the clear and dequantises them as the layout defines (``Σ w = S_0 / L``,
``Σ v = S_i · step - k · range``): the plaintext weighted mean of the quantised
updates. The released mean must equal it *exactly* (max abs difference 0.0).

Against the *unquantised* weighted mean, the release must be within the error it
states, :attr:`secagg.ReleasedAggregate.mean_error_std` (``σ``): the root mean square of
the error should be about ``σ`` and no coordinate should be many ``σ`` away.
Updates are float64 here, so the release is not cast to float32 before it is compared.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

import secagg
from secagg.crypto.layout import FieldLayout

from .schemes import ROUND_ID, roster
from .updates import WEIGHT_BOUND, client_weights, flat, make_update

__all__ = [
    "MAX_SIGMAS",
    "RMS_SIGMAS",
    "exact_presets",
    "measure_exactness",
    "plaintext_quantised_mean",
    "record_quantised",
]

#: The release passes if the RMS of its error against the unquantised mean is at most
#: this many stated σ ...
RMS_SIGMAS = 1.2
#: ... and no coordinate is further than this many σ (a Gaussian tail of 1e-9).
MAX_SIGMAS = 6.5


def exact_presets() -> list[str]:
    """Names of the exact presets, in :data:`secagg.PRESETS` order."""
    return [name for name, preset in secagg.PRESETS.items() if preset.exact]


@contextlib.contextmanager
def record_quantised() -> Iterator[list[np.ndarray]]:
    """Record a copy of every ``FieldLayout.quantize`` output while the block runs."""
    outputs: list[np.ndarray] = []
    original = FieldLayout.quantize

    def recording(self: FieldLayout, weighted: np.ndarray, weight: float) -> np.ndarray:
        result = original(self, weighted, weight)
        outputs.append(result.copy())
        return result

    FieldLayout.quantize = recording  # type: ignore[method-assign]
    try:
        yield outputs
    finally:
        FieldLayout.quantize = original  # type: ignore[method-assign]


def plaintext_quantised_mean(
    preset: secagg.Preset, quantised: list[np.ndarray], num_values: int
) -> np.ndarray:
    """The weighted mean of the clients' quantised updates, computed in the clear.

    Parameters
    ----------
    preset : Preset
        The exact preset.
    quantised : list of numpy.ndarray
        Each client's integers (position 0: the weight, then the values).
    num_values : int
        Values in the update.
    """
    sums: np.ndarray = np.stack(quantised).sum(axis=0, dtype=np.uint64)
    weight_sum = float(sums[0]) / preset.levels
    values = sums[1 : 1 + num_values].astype(np.float64) * preset.quantization_step
    values -= len(quantised) * preset.value_range
    mean: np.ndarray = values / weight_sum
    return mean


def _updates(num_params: int, clients: int) -> list[dict[str, torch.Tensor]]:
    return [make_update(num_params, seed=10 + i, dtype=torch.float64) for i in range(clients)]


def _unquantised_mean(updates: list[dict[str, torch.Tensor]], weights: list[float]) -> np.ndarray:
    total = sum(w * flat(u) for w, u in zip(weights, updates, strict=True))
    return np.asarray(total) / sum(weights)


def _round(
    keys: secagg.FederationKeys, updates: list[dict[str, torch.Tensor]], weights: list[float]
) -> tuple[secagg.ReleasedAggregate, list[np.ndarray], float]:
    ids = roster(len(updates))
    aggregator = secagg.Aggregator(
        keys.server_context(), registry=keys.registry, round_id=ROUND_ID, roster=ids
    )
    with record_quantised() as quantised:
        for cid, update, weight in zip(ids, updates, weights, strict=True):
            payload = secagg.encrypt_update(
                keys.material,
                update,
                signing_key=keys.signing_keys[cid],
                round_id=ROUND_ID,
                roster=ids,
                weight=weight,
                weight_bound=WEIGHT_BOUND,
            )
            aggregator.add(payload)
    start = time.perf_counter()
    released = keys.key_holder().release(aggregator.finalize())
    return released, quantised, time.perf_counter() - start


def measure_exactness(preset: str, num_params: int, clients: int = 3) -> dict[str, Any]:
    """Run one round of an exact preset and compare its release with both means.

    Each client sends its own random float64 update (``N(0, 0.01²)``) with its own
    weight; the library's default parallelism encrypts.

    Parameters
    ----------
    preset : str
        An exact preset's name.
    num_params : int
        Update size.
    clients : int, optional
        Clients in the round (at least 2).

    Returns
    -------
    dict
        ``max_abs_diff_quantised`` (must be 0.0), ``max_abs_error`` and ``rms_error``
        against the unquantised mean, the stated ``mean_error_std`` and both in σ,
        ``flooding_std``, ``passed``.

    Raises
    ------
    ValueError
        If the preset is not exact or fewer than 2 clients are asked for.
    """
    chosen = secagg.get_preset(preset)
    if not chosen.exact or clients < 2:
        raise ValueError("exactness is measured for exact presets with 2 or more clients")
    keys = secagg.FederationKeys.generate(roster(clients), preset=preset)
    updates = _updates(num_params, clients)
    weights = client_weights(clients)
    released, quantised, release_s = _round(keys, updates, weights)
    got = flat(released.mean)
    exact = plaintext_quantised_mean(chosen, quantised, num_params)
    error = got - _unquantised_mean(updates, weights)
    sigma = released.mean_error_std
    rms = math.sqrt(float(np.mean(error**2)))
    result: dict[str, Any] = {
        "preset": preset,
        "num_params": num_params,
        "clients": clients,
        "dtype": str(got.dtype),
        "max_abs_diff_quantised": float(np.abs(got - exact).max()),
        "max_abs_error": float(np.abs(error).max()),
        "rms_error": rms,
        "mean_error_std": sigma,
        "rms_sigmas": rms / sigma,
        "max_sigmas": float(np.abs(error).max()) / sigma,
        "flooding_std": released.flooding_std,
        "release_s": release_s,
    }
    result["passed"] = (
        result["max_abs_diff_quantised"] == 0.0
        and result["rms_sigmas"] <= RMS_SIGMAS
        and result["max_sigmas"] <= MAX_SIGMAS
        and released.flooding_std == 0.0
    )
    return result
