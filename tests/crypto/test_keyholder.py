"""Release policy: decryption budget, one release per round, min_clients, flooding, state file."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import secagg
from secagg.crypto import wire
from secagg.crypto.release import flooding_std
from secagg.dp.tensors import to_torch
from secagg.errors import (
    ConfigurationError,
    ContextError,
    DecryptionBudgetExceededError,
    FormatError,
    IntegrityError,
    KeyMismatchError,
    ReleaseError,
    RosterError,
    RoundAlreadyReleasedError,
    SecaggError,
)

ROSTER = ["a", "b", "c"]


def _update(seed: int, numel: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": (torch.rand(numel, generator=gen, dtype=torch.float64) * 2 - 1) * 0.9}


def _encrypt(
    fed: secagg.FederationKeys,
    cid: str,
    *,
    numel: int = 100,
    weight: float = 1.0,
    weight_bound: float = 1.0,
    round_id: int = 1,
    seed: int | None = None,
) -> bytes:
    return secagg.encrypt_update(
        fed.material,
        _update(ROSTER.index(cid) if seed is None else seed, numel),
        signing_key=fed.signing_keys[cid],
        weight=weight,
        weight_bound=weight_bound,
        round_id=round_id,
        roster=ROSTER,
    )


def _aggregate(
    fed: secagg.FederationKeys,
    clients: Sequence[str],
    *,
    min_clients: int = 1,
    round_id: int = 1,
    **kwargs: Any,
) -> secagg.EncryptedAggregate:
    agg = secagg.Aggregator(
        fed.server_context(),
        registry=fed.registry,
        round_id=round_id,
        roster=ROSTER,
        min_clients=min_clients,
    )
    for cid in clients:
        agg.add(_encrypt(fed, cid, round_id=round_id, **kwargs))
    return agg.finalize()


def _with_header(data: bytes, magic: bytes, **changes: Any) -> bytes:
    """Rewrite fields of a frame's header (what whoever holds the bytes can do)."""
    frame = wire.unpack_frame(data, magic)
    header = {k: v for k, v in frame.header.items() if k != "chunk_sizes"}
    assert set(changes) <= set(header)
    header.update(changes)
    return wire.pack_frame(magic, header, frame.chunks)


def _state(holder: secagg.KeyHolder) -> tuple[int, int, int]:
    return holder.decryptions_used, holder.last_released_round, holder.refused


def _weight_tolerance(release: secagg.ReleasedAggregate, preset: secagg.Preset) -> float:
    """7 flooding deviations (approximate presets) or the weights' rounding (exact)."""
    rounding = len(release.contributors) / preset.levels if preset.exact else 0.0
    return 7 * release.flooding_std + rounding + 1e-9


class _Spy:
    """Wraps the secret key's SEAL decryptor to run a check at every decryption."""

    def __init__(self, decryptor: Any, check: Callable[[], None]) -> None:
        self._decryptor = decryptor
        self._check = check

    def decrypt(self, ciphertext: Any, plaintext: Any) -> None:
        self._check()
        self._decryptor.decrypt(ciphertext, plaintext)


# ---------------------------------------------------------------------------- budget
def test_decryption_budget_is_enforced_and_persisted(
    small_federation: secagg.FederationKeys, tmp_path: Path
) -> None:
    fed = small_federation
    path = tmp_path / "holder.secagg"
    holder = fed.key_holder(decryption_budget=3, state_path=path)
    rounds = {r: _aggregate(fed, ["a", "b"], round_id=r) for r in (1, 2, 3, 4)}
    assert all(enc.num_chunks == 1 for enc in rounds.values())
    for spent in (1, 2, 3):
        holder.release(rounds[spent])
        assert holder.decryptions_used == spent
        reloaded = secagg.KeyHolder.open(fed.material, path)
        assert reloaded.decryptions_used == spent
        assert reloaded.last_released_round == spent
    assert holder.decryptions_left == 0
    with pytest.raises(DecryptionBudgetExceededError, match="rotate"):
        holder.release(rounds[4])  # a new round, but no budget left
    assert (holder.decryptions_used, holder.last_released_round) == (3, 3)
    reloaded = secagg.KeyHolder.open(fed.material, path)
    assert (reloaded.decryptions_used, reloaded.decryptions_left) == (3, 0)
    assert reloaded.last_released_round == 3
    with pytest.raises(DecryptionBudgetExceededError):
        reloaded.release(rounds[4].to_bytes())  # reopening the state does not reset it


