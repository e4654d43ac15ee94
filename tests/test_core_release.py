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


def _fields(enc: secagg.EncryptedAggregate) -> dict[str, Any]:
    return {f.name: getattr(enc, f.name) for f in dataclasses.fields(enc)}


@pytest.fixture
def solo_keys() -> secagg.KeyHolder:
    """Small-preset keys whose policy allows releasing a single client's sum."""
    return secagg.KeyHolder.generate("small", min_clients=1)


# ---------------------------------------------------------------------------- budget
def test_decryption_budget_is_enforced_and_persisted(tmp_path: Path) -> None:
    holder = secagg.KeyHolder.generate("small", decryption_budget=3)
    path = holder.save(tmp_path / "holder.key")
    rounds = {r: _aggregate(holder, ["a", "b"], round_id=r) for r in (1, 2, 3, 4)}
    assert all(len(enc.ciphertexts) == 1 for enc in rounds.values())
    for spent in (1, 2, 3):
        holder.release(rounds[spent])
        assert holder.decryptions_used == spent
        reloaded = secagg.KeyHolder.load(path)
        assert reloaded.decryptions_used == spent
        assert reloaded.last_released_round == spent
    assert holder.decryptions_left == 0
    with pytest.raises(DecryptionBudgetExceededError, match="rotate"):
        holder.release(rounds[4])  # a new round, but no budget left
    assert holder.decryptions_used == 3
    assert holder.last_released_round == 3  # the refused round is not spent
    reloaded = secagg.KeyHolder.load(path)
    assert reloaded.decryptions_used == 3
    assert reloaded.decryptions_left == 0
    assert reloaded.last_released_round == 3
    with pytest.raises(DecryptionBudgetExceededError):
        reloaded.release(rounds[4].to_bytes())  # a reloaded key file does not reset the budget


def test_release_needing_more_than_the_budget_left_spends_nothing(tmp_path: Path) -> None:
    holder = secagg.KeyHolder.generate("small", decryption_budget=3)
    path = holder.save(tmp_path / "holder.key")
    holder.release(_aggregate(holder, ["a", "b"]))  # 1 chunk, round 1
    multi = _aggregate(holder, ["a", "b"], numel=3 * holder.preset.values_per_chunk, round_id=2)
    assert len(multi.ciphertexts) == 3
    with pytest.raises(DecryptionBudgetExceededError):
        holder.release(multi)
    assert holder.decryptions_used == 1
    assert holder.last_released_round == 1  # neither the budget nor round 2 was spent
    reloaded = secagg.KeyHolder.load(path)
    assert (reloaded.decryptions_used, reloaded.last_released_round) == (1, 1)
    # Round 2 is still available for an aggregate that fits the budget.
    assert reloaded.release(_aggregate(holder, ["a", "c"], round_id=2)).round_id == 2


def test_flooding_grows_with_the_budget() -> None:
    small = secagg.KeyHolder.generate("small", decryption_budget=4)
    large = secagg.KeyHolder.generate("small", decryption_budget=400)
    assert large.flooding_std(2) == pytest.approx(10 * small.flooding_std(2))


# ---------------------------------------------------------------------------- one release per round
def test_round_already_released_is_a_release_error_not_a_roster_error() -> None:
    assert issubclass(RoundAlreadyReleasedError, ReleaseError)
    assert not issubclass(RoundAlreadyReleasedError, RosterError)
    assert secagg.errors.RoundAlreadyReleasedError is RoundAlreadyReleasedError


def test_an_aggregate_is_released_once_and_older_rounds_never(
    small_keys: secagg.KeyHolder,
) -> None:
    assert small_keys.last_released_round == -1
    round5 = _aggregate(small_keys, ["a", "b"], round_id=5)
    assert small_keys.release(round5).round_id == 5
    assert (small_keys.last_released_round, small_keys.decryptions_used) == (5, 1)
    refused: dict[str, Callable[[], object]] = {
        "same object": lambda: small_keys.release(round5),
        "same bytes": lambda: small_keys.release(round5.to_bytes()),
        "same round, other sum": lambda: small_keys.release(
            _aggregate(small_keys, ["b", "c"], round_id=5)
        ),
        "older round": lambda: small_keys.release(_aggregate(small_keys, ["a", "c"], round_id=4)),
        "round 0": lambda: small_keys.release(_aggregate(small_keys, ["a", "b"], round_id=0)),
    }
    for name, call in refused.items():
        with pytest.raises(RoundAlreadyReleasedError, match="round") as info:
            call()
        assert "5" in str(info.value), name
        # A refused round spends nothing: neither budget nor the round counter moves.
        assert (small_keys.last_released_round, small_keys.decryptions_used) == (5, 1), name
    # A later round (gaps allowed) is released, and becomes the new floor.
    assert small_keys.release(_aggregate(small_keys, ["a", "c"], round_id=7)).round_id == 7
    with pytest.raises(RoundAlreadyReleasedError):
        small_keys.release(_aggregate(small_keys, ["a", "b"], round_id=6))
    assert small_keys.last_released_round == 7


