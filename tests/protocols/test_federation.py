"""The in-process federation: determinism, HE vs plaintext, dropouts, ledgers, resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from _tiny import release_std, tiny_config

import secagg
import secagg.dp.client
from secagg.errors import CheckpointError, ConfigurationError
from secagg.protocols import Federation, FederationConfig, datasets, load_checkpoint
from secagg.protocols.local import train_round

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def tiny(**changes: Any) -> FederationConfig:
    return tiny_config(**changes)


def _weights_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_same_seed_gives_same_metrics_without_he_and_dp() -> None:
    config = tiny(he=False, dp=False, noise_multiplier=None)
    first = Federation(config).run()
    second = Federation(config).run()
    assert [m.accuracy for m in first.metrics] == [m.accuracy for m in second.metrics]
    assert [m.loss for m in first.metrics] == [m.loss for m in second.metrics]
    assert _weights_close(first.global_state, second.global_state) == 0.0
    other = Federation(dataclasses.replace(config, seed=1)).run()
    assert _weights_close(first.global_state, other.global_state) > 0.0


def test_he_matches_plaintext_within_flooding_tolerance() -> None:
    plain_config = tiny(he=False, dp=False, noise_multiplier=None, rounds=1)
    plain = Federation(plain_config).run()
    federation = Federation(dataclasses.replace(plain_config, he=True))
    encrypted = federation.run()
    assert federation.key_holder is not None
    contributors = len(encrypted.metrics[0].contributors)
    # The released mean differs from the plaintext one by the release's error (rounding of
    # the quantised values, or flooding) over the weight sum; 8 sigma over ~10k weights.
    smallest = min(len(p) for p in federation.partitions) / federation.weight_bound
    tolerance = 8 * release_std(federation, contributors) / (contributors * smallest)
    difference = _weights_close(plain.global_state, encrypted.global_state)
    assert 0.0 < difference < tolerance
    assert abs(plain.final_accuracy - encrypted.final_accuracy) <= 0.05


def test_dp_run_reports_growing_epsilon_per_round() -> None:
    result = Federation(tiny(rounds=3, fraction=1.0, noise_multiplier=1.0)).run()
    eps = [m.epsilon_max for m in result.metrics]
    assert all(e is not None for e in eps)
    assert eps[0] > 0 and eps == sorted(eps) and eps[-1] > eps[0]


def test_skipped_round_leaves_model_and_ledgers_unchanged() -> None:
    # 4 clients sampled, 3 needed, 90% dropout: round 1 cannot complete.
    config = tiny(fraction=1.0, min_clients=3, dropout=0.9, rounds=1, seed=3)
    federation = Federation(config)
    before = {k: v.clone() for k, v in federation.global_state.items()}
    result = federation.run()
    metrics = result.metrics[0]
    assert metrics.status == "skipped"
    assert len(metrics.dropped) >= 2
    assert _weights_close(before, result.global_state) == 0.0
    assert all(client.epsilon() == 0.0 for client in federation.clients)


def test_every_dp_update_stays_within_the_public_update_scale() -> None:
    # The scale is a bound derived from the public recipe; an update beyond it would be
    # refused. Large steps (lr 2, 3 epochs) on purpose: the bound must hold, not be lucky.
    config = tiny(rounds=1, fraction=1.0, he=False, lr=2.0, local_epochs=3)
    federation = Federation(config)
    scale = federation.plan.update_scale
    worst = 0.0
    for client in federation.clients:
        train_round(client, federation.global_state, seed=None)
        update = client.model_update()
        worst = max(worst, max(float(t.abs().max()) for t in update.values()))
        client.discard_round()
    assert 0.0 < worst <= scale
    assert scale < 1e3  # a bound, not a way to switch the check off


def test_an_update_beyond_the_scale_is_refused_at_the_client_and_its_spending_kept() -> None:
    config = tiny(fraction=1.0, rounds=1, min_clients=2)
    federation = Federation(config)
    federation.plan.update_scale = 1e-6  # no DP update is this small: every client refuses
    before = {k: v.clone() for k, v in federation.global_state.items()}
    result = federation.run()
    metrics = result.metrics[0]
    assert metrics.status == "skipped"  # nothing was sent, so nothing was summed
    assert "refused at the client: client-000: UpdateValueError" in metrics.note
    assert _weights_close(before, result.global_state) == 0.0
    # the refusal depends on the DP output: counted, never rolled back
    assert all(client.epsilon() > 0.0 for client in federation.clients)
    assert metrics.epsilon_max is not None and metrics.epsilon_max > 0.0


def test_truncated_uploads_are_rejected_and_the_round_goes_on() -> None:
    config = tiny(fraction=1.0, clients=6, min_clients=2, dropout=0.5, rounds=2, seed=5)
    result = Federation(config).run()
    rejected = [r for m in result.metrics for r in m.rejected]
    assert any(r.startswith("FormatError") for r in rejected)
    assert any(m.status == "completed" for m in result.metrics)


def test_resume_continues_without_losing_rounds_or_privacy(tmp_path: Path) -> None:
    # Bit-identical DP runs need the research-only deterministic mode.
    config = tiny(
        rounds=3, he=False, noise_multiplier=1.0, fraction=1.0, insecure_deterministic=True
    )
    uninterrupted = Federation(config).run()

    first = Federation(config, out_dir=tmp_path)
    first.run(stop_after=1)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.secagg", config_digest=first.plan.digest)
    assert checkpoint.rounds_completed == 1
    resumed = Federation(config, out_dir=tmp_path).run(resume=True)

    assert [m.round for m in resumed.metrics] == [1, 2, 3]
    assert [m.epsilon_max for m in resumed.metrics] == pytest.approx(
        [m.epsilon_max for m in uninterrupted.metrics]
    )
    assert _weights_close(uninterrupted.global_state, resumed.global_state) < 1e-9


def test_resume_refuses_another_configuration(tmp_path: Path) -> None:
    config = tiny(rounds=1, he=False, dp=False, noise_multiplier=None)
    Federation(config, out_dir=tmp_path).run()
    other = dataclasses.replace(config, seed=9)
    with pytest.raises(CheckpointError, match="another configuration"):
        Federation(other, out_dir=tmp_path).run(resume=True)


def test_resume_refuses_weights_of_another_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Same options, but the library now builds the model with other arguments (an upgrade
    # that changed a default): the old weights must not continue under the new model.
    config = tiny(rounds=1, he=False, dp=False, noise_multiplier=None)
    Federation(config, out_dir=tmp_path).run()
    build = datasets._model_kwargs

    def changed(*args: Any) -> dict[str, Any]:
        return {**build(*args), "score_bound": 2.0}

    monkeypatch.setattr(datasets, "_model_kwargs", changed)
    with pytest.raises(CheckpointError, match="another configuration"):
        Federation(config, out_dir=tmp_path).run(resume=True)


def test_attention_analysis_is_dp_noised_and_counted_in_the_ledger() -> None:
    config = tiny(rounds=1, fraction=1.0, attention_analysis=True, noise_multiplier=1.0)
    federation = Federation(config)
    result = federation.run()
    attention = result.attention
    assert attention is not None and attention.weights
    assert len(attention.weights) == len(federation.dataset.unit_names)
    assert attention.noise_multiplier == config.attention_noise_multiplier
    ledger = federation.clients[0].accountant.history  # type: ignore[union-attr]
    assert (config.attention_noise_multiplier, 1.0, 1) in [tuple(h) for h in ledger]


@pytest.mark.parametrize(
    "changes",
    [
        {"clients": 0},
        {"fraction": 0.0},
        {"min_clients": 9},
        {"dropout": 1.0},
        {"dirichlet_alpha": -1.0},
        {"epsilon": 3.0},  # both epsilon and noise_multiplier
        {"dataset": "nope"},
        {"server_optimizer": "sgd"},
        {"accountant": "moments"},
    ],
)
def test_invalid_configuration_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        tiny(**changes)


def test_epsilon_target_plans_sigma_once_for_the_whole_run() -> None:
    config = tiny(rounds=2, fraction=1.0, noise_multiplier=None, epsilon=8.0)
    federation = Federation(config)
    result = federation.run()
    assert federation.noise_multipliers and min(federation.noise_multipliers.values()) > 0
    assert max(m.epsilon_max or 0.0 for m in result.metrics) <= 8.0
    # Each client planned σ for its own sample rate and step count: exactly the target.
    for client in federation.clients:
        steps = config.rounds * client.steps_per_round  # type: ignore[attr-defined]
        sigma = client.noise_multiplier  # type: ignore[attr-defined]
        assert secagg.dp.client.rdp_epsilon([(sigma, client.sample_rate, steps)], 1e-5) == (  # type: ignore[attr-defined]
            pytest.approx(8.0, rel=0.01)
        )


def test_same_seed_same_partitions_and_sampling_different_dp_noise() -> None:
    config = tiny(rounds=2, fraction=0.75, noise_multiplier=1.0)
    first, second = Federation(config), Federation(config)
    assert all((a == b).all() for a, b in zip(first.partitions, second.partitions, strict=True))
    one, two = first.run(), second.run()
    assert [m.sampled for m in one.metrics] == [m.sampled for m in two.metrics]
    assert [m.contributors for m in one.metrics] == [m.contributors for m in two.metrics]
    assert _weights_close(one.global_state, two.global_state) > 1e-3  # fresh noise


@pytest.mark.parametrize("deterministic", [True, False])
def test_the_server_cannot_regenerate_a_clients_dp_noise_from_the_run_seed(
    deterministic: bool,
) -> None:
    """The attack on the first release, written as the server would run it.

    The server knows the run config (seed included), the partitions and the global
    model, so it can re-run a client's local training with every seed the engine derives
    from the run seed. With the DP noise and batch sampling drawn from the OS CSPRNG its
    prediction misses by the DP noise; in the research-only deterministic mode it hits.
    """
    config = tiny(rounds=1, clients=2, fraction=1.0, he=False, insecure_deterministic=deterministic)
    federation = Federation(config)
    start = {k: v.clone() for k, v in federation.global_state.items()}
    federation.run()
    client = federation.clients[0]
    actual = client.model_update()

    from secagg.protocols.plan import RunPlan

    # The attacker's model of the client: every random draw follows the run seed.
    attacker = RunPlan.load(dataclasses.replace(config, insecure_deterministic=True))
    shadow = attacker.make_client(0, global_state=start)
    train_round(shadow, start, seed=attacker.round_seed(1, 0))
    predicted = shadow.model_update()
    error = max(float((predicted[k] - actual[k]).abs().max()) for k in actual)
    if deterministic:
        assert error < 1e-6
    else:
        assert error > 1e-3


def test_non_private_clients_train_every_local_epoch() -> None:
    # The first release's --no-dp client ran one pass whatever `local_epochs` said.
    runs = {}
    for epochs in (1, 3):
        config = tiny_config(dp=False, he=False, rounds=1, fraction=1.0, local_epochs=epochs)
        federation = Federation(config)
        client = federation.clients[0]
        with client.round(federation.global_state, seed=1) as batches:
            seen = sum(len(targets) for _, targets in batches)
        assert seen == epochs * client.num_examples
        runs[epochs] = Federation(config).run().global_state
    assert max(float((runs[1][k] - runs[3][k]).abs().max()) for k in runs[1]) > 1e-4


def test_the_non_private_baseline_gets_its_own_recipe_not_the_dp_one() -> None:
    private = secagg.protocols.default_config("digits")
    baseline = secagg.protocols.default_config("digits", dp=False)
    assert baseline.epsilon is None and baseline.noise_multiplier is None
    assert (baseline.client_optimizer, baseline.batch_size) == ("adam", 32)
    assert (private.client_optimizer, private.lr) != (baseline.client_optimizer, baseline.lr)
