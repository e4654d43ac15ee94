"""What a round is told, what its clients report, and what it records.

- :class:`RoundPlan`: the coordinator's instructions for one round (roster, simulated
  dropouts, the aggregation round id on the wire);
- :class:`ClientReport`: what one client did (trained or declined, its payload, ε);
- :class:`RoundLog` and :class:`RoundMetrics`: what the round recorded, for both engines.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import AggregationError, NotEnoughClientsError, PayloadError
from .datasets import Dataset

__all__ = [
    "ClientReport",
    "RoundLog",
    "RoundMetrics",
    "RoundPlan",
    "evaluate",
    "round_metrics",
]


@dataclass(frozen=True)
class RoundPlan:
    """The coordinator's instructions for one round.

    Attributes
    ----------
    round_id : int
        Training round (1-based; the attention analysis is ``rounds + 1``).
    aggregation_round : int
        The round id in payloads and releases (unique per key, increasing).
    roster : tuple of str
        The sampled clients, in order.
    dropouts : dict[str, str]
        Simulated failures: ``"silent"`` (never uploads) or ``"truncate"`` (killed
        mid-upload), by client id.
    update_scale : float
        The public bound on the coordinates of the payloads' values: clients send
        ``update / update_scale`` and the coordinator multiplies the release back.
    """

    round_id: int
    aggregation_round: int
    roster: tuple[str, ...]
    dropouts: dict[str, str] = field(default_factory=dict)
    update_scale: float = 1.0


@dataclass
class ClientReport:
    """What one client did in a round."""

    client_id: str
    status: str  # "trained", "refused", "declined" or "failed"
    payload: bytes | None
    epsilon_before: float
    epsilon_after: float
    loss: float = float("nan")
    train_seconds: float = 0.0
    encrypt_seconds: float = 0.0
    payload_bytes: int = 0
    note: str = ""


@dataclass
class RoundMetrics:
    """What one round did and cost."""

    round: int
    status: str  # "completed", "skipped" or "failed"
    accuracy: float
    loss: float
    epsilon_max: float | None
    epsilon_mean: float | None
    delta: float
    sampled: list[str]
    contributors: list[str]
    dropped: list[str]
    rejected: list[str]
    bytes_per_client: float
    seconds: dict[str, float]
    note: str = ""


@dataclass
class RoundLog:
    """What happens to one round, collected for its :class:`RoundMetrics`."""

    plan: RoundPlan
    reports: dict[str, ClientReport] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    contributors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            ("train", "encrypt", "aggregate", "decrypt", "wall"), 0.0
        )
    )

    @property
    def trained(self) -> list[str]:
        """Clients that trained this round (their spending is pending)."""
        return [c for c, r in self.reports.items() if r.status == "trained"]

    @property
    def refused(self) -> list[str]:
        """Clients that trained but whose update their payload maker refused (out of
        range): nothing was sent, and their spending is kept (the refusal depends on
        the DP output, so it is counted, never rolled back)."""
        return [c for c, r in self.reports.items() if r.status == "refused"]

    @property
    def declined(self) -> list[str]:
        """Clients whose ε budget did not allow the round."""
        return [c for c, r in self.reports.items() if r.status == "declined"]

    @property
    def dropped(self) -> list[str]:
        """Sampled clients whose payload never arrived whole (failed, silent or cut)."""
        return [
            c
            for c in self.plan.roster
            if c in self.plan.dropouts
            or (c not in self.reports)
            or self.reports[c].status == "failed"
        ]

    def record(self, reports: Sequence[ClientReport]) -> None:
        """Keep the clients' reports and add their timings (``slowest_client``: the
        longest train + encrypt of one client, what a parallel round waits for)."""
        for report in reports:
            self.reports[report.client_id] = report
            self.seconds["train"] += report.train_seconds
            self.seconds["encrypt"] += report.encrypt_seconds
        client = [r.train_seconds + r.encrypt_seconds for r in self.reports.values()]
        self.seconds["slowest_client"] = max(client, default=0.0)

    def aggregate(self, server: object) -> bytes | None:
        """Feed the reports' payloads (roster order) to ``server`` and finalize (timed).

        Rejected payloads are recorded in :attr:`rejected` and the round goes on; with
        too few contributions the reason goes to :attr:`notes` and ``None`` is returned.
        """
        with self.timed("aggregate"):
            for cid in self.plan.roster:
                report = self.reports.get(cid)
                if report is None or report.payload is None:
                    continue
                try:
                    server.add(report.payload)  # type: ignore[attr-defined]
                except (PayloadError, AggregationError) as exc:
                    self.rejected.append(f"{type(exc).__name__}: {exc}")
            self.contributors = list(server.contributors)  # type: ignore[attr-defined]
            try:
                return bytes(server.finalize())  # type: ignore[attr-defined]
            except NotEnoughClientsError as exc:
                self.notes.insert(0, str(exc))
                return None

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the wall time of the block to ``seconds[phase]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def round_metrics(
    log: RoundLog,
    status: str,
    *,
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    dataset: Dataset,
    epsilons: Sequence[float] | None,
    delta: float,
) -> RoundMetrics:
    """Evaluate the global ``state`` on the test split and summarise ``log``.

    ``epsilons`` holds every client's ε (``None`` without DP).
    """
    model.load_state_dict(dict(state))
    accuracy, loss = evaluate(model, dataset.x_test, dataset.y_test)
    sizes = [r.payload_bytes for r in log.reports.values() if r.payload_bytes]
    notes = list(log.notes)
    if log.declined:
        notes.append(f"over budget: {', '.join(log.declined)}")
    refused = [f"{c}: {r.note}" for c, r in log.reports.items() if r.status == "refused"]
    if refused:
        notes.append(f"refused at the client: {'; '.join(refused)}")
    failed = [f"{c}: {r.note}" for c, r in log.reports.items() if r.status == "failed"]
    if failed:
        notes.append(f"failed: {'; '.join(failed)}")
    return RoundMetrics(
        round=log.plan.round_id,
        status=status,
        accuracy=accuracy,
        loss=loss,
        epsilon_max=max(epsilons) if epsilons is not None else None,
        epsilon_mean=float(np.mean(epsilons)) if epsilons is not None else None,
        delta=delta,
        sampled=list(log.plan.roster),
        contributors=log.contributors,
        dropped=sorted(log.dropped),
        rejected=log.rejected,
        bytes_per_client=float(np.mean(sizes)) if sizes else 0.0,
        seconds=dict(log.seconds),
        note="; ".join(notes),
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``(x, y)``."""
    model.eval()
    correct = 0
    loss_sum = 0.0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        labels = y[start : start + batch_size]
        loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
    return correct / len(y), loss_sum / len(y)
