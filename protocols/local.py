"""A client's side of a round, the same in both engines: train, make the payload, report.

:func:`client_round` is what a client does when the coordinator sends it a round
(:class:`~secagg.protocols.roundlog.RoundPlan`): check its budget, train locally
(DP-SGD through :class:`secagg.PrivateClient`, or the non-private baseline), turn the
weighted update into a payload with its :class:`~secagg.protocols.backends.PayloadMaker`,
and obey the round's simulated dropout. Its privacy spending stays pending until the
engine settles the round.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..dp.client import PrivateClient
from ..errors import ConfigurationError, PrivacyBudgetExceededError, UpdateValueError
from .backends import PayloadMaker
from .roundlog import ClientReport, RoundPlan

__all__ = [
    "LocalClient",
    "NonPrivateClient",
    "client_round",
    "derive_seed",
    "make_loader",
    "make_optimizer",
    "train_round",
]


class LocalClient(Protocol):
    """What the federation needs of a client (DP or not)."""

    module: nn.Module
    optimizer: Any
    num_examples: int

    def round(self, global_state: Mapping[str, torch.Tensor], *, seed: int | None = None) -> Any:
        """Context manager: load weights, yield batches."""
        ...

    def model_update(self) -> dict[str, torch.Tensor]:
        """Local minus global trainable parameters."""
        ...

    def commit_round(self) -> float:
        """Make the round's spending final; return ε."""
        ...

    def discard_round(self) -> None:
        """Forget the round's spending."""
        ...

    def epsilon(self, delta: float | None = None) -> float:
        """ε spent so far."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The ledger, JSON-serializable."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...


class NonPrivateClient:
    """The ``--no-dp`` baseline: the best honest non-private local training, ε = ∞.

    Shuffled mini-batches (the order follows the round's seed), ``epochs_per_round``
    local epochs, the optimizer as given, and no clipping unless ``max_grad_norm`` is
    set: it is ordinary federated training, not DP-SGD without noise.
    """

    def __init__(
        self,
        *,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: DataLoader[Any],
        epochs_per_round: int = 1,
        max_grad_norm: float | None = None,
    ) -> None:
        if epochs_per_round < 1:
            raise ConfigurationError("epochs_per_round must be at least 1")
        self.module = module
        self.max_grad_norm = max_grad_norm
        self.optimizer = optimizer
        self.data_loader = data_loader
        self.epochs_per_round = epochs_per_round
        self.num_examples = len(data_loader.dataset)  # type: ignore[arg-type]
        self._global: dict[str, torch.Tensor] = {}
        self.rounds_committed = 0

    @contextlib.contextmanager
    def round(
        self, global_state: Mapping[str, torch.Tensor], *, seed: int | None = None
    ) -> Iterator[Iterator[Any]]:
        """Load the global weights and yield ``epochs_per_round`` epochs of batches."""
        with torch.no_grad():
            self.module.load_state_dict(dict(global_state))
        self._global = {n: p.detach().clone() for n, p in self.module.named_parameters()}
        self.optimizer.state.clear()
        if seed is not None and self.data_loader.generator is not None:
            self.data_loader.generator.manual_seed(seed)
        self.module.train()
        yield (batch for _ in range(self.epochs_per_round) for batch in self.data_loader)

    def clip_gradients(self) -> None:
        """Clip the batch gradient to ``max_grad_norm`` (if set)."""
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)

    def model_update(self) -> dict[str, torch.Tensor]:
        """Local minus global trainable parameters."""
        return {
            n: p.detach() - self._global[n]
            for n, p in self.module.named_parameters()
            if p.requires_grad
        }

    def commit_round(self) -> float:
        """Count the round; no privacy is accounted (ε is infinite)."""
        self.rounds_committed += 1
        return float("inf")

    def discard_round(self) -> None:
        """Nothing to forget."""

    def epsilon(self, delta: float | None = None) -> float:
        """Infinite: no differential privacy."""
        return float("inf")

    def state_dict(self) -> dict[str, Any]:
        """Rounds counted (no ledger)."""
        return {"rounds_committed": self.rounds_committed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.rounds_committed = int(state.get("rounds_committed", 0))


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from ``parts``, stable across processes (unlike ``hash``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def make_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    """Build a client optimizer by name (``sgd`` or ``adam``)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ConfigurationError(f"client optimizer must be 'sgd' or 'adam', not {name!r}")


def make_loader(x: torch.Tensor, y: torch.Tensor, *, batch_size: int, seed: int) -> DataLoader[Any]:
    """A shuffling loader with its own seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=generator)


def train_round(
    client: LocalClient | PrivateClient,
    global_state: Mapping[str, torch.Tensor],
    *,
    seed: int | None = None,
) -> float:
    """Run one round of the client's local training loop; return the mean batch loss.

    A DP client steps every Poisson-sampled batch, empty ones included (a noise-only
    step that the accountant counts); skipping them would reveal that no example was
    sampled. ``seed`` orders the baseline's batches, and is given to a DP client only in
    its research-only deterministic mode.
    """
    losses: list[float] = []
    private = isinstance(client, PrivateClient)
    with client.round(global_state, seed=seed) as batches, warnings.catch_warnings():
        # An empty Poisson batch makes torch warn that no input requires a gradient.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for inputs, labels in batches:
            if len(labels) == 0 and not private:
                continue
            client.optimizer.zero_grad()
            loss = nn.functional.cross_entropy(client.module(inputs), labels)
            loss.backward()  # type: ignore[no-untyped-call]
            if isinstance(client, NonPrivateClient):
                client.clip_gradients()
            client.optimizer.step()
            if len(labels):
                losses.append(float(loss.detach()))
    return sum(losses) / max(1, len(losses))


def refused_report(
    client_id: str,
    client: LocalClient | PrivateClient,
    epsilon_before: float,
    exc: Exception,
    *,
    train_seconds: float,
) -> ClientReport:
    """The report of a client whose update its payload maker refused (nothing sent)."""
    return ClientReport(
        client_id,
        "refused",
        None,
        epsilon_before,
        client.epsilon(),
        train_seconds=train_seconds,
        note=f"{type(exc).__name__}: {exc}",
    )


def client_round(
    client: LocalClient | PrivateClient,
    payloads: PayloadMaker,
    *,
    client_id: str,
    plan: RoundPlan,
    global_state: Mapping[str, torch.Tensor],
    weight_bound: float,
    seed: int | None,
) -> ClientReport:
    """One client's round: train, make the payload, apply the plan's simulated dropout.

    The round's spending stays pending on the client (settle it with
    ``commit_round``/``discard_round``); a client over its ε budget declines and
    changes nothing.
    """
    epsilon_before = client.epsilon()
    start = time.perf_counter()
    try:
        loss = train_round(client, global_state, seed=seed)
    except PrivacyBudgetExceededError as exc:
        return ClientReport(
            client_id, "declined", None, epsilon_before, epsilon_before, note=str(exc)
        )
    trained = time.perf_counter()
    try:
        made = payloads.payload(
            client.model_update(),
            weight=float(client.num_examples),
            weight_bound=weight_bound,
            round_id=plan.aggregation_round,
            roster=plan.roster,
            scale=plan.update_scale,
        )
    except UpdateValueError as exc:
        return refused_report(client_id, client, epsilon_before, exc, train_seconds=trained - start)
    encrypted = time.perf_counter()
    size = len(made)
    dropout = plan.dropouts.get(client_id)
    payload: bytes | None = made
    if dropout == "silent":
        payload = None
    elif dropout == "truncate":  # killed mid-upload: half a payload arrives
        payload = made[: size // 2]
    return ClientReport(
        client_id,
        "trained",
        payload,
        epsilon_before,
        client.epsilon(),
        loss=loss,
        train_seconds=trained - start,
        encrypt_seconds=encrypted - trained,
        payload_bytes=size,
    )
