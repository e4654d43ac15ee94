"""Serialization pairs: bytes -> object -> bytes is the identity, objects survive the trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import secagg
from secagg import wire
from secagg.errors import (
    ContextError,
    FormatError,
    KeyMismatchError,
    RoundAlreadyReleasedError,
)

ROSTER = ["a", "b", "c"]
WEIGHTS = {"a": 1.0, "b": 2.0, "c": 4.0}


def _update(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(70, 80, generator=gen),  # 5600 values: two chunks under "small"
        "b": torch.randn(3, generator=gen, dtype=torch.float64),
    }


UPDATES = {cid: _update(i) for i, cid in enumerate(ROSTER)}


def _encrypt(keys: secagg.KeyHolder, cid: str, **kwargs: object) -> bytes:
    return secagg.encrypt_update(
        keys,
        UPDATES[cid],
        weight=WEIGHTS[cid],
        weight_bound=4.0,
        round_id=9,
        client_id=cid,
        roster=ROSTER,
        **kwargs,  # type: ignore[arg-type]
    )


def _check_mean(release: secagg.ReleasedAggregate, clients: list[str]) -> None:
    assert sorted(release.contributors) == sorted(clients)
    total = sum(WEIGHTS[c] for c in clients)
    for name in ("w", "b"):
        exact = sum(WEIGHTS[c] * UPDATES[c][name].double().numpy() for c in clients) / total
        got = release.mean[name].double().numpy()
        assert release.mean[name].dtype == UPDATES["a"][name].dtype
        eps = torch.finfo(UPDATES["a"][name].dtype).eps
        tol = 7 * release.mean_error_std * np.sqrt(1 + exact**2) + (1e-9 + eps) * (
            1 + np.abs(exact)
        )
        assert (np.abs(got - exact) <= tol).all(), name


@pytest.mark.parametrize("signed", [False, True])
def test_update_bytes_round_trip_exactly(small_keys: secagg.KeyHolder, signed: bool) -> None:
    key = Ed25519PrivateKey.generate() if signed else None
    blob = _encrypt(small_keys, "b", signing_key=key)
    update = secagg.EncryptedUpdate.from_bytes(blob)
    assert update.to_bytes() == blob
    assert update.is_signed is signed
    assert update.client_id == "b"
    assert update.position == 1
    assert update.roster == tuple(ROSTER)
    assert update.round_id == 9
    assert update.fingerprint == small_keys.fingerprint
    assert update.preset_name == "small"
    assert len(update.chunks) == 2
    assert update.spec_hash == secagg.flatten_update(UPDATES["b"])[1].spec_hash
    assert secagg.EncryptedUpdate.from_bytes(bytearray(blob)).to_bytes() == blob


def _twin(keys: secagg.KeyHolder) -> secagg.KeyHolder:
    """An independent copy of a key holder's current state (same key, same rounds)."""
    return secagg.KeyHolder.from_bytes(keys.to_bytes())


def test_aggregate_round_trips_under_server_context_and_key_holder(
    small_keys: secagg.KeyHolder,
) -> None:
    twin = _twin(small_keys)
    server_bytes = small_keys.server_context()
    server = secagg.ServerContext.from_bytes(server_bytes)
    agg = secagg.Aggregator(server_bytes, round_id=9, roster=ROSTER, min_clients=2)
    agg.add(_encrypt(small_keys, "a"))
    agg.add(_encrypt(small_keys, "c"))
    enc = agg.finalize()
    data = enc.to_bytes()

    on_server = secagg.EncryptedAggregate.from_bytes(data, server)
    assert on_server.to_bytes() == data
    on_holder = secagg.EncryptedAggregate.from_bytes(data, small_keys)
    assert on_holder.to_bytes() == data
    for loaded in (on_server, on_holder):
        assert loaded.contributors == ("a", "c")
        assert loaded.roster == tuple(ROSTER)
        assert loaded.round_id == 9
        assert loaded.min_clients == 2
        assert loaded.spec == enc.spec
        assert loaded.fingerprint == small_keys.fingerprint
        assert loaded.num_contributors == 2
    _check_mean(small_keys.release(on_holder), ["a", "c"])
    with pytest.raises(RoundAlreadyReleasedError):  # the same aggregate as bytes: round 9 again
        small_keys.release(data)
    _check_mean(twin.release(data), ["a", "c"])  # release accepts bytes too
    with pytest.raises(KeyMismatchError):
        secagg.EncryptedAggregate.from_bytes(data, secagg.KeyHolder.generate("small"))


