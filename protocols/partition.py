"""Split a labelled dataset among federated clients (IID or label-skewed non-IID).

:func:`dirichlet_partition` implements the usual label-skew benchmark partition: for each
class, the proportions of its examples that go to each client are drawn from a symmetric
Dirichlet distribution with concentration ``alpha``. Small ``alpha`` (``0.1``) gives each
client only a few classes; large ``alpha`` (``100``) approaches an IID split. ``alpha=None``
is an exact IID split (a random permutation cut into near-equal parts).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import numpy.typing as npt
import torch

from ..errors import ConfigurationError

__all__ = ["MAX_PARTITION_TRIES", "dirichlet_partition"]

#: How many Dirichlet draws :func:`dirichlet_partition` makes before it gives up on giving
#: every client at least ``min_size`` examples.
MAX_PARTITION_TRIES: int = 1000


def _as_label_array(labels: npt.NDArray[np.generic] | torch.Tensor) -> npt.NDArray[np.int64]:
    """Return ``labels`` as a 1-D array of class codes ``0..K-1``.

    Parameters
    ----------
    labels : numpy.ndarray or torch.Tensor
        One label per example, any comparable dtype.

    Returns
    -------
    numpy.ndarray
        ``int64`` codes (the rank of each label among the sorted distinct labels).

    Raises
    ------
    ConfigurationError
        If ``labels`` is not one-dimensional or not an array/tensor.
    """
    if isinstance(labels, torch.Tensor):
        array: npt.NDArray[np.generic] = labels.detach().cpu().numpy()
    elif isinstance(labels, np.ndarray):
        array = labels
    else:
        raise ConfigurationError(
            f"labels must be a numpy array or a torch tensor, got {type(labels).__name__}"
        )
    if array.ndim != 1:
        raise ConfigurationError(f"labels must be one-dimensional, got shape {array.shape}")
    inverse: npt.NDArray[np.intp] = np.unique(array, return_inverse=True)[1]
    return np.asarray(inverse.reshape(-1), dtype=np.int64)


def _validate(
    n: int, num_clients: object, alpha: object, seed: object, min_size: object
) -> tuple[int, float | None, int, int]:
    """Check the arguments of :func:`dirichlet_partition` and return them normalised.

    Parameters
    ----------
    n : int
        Number of examples.
    num_clients, alpha, seed, min_size : object
        As passed to :func:`dirichlet_partition`.

    Returns
    -------
    tuple
        ``(num_clients, alpha, seed, min_size)`` as ``int``, ``float | None``, ``int``,
        ``int``.

    Raises
    ------
    ConfigurationError
        On any invalid argument.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, numbers.Integral):
        raise ConfigurationError(f"num_clients must be an integer, got {num_clients!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral):
        raise ConfigurationError(f"min_size must be an integer, got {min_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise ConfigurationError(f"seed must be a non-negative integer, got {seed!r}")
    clients, minimum = int(num_clients), int(min_size)
    if clients < 1:
        raise ConfigurationError(f"num_clients must be >= 1, got {clients}")
    if clients > n:
        raise ConfigurationError(f"num_clients ({clients}) exceeds the number of examples ({n})")
    if minimum < 0:
        raise ConfigurationError(f"min_size must be >= 0, got {minimum}")
    if clients * minimum > n:
        raise ConfigurationError(
            f"{clients} clients x min_size {minimum} needs {clients * minimum} examples, "
            f"only {n} available"
        )
    concentration: float | None = None
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise ConfigurationError(f"alpha must be a positive number or None, got {alpha!r}")
        concentration = float(alpha)
        if not math.isfinite(concentration) or concentration <= 0.0:
            raise ConfigurationError(f"alpha must be finite and > 0, got {alpha!r}")
    return clients, concentration, int(seed), minimum


def dirichlet_partition(
    labels: npt.NDArray[np.generic] | torch.Tensor,
    num_clients: int,
    *,
    alpha: float | None,
    seed: int,
    min_size: int = 1,
) -> list[npt.NDArray[np.int64]]:
    """Partition example indices among clients, IID or with Dirichlet label skew.

    With ``alpha=None`` the indices are shuffled and cut into ``num_clients`` parts whose
    sizes differ by at most one. Otherwise, for every class independently, the class's
    (shuffled) examples are divided among clients in proportions drawn from
    ``Dirichlet(alpha, ..., alpha)``. A draw that leaves some client with fewer than
    ``min_size`` examples is rejected and redrawn, at most :data:`MAX_PARTITION_TRIES`
    times.

    Parameters
    ----------
    labels : numpy.ndarray or torch.Tensor
        One-dimensional labels, one per example (any comparable dtype).
    num_clients : int
        Number of clients, ``1 <= num_clients <= len(labels)``.
    alpha : float or None
        Dirichlet concentration (> 0); smaller is more skewed. ``None`` means IID.
    seed : int
        Seed of the :class:`numpy.random.Generator`; the result is a pure function of the
        arguments.
    min_size : int, default 1
        Minimum number of examples per client.

    Returns
    -------
    list of numpy.ndarray
        ``num_clients`` sorted ``int64`` index arrays, pairwise disjoint, whose union is
        ``range(len(labels))``.

    Raises
    ------
    ConfigurationError
        If an argument is invalid, or no draw within :data:`MAX_PARTITION_TRIES` gives every
        client ``min_size`` examples (raise ``alpha``, lower ``min_size`` or use fewer
        clients).

    Examples
    --------
    >>> import numpy as np
    >>> parts = dirichlet_partition(np.array([0, 0, 1, 1]), 2, alpha=None, seed=0)
    >>> sorted(np.concatenate(parts).tolist())
    [0, 1, 2, 3]
    """
    codes = _as_label_array(labels)
    n = int(codes.shape[0])
    clients, concentration, seed_, minimum = _validate(n, num_clients, alpha, seed, min_size)
    rng = np.random.default_rng(seed_)

    if concentration is None:
        order = rng.permutation(n).astype(np.int64)
        return [np.sort(part) for part in np.array_split(order, clients)]

    num_classes = int(codes.max()) + 1 if n else 0
    by_class = [np.flatnonzero(codes == k).astype(np.int64) for k in range(num_classes)]
    for _ in range(MAX_PARTITION_TRIES):
        buckets: list[list[npt.NDArray[np.int64]]] = [[] for _ in range(clients)]
        for members in by_class:
            shuffled = rng.permutation(members)
            proportions = rng.dirichlet(np.full(clients, concentration))
            fractions = np.clip(np.cumsum(proportions)[:-1], 0.0, 1.0)
            cuts = np.round(fractions * len(shuffled)).astype(np.int64)
            for client, part in enumerate(np.split(shuffled, cuts)):
                buckets[client].append(part)
        parts = [np.sort(np.concatenate(chunks)).astype(np.int64) for chunks in buckets]
        if min(len(part) for part in parts) >= minimum:
            return parts
    raise ConfigurationError(
        f"no Dirichlet(alpha={concentration}) partition gave all {clients} clients at least "
        f"{minimum} examples in {MAX_PARTITION_TRIES} tries; raise alpha, lower min_size or "
        "use fewer clients"
    )
