"""Building blocks shared by the secagg attention classifiers.

Everything here is built for DP-SGD with Opacus in ``"hooks"`` mode: each trainable
module sees batch-first inputs, there is no BatchNorm, no bare root-level
``nn.Parameter`` and no module that mixes buffers with trainable parameters.

The models follow Tramèr and Boneh (2021), "Differentially private learning needs better
features": a fixed, data-independent feature extractor (no parameters, nothing learned
from private data) feeds a small trainable part, the only part that sees the DP-SGD
noise. In every model that trainable part is an *attention gate* over units (features,
image patches or tokens) followed by a linear head, so the attention is the model's
mechanism for choosing which units its decision rests on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..dp.layers import masked_softmax
from ..errors import ConfigurationError

__all__ = [
    "UnitScorer",
    "bounded_scores",
    "check_nonnegative",
    "check_positive",
    "check_positive_float",
    "count_parameters",
    "gabor_bank",
    "masked_softmax",
    "position_ids",
]


def check_positive(name: str, value: int) -> None:
    """Raise :class:`~secagg.errors.ConfigurationError` unless ``value`` is a positive int.

    Parameters
    ----------
    name : str
        Argument name, used in the error message.
    value : int
        The value to check.

    Raises
    ------
    ConfigurationError
        If ``value`` is not an ``int`` (``bool`` excluded) or is ``<= 0``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")


def check_nonnegative(name: str, value: int) -> None:
    """Raise :class:`~secagg.errors.ConfigurationError` unless ``value`` is an int ``>= 0``.

    Parameters
    ----------
    name : str
        Argument name, used in the error message.
    value : int
        The value to check.

    Raises
    ------
    ConfigurationError
        If ``value`` is not an ``int`` (``bool`` excluded) or is negative.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be a non-negative integer, got {value!r}")


def check_positive_float(name: str, value: float) -> None:
    """Raise :class:`~secagg.errors.ConfigurationError` unless ``value`` is a finite number > 0.

    Parameters
    ----------
    name : str
        Argument name, used in the error message.
    value : float
        The value to check.

    Raises
    ------
    ConfigurationError
        If ``value`` is not a real number (``bool`` excluded), not finite or ``<= 0``.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a positive finite number, got {value!r}")


