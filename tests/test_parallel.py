"""Encryption in several processes gives the same, correctly ordered ciphertexts."""

from __future__ import annotations

import pytest
import torch

import secagg
from secagg.errors import ConfigurationError


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_parallel_encryption_decrypts_to_the_update_in_order(workers: int) -> None:
    keys = secagg.KeyHolder.generate("small", min_clients=1)
    values = torch.linspace(-1.0, 1.0, 7 * keys.preset.values_per_chunk + 5, dtype=torch.float64)
    update = {"w": values}
    blob = secagg.encrypt_update(
        keys, update, round_id=1, client_id="a", roster=["a"], workers=workers
    )
    assert len(secagg.EncryptedUpdate.from_bytes(blob).chunks) == 8
    aggregator = secagg.Aggregator(keys.server_context(), round_id=1, roster=["a"], min_clients=1)
    aggregator.add(blob)
    released = keys.release(aggregator.finalize())  # chunk tags prove the order
    error = float((released.mean["w"] - values).abs().max())
    assert error < 10 * released.mean_error_std


def test_workers_below_one_are_refused() -> None:
    keys = secagg.KeyHolder.generate("small")
    with pytest.raises(ConfigurationError):
        secagg.encrypt_update(
            keys, {"w": torch.zeros(10)}, round_id=1, client_id="a", roster=["a"], workers=0
        )
