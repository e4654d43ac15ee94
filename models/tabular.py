"""Feature-attention classifier for tabular data, built for DP-SGD (Opacus)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from ._common import check_dropout, check_positive

__all__ = ["FeatureAttentionClassifier"]


class FeatureAttentionClassifier(nn.Module):
    """Classifier whose input-dependent attention selects the important features.

    A small scorer network maps a row ``x`` (``F`` features) to one score per feature;
    a softmax across the features turns the scores into attention weights ``w`` (rows
    sum to 1). The features are re-weighted as ``x * F * w`` (so uniform attention
    leaves ``x`` unchanged) and classified by an MLP.

    All layers are ``nn.Linear``, ``nn.LayerNorm`` and activations, so Opacus computes
    per-sample gradients in ``"hooks"`` mode.

    Parameters
    ----------
    num_features : int
        Number of input features ``F``.
    num_classes : int
        Number of classes ``C``.
    hidden_dim : int, optional
        Width of the classifier MLP.
    attention_dim : int, optional
        Hidden width of the attention scorer.
    depth : int, optional
        Number of hidden layers in the classifier MLP.
    dropout : float, optional
        Dropout probability in the classifier MLP.

    Raises
    ------
    ConfigurationError
        If a size is not a positive integer or ``dropout`` is not in ``[0, 1)``.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        *,
        hidden_dim: int = 64,
        attention_dim: int = 32,
        depth: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_features", num_features),
            ("num_classes", num_classes),
            ("hidden_dim", hidden_dim),
            ("attention_dim", attention_dim),
            ("depth", depth),
        ):
            check_positive(name, value)
        check_dropout(dropout)
        self.num_features = num_features
        self.num_classes = num_classes
        self.scorer = nn.Sequential(
            nn.Linear(num_features, attention_dim),
            nn.Tanh(),
            nn.Linear(attention_dim, num_features),
        )
        layers: list[nn.Module] = []
        width = num_features
        for _ in range(depth):
            layers += [
                nn.Linear(width, hidden_dim),
                nn.LayerNorm(hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
            ]
            width = hidden_dim
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected input of shape (B, {self.num_features}), got {tuple(x.shape)}"
            )

    def _weights(self, x: Tensor) -> Tensor:
        return F.softmax(self.scorer(x), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Compute class logits.

        Parameters
        ----------
        x : torch.Tensor
            Float tensor of shape ``(B, F)``.

        Returns
        -------
        torch.Tensor
            Logits of shape ``(B, C)``.

        Raises
        ------
        ValueError
            If ``x`` does not have shape ``(B, F)``.
        """
        self._check_input(x)
        reweighted = x * (self.num_features * self._weights(x))
        logits: Tensor = self.classifier(reweighted)
        return logits

    def attention_weights(self, x: Tensor) -> Tensor:
        """Return the per-feature attention weights, without gradient tracking.

        Parameters
        ----------
        x : torch.Tensor
            Float tensor of shape ``(B, F)``.

        Returns
        -------
        torch.Tensor
            Non-negative ``(B, F)`` weights; each row sums to 1.

        Raises
        ------
        ValueError
            If ``x`` does not have shape ``(B, F)``.
        """
        self._check_input(x)
        with torch.no_grad():
            return self._weights(x)
