"""Flatten a model update into one vector and back, with a hashable layout spec.

An update is a mapping of names to floating-point arrays: numpy arrays, or torch
tensors (read without importing torch here: a torch tensor can only exist if torch
is already imported). :func:`unflatten_update` gives numpy arrays back;
:func:`secagg.dp.tensors.to_torch` (the training layer) restores torch tensors with their
original dtypes.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError, SpecMismatchError, UpdateValueError

__all__ = ["TensorSpec", "UpdateSpec", "flatten_update", "unflatten_update"]

# The most values one update may hold (2^34, about 17 billion).
MAX_VALUES = 1 << 34
_NAME_LIMIT = 1024
# dtype name -> numpy dtype of the arrays :func:`unflatten_update` returns.
_NUMPY_DTYPES: dict[str, Any] = {
    "float16": np.float16,
    "bfloat16": np.float32,  # numpy has no bfloat16; torch tensors get it back exactly
    "float32": np.float32,
    "float64": np.float64,
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
                or len(item[0]) > _NAME_LIMIT
                or not isinstance(item[1], list)
                or len(item[1]) > 32
                or not all(type(d) is int and 0 <= d < 2**31 for d in item[1])
                or not isinstance(item[2], str)
                or item[2] not in _NUMPY_DTYPES
            ):
                raise FormatError(f"invalid tensor entry in update spec: {item!r:.80}")
            tensors.append(TensorSpec(item[0], tuple(item[1]), item[2]))
        if sum(t.numel for t in tensors) > MAX_VALUES:
            raise FormatError(f"update spec declares more than {MAX_VALUES} values")
        if sum(t.numel for t in tensors) == 0:
            raise FormatError("update spec declares no values")
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise FormatError("update spec repeats a tensor name")
        return cls(tuple(tensors))

    @property
    def spec_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON layout."""
        canonical = json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _as_array(name: str, value: Any) -> tuple[np.ndarray, str]:
    """A float64-convertible view of one update entry and its dtype name."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        if dtype not in _NUMPY_DTYPES:
            raise UpdateValueError(
                f"update entry {name!r} has dtype {dtype}; only floating tensors are aggregated"
            )
        if value.is_meta:
            raise UpdateValueError(f"update entry {name!r} is a meta tensor: it holds no values")
        if value.is_complex() or value.layout != torch.strided:
            raise UpdateValueError(f"update entry {name!r} is not a dense real tensor")
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # no numpy dtype; float32 holds it exactly
            tensor = tensor.to(torch.float32)
        # A numpy view: the float64 copy happens in numpy, not on torch's thread pool
        # (which costs 10x under CPU contention).
        return tensor.resolve_conj().resolve_neg().numpy(), dtype
    if isinstance(value, np.ndarray):
        dtype = str(value.dtype)
        if dtype not in _NUMPY_DTYPES or dtype == "bfloat16":
            raise UpdateValueError(
                f"update entry {name!r} has dtype {dtype}; only floating arrays are aggregated"
            )
        return value, dtype
    raise UpdateValueError(
        f"update entry {name!r} is a {type(value).__name__}, not a numpy array or torch tensor"
    )


def flatten_update(update: Mapping[str, Any]) -> tuple[np.ndarray, UpdateSpec]:
    """Flatten floating-point arrays, in the mapping's order, into one float64 vector.

    Parameters
    ----------
    update : Mapping[str, numpy.ndarray or torch.Tensor]
        A ``state_dict``-like mapping (e.g. new weights minus global weights).

    Returns
    -------
    tuple of numpy.ndarray and UpdateSpec
        The flat vector (a fresh array) and the layout needed to rebuild the mapping.

    Raises
    ------
    UpdateValueError
        If the update is not a non-empty mapping, holds no values, holds a
        non-floating, complex, meta or non-array entry, or a name that is not a string.
    """
    if not isinstance(update, Mapping) or not update:
        raise UpdateValueError("an update must be a non-empty mapping of name -> array")
    arrays: list[np.ndarray] = []
    specs: list[TensorSpec] = []
    for name, value in update.items():
        if not isinstance(name, str) or not 0 < len(name) <= _NAME_LIMIT:
            raise UpdateValueError(f"update names must be non-empty strings, got {name!r:.40}")
        array, dtype = _as_array(name, value)
        arrays.append(array)
        specs.append(TensorSpec(name, tuple(int(d) for d in array.shape), dtype))
    spec = UpdateSpec(tuple(specs))
    if spec.numel == 0:
        raise UpdateValueError("the update holds no values (every entry is empty)")
    if spec.numel > MAX_VALUES:
        raise UpdateValueError(f"the update holds more than {MAX_VALUES} values")
    flat = np.empty(spec.numel, dtype=np.float64)
    offset = 0
    for array in arrays:
        flat[offset : offset + array.size] = array.reshape(-1)
        offset += array.size
    return flat, spec


def unflatten_update(flat: np.ndarray, spec: UpdateSpec) -> dict[str, np.ndarray]:
    """Rebuild arrays with the original names and shapes from a flat vector.

    The arrays have the spec's dtype (``bfloat16`` comes back as ``float32``; use
    :func:`secagg.dp.tensors.to_torch` for torch tensors of the exact dtype).

    Raises
    ------
    SpecMismatchError
        If the vector's length differs from the spec's.
    """
    if flat.shape != (spec.numel,):
        raise SpecMismatchError(f"vector of {flat.size} values does not fit spec of {spec.numel}")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for t in spec.tensors:
        chunk = flat[offset : offset + t.numel]
        out[t.name] = chunk.reshape(t.shape).astype(_NUMPY_DTYPES[t.dtype])
        offset += t.numel
    return out
