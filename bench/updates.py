"""Synthetic and model-shaped updates, client weights and the exact weighted mean.

Updates are synthetic (:func:`make_update`): four weight tensors and four small bias
tensors, values ``N(0, 0.01²)``. In a round, client ``i`` sends :func:`coefficient` ``(i)``
times a shared base update with weight :func:`client_weights` ``[i]``, so the expected
weighted mean is known exactly (:func:`expected_mean`). Every weighted value stays far
inside the exact presets' ``|weight × value| <= 1`` (``N(0, 0.01²)`` never reaches 1).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "WEIGHT_BOUND",
    "client_weights",
    "coefficient",
    "expected_mean",
    "flat",
    "layer_sizes",
    "load_dataset",
    "make_update",
    "model_update",
    "numel",
    "parse_sizes",
    "scaled",
]

#: Public upper bound on client weights (secagg encrypts ``weight / bound``).
WEIGHT_BOUND = 128.0


def parse_sizes(text: str) -> list[int]:
    """Parse a comma-separated list of sizes such as ``"1e4,1e5,250000"``.

    Parameters
    ----------
    text : str
        Sizes, comma-separated; scientific notation is allowed.

    Returns
    -------
    list of int
        The sizes, each at least 1.

    Raises
    ------
    ValueError
        If the list is empty or a size is below 1.
    """
    sizes = [int(float(part)) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive numbers, got {text!r}")
    return sizes


def layer_sizes(num_params: int) -> list[tuple[str, int]]:
    """Tensor names and sizes of a synthetic update of ``num_params`` values.

    Four weight tensors share most values; four bias tensors hold ``≈ sqrt(n/4)``
    values each, so one-ciphertext-per-layer schemes pay for small layers as real
    models make them.
    """
    if num_params < 8:
        return [(f"layer{i}.weight", 1) for i in range(num_params)]
    bias = max(1, round(math.sqrt(num_params / 4))) if num_params >= 16 else 1
    weights = num_params - 4 * bias
    sizes: list[tuple[str, int]] = []
    for i in range(4):
        share = weights // 4 + (weights % 4 if i == 3 else 0)
        sizes += [(f"block{i}.weight", share), (f"block{i}.bias", bias)]
    return sizes


def make_update(
    num_params: int, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """A synthetic model update of exactly ``num_params`` values (see :func:`layer_sizes`).

    Parameters
    ----------
    num_params : int
        Total number of values.
    seed : int, optional
        Seed of the values (``N(0, 0.01²)``).
    dtype : torch.dtype, optional
        Tensor dtype (float32 as a model's; float64 keeps a release uncast).

    Returns
    -------
    dict[str, torch.Tensor]
        Tensor name to 1-D tensor.
    """
    generator = np.random.default_rng(seed)
    return {
        name: torch.from_numpy(generator.standard_normal(size) * 0.01).to(dtype)
        for name, size in layer_sizes(num_params)
    }


@functools.lru_cache(maxsize=8)
def load_dataset(name: str, max_examples: int | None) -> Any:
    """A bundled dataset (cached): :func:`secagg.protocols.datasets.load_dataset`."""
    from secagg.protocols.datasets import load_dataset as load

    return load(name, max_examples=max_examples)


def model_update(dataset: str, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """An update with the layout of a dataset's default model (its trainable tensors).

    Parameters
    ----------
    dataset : str
        A bundled dataset's name (``digits``, ``mnist``, ...).
    seed : int, optional
        Seed of the values (``N(0, 0.01²)``).

    Returns
    -------
    dict[str, torch.Tensor]
        Parameter name to float32 tensor, in the model's order.
    """
    model = load_dataset(dataset, 200).default_model()
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(p.shape, generator=generator) * 0.01
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def numel(update: Mapping[str, torch.Tensor]) -> int:
    """Number of values in an update."""
    return sum(int(t.numel()) for t in update.values())


def client_weights(count: int) -> list[float]:
    """Deterministic client weights (local example counts) in ``[96, 128]``.

    Near the public bound (:data:`WEIGHT_BOUND`), so that even two clients' flooded
    weight sum stands well above secagg's flooding noise (the key holder refuses to
    divide otherwise).
    """
    return [float(96 + (37 * i) % 33) for i in range(count)]


def coefficient(index: int) -> float:
    """Client ``index`` sends this multiple of the base update (in ``(0, 1]``)."""
    return (1 + index % 7) / 7.0


def scaled(update: Mapping[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    """``factor × update``, tensor by tensor."""
    return {name: tensor * factor for name, tensor in update.items()}


def flat(values: Mapping[str, Any]) -> np.ndarray:
    """Concatenate an update's tensors or arrays into one float64 vector."""
    parts = []
    for value in values.values():
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        parts.append(np.asarray(array, dtype=np.float64).ravel())
    return np.concatenate(parts)


def expected_mean(base: Mapping[str, torch.Tensor], sources: Sequence[int]) -> np.ndarray:
    """The exact weighted mean when client ``i`` sends ``coefficient(i) × base``.

    Parameters
    ----------
    base : Mapping[str, torch.Tensor]
        The shared base update.
    sources : sequence of int
        The client index of each payload summed (its coefficient and weight).
    """
    weights = client_weights(max(sources) + 1)
    numerator = sum(weights[i] * coefficient(i) for i in sources)
    denominator = sum(weights[i] for i in sources)
    return flat(base) * (numerator / denominator)
