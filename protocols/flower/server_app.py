"""The secagg ServerApp: its own round loop, a key-less aggregator, releases by the key holder.

Each round mirrors :meth:`secagg.protocols.Federation._round` step by step (same
sampling RNG, roster, simulated dropouts, commit-for-contributors ledgers, server
optimiser and test metrics), with Flower messages in place of function calls:

1. sample the round's clients (``numpy.random.default_rng([seed, round])``) and send
   ``train`` to their SuperNodes (and to any node whose partition is not known yet);
2. fold every encrypted update into a :class:`secagg.Aggregator`, which holds only the
   server context (a context holding a secret key is refused on load);
3. with fewer than ``min-clients`` updates the round is skipped: the global model stays
   as it was and every node that trained is told to roll its ledger back;
4. otherwise the contributors' spending is final (the others roll back), and the
   encrypted sum goes to the key-holder node in a ``query.release`` message; the
   global model moves only by the flooded mean that comes back.

It does not use ``Strategy.start``, which would send the aggregate (here: a ciphertext)
back to the clients as the next global model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from ..._files import atomic_write_bytes
from ...aggregate import Aggregator
from ...context import ServerContext
from ...errors import (
    ConfigurationError,
    FormatError,
    PayloadError,
    ReleaseError,
    SecaggError,
)
from ..aggregation import AggregatorRoundServer, PlaintextBackend, RoundServer, state_to_bytes
from ..config import FederationConfig
from ..federation import RunResult
from ..plan import RunPlan
from ..roundlog import RoundLog, RoundMetrics, round_metrics
from ..server_opt import ServerOptimizer
from .config import FlowerOptions, client_id, config_from_run_config
from .keys import load_server_context
from .records import (
    MESSAGE_OUTCOME,
    MESSAGE_RELEASE,
    MESSAGE_TRAIN,
    Outcomes,
    bytes_record,
    config_value,
    json_value,
    read_bytes,
    read_state,
    state_record,
    str_list,
)

__all__ = ["FlowerServer", "app", "run_server"]

GLOBAL_STATE_FILE = "global_state.pt"
METRICS_FILE = "metrics.json"

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation configured by the run config."""
    run_server(grid, context)


def run_server(grid: Grid, context: Context) -> RunResult:
    """Run the secagg round loop on ``grid`` with ``context.run_config``; return the result."""
    return FlowerServer(grid, dict(context.run_config)).run()


@dataclass
class _Node:
    """What a SuperNode told the server about itself."""

    partition_id: int | None
    key_holder: bool


@dataclass
class _Released:
    mean: dict[str, torch.Tensor]
    contributors: list[str]