def test_key_file_remembers_the_last_released_round_and_the_policy(tmp_path: Path) -> None:
    holder = secagg.KeyHolder.generate("small", min_clients=3)
    assert holder.min_clients == 3
    path = holder.save(tmp_path / "holder.key")
    loaded = secagg.KeyHolder.load(path)
    assert (loaded.min_clients, loaded.last_released_round) == (3, -1)

    released = _aggregate(holder, ROSTER, round_id=8)
    holder.release(released)  # writes the file before decrypting
    reloaded = secagg.KeyHolder.load(path)
    assert (reloaded.min_clients, reloaded.last_released_round) == (3, 8)
    assert reloaded.decryptions_used == 1
    for round_id in (8, 2):
        with pytest.raises(RoundAlreadyReleasedError):
            reloaded.release(_aggregate(holder, ROSTER, round_id=round_id))
    with pytest.raises(RosterError, match="min_clients=3"):  # the policy survived the reload
        reloaded.release(_aggregate(holder, ["a", "b"], min_clients=1, round_id=9))
    # A refused release spends budget (on disk) but not its round: only a release that
    # passed every check spends a round, so round 9 is still open, and so is round 10.
    assert secagg.KeyHolder.load(path).last_released_round == 8
    assert secagg.KeyHolder.load(path).decryptions_used == 2
    assert reloaded.release(_aggregate(holder, ROSTER, round_id=10)).round_id == 10
    assert secagg.KeyHolder.load(path).last_released_round == 10
    # The in-memory form round-trips the same state.
    again = secagg.KeyHolder.from_bytes(reloaded.to_bytes())
    assert (again.min_clients, again.last_released_round) == (3, 10)


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_clients", 0), ("min_clients", 65), ("min_clients", "2"), ("last_released_round", -2)],
)
def test_key_file_with_an_impossible_policy_or_round_is_refused(field: str, value: object) -> None:
    data = secagg.KeyHolder.generate("small").to_bytes()
    frame = wire.unpack_frame(data, wire.MAGIC_KEY, max_chunk_bytes=1 << 24)
    header = {k: v for k, v in frame.header.items() if k != "chunk_sizes"}
    header[field] = value
    with pytest.raises(ContextError):
        secagg.KeyHolder.from_bytes(wire.pack_frame(wire.MAGIC_KEY, header, frame.chunks))


@pytest.mark.parametrize("min_clients", [0, 65])
def test_generate_refuses_a_policy_outside_the_roster(min_clients: int) -> None:
    with pytest.raises(ConfigurationError, match="min_clients"):
        secagg.KeyHolder.generate("small", min_clients=min_clients)


# ---------------------------------------------------------------------------- min_clients
def test_release_refuses_fewer_contributors_than_min_clients(
    solo_keys: secagg.KeyHolder,
) -> None:
    with pytest.raises(RosterError, match="min_clients=3"):
        solo_keys.release(_aggregate(solo_keys, ["a", "b"], round_id=1), min_clients=3)
    assert solo_keys.last_released_round == -1  # a refused release does not spend its round
    assert solo_keys.decryptions_used == 1  # but it spends budget
    enc = _aggregate(solo_keys, ["a", "b"], round_id=2)
    assert solo_keys.release(enc, min_clients=2).contributors == ("a", "b")
    single = _aggregate(solo_keys, ["a"], min_clients=1, round_id=3)
    assert solo_keys.release(single).contributors == ("a",)
    with pytest.raises(RosterError, match="min_clients=2"):
        solo_keys.release(_aggregate(solo_keys, ["a"], min_clients=1, round_id=4), min_clients=2)
    # The aggregate's own min_clients (set by the aggregator) is honoured too.
    demanding = _aggregate(solo_keys, ["a", "b"], round_id=5)
    demanding.min_clients = 3
    with pytest.raises(RosterError, match="min_clients=3"):
        solo_keys.release(demanding)


