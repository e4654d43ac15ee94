"""The corrected batch-first DP multi-head attention (Opacus 1.6's mixes heads and positions)."""

from __future__ import annotations

import torch
from torch import nn

from secagg.dp.layers import BatchFirstDPMultiheadAttention


def test_attention_matches_torch_multihead_attention() -> None:
    # Opacus 1.6.0's DPMultiheadAttention(batch_first=True) scrambles heads and
    # positions in its output; the subclass must equal nn.MultiheadAttention.
    torch.manual_seed(0)
    ours = BatchFirstDPMultiheadAttention(8, 2)
    ref = nn.MultiheadAttention(8, 2, batch_first=True)
    ours.load_state_dict(dict(ref.state_dict()))
    x = torch.randn(3, 5, 8)
    mask = torch.tensor([[False] * 5, [False, False, False, True, True], [False] + [True] * 4])
    out, weights = ours(x, x, x, key_padding_mask=mask)
    ref_out, ref_weights = ref(x, x, x, key_padding_mask=mask)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)


def test_attention_with_all_keys_masked_is_finite() -> None:
    attn = BatchFirstDPMultiheadAttention(8, 2)
    x = torch.randn(2, 4, 8)
    out, _ = attn(x, x, x, key_padding_mask=torch.ones(2, 4, dtype=torch.bool))
    assert torch.isfinite(out).all()
