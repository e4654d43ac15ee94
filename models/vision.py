"""Patch-attention image classifier on fixed scattering features, built for DP-SGD (Opacus)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from ..errors import ConfigurationError
from ._common import (
    UnitScorer,
    check_nonnegative,
    check_positive,
    check_positive_float,
    gabor_bank,
    position_ids,
)

__all__ = ["ScatteringPatchFeatures", "VisionAttentionClassifier"]


class ScatteringPatchFeatures(nn.Module):
    """Fixed first-order scattering features of each image patch (no trainable weights).

    For scale ``j`` in ``0 .. scales-1`` the image is area-downsampled by ``2**j`` and
    convolved with :func:`~._common.gabor_bank` (``orientations`` complex Morlet
    filters); the modulus of each response, averaged over each ``patch_size x
    patch_size`` patch, is one feature. With the patch mean of the image itself, each
    patch gets ``D = in_channels * (1 + scales * orientations)`` features. Each of the
    ``D`` feature maps is then standardised over the ``P`` patches of its own image
    (``GroupNorm`` with one group per channel and no affine weights, as in Tramèr and
    Boneh 2021): the features describe where in the image each pattern is strong,
    independently of contrast, and are well conditioned for a linear head.

    Nothing here is learned and nothing depends on data: the filters are a
    non-persistent buffer rebuilt from the arguments (they are not in ``state_dict``).

    Parameters
    ----------
    image_size : int
        Height and width of the (square) images.
    patch_size : int
        Side of a patch; divides ``image_size``.
    in_channels : int
        Image channels.
    scales : int
        Number of wavelet scales ``J`` (0: patch means only).
    orientations : int
        Number of wavelet directions ``L``.

    Raises
    ------
    ConfigurationError
        On non-positive sizes or ``patch_size`` not dividing ``image_size``.
    """

    filters: Tensor

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_channels: int,
        scales: int,
        orientations: int,
    ) -> None:
        super().__init__()
        for name, value in (
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("in_channels", in_channels),
            ("orientations", orientations),
        ):
            check_positive(name, value)
        check_nonnegative("scales", scales)
        if image_size % patch_size != 0:
            raise ConfigurationError(
                f"image_size ({image_size}) must be divisible by patch_size ({patch_size})"
            )
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.scales = scales
        self.orientations = orientations
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.feature_dim = in_channels * (1 + scales * orientations)
        self.register_buffer("filters", gabor_bank(orientations), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Compute the standardised patch features.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, in_channels, image_size, image_size)`` images.

        Returns
        -------
        torch.Tensor
            ``(B, P, D)`` features, patches in row-major order.
        """
        batch, channels, size = x.shape[0], self.in_channels, self.image_size
        grid = (self.grid_size, self.grid_size)
        maps = [F.adaptive_avg_pool2d(x, grid)]
        flat = x.reshape(batch * channels, 1, size, size)
        pad = self.filters.shape[-1] // 2
        for scale in range(self.scales):
            side = math.ceil(size / 2**scale)
            level = flat if scale == 0 else F.adaptive_avg_pool2d(flat, (side, side))
            response = F.conv2d(level, self.filters, padding=pad)  # (B*C, 2L, s, s)
            response = response.view(batch * channels, self.orientations, 2, side, side)
            modulus = response.pow(2).sum(dim=2).add(1e-12).sqrt()
            maps.append(
                F.adaptive_avg_pool2d(modulus, grid).reshape(
                    batch, channels * self.orientations, *grid
                )
            )
        stacked = torch.cat(maps, dim=1)  # (B, D, g, g)
        # GroupNorm with one group per channel and no affine weights: each feature map is
        # standardised over the patches of its own image (Tramer and Boneh 2021).
        stacked = F.group_norm(stacked, stacked.shape[1])
        return stacked.flatten(2).transpose(1, 2)  # (B, P, D)


