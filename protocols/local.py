"""Client-side pieces of the in-process federation: local training and evaluation."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..client import PrivateClient
from ..errors import ConfigurationError

__all__ = [
    "LocalClient",
    "NonPrivateClient",
    "derive_seed",
    "evaluate",
    "make_loader",
    "make_optimizer",
    "train_round",
]


class LocalClient(Protocol):
    """What the federation needs of a client (DP or not)."""

    module: nn.Module
    optimizer: Any
    num_examples: int

    def round(self, global_state: Mapping[str, torch.Tensor]) -> Any:
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


class NonPrivateClient:
    """The ``--no-dp`` baseline: the same round interface, no noise, ε = ∞.

    With ``max_grad_norm`` the batch gradient is clipped to that norm (no per-sample
    clipping, no noise), so the baseline differs from DP-SGD by exactly the privacy
    mechanism and not by the step size.
    """

    def __init__(
        self,
        *,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: DataLoader[Any],
        max_grad_norm: float | None = None,
    ) -> None:
        self.module = module
        self.max_grad_norm = max_grad_norm
        self.optimizer = optimizer
        self.data_loader = data_loader
        self.num_examples = len(data_loader.dataset)  # type: ignore[arg-type]
        self._global: dict[str, torch.Tensor] = {}
        self.rounds_committed = 0

    @contextlib.contextmanager
    def round(self, global_state: Mapping[str, torch.Tensor]) -> Iterator[Iterator[Any]]:
        """Load the global weights and yield one epoch of batches."""
        with torch.no_grad():
            self.module.load_state_dict(dict(global_state))
        self._global = {n: p.detach().clone() for n, p in self.module.named_parameters()}
        self.optimizer.state.clear()
        self.module.train()
        yield iter(self.data_loader)

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
    client: LocalClient | PrivateClient, global_state: Mapping[str, torch.Tensor]
) -> float:
    """Run one round of the client's local training loop; return the mean batch loss."""
    losses: list[float] = []
    with client.round(global_state) as batches:
        for inputs, labels in batches:
            if len(labels) == 0:  # Poisson sampling can draw an empty batch
                continue
            client.optimizer.zero_grad()
            loss = nn.functional.cross_entropy(client.module(inputs), labels)
            loss.backward()  # type: ignore[no-untyped-call]
            if isinstance(client, NonPrivateClient):
                client.clip_gradients()
            client.optimizer.step()
            losses.append(float(loss.detach()))
    return sum(losses) / max(1, len(losses))


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``(x, y)``."""
    model.eval()
    correct = 0
    loss_sum = 0.0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        labels = y[start : start + batch_size]
        loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
    return correct / len(y), loss_sum / len(y)
