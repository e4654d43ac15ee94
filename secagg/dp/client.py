"""The DP client: wraps a user's model, optimizer and loader with Opacus for federated rounds.

A round has two phases so that privacy spending is recorded exactly when the
round's aggregate is released::

    client = PrivateClient(module=model, optimizer=opt, data_loader=loader,
                           target_epsilon=8.0, planned_rounds=20, max_grad_norm=1.0)
    with client.round(global_weights) as batches:    # budget check, load weights
        for x, y in batches:                         # the user's own loop
            ...
    blob = client.encrypt_update(keys, signing_key=my_key, round_id=r, roster=roster,
                                 weight_bound=1000)
    client.commit_round()     # the aggregate was released: spending is final
    # or client.discard_round() if the round was skipped (nothing was decrypted)

Randomness that protects privacy comes from the operating system's CSPRNG: the DP-SGD
noise (:mod:`secagg._random`, hardened against floating-point attacks as Opacus's
``secure_mode`` is) and the Poisson sampling of every batch (a generator seeded from
the CSPRNG each round: amplification by subsampling assumes nobody knows which
examples were sampled). Opacus's ``PrivacyEngine`` is not used, so its warning about
an insecure RNG does not apply. ``randomness="deterministic"`` makes both follow a
seed given each round: for research runs that must be bit-reproducible only.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from opacus.accountants import create_accountant
from opacus.data_loader import DPDataLoader
from opacus.grad_sample.utils import prepare_module
from opacus.layers import DPMultiheadAttention
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from .._files import atomic_write_bytes
from .._random import secure_normal, secure_seed
from ..crypto.client import encrypt_update
from ..crypto.keys import KeyMaterial
from ..crypto.registry import SigningKey
from ..errors import (
    CheckpointError,
    ConfigurationError,
    PrivacyBudgetExceededError,
    UpdateValueError,
)
from .accounting import (
    RDP_ORDERS,
    check_accountant,
    epsilon_of,
    plan_noise_multiplier,
    rdp_epsilon,
)
from .layers import BatchFirstDPMultiheadAttention

__all__ = [
    "RANDOMNESS",
    "RDP_ORDERS",
    "PrivateClient",
    "ResearchOnlyWarning",
    "plan_noise_multiplier",
    "rdp_epsilon",
]

RANDOMNESS = ("secure", "deterministic")


class ResearchOnlyWarning(UserWarning):
    """A setting that makes a run reproducible at the cost of its privacy guarantee."""


class _CsprngDPOptimizer(DPOptimizer):  # type: ignore[misc]
    """Opacus's DP-SGD optimizer with noise drawn from the OS CSPRNG (or a research seed)."""

    noise_generator: torch.Generator | None = None

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            summed = p.summed_grad
            _check_processed_flag(summed)
            if std == 0:
                noise = torch.zeros_like(summed)
            elif self.noise_generator is not None:
                noise = torch.normal(
                    0.0, std, size=summed.shape, generator=self.noise_generator
                ).to(summed.dtype)
            else:
                noise = torch.from_numpy(std * secure_normal(summed.numel())).to(summed.dtype)
            p.grad = (summed + noise.view_as(summed)).view_as(p)
            _mark_as_processed(summed)


def _correct_batch_first_attention(module: nn.Module) -> list[str]:
    """Give every Opacus ``DPMultiheadAttention(batch_first=True)`` the corrected forward.

    Opacus 1.6.0's batch-first forward splices heads of one position into other
    positions, so the layer computes something other than the ``nn.MultiheadAttention``
    it replaced. The fix changes the class of each affected layer in place (its
    parameters, which the user's optimizer holds, stay the same objects).
    """
    fixed = []
    for name, layer in module.named_modules():
        if type(layer) is DPMultiheadAttention and layer.batch_first:
            layer.__class__ = BatchFirstDPMultiheadAttention
            fixed.append(name or "<root>")
    return fixed