def test_default_policy_refuses_a_single_client_sum_whatever_the_server_asks(
    small_keys: secagg.KeyHolder,
) -> None:
    assert small_keys.min_clients == 2
    single = _aggregate(small_keys, ["a"], min_clients=1)
    assert single.min_clients == 1
    with pytest.raises(RosterError, match="min_clients=2"):
        small_keys.release(single, min_clients=1)
    with pytest.raises(RosterError, match="min_clients=2"):
        small_keys.release(_aggregate(small_keys, ["b"], min_clients=1, round_id=2).to_bytes())


def test_key_holder_policy_overrides_the_aggregate_and_the_caller() -> None:
    holder = secagg.KeyHolder.generate("small", min_clients=3)
    pair = _aggregate(holder, ["a", "b"], min_clients=1, round_id=1)
    assert pair.min_clients == 1
    with pytest.raises(RosterError, match="2 distinct clients, fewer than min_clients=3"):
        holder.release(pair, min_clients=1)
    # The same pair under a header that claims min_clients=1 in another round: refused too.
    forged = _with_header(
        _aggregate(holder, ["a", "c"], min_clients=1, round_id=2).to_bytes(), min_clients=1
    )
    with pytest.raises(RosterError, match="min_clients=3"):
        holder.release(forged)
    # Three distinct clients satisfy the policy.
    assert holder.release(_aggregate(holder, ROSTER, min_clients=1, round_id=3)).contributors == (
        "a",
        "b",
        "c",
    )


def test_release_refuses_an_aggregate_of_another_key(small_keys: secagg.KeyHolder) -> None:
    other = secagg.KeyHolder.generate("small")
    enc = _aggregate(other, ["a", "b"])
    with pytest.raises(KeyMismatchError):
        small_keys.release(enc)
    with pytest.raises(KeyMismatchError):
        small_keys.release(enc.to_bytes())
    # Refused before anything is spent.
    assert (small_keys.decryptions_used, small_keys.last_released_round) == (0, -1)


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


def test_update_subtracted_to_isolate_a_client_is_refused(solo_keys: secagg.KeyHolder) -> None:
    server, evaluator = _server_side(solo_keys)

    def isolate_a(round_id: int) -> secagg.EncryptedAggregate:
        enc = _aggregate(solo_keys, ["a", "b"], round_id=round_id)
        blob_b = _encrypt(solo_keys, "b", round_id=round_id)
        for total, ct in zip(
            enc.ciphertexts,
            load_update_ciphertexts(server, secagg.EncryptedUpdate.from_bytes(blob_b)),
            strict=True,
        ):
            evaluator.sub_inplace(total, ct)  # (a + b) - b' with a fresh b'
        return enc

    with pytest.raises(RosterError, match="claims 2"):
        solo_keys.release(isolate_a(1).to_bytes())  # claims a and b, holds a (and b - b')
    enc = isolate_a(2)
    enc.contributors = ("a",)
    with pytest.raises(RosterError, match="min_clients=2"):
        solo_keys.release(enc.to_bytes(), min_clients=2)  # honest claim, too few
    # Under the default policy the key holder refuses it without being asked.
    holder = secagg.KeyHolder.from_bytes(solo_keys.to_bytes())
    holder.min_clients = 2
    enc = isolate_a(3)
    enc.contributors = ("a",)
    with pytest.raises(RosterError, match="min_clients=2"):
        holder.release(enc.to_bytes())


def test_contributor_claims_must_match_the_encrypted_roster(solo_keys: secagg.KeyHolder) -> None:
    claims = [("a", "c"), ("a",), ("a", "b", "c"), ("b", "a", "c")]
    for round_id, claim in enumerate(claims, start=1):
        enc = _aggregate(solo_keys, ["a", "b"], round_id=round_id)
        forged = secagg.EncryptedAggregate.from_bytes(enc.to_bytes(), solo_keys)
        forged.contributors = claim
        with pytest.raises(RosterError, match="encrypted roster lists 2 clients"):
            solo_keys.release(forged, min_clients=1)
    enc = _aggregate(solo_keys, ["a", "b"], round_id=len(claims) + 1)
    forged = secagg.EncryptedAggregate.from_bytes(enc.to_bytes(), solo_keys)
    forged.contributors = ("b", "a")  # order does not matter
    assert sorted(solo_keys.release(forged).contributors) == ["a", "b"]


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


