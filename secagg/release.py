"""Safe release of decrypted aggregates: roster checks and noise flooding.

CKKS is not IND-CPA-D secure (Li and Micciancio, EUROCRYPT 2021): whoever sees a
ciphertext and its exact decryption ``m + e`` learns ``e`` and, from enough of
them, the secret key. The key holder therefore never releases ``m + e``; it adds
Gaussian flooding noise of standard deviation

    σ = sqrt(12·τ) · 2^(s/2) · t

(Li, Micciancio, Schultz and Sorrell, CRYPTO 2022; OpenFHE's CKKS noise-flooding
guide), where ``τ`` is the number of ciphertext decryptions the key may ever
release (its decryption budget), ``s`` the statistical security parameter and
``t`` a high-probability bound on the decoded error of the aggregate
(:meth:`secagg.presets.Preset.noise_bound`). The noise is drawn from the
operating system's CSPRNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._slots import CHUNK_TAG_SCALE, round_tag
from .errors import RosterError
from .presets import Preset

__all__ = ["ReleasedAggregate", "check_integrity", "flooding_std", "secure_gaussian"]


@dataclass(frozen=True)
class ReleasedAggregate:
    """A decrypted, noise-flooded aggregate as the key holder releases it.

    Attributes
    ----------
    mean : dict[str, torch.Tensor]
        The weighted mean update with the original names, shapes and dtypes.
    weight_sum : float
        Sum of the contributors' normalised weights (flooded).
    contributors : tuple[str, ...]
        Client ids whose updates are in the sum, in roster order.
    round_id : int
        The round the aggregate belongs to.
    flooding_std : float
        Standard deviation of the flooding noise added to each coordinate of the sum.
    """

    mean: dict[str, torch.Tensor]
    weight_sum: float
    contributors: tuple[str, ...]
    round_id: int
    flooding_std: float

    @property
    def mean_error_std(self) -> float:
        """Standard deviation the flooding adds to each coordinate of :attr:`mean`."""
        return float(self.flooding_std / self.weight_sum)


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
    """Draw ``size`` standard normal values from the OS CSPRNG (Box-Muller on 53-bit uniforms)."""
    half = (size + 1) // 2
    raw = np.frombuffer(os.urandom(16 * half), dtype=np.uint64).reshape(2, half)
    u1 = ((raw[0] >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]
    u2 = (raw[1] >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]


def check_integrity(
    plain: np.ndarray,
    preset: Preset,
    *,
    roster: Sequence[str],
    contributors: Sequence[str],
    min_clients: int,
    round_id: int,
    tolerance: float,
) -> None:
    """Refuse a decrypted aggregate whose header slots do not prove one honest sum.

    Every chunk's roster slots must read 0 or 1 (no client counted twice) and be the
    same in every chunk; every chunk must carry the same weight sum, ``k × round tag``
    of the claimed round and ``k × chunk tag`` of its own position (``k`` the number
    of contributors), so chunks of different sums, rounds or positions cannot be
    mixed; the roster must match the claimed contributors and count at least
    ``min_clients`` distinct clients.

    Parameters
    ----------
    plain : numpy.ndarray
        Decrypted chunks, one row each (not yet flooded; never released).
    preset : Preset
        The slot layout.
    roster : sequence of str
        The round's roster (client id at each position).
    contributors : sequence of str
        Client ids the aggregate claims to contain.
    min_clients : int
        Fewest distinct contributions that may be released.
    round_id : int
        The round the aggregate claims to belong to.
    tolerance : float
        Largest CKKS error accepted on a header slot (a few times the noise bound).

    Raises
    ------
    RosterError
        If any of the conditions above fails.
    """
    r = preset.roster_slots
    rows = plain[:, :r]
    counts = np.rint(rows)
    if np.abs(rows - counts).max(initial=0.0) > tolerance:
        raise RosterError("roster slots are not whole counts: the aggregate is not an honest sum")
    if counts.min(initial=0.0) < 0 or counts.max(initial=0.0) > 1:
        raise RosterError("a client is counted more than once (or negatively) in the aggregate")
    if not np.all(counts == counts[0]):
        raise RosterError("chunks carry different rosters: they come from different sums")
    if counts[0][len(roster) :].any():
        raise RosterError("the roster marks positions beyond the round's roster")
    present = tuple(roster[int(i)] for i in np.flatnonzero(counts[0][: len(roster)]))
    if sorted(present) != sorted(contributors):
        raise RosterError(
            f"the encrypted roster lists {len(present)} clients but the aggregate claims "
            f"{len(contributors)}"
        )
    k = len(present)
    weights = plain[:, r]
    if float(weights.max() - weights.min()) > tolerance:
        raise RosterError("chunks carry different weight sums: they come from different sums")
    if np.abs(plain[:, r + 1] - k * round_tag(round_id)).max(initial=0.0) > tolerance:
        raise RosterError(f"the encrypted round tags do not match round {round_id}")
    expected = k * np.arange(1, len(plain) + 1) / CHUNK_TAG_SCALE
    if np.abs(plain[:, r + 2] - expected).max(initial=0.0) > tolerance:
        raise RosterError("the encrypted chunk tags are out of order or from other chunks")
    if k < min_clients:
        raise RosterError(
            f"the aggregate sums {k} distinct clients, fewer than min_clients="
            f"{min_clients}; refusing to release it"
        )