def count_parameters(module: nn.Module) -> int:
    """Count the trainable parameters of a module.

    Parameters
    ----------
    module : torch.nn.Module
        Any module.

    Returns
    -------
    int
        Total number of elements over parameters with ``requires_grad=True``.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def position_ids(batch_size: int, length: int, device: torch.device) -> Tensor:
    """Return batch-first position indices ``[[0, 1, ..., length - 1]] * batch_size``.

    Parameters
    ----------
    batch_size : int
        Number of rows ``B``.
    length : int
        Sequence length ``L``.
    device : torch.device
        Device of the result.

    Returns
    -------
    torch.Tensor
        Contiguous ``LongTensor`` of shape ``(B, L)``, so that Opacus sees a batch-first
        input at a position embedding.
    """
    return torch.arange(length, device=device).expand(batch_size, length).contiguous()


def bounded_scores(scores: Tensor, bound: float) -> Tensor:
    """Squash attention scores into ``(-bound, bound)`` with ``bound * tanh(s / bound)``.

    Bounded scores cap how peaked the softmax can get: two units' weights differ by at
    most a factor ``exp(2 * bound)``. Inside ``|s| << bound`` the map is the identity, so a
    model that really prefers a unit can still concentrate its attention there; what it
    cannot do is put all the mass on one unit because of a few large noisy weights.

    Parameters
    ----------
    scores : torch.Tensor
        Raw scores.
    bound : float
        Positive bound.

    Returns
    -------
    torch.Tensor
        Scores of the same shape, each in ``(-bound, bound)``.
    """
    return bound * torch.tanh(scores / bound)


def gabor_bank(orientations: int, sigma: float = 0.8) -> Tensor:
    """Fixed complex Morlet (zero-mean Gabor) filters, as real and imaginary conv kernels.

    The filters are those of the first layer of a scattering network (Mallat 2012;
    Oyallon and Mallat 2015) at the finest scale: a Gaussian envelope of width ``sigma``
    times a plane wave of frequency ``3 pi / 4`` in ``orientations`` directions evenly
    spaced over ``[0, pi)``, minus the constant that makes each filter sum to zero, and
    scaled to unit L1 norm. They depend on nothing but their arguments.

    Parameters
    ----------
    orientations : int
        Number of directions ``L``.
    sigma : float, optional
        Width of the Gaussian envelope, in pixels.

    Returns
    -------
    torch.Tensor
        ``(2 * L, 1, k, k)`` float32 kernels, ``k = 2 * ceil(3 * sigma) + 1``; rows
        ``2 l`` and ``2 l + 1`` are the real and imaginary parts of direction ``l``.
    """
    half = math.ceil(3.0 * sigma)
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    envelope = torch.exp(-(xx**2 + yy**2) / (2.0 * sigma**2))
    xi = 3.0 * math.pi / 4.0
    kernels: list[Tensor] = []
    for direction in range(orientations):
        theta = math.pi * direction / orientations
        wave = torch.exp(1j * xi * (xx * math.cos(theta) + yy * math.sin(theta)))
        beta = (envelope * wave).sum() / envelope.sum()
        psi = envelope * (wave - beta)
        psi = psi / psi.abs().sum()
        kernels += [psi.real, psi.imag]
    return torch.stack(kernels).unsqueeze(1).to(torch.float32)


class UnitScorer(nn.Module):
    """Attention scores over units: a small tanh MLP on each unit plus a per-unit prior.

    ``score[b, u] = v . tanh(U f[b, u] + c) + prior[u]`` (the MLP part is dropped when
    ``hidden_dim == 0``), then squashed into ``(-bound, bound)``. The MLP is shared by all
    units, so it scores a unit by its content; the prior (an ``nn.Embedding`` looked up
    with batch-first unit ids) lets the model prefer units by their identity (a
    feature, a patch position, a token bucket). All weights start at zero: at
    initialisation the attention is uniform.

    Parameters
    ----------
    feature_dim : int
        Size ``D`` of one unit's feature vector.
    num_units : int
        Number of distinct unit ids for the prior.
    hidden_dim : int
        Width of the MLP (0: prior only).
    bound : float
        Score bound (see :func:`bounded_scores`).
    """

    def __init__(self, feature_dim: int, num_units: int, hidden_dim: int, bound: float) -> None:
        super().__init__()
        check_positive("feature_dim", feature_dim)
        check_positive("num_units", num_units)
        check_nonnegative("hidden_dim", hidden_dim)
        check_positive_float("score_bound", bound)
        self.bound = float(bound)
        self.prior = nn.Embedding(num_units, 1)
        nn.init.zeros_(self.prior.weight)
        self.hidden: nn.Linear | None = None
        self.out: nn.Linear | None = None
        if hidden_dim > 0:
            self.hidden = nn.Linear(feature_dim, hidden_dim)
            self.out = nn.Linear(hidden_dim, 1)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, features: Tensor, unit_ids: Tensor) -> Tensor:
        """Score every unit.

        Parameters
        ----------
        features : torch.Tensor
            ``(B, U, D)`` unit features.
        unit_ids : torch.Tensor
            ``(B, U)`` integer ids for the prior (batch-first, contiguous).

        Returns
        -------
        torch.Tensor
            ``(B, U)`` scores in ``(-bound, bound)``.
        """
        scores = self.prior(unit_ids).squeeze(-1)
        if self.hidden is not None and self.out is not None:
            scores = scores + self.out(torch.tanh(self.hidden(features))).squeeze(-1)
        return bounded_scores(scores, self.bound)