class PrivateClient:
    """DP-SGD for one client's model, optimizer and data loader, across federated rounds.

    All arguments are keyword-only. Give either ``noise_multiplier`` or
    ``target_epsilon`` with ``planned_rounds`` (σ is then planned once for the whole
    run, with the sample rate and step count this client really uses).

    Parameters
    ----------
    module : torch.nn.Module
        The user's model (any model Opacus supports: run
        ``opacus.validators.ModuleValidator.fix`` on it first if it has BatchNorm or
        ``nn.MultiheadAttention``). Trained in place; Opacus hooks attach without
        wrapping it. Opacus's ``DPMultiheadAttention(batch_first=True)`` layers are
        corrected in place, with a warning (see :func:`_correct_batch_first_attention`).
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
        Local epochs per round (default 1): each is ``len(data_loader)`` Poisson steps.
    delta : float, optional
        δ of the reported (ε, δ); default ``1e-5``.
    epsilon_budget : float, optional
        Refuse any round that would take ε past this; defaults to ``target_epsilon``.
    max_physical_batch_size : int, optional
        Cap on the physical batch (Opacus ``BatchMemoryManager``).
    accountant : {"auto", "rdp", "prv", "gdp"}, optional
        How ε is computed and σ planned (see :mod:`secagg.dp.accounting`). ``"auto"``
        (default): exact for full-batch plans (``batch_size`` at least the client's
        examples, as secagg's recipes use), RDP at :data:`RDP_ORDERS` otherwise.
    extra_noise_multipliers : sequence of float, optional
        Full-batch Gaussian releases planned on top of training (the attention analysis).
    randomness : {"secure", "deterministic"}, optional
        ``"secure"`` (default): noise and batch sampling from the OS CSPRNG.
        ``"deterministic"``: from the seed given to :meth:`round` (research only: whoever
        knows the seed can remove the noise; a :class:`ResearchOnlyWarning` says so).

    Raises
    ------
    ConfigurationError
        On invalid arguments or a model Opacus cannot train privately.
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
        accountant: str = "auto",
        extra_noise_multipliers: Sequence[float] = (),
        randomness: str = "secure",
    ) -> None:
        if not isinstance(module, nn.Module) or not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigurationError("module must be a torch.nn.Module and optimizer an Optimizer")
        if not isinstance(data_loader, DataLoader):
            raise ConfigurationError("data_loader must be a torch DataLoader")
        check_accountant(accountant)
        if randomness not in RANDOMNESS:
            raise ConfigurationError(f"randomness must be one of {RANDOMNESS}")
        if not _positive(max_grad_norm) or not 0 < delta < 1 or not _count(epochs_per_round):
            raise ConfigurationError("need max_grad_norm > 0, 0 < delta < 1, epochs_per_round >= 1")
        num_examples = len(data_loader.dataset)  # type: ignore[arg-type]
        if num_examples == 0 or len(data_loader) == 0:
            raise ConfigurationError("the data loader is empty")
        sample_rate = 1.0 / len(data_loader)
        if (noise_multiplier is None) == (target_epsilon is None):
            raise ConfigurationError("give exactly one of noise_multiplier or target_epsilon")
        if target_epsilon is not None:
            if planned_rounds is None or not _count(planned_rounds):
                raise ConfigurationError("target_epsilon needs planned_rounds (an int >= 1)")
            noise_multiplier = plan_noise_multiplier(
                target_epsilon=target_epsilon,
                delta=delta,
                sample_rate=sample_rate,
                steps=planned_rounds * epochs_per_round * len(data_loader),
                accountant=accountant,
                extra_noise_multipliers=extra_noise_multipliers,
            )
        if noise_multiplier is None or not math.isfinite(noise_multiplier) or noise_multiplier < 0:
            raise ConfigurationError("noise_multiplier must be a non-negative number")
        if epsilon_budget is not None and not _positive(epsilon_budget):
            raise ConfigurationError("epsilon_budget must be positive")
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.delta = float(delta)
        self.epsilon_budget = epsilon_budget if epsilon_budget is not None else target_epsilon
        self.epochs_per_round = int(epochs_per_round)
        self.max_physical_batch_size = max_physical_batch_size
        self.num_examples = int(num_examples)
        self.sample_rate = sample_rate
        self.randomness = randomness
        if randomness == "deterministic":
            warnings.warn(
                "PrivateClient(randomness='deterministic'): DP noise and batch sampling follow "
                "the seed passed to round(); whoever knows it can remove the noise. Research "
                "runs only.",
                ResearchOnlyWarning,
                stacklevel=2,
            )
        self.module = module
        fixed = _correct_batch_first_attention(module)
        if fixed:
            warnings.warn(
                "Opacus 1.6's DPMultiheadAttention(batch_first=True) mixes heads across "
                f"positions; secagg replaced its forward pass in {', '.join(fixed)} (same "
                "parameters, now equal to torch.nn.MultiheadAttention)",
                UserWarning,
                stacklevel=2,
            )
        errors = ModuleValidator.validate(module, strict=False)
        if errors:
            listed = "; ".join(str(e) for e in errors[:3])
            raise ConfigurationError(
                f"Opacus cannot train this model privately: {listed}. Run "
                "`model = opacus.validators.ModuleValidator.fix(model)` before creating the "
                "optimizer and the PrivateClient"
            )
        self._hooks = prepare_module(
            module,
            grad_sample_mode="hooks",
            wrap_model=False,
            batch_first=True,
            loss_reduction="mean",
        )
        self._hooks.forbid_grad_accumulation()
        self.data_loader = DPDataLoader.from_data_loader(data_loader, generator=torch.Generator())
        self.optimizer = _CsprngDPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=int(num_examples * sample_rate),
            loss_reduction="mean",
        )
        self._accountant_name = accountant
        # The ledger itself is Opacus's history of steps; "auto" keeps it in an RDP accountant.
        self._accountant = create_accountant("rdp" if accountant == "auto" else accountant)
        self.optimizer.attach_step_hook(self._accountant.get_optimizer_hook_fn(sample_rate))
        self._global: dict[str, torch.Tensor] | None = None
        self._ledger_before_round: dict[str, Any] | None = None
        self._update_encrypted = False
        self.rounds_committed = 0

    # ------------------------------------------------------------------ accounting
    @property
    def accountant(self) -> Any:
        """The Opacus accountant holding this client's committed (and pending) steps."""
        return self._accountant

    @property
    def steps_per_round(self) -> int:
        """DP-SGD steps one round takes (Poisson-sampled logical batches)."""
        return self.epochs_per_round * len(self.data_loader)

    @property
    def round_pending(self) -> bool:
        """Whether a trained round awaits :meth:`commit_round` or :meth:`discard_round`."""
        return self._ledger_before_round is not None

    def _epsilon_of(self, history: Sequence[tuple[float, float, int]], delta: float) -> float:
        return epsilon_of(history, delta, accountant=self._accountant_name)

    def epsilon(self, delta: float | None = None) -> float:
        """ε spent so far at ``delta`` (default: the client's δ), pending steps included."""
        return self._epsilon_of(self.accountant.history, delta or self.delta)

    def epsilon_after_next_round(self) -> float:
        """ε this client would reach after one more round (nothing is changed)."""
        planned = (self.noise_multiplier, self.sample_rate, self.steps_per_round)
        return self._epsilon_of([*self.accountant.history, planned], self.delta)

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

    def _seed_round(self, seed: int | None) -> None:
        """Seed this round's batch sampling and noise: CSPRNG, or the research seed."""
        if self.randomness == "secure":
            if seed is not None:
                raise ConfigurationError(
                    "a seed makes DP noise predictable: pass one only with "
                    "randomness='deterministic'"
                )
            self.data_loader.batch_sampler.generator.manual_seed(secure_seed())
            self.optimizer.noise_generator = None
            return
        if seed is None:
            raise ConfigurationError("randomness='deterministic' needs a seed for every round")
        self.data_loader.batch_sampler.generator.manual_seed(seed)
        self.optimizer.noise_generator = torch.Generator().manual_seed(seed + 1)

    @contextlib.contextmanager
    def round(
        self, global_state: Mapping[str, torch.Tensor], *, seed: int | None = None
    ) -> Iterator[Iterator[Any]]:
        """Start a round: check the ε budget, load the global weights, yield the batches.

        Every Poisson-sampled batch must be stepped, empty ones included (an empty
        batch is a noise-only step, and the accountant counts it).

        Raises
        ------
        PrivacyBudgetExceededError
            If the round would pass ``epsilon_budget``; model and ledger are unchanged.
        ConfigurationError
            If the previous round was neither committed nor discarded, or ``seed`` does
            not fit the client's ``randomness``.
        """
        if self.round_pending:
            raise ConfigurationError("commit_round() or discard_round() the previous round first")
        self._seed_round(seed)
        if self.epsilon_budget is not None:
            projected = self.epsilon_after_next_round()
            if projected > self.epsilon_budget:
                raise PrivacyBudgetExceededError(
                    f"this round would raise ε from {self.epsilon():.3f} to {projected:.3f}, "
                    f"past the budget {self.epsilon_budget} (δ={self.delta}); nothing changed"
                )
        ledger = copy.deepcopy(self.accountant.state_dict())
        self.load_global(global_state)
        self._update_encrypted = False
        self.optimizer.original_optimizer.state.clear()
        self.optimizer.zero_grad(set_to_none=True)
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

    def release_noisy_sum(
        self, rows: torch.Tensor, *, noise_multiplier: float, seed: int | None = None
    ) -> torch.Tensor:
        """Sum per-example statistics with the Gaussian mechanism, counted in this ledger.

        Each row is one local example's statistic (e.g. its attention weights) and must
        have L2 norm at most 1, so one example changes the sum by at most 1 (never
        clipped: a larger row is an error). The noise ``N(0, σ²)`` per coordinate comes
        from the OS CSPRNG (from ``seed`` with ``randomness="deterministic"``), and the
        release enters the ledger as one full-batch Gaussian step (``sample_rate = 1``).
        Settle it with :meth:`commit_round` or :meth:`discard_round`.

        Raises
        ------
        UpdateValueError
            If a row's L2 norm exceeds 1 or holds non-finite values.
        PrivacyBudgetExceededError
            If the release would pass ``epsilon_budget`` (nothing is changed).
        """
        if not _positive(noise_multiplier):
            raise ConfigurationError("noise_multiplier must be positive")
        if self.round_pending:
            raise ConfigurationError("commit_round() or discard_round() the previous round first")
        if (seed is None) != (self.randomness == "secure"):
            raise ConfigurationError("pass a seed exactly when randomness='deterministic'")
        if not isinstance(rows, torch.Tensor) or rows.dim() != 2:
            raise UpdateValueError("rows must be a 2-D tensor (one row per example)")
        norms = rows.detach().double().norm(dim=1)
        if not torch.isfinite(norms).all() or (norms.numel() and float(norms.max()) > 1.0 + 1e-6):
            raise UpdateValueError("each row's L2 norm must be at most 1 (sensitivity bound)")
        if self.epsilon_budget is not None:
            release = (float(noise_multiplier), 1.0, 1)
            projected = self._epsilon_of([*self.accountant.history, release], self.delta)
            if projected > self.epsilon_budget:
                raise PrivacyBudgetExceededError(
                    f"this release would raise ε to {projected:.3f}, past the budget "
                    f"{self.epsilon_budget}; nothing changed"
                )
        self._ledger_before_round = copy.deepcopy(self.accountant.state_dict())
        self.accountant.history.append((noise_multiplier, 1.0, 1))
        total = rows.detach().double().sum(dim=0)
        if seed is None:
            noise = torch.from_numpy(secure_normal(total.numel())).reshape(total.shape)
        else:
            generator = torch.Generator().manual_seed(seed)
            noise = torch.randn(total.shape, dtype=torch.float64, generator=generator)
        return total + noise_multiplier * noise

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
        keys: KeyMaterial,
        *,
        signing_key: SigningKey,
        round_id: int,
        roster: Sequence[str],
        weight_bound: float,
    ) -> bytes:
        """Encrypt, MAC-tag and sign this round's update, weighted by the local example count.

        Once per round: the same update encrypted for two rosters or rounds would let a
        server subtract one released sum from another.

        Raises
        ------
        ConfigurationError
            If this round's update was already encrypted.
        """
        if self._update_encrypted:
            raise ConfigurationError(
                "this round's update was already encrypted; encrypting it again (for another "
                "roster or round) would let a server difference the two sums"
            )
        payload = encrypt_update(
            keys,
            self.model_update(),
            signing_key=signing_key,
            round_id=round_id,
            roster=roster,
            weight=float(self.num_examples),
            weight_bound=weight_bound,
        )
        self._update_encrypted = True
        return payload

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


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _repeat(loader: Any, epochs: int) -> Iterator[Any]:
    for _ in range(epochs):
        yield from loader
