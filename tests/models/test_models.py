"""The attention models: built for Opacus, fixed features, attention that is the mechanism."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch import Tensor, nn

from secagg.errors import ConfigurationError
from secagg.models import (
    FeatureAttentionClassifier,
    TextAttentionClassifier,
    VisionAttentionClassifier,
    count_parameters,
)
from secagg.protocols.datasets import load_dataset

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")

DATASETS = ("digits", "mnist", "breast_cancer", "german_credit", "bbc_news", "rotten_tomatoes")


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _token_batch() -> Tensor:
    """Rows of token ids with trailing and interior padding, and an all-padding row."""
    return torch.tensor(
        [
            [5, 7, 9, 2, 0, 0],
            [3, 3, 0, 8, 1, 0],
            [11, 4, 6, 2, 9, 10],
            [0, 0, 0, 0, 0, 0],
        ]
    )


def _small_tabular() -> FeatureAttentionClassifier:
    return FeatureAttentionClassifier(6, 3, attention_dim=4, value_scores=True)


def _small_text() -> TextAttentionClassifier:
    return TextAttentionClassifier(12, 3, max_len=8, embed_dim=16, key_dim=8, bucket_scores=True)


def _small_vision() -> VisionAttentionClassifier:
    return VisionAttentionClassifier(8, 3, patch_size=2, in_channels=2, scales=1, orientations=4)


SMALL_MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Tensor]]] = {
    "tabular": (_small_tabular, lambda: torch.randn(4, 6)),
    "text": (_small_text, _token_batch),
    "vision": (_small_vision, lambda: torch.rand(3, 2, 8, 8)),
}


def _trained(model: nn.Module) -> nn.Module:
    """Non-zero scorer weights, so that the attention is not uniform."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", DATASETS)
def test_default_models_are_valid_for_opacus_and_small(name: str) -> None:
    model = load_dataset(name, seed=0, max_examples=200).default_model()
    assert ModuleValidator.validate(model, strict=True) == []
    # Few trainable parameters where the DP noise lands (Tramèr and Boneh 2021).
    assert 50 < count_parameters(model) < 10_000


def _sublinear_text() -> TextAttentionClassifier:
    return TextAttentionClassifier(
        12, 3, max_len=8, embed_dim=16, key_dim=8, bucket_scores=True, sublinear_tf=True
    )


@pytest.mark.parametrize("kind", [*sorted(SMALL_MODELS), "text_sublinear"])
def test_per_sample_gradients_equal_a_per_example_loop(kind: str) -> None:
    build, batch = SMALL_MODELS.get(kind, (_sublinear_text, _token_batch))
    model = _trained(build())
    reference = copy.deepcopy(model)
    inputs = batch()
    targets = torch.arange(len(inputs)) % 3
    wrapped = GradSampleModule(model, loss_reduction="sum")
    loss = nn.functional.cross_entropy(wrapped(inputs), targets, reduction="sum")
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad_sample is not None, name
        for i in range(len(inputs)):
            single = copy.deepcopy(reference)
            out = single(inputs[i : i + 1])
            nn.functional.cross_entropy(out, targets[i : i + 1], reduction="sum").backward()
            expected = dict(single.named_parameters())[name].grad
            expected = torch.zeros_like(param) if expected is None else expected
            torch.testing.assert_close(param.grad_sample[i], expected, atol=1e-5, rtol=1e-4)
    wrapped._close()


@pytest.mark.parametrize("kind", sorted(SMALL_MODELS))
def test_fixed_features_are_not_trained_or_sent(kind: str) -> None:
    build, _ = SMALL_MODELS[kind]
    model = build()
    state = model.state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == trainable  # buffers of fixed features stay out of the update
    assert build().state_dict().keys() == state.keys()


@pytest.mark.parametrize("kind", sorted(SMALL_MODELS))
def test_attention_starts_uniform_and_rows_are_distributions(kind: str) -> None:
    build, batch = SMALL_MODELS[kind]
    inputs = batch()
    fresh = build().attention_weights(inputs)
    rows = _trained(build()).attention_weights(inputs)
    assert (rows >= 0).all()
    if kind == "text":
        real = inputs != 0
        assert (rows[~real] == 0).all()  # padding gets exactly nothing
        sums = rows.sum(dim=1)
        torch.testing.assert_close(sums[real.any(dim=1)], torch.ones(3))
        assert sums[3] == 0  # an all-padding row
        uniform = real.float() / real.sum(dim=1, keepdim=True).clamp(min=1)
        torch.testing.assert_close(fresh, uniform)
    else:
        torch.testing.assert_close(rows.sum(dim=1), torch.ones(len(inputs)))
        torch.testing.assert_close(fresh, torch.full_like(fresh, 1 / fresh.shape[1]))
    assert rows.std() > 0  # a trained scorer prefers some units


def test_text_unit_attention_adds_position_weights_up_by_token() -> None:
    model = _trained(_small_text())
    ids = _token_batch()
    positions = model.attention_weights(ids)
    buckets = model.unit_attention(ids)
    assert buckets.shape == (4, 12)
    assert buckets[1, 3] == pytest.approx(float(positions[1, 0] + positions[1, 1]))
    assert (buckets[:, 0] == 0).all()  # padding's bucket
    torch.testing.assert_close(buckets.sum(dim=1), positions.sum(dim=1))