def test_release_needing_more_than_the_budget_left_spends_nothing(
    small_federation: secagg.FederationKeys, tmp_path: Path
) -> None:
    fed = small_federation
    path = tmp_path / "holder.secagg"
    holder = fed.key_holder(decryption_budget=3, state_path=path)
    holder.release(_aggregate(fed, ["a", "b"]))  # 1 chunk, round 1
    multi = _aggregate(fed, ["a", "b"], numel=3 * fed.material.preset.slots, round_id=2)
    assert multi.num_chunks == 4
    with pytest.raises(DecryptionBudgetExceededError):
        holder.release(multi)
    assert (holder.decryptions_used, holder.last_released_round) == (1, 1)
    reloaded = secagg.KeyHolder.open(fed.material, path)
    assert (reloaded.decryptions_used, reloaded.last_released_round) == (1, 1)
    # Round 2 is still open for an aggregate that fits the budget.
    assert reloaded.release(_aggregate(fed, ["a", "c"], round_id=2)).round_id == 2


def test_budget_is_spent_on_disk_before_anything_is_decrypted(
    small_federation: secagg.FederationKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = small_federation
    path = tmp_path / "holder.secagg"
    holder = fed.key_holder(state_path=path)
    seen: list[tuple[int, int]] = []

    def check() -> None:
        on_disk = secagg.KeyHolder.open(fed.material, path)
        seen.append((on_disk.decryptions_used, on_disk.last_released_round))

    session = fed.material.session
    monkeypatch.setattr(session, "decryptor", _Spy(session.decryptor, check))
    enc = _aggregate(fed, ["a", "b"], numel=fed.material.preset.slots + 10, round_id=5)
    holder.release(enc)
    # Both chunks were decrypted with the budget already written; the round is spent
    # (written) only once the release passed every check.
    assert seen == [(2, -1), (2, -1)]
    assert _state(secagg.KeyHolder.open(fed.material, path)) == (2, 5, 0)


def test_flooding_grows_with_the_square_root_of_the_budget(
    approx_federation: secagg.FederationKeys,
) -> None:
    small = approx_federation.key_holder(decryption_budget=4)
    large = approx_federation.key_holder(decryption_budget=400)
    assert large.flooding_std(2) == pytest.approx(10 * small.flooding_std(2))


@pytest.mark.parametrize("preset", ["approx", "wide", "precise"])
def test_flooding_std_is_sqrt_12_tau_times_2_to_the_s_over_2_times_t(preset: str) -> None:
    fed = secagg.FederationKeys.generate(["a", "b"], preset=preset)
    holder = fed.key_holder(decryption_budget=1000, statistical_security=40)
    t = fed.material.preset.noise_bound(5)
    assert holder.flooding_std(5) == pytest.approx(np.sqrt(12 * 1000) * 2.0**20 * t)
    assert flooding_std(t, decryption_budget=1000, statistical_security=40) == pytest.approx(
        holder.flooding_std(5)
    )


# ---------------------------------------------------------------------------- one release per round
def test_round_already_released_is_a_release_error_not_a_roster_error() -> None:
    assert issubclass(RoundAlreadyReleasedError, ReleaseError)
    assert not issubclass(RoundAlreadyReleasedError, RosterError)
    assert issubclass(IntegrityError, ReleaseError)
    assert not issubclass(IntegrityError, ValueError)  # a forgery is not a bad argument
    assert secagg.errors.RoundAlreadyReleasedError is RoundAlreadyReleasedError


def test_an_aggregate_is_released_once_and_older_rounds_never(
    small_federation: secagg.FederationKeys,
) -> None:
    fed = small_federation
    holder = fed.key_holder()
    assert holder.last_released_round == -1
    round5 = _aggregate(fed, ["a", "b"], round_id=5)
    assert holder.release(round5).round_id == 5
    assert (holder.last_released_round, holder.decryptions_used) == (5, 1)
    refused: dict[str, Callable[[], object]] = {
        "same object": lambda: holder.release(round5),
        "same bytes": lambda: holder.release(round5.to_bytes()),
        "same round, other sum": lambda: holder.release(_aggregate(fed, ["b", "c"], round_id=5)),
        "older round": lambda: holder.release(_aggregate(fed, ["a", "c"], round_id=4)),
        "round 0": lambda: holder.release(_aggregate(fed, ["a", "b"], round_id=0)),
    }
    for name, call in refused.items():
        with pytest.raises(RoundAlreadyReleasedError, match="round") as info:
            call()
        assert "5" in str(info.value), name
        assert (holder.last_released_round, holder.decryptions_used) == (5, 1), name
    # A later round (gaps allowed) is released, and becomes the new floor.
    assert holder.release(_aggregate(fed, ["a", "c"], round_id=7)).round_id == 7
    with pytest.raises(RoundAlreadyReleasedError):
        holder.release(_aggregate(fed, ["a", "b"], round_id=6))
    assert holder.last_released_round == 7


def test_state_file_remembers_the_last_released_round_and_the_policy(
    small_federation: secagg.FederationKeys, tmp_path: Path
) -> None:
    fed = small_federation
    path = tmp_path / "holder.secagg"
    holder = fed.key_holder(min_clients=3, state_path=path)
    loaded = secagg.KeyHolder.open(fed.material, path)
    assert (loaded.min_clients, loaded.last_released_round) == (3, -1)

    holder.release(_aggregate(fed, ROSTER, round_id=8))
    reloaded = secagg.KeyHolder.open(fed.material, path)
    assert (reloaded.min_clients, reloaded.last_released_round, reloaded.decryptions_used) == (
        3,
        8,
        1,
    )
    for round_id in (8, 2):
        with pytest.raises(RoundAlreadyReleasedError):
            reloaded.release(_aggregate(fed, ROSTER, round_id=round_id))
    with pytest.raises(RosterError, match="min_clients=3"):  # the policy survived the reload
        reloaded.release(_aggregate(fed, ["a", "b"], round_id=9))
    # A refusal by policy spends neither budget nor its round (checked before decrypting).
    assert _state(secagg.KeyHolder.open(fed.material, path)) == (1, 8, 0)
    assert reloaded.release(_aggregate(fed, ROSTER, round_id=9)).round_id == 9
    assert secagg.KeyHolder.open(fed.material, path).last_released_round == 9
    # The in-memory form round-trips the same state.
    again = secagg.KeyHolder.from_bytes(fed.material, reloaded.to_bytes())
    assert (again.min_clients, again.last_released_round, again.decryptions_used) == (3, 9, 2)
    assert again.registry.digest == fed.registry.digest


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("min_clients", 0),
        ("min_clients", 65),
        ("min_clients", "2"),
        ("last_released_round", -2),
        ("decryptions_used", -1),
        ("decryptions_used", 1 << 17),  # more than the budget
        ("decryption_budget", 0),
        ("statistical_security", 29),
        ("refused", -1),
        ("fingerprint", "0" * 64),
    ],
)
def test_state_file_with_an_impossible_policy_or_counter_is_refused(
    small_federation: secagg.FederationKeys, name: str, value: object
) -> None:
    data = small_federation.key_holder().to_bytes()
    with pytest.raises(ContextError):
        secagg.KeyHolder.from_bytes(
            small_federation.material, _with_header(data, wire.MAGIC_KEY_HOLDER, **{name: value})
        )


