"""Transformer text classifier with attention pooling, built for DP-SGD (Opacus)."""

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

__all__ = ["TextAttentionClassifier"]


class TextAttentionClassifier(nn.Module):
    """Small transformer encoder over token ids, pooled by learned attention.

    Token and position embeddings (``nn.Embedding``) feed ``num_layers`` pre-LayerNorm
    encoder blocks whose self-attention (an Opacus ``DPMultiheadAttention``) ignores
    padding keys via ``key_padding_mask``. An attention-pooling layer gives each
    non-padding token a weight (padding gets exactly zero) and a linear head classifies
    the pooled vector. Appending padding does not change the logits; a row that is all
    padding yields finite logits (the head's bias).

    Parameters
    ----------
    vocab_size : int
        Number of token ids.
    num_classes : int
        Number of classes ``C``.
    max_len : int, optional
        Longest accepted sequence.
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
    padding_idx : int, optional
        Token id that marks padding, in ``[0, vocab_size)``.

    Raises
    ------
    ConfigurationError
        On non-positive sizes, ``embed_dim`` not divisible by ``num_heads``, a dropout
        outside ``[0, 1)`` or a ``padding_idx`` outside the vocabulary.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        max_len: int = 128,
        embed_dim: int = 64,
        num_heads: int = 4,
        num_layers: int = 1,
        ff_dim: int = 128,
        dropout: float = 0.0,
        padding_idx: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("num_classes", num_classes),
            ("max_len", max_len),
            ("num_layers", num_layers),
            ("ff_dim", ff_dim),
        ):
            check_positive(name, value)
        check_heads(embed_dim, num_heads)
        check_dropout(dropout)
        if isinstance(padding_idx, bool) or not isinstance(padding_idx, int):
            raise ConfigurationError(f"padding_idx must be an int, got {padding_idx!r}")
        if not 0 <= padding_idx < vocab_size:
            raise ConfigurationError(f"padding_idx must be in [0, {vocab_size}), got {padding_idx}")
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.padding_idx = padding_idx
        self.token_embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.position_embedding = nn.Embedding(max_len, embed_dim)
        self.embed_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(embed_dim, num_heads, ff_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.pool = AttentionPooling(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def _encode(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (B, L), got {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        batch, length = input_ids.shape
        if not 0 < length <= self.max_len:
            raise ValueError(
                f"sequence length must be in [1, max_len={self.max_len}], got {length}"
            )
        input_ids = input_ids.long()
        padding = input_ids == self.padding_idx
        positions = position_ids(batch, length, input_ids.device)
        h = self.token_embedding(input_ids) + self.position_embedding(positions)
        h = self.embed_dropout(h)
        for block in self.blocks:
            h = block(h, key_padding_mask=padding)
        pooled, weights = self.pool(self.norm(h), padding)
        return pooled, weights

    def forward(self, input_ids: Tensor) -> Tensor:
        """Compute class logits.

        Parameters
        ----------
        input_ids : torch.Tensor
            Integer tensor of shape ``(B, L)`` with ``1 <= L <= max_len``; entries equal
            to ``padding_idx`` are padding.

        Returns
        -------
        torch.Tensor
            Logits of shape ``(B, C)``.

        Raises
        ------
        ValueError
            If ``input_ids`` has the wrong shape, dtype or length.
        """
        pooled, _ = self._encode(input_ids)
        logits: Tensor = self.head(pooled)
        return logits

    def attention_weights(self, input_ids: Tensor) -> Tensor:
        """Return the attention-pooling weight of each token, without gradient tracking.

        Parameters
        ----------
        input_ids : torch.Tensor
            Integer tensor of shape ``(B, L)``, as for :meth:`forward`.

        Returns
        -------
        torch.Tensor
            Non-negative ``(B, L)`` weights, exactly 0 at padding positions; each row
            sums to 1 over its non-padding tokens (a row that is all padding is all 0).

        Raises
        ------
        ValueError
            If ``input_ids`` has the wrong shape, dtype or length.
        """
        with torch.no_grad():
            _, weights = self._encode(input_ids)
        return weights
