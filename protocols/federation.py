"""The in-process federation: K clients, T rounds, DP-SGD, CKKS secure aggregation.

Each round: the server samples clients and broadcasts the global weights (bytes);
sampled clients train with DP-SGD and send encrypted updates (bytes); the
aggregator sums ciphertexts holding only the server context; the key holder
releases the flooded weighted mean (bytes); the global model moves only by that
mean (through the server optimiser) and is evaluated on a held-out test split.

Privacy ledgers follow the release: a skipped round (fewer than ``min_clients``
updates) discards every pending spend; otherwise the contributors' spending is
committed *and checkpointed before* the key holder decrypts, so a crash can
over-count spending but never forget it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .datasets import Dataset
from ..errors import (
    CheckpointError,
    PrivacyBudgetExceededError,
    ReleaseError,
)
from ..keys import KeyHolder
from .aggregation import (
    AggregationBackend,
    EncryptedBackend,
    PlaintextBackend,
    state_from_bytes,
    state_to_bytes,
)
from .attention import AttentionMap, federated_attention
from .checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint, save_checkpoint
from .config import FederationConfig
from .local import (
    derive_seed,
    train_round,
)
from .plan import RunPlan
from .roundlog import RoundLog, RoundMetrics, round_metrics
from .server_opt import ServerOptimizer

__all__ = ["Federation", "FederationConfig", "RoundMetrics", "RunResult"]

KEY_FILE = "keys/secret-context.secagg"


@dataclass
class RunResult:
    """A finished (or stopped) run."""

    config: FederationConfig
    metrics: list[RoundMetrics]
    global_state: dict[str, torch.Tensor]
    centralized: dict[str, float] = field(default_factory=dict)
    attention: AttentionMap | None = None

    @property
    def final_accuracy(self) -> float:
        """Test accuracy after the last round."""
        return self.metrics[-1].accuracy if self.metrics else float("nan")


class Federation:
    """Runs a :class:`FederationConfig` in one process, with checkpoints in ``out_dir``.

    Parameters
    ----------
    config : FederationConfig
        The run's options.
    out_dir : path-like, optional
        Where checkpoints and the secret context are kept (needed for ``resume``).
    on_round : callable, optional
        Called with each round's :class:`RoundMetrics` (for progress displays).
    """

    def __init__(
        self,
        config: FederationConfig,
        *,
        out_dir: str | Path | None = None,
        on_round: Callable[[RoundMetrics], None] | None = None,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.on_round = on_round
        self.plan = RunPlan.load(config)
        self.dataset: Dataset = self.plan.dataset
        self.partitions = self.plan.partitions
        self.weight_bound = self.plan.weight_bound
        self.client_ids = [f"client-{i:03d}" for i in range(config.clients)]
        self.global_state = self.plan.initial_state()
        self.global_model = self.plan.build_model()
        self.noise_multiplier = self.plan.noise_multiplier()
        built = [
            self.plan.make_client(
                i, global_state=self.global_state, noise_multiplier=self.noise_multiplier
            )
            for i in range(config.clients)
        ]
        self.clients = [client for client, _ in built]
        self._batch_generators = [generator for _, generator in built]
        self.server_optimizer = ServerOptimizer(config.server_optimizer, lr=config.server_lr)
        self.keys: KeyHolder | None = None
        self.backend: AggregationBackend = PlaintextBackend()
        self.metrics: list[RoundMetrics] = []
        self.rounds_completed = 0
        self._attention: AttentionMap | None = None

    # ------------------------------------------------------------------ set-up
    def _setup_keys(self, *, resume: bool) -> None:
        if not self.config.he:
            self.backend = PlaintextBackend()
            return
        key_path = self.out_dir / KEY_FILE if self.out_dir is not None else None
        if resume and key_path is not None and key_path.exists():
            self.keys = KeyHolder.load(key_path)
        else:
            self.keys = KeyHolder.generate(self.config.preset, min_clients=self.config.min_clients)
            if key_path is not None:
                self.keys.save(key_path)
        self.backend = EncryptedBackend(self.keys)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        """Where the checkpoint lives (``None`` without an output directory)."""
        return self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None

    def _ledgers(self) -> dict[str, dict[str, Any]]:
        return {
            cid: client.state_dict()  # type: ignore[union-attr]
            for cid, client in zip(self.client_ids, self.clients, strict=True)
        }

    def write_checkpoint(self, rounds_completed: int, **extra: Any) -> None:
        path = self.checkpoint_path
        if path is None:
            return
        save_checkpoint(
            path,
            Checkpoint(
                config_digest=self.config.digest(),
                rounds_completed=rounds_completed,
                global_state=self.global_state,
                server_optimizer=self.server_optimizer.state_dict(),
                ledgers=self._ledgers(),
                metrics=[asdict(m) for m in self.metrics],
                extra={
                    **extra,
                    "attention": asdict(self._attention) if self._attention else None,
                },
            ),
        )

    def _restore(self) -> None:
        path = self.checkpoint_path
        if path is None or not path.exists():
            raise CheckpointError("nothing to resume: no checkpoint in the output directory")
        checkpoint = load_checkpoint(path, config_digest=self.config.digest())
        self.global_state = checkpoint.global_state
        self.server_optimizer.load_state_dict(checkpoint.server_optimizer)
        for cid, client in zip(self.client_ids, self.clients, strict=True):
            client.load_state_dict(checkpoint.ledgers[cid])  # type: ignore[union-attr]
        self.metrics = [RoundMetrics(**m) for m in checkpoint.metrics]
        self.rounds_completed = checkpoint.rounds_completed
        saved = checkpoint.extra.get("attention")
        if saved:
            self._attention = AttentionMap(
                unit_names=tuple(saved["unit_names"]),
                weights=tuple(saved["weights"]),
                contributors=tuple(saved["contributors"]),
                noise_multiplier=saved["noise_multiplier"],
                note=saved["note"],
            )

    # ------------------------------------------------------------------ the run
    def run(self, *, resume: bool = False, stop_after: int | None = None) -> RunResult:
        """Run (or resume) the federation.

        Parameters
        ----------
        resume : bool
            Continue from the checkpoint in ``out_dir``.
        stop_after : int, optional
            Stop after this many completed rounds (for tests and staged runs).
        """
        self._setup_keys(resume=resume)
        if resume:
            self._restore()
        else:
            self.write_checkpoint(0)
        last = self.config.rounds if stop_after is None else min(stop_after, self.config.rounds)
        for round_id in range(self.rounds_completed + 1, last + 1):
            metrics = self._round(round_id)
            self.metrics.append(metrics)
            self.rounds_completed = round_id
            self.write_checkpoint(round_id)
            if self.on_round is not None:
                self.on_round(metrics)
        attention = self._attention
        if (
            attention is None
            and self.config.attention_analysis
            and self.rounds_completed == self.config.rounds
        ):
            attention = federated_attention(self)
            self._attention = attention
            self.write_checkpoint(self.rounds_completed)
        return RunResult(self.config, self.metrics, self.global_state, attention=attention)

    def _round(self, round_id: int) -> RoundMetrics:
        config = self.config
        rng = np.random.default_rng([config.seed, round_id])
        chosen = np.sort(rng.choice(config.clients, size=config.sampled_per_round, replace=False))
        dropout_draws = rng.random(len(chosen))
        log = RoundLog(round_id, [self.client_ids[i] for i in chosen])
        log.dropped = [
            c for c, d in zip(log.roster, dropout_draws, strict=True) if d < config.dropout
        ]
        broadcast = state_to_bytes(self.global_state)
        for index, draw in zip(chosen.tolist(), dropout_draws.tolist(), strict=True):
            payload = self._client_turn(index, log, broadcast)
            if payload is None or self.client_ids[index] not in log.dropped:
                log.payloads += [payload] if payload is not None else []
            elif draw < config.dropout / 2:
                # Half the dropouts are killed mid-upload; the other half never upload.
                log.payloads.append(payload[: len(payload) // 2])

        server = self.backend.server(
            round_id=round_id, roster=log.roster, min_clients=config.min_clients
        )
        aggregate, note = log.aggregate(server)
        if aggregate is None:
            for index in log.trained:
                self.clients[index].discard_round()
            return self._metrics(log, "skipped", note)

        for index in log.trained:
            if self.client_ids[index] in log.contributors:
                self.clients[index].commit_round()
            else:
                self.clients[index].discard_round()
        # Write-ahead: the spending is on disk before anything is decrypted.
        self.write_checkpoint(round_id - 1, releasing_round=round_id)
        try:
            with log.timed("decrypt"):
                released = self.backend.release(aggregate)
        except ReleaseError as exc:
            return self._metrics(log, "failed", str(exc))
        self.global_state = self.server_optimizer.apply(self.global_state, released.mean)
        declined = f"over budget: {', '.join(log.declined)}" if log.declined else ""
        return self._metrics(log, "completed", declined)

    def _client_turn(self, index: int, log: RoundLog, broadcast: bytes) -> bytes | None:
        """Client ``index`` trains on the broadcast weights and makes its payload."""
        config = self.config
        client = self.clients[index]
        cid = self.client_ids[index]
        # Every random draw of a round derives from (seed, round, client): a resumed run
        # draws exactly what the uninterrupted run would have.
        torch.manual_seed(derive_seed(config.seed, log.round_id, index))
        self._batch_generators[index].manual_seed(derive_seed(config.seed, log.round_id, index, 1))
        try:
            with log.timed("train"):
                train_round(client, state_from_bytes(broadcast))
        except PrivacyBudgetExceededError:
            log.declined.append(cid)
            return None
        log.trained.append(index)
        with log.timed("encrypt"):
            return self.backend.client_payload(
                client.model_update(),
                weight=float(client.num_examples),
                weight_bound=self.weight_bound,
                round_id=log.round_id,
                client_id=cid,
                roster=log.roster,
            )

    def _metrics(self, log: RoundLog, status: str, note: str) -> RoundMetrics:
        epsilons = [c.epsilon() for c in self.clients] if self.config.dp else None
        return round_metrics(
            log,
            status,
            note,
            model=self.global_model,
            state=self.global_state,
            dataset=self.dataset,
            epsilons=epsilons,
            delta=self.config.delta,
        )
