"""The DP client: real Opacus training on bundled data, exact accounting, persistent ledgers."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import secagg
from secagg.dp.client import RDP_ORDERS, PrivateClient, ResearchOnlyWarning, plan_noise_multiplier
from secagg.errors import CheckpointError, ConfigurationError, PrivacyBudgetExceededError
from secagg.protocols.datasets import load_dataset

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def _client(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float = 0.5,
    batch_size: int = 64,
    **kwargs: Any,
) -> PrivateClient:
    loader = DataLoader(
        TensorDataset(x, y), batch_size=batch_size, generator=torch.Generator().manual_seed(0)
    )
    options: dict[str, Any] = {"noise_multiplier": 0.8, "max_grad_norm": 1.0, **kwargs}
    return PrivateClient(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        data_loader=loader,
        **options,
    )


def _train(
    client: PrivateClient, global_state: dict[str, torch.Tensor], *, seed: int | None = None
) -> list[float]:
    """The user's loop: every Poisson batch is stepped, an empty one included."""
    losses = []
    with client.round(global_state, seed=seed) as batches:
        for inputs, targets in batches:
            client.optimizer.zero_grad()
            loss = nn.functional.cross_entropy(client.module(inputs), targets)
            loss.backward()
            client.optimizer.step()
            if len(targets):
                losses.append(float(loss))
    return losses


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _opacus_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Opacus's own RDP accountant, at secagg's documented orders."""
    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta, alphas=list(RDP_ORDERS)))


def _text_model_on_leads(data: Any) -> tuple[nn.Module, torch.Tensor]:
    """The default text model on each article's first 64 tokens (fast enough for CI)."""
    from secagg.models import TextAttentionClassifier

    kwargs = {**data.default_model_kwargs, "max_len": 64}
    return TextAttentionClassifier(**kwargs), data.x_train[:, :64].contiguous()


@pytest.mark.parametrize(
    ("dataset", "lr", "rounds", "batch_size", "epochs"),
    [
        ("digits", 1.0, 4, 64, 1),
        ("breast_cancer", 0.5, 3, 64, 1),
        ("bbc_news", 2.0, 4, 200, 2),
    ],
)
def test_each_default_model_learns_under_dp_on_real_data(
    dataset: str, lr: float, rounds: int, batch_size: int, epochs: int
) -> None:
    data = load_dataset(dataset, seed=0, max_examples=1000 if dataset == "bbc_news" else 600)
    torch.manual_seed(0)
    if data.kind == "text":
        model, inputs = _text_model_on_leads(data)
    else:
        model, inputs = data.default_model(), data.x_train
    # Learnability, not randomness, is under test: the research-only seeded mode keeps the
    # noise (and so the verdict) the same on every run.
    client = _client(
        model,
        inputs,
        data.y_train,
        lr=lr,
        batch_size=batch_size,
        epochs_per_round=epochs,
        max_physical_batch_size=100,
        randomness="deterministic",
    )
    state = _state(model)
    first_losses: list[float] = []
    last_losses: list[float] = []
    for r in range(rounds):
        losses = _train(client, state, seed=r)
        if r == 0:
            first_losses = losses
        last_losses = losses
        client.commit_round()
        state = _state(model)
    assert sum(last_losses[-3:]) / 3 < sum(first_losses[:3]) / 3
    # The reported ε is exactly what Opacus's RDP accountant gives for the same
    # sampling rate, noise multiplier and number of steps.
    steps = sum(h[2] for h in client.accountant.history)
    assert steps == rounds * epochs * round(1 / client.sample_rate)
    expected = _opacus_epsilon([(0.8, client.sample_rate, steps)], client.delta)
    assert client.epsilon() == pytest.approx(expected, rel=1e-9)


def test_reported_epsilon_equals_opacus_accountant() -> None:
    torch.manual_seed(1)
    x, y = torch.randn(256, 5), torch.randint(0, 2, (256,))
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    client = _client(model, x, y, batch_size=32, noise_multiplier=1.1, delta=1e-6)
    state = _state(model)
    epsilons = []
    for _ in range(3):
        _train(client, state)
        epsilons.append(client.commit_round())
        state = _state(model)
    q = 32 / 256
    for rounds_done, eps in enumerate(epsilons, start=1):
        expected = _opacus_epsilon([(1.1, q, 8 * rounds_done)], 1e-6)
        assert eps == pytest.approx(expected, rel=1e-9)
    assert epsilons == sorted(epsilons) and epsilons[0] < epsilons[-1]