@pytest.mark.parametrize(
    "second_weight",
    [3.0, 2.0 * (1 + 1e-6)],
    ids=["differs-by-0.125", "differs-by-2.5e-7"],
)
def test_chunks_mixed_from_aggregates_with_other_weights_are_refused(
    small_keys: secagg.KeyHolder, second_weight: float
) -> None:
    # Same contributors, same round, different weights: the weight slot is all that
    # tells the chunks apart. An honest sum's chunks agree on it to within the CKKS
    # noise (~1e-11), so even a 2.5e-7 difference must be refused. (A loose 0.25
    # tolerance once let the 0.125 case through.)
    numel = small_keys.preset.values_per_chunk + 5
    first = _aggregate(small_keys, ["a", "b"], numel=numel, weight=2.0, weight_bound=16.0)
    second = _aggregate(
        small_keys, ["a", "b"], numel=numel, weight=second_weight, weight_bound=16.0
    )
    assert len(first.ciphertexts) == len(second.ciphertexts) == 2
    assert 2 * (second_weight - 2.0) / 16.0 > 1e3 * 4 * small_keys.preset.noise_bound(2)
    second.ciphertexts[1] = first.ciphertexts[1]
    with pytest.raises(RosterError, match="different weight sums"):
        small_keys.release(second.to_bytes())


def test_honest_multi_chunk_sums_pass_the_tight_tolerance(small_keys: secagg.KeyHolder) -> None:
    # The same check must not refuse honest sums: many chunks, all roster clients.
    numel = 6 * small_keys.preset.values_per_chunk + 1
    enc = _aggregate(small_keys, ROSTER, numel=numel, weight=3.0, weight_bound=7.0)
    assert len(enc.ciphertexts) == 7
    release = small_keys.release(enc)
    assert release.contributors == tuple(ROSTER)
    assert release.weight_sum == pytest.approx(9.0 / 7.0, abs=7 * release.flooding_std)


@pytest.mark.parametrize("how", ["header-bytes", "constructed"])
def test_ciphertexts_relabelled_as_the_next_round_are_refused(
    small_keys: secagg.KeyHolder, how: str
) -> None:
    # The server replays round-4 ciphertexts as round 5 (which the key holder has not
    # released yet): only the encrypted round tag tells.
    honest = _aggregate(small_keys, ["a", "b"], round_id=4, numel=500)
    if how == "header-bytes":
        relabelled: secagg.EncryptedAggregate | bytes = _with_header(honest.to_bytes(), round_id=5)
        assert secagg.EncryptedAggregate.from_bytes(relabelled, small_keys).round_id == 5
    else:
        relabelled = secagg.EncryptedAggregate(**{**_fields(honest), "round_id": 5})
    with pytest.raises(RosterError, match="round tags do not match round 5"):
        small_keys.release(relabelled)
    # The refusal spent budget (before decrypting) but not round 5: a forged relabel must
    # not block the honest round-5 sum.
    assert (small_keys.last_released_round, small_keys.decryptions_used) == (-1, 1)
    assert small_keys.release(_aggregate(small_keys, ["a", "b"], round_id=5)).round_id == 5


def test_ciphertexts_relabelled_as_an_unreleased_older_round_are_refused(
    small_keys: secagg.KeyHolder,
) -> None:
    honest = _aggregate(small_keys, ["a", "b", "c"], round_id=9, numel=500)
    with pytest.raises(RosterError, match="round tags"):
        small_keys.release(_with_header(honest.to_bytes(), round_id=2))


def test_chunks_mixed_from_two_rounds_are_refused(small_keys: secagg.KeyHolder) -> None:
    # Same contributors, same weights, same layout: only the round tag differs.
    numel = 2 * small_keys.preset.values_per_chunk + 5
    first = _aggregate(small_keys, ["a", "b"], numel=numel, round_id=1)
    second = _aggregate(small_keys, ["a", "b"], numel=numel, round_id=2)
    second.ciphertexts[2] = first.ciphertexts[2]
    with pytest.raises(RosterError, match="round tags do not match round 2"):
        small_keys.release(second)