def test_state_file_of_another_key_is_refused(
    small_federation: secagg.FederationKeys, tmp_path: Path
) -> None:
    other = secagg.FederationKeys.generate(ROSTER, preset="small")
    path = tmp_path / "holder.secagg"
    small_federation.key_holder(state_path=path)
    with pytest.raises(ContextError, match="another key"):
        secagg.KeyHolder.open(other.material, path)


@pytest.mark.parametrize("min_clients", [0, 65, 2.0, "2", None])
def test_key_holder_refuses_a_policy_outside_the_preset(
    small_federation: secagg.FederationKeys, min_clients: Any
) -> None:
    with pytest.raises(ConfigurationError, match="min_clients"):
        small_federation.key_holder(min_clients=min_clients)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decryption_budget": "x"}, "decryption_budget"),
        ({"decryption_budget": 0}, "decryption_budget"),
        ({"decryption_budget": 1.5}, "decryption_budget"),
        ({"statistical_security": 29}, "statistical_security"),
        ({"keys": None}, "KeyMaterial"),
        ({"registry": {"a": b"\0" * 32}}, "ClientRegistry"),
    ],
)
def test_key_holder_arguments_of_the_wrong_type_or_range_are_refused(
    small_federation: secagg.FederationKeys, kwargs: dict[str, Any], match: str
) -> None:
    args: dict[str, Any] = {
        "keys": small_federation.material,
        "registry": small_federation.registry,
        **kwargs,
    }
    keys = args.pop("keys")
    with pytest.raises(ConfigurationError, match=match) as info:
        secagg.KeyHolder(keys, **args)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("path", [None, "", 3])