def test_full_batch_client_plans_and_reports_exact_epsilon() -> None:
    torch.manual_seed(3)
    x, y = torch.randn(120, 4), torch.randint(0, 2, (120,))
    plan = {"noise_multiplier": None, "target_epsilon": 4.0, "planned_rounds": 3}
    exact = _client(nn.Linear(4, 2), x, y, batch_size=4096, **plan)
    loose = _client(nn.Linear(4, 2), x, y, batch_size=4096, accountant="rdp", **plan)
    assert exact.sample_rate == 1.0 and exact.noise_multiplier < 0.95 * loose.noise_multiplier
    state = _state(exact.module)
    for _ in range(3):
        _train(exact, state)
        exact.commit_round()
    history = [tuple(h) for h in exact.accountant.history]
    assert history == [(exact.noise_multiplier, 1.0, 3)]
    # Spent exactly the target under the exact accountant; RDP would call it more.
    assert exact.epsilon() == secagg.dp.accounting.gaussian_epsilon(history, exact.delta)
    assert 3.99 < exact.epsilon() <= 4.0 < secagg.dp.accounting.rdp_epsilon(history, 1e-5)


def test_target_epsilon_plans_sigma_once_for_the_whole_plan() -> None:
    sigma = plan_noise_multiplier(target_epsilon=2.0, delta=1e-5, sample_rate=0.1, steps=50)
    reached = _opacus_epsilon([(sigma, 0.1, 50)], 1e-5)
    assert reached <= 2.0 and reached > 1.99
    torch.manual_seed(2)
    x, y = torch.randn(200, 4), torch.randint(0, 2, (200,))
    model = nn.Linear(4, 2)
    client = _client(
        model, x, y, batch_size=20, noise_multiplier=None, target_epsilon=2.0, planned_rounds=5
    )
    assert client.noise_multiplier == pytest.approx(sigma)
    state = _state(model)
    for _ in range(5):
        _train(client, state)
        client.commit_round()
        state = _state(model)
    assert client.epsilon() <= 2.0
    with pytest.raises(PrivacyBudgetExceededError):  # a sixth round passes the budget
        _train(client, state)


def test_budget_refusal_leaves_model_and_ledger_unchanged() -> None:
    torch.manual_seed(3)
    x, y = torch.randn(128, 4), torch.randint(0, 2, (128,))
    model = nn.Linear(4, 2)
    client = _client(model, x, y, batch_size=32, noise_multiplier=1.0, epsilon_budget=1e9)
    state = _state(model)
    _train(client, state)
    client.commit_round()
    eps = client.epsilon()
    history = [tuple(h) for h in client.accountant.history]
    client.epsilon_budget = eps + 1e-3  # the next round would pass it
    trained = _state(model)
    with pytest.raises(PrivacyBudgetExceededError, match="nothing changed"):
        _train(client, trained)
    assert [tuple(h) for h in client.accountant.history] == history
    assert all(torch.equal(trained[k], v) for k, v in _state(model).items())
    assert not client.round_pending


def test_discarded_round_forgets_only_its_own_spending() -> None:
    torch.manual_seed(4)
    x, y = torch.randn(128, 4), torch.randint(0, 2, (128,))
    client = _client(nn.Linear(4, 2), x, y, batch_size=32)
    state = _state(client.module)
    _train(client, state)
    committed = client.commit_round()
    _train(client, state)
    assert client.epsilon() > committed
    client.discard_round()
    assert client.epsilon() == committed


def test_reloading_global_weights_keeps_hooks_and_epsilon_growing() -> None:
    torch.manual_seed(5)
    x, y = torch.randn(128, 4), torch.randint(0, 2, (128,))
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    client = _client(model, x, y, batch_size=32)
    epsilons = []
    for _ in range(4):
        fresh = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
        _train(client, fresh)  # a new global model each round, same hooks, same ledger
        epsilons.append(client.commit_round())
        update = client.model_update()
        assert set(update) == {n for n, _ in model.named_parameters()}
    assert all(a < b for a, b in itertools.pairwise(epsilons))
    expected = _opacus_epsilon([(0.8, 0.25, 16)], client.delta)
    assert epsilons[-1] == pytest.approx(expected, rel=1e-9)


