"""Attention classifiers built for DP-SGD with Opacus.

Each model is a fixed, data-independent feature extractor followed by a small
trainable part: an attention over units (features, patches or tokens) and a linear
head. Each passes ``opacus.validators.ModuleValidator.validate(strict=True)``, gets
exact per-sample gradients from Opacus in ``"hooks"`` mode and exposes
``attention_weights`` to show what the attention selects.

- :class:`FeatureAttentionClassifier`: tabular rows, attention over features.
- :class:`TextAttentionClassifier`: token ids, attention over tokens.
- :class:`VisionAttentionClassifier`: images, attention over patches of fixed
  scattering features.
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
