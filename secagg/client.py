"""The DP client: wraps a user's model, optimizer and loader with Opacus for federated rounds.

A round has two phases so that privacy spending is recorded exactly when the
round's aggregate is released::

    client = PrivateClient(module=model, optimizer=opt, data_loader=loader,
                           noise_multiplier=1.0, max_grad_norm=1.0, epsilon_budget=8.0)
    with client.round(global_weights) as batches:    # budget check, load weights
        for x, y in batches:                         # the user's own loop
            ...
    blob = client.encrypt_update(keys, round_id=r, client_id="a", roster=roster,
                                 weight_bound=1000)
    client.commit_round()     # the aggregate was released: spending is final
    # or client.discard_round() if the round was skipped (nothing was decrypted)

The accountant persists across rounds (and across restarts through
:meth:`state_dict` / :meth:`save`), and loading new global weights never
re-attaches Opacus hooks.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import DataLoader

from ._files import atomic_write_bytes
from .errors import (
    CheckpointError,
    ConfigurationError,
    PrivacyBudgetExceededError,
    UpdateValueError,
)
from .keys import KeyHolder
from .update import encrypt_update

__all__ = ["PrivateClient", "plan_noise_multiplier"]

_ACCOUNTANTS = ("rdp", "prv", "gdp")


def plan_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    rounds: int,
    epochs_per_round: int = 1,
    accountant: str = "rdp",
    extra_noise_multipliers: Sequence[float] = (),
) -> float:
    """Smallest noise multiplier σ whose whole federated plan stays within ``target_epsilon``.

    σ is planned once for ``rounds × epochs_per_round / sample_rate`` DP-SGD steps,
    not per round. ``extra_noise_multipliers`` adds full-batch Gaussian releases of
    sensitivity 1 (such as the attention statistics) to the same ledger.

    Raises
    ------
    ConfigurationError
        If the arguments are out of range or no σ up to 1000 reaches the target.
    """
    if target_epsilon <= 0 or not 0 < delta < 1 or not 0 < sample_rate <= 1 or rounds < 1:
        raise ConfigurationError("need target_epsilon > 0, 0 < delta < 1, 0 < q <= 1, rounds >= 1")
    steps = rounds * epochs_per_round * round(1 / sample_rate)
    extras = [(float(s), 1.0, 1) for s in extra_noise_multipliers]

    def epsilon_for(sigma: float) -> float:
        probe = create_accountant(accountant)
        probe.history = [(sigma, sample_rate, steps), *extras]
        return float(probe.get_epsilon(delta=delta))

    low, high = 0.05, 1000.0
    if epsilon_for(high) > target_epsilon:
        raise ConfigurationError(f"ε={target_epsilon} is out of reach for this plan")
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        if epsilon_for(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    return high


class PrivateClient:
    """DP-SGD for one client's model, optimizer and data loader, across federated rounds.

    All arguments are keyword-only. Give either ``noise_multiplier`` or
    ``target_epsilon`` with ``planned_rounds`` (σ is then planned once for all rounds).

    Parameters
    ----------
    module : torch.nn.Module
        The user's model (any model Opacus supports). Its parameters are trained in
        place; Opacus attaches hooks once, without wrapping it.
    optimizer : torch.optim.Optimizer
        The user's optimizer over ``module``'s parameters.
    data_loader : torch.utils.data.DataLoader
        The user's loader; its batch size is the expected logical batch size.
    max_grad_norm : float
        Per-sample clipping norm ``C``.
    noise_multiplier : float, optional
        Gaussian noise σ (relative to ``C``).
    target_epsilon : float, optional
        ε to reach after ``planned_rounds`` rounds of ``epochs_per_round`` epochs.
    planned_rounds : int, optional
        Rounds in the plan (with ``target_epsilon``).
    epochs_per_round : int, optional
        Local epochs per round (default 1); used for planning and the budget check.
    delta : float, optional
        δ of the reported (ε, δ); default ``1e-5``.
    epsilon_budget : float, optional
        Refuse any round that would take ε past this; defaults to ``target_epsilon``.
    max_physical_batch_size : int, optional
        Cap on the physical batch (Opacus ``BatchMemoryManager``); memory stays bounded
        whatever the Poisson-sampled logical batch size.
    accountant : {"rdp", "prv", "gdp"}, optional
        Opacus accountant (default ``"rdp"``).
    poisson_sampling : bool, optional
        Poisson sampling of batches (default ``True``; required for the stated ε).
    noise_seed : int, optional
        Seed for the DP noise, for reproducible research runs only.
    """

    def __init__(
        self,
        *,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: DataLoader[Any],
        max_grad_norm: float,
        noise_multiplier: float | None = None,
        target_epsilon: float | None = None,
        planned_rounds: int | None = None,
        epochs_per_round: int = 1,
        delta: float = 1e-5,
        epsilon_budget: float | None = None,
        max_physical_batch_size: int | None = None,
        accountant: str = "rdp",
        poisson_sampling: bool = True,
        noise_seed: int | None = None,
    ) -> None:
        if accountant not in _ACCOUNTANTS:
            raise ConfigurationError(f"accountant must be one of {_ACCOUNTANTS}")
        if max_grad_norm <= 0 or not 0 < delta < 1 or epochs_per_round < 1:
            raise ConfigurationError("need max_grad_norm > 0, 0 < delta < 1, epochs_per_round >= 1")
        num_examples = len(data_loader.dataset)  # type: ignore[arg-type]
        if num_examples == 0 or len(data_loader) == 0:
            raise ConfigurationError("the data loader is empty")
        sample_rate = 1.0 / len(data_loader)
        if (noise_multiplier is None) == (target_epsilon is None):
            raise ConfigurationError("give exactly one of noise_multiplier or target_epsilon")
        if target_epsilon is not None:
            if planned_rounds is None:
                raise ConfigurationError("target_epsilon needs planned_rounds")
            noise_multiplier = plan_noise_multiplier(
                target_epsilon=target_epsilon,
                delta=delta,
                sample_rate=sample_rate,
                rounds=planned_rounds,
                epochs_per_round=epochs_per_round,
                accountant=accountant,
            )
        if noise_multiplier is None or noise_multiplier < 0:
            raise ConfigurationError("noise_multiplier must be non-negative")
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.delta = float(delta)
        self.epsilon_budget = epsilon_budget if epsilon_budget is not None else target_epsilon
        self.epochs_per_round = int(epochs_per_round)
        self.max_physical_batch_size = max_physical_batch_size
        self.num_examples = int(num_examples)
        self.sample_rate = sample_rate
        self.module = module
        self._engine = PrivacyEngine(accountant=accountant)
        generator = None
        if noise_seed is not None:
            generator = torch.Generator().manual_seed(noise_seed)
        self._hooks, self.optimizer, self.data_loader = self._engine.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=data_loader,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            poisson_sampling=poisson_sampling,
            noise_generator=generator,
            wrap_model=False,
        )
        self._global: dict[str, torch.Tensor] | None = None
        self._ledger_before_round: dict[str, Any] | None = None
        self.rounds_committed = 0

    # ------------------------------------------------------------------ accounting
    @property
    def accountant(self) -> Any:
        """The Opacus accountant holding this client's committed (and pending) steps."""
        return self._engine.accountant

    @property
    def steps_per_round(self) -> int:
        """DP-SGD steps one round takes (logical batches)."""
        return self.epochs_per_round * round(1 / self.sample_rate)

    @property
    def round_pending(self) -> bool:
        """Whether a trained round awaits :meth:`commit_round` or :meth:`discard_round`."""
        return self._ledger_before_round is not None

    def epsilon(self, delta: float | None = None) -> float:
        """ε spent so far at ``delta`` (default: the client's δ), pending steps included."""
        if len(self.accountant.history) == 0:
            return 0.0
        return float(self.accountant.get_epsilon(delta=delta or self.delta))

    def epsilon_after_next_round(self) -> float:
        """ε this client would reach after one more round (nothing is changed)."""
        probe = copy.deepcopy(self.accountant)
        probe.history.append((self.noise_multiplier, self.sample_rate, self.steps_per_round))
        return float(probe.get_epsilon(delta=self.delta))

    # ------------------------------------------------------------------ rounds
    def load_global(self, global_state: Mapping[str, torch.Tensor]) -> None:
        """Load the global weights in place (Opacus hooks stay attached, ε is kept)."""
        with torch.no_grad():
            self.module.load_state_dict(dict(global_state), strict=True)
        self._global = {
            name: p.detach().clone()
            for name, p in self.module.named_parameters()
            if p.requires_grad
        }

    @contextlib.contextmanager
    def round(self, global_state: Mapping[str, torch.Tensor]) -> Iterator[Iterator[Any]]:
        """Start a round: check the ε budget, load the global weights, yield the batches.

        Raises
        ------
        PrivacyBudgetExceededError
            If the round would pass ``epsilon_budget``; model and ledger are unchanged.
        ConfigurationError
            If the previous round was neither committed nor discarded.
        """
        if self.round_pending:
            raise ConfigurationError("commit_round() or discard_round() the previous round first")
        if self.epsilon_budget is not None:
            projected = self.epsilon_after_next_round()
            if projected > self.epsilon_budget:
                raise PrivacyBudgetExceededError(
                    f"this round would raise ε from {self.epsilon():.3f} to {projected:.3f}, "
                    f"past the budget {self.epsilon_budget} (δ={self.delta}); nothing changed"
                )
        ledger = copy.deepcopy(self.accountant.state_dict())
        self.load_global(global_state)
        self._reset_optimizer_state()
        self._ledger_before_round = ledger
        self.module.train()
        try:
            with self._batches() as batches:
                yield batches
        except BaseException:
            self.discard_round()
            raise

    @contextlib.contextmanager
    def _batches(self) -> Iterator[Iterator[Any]]:
        epochs = self.epochs_per_round
        if self.max_physical_batch_size is None:
            yield _repeat(self.data_loader, epochs)
            return
        with BatchMemoryManager(
            data_loader=self.data_loader,
            max_physical_batch_size=self.max_physical_batch_size,
            optimizer=self.optimizer,
        ) as loader:
            yield _repeat(loader, epochs)

    def _reset_optimizer_state(self) -> None:
        self.optimizer.original_optimizer.state.clear()
        self.optimizer.zero_grad(set_to_none=True)

    def commit_round(self) -> float:
        """Make the pending round's spending final (its aggregate was released); return ε."""
        if not self.round_pending:
            raise ConfigurationError("no round is pending")
        self._ledger_before_round = None
        self.rounds_committed += 1
        return self.epsilon()

    def discard_round(self) -> None:
        """Forget the pending round's spending: it was skipped and nothing was decrypted."""
        if self._ledger_before_round is not None:
            self.accountant.load_state_dict(self._ledger_before_round)
            self._ledger_before_round = None

    def release_noisy_sum(self, rows: torch.Tensor, *, noise_multiplier: float) -> torch.Tensor:
        """Sum per-example statistics with the Gaussian mechanism, counted in this ledger.

        Each row is one local example's statistic (e.g. its attention weights) and must
        have L2 norm at most 1, so one example changes the sum by at most 1 (never
        clipped: a larger row is an error). The noise ``N(0, σ²)`` is added to each
        coordinate and the release enters the ledger as one full-batch Gaussian step
        (``sample_rate = 1``), composing exactly with the DP-SGD steps.

        Raises
        ------
        UpdateValueError
            If a row's L2 norm exceeds 1 or holds non-finite values.
        PrivacyBudgetExceededError
            If the release would pass ``epsilon_budget`` (nothing is changed).
        """
        if noise_multiplier <= 0:
            raise ConfigurationError("noise_multiplier must be positive")
        if self.round_pending:
            raise ConfigurationError("commit_round() or discard_round() the previous round first")
        norms = rows.detach().double().norm(dim=1)
        if not torch.isfinite(norms).all() or (norms.numel() and float(norms.max()) > 1.0 + 1e-6):
            raise UpdateValueError("each row's L2 norm must be at most 1 (sensitivity bound)")
        if self.epsilon_budget is not None:
            probe = copy.deepcopy(self.accountant)
            probe.history.append((noise_multiplier, 1.0, 1))
            projected = float(probe.get_epsilon(delta=self.delta))
            if projected > self.epsilon_budget:
                raise PrivacyBudgetExceededError(
                    f"this release would raise ε to {projected:.3f}, past the budget "
                    f"{self.epsilon_budget}; nothing changed"
                )
        self._ledger_before_round = copy.deepcopy(self.accountant.state_dict())
        self.accountant.history.append((noise_multiplier, 1.0, 1))
        total = rows.detach().double().sum(dim=0)
        return total + noise_multiplier * torch.randn(total.shape, dtype=torch.float64)

    # ------------------------------------------------------------------ update
    def model_update(self) -> dict[str, torch.Tensor]:
        """Local trainable parameters minus the global ones loaded for this round."""
        if self._global is None:
            raise ConfigurationError("load_global() (or round()) must run before model_update()")
        return {
            name: (p.detach() - self._global[name]).to(p.dtype)
            for name, p in self.module.named_parameters()
            if p.requires_grad
        }

    def encrypt_update(
        self,
        keys: KeyHolder,
        *,
        round_id: int,
        client_id: str,
        roster: Sequence[str],
        weight_bound: float,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> bytes:
        """Encrypt this round's update, weighted by the number of local examples."""
        return encrypt_update(
            keys,
            self.model_update(),
            round_id=round_id,
            client_id=client_id,
            roster=roster,
            weight=float(self.num_examples),
            weight_bound=weight_bound,
            signing_key=signing_key,
        )

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """The committed privacy ledger and plan, JSON-serializable."""
        ledger = self._ledger_before_round or self.accountant.state_dict()
        return {
            "accountant": {
                "mechanism": ledger["mechanism"],
                "history": [list(h) for h in ledger["history"]],
            },
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "delta": self.delta,
            "rounds_committed": self.rounds_committed,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ledger saved by :meth:`state_dict` (the plan must match)."""
        try:
            accountant = state["accountant"]
            history = [(float(s), float(q), int(n)) for s, q, n in accountant["history"]]
            mechanism = str(accountant["mechanism"])
            planned = (float(state["noise_multiplier"]), float(state["sample_rate"]))
            rounds = int(state["rounds_committed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid client privacy state: {exc}") from None
        if not math.isclose(planned[0], self.noise_multiplier) or not math.isclose(
            planned[1], self.sample_rate
        ):
            raise CheckpointError("saved privacy state was made for another noise or sample rate")
        try:
            self.accountant.load_state_dict({"history": history, "mechanism": mechanism})
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        self._ledger_before_round = None
        self.rounds_committed = rounds

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`state_dict` atomically as JSON."""
        return atomic_write_bytes(path, json.dumps(self.state_dict()).encode(), mode=0o600)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Load a ledger written by :meth:`save`."""
        try:
            state = json.loads(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read client state {path}: {exc}") from None
        self.load_state_dict(state)

    def close(self) -> None:
        """Detach Opacus hooks from the user's module."""
        self._hooks.cleanup()


def _repeat(loader: Any, epochs: int) -> Iterator[Any]:
    for _ in range(epochs):
        yield from loader
