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

from .errors import RosterError

__all__ = ["ReleasedAggregate", "check_roster", "flooding_std", "secure_gaussian"]

# Roster and weight slots hold small integers or bounded weights; a decoded value
# farther than this from an integer means the aggregate is not an honest sum.
_ROSTER_TOLERANCE = 0.25


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


def check_roster(
    roster_rows: np.ndarray,
    weight_column: np.ndarray,
    *,
    roster: Sequence[str],
    contributors: Sequence[str],
    min_clients: int,
) -> None:
    """Refuse an aggregate whose per-chunk rosters do not prove an honest sum.

    Each chunk's roster slots must read 0 or 1 (no client counted twice), every
    chunk must carry the same roster and the same weight sum (chunks of different
    sums cannot be mixed), the roster must match the claimed contributors, and at
    least ``min_clients`` distinct clients must be in it.

    Parameters
    ----------
    roster_rows : numpy.ndarray
        Decoded roster slots, one row per chunk.
    weight_column : numpy.ndarray
        Decoded weight slot of each chunk.
    roster : sequence of str
        The round's roster (client id at each position).
    contributors : sequence of str
        Client ids the aggregate claims to contain.
    min_clients : int
        Fewest distinct contributions that may be released.

    Raises
    ------
    RosterError
        If any of the conditions above fails.
    """
    counts = np.rint(roster_rows)
    if np.abs(roster_rows - counts).max(initial=0.0) > _ROSTER_TOLERANCE:
        raise RosterError("roster slots are not whole counts: the aggregate is not an honest sum")
    if counts.min(initial=0.0) < 0 or counts.max(initial=0.0) > 1:
        raise RosterError("a client is counted more than once (or negatively) in the aggregate")
    if not np.all(counts == counts[0]):
        raise RosterError("chunks carry different rosters: they come from different sums")
    spread = float(weight_column.max() - weight_column.min()) if weight_column.size else 0.0
    if spread > _ROSTER_TOLERANCE:
        raise RosterError("chunks carry different weight sums: they come from different sums")
    present = tuple(roster[int(i)] for i in np.flatnonzero(counts[0][: len(roster)]))
    if counts[0][len(roster) :].any():
        raise RosterError("the roster marks positions beyond the round's roster")
    if sorted(present) != sorted(contributors):
        raise RosterError(
            f"the encrypted roster lists {len(present)} clients but the aggregate claims "
            f"{len(contributors)}"
        )
    if len(present) < min_clients:
        raise RosterError(
            f"the aggregate sums {len(present)} distinct clients, fewer than min_clients="
            f"{min_clients}; refusing to release it"
        )
