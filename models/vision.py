"""Small vision transformer with attention pooling, built for DP-SGD (Opacus)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigurationError
from ._common import (
    AttentionPooling,
    EncoderBlock,
    check_dropout,
    check_heads,
    check_positive,
    position_ids,
)

__all__ = ["VisionAttentionClassifier"]


class VisionAttentionClassifier(nn.Module):
    """Small ViT: image patches as tokens, transformer encoder, attention pooling.

    The image is cut into non-overlapping ``patch_size x patch_size`` patches, each
    flattened and projected by an ``nn.Linear``; a learned position embedding
    (``nn.Embedding``) is added. Pre-LayerNorm encoder blocks with Opacus
    ``DPMultiheadAttention`` self-attention follow, then an attention-pooling layer
    (one learned weight per patch, rows sum to 1) and a linear head.

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
    embed_dim : int, optional
        Model width, divisible by ``num_heads``.
    num_heads : int, optional
        Attention heads per layer.
    num_layers : int, optional
        Number of encoder blocks.
    ff_dim : int, optional
        Hidden width of each feed-forward network.
    dropout : float, optional
        Dropout probability.

    Attributes
    ----------
    num_patches : int
        ``(image_size // patch_size) ** 2``, the number of tokens.

    Raises
    ------
    ConfigurationError
        On non-positive sizes, ``image_size`` not divisible by ``patch_size``,
        ``embed_dim`` not divisible by ``num_heads`` or a dropout outside ``[0, 1)``.
    """

    num_patches: int

    def __init__(
        self,
        image_size: int,
        num_classes: int,
        *,
        patch_size: int = 4,
        in_channels: int = 1,
        embed_dim: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        ff_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("image_size", image_size),
            ("num_classes", num_classes),
            ("patch_size", patch_size),
            ("in_channels", in_channels),
            ("num_layers", num_layers),
            ("ff_dim", ff_dim),
        ):
            check_positive(name, value)
        check_heads(embed_dim, num_heads)
        check_dropout(dropout)
        if image_size % patch_size != 0:
            raise ConfigurationError(
                f"image_size ({image_size}) must be divisible by patch_size ({patch_size})"
            )
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.patch_embedding = nn.Linear(in_channels * patch_size * patch_size, embed_dim)
        self.position_embedding = nn.Embedding(self.num_patches, embed_dim)
        self.embed_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(embed_dim, num_heads, ff_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.pool = AttentionPooling(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def _patches(self, x: Tensor) -> Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected images of shape (B, *{expected}), got {tuple(x.shape)}")
        batch, p, g = x.shape[0], self.patch_size, self.grid_size
        # (B, C, g, p, g, p) -> (B, g, g, C, p, p) -> (B, g * g, C * p * p)
        patches = x.reshape(batch, self.in_channels, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
        return patches.reshape(batch, self.num_patches, -1)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        patches = self._patches(x)
        positions = position_ids(patches.shape[0], self.num_patches, x.device)
        h = self.patch_embedding(patches) + self.position_embedding(positions)
        h = self.embed_dropout(h)
        for block in self.blocks:
            h = block(h)
        pooled, weights = self.pool(self.norm(h))
        return pooled, weights

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
        pooled, _ = self._encode(x)
        logits: Tensor = self.head(pooled)
        return logits

    def attention_weights(self, x: Tensor) -> Tensor:
        """Return the attention-pooling weight of each patch, without gradient tracking.

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
            _, weights = self._encode(x)
        return weights