def test_key_holder_open_refuses_a_path_that_is_not_one(
    small_federation: secagg.FederationKeys, path: Any
) -> None:
    with pytest.raises(ContextError):
        secagg.KeyHolder.open(small_federation.material, path)


# ---------------------------------------------------------------------------- min_clients
def test_release_refuses_fewer_contributors_than_min_clients(
    small_federation: secagg.FederationKeys,
) -> None:
    fed = small_federation
    holder = fed.key_holder(min_clients=1)
    with pytest.raises(RosterError, match="min_clients=3"):
        holder.release(_aggregate(fed, ["a", "b"], round_id=1), min_clients=3)
    assert _state(holder) == (0, -1, 0)  # refused by policy: nothing spent
    enc = _aggregate(fed, ["a", "b"], round_id=2)
    assert holder.release(enc, min_clients=2).contributors == ("a", "b")
    single = _aggregate(fed, ["a"], round_id=3)
    assert holder.release(single).contributors == ("a",)
    with pytest.raises(RosterError, match="min_clients=2"):
        holder.release(_aggregate(fed, ["a"], round_id=4), min_clients=2)
    # The aggregate's own min_clients (set by the aggregator) is honoured too.
    demanding = _aggregate(fed, ["a", "b"], round_id=5)
    demanding.min_clients = 3
    with pytest.raises(RosterError, match="min_clients=3"):
        holder.release(demanding)
    with pytest.raises(ConfigurationError):
        holder.release(_aggregate(fed, ["a", "b"], round_id=6), min_clients=0)


def test_default_policy_refuses_a_single_client_sum_whatever_the_server_asks(
    small_federation: secagg.FederationKeys,
) -> None:
    fed = small_federation
    holder = fed.key_holder()
    assert holder.min_clients == 2
    single = _aggregate(fed, ["a"], min_clients=1)
    assert single.min_clients == 1
    with pytest.raises(RosterError, match="min_clients=2"):
        holder.release(single, min_clients=1)
    with pytest.raises(RosterError, match="min_clients=2"):
        holder.release(_aggregate(fed, ["b"], round_id=2).to_bytes())
    assert _state(holder) == (0, -1, 0)


