"""The in-process engine: K clients, a key-less server and a key holder in one process.

Each round the :class:`~secagg.protocols.coordinator.RoundCoordinator` samples clients;
this engine hands each sampled client the global weights as bytes, runs its local
training (DP-SGD, CSPRNG noise) and collects its signed, MAC-tagged encrypted update;
the coordinator sums the updates holding only the server context and asks the key
holder, which verifies the sum before it decrypts anything, for the released mean.

Privacy ledgers follow the release: a skipped round rolls every pending spend back;
otherwise the contributors' spending is final and *checkpointed before* the key holder
decrypts, so a crash can over-count spending but never forget it. ``resume`` continues
a stopped run from its checkpoint, with the same keys and key-holder state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..crypto.federation_keys import KEY_HOLDER_FILE, FederationKeys
from ..crypto.keyholder import KeyHolder
from ..errors import CheckpointError
from .attention import AttentionMap, attention_round
from .backends import (
    EncryptedPayloads,
    EncryptedRelease,
    PayloadMaker,
    PlaintextPayloads,
    PlaintextRelease,
    Released,
    Releaser,
    state_from_bytes,
    state_to_bytes,
)
from .checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint, save_checkpoint
from .config import FederationConfig
from .coordinator import RoundCoordinator
from .local import LocalClient, client_round
from .plan import RunPlan
from .roundlog import ClientReport, RoundMetrics, RoundPlan

__all__ = ["KEYS_DIR", "Federation", "RunResult"]

KEYS_DIR = "keys"


@dataclass
class RunResult:
    """A finished (or stopped) run."""

    config: FederationConfig
    metrics: list[RoundMetrics]
    global_state: dict[str, torch.Tensor]
    attention: AttentionMap | None = None
    noise_multipliers: dict[str, float] = field(default_factory=dict)
    epsilons: dict[str, float] = field(default_factory=dict)

    @property
    def final_accuracy(self) -> float:
        """Test accuracy after the last round."""
        return self.metrics[-1].accuracy if self.metrics else float("nan")

    @property
    def epsilon(self) -> float | None:
        """The largest ε any client spent over the whole run, the attention analysis
        included (``None`` without DP)."""
        if not self.config.dp or not self.epsilons:
            return None
        return max(self.epsilons.values())


class Federation:
    """Runs a :class:`FederationConfig` in one process, with checkpoints in ``out_dir``.

    Parameters
    ----------
    config : FederationConfig
        The run's options.
    out_dir : path-like, optional
        Where checkpoints and the keys are kept (needed for ``resume``).
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
        self.client_ids = self.plan.client_ids
        initial = self.plan.initial_state()
        self.clients: list[LocalClient] = [
            self.plan.make_client(i, global_state=initial)  # type: ignore[misc]
            for i in range(config.clients)
        ]
        self.keys: FederationKeys | None = None
        self.key_holder: KeyHolder | None = None
        self._payloads: dict[str, PayloadMaker] = {}
        self._releaser: Releaser = PlaintextRelease()
        self.coordinator = RoundCoordinator(self.plan, self, before_release=self._write_ahead)
        self.rounds_completed = 0

    # ------------------------------------------------------------------ conveniences
    @property
    def dataset(self) -> Any:
        """The run's dataset."""
        return self.plan.dataset

    @property
    def partitions(self) -> list[Any]:
        """Each client's example indices."""
        return self.plan.partitions

    @property
    def weight_bound(self) -> float:
        """The public bound on a client's weight (its example count)."""
        return self.plan.weight_bound

    @property
    def global_state(self) -> dict[str, torch.Tensor]:
        """The global model's weights."""
        return self.coordinator.global_state

    @property
    def metrics(self) -> list[RoundMetrics]:
        """Every completed round's metrics."""
        return self.coordinator.metrics

    @property
    def noise_multipliers(self) -> dict[str, float]:
        """Each DP client's planned σ."""
        return {
            cid: float(c.noise_multiplier)
            for cid, c in zip(self.client_ids, self.clients, strict=True)
            if hasattr(c, "noise_multiplier")
        }

    # ------------------------------------------------------------------ keys
    def _setup_keys(self, *, resume: bool) -> None:
        config = self.config
        if not config.he:
            self._payloads = {cid: PlaintextPayloads(cid) for cid in self.client_ids}
            self._releaser = PlaintextRelease()
            return
        folder = self.out_dir / KEYS_DIR if self.out_dir is not None else None
        if resume and folder is not None and (folder / KEY_HOLDER_FILE).exists():
            self.keys = FederationKeys.load(folder)
            self.key_holder = KeyHolder.open(self.keys.material, folder / KEY_HOLDER_FILE)
        else:
            self.keys = FederationKeys.generate(self.client_ids, preset=config.preset)
            state = None
            if folder is not None:
                self.keys.save(folder)
                state = folder / KEY_HOLDER_FILE
            self.key_holder = self.keys.key_holder(min_clients=config.min_clients, state_path=state)
        keys = self.keys
        self._payloads = {
            cid: EncryptedPayloads(keys.material, keys.signing_keys[cid]) for cid in self.client_ids
        }
        self._releaser = EncryptedRelease(self.key_holder)
        self.coordinator.server_context = keys.server_context()
        self.coordinator.registry = keys.registry

    # ------------------------------------------------------------------ transport
    def train(
        self, plan: RoundPlan, global_state: Mapping[str, torch.Tensor]
    ) -> list[ClientReport]:
        """Each sampled client trains on the broadcast weights and makes its payload."""
        broadcast = state_to_bytes(global_state)
        reports = []
        for cid in plan.roster:
            index = self.client_ids.index(cid)
            reports.append(
                client_round(
                    self.clients[index],
                    self._payloads[cid],
                    client_id=cid,
                    plan=plan,
                    global_state=state_from_bytes(broadcast),
                    weight_bound=self.weight_bound,
                    seed=self.plan.round_seed(plan.round_id, index),
                )
            )
        return reports

    def analyse_attention(
        self, plan: RoundPlan, global_state: Mapping[str, torch.Tensor]
    ) -> list[ClientReport]:
        """Every client releases its noisy attention sum as a payload."""
        config = self.config
        sigma = config.attention_noise_multiplier if config.dp else None
        broadcast = state_to_bytes(global_state)
        reports = []
        for cid in plan.roster:
            index = self.client_ids.index(cid)
            idx = torch.as_tensor(self.partitions[index])
            seed = self.plan.round_seed(plan.round_id, index)
            reports.append(
                attention_round(
                    self.clients[index],
                    self._payloads[cid],
                    client_id=cid,
                    plan=plan,
                    global_state=state_from_bytes(broadcast),
                    inputs=self.dataset.x_train[idx],
                    weight_bound=self.weight_bound,
                    noise_multiplier=sigma,
                    seed=seed if config.dp else None,
                )
            )
        return reports

    def settle(
        self, plan: RoundPlan, *, committed: Sequence[str], discarded: Sequence[str]
    ) -> None:
        """Commit the contributors' pending spending; roll the others back."""
        for cid in committed:
            self.clients[self.client_ids.index(cid)].commit_round()
        for cid in discarded:
            self.clients[self.client_ids.index(cid)].discard_round()

    def release(self, plan: RoundPlan, aggregate: bytes) -> Released:
        """The key holder verifies, decrypts and releases (bytes in, mean out)."""
        return self._releaser.release(aggregate, min_clients=self.config.min_clients)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        """Where the checkpoint lives (``None`` without an output directory)."""
        return self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None

    def write_checkpoint(self, rounds_completed: int, **extra: Any) -> None:
        """Save the coordinator's state and every ledger (atomically)."""
        path = self.checkpoint_path
        if path is None:
            return
        state = self.coordinator.state_dict()
        save_checkpoint(
            path,
            Checkpoint(
                config_digest=self.plan.digest,
                rounds_completed=rounds_completed,
                global_state=state["global_state"],
                server_optimizer=state["server_optimizer"],
                ledgers={
                    cid: client.state_dict()
                    for cid, client in zip(self.client_ids, self.clients, strict=True)
                },
                metrics=state["metrics"],
                extra={
                    **extra,
                    "epsilons": state["epsilons"],
                    "attention": state["attention"],
                },
            ),
        )

    def _write_ahead(self, round_id: int) -> None:
        """The settled spending is on disk before the key holder decrypts anything."""
        self.write_checkpoint(self.rounds_completed, releasing_round=round_id)

    def _restore(self) -> None:
        path = self.checkpoint_path
        if path is None or not path.exists():
            raise CheckpointError("nothing to resume: no checkpoint in the output directory")
        checkpoint = load_checkpoint(path, config_digest=self.plan.digest)
        self.coordinator.load_state_dict(
            {
                "global_state": checkpoint.global_state,
                "server_optimizer": checkpoint.server_optimizer,
                "metrics": checkpoint.metrics,
                "epsilons": checkpoint.extra.get("epsilons", {}),
                "attention": checkpoint.extra.get("attention"),
            }
        )
        for cid, client in zip(self.client_ids, self.clients, strict=True):
            try:
                client.load_state_dict(checkpoint.ledgers[cid])
            except KeyError:
                raise CheckpointError(f"checkpoint has no ledger for {cid}") from None
        self.rounds_completed = checkpoint.rounds_completed

    # ------------------------------------------------------------------ the run
    def run(self, *, resume: bool = False, stop_after: int | None = None) -> RunResult:
        """Run (or resume) the federation.

        Parameters
        ----------
        resume : bool
            Continue from the checkpoint in ``out_dir``.
        stop_after : int, optional
            Stop after this many completed rounds (for tests and staged runs).

        Raises
        ------
        CheckpointError
            If ``resume`` finds no usable checkpoint.
        ContextError
            If ``resume`` finds unusable key files.
        """
        if resume and self.out_dir is None:
            raise CheckpointError("resume needs the run's output directory")
        self._setup_keys(resume=resume)
        if resume:
            self._restore()
        else:
            self.write_checkpoint(0)
        config = self.config
        last = config.rounds if stop_after is None else min(stop_after, config.rounds)
        for round_id in range(self.rounds_completed + 1, last + 1):
            metrics = self.coordinator.run_round(round_id)
            self.rounds_completed = round_id
            self.write_checkpoint(round_id)
            if self.on_round is not None:
                self.on_round(metrics)
        if (
            self.coordinator.attention is None
            and config.attention_analysis
            and self.rounds_completed == config.rounds
        ):
            self.coordinator.run_attention()
            self.write_checkpoint(self.rounds_completed)
        return RunResult(
            config,
            self.metrics,
            self.global_state,
            attention=self.coordinator.attention,
            noise_multipliers=self.noise_multipliers,
            epsilons=dict(self.coordinator.epsilons),
        )
