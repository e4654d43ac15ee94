"""Opacus-compatible layers the DP client itself needs.

:class:`BatchFirstDPMultiheadAttention` corrects Opacus 1.6.0's batch-first
``DPMultiheadAttention``; :class:`secagg.PrivateClient` swaps its forward pass into any
such layer of a user's model, and secagg's attention models use it directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from opacus.layers import DPMultiheadAttention
from torch import Tensor

from ..errors import ConfigurationError

__all__ = ["BatchFirstDPMultiheadAttention", "masked_softmax"]


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last axis that gives exactly zero weight to masked entries.

    Masked entries are filled with the most negative finite value rather than ``-inf``,
    so a fully masked row yields a uniform (finite) distribution instead of NaN.
    """
    if mask is None:
        return F.softmax(scores, dim=-1)
    return F.softmax(scores.masked_fill(mask, torch.finfo(scores.dtype).min), dim=-1)


# Opacus ships no type information, so its classes are ``Any`` to mypy.
class BatchFirstDPMultiheadAttention(DPMultiheadAttention):  # type: ignore[misc]
    """Batch-first self-attention with Opacus-compatible per-sample gradients.

    A :class:`opacus.layers.DPMultiheadAttention` (``batch_first=True``) whose forward
    pass is rewritten. Opacus 1.6.0 reshapes the batch-first output with
    ``view(bsz, tgt_len, embed_dim)`` without first moving the head axis next to the
    feature axis, which splices heads of one position into other positions (see
    meta-pytorch/opacus PR #825). This class computes standard multi-head attention,
    numerically equal to :class:`torch.nn.MultiheadAttention`, with the same
    parameters (``qlinear``, ``klinear``, ``vlinear``, ``out_proj``), so Opacus
    computes per-sample gradients through its ``nn.Linear`` hooks.

    Only ``key_padding_mask`` is supported; a fully masked row attends uniformly to
    all keys (finite output) instead of producing NaN.

    Parameters
    ----------
    embed_dim : int
        Model width, divisible by ``num_heads``.
    num_heads : int
        Number of attention heads.
    dropout : float, optional
        Dropout on the attention weights.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        if (
            not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0
                for v in (embed_dim, num_heads)
            )
            or embed_dim % num_heads
        ):
            raise ConfigurationError(
                f"embed_dim ({embed_dim!r}) must be a positive multiple of num_heads "
                f"({num_heads!r})"
            )
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, int | float)
            or not 0 <= dropout < 1
        ):
            raise ConfigurationError(f"dropout must be a number in [0, 1), got {dropout!r}")
        super().__init__(embed_dim, num_heads, dropout=dropout, batch_first=True)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key``/``value``.

        Parameters
        ----------
        query : torch.Tensor
            ``(B, T, E)`` queries.
        key : torch.Tensor
            ``(B, S, E)`` keys.
        value : torch.Tensor
            ``(B, S, E)`` values.
        key_padding_mask : torch.Tensor or None, optional
            Boolean ``(B, S)``; ``True`` marks keys to ignore.
        need_weights : bool, optional
            Whether to also return the head-averaged attention weights.
        attn_mask : None
            Not supported; must be ``None``.
        is_causal : bool
            Not supported; must be ``False``.

        Returns
        -------
        tuple of torch.Tensor and (torch.Tensor or None)
            The ``(B, T, E)`` output and, if ``need_weights``, ``(B, T, S)`` attention
            weights averaged over heads.

        Raises
        ------
        ValueError
            On unsupported options or inconsistent shapes.
        """
        if attn_mask is not None or is_causal:
            raise ValueError("only key_padding_mask is supported (no attn_mask, no is_causal)")
        if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
            raise ValueError("query, key and value must be batch-first (B, L, E) tensors")
        bsz, tgt_len, _ = query.shape
        src_len = key.shape[1]
        heads, head_dim = self.num_heads, self.head_dim
        q: Tensor = self.qlinear(query) * float(head_dim) ** -0.5
        k: Tensor = self.klinear(key)
        v: Tensor = self.vlinear(value)
        q = q.view(bsz, tgt_len, heads, head_dim).transpose(1, 2)
        k = k.view(bsz, src_len, heads, head_dim).transpose(1, 2)
        v = v.view(bsz, src_len, heads, head_dim).transpose(1, 2)
        scores = q @ k.transpose(-2, -1)  # (B, H, T, S)
        mask = None
        if key_padding_mask is not None:
            if key_padding_mask.shape != (bsz, src_len):
                raise ValueError(
                    f"key_padding_mask must have shape {(bsz, src_len)}, "
                    f"got {tuple(key_padding_mask.shape)}"
                )
            mask = key_padding_mask.to(torch.bool)[:, None, None, :]
        weights = masked_softmax(scores, mask)
        context = self.dropout(weights) @ v  # (B, H, T, D)
        context = context.transpose(1, 2).reshape(bsz, tgt_len, heads * head_dim)
        output: Tensor = self.out_proj(context)
        return output, (weights.mean(dim=1) if need_weights else None)