def test_key_holder_policy_overrides_the_aggregate_and_the_caller(
    small_federation: secagg.FederationKeys,
) -> None:
    fed = small_federation
    holder = fed.key_holder(min_clients=3)
    pair = _aggregate(fed, ["a", "b"], round_id=1)
    assert pair.min_clients == 1
    with pytest.raises(RosterError, match="2 distinct clients, fewer than min_clients=3"):
        holder.release(pair, min_clients=1)
    forged = _with_header(
        _aggregate(fed, ["a", "c"], round_id=2).to_bytes(), wire.MAGIC_AGGREGATE, min_clients=1
    )
    with pytest.raises(RosterError, match="min_clients=3"):
        holder.release(forged)
    nonsense = _with_header(
        _aggregate(fed, ["a", "c"], round_id=2).to_bytes(), wire.MAGIC_AGGREGATE, min_clients=-5
    )
    with pytest.raises(FormatError, match="min_clients"):
        holder.release(nonsense)
    assert holder.release(_aggregate(fed, ROSTER, round_id=3)).contributors == tuple(ROSTER)


def test_release_refuses_an_aggregate_of_another_key(
    small_federation: secagg.FederationKeys,
) -> None:
    holder = small_federation.key_holder()
    other = secagg.FederationKeys.generate(ROSTER, preset="small")
    enc = _aggregate(other, ["a", "b"])
    with pytest.raises(KeyMismatchError):
        holder.release(enc)
    with pytest.raises(KeyMismatchError):
        holder.release(enc.to_bytes())
    assert _state(holder) == (0, -1, 0)


def test_release_refuses_clients_the_key_holder_did_not_register(
    small_federation: secagg.FederationKeys,
) -> None:
    # The key holder's own registry decides whose sums it releases: here it knows a and b.
    fed = small_federation
    holder = secagg.KeyHolder(
        fed.material,
        registry=secagg.ClientRegistry({c: fed.signing_keys[c] for c in ("a", "b")}),
        min_clients=2,
    )
    with pytest.raises(RosterError, match="unregistered"):
        holder.release(_aggregate(fed, ["a", "c"]))
    assert holder.release(_aggregate(fed, ["a", "b"], round_id=2)).contributors == ("a", "b")


# ---------------------------------------------------------------------------- flooding and values
def test_release_refuses_a_weight_sum_drowned_by_flooding() -> None:
    # Preset "wide" floods a 1-client sum with σ ≈ 0.05; a normalised weight sum of 0.001
    # is pure noise after flooding, and dividing by it would give a meaningless (often
    # sign-flipped) mean. The key holder refuses it, after decrypting (budget spent).
    fed = secagg.FederationKeys.generate(ROSTER, preset="wide")
    holder = fed.key_holder(min_clients=1)
    sigma = holder.flooding_std(1)
    assert 0.001 < sigma < 0.1
    for round_id in range(1, 6):
        agg = _aggregate(fed, ["a"], round_id=round_id, weight=1.0, weight_bound=1000.0)
        with pytest.raises(ReleaseError, match="weight sum") as info:
            holder.release(agg)
        assert type(info.value) is ReleaseError  # not a roster, round or integrity refusal
        assert holder.last_released_round == -1  # a refusal releases nothing: no round spent
        assert holder.decryptions_used == round_id  # but the decryption budget is spent
    release = holder.release(_aggregate(fed, ["a"], round_id=6))
    assert release.weight_sum >= 10 * sigma
    assert abs(release.weight_sum - 1.0) <= 7 * sigma
    assert release.mean_error_std == pytest.approx(sigma / release.weight_sum)


def test_released_values_follow_the_honest_weighted_mean(
    small_federation: secagg.FederationKeys,
) -> None:
    fed = small_federation
    holder = fed.key_holder()
    enc = _aggregate(fed, ["a", "c"], numel=500, weight=3.0, weight_bound=4.0)
    release = holder.release(enc)
    exact = (_update(0, 500)["w"].numpy() + _update(2, 500)["w"].numpy()) / 2
    tol = 7 * release.mean_error_std * np.sqrt(1 + exact**2) + 1e-9
    assert (np.abs(release.mean["w"] - exact) <= tol).all()
    preset = fed.material.preset
    assert release.weight_sum == pytest.approx(1.5, abs=_weight_tolerance(release, preset))
    assert to_torch(release.mean, release.spec)["w"].dtype == torch.float64