def test_accountant_state_survives_save_and_load(tmp_path: Path) -> None:
    torch.manual_seed(6)
    x, y = torch.randn(128, 4), torch.randint(0, 2, (128,))
    client = _client(nn.Linear(4, 2), x, y, batch_size=32)
    state = _state(client.module)
    for _ in range(2):
        _train(client, state)
        client.commit_round()
    path = client.save(tmp_path / "client.json")
    assert path.stat().st_mode & 0o777 == 0o600
    restarted = _client(nn.Linear(4, 2), x, y, batch_size=32)
    assert restarted.epsilon() == 0.0
    restarted.load(path)
    assert restarted.epsilon() == pytest.approx(client.epsilon(), rel=1e-12)
    assert restarted.rounds_committed == 2
    _train(restarted, state)
    assert restarted.commit_round() > client.epsilon()


def test_saved_state_for_another_plan_or_corrupted_is_refused(tmp_path: Path) -> None:
    x, y = torch.randn(128, 4), torch.randint(0, 2, (128,))
    client = _client(nn.Linear(4, 2), x, y, batch_size=32)
    path = client.save(tmp_path / "client.json")
    other = _client(nn.Linear(4, 2), x, y, batch_size=32, noise_multiplier=2.0)
    with pytest.raises(CheckpointError, match="another noise"):
        other.load(path)
    path.write_text("{not json")
    with pytest.raises(CheckpointError):
        client.load(path)


def test_physical_batches_are_capped_while_the_logical_batch_is_not() -> None:
    torch.manual_seed(7)
    x, y = torch.randn(512, 4), torch.randint(0, 2, (512,))
    client = _client(nn.Linear(4, 2), x, y, batch_size=256, max_physical_batch_size=16)
    sizes = []
    with client.round(_state(client.module)) as batches:
        for inputs, targets in batches:
            sizes.append(len(targets))
            client.optimizer.zero_grad()
            nn.functional.cross_entropy(client.module(inputs), targets).backward()
            client.optimizer.step()
    client.commit_round()
    assert max(sizes) <= 16
    assert sum(sizes) > 256  # Poisson batches of ~256 split into physical pieces
    assert sum(h[2] for h in client.accountant.history) == 2  # two logical steps


def test_encrypted_update_is_the_weighted_difference_to_the_global_model() -> None:
    torch.manual_seed(8)
    x, y = torch.randn(100, 4), torch.randint(0, 2, (100,))
    client = _client(nn.Linear(4, 2), x, y, batch_size=25)
    keys = secagg.FederationKeys.generate(["a", "b"], preset="small")
    holder = keys.key_holder(min_clients=1)
    state = _state(client.module)
    _train(client, state)
    payload = client.encrypt_update(
        keys.material,
        signing_key=keys.signing_keys["a"],
        round_id=1,
        roster=["a", "b"],
        weight_bound=128,
    )
    aggregator = secagg.Aggregator(
        keys.server_context(),
        registry=keys.registry,
        round_id=1,
        roster=["a", "b"],
        min_clients=1,
    )
    aggregator.add(payload)
    released = holder.release(aggregator.finalize())
    assert released.weight_sum == pytest.approx(100 / 128, abs=1e-3)
    for name, delta in client.model_update().items():
        tolerance = 8 * released.mean_error_std
        assert float(abs(released.mean[name] - delta.numpy()).max()) < tolerance
        assert float(delta.abs().max()) > 10 * tolerance


def test_dp_noise_is_not_reproducible_from_any_seed() -> None:
    """Same data, same initial model, same global torch seed: the DP noise still differs.

    The first release drew DP noise from torch's global generator, seeded from the public
    run seed, so the server could regenerate it; now it comes from the OS CSPRNG.
    """
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    updates = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        client = _client(model, x, y, batch_size=16, noise_multiplier=1.0)
        torch.manual_seed(1234)  # what both engines did with the public run seed
        _train(client, _state(model))
        updates.append(client.model_update())
    difference = max(float((updates[0][k] - updates[1][k]).abs().max()) for k in updates[0])
    assert difference > 1e-3


def test_step_noise_has_the_stated_std() -> None:
    """With all-zero inputs a weight's clipped gradient is 0: its gradient is pure noise."""
    x, y = torch.zeros(400, 50), torch.zeros(400, dtype=torch.long)
    model = nn.Linear(50, 2, bias=False)
    client = _client(model, x, y, batch_size=100, noise_multiplier=1.5, max_grad_norm=2.0)
    samples = []
    with client.round(_state(model)) as batches:
        for inputs, targets in batches:
            client.optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), targets).backward()
            client.optimizer.pre_step()  # clip, noise, scale: p.grad is the noisy gradient
            samples.append(model.weight.grad.detach().clone().reshape(-1))
            client.optimizer.zero_grad()
    client.discard_round()
    noise = torch.cat(samples)
    expected = 1.5 * 2.0 / 100  # σ·C / expected batch size
    assert float(noise.std()) == pytest.approx(expected, rel=0.1)
    assert abs(float(noise.mean())) < 4 * expected / math.sqrt(noise.numel())


