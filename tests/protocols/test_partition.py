"""Property tests of secagg.protocols.partition.dirichlet_partition."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import ConfigurationError
from secagg.protocols.partition import dirichlet_partition


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, int, float | None, int, int]:
    """Draw a feasible (labels, num_clients, alpha, seed, min_size) problem."""
    num_classes = draw(st.integers(1, 6))
    n = draw(st.integers(20, 300))
    labels = np.asarray(draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
    num_clients = draw(st.integers(1, max(1, n // 20)))
    alpha = draw(st.one_of(st.none(), st.floats(0.5, 100.0)))
    seed = draw(st.integers(0, 2**32 - 1))
    min_size = draw(st.integers(0, 2))
    return labels, num_clients, alpha, seed, min_size


def _check_partition(parts: list[np.ndarray], n: int, num_clients: int, min_size: int) -> None:
    assert len(parts) == num_clients
    for part in parts:
        assert part.dtype == np.int64
        assert part.ndim == 1
        assert np.all(np.diff(part) > 0)  # sorted, no repeats
        assert len(part) >= min_size
    joined = np.concatenate(parts)
    assert len(joined) == n  # disjoint (with the line below) ...
    assert np.array_equal(np.sort(joined), np.arange(n))  # ... and covering


@settings(max_examples=60, deadline=None)
@given(problems())
def test_disjoint_covering_min_size_and_deterministic(
    problem: tuple[np.ndarray, int, float | None, int, int],
) -> None:
    labels, num_clients, alpha, seed, min_size = problem
    parts = dirichlet_partition(labels, num_clients, alpha=alpha, seed=seed, min_size=min_size)
    _check_partition(parts, len(labels), num_clients, min_size)
    again = dirichlet_partition(labels, num_clients, alpha=alpha, seed=seed, min_size=min_size)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    # Tensors and arrays give the same answer.
    from_tensor = dirichlet_partition(
        torch.from_numpy(labels), num_clients, alpha=alpha, seed=seed, min_size=min_size
    )
    assert all(np.array_equal(a, b) for a, b in zip(parts, from_tensor, strict=True))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 500),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_iid_sizes_differ_by_at_most_one(n: int, data: st.DataObject, seed: int) -> None:
    num_clients = data.draw(st.integers(1, n))
    labels = np.zeros(n, dtype=np.int64)
    parts = dirichlet_partition(labels, num_clients, alpha=None, seed=seed)
    _check_partition(parts, n, num_clients, 1)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), alpha=st.sampled_from([None, 0.3, 1.0, 10.0]))
def test_different_seeds_usually_differ(seed: int, alpha: float | None) -> None:
    labels = np.repeat(np.arange(4), 50)
    a = dirichlet_partition(labels, 5, alpha=alpha, seed=seed)
    b = dirichlet_partition(labels, 5, alpha=alpha, seed=seed + 1)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _mean_skew(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance between each client's label mix and the global one."""
    overall = np.bincount(labels, minlength=num_classes) / len(labels)
    distances = []
    for part in parts:
        local = np.bincount(labels[part], minlength=num_classes) / len(part)
        distances.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(distances))


def test_smaller_alpha_is_more_skewed() -> None:
    num_classes, num_clients = 10, 10
    labels = np.repeat(np.arange(num_classes), 200)
    skew: dict[float | None, float] = {}
    for alpha in (0.1, 1.0, 100.0, None):
        values = [
            _mean_skew(labels, dirichlet_partition(labels, num_clients, alpha=alpha, seed=s), 10)
            for s in range(10)
        ]
        skew[alpha] = float(np.mean(values))
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[0.1] > 0.6  # clients hold few classes
    assert skew[100.0] < 0.1  # close to the global mix
    assert skew[None] < 0.15  # only sampling noise (200 examples per client)


def test_labels_of_any_dtype() -> None:
    labels = np.array(["b", "a", "c", "a", "b", "c"] * 5)
    parts = dirichlet_partition(labels, 3, alpha=1.0, seed=0)
    _check_partition(parts, 30, 3, 1)


def test_known_iid_example() -> None:
    parts = dirichlet_partition(np.array([0, 0, 1, 1, 2]), 2, alpha=None, seed=0)
    assert sorted(len(p) for p in parts) == [2, 3]


def test_infeasible_min_size_raises() -> None:
    # 2 classes, tiny alpha, 30 clients: almost every client gets nothing.
    labels = np.repeat(np.arange(2), 100)
    with pytest.raises(ConfigurationError, match="tries"):
        dirichlet_partition(labels, 30, alpha=0.01, seed=0, min_size=5)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((np.zeros(10), 0), {"alpha": 1.0, "seed": 0}),
        ((np.zeros(10), -1), {"alpha": None, "seed": 0}),
        ((np.zeros(10), 11), {"alpha": 1.0, "seed": 0}),
        ((np.zeros(10), 2.0), {"alpha": 1.0, "seed": 0}),
        ((np.zeros(10), True), {"alpha": 1.0, "seed": 0}),
        ((np.zeros(10), 2), {"alpha": 0.0, "seed": 0}),
        ((np.zeros(10), 2), {"alpha": -1.0, "seed": 0}),
        ((np.zeros(10), 2), {"alpha": float("nan"), "seed": 0}),
        ((np.zeros(10), 2), {"alpha": float("inf"), "seed": 0}),
        ((np.zeros(10), 2), {"alpha": 1.0, "seed": -1}),
        ((np.zeros(10), 2), {"alpha": 1.0, "seed": 0, "min_size": -1}),
        ((np.zeros(10), 2), {"alpha": None, "seed": 0, "min_size": 6}),
        ((np.zeros((5, 2)), 2), {"alpha": 1.0, "seed": 0}),
        ((np.zeros(0), 1), {"alpha": 1.0, "seed": 0}),
        (([0, 1, 0, 1], 2), {"alpha": 1.0, "seed": 0}),
    ],
)
def test_bad_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        dirichlet_partition(*args, **kwargs)
    assert isinstance(info.value, ValueError)
