"""Encryption and decryption in several processes give the same, correctly ordered results."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

import secagg
from secagg.crypto._parallel import PARALLEL_MIN_CHUNKS
from secagg.crypto._seal import SEED_BYTES
from secagg.errors import ConfigurationError


def _payload(fed: secagg.FederationKeys, values: np.ndarray, workers: int | None) -> bytes:
    return secagg.encrypt_update(
        fed.material,
        {"w": values},
        signing_key=fed.signing_keys["a"],
        round_id=1,
        roster=["a"],
        workers=workers,
    )


def _release(fed: secagg.FederationKeys, payloads: Sequence[bytes]) -> secagg.ReleasedAggregate:
    aggregator = secagg.Aggregator(
        fed.server_context(), registry=fed.registry, round_id=1, roster=["a"], min_clients=1
    )
    for payload in payloads:
        aggregator.add(payload)
    return fed.key_holder(min_clients=1).release(aggregator.finalize())


def _assert_close(released: secagg.ReleasedAggregate, exact: np.ndarray) -> None:
    """Within the 7-sigma flooding band of the mean (derivation in tests/crypto/test_mean.py)."""
    tol = 7 * released.mean_error_std * np.sqrt(1 + exact**2) + 1e-9
    assert (np.abs(released.mean["w"] - exact) <= tol).all()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_parallel_encryption_decrypts_to_the_update_in_order(workers: int) -> None:
    fed = secagg.FederationKeys.generate(["a"], preset="small")
    values = np.linspace(-1.0, 1.0, 8 * fed.material.preset.slots - 1)
    blob = _payload(fed, values, workers)
    update = secagg.EncryptedUpdate.from_bytes(blob)
    assert len(update.chunks) == 8
    assert (
        len(set(update.seeds[i : i + SEED_BYTES] for i in range(0, 8 * SEED_BYTES, SEED_BYTES)))
        == 8
    )  # fresh seeds
    released = _release(fed, [blob])  # the MAC binds each chunk's index: order is proven
    _assert_close(released, values)


def test_parallel_decryption_of_a_large_aggregate_keeps_chunk_order() -> None:
    # From PARALLEL_MIN_CHUNKS chunks on, the key holder decrypts in worker processes.
    fed = secagg.FederationKeys.generate(["a"], preset="small")
    chunks = PARALLEL_MIN_CHUNKS + 2
    # Each chunk's values name it: chunk i holds i / chunks.
    values = np.repeat(np.arange(chunks, dtype=np.float64), fed.material.preset.slots)[1:] / chunks
    released = _release(fed, [_payload(fed, values, 2)])
    assert secagg.get_preset("small").num_chunks(values.size) == chunks
    _assert_close(released, values)


@pytest.mark.parametrize("workers", [0, -1, 1.5, "2", True])
def test_workers_that_are_not_a_positive_int_are_refused(workers: object) -> None:
    fed = secagg.FederationKeys.generate(["a"], preset="small")
    with pytest.raises(ConfigurationError, match="workers"):
        _payload(fed, np.zeros(10), workers)  # type: ignore[arg-type]


def test_default_workers_fork_only_for_large_updates_on_machines_with_cores_to_spare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from secagg.crypto import _parallel

    for cores, chunks, expected in [(2, 100, 1), (4, 100, 4), (16, 100, 8), (16, 10, 1)]:
        available = set(range(cores))
        monkeypatch.setattr(_parallel.os, "sched_getaffinity", lambda _, a=available: a)
        assert _parallel.default_workers(chunks) == expected