class FlowerServer:
    """The ServerApp's state and round loop.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        Where messages go (the SuperLink, or a test double).
    run_config : Mapping
        The run config (see :mod:`~secagg.protocols.flower.config`).

    Raises
    ------
    SecretKeyExposureError
        If ``server-context`` points at a file holding a secret key.
    ConfigurationError, ContextError
        For an invalid run config or an unreadable server context.
    """

    def __init__(self, grid: Grid, run_config: dict[str, Any]) -> None:
        config, options = config_from_run_config(run_config)
        self.config: FederationConfig = config
        self.options: FlowerOptions = options
        self.grid = grid
        self.server_context: ServerContext | None = None
        if config.he:
            assert options.server_context is not None  # checked in config_from_run_config
            self.server_context = load_server_context(options.server_context)
        if options.threads:
            torch.set_num_threads(options.threads)
        self.plan = RunPlan.load(config)
        self.global_state = self.plan.initial_state()
        self.global_model = self.plan.build_model()
        self.noise_multiplier = self.plan.noise_multiplier()
        self.server_optimizer = ServerOptimizer(config.server_optimizer, lr=config.server_lr)
        self.client_ids = [client_id(i) for i in range(config.clients)]
        start = 0.0 if config.dp else math.inf
        self.epsilons = dict.fromkeys(self.client_ids, start)
        self.nodes: dict[int, _Node] = {}
        self.owed: dict[int, Outcomes] = {}
        self.metrics: list[RoundMetrics] = []
        self._in_flight: dict[int, Outcomes] = {}  # outcomes carried by unanswered messages
        # Aggregation round ids (in payloads and releases) are base + round, with the base
        # from the clock in milliseconds: a key holder releases each round id once and in
        # increasing order, across runs, and a round takes longer than a millisecond.
        self.round_base = time.time_ns() // 1_000_000

    # ------------------------------------------------------------------ the run
    def run(self) -> RunResult:
        """Wait for the SuperNodes, run every round, settle ledgers, write the output."""
        config = self.config
        self._wait_for_nodes()
        for round_id in range(1, config.rounds + 1):
            metrics = self._round(round_id)
            self.metrics.append(metrics)
            log(
                INFO,
                "secagg round %d: %s, accuracy %.4f, %d/%d contributors%s",
                round_id,
                metrics.status,
                metrics.accuracy,
                len(metrics.contributors),
                len(metrics.sampled),
                f" ({metrics.note})" if metrics.note else "",
            )
            self._write_output(finished=False)
        self._settle_outcomes()
        self._write_output(finished=True)
        return RunResult(config, self.metrics, self.global_state)

    def _wait_for_nodes(self) -> None:
        needed = self.options.min_nodes or self.config.clients
        deadline = time.monotonic() + self.options.node_wait_timeout
        while True:
            count = len(list(self.grid.get_node_ids()))
            if count >= needed:
                return
            if time.monotonic() >= deadline:
                log(
                    WARNING, "secagg: %d of %d SuperNodes connected; starting anyway", count, needed
                )
                return
            time.sleep(1.0)

    # ------------------------------------------------------------------ one round
    def _round(self, round_id: int) -> RoundMetrics:
        config = self.config
        rng = np.random.default_rng([config.seed, round_id])
        chosen = np.sort(rng.choice(config.clients, size=config.sampled_per_round, replace=False))
        dropout_draws = rng.random(len(chosen))
        log = RoundLog(round_id, [self.client_ids[i] for i in chosen])
        dropouts = {
            cid: "truncate" if d < config.dropout / 2 else "silent"
            for cid, d in zip(log.roster, dropout_draws, strict=True)
            if d < config.dropout
        }
        start_round = time.perf_counter()

        wire_round = self.round_base + round_id
        replies, sent = self._send_train(round_id, chosen.tolist(), log.roster, dropouts)
        payloads: dict[str, bytes] = {}
        trained: dict[str, tuple[int, float, float]] = {}  # cid -> node, ε before, ε after
        failed: list[str] = []
        answered: set[int] = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                failed.append(f"node {node}: {reply.error.reason}")
                continue
            answered.add(node)
            try:
                self._read_train_reply(
                    node, reply.content, trained, log.declined, payloads, log.seconds
                )
            except PayloadError as exc:
                failed.append(f"node {node}: {exc}")
        self._check_key_holders()
        no_reply = sorted(sent - answered)
        log.dropped = [
            cid
            for cid in log.roster
            if cid in dropouts or (cid not in trained and cid not in log.declined)
        ]
        # Roster order, as the in-process federation adds them.
        log.payloads = [payloads[cid] for cid in log.roster if cid in payloads]
        notes = [f"over budget: {', '.join(log.declined)}"] if log.declined else []
        notes += [f"failed: {'; '.join(failed)}"] if failed else []

        aggregate, reason = log.aggregate(self._round_server(wire_round, log.roster))
        if reason:
            notes.insert(0, reason)
        if aggregate is None:
            self._record_outcomes(round_id, trained, no_reply, contributors=[])
            return self._metrics(log, "skipped", notes, start_round)

        # The contributors' spending is final (their nodes keep it); the rest roll back.
        self._record_outcomes(round_id, trained, no_reply, contributors=log.contributors)
        try:
            with log.timed("decrypt"):
                released = self._release(round_id, wire_round, aggregate, log.contributors)
        except SecaggError as exc:
            return self._metrics(log, "failed", [str(exc), *notes], start_round)
        self.global_state = self.server_optimizer.apply(self.global_state, released.mean)
        return self._metrics(log, "completed", notes, start_round)

    def _send_train(
        self, round_id: int, chosen: list[int], roster: list[str], dropouts: dict[str, str]
    ) -> tuple[list[Message], set[int]]:
        by_partition = {
            n.partition_id: node for node, n in self.nodes.items() if n.partition_id is not None
        }
        targets = [by_partition[p] for p in chosen if p in by_partition]
        targets += [node for node in self.grid.get_node_ids() if node not in self.nodes]
        global_record = state_record(self.global_state)
        round_record = ConfigRecord(
            {
                "round": round_id,
                "aggregation-round": self.round_base + round_id,
                "roster": json.dumps(roster),
                "weight-bound": self.plan.weight_bound,
                "noise-multiplier": -1.0
                if self.noise_multiplier is None
                else float(self.noise_multiplier),
                "dropouts": json.dumps(dropouts),
            }
        )
        messages = []
        self._in_flight = {}
        for node in dict.fromkeys(targets):
            owed = self.owed.get(node, Outcomes())
            self._in_flight[node] = owed.copy()
            content = RecordDict(
                {"global": global_record, "round": round_record, "outcomes": owed.to_record()}
            )
            messages.append(
                Message(
                    content,
                    dst_node_id=node,
                    message_type=MESSAGE_TRAIN,
                    group_id=str(round_id),
                    ttl=self.options.round_timeout,
                )
            )
        sent = {m.metadata.dst_node_id for m in messages}
        if not messages:
            return [], sent
        replies = list(self.grid.send_and_receive(messages, timeout=self.options.round_timeout))
        return replies, sent

    def _read_train_reply(
        self,
        node: int,
        content: RecordDict,
        trained: dict[str, tuple[int, float, float]],
        declined: list[str],
        payloads: dict[str, bytes],
        seconds: dict[str, float],
    ) -> None:
        status = config_value(content, "reply", "status", str)
        partition = config_value(content, "reply", "partition-id", int)
        key_holder = config_value(content, "reply", "key-holder", bool)
        self._delivered(node)
        if node not in self.nodes:
            taken = {n.partition_id for n in self.nodes.values()}
            if partition >= self.config.clients or partition in taken:
                log(
                    WARNING,
                    "secagg: node %d claims partition %d, which is out of range or "
                    "taken by another node; it is not used as a client",
                    node,
                    partition,
                )
                partition = -1
            self.nodes[node] = _Node(partition if partition >= 0 else None, key_holder)
        if status not in ("trained", "declined"):
            return
        expected = self.nodes[node].partition_id
        cid = config_value(content, "reply", "client-id", str)
        if expected is None or cid != client_id(expected):
            raise FormatError(f"node {node} replied for {cid}, which is not its partition")
        if status == "declined":
            declined.append(cid)
            return
        trained[cid] = (
            node,
            float(config_value(content, "reply", "epsilon-before", (int, float))),
            float(config_value(content, "reply", "epsilon-after", (int, float))),
        )
        seconds["train"] += float(config_value(content, "reply", "train-seconds", (int, float)))
        seconds["encrypt"] += float(config_value(content, "reply", "encrypt-seconds", (int, float)))
        if "update" in content.array_records:
            payloads[cid] = read_bytes(content, "update")

    def _delivered(self, node: int) -> None:
        delivered = self._in_flight.get(node)
        if delivered is not None and node in self.owed:
            self.owed[node].remove(delivered)

    def _check_key_holders(self) -> None:
        holders = [node for node, n in self.nodes.items() if n.key_holder]
        if len(holders) > 1:
            raise ConfigurationError(
                f"nodes {holders} all say key-holder=true: exactly one node may release, "
                "so that one file records the key's decryption budget"
            )

    def _record_outcomes(
        self,
        round_id: int,
        trained: dict[str, tuple[int, float, float]],
        no_reply: Iterable[int],
        *,
        contributors: list[str],
    ) -> None:
        for cid, (node, before, after) in trained.items():
            committed = cid in contributors
            self.owed.setdefault(node, Outcomes()).add(round_id, committed=committed)
            self.epsilons[cid] = after if committed else before
        for node in no_reply:  # it may have trained: its update is not in the sum
            self.owed.setdefault(node, Outcomes()).add(round_id, committed=False)

    def _round_server(self, round_id: int, roster: list[str]) -> RoundServer:
        if self.server_context is None:
            return PlaintextBackend().server(
                round_id=round_id, roster=roster, min_clients=self.config.min_clients
            )
        return AggregatorRoundServer(
            Aggregator(
                self.server_context,
                round_id=round_id,
                roster=roster,
                min_clients=self.config.min_clients,
            )
        )

    def _release(
        self, round_id: int, wire_round: int, aggregate: bytes, contributors: list[str]
    ) -> _Released:
        if self.server_context is None:  # the plaintext baseline: nothing to decrypt
            plain = PlaintextBackend().release(aggregate)
            return _Released(plain.mean, list(plain.contributors))
        holders = [node for node, n in self.nodes.items() if n.key_holder]
        if not holders:
            raise ReleaseError("no SuperNode with key-holder=true has answered")
        node = holders[0]
        owed = self.owed.get(node, Outcomes())
        self._in_flight = {node: owed.copy()}
        content = RecordDict(
            {
                "aggregate": bytes_record(aggregate),
                "release": ConfigRecord(
                    {"round": wire_round, "min-clients": self.config.min_clients}
                ),
                "outcomes": owed.to_record(),
            }
        )
        message = Message(
            content,
            dst_node_id=node,
            message_type=MESSAGE_RELEASE,
            group_id=str(round_id),
            ttl=self.options.release_timeout,
        )
        replies = list(self.grid.send_and_receive([message], timeout=self.options.release_timeout))
        if not replies:
            raise ReleaseError(f"the key holder (node {node}) did not answer in time")
        reply = replies[0]
        if reply.has_error():
            raise ReleaseError(f"the key holder refused: {reply.error.reason}")
        self._delivered(node)
        released = str_list(json_value(reply.content, "released", "contributors"), "contributors")
        if config_value(reply.content, "released", "round", int) != wire_round:
            raise ReleaseError("the key holder released another round")
        if sorted(released) != sorted(contributors):
            raise ReleaseError("the released contributors differ from the aggregated ones")
        mean = read_state(reply.content, "mean")
        for name, tensor in mean.items():
            if name not in self.global_state or tensor.shape != self.global_state[name].shape:
                raise ReleaseError(f"released update has an unexpected tensor {name!r}")
        return _Released(mean, released)

    def _settle_outcomes(self) -> None:
        """Tell nodes that still owe a roll-back (their last rounds' outcomes)."""
        owed = {node: o for node, o in self.owed.items() if o.discard}
        if not owed:
            return
        self._in_flight = {node: o.copy() for node, o in owed.items()}
        messages = [
            Message(
                RecordDict({"outcomes": o.to_record()}),
                dst_node_id=node,
                message_type=MESSAGE_OUTCOME,
                ttl=self.options.release_timeout,
            )
            for node, o in owed.items()
        ]
        for reply in self.grid.send_and_receive(messages, timeout=self.options.release_timeout):
            if not reply.has_error():
                self._delivered(reply.metadata.src_node_id)
        missing = sorted(node for node, o in self.owed.items() if o.discard)
        if missing:
            log(
                WARNING,
                "secagg: nodes %s did not confirm their roll-backs; they keep the "
                "spending (conservative)",
                missing,
            )

    # ------------------------------------------------------------------ metrics
    def _metrics(
        self, log: RoundLog, status: str, notes: list[str], start_round: float
    ) -> RoundMetrics:
        log.seconds["wall"] = time.perf_counter() - start_round
        return round_metrics(
            log,
            status,
            "; ".join(notes),
            model=self.global_model,
            state=self.global_state,
            dataset=self.plan.dataset,
            epsilons=list(self.epsilons.values()) if self.config.dp else None,
            delta=self.config.delta,
        )

    def _write_output(self, *, finished: bool) -> None:
        out = self.options.output
        if out is None:
            return
        out = Path(out)
        atomic_write_bytes(out / GLOBAL_STATE_FILE, state_to_bytes(self.global_state), mode=0o644)
        document = {
            "engine": "flower",
            "finished": finished,
            "config": self.config.to_json(),
            "weight_bound": self.plan.weight_bound,
            "noise_multiplier": self.noise_multiplier,
            "round_base": self.round_base,
            "metrics": [asdict(m) for m in self.metrics],
        }
        atomic_write_bytes(out / METRICS_FILE, json.dumps(document, indent=2).encode(), mode=0o644)