class VisionAttentionClassifier(nn.Module):
    """Attention over image patches, on fixed scattering features, with a linear head.

    Each patch ``p`` gets fixed features ``f_p`` (:class:`ScatteringPatchFeatures`). A
    small scorer gives it a score from its content (a shared tanh MLP) and its position
    (a learned prior); the softmax over patches is the attention ``w`` (rows sum to 1).
    The head is linear in the gated features: ``logits = b + sum_p P w_p W_p f_p``, so
    every patch contributes its own linear evidence, weighted by its attention (uniform
    attention gives a plain linear classifier on the scattering features; attention
    concentrated on one patch makes the decision rest on that patch alone).

    Only the scorer and the head are trained (a few thousand weights), all in
    ``nn.Linear`` and ``nn.Embedding`` layers that Opacus supports in ``"hooks"`` mode.

    Parameters
    ----------
    image_size : int
        Height and width of the (square) input images.
    num_classes : int
        Number of classes ``C``.
    patch_size : int, optional
        Side of a patch; must divide ``image_size``.
    in_channels : int, optional
        Number of image channels.
    scales : int, optional
        Wavelet scales of the fixed features.
    orientations : int, optional
        Wavelet directions of the fixed features.
    attention_dim : int, optional
        Hidden width of the content scorer (0: position prior only).
    score_bound : float, optional
        Attention scores lie in ``(-score_bound, score_bound)``.

    Attributes
    ----------
    num_patches : int
        ``(image_size // patch_size) ** 2``, the number of attention units.

    Raises
    ------
    ConfigurationError
        On non-positive sizes or ``image_size`` not divisible by ``patch_size``.
    """

    num_patches: int

    def __init__(
        self,
        image_size: int,
        num_classes: int,
        *,
        patch_size: int = 4,
        in_channels: int = 1,
        scales: int = 2,
        orientations: int = 8,
        attention_dim: int = 8,
        score_bound: float = 4.0,
    ) -> None:
        super().__init__()
        check_positive("num_classes", num_classes)
        check_nonnegative("attention_dim", attention_dim)
        check_positive_float("score_bound", score_bound)
        self.features = ScatteringPatchFeatures(
            image_size, patch_size, in_channels, scales, orientations
        )
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.grid_size = self.features.grid_size
        self.num_patches = self.features.num_patches
        dim = self.features.feature_dim
        self.scorer = UnitScorer(dim, self.num_patches, attention_dim, score_bound)
        self.head = nn.Linear(self.num_patches * dim, num_classes)

    def _check(self, x: Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected images of shape (B, *{expected}), got {tuple(x.shape)}")

    def _attend(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        features = self.features(x)
        ids = position_ids(features.shape[0], self.num_patches, x.device)
        weights = F.softmax(self.scorer(features, ids), dim=-1)
        return features, weights

    def forward(self, x: Tensor) -> Tensor:
        """Compute class logits.

        Parameters
        ----------
        x : torch.Tensor
            Float images of shape ``(B, in_channels, image_size, image_size)``.

        Returns
        -------
        torch.Tensor
            Logits of shape ``(B, C)``.

        Raises
        ------
        ValueError
            If ``x`` has the wrong shape.
        """
        features, weights = self._attend(x)
        gated = features * (self.num_patches * weights).unsqueeze(-1)
        logits: Tensor = self.head(gated.flatten(1))
        return logits

    def unit_attention(self, x: Tensor) -> Tensor:
        """What the attention analysis releases: :meth:`attention_weights` (one row per
        example over the model's units, summing to 1)."""
        return self.attention_weights(x)

    def attention_weights(self, x: Tensor) -> Tensor:
        """Return the attention weight of each patch, without gradient tracking.

        Parameters
        ----------
        x : torch.Tensor
            Float images of shape ``(B, in_channels, image_size, image_size)``.

        Returns
        -------
        torch.Tensor
            Non-negative ``(B, num_patches)`` weights in row-major patch order; each row
            sums to 1.

        Raises
        ------
        ValueError
            If ``x`` has the wrong shape.
        """
        with torch.no_grad():
            return self._attend(x)[1]