def test_deterministic_mode_is_research_only_and_reproducible() -> None:
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    updates = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        with pytest.warns(ResearchOnlyWarning):
            client = _client(model, x, y, batch_size=16, randomness="deterministic")
        _train(client, _state(model), seed=7)
        updates.append(client.model_update())
    assert all(torch.equal(updates[0][k], updates[1][k]) for k in updates[0])
    client.commit_round()
    with pytest.raises(ConfigurationError, match="needs a seed"):
        _train(client, _state(model))
    secure = _client(nn.Linear(4, 2), x, y, batch_size=16)
    with pytest.raises(ConfigurationError, match="predictable"):
        _train(secure, _state(secure.module), seed=7)


def test_an_empty_poisson_batch_is_a_counted_noise_only_step() -> None:
    x, y = torch.randn(2, 4), torch.randint(0, 2, (2,))
    model = nn.Linear(4, 2)
    client = _client(model, x, y, batch_size=1, noise_multiplier=1.0)
    before = _state(model)
    with client.round(before) as batches:
        inputs, targets = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
        client.optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        client.optimizer.step()
        for _ in batches:
            break
    assert sum(h[2] for h in client.accountant.history) == 1
    assert float((model.weight - before["weight"]).abs().max()) > 0  # moved by noise alone


def test_a_users_fixed_transformer_encoder_is_corrected_in_place() -> None:
    """Opacus 1.6 turns nn.MultiheadAttention(batch_first=True) into a DPMultiheadAttention
    whose outputs differ; PrivateClient swaps in the corrected forward, with a warning."""
    from opacus.validators import ModuleValidator

    torch.manual_seed(9)
    layer = nn.TransformerEncoderLayer(
        d_model=8, nhead=2, dim_feedforward=16, batch_first=True, dropout=0.0
    )
    reference = nn.Sequential(
        nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
    )
    fixed = ModuleValidator.fix(reference)
    fixed.load_state_dict(reference.state_dict(), strict=False)
    tokens = torch.randn(5, 6, 8)
    reference.eval()
    fixed.eval()
    with torch.no_grad():
        expected = reference(tokens)
        broken = fixed(tokens)
    assert float((broken - expected).abs().max()) > 1e-3  # the Opacus bug, reproduced

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = fixed
            self.out = nn.Linear(8, 2)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.out(self.encoder(t).mean(dim=1))

    model = Head()
    x, y = torch.randn(20, 6, 8), torch.randint(0, 2, (20,))
    with pytest.warns(UserWarning, match="mixes heads"):
        client = _client(model, x, y, batch_size=10)
    model.eval()
    with torch.no_grad():
        corrected = fixed(tokens)
    assert float((corrected - expected).abs().max()) < 1e-5
    _train(client, _state(model))  # and it trains, with per-sample gradients


def test_plain_multihead_attention_is_refused_with_the_fix_in_the_message() -> None:
    model = nn.Sequential(
        nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model=8, nhead=2, batch_first=True),
            num_layers=1,
            enable_nested_tensor=False,
        )
    )
    x, y = torch.randn(8, 3, 8), torch.randint(0, 2, (8,))
    with pytest.raises(ConfigurationError, match=r"ModuleValidator\.fix"):
        _client(model, x, y, batch_size=4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": None},
        {"noise_multiplier": 1.0, "target_epsilon": 2.0, "planned_rounds": 2},
        {"noise_multiplier": None, "target_epsilon": 2.0},
        {"max_grad_norm": 0.0},
        {"delta": 1.5},
        {"epochs_per_round": 0},
        {"accountant": "moments"},
    ],
)
def test_invalid_options_are_refused(kwargs: dict[str, Any]) -> None:
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    with pytest.raises(ConfigurationError):
        _client(nn.Linear(4, 2), x, y, batch_size=8, **kwargs)


def test_model_update_before_any_round_is_an_error() -> None:
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    client = _client(nn.Linear(4, 2), x, y, batch_size=8)
    with pytest.raises(ConfigurationError):
        client.model_update()
    assert math.isclose(client.sample_rate, 0.25)