def test_aggregate_plus_update_leaves_the_original_unchanged() -> None:
    # One copy of the (1-client-policy) key state per release: all sums are of round 9.
    small_keys = secagg.KeyHolder.generate("small", min_clients=1)
    holders = [_twin(small_keys) for _ in range(3)]
    server = secagg.ServerContext.from_bytes(small_keys.server_context())
    base = secagg.EncryptedAggregate.from_update(server, _encrypt(small_keys, "a"))
    before = base.to_bytes()
    total = base + _encrypt(small_keys, "b")
    total = total + secagg.EncryptedUpdate.from_bytes(_encrypt(small_keys, "c"))
    assert base.to_bytes() == before
    assert base.contributors == ("a",)
    assert total.contributors == ("a", "b", "c")
    _check_mean(holders[0].release(total), ROSTER)
    _check_mean(holders[1].release(base, min_clients=1), ["a"])
    # add_update is the in-place form of +
    base.add_update(_encrypt(small_keys, "b"))
    assert base.contributors == ("a", "b")
    _check_mean(holders[2].release(base), ["a", "b"])


def test_server_context_round_trips(small_keys: secagg.KeyHolder) -> None:
    data = small_keys.server_context()
    server = secagg.ServerContext.from_bytes(data)
    assert server.to_bytes() == data
    again = secagg.ServerContext.from_bytes(server.to_bytes())
    assert again.fingerprint == server.fingerprint
    assert again.preset == server.preset
    assert again.parms_bytes == server.parms_bytes
    # An aggregator built from either form accepts the same updates.
    agg = secagg.Aggregator(again, round_id=9, roster=ROSTER)
    agg.add(_encrypt(small_keys, "a"))
    agg.add(_encrypt(small_keys, "b"))
    _check_mean(small_keys.release(agg.finalize()), ["a", "b"])


def test_key_holder_round_trips_its_budget_state() -> None:
    holder = secagg.KeyHolder.generate(
        "small", decryption_budget=50, statistical_security=40, min_clients=5
    )
    holder.decryptions_used = 7
    holder.last_released_round = 12
    again = secagg.KeyHolder.from_bytes(holder.to_bytes())
    assert again.to_bytes() == holder.to_bytes()
    assert (
        again.decryption_budget,
        again.decryptions_used,
        again.statistical_security,
        again.min_clients,
        again.last_released_round,
    ) == (50, 7, 40, 5, 12)
    assert again.flooding_std(3) == holder.flooding_std(3)


@pytest.mark.parametrize(
    ("magic", "loader"),
    [
        (wire.MAGIC_UPDATE, lambda d, k: secagg.EncryptedUpdate.from_bytes(d)),
        (wire.MAGIC_AGGREGATE, lambda d, k: secagg.EncryptedAggregate.from_bytes(d, k)),
    ],
)
def test_each_format_refuses_the_others(
    small_keys: secagg.KeyHolder, magic: bytes, loader: object
) -> None:
    blobs = {
        wire.MAGIC_UPDATE: _encrypt(small_keys, "a"),
        wire.MAGIC_AGGREGATE: secagg.EncryptedAggregate.from_update(
            small_keys, _encrypt(small_keys, "a")
        ).to_bytes(),
        wire.MAGIC_SERVER_CONTEXT: small_keys.server_context(),
        wire.MAGIC_KEY: small_keys.to_bytes(),
    }
    for other, data in blobs.items():
        if other == magic:
            continue
        with pytest.raises(FormatError, match="expected"):
            loader(data, small_keys)  # type: ignore[operator]
    with pytest.raises(ContextError):
        secagg.ServerContext.from_bytes(blobs[wire.MAGIC_UPDATE])
    with pytest.raises(ContextError):
        secagg.KeyHolder.from_bytes(blobs[wire.MAGIC_AGGREGATE])


def test_frame_version_and_lengths_are_checked(small_keys: secagg.KeyHolder) -> None:
    blob = _encrypt(small_keys, "a")
    bad_version = blob[:4] + (2).to_bytes(2, "big") + blob[6:]
    with pytest.raises(FormatError, match="version"):
        secagg.EncryptedUpdate.from_bytes(bad_version)
    bad_sig_len = blob[:18] + (7).to_bytes(2, "big") + blob[20:]
    with pytest.raises(FormatError, match="signature length"):
        secagg.EncryptedUpdate.from_bytes(bad_sig_len)
    with pytest.raises(FormatError, match="expected bytes"):
        secagg.EncryptedUpdate.from_bytes("not bytes")  # type: ignore[arg-type]
