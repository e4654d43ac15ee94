"""Release policy: decryption budget, one release per round, min_clients, forged aggregates."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal.sealapi as sealapi
import torch

import secagg
from secagg import wire
from secagg.aggregate import load_update_ciphertexts
from secagg.errors import (
    ConfigurationError,
    ContextError,
    DecryptionBudgetExceededError,
    KeyMismatchError,
    ReleaseError,
    RosterError,
    RoundAlreadyReleasedError,
)

ROSTER = ["a", "b", "c"]


def _update(seed: int, numel: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(numel, generator=gen, dtype=torch.float64) * 0.3}


def _encrypt(
    keys: secagg.KeyHolder,
    cid: str,
    *,
    numel: int = 100,
    weight: float = 1.0,
    weight_bound: float = 1.0,
    round_id: int = 1,
    seed: int | None = None,
) -> bytes:
    return secagg.encrypt_update(
        keys,
        _update(ROSTER.index(cid) if seed is None else seed, numel),
        weight=weight,
        weight_bound=weight_bound,
        round_id=round_id,
        client_id=cid,
        roster=ROSTER,
    )


def _aggregate(
    keys: secagg.KeyHolder, clients: list[str], *, min_clients: int = 2, **kwargs: Any
) -> secagg.EncryptedAggregate:
    round_id = int(kwargs.get("round_id", 1))
    agg = secagg.Aggregator(
        keys.server_context(), round_id=round_id, roster=ROSTER, min_clients=min_clients
    )
    for cid in clients:
        agg.add(_encrypt(keys, cid, **kwargs))
    return agg.finalize()


def _server_side(keys: secagg.KeyHolder) -> tuple[secagg.ServerContext, sealapi.Evaluator]:
    server = secagg.ServerContext.from_bytes(keys.server_context())
    return server, sealapi.Evaluator(server.seal_context)


def _with_header(data: bytes, **changes: Any) -> bytes:
    """Rewrite fields of a serialized aggregate's header (what a malicious server can do)."""
    frame = wire.unpack_frame(data, wire.MAGIC_AGGREGATE, max_chunk_bytes=1 << 30)
    header = {k: v for k, v in frame.header.items() if k != "chunk_sizes"}
    assert set(changes) <= set(header)
    header.update(changes)
    return wire.pack_frame(wire.MAGIC_AGGREGATE, header, frame.chunks)


@pytest.fixture
def solo_keys() -> secagg.KeyHolder:
    """Small-preset keys whose policy allows releasing a single client's sum."""
    return secagg.KeyHolder.generate("small", min_clients=1)


# ---------------------------------------------------------------------------- budget
def test_decryption_budget_is_enforced_and_persisted(tmp_path: Path) -> None:
    holder = secagg.KeyHolder.generate("small", decryption_budget=3)
    path = holder.save(tmp_path / "holder.key")
    enc = _aggregate(holder, ["a", "b"])
    assert len(enc.ciphertexts) == 1
    for spent in (1, 2, 3):
        holder.release(enc)
        assert holder.decryptions_used == spent
        assert secagg.KeyHolder.load(path).decryptions_used == spent
    assert holder.decryptions_left == 0
    with pytest.raises(DecryptionBudgetExceededError, match="rotate"):
        holder.release(enc)
    assert holder.decryptions_used == 3
    reloaded = secagg.KeyHolder.load(path)
    assert reloaded.decryptions_used == 3
    assert reloaded.decryptions_left == 0
    with pytest.raises(DecryptionBudgetExceededError):
        reloaded.release(enc.to_bytes())  # a reloaded key file does not reset the budget


def test_release_needing_more_than_the_budget_left_spends_nothing(tmp_path: Path) -> None:
    holder = secagg.KeyHolder.generate("small", decryption_budget=3)
    path = holder.save(tmp_path / "holder.key")
    holder.release(_aggregate(holder, ["a", "b"]))  # 1 chunk
    multi = _aggregate(holder, ["a", "b"], numel=3 * holder.preset.values_per_chunk)
    assert len(multi.ciphertexts) == 3
    with pytest.raises(DecryptionBudgetExceededError):
        holder.release(multi)
    assert holder.decryptions_used == 1
    assert secagg.KeyHolder.load(path).decryptions_used == 1


def test_flooding_grows_with_the_budget() -> None:
    small = secagg.KeyHolder.generate("small", decryption_budget=4)
    large = secagg.KeyHolder.generate("small", decryption_budget=400)
    assert large.flooding_std(2) == pytest.approx(10 * small.flooding_std(2))


# ---------------------------------------------------------------------------- min_clients
def test_release_refuses_fewer_contributors_than_min_clients(small_keys: secagg.KeyHolder) -> None:
    enc = _aggregate(small_keys, ["a", "b"])
    with pytest.raises(RosterError, match="min_clients=3"):
        small_keys.release(enc, min_clients=3)
    assert small_keys.release(enc, min_clients=2).contributors == ("a", "b")
    single = _aggregate(small_keys, ["a"], min_clients=1)
    assert small_keys.release(single).contributors == ("a",)
    with pytest.raises(RosterError):
        small_keys.release(single, min_clients=2)


def test_release_refuses_an_aggregate_of_another_key(small_keys: secagg.KeyHolder) -> None:
    other = secagg.KeyHolder.generate("small")
    enc = _aggregate(other, ["a", "b"])
    with pytest.raises(KeyMismatchError):
        small_keys.release(enc)
    with pytest.raises(KeyMismatchError):
        small_keys.release(enc.to_bytes())