def test_honest_multi_chunk_sums_of_the_whole_roster_are_released(
    small_federation: secagg.FederationKeys,
) -> None:
    fed = small_federation
    numel = 6 * fed.material.preset.slots + 1
    enc = _aggregate(fed, ROSTER, numel=numel, weight=3.0, weight_bound=7.0)
    assert enc.num_chunks == 7
    release = fed.key_holder().release(enc)
    assert release.contributors == tuple(ROSTER)
    assert release.weight_sum == pytest.approx(
        9.0 / 7.0, abs=_weight_tolerance(release, fed.material.preset)
    )


def test_exact_release_refuses_a_zero_weight_sum(small_federation: secagg.FederationKeys) -> None:
    # A normalised weight of 1e-300 quantises to level 0 for certain: an exact sum of
    # zero weights is not divided by (after decrypting: the budget is spent).
    fed = small_federation
    holder = fed.key_holder()
    enc = _aggregate(fed, ["a", "b"], weight=1e-300, weight_bound=1.0)
    with pytest.raises(ReleaseError, match="weight sum") as info:
        holder.release(enc)
    assert type(info.value) is ReleaseError
    assert (holder.decryptions_used, holder.last_released_round) == (1, -1)


def test_exact_presets_release_sums_with_no_flooding(
    small_federation: secagg.FederationKeys,
) -> None:
    # The integer sums are exact: two releases of equal quantised sums are equal, and
    # nothing but the clients' own rounding separates the mean from the exact one.
    fed = small_federation
    holder = fed.key_holder()
    release = holder.release(_aggregate(fed, ["a", "b"], numel=300))
    assert release.flooding_std == 0.0
    assert release.quantization_std == fed.material.preset.quantization_std > 0
    exact = (_update(0, 300)["w"].numpy() + _update(1, 300)["w"].numpy()) / 2
    step = fed.material.preset.quantization_step
    assert float(np.abs(release.mean["w"] - exact).max()) <= 2 * step
    assert release.weight_sum == 2.0


@pytest.mark.parametrize("where", ["release", "encrypt", "aggregator"])
def test_round_ids_beyond_2_to_the_63_raise_secagg_errors(
    small_federation: secagg.FederationKeys, where: str
) -> None:
    fed = small_federation
    holder = fed.key_holder(min_clients=1)
    if where == "encrypt":
        with pytest.raises(ConfigurationError, match="round_id"):
            _encrypt(fed, "a", round_id=2**63)
        return
    if where == "aggregator":
        with pytest.raises(ConfigurationError, match="round_id"):
            secagg.Aggregator(
                fed.server_context(), registry=fed.registry, round_id=2**64, roster=ROSTER
            )
        return
    honest = _aggregate(fed, ["a", "b"])
    for round_id in (2**63, 2**64, -1):
        forged = _with_header(honest.to_bytes(), wire.MAGIC_AGGREGATE, round_id=round_id)
        with pytest.raises(SecaggError):
            holder.release(forged)
    assert _state(holder) == (0, -1, 0)
    assert holder.release(_aggregate(fed, ["a", "b"], round_id=3)).round_id == 3


def test_key_holder_state_file_is_private(
    small_federation: secagg.FederationKeys, tmp_path: Path
) -> None:
    path = tmp_path / "holder.secagg"
    old_umask = os.umask(0)
    try:
        small_federation.key_holder(state_path=path)
    finally:
        os.umask(old_umask)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["holder.secagg"]  # no temp file left
    assert small_federation.material.mac_key not in path.read_bytes()  # state holds no key
