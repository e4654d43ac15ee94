"""Attention classifiers built for DP-SGD with Opacus.

Each model passes ``opacus.validators.ModuleValidator.validate`` and gets exact
per-sample gradients from Opacus in ``"hooks"`` mode. Each exposes
``attention_weights`` to show what the attention selects.

- :class:`FeatureAttentionClassifier`: tabular rows, attention over features.
- :class:`TextAttentionClassifier`: token ids, transformer encoder, attention pooling.
- :class:`VisionAttentionClassifier`: images, small ViT, attention pooling over patches.
"""

from __future__ import annotations

from ._common import count_parameters
from .tabular import FeatureAttentionClassifier
from .text import TextAttentionClassifier
from .vision import VisionAttentionClassifier

__all__ = [
    "FeatureAttentionClassifier",
    "TextAttentionClassifier",
    "VisionAttentionClassifier",
    "count_parameters",
]