REORDERINGS: dict[str, Callable[[list[Any]], list[Any]]] = {
    "swap-0-1": lambda c: [c[1], c[0], *c[2:]],
    "swap-1-2": lambda c: [c[0], c[2], c[1]],
    "reverse": lambda c: c[::-1],
    "first-twice": lambda c: [c[0], c[0], c[2]],
    "last-twice": lambda c: [c[0], c[2], c[2]],
}


@pytest.mark.parametrize("reorder", sorted(REORDERINGS))
def test_reordered_or_repeated_chunks_are_refused(
    small_keys: secagg.KeyHolder, reorder: str
) -> None:
    numel = 2 * small_keys.preset.values_per_chunk + 5
    enc = _aggregate(small_keys, ["a", "c"], numel=numel)
    assert len(enc.ciphertexts) == 3
    enc.ciphertexts = REORDERINGS[reorder](list(enc.ciphertexts))
    with pytest.raises(RosterError, match="chunk tags"):
        small_keys.release(enc.to_bytes())


def test_release_refuses_a_weight_sum_drowned_by_flooding() -> None:
    # Preset "wide" floods a 1-client sum with σ ≈ 0.06; a normalised weight sum of
    # 0.001 is pure noise after flooding, and dividing by it would give a meaningless
    # (often sign-flipped) mean. The key holder must refuse: the flooded sum falls below
    # its 10 σ floor unless the noise draws a 10-sigma outlier.
    holder = secagg.KeyHolder.generate("wide", min_clients=1)
    sigma = holder.flooding_std(1)
    assert 0.001 < sigma < 0.1
    for round_id in range(1, 6):
        agg = secagg.Aggregator(
            holder.server_context(), round_id=round_id, roster=ROSTER, min_clients=1
        )
        agg.add(_encrypt(holder, "a", weight=1.0, weight_bound=1000.0, round_id=round_id))
        with pytest.raises(ReleaseError, match="weight sum") as info:
            holder.release(agg.finalize())
        assert type(info.value) is ReleaseError  # not a roster or round refusal
        assert holder.last_released_round == -1  # a refusal releases nothing: no round spent
        assert holder.decryptions_used == round_id  # but the decryption budget is spent
    # A usable weight sum (1.0, about 16 σ) is released, and close to the truth.
    agg = secagg.Aggregator(holder.server_context(), round_id=6, roster=ROSTER, min_clients=1)
    agg.add(_encrypt(holder, "a", weight=1.0, weight_bound=1.0, round_id=6))
    release = holder.release(agg.finalize())
    assert release.weight_sum >= 10 * sigma
    assert abs(release.weight_sum - 1.0) <= 7 * sigma
    assert release.mean_error_std == pytest.approx(sigma / release.weight_sum)


def test_released_values_follow_the_honest_aggregate(small_keys: secagg.KeyHolder) -> None:
    enc = _aggregate(small_keys, ["a", "c"], numel=500, weight=3.0, weight_bound=4.0)
    release = small_keys.release(enc)
    exact = (_update(0, 500)["w"].numpy() + _update(2, 500)["w"].numpy()) / 2
    tol = 7 * release.mean_error_std * np.sqrt(1 + exact**2) + 1e-9
    assert (np.abs(release.mean["w"].numpy() - exact) <= tol).all()
    assert release.weight_sum == pytest.approx(1.5, abs=7 * release.flooding_std + 1e-9)


@pytest.mark.parametrize("where", ["release", "encrypt"])
def test_round_ids_beyond_the_round_tag_domain_raise_secagg_errors(
    solo_keys: secagg.KeyHolder, where: str
) -> None:
    if where == "encrypt":
        with pytest.raises(secagg.errors.SecaggError):
            _encrypt(solo_keys, "a", round_id=2**64)
        return
    forged = _with_header(_aggregate(solo_keys, ["a", "b"]).to_bytes(), round_id=2**64)
    with pytest.raises(secagg.errors.SecaggError):
        solo_keys.release(forged)
    # Nothing was spent by the out-of-range id, and the honest rounds stay open.
    assert solo_keys.last_released_round == -1
    assert solo_keys.release(_aggregate(solo_keys, ["a", "b"], round_id=3)).round_id == 3