# ---------------------------------------------------------------------------- malicious server
def test_update_added_twice_under_two_names_is_refused(small_keys: secagg.KeyHolder) -> None:
    server, evaluator = _server_side(small_keys)
    blob_a = _encrypt(small_keys, "a")
    enc = secagg.EncryptedAggregate.from_update(server, blob_a)
    for total, again in zip(
        enc.ciphertexts,
        load_update_ciphertexts(server, secagg.EncryptedUpdate.from_bytes(blob_a)),
        strict=True,
    ):
        evaluator.add_inplace(total, again)
    enc.contributors = ("a", "b")
    enc.min_clients = 2
    with pytest.raises(RosterError, match="more than once"):
        small_keys.release(enc.to_bytes())


def test_update_subtracted_to_isolate_a_client_is_refused(small_keys: secagg.KeyHolder) -> None:
    server, evaluator = _server_side(small_keys)
    enc = _aggregate(small_keys, ["a", "b"])
    blob_b = _encrypt(small_keys, "b")
    for total, ct in zip(
        enc.ciphertexts,
        load_update_ciphertexts(server, secagg.EncryptedUpdate.from_bytes(blob_b)),
        strict=True,
    ):
        evaluator.sub_inplace(total, ct)  # (a + b) - b' with a fresh b'
    with pytest.raises(RosterError):
        small_keys.release(enc.to_bytes())  # claims a and b, holds a (and b - b')
    enc.contributors = ("a",)
    with pytest.raises(RosterError):
        small_keys.release(enc.to_bytes(), min_clients=2)  # honest claim, too few


def test_contributor_claims_must_match_the_encrypted_roster(small_keys: secagg.KeyHolder) -> None:
    enc = _aggregate(small_keys, ["a", "b"])
    for claim in [("a", "c"), ("a",), ("a", "b", "c"), ("b", "a", "c")]:
        forged = secagg.EncryptedAggregate.from_bytes(enc.to_bytes(), small_keys)
        forged.contributors = claim
        with pytest.raises(RosterError):
            small_keys.release(forged, min_clients=1)
    forged = secagg.EncryptedAggregate.from_bytes(enc.to_bytes(), small_keys)
    forged.contributors = ("b", "a")  # order does not matter
    assert sorted(small_keys.release(forged).contributors) == ["a", "b"]


def test_roster_shortened_to_hide_a_contributor_is_refused(small_keys: secagg.KeyHolder) -> None:
    enc = _aggregate(small_keys, ["a", "b", "c"])
    enc.roster = ("a", "b")
    enc.contributors = ("a", "b")
    with pytest.raises(RosterError, match="beyond"):
        small_keys.release(enc)


def test_chunks_mixed_from_two_aggregates_are_refused(small_keys: secagg.KeyHolder) -> None:
    numel = 2 * small_keys.preset.values_per_chunk + 5
    first = _aggregate(small_keys, ["a", "b"], numel=numel)
    second = _aggregate(small_keys, ["a", "c"], numel=numel)
    assert len(first.ciphertexts) == len(second.ciphertexts) == 3
    second.ciphertexts[0] = first.ciphertexts[0]
    with pytest.raises(RosterError, match="different"):
        small_keys.release(second.to_bytes())


def test_chunks_mixed_from_aggregates_with_other_weights_are_refused(
    small_keys: secagg.KeyHolder,
) -> None:
    # Same contributors, different weights (e.g. two rounds): the weight slot is all
    # that tells the chunks apart. An honest sum's chunks agree on it to within the
    # CKKS noise (~1e-11), so a 0.125 difference must be refused.
    numel = small_keys.preset.values_per_chunk + 5
    first = _aggregate(small_keys, ["a", "b"], numel=numel, weight=2.0, weight_bound=16.0)
    second = _aggregate(small_keys, ["a", "b"], numel=numel, weight=3.0, weight_bound=16.0)
    assert len(first.ciphertexts) == len(second.ciphertexts) == 2
    second.ciphertexts[1] = first.ciphertexts[1]
    with pytest.raises(RosterError):
        small_keys.release(second.to_bytes())


def test_release_refuses_a_weight_sum_drowned_by_flooding() -> None:
    # Preset "wide" floods with σ ≈ 0.06; a normalised weight sum of 0.001 is pure
    # noise after flooding, and dividing by it gives a meaningless (often sign-flipped)
    # mean. The key holder must refuse (ReleaseError) or release a usable weight sum.
    holder = secagg.KeyHolder.generate("wide")
    agg = secagg.Aggregator(holder.server_context(), round_id=1, roster=ROSTER, min_clients=1)
    agg.add(_encrypt(holder, "a", weight=1.0, weight_bound=1000.0))
    enc = agg.finalize()
    assert holder.flooding_std(1) > 10 * 0.001
    for _ in range(5):
        try:
            release = holder.release(enc)
        except ReleaseError:
            continue
        assert release.weight_sum > 0
        assert release.mean_error_std > 0
        assert abs(release.weight_sum - 0.001) <= 0.5 * 0.001


def test_released_values_follow_the_honest_aggregate(small_keys: secagg.KeyHolder) -> None:
    enc = _aggregate(small_keys, ["a", "c"], numel=500, weight=3.0, weight_bound=4.0)
    release = small_keys.release(enc)
    exact = (_update(0, 500)["w"].numpy() + _update(2, 500)["w"].numpy()) / 2
    tol = 7 * release.mean_error_std * np.sqrt(1 + exact**2) + 1e-9
    assert (np.abs(release.mean["w"].numpy() - exact) <= tol).all()
    assert release.weight_sum == pytest.approx(1.5, abs=7 * release.flooding_std + 1e-9)
