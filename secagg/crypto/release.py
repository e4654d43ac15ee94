"""Safe release of decrypted aggregates: noise flooding and the released result.

CKKS is not IND-CPA-D secure (Li and Micciancio, EUROCRYPT 2021): whoever sees a
ciphertext and its exact decryption ``m + e`` learns ``e`` and, from enough of them,
the secret key. The key holder therefore never releases ``m + e`` of the slot
layout; it adds Gaussian flooding noise of standard deviation

    σ = sqrt(12·τ) · 2^(s/2) · t

(Li, Micciancio, Schultz and Sorrell, CRYPTO 2022; OpenFHE's CKKS noise-flooding
guide), where ``τ`` is the number of ciphertext decryptions the key may ever release
(its decryption budget), ``s`` the statistical security parameter and ``t`` a
high-probability bound on the decoded error of the aggregate
(:meth:`secagg.crypto.presets.Preset.noise_bound`). The bound ``t`` holds because the key
holder decrypts only sums it has verified to be honest sums of fresh ciphertexts
(:mod:`secagg.crypto._mac`). The noise comes from the operating system's CSPRNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._random import secure_normal
from .spec import UpdateSpec

__all__ = ["ReleasedAggregate", "flooding_std", "secure_gaussian"]


@dataclass(frozen=True)
class ReleasedAggregate:
    """A verified, decrypted aggregate as the key holder releases it (exact, or flooded).

    Attributes
    ----------
    mean : dict[str, numpy.ndarray]
        The weighted mean update with the original names and shapes
        (:func:`secagg.dp.tensors.to_torch` gives torch tensors with the original dtypes).
    spec : UpdateSpec
        The update layout.
    weight_sum : float
        Sum of the contributors' normalised weights (exact, or flooded).
    contributors : tuple[str, ...]
        Client ids whose updates are in the sum.
    round_id : int
        The round the aggregate belongs to.
    flooding_std : float
        Standard deviation of the flooding noise added to each coordinate of the sum
        (approximate presets; 0 for exact presets).
    quantization_std : float
        Standard deviation of one client value's stochastic rounding (exact presets;
        0 for approximate presets).
    """

    mean: dict[str, np.ndarray]
    spec: UpdateSpec
    weight_sum: float
    contributors: tuple[str, ...]
    round_id: int
    flooding_std: float
    quantization_std: float = 0.0

    @property
    def mean_error_std(self) -> float:
        """Standard deviation secure aggregation adds to each coordinate of :attr:`mean`.

        Flooding (approximate presets) or the contributors' rounding (exact presets),
        divided by the weight sum.
        """
        k = len(self.contributors)
        variance = self.flooding_std**2 + k * self.quantization_std**2
        return float(math.sqrt(variance) / self.weight_sum)


def flooding_std(noise_bound: float, *, decryption_budget: int, statistical_security: int) -> float:
    """Flooding standard deviation ``sqrt(12·τ) · 2^(s/2) · t``.

    Parameters
    ----------
    noise_bound : float
        ``t``: bound on the decoded error of the ciphertexts being released.
    decryption_budget : int
        ``τ``: the most ciphertext decryptions the key will ever release.
    statistical_security : int
        ``s``: bits of statistical security (at least 30 recommended).
    """
    return float(
        math.sqrt(12.0 * decryption_budget) * 2.0 ** (statistical_security / 2) * noise_bound
    )


def secure_gaussian(size: int) -> np.ndarray:
    """``size`` standard normal values from the OS CSPRNG (see :mod:`secagg._random`)."""
    return secure_normal(size)
