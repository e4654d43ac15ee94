"""Serialization pairs: bytes -> object -> bytes is the identity; each format refuses the others."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import secagg
from secagg.crypto import wire
from secagg.crypto._seal import SEED_BYTES
from secagg.crypto.registry import SigningKey
from secagg.dp.tensors import to_torch
from secagg.errors import (
    ContextError,
    FormatError,
    KeyMismatchError,
    RoundAlreadyReleasedError,
    SecaggError,
    SecretKeyExposureError,
)

ROSTER = ["a", "b", "c"]
WEIGHTS = {"a": 1.0, "b": 2.0, "c": 4.0}


def _update(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "w": torch.rand(100, 90, generator=gen) * 2 - 1,  # 9000 values: two chunks ("small")
        "b": torch.rand(3, generator=gen, dtype=torch.float64) - 0.5,
    }


UPDATES = {cid: _update(i) for i, cid in enumerate(ROSTER)}


def _encrypt(fed: secagg.FederationKeys, cid: str, round_id: int = 9) -> bytes:
    return secagg.encrypt_update(
        fed.material,
        UPDATES[cid],
        signing_key=fed.signing_keys[cid],
        weight=WEIGHTS[cid],
        weight_bound=4.0,
        round_id=round_id,
        roster=ROSTER,
    )


def _aggregate(fed: secagg.FederationKeys, clients: list[str]) -> secagg.EncryptedAggregate:
    agg = secagg.Aggregator(
        fed.server_context().to_bytes(), registry=fed.registry, round_id=9, roster=ROSTER
    )
    for cid in clients:
        agg.add(_encrypt(fed, cid))
    return agg.finalize()


def _check_mean(release: secagg.ReleasedAggregate, clients: list[str]) -> None:
    assert sorted(release.contributors) == sorted(clients)
    total = sum(WEIGHTS[c] for c in clients)
    tensors = to_torch(release.mean, release.spec)
    for name in ("w", "b"):
        exact = sum(WEIGHTS[c] * UPDATES[c][name].double().numpy() for c in clients) / total
        got = tensors[name].double().numpy()
        assert tensors[name].dtype == UPDATES["a"][name].dtype
        eps = torch.finfo(UPDATES["a"][name].dtype).eps
        tol = 7 * release.mean_error_std * np.sqrt(1 + exact**2) + (1e-9 + eps) * (
            1 + np.abs(exact)
        )
        assert (np.abs(got - exact) <= tol).all(), name


def test_update_bytes_round_trip_exactly(small_federation: secagg.FederationKeys) -> None:
    fed = small_federation
    blob = _encrypt(fed, "b")
    update = secagg.EncryptedUpdate.from_bytes(blob)
    assert update.to_bytes() == blob
    assert update.client_id == "b"
    assert update.roster == tuple(ROSTER)
    assert update.round_id == 9
    assert update.fingerprint == fed.material.fingerprint
    assert (update.preset_name, update.layout) == ("small", "exact-fields-v1")
    assert len(update.chunks) == 2
    assert all(len(c) == fed.material.preset.chunk_bytes for c in update.chunks)
    assert len(update.seeds) == 2 * SEED_BYTES
    assert len(update.signature) == 64
    assert len(update.tag) == 1 and 0 <= update.tag[0] < fed.material.moduli[0]
    assert update.spec_hash == secagg.flatten_update(UPDATES["b"])[1].spec_hash
    assert secagg.EncryptedUpdate.from_bytes(bytearray(blob)).to_bytes() == blob
    fed.registry.verify("b", update.signature, update.signed_bytes)


def test_aggregate_round_trips_under_server_context_and_key_holder(
    small_federation: secagg.FederationKeys,
) -> None:
    fed = small_federation
    holder = fed.key_holder()
    twin = secagg.KeyHolder.from_bytes(fed.material, holder.to_bytes())
    enc = _aggregate(fed, ["a", "c"])
    data = enc.to_bytes()
    on_server = secagg.EncryptedAggregate.from_bytes(data, fed.server_context())
    on_holder = secagg.EncryptedAggregate.from_bytes(data, fed.material.server_context_object())
    for loaded in (on_server, on_holder):
        assert loaded.to_bytes() == data
        assert loaded.contributors == ("a", "c")
        assert loaded.roster == tuple(ROSTER)
        assert (loaded.round_id, loaded.min_clients, loaded.num_contributors) == (9, 2, 2)
        assert loaded.spec == enc.spec
        assert loaded.fingerprint == fed.material.fingerprint
        assert np.array_equal(loaded.c0, enc.c0)
        assert loaded.seeds == enc.seeds
        assert loaded.tag == enc.tag
    _check_mean(holder.release(on_holder), ["a", "c"])
    with pytest.raises(RoundAlreadyReleasedError):  # the same aggregate as bytes: round 9 again
        holder.release(data)
    _check_mean(twin.release(data), ["a", "c"])  # release accepts bytes too
    other = secagg.FederationKeys.generate(ROSTER, preset="small")
    with pytest.raises(KeyMismatchError):
        secagg.EncryptedAggregate.from_bytes(data, other.server_context())


def test_aggregate_carries_64_bytes_per_chunk_and_contributor_beyond_its_sum(
    small_federation: secagg.FederationKeys,
) -> None:
    fed = small_federation
    two, three = _aggregate(fed, ["a", "b"]), _aggregate(fed, ROSTER)
    assert two.num_chunks == 2
    # The only growth per contributor is its seeds (and its name in the header).
    growth = len(three.to_bytes()) - len(two.to_bytes())
    assert SEED_BYTES * two.num_chunks <= growth <= SEED_BYTES * two.num_chunks + 16
    packed = 60 * fed.material.preset.poly_modulus_degree // 8
    assert len(two.to_bytes()) < two.num_chunks * (packed + 2 * SEED_BYTES) + 2048


def test_server_context_round_trips(small_federation: secagg.FederationKeys) -> None:
    fed = small_federation
    data = fed.material.server_context()
    server = secagg.ServerContext.from_bytes(data)
    assert server.to_bytes() == data
    again = secagg.ServerContext.from_bytes(server.to_bytes())
    assert (again.fingerprint, again.preset) == (server.fingerprint, server.preset)
    assert again.parameters.parms_bytes == server.parameters.parms_bytes
    assert again.moduli == fed.material.moduli
    # An aggregator built from either form accepts the same updates.
    for context in (data, again):
        agg = secagg.Aggregator(context, registry=fed.registry, round_id=9, roster=ROSTER)
        agg.add(_encrypt(fed, "a"))
        agg.add(_encrypt(fed, "b"))
    _check_mean(fed.key_holder().release(agg.finalize()), ["a", "b"])


def test_key_holder_state_round_trips(small_federation: secagg.FederationKeys) -> None:
    fed = small_federation
    holder = fed.key_holder(decryption_budget=50, statistical_security=40, min_clients=5)
    holder.decryptions_used, holder.last_released_round, holder.refused = 7, 12, 3
    again = secagg.KeyHolder.from_bytes(fed.material, holder.to_bytes())
    assert again.to_bytes() == holder.to_bytes()
    assert (
        again.decryption_budget,
        again.decryptions_used,
        again.statistical_security,
        again.min_clients,
        again.last_released_round,
        again.refused,
    ) == (50, 7, 40, 5, 12, 3)
    assert again.flooding_std(3) == holder.flooding_std(3)
    assert again.registry.digest == fed.registry.digest
    assert fed.material.mac_key not in holder.to_bytes()


def test_secret_context_round_trips(small_federation: secagg.FederationKeys) -> None:
    material = small_federation.material
    again = secagg.KeyMaterial.from_bytes(material.to_bytes())
    assert again.to_bytes() == material.to_bytes()
    assert (again.fingerprint, again.mac_key, again.preset) == (
        material.fingerprint,
        material.mac_key,
        material.preset,
    )


def test_registry_and_signing_keys_round_trip(
    small_federation: secagg.FederationKeys, tmp_path: Path
) -> None:
    fed = small_federation
    registry = secagg.ClientRegistry.from_bytes(fed.registry.to_bytes())
    assert registry.to_bytes() == fed.registry.to_bytes()
    assert list(registry) == ROSTER
    assert registry.digest == fed.registry.digest
    loaded = secagg.ClientRegistry.load(fed.registry.save(tmp_path / "registry.secagg"))
    assert loaded.digest == fed.registry.digest
    key = SigningKey.from_bytes(fed.signing_keys["c"].to_bytes())
    assert key.client_id == "c"
    assert key.to_bytes() == fed.signing_keys["c"].to_bytes()
    loaded.verify("c", key.sign(b"message"), b"message")
    with pytest.raises(secagg.errors.SignatureError):
        loaded.verify("b", key.sign(b"message"), b"message")
    with pytest.raises(secagg.errors.SignatureError, match="not registered"):
        loaded.verify("zed", key.sign(b"message"), b"message")
    # The digest covers ids, keys and their order.
    swapped = secagg.ClientRegistry(
        {"b": fed.signing_keys["a"], "a": fed.signing_keys["b"], "c": fed.signing_keys["c"]}
    )
    assert swapped.digest != fed.registry.digest


def _blobs(fed: secagg.FederationKeys) -> dict[bytes, bytes]:
    enc = _aggregate(fed, ["a", "b"])
    return {
        wire.MAGIC_UPDATE: _encrypt(fed, "a"),
        wire.MAGIC_AGGREGATE: enc.to_bytes(),
        wire.MAGIC_SERVER_CONTEXT: fed.material.server_context(),
        wire.MAGIC_KEY: fed.material.to_bytes(),
        wire.MAGIC_KEY_HOLDER: fed.key_holder().to_bytes(),
        wire.MAGIC_REGISTRY: fed.registry.to_bytes(),
        wire.MAGIC_SIGNING_KEY: fed.signing_keys["a"].to_bytes(),
    }


LOADERS: dict[bytes, tuple[Callable[[bytes, secagg.FederationKeys], Any], type[SecaggError]]] = {
    wire.MAGIC_UPDATE: (lambda d, f: secagg.EncryptedUpdate.from_bytes(d), FormatError),
    wire.MAGIC_AGGREGATE: (
        lambda d, f: secagg.EncryptedAggregate.from_bytes(d, f.server_context()),
        FormatError,
    ),
    wire.MAGIC_SERVER_CONTEXT: (lambda d, f: secagg.ServerContext.from_bytes(d), ContextError),
    wire.MAGIC_KEY: (lambda d, f: secagg.KeyMaterial.from_bytes(d), ContextError),
    wire.MAGIC_KEY_HOLDER: (lambda d, f: secagg.KeyHolder.from_bytes(f.material, d), ContextError),
    wire.MAGIC_REGISTRY: (lambda d, f: secagg.ClientRegistry.from_bytes(d), ContextError),
    wire.MAGIC_SIGNING_KEY: (lambda d, f: SigningKey.from_bytes(d), ContextError),
}


@pytest.mark.parametrize("magic", sorted(LOADERS), ids=lambda m: m.decode())
def test_each_format_refuses_the_others(
    small_federation: secagg.FederationKeys, magic: bytes
) -> None:
    blobs = _blobs(small_federation)
    load, error = LOADERS[magic]
    assert load(blobs[magic], small_federation) is not None  # its own format loads
    for other, data in blobs.items():
        if other == magic:
            continue
        with pytest.raises(error) as info:
            load(data, small_federation)
        assert isinstance(info.value, ValueError)
        if magic == wire.MAGIC_SERVER_CONTEXT and other == wire.MAGIC_KEY:
            assert isinstance(info.value, SecretKeyExposureError)
            assert "secret context" in str(info.value)
        else:  # the message says what the bytes are
            assert "expected" in str(info.value) or "server context" in str(info.value)


def test_frame_version_and_lengths_are_checked(small_federation: secagg.FederationKeys) -> None:
    blob = _encrypt(small_federation, "a")
    current = wire.format_version(wire.MAGIC_UPDATE)
    assert blob[4:6] == current.to_bytes(2, "big")
    for version in (1, wire.FORMAT_VERSION, current + 1):  # 2: SEAL's Blake2xb seeds
        with pytest.raises(FormatError, match="version"):
            secagg.EncryptedUpdate.from_bytes(blob[:4] + version.to_bytes(2, "big") + blob[6:])
    bad_sig_len = blob[:18] + (7).to_bytes(2, "big") + blob[20:]
    with pytest.raises(FormatError, match="signature length"):
        secagg.EncryptedUpdate.from_bytes(bad_sig_len)
    with pytest.raises(FormatError, match="expected bytes"):
        secagg.EncryptedUpdate.from_bytes("not bytes")  # type: ignore[arg-type]
