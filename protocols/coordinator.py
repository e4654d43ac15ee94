"""One round coordinator for both engines; the engines only carry its messages.

:class:`RoundCoordinator` owns everything a round decides: which clients are sampled
and which of them (simulated) drop out, the aggregation of their payloads by the
key-less server role, which clients' privacy spending becomes final and which is
rolled back, the request to the key holder, the server optimiser, the metrics, and
the attention-analysis round. An engine supplies a :class:`Transport`: how to send
a round to clients and collect their reports, how to tell them the outcome, and how
to ask the key holder for a release. The in-process :class:`~secagg.protocols.Federation`
calls clients directly; the Flower ServerApp sends messages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np
import torch

from ..crypto.context import ServerContext
from ..crypto.registry import ClientRegistry
from ..errors import FormatError, PayloadError, ReleaseError
from .attention import AttentionMap
from .backends import Released, round_server, unscaled
from .config import FederationConfig
from .plan import RunPlan
from .roundlog import ClientReport, RoundLog, RoundMetrics, RoundPlan, round_metrics
from .server_opt import ServerOptimizer

__all__ = ["RoundCoordinator", "Transport"]


class Transport(Protocol):
    """How the coordinator reaches the clients and the key holder."""

    def train(
        self, plan: RoundPlan, global_state: Mapping[str, torch.Tensor]
    ) -> list[ClientReport]:
        """Have the plan's clients train on ``global_state``; return their reports."""
        ...

    def analyse_attention(
        self, plan: RoundPlan, global_state: Mapping[str, torch.Tensor]
    ) -> list[ClientReport]:
        """Have the plan's clients release their noisy attention sums as payloads."""
        ...

    def settle(
        self, plan: RoundPlan, *, committed: Sequence[str], discarded: Sequence[str]
    ) -> None:
        """Tell clients whose pending spending is final and whose is rolled back."""
        ...

    def release(self, plan: RoundPlan, aggregate: bytes) -> Released:
        """Ask the key holder to verify, decrypt and release ``aggregate``."""
        ...