def test_text_model_starts_from_zero_logits() -> None:
    # Head and scorer output start at zero: the first DP steps learn from the data rather
    # than undo a random draw.
    torch.manual_seed(3)
    logits = TextAttentionClassifier(12, 3, max_len=8, embed_dim=16, key_dim=8)(_token_batch())
    assert torch.equal(logits, torch.zeros_like(logits))


def test_sublinear_tf_weighs_a_repeated_word_as_one_plus_log_count() -> None:
    ids = torch.tensor([[3, 5, 3, 3, 7, 3], [4, 4, 0, 0, 0, 0]])
    mass = _sublinear_text().unit_attention(ids)
    # Uniform scores: word 3 (4 times) weighs 1 + log 4 single occurrences, not 4.
    assert float(mass[0, 3] / mass[0, 5]) == pytest.approx(1 + math.log(4))
    assert float(mass[0, 7] / mass[0, 5]) == pytest.approx(1.0)
    torch.testing.assert_close(mass.sum(dim=1), torch.ones(2))
    assert float(mass[1, 4]) == pytest.approx(1.0)
    assert (mass[:, 0] == 0).all()  # padding
    # Learned scores act on top of the weighting: same weights, word 3's mass relative to
    # word 5's changes by exactly (1 + log 4) / 4.
    plain = _trained(_small_text())
    weighted = _sublinear_text()
    weighted.load_state_dict(plain.state_dict())
    ratio = weighted.unit_attention(ids)[0] / plain.unit_attention(ids)[0]
    assert float(ratio[3] / ratio[5]) == pytest.approx((1 + math.log(4)) / 4)
    # Trailing padding changes nothing.
    padded = torch.cat([ids, torch.zeros(2, 2, dtype=torch.long)], dim=1)
    torch.testing.assert_close(weighted(padded), weighted(ids))


def test_the_attention_is_what_the_prediction_rests_on() -> None:
    # Masking the unit the vision model attends to most changes the logits more than
    # masking the one it attends to least.
    torch.manual_seed(0)
    model = _trained(_small_vision())
    image = torch.rand(1, 2, 8, 8)
    weights = model.attention_weights(image)[0]
    grid = 8 // 2

    def without(patch: int) -> Tensor:
        masked = image.clone()
        r, c = divmod(patch, grid)
        masked[..., 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = 0
        return model(masked)

    base = model(image)
    most = (without(int(weights.argmax())) - base).abs().sum()
    least = (without(int(weights.argmin())) - base).abs().sum()
    assert most > least


def test_forward_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError):
        _small_tabular()(torch.randn(4, 5))
    with pytest.raises(ValueError):
        _small_text()(torch.zeros(2, 9, dtype=torch.long))  # longer than max_len
    with pytest.raises(ValueError):
        _small_text()(torch.zeros(2, 4))  # not integer ids
    with pytest.raises(ValueError):
        _small_vision()(torch.rand(3, 1, 8, 8))  # wrong channel count


@pytest.mark.parametrize(
    "build",
    [
        lambda: FeatureAttentionClassifier(0, 2),
        lambda: FeatureAttentionClassifier(4, 2, score_scale=0.0),
        lambda: FeatureAttentionClassifier(4, 2, attention_dim=-1),
        lambda: TextAttentionClassifier(10, 2, max_len=0),
        lambda: TextAttentionClassifier(10, 2, max_len=8, score_bound=float("nan")),
        lambda: TextAttentionClassifier(10, 2, sublinear_tf=1),  # type: ignore[arg-type]
        lambda: VisionAttentionClassifier(8, 2, patch_size=3),
        lambda: VisionAttentionClassifier(8, 0),
        lambda: VisionAttentionClassifier(8, 2, orientations=0),
    ],
)
def test_bad_constructor_args_raise_configuration_errors(build: Callable[[], nn.Module]) -> None:
    with pytest.raises(ConfigurationError):
        build()


def test_count_parameters_skips_frozen() -> None:
    model = _small_tabular()
    total = count_parameters(model)
    model.head.weight.requires_grad_(False)
    assert count_parameters(model) == total - model.head.weight.numel()


def _trained_feature_attention(seed: int, *, random_head: bool = False) -> torch.Tensor:
    """The default tabular model, built under ``seed``, after 60 full-batch SGD steps on
    fixed data; returns its attention over the features."""
    data = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=data)
    y = (x[:, 0] + 0.5 * x[:, 3] > 0).long()
    torch.manual_seed(seed)
    model = FeatureAttentionClassifier(8, 2)
    if random_head:  # what nn.Linear's default initialisation would give
        model.head.reset_parameters()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.attention_weights(x[:1]).detach()[0]


def test_tabular_attention_follows_the_data_not_the_initialisation() -> None:
    first, second = _trained_feature_attention(1), _trained_feature_attention(2)
    assert torch.equal(first, second)
    # The features that decide the label get the most attention.
    assert set(torch.argsort(first, descending=True)[:2].tolist()) == {0, 3}
    # A randomly initialised head would make the map depend on the draw.
    drawn = _trained_feature_attention(1, random_head=True)
    assert not torch.allclose(drawn, _trained_feature_attention(2, random_head=True))
