"""Tests for secagg.models: Opacus compatibility, attention weights and DP training."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.utils.per_sample_gradients_utils import check_per_sample_gradients_are_correct
from opacus.validators import ModuleValidator
from sklearn.datasets import load_breast_cancer, load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from secagg.errors import ConfigurationError
from secagg.models import (
    FeatureAttentionClassifier,
    TextAttentionClassifier,
    VisionAttentionClassifier,
    count_parameters,
)
from secagg.models._common import BatchFirstDPMultiheadAttention

PAD = 0

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
]


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    # These models are tiny: with 2 intra-op threads, OpenMP spin-waiting makes the
    # DP training tests 4-5x slower on a busy 2-core machine than with one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _seed(seed: int = 0) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _token_batch() -> Tensor:
    """Four rows of token ids with trailing (and one interior) padding."""
    return torch.tensor(
        [
            [5, 7, 9, 2, 0, 0],
            [3, 3, 0, 8, 1, 0],
            [11, 4, 6, 2, 9, 10],
            [1, 0, 0, 0, 0, 0],
        ]
    )


def _small_tabular() -> FeatureAttentionClassifier:
    return FeatureAttentionClassifier(6, 3, hidden_dim=8, attention_dim=4, depth=2)


def _small_text() -> TextAttentionClassifier:
    return TextAttentionClassifier(
        12, 3, max_len=8, embed_dim=8, num_heads=2, num_layers=2, ff_dim=16
    )


def _small_vision() -> VisionAttentionClassifier:
    return VisionAttentionClassifier(
        8, 3, patch_size=2, in_channels=2, embed_dim=8, num_heads=2, num_layers=2, ff_dim=16
    )


SMALL_MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Tensor]]] = {
    "tabular": (_small_tabular, lambda: torch.randn(4, 6)),
    # the extra all-padding row checks that it contributes zero, finite gradients
    "text": (_small_text, lambda: torch.cat([_token_batch(), torch.zeros(1, 6).long()])),
    "vision": (_small_vision, lambda: torch.rand(3, 2, 8, 8)),
}


# --------------------------------------------------------------------------- Opacus


@pytest.mark.parametrize("kind", sorted(SMALL_MODELS))
def test_module_validator_accepts_model(kind: str) -> None:
    make_model, _ = SMALL_MODELS[kind]
    assert ModuleValidator.validate(make_model(), strict=False) == []


def test_module_validator_accepts_default_models() -> None:
    models: list[nn.Module] = [
        FeatureAttentionClassifier(30, 2),
        TextAttentionClassifier(1000, 2),
        VisionAttentionClassifier(28, 10),
    ]
    for model in models:
        assert ModuleValidator.validate(model, strict=False) == []


@pytest.mark.parametrize("kind", sorted(SMALL_MODELS))
def test_per_sample_gradients_are_correct(kind: str) -> None:
    _seed()
    make_model, make_input = SMALL_MODELS[kind]
    model, x = make_model(), make_input()
    # checks both loss reductions ("sum" and "mean") against micro-batching
    assert check_per_sample_gradients_are_correct(
        x, model, batch_first=True, atol=1e-5, rtol=1e-4, grad_sample_mode="hooks"
    )


@pytest.mark.parametrize("kind", sorted(SMALL_MODELS))
def test_every_layer_has_a_hooks_grad_sampler(kind: str) -> None:
    # Opacus falls back to slow functorch for layers without a registered grad sampler.
    make_model, _ = SMALL_MODELS[kind]
    for name, module in make_model().named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            assert type(module) in GradSampleModule.GRAD_SAMPLERS, name


def test_attention_matches_torch_multihead_attention() -> None:
    # Opacus 1.6.0's DPMultiheadAttention(batch_first=True) scrambles heads and
    # positions in its output; our subclass must equal nn.MultiheadAttention.
    _seed()
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


# --------------------------------------------------------------------------- sizes


def test_default_parameter_counts() -> None:
    counts = {
        "tabular (F=30, C=2)": count_parameters(FeatureAttentionClassifier(30, 2)),
        "text (V=1000, C=2)": count_parameters(TextAttentionClassifier(1000, 2)),
        "vision (28x28, C=10)": count_parameters(VisionAttentionClassifier(28, 10)),
        "vision (8x8/2, C=10)": count_parameters(VisionAttentionClassifier(8, 10, patch_size=2)),
    }
    print("default parameter counts:", counts)
    for count in counts.values():
        assert 5_000 <= count <= 200_000


def test_parameter_counts_span_1e4_to_1e6() -> None:
    small = [
        FeatureAttentionClassifier(30, 2, hidden_dim=16, attention_dim=8, depth=1),
        TextAttentionClassifier(500, 2, max_len=32, embed_dim=16, num_heads=2, ff_dim=32),
        VisionAttentionClassifier(
            8, 10, patch_size=2, embed_dim=16, num_heads=2, num_layers=1, ff_dim=32
        ),
    ]
    large = [
        FeatureAttentionClassifier(30, 2, hidden_dim=512, attention_dim=128, depth=3),
        TextAttentionClassifier(
            5000, 2, max_len=256, embed_dim=128, num_heads=8, num_layers=2, ff_dim=512
        ),
        VisionAttentionClassifier(
            28, 10, patch_size=4, embed_dim=128, num_heads=8, num_layers=4, ff_dim=512
        ),
    ]
    for model in small:
        assert count_parameters(model) <= 20_000, type(model).__name__
    for model in large:
        assert 500_000 <= count_parameters(model) <= 2_000_000, type(model).__name__


def test_count_parameters_skips_frozen() -> None:
    model = FeatureAttentionClassifier(4, 2)
    total = count_parameters(model)
    for p in model.scorer.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in model.scorer.parameters())
    assert count_parameters(model) == total - frozen


def test_vision_num_patches() -> None:
    assert VisionAttentionClassifier(8, 10, patch_size=2).num_patches == 16
    assert VisionAttentionClassifier(28, 10, patch_size=4).num_patches == 49
    assert VisionAttentionClassifier(28, 10, patch_size=7).num_patches == 16


# --------------------------------------------------------------------------- attention


def _check_rows(weights: Tensor, batch: int, width: int) -> None:
    assert weights.shape == (batch, width)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(batch))


def test_tabular_attention_weights() -> None:
    _seed()
    model = FeatureAttentionClassifier(6, 2)
    x = torch.randn(5, 6)
    weights = model.attention_weights(x)
    _check_rows(weights, 5, 6)
    assert not torch.allclose(weights[0], weights[1])
    assert model(x).shape == (5, 2)


def test_text_attention_weights() -> None:
    _seed()
    model = _small_text()
    ids = _token_batch()
    weights = model.attention_weights(ids)
    assert weights.shape == ids.shape
    assert (weights >= 0).all()
    assert (weights[ids == PAD] == 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(ids)))
    other = model.attention_weights(torch.tensor([[5, 7, 9, 3, 0, 0]]))
    assert not torch.allclose(weights[0], other[0])


def test_vision_attention_weights() -> None:
    _seed()
    model = VisionAttentionClassifier(8, 10, patch_size=2)
    x = torch.rand(3, 1, 8, 8)
    weights = model.attention_weights(x)
    _check_rows(weights, 3, model.num_patches)
    assert not torch.allclose(weights[0], weights[1])
    assert model(x).shape == (3, 10)


def test_text_padding_invariance_and_all_padding_row() -> None:
    _seed()
    model = _small_text().eval()
    ids = torch.tensor([[5, 7, 9, 2], [3, 3, 0, 8]])
    padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded), model(ids), atol=1e-5, rtol=1e-5)
    empty = model(torch.zeros(2, 5, dtype=torch.long))
    assert torch.isfinite(empty).all()
    assert (model.attention_weights(torch.zeros(1, 5, dtype=torch.long)) == 0).all()


def test_forward_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="max_len"):
        _small_text()(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(ValueError):
        _small_text()(torch.ones(1, 4))
    with pytest.raises(ValueError):
        _small_tabular()(torch.randn(2, 5))
    with pytest.raises(ValueError):
        _small_vision()(torch.rand(2, 1, 8, 8))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "build",
    [
        lambda: FeatureAttentionClassifier(0, 2),
        lambda: FeatureAttentionClassifier(4, 2, depth=0),
        lambda: FeatureAttentionClassifier(4, 2, dropout=1.0),
        lambda: TextAttentionClassifier(100, 2, embed_dim=30, num_heads=4),
        lambda: TextAttentionClassifier(100, 0),
        lambda: TextAttentionClassifier(100, 2, padding_idx=100),
        lambda: TextAttentionClassifier(100, 2, max_len=-1),
        lambda: VisionAttentionClassifier(28, 10, patch_size=5),
        lambda: VisionAttentionClassifier(8, 10, patch_size=2, num_heads=0),
        lambda: VisionAttentionClassifier(8, 10, patch_size=2, ff_dim=0),
        lambda: VisionAttentionClassifier(8, 10, in_channels=True),
    ],
)
def test_bad_constructor_args_raise(build: Callable[[], nn.Module]) -> None:
    with pytest.raises(ConfigurationError):
        build()
    assert issubclass(ConfigurationError, ValueError)


# --------------------------------------------------------------------------- DP training


def _train_dp(
    model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int, epochs: int, lr: float
) -> list[float]:
    """Train under DP-SGD with Opacus and return the per-step losses."""
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    engine = PrivacyEngine()
    dp_model, dp_optimizer, dp_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=0.5,
        max_grad_norm=1.0,
    )
    criterion = nn.CrossEntropyLoss()
    losses: list[float] = []
    dp_model.train()
    for _ in range(epochs):
        for xb, yb in dp_loader:
            if len(xb) == 0:  # Poisson sampling may draw an empty batch
                continue
            dp_optimizer.zero_grad()
            loss = criterion(dp_model(xb), yb)
            loss.backward()
            dp_optimizer.step()
            losses.append(loss.item())
    assert engine.get_epsilon(delta=1e-5) > 0
    return losses


def _assert_learned(losses: list[float], window: int = 5) -> None:
    first, last = np.mean(losses[:window]), np.mean(losses[-window:])
    assert last < first, (first, last)


def test_dp_training_vision_digits() -> None:
    _seed()
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target)
    model = VisionAttentionClassifier(
        8, 10, patch_size=2, embed_dim=32, num_heads=4, num_layers=1, ff_dim=64
    )
    _assert_learned(_train_dp(model, x, y, batch_size=128, epochs=4, lr=2e-2))


def test_dp_training_tabular_breast_cancer() -> None:
    _seed()
    data = load_breast_cancer()
    features = (data.data - data.data.mean(axis=0)) / data.data.std(axis=0)
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor(data.target)
    model = FeatureAttentionClassifier(x.shape[1], 2, hidden_dim=32, attention_dim=16)
    _assert_learned(_train_dp(model, x, y, batch_size=64, epochs=3, lr=3e-3))


def _synthetic_tokens(n: int, max_len: int = 12) -> tuple[Tensor, Tensor]:
    """Two classes: class 0 uses ids 2-7, class 1 ids 8-13; both share ids 14-19."""
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (n,), generator=gen)
    ids = torch.zeros(n, max_len, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(3, max_len + 1, (1,), generator=gen))
        low = 2 if y[i] == 0 else 8
        own = torch.randint(low, low + 6, (length,), generator=gen)
        shared = torch.randint(14, 20, (length,), generator=gen)
        use_own = torch.rand(length, generator=gen) < 0.5
        ids[i, :length] = torch.where(use_own, own, shared)
    return ids, y


def test_dp_training_text_synthetic() -> None:
    _seed()
    ids, y = _synthetic_tokens(512)
    model = TextAttentionClassifier(
        20, 2, max_len=12, embed_dim=16, num_heads=2, num_layers=1, ff_dim=32
    )
    _assert_learned(_train_dp(model, ids, y, batch_size=64, epochs=4, lr=1e-2))
