"""Flatten a model update into one vector and back, with a hashable layout spec."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import FormatError, SpecMismatchError, UpdateValueError

__all__ = ["TensorSpec", "UpdateSpec", "flatten_update", "unflatten_update"]

# The most values one update may hold (2^34, about 17 billion: 137 GB on the wire).
MAX_VALUES = 1 << 34
_FLOAT_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor of an update."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        """Number of values in the tensor."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class UpdateSpec:
    """The layout of a flattened update: tensors in order, with a SHA-256 ``spec_hash``."""

    tensors: tuple[TensorSpec, ...]

    @property
    def numel(self) -> int:
        """Total number of values."""
        return sum(t.numel for t in self.tensors)

    def to_json(self) -> list[list[Any]]:
        """Return a JSON-ready description: ``[[name, shape, dtype], ...]``."""
        return [[t.name, list(t.shape), t.dtype] for t in self.tensors]

    @classmethod
    def from_json(cls, data: Any) -> UpdateSpec:
        """Rebuild a spec from :meth:`to_json` output, raising :class:`FormatError` if invalid."""
        if not isinstance(data, list) or not data:
            raise FormatError("update spec must be a non-empty list")
        tensors = []
        for item in data:
            if (
                not isinstance(item, list)
                or len(item) != 3
                or not isinstance(item[0], str)
                or not isinstance(item[1], list)
                or not all(type(d) is int and 0 <= d < 2**31 for d in item[1])
                or not isinstance(item[2], str)
                or item[2] not in _FLOAT_DTYPES
            ):
                raise FormatError(f"invalid tensor entry in update spec: {item!r:.80}")
            tensors.append(TensorSpec(item[0], tuple(item[1]), item[2]))
        if sum(t.numel for t in tensors) > MAX_VALUES:
            raise FormatError(f"update spec declares more than {MAX_VALUES} values")
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise FormatError("update spec repeats a tensor name")
        return cls(tuple(tensors))

    @property
    def spec_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON layout."""
        canonical = json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def flatten_update(update: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, UpdateSpec]:
    """Flatten floating-point tensors, in the mapping's order, into one float64 vector.

    Parameters
    ----------
    update : Mapping[str, torch.Tensor]
        A ``state_dict``-like mapping (e.g. new weights minus global weights).

    Returns
    -------
    tuple of numpy.ndarray and UpdateSpec
        The flat vector and the layout needed to rebuild the mapping.

    Raises
    ------
    UpdateValueError
        If the update is empty, holds a non-tensor or a non-floating tensor.
    """
    if not isinstance(update, Mapping) or not update:
        raise UpdateValueError("an update must be a non-empty mapping of name -> tensor")
    specs: list[TensorSpec] = []
    for name, tensor in update.items():
        if not isinstance(tensor, torch.Tensor):
            raise UpdateValueError(f"update entry {name!r} is not a torch.Tensor")
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in _FLOAT_DTYPES:
            raise UpdateValueError(
                f"update entry {name!r} has dtype {dtype}; only floating tensors are aggregated"
            )
        specs.append(TensorSpec(str(name), tuple(tensor.shape), dtype))
    spec = UpdateSpec(tuple(specs))
    flat = np.empty(spec.numel, dtype=np.float64)
    offset = 0
    for tensor in update.values():
        size = tensor.numel()
        # One pass per tensor: torch converts the dtype while copying into the vector.
        torch.from_numpy(flat[offset : offset + size]).copy_(tensor.detach().reshape(-1))
        offset += size
    return flat, spec


def unflatten_update(flat: np.ndarray, spec: UpdateSpec) -> dict[str, torch.Tensor]:
    """Rebuild tensors with the original names, shapes and dtypes from a flat vector.

    Raises
    ------
    SpecMismatchError
        If the vector's length differs from the spec's.
    """
    if flat.shape != (spec.numel,):
        raise SpecMismatchError(f"vector of {flat.size} values does not fit spec of {spec.numel}")
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for t in spec.tensors:
        chunk = flat[offset : offset + t.numel]
        out[t.name] = torch.from_numpy(chunk.copy()).reshape(t.shape).to(_FLOAT_DTYPES[t.dtype])
        offset += t.numel
    return out