class RoundCoordinator:
    """Runs the rounds of one federation over a :class:`Transport`.

    Parameters
    ----------
    plan : RunPlan
        The run's data, partitions and model.
    transport : Transport
        The engine's messaging.
    server_context, registry : optional
        What the server role needs with HE (no key).
    aggregation_round : callable, optional
        Maps a round number to the round id used on the wire (default: the same).
    before_release : callable, optional
        Called with the round number once the round's spending is settled and before
        the key holder decrypts (the in-process engine checkpoints there).
    """

    def __init__(
        self,
        plan: RunPlan,
        transport: Transport,
        *,
        server_context: ServerContext | None = None,
        registry: ClientRegistry | None = None,
        aggregation_round: Callable[[int], int] = lambda r: r,
        before_release: Callable[[int], None] | None = None,
    ) -> None:
        self.plan = plan
        self.config: FederationConfig = plan.config
        self.transport = transport
        self.server_context = server_context
        self.registry = registry
        self.aggregation_round = aggregation_round
        self.before_release = before_release
        self.client_ids = plan.client_ids
        self.global_state = plan.initial_state()
        self.model = plan.build_model()
        self.server_optimizer = ServerOptimizer(
            self.config.server_optimizer, lr=self.config.server_lr
        )
        start = 0.0 if self.config.dp else math.inf
        self.epsilons: dict[str, float] = dict.fromkeys(self.client_ids, start)
        self.metrics: list[RoundMetrics] = []
        self.attention: AttentionMap | None = None

    # ------------------------------------------------------------------ planning
    def round_plan(self, round_id: int) -> RoundPlan:
        """Sample round ``round_id``'s clients and dropouts (reproducible from the seed)."""
        config = self.config
        rng = np.random.default_rng([config.seed, round_id])
        chosen = np.sort(rng.choice(config.clients, size=config.sampled_per_round, replace=False))
        draws = rng.random(len(chosen))
        roster = tuple(self.client_ids[i] for i in chosen)
        # Half the dropouts are killed mid-upload; the other half never upload.
        dropouts = {
            cid: "truncate" if draw < config.dropout / 2 else "silent"
            for cid, draw in zip(roster, draws, strict=True)
            if draw < config.dropout
        }
        return RoundPlan(
            round_id,
            self.aggregation_round(round_id),
            roster,
            dropouts,
            update_scale=self.plan.update_scale,
        )

    def attention_plan(self) -> RoundPlan:
        """The analysis round: every client, the round after the last training round."""
        round_id = self.config.rounds + 1
        return RoundPlan(
            round_id,
            self.aggregation_round(round_id),
            tuple(self.client_ids),
            update_scale=self.plan.attention_scale,
        )

    # ------------------------------------------------------------------ rounds
    def run_round(self, round_id: int) -> RoundMetrics:
        """Run one training round; the global model moves only by a released mean."""
        plan = self.round_plan(round_id)
        log = RoundLog(plan)
        with log.timed("wall"):
            log.record(self.transport.train(plan, self.global_state))
            released, status = self._aggregate_and_release(log)
            if released is not None:
                self.global_state = self.server_optimizer.apply(self.global_state, released.mean)
        return self._finish(log, status)

    def run_attention(self) -> AttentionMap:
        """Run the attention-analysis round with the final global model."""
        config = self.config
        units = tuple(self.plan.dataset.unit_names)
        sigma = config.attention_noise_multiplier if config.dp else None
        plan = self.attention_plan()
        log = RoundLog(plan)
        log.record(self.transport.analyse_attention(plan, self.global_state))
        released, _ = self._aggregate_and_release(log)
        note = f"over budget: {', '.join(log.declined)}" if log.declined else ""
        if released is None:
            self.attention = AttentionMap(units, (), (), sigma, note="; ".join(log.notes))
            return self.attention
        weights = released.mean["attention"].double().numpy()
        total = sum(len(self.plan.partitions[self.client_ids.index(c)]) for c in log.contributors)
        noise_std = math.sqrt(len(log.contributors)) * sigma / total if sigma else 0.0
        self.attention = AttentionMap(
            unit_names=units,
            weights=tuple(float(w) for w in weights),
            contributors=released.contributors,
            noise_multiplier=sigma,
            noise_std=noise_std,
            note=note,
        )
        return self.attention

    def _aggregate_and_release(self, log: RoundLog) -> tuple[Released | None, str]:
        """Aggregate the payloads, settle the ledgers, ask for the release; give the status.

        ``"skipped"``: too few contributions (no ledger keeps this round's spending);
        ``"failed"``: the key holder did not release (contributors keep their spending:
        a ledger never rolls back once a release was requested); ``"completed"``.
        """
        config = self.config
        plan = log.plan
        server = round_server(
            he=config.he,
            round_id=plan.aggregation_round,
            roster=plan.roster,
            min_clients=config.min_clients,
            server_context=self.server_context,
            registry=self.registry,
        )
        aggregate = log.aggregate(server)
        trained = log.trained
        committed = [c for c in trained if c in log.contributors] if aggregate is not None else []
        discarded = [c for c in trained if c not in committed]
        committed += log.refused  # refused on the client: counted, never rolled back
        self.transport.settle(plan, committed=committed, discarded=discarded)
        for cid in committed:
            self.epsilons[cid] = log.reports[cid].epsilon_after
        for cid in discarded:
            self.epsilons[cid] = log.reports[cid].epsilon_before
        if aggregate is None:
            return None, "skipped"
        if self.before_release is not None:
            self.before_release(plan.round_id)
        try:
            with log.timed("decrypt"):
                released = unscaled(self.transport.release(plan, aggregate), plan.update_scale)
            self._check_released(released, log)
        except (ReleaseError, PayloadError) as exc:
            log.notes.insert(0, f"not released: {exc}")
            return None, "failed"
        return released, "completed"

    def _check_released(self, released: Released, log: RoundLog) -> None:
        if sorted(released.contributors) != sorted(log.contributors):
            raise FormatError("the released contributors differ from the aggregated ones")
        expected = (
            {"attention"}
            if log.plan.round_id > self.config.rounds
            else {n for n, p in self.model.named_parameters() if p.requires_grad}
        )
        if set(released.mean) != expected:
            raise FormatError("the released update does not match the model's parameters")

    def _finish(self, log: RoundLog, status: str) -> RoundMetrics:
        metrics = round_metrics(
            log,
            status,
            model=self.model,
            state=self.global_state,
            dataset=self.plan.dataset,
            epsilons=list(self.epsilons.values()) if self.config.dp else None,
            delta=self.config.delta,
        )
        self.metrics.append(metrics)
        return metrics

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs (tensors in ``global_state`` and ``server_optimizer``)."""
        return {
            "global_state": self.global_state,
            "server_optimizer": self.server_optimizer.state_dict(),
            "metrics": [asdict(m) for m in self.metrics],
            "epsilons": dict(self.epsilons),
            "attention": asdict(self.attention) if self.attention else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.global_state = dict(state["global_state"])
        self.server_optimizer.load_state_dict(state["server_optimizer"])
        self.metrics = [RoundMetrics(**m) for m in state["metrics"]]
        self.epsilons.update({str(k): float(v) for k, v in state["epsilons"].items()})
        saved = state.get("attention")
        if saved:
            tuples = {k: tuple(saved[k]) for k in ("unit_names", "weights", "contributors")}
            self.attention = AttentionMap(**{**saved, **tuples})
        else:
            self.attention = None
