"""What a round records: its log while it runs and its :class:`RoundMetrics` when it ends.

Both engines (the in-process federation and the Flower ServerApp) fill a :class:`RoundLog`
and turn it into the same :class:`RoundMetrics` with :func:`round_metrics`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .datasets import Dataset
from ..errors import AggregationError, NotEnoughClientsError, PayloadError
from .aggregation import RoundServer
from .local import evaluate

__all__ = ["RoundLog", "RoundMetrics", "round_metrics"]


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

    round_id: int
    roster: list[str]
    dropped: list[str] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)
    declined: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    contributors: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("train", "encrypt", "aggregate", "decrypt"), 0.0)
    )

    def aggregate(self, server: RoundServer) -> tuple[bytes | None, str]:
        """Feed :attr:`payloads` to ``server`` (timed as "aggregate") and finalize.

        Rejected payloads are recorded in :attr:`rejected` and the round goes on.

        Returns
        -------
        tuple of (bytes or None) and str
            The serialized aggregate, or ``None`` with the reason when too few
            contributions arrived.
        """
        with self.timed("aggregate"):
            for payload in self.payloads:
                try:
                    server.add(payload)
                except (PayloadError, AggregationError) as exc:
                    self.rejected.append(f"{type(exc).__name__}: {exc}")
            self.contributors = list(server.contributors)
            try:
                return server.finalize(), ""
            except NotEnoughClientsError as exc:
                return None, str(exc)

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the wall time of the block to ``seconds[phase]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


def round_metrics(
    log: RoundLog,
    status: str,
    note: str,
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
    sizes = [len(p) for p in log.payloads]
    return RoundMetrics(
        round=log.round_id,
        status=status,
        accuracy=accuracy,
        loss=loss,
        epsilon_max=max(epsilons) if epsilons is not None else None,
        epsilon_mean=float(np.mean(epsilons)) if epsilons is not None else None,
        delta=delta,
        sampled=log.roster,
        contributors=log.contributors,
        dropped=sorted(log.dropped),
        rejected=log.rejected,
        bytes_per_client=float(np.mean(sizes)) if sizes else 0.0,
        seconds=log.seconds,
        note=note,
    )
