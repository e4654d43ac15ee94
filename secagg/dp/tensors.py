"""Torch tensors to and from the crypto core's numpy arrays (the training layer)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..crypto.spec import UpdateSpec

__all__ = ["to_torch"]

_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def to_torch(arrays: Mapping[str, np.ndarray], spec: UpdateSpec) -> dict[str, torch.Tensor]:
    """Torch tensors with the names, shapes and dtypes of ``spec`` (e.g. a released mean)."""
    return {
        t.name: torch.from_numpy(np.array(arrays[t.name], dtype=np.float64, copy=True))
        .reshape(t.shape)
        .to(_DTYPES[t.dtype])
        for t in spec.tensors
    }
