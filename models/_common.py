"""Building blocks shared by the secagg attention classifiers.

Everything here is built for DP-SGD with Opacus in ``"hooks"`` mode: each trainable
module sees batch-first inputs, there is no BatchNorm, no bare root-level
``nn.Parameter`` and no module that mixes buffers with trainable parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..dp.layers import BatchFirstDPMultiheadAttention, masked_softmax
from ..errors import ConfigurationError

__all__ = [
    "AttentionPooling",
    "BatchFirstDPMultiheadAttention",
    "EncoderBlock",
    "check_dropout",
    "check_heads",
    "check_positive",
    "count_parameters",
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


def check_dropout(value: float) -> None:
    """Raise :class:`~secagg.errors.ConfigurationError` unless ``0 <= value < 1``.

    Parameters
    ----------
    value : float
        Dropout probability.

    Raises
    ------
    ConfigurationError
        If ``value`` is not a real number in ``[0, 1)``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ConfigurationError(f"dropout must be a number in [0, 1), got {value!r}")


def check_heads(embed_dim: int, num_heads: int) -> None:
    """Check that ``embed_dim`` and ``num_heads`` are positive and divisible.

    Parameters
    ----------
    embed_dim : int
        Model width.
    num_heads : int
        Number of attention heads.

    Raises
    ------
    ConfigurationError
        If either is not positive or ``embed_dim % num_heads != 0``.
    """
    check_positive("embed_dim", embed_dim)
    check_positive("num_heads", num_heads)
    if embed_dim % num_heads != 0:
        raise ConfigurationError(
            f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
        )


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
        input at the position embedding.
    """
    return torch.arange(length, device=device).expand(batch_size, length).contiguous()


class EncoderBlock(nn.Module):
    """Pre-LayerNorm transformer encoder block (self-attention + feed-forward).

    Parameters
    ----------
    embed_dim : int
        Model width.
    num_heads : int
        Number of attention heads.
    ff_dim : int
        Hidden width of the feed-forward network.
    dropout : float, optional
        Dropout on attention weights and residual branches.
    """

    def __init__(self, embed_dim: int, num_heads: int, ff_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        check_positive("ff_dim", ff_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = BatchFirstDPMultiheadAttention(embed_dim, num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.ff = nn.Sequential(
            nn.Linear(embed_dim, ff_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ff_dim, embed_dim),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """Apply the block.

        Parameters
        ----------
        h : torch.Tensor
            ``(B, L, E)`` token states.
        key_padding_mask : torch.Tensor or None, optional
            Boolean ``(B, L)``; ``True`` marks padding keys.

        Returns
        -------
        torch.Tensor
            ``(B, L, E)`` updated token states.
        """
        x = self.norm1(h)
        attended: Tensor = self.attn(
            x, x, x, key_padding_mask=key_padding_mask, need_weights=False
        )[0]
        h = h + self.dropout(attended)
        ff_out: Tensor = self.dropout(self.ff(self.norm2(h)))
        return h + ff_out


class AttentionPooling(nn.Module):
    """Learned attention pooling: one score per token, masked softmax, weighted sum.

    Parameters
    ----------
    embed_dim : int
        Model width.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(embed_dim, 1)

    def forward(self, h: Tensor, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Pool token states into one vector per row.

        Parameters
        ----------
        h : torch.Tensor
            ``(B, L, E)`` token states.
        padding_mask : torch.Tensor or None, optional
            Boolean ``(B, L)``; ``True`` marks padding tokens, which get exactly zero
            weight. A row that is all padding gets all-zero weights and a zero vector.

        Returns
        -------
        tuple of torch.Tensor
            The pooled ``(B, E)`` vectors and the ``(B, L)`` pooling weights (rows sum to
            1 over non-padding tokens).
        """
        scores = self.score(h).squeeze(-1)  # (B, L)
        weights = masked_softmax(scores, padding_mask)
        if padding_mask is not None:
            weights = weights * (~padding_mask).to(weights.dtype)
        pooled = (weights.unsqueeze(-1) * h).sum(dim=1)
        return pooled, weights
