"""Where a client's weight and values sit in its ciphertext chunks, for each encoding.

Both layouts concatenate every chunk's capacity into one sequence: position 0 holds
the client's normalised weight ``w = weight / weight_bound``, positions ``1..n`` the
``n`` values of ``w · update``, and the rest is padding.

- ``exact-fields-v1`` (:class:`FieldLayout`, exact presets): each position is a
  ``value_bits``-bit integer, the stochastic rounding of a value mapped from
  ``[-value_range, value_range]`` (the weight from ``[0, 1]``) onto
  ``[0, 2^value_bits - 1]``. A chunk's ``N·F`` integers are packed ``F`` per plaintext
  coefficient (field ``f`` of coefficient ``j`` holds position ``f·N + j``), shifted left
  by ``noise_shift`` bits. The key holder recovers the integer sums exactly.
- ``ckks-slots-v1`` (:class:`SlotLayout`, approximate presets): each position is a real
  CKKS slot value (two per complex slot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._random import secure_bits32
from ..errors import IntegrityError
from ._rlwe import reduce_once
from .presets import SEAL_NOISE_BOUND, Preset

__all__ = ["FIELD_LAYOUT", "SLOT_LAYOUT", "FieldLayout", "Layout", "SlotLayout", "layout_for"]

SLOT_LAYOUT = "ckks-slots-v1"
FIELD_LAYOUT = "exact-fields-v1"


@dataclass(frozen=True)
class SlotLayout:
    """The ``ckks-slots-v1`` layout (approximate presets): reals in CKKS slots."""

    preset: Preset

    @property
    def name(self) -> str:
        """The layout's name, carried and checked in every header and MAC scope."""
        return SLOT_LAYOUT

    def num_chunks(self, num_values: int) -> int:
        """Chunks an update of ``num_values`` values takes."""
        return self.preset.num_chunks(num_values)

    def rows(self, weighted: np.ndarray, weight: float) -> np.ndarray:
        """Every chunk's slots, one row each: the weight, then the weighted values."""
        slots = self.preset.slots
        matrix = np.zeros(self.num_chunks(weighted.size) * slots, dtype=np.float64)
        matrix[0] = weight
        matrix[1 : 1 + weighted.size] = weighted
        return matrix.reshape(-1, slots)

    def split(self, plain: np.ndarray, num_values: int) -> tuple[float, np.ndarray]:
        """The weight sum and the summed values of decrypted rows."""
        flat = plain.reshape(-1)
        return float(flat[0]), flat[1 : 1 + num_values]


@dataclass(frozen=True)
class FieldLayout:
    """The ``exact-fields-v1`` layout (exact presets): quantised integers in packed fields."""

    preset: Preset

    @property
    def name(self) -> str:
        """The layout's name, carried and checked in every header and MAC scope."""
        return FIELD_LAYOUT

    def num_chunks(self, num_values: int) -> int:
        """Chunks an update of ``num_values`` values takes."""
        return self.preset.num_chunks(num_values)

    def quantize(self, weighted: np.ndarray, weight: float) -> np.ndarray:
        """Stochastically round the weight and the values to integers (unbiased).

        Every value must already be within ``±value_range`` (checked by the caller).
        A value rounds up with probability equal to its fractional part, to 32 bits of
        resolution (a bias below ``2^-32`` of a step), from the OS CSPRNG.
        """
        preset = self.preset
        scaled = np.empty(weighted.size + 1, dtype=np.float64)
        scaled[0] = weight * preset.levels
        np.multiply(weighted, 1.0 / preset.quantization_step, out=scaled[1:])
        scaled[1:] += preset.value_range / preset.quantization_step
        np.clip(scaled, 0.0, preset.levels, out=scaled)  # float round-off only: checked before
        low = np.floor(scaled)
        scaled -= low  # the fractional part p: round up with probability p (32-bit resolution)
        scaled *= 2.0**32
        up = secure_bits32(scaled.size) < scaled
        low += up
        return low.astype(np.uint64)

    def rows(self, quantized: np.ndarray) -> np.ndarray:
        """Every chunk's plaintext coefficients (``uint64``, one row per chunk)."""
        preset = self.preset
        n, fields = preset.poly_modulus_degree, preset.fields
        chunks = self.num_chunks(quantized.size - 1)
        padded = np.zeros(chunks * n * fields, dtype=np.uint64)
        padded[: quantized.size] = quantized
        grid = padded.reshape(chunks, fields, n)
        packed = np.zeros((chunks, n), dtype=np.uint64)
        for f in range(fields):
            packed |= grid[:, f, :] << np.uint64(f * preset.field_bits)
        return packed << np.uint64(preset.noise_shift)

    def field_sums(self, phases: np.ndarray, moduli: np.ndarray, contributors: int) -> np.ndarray:
        """Every position's exact integer sum, from the decrypted coefficients modulo ``q``.

        A coefficient of an honest sum of ``k`` encryptions is ``Δ·V + e`` with
        ``|e| <= 21·k < Δ/2``: adding ``Δ/2`` (mod ``q``) and shifting right recovers ``V``
        whatever ``e`` is, so the result depends on the clients' integers only.

        Raises
        ------
        IntegrityError
            If a residual error exceeds the bound (impossible for a verified sum).
        """
        preset = self.preset
        shift = np.uint64(preset.noise_shift)
        half = np.uint64(1 << (preset.noise_shift - 1))
        lifted = phases + half
        reduce_once(lifted, moduli)
        packed = lifted >> shift
        residual = lifted.astype(np.int64) - (packed << shift).astype(np.int64) - int(half)
        if int(np.abs(residual).max(initial=0)) > SEAL_NOISE_BOUND * contributors:
            raise IntegrityError("a decrypted coefficient is not an honest sum's: not released")
        mask = np.uint64((1 << preset.field_bits) - 1)
        fields = [(packed >> np.uint64(f * preset.field_bits)) & mask for f in range(preset.fields)]
        return np.stack(fields, axis=1).reshape(-1)

    def dequantize(
        self, sums: np.ndarray, num_values: int, contributors: int
    ) -> tuple[float, np.ndarray]:
        """The weight sum and the summed values, from the positions' integer sums.

        ``Σ w_j = S_0 / L`` and ``Σ v_j = S_i · step - k · value_range`` (``L`` the levels,
        ``k`` the contributors): a deterministic function of the clients' integers.
        """
        preset = self.preset
        weight = float(sums[0]) / preset.levels
        values = sums[1 : 1 + num_values].astype(np.float64) * preset.quantization_step
        return weight, values - contributors * preset.value_range


Layout = SlotLayout | FieldLayout


def layout_for(preset: Preset) -> Layout:
    """The layout of ``preset``'s encoding."""
    return FieldLayout(preset) if preset.exact else SlotLayout(preset)
