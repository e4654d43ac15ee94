"""The secagg ServerApp: the shared round coordinator, with Flower messages as its transport.

The :class:`~secagg.protocols.coordinator.RoundCoordinator` decides everything a round
does, exactly as in the in-process engine; :class:`FlowerTransport` only carries it:

1. ``train`` messages go to the sampled clients' SuperNodes (and to any node whose
   partition is not known yet); replies carry signed, MAC-tagged encrypted updates;
2. the coordinator sums them holding only the server context and the public registry;
3. round outcomes (whose spending is final, whose is rolled back) ride on the next
   message to each node;
4. the encrypted sum goes to the key-holder node in a ``query.release`` message; the
   key holder verifies it before decrypting and replies with the released mean;
5. after the last round, ``query.attention`` runs the attention analysis.

It does not use ``Strategy.start``, which would send the aggregate (a ciphertext here)
back to the clients as the next global model.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from ..._files import atomic_write_bytes
from ...errors import ConfigurationError, FormatError, PayloadError, ReleaseError
from ..backends import PlaintextRelease, Released, state_to_bytes
from ..config import FederationConfig, client_id
from ..coordinator import RoundCoordinator
from ..inprocess import RunResult
from ..plan import RunPlan
from ..roundlog import ClientReport, RoundPlan
from .config import FlowerOptions, config_from_run_config
from .keys import load_registry, load_server_context
from .latency import quick_pulls
from .records import (
    MESSAGE_ATTENTION,
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

__all__ = ["FlowerServer", "FlowerTransport", "app", "run_server"]

GLOBAL_STATE_FILE = "global_state.pt"
_POLL_SECONDS = 0.05
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


class FlowerTransport:
    """The coordinator's messages as Flower messages.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        Where messages go (the SuperLink, or a test double).
    config : FederationConfig
        The run's options.
    options : FlowerOptions
        Timeouts and paths.
    """

    def __init__(self, grid: Grid, config: FederationConfig, options: FlowerOptions) -> None:
        self.grid = grid
        self.config = config
        self.options = options
        self.nodes: dict[int, _Node] = {}
        self.owed: dict[int, Outcomes] = {}
        self._in_flight: dict[int, Outcomes] = {}  # outcomes carried by unanswered messages
        self._sent: dict[int, set[int]] = {}  # round -> nodes asked to train

    # ------------------------------------------------------------------ nodes
    def wait_for_nodes(self) -> None:
        """Wait until ``min-nodes`` SuperNodes are connected (at most the timeout)."""
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
            time.sleep(0.2)

    def _node_of(self, cid: str) -> int | None:
        for node, known in self.nodes.items():
            if known.partition_id is not None and client_id(known.partition_id) == cid:
                return node
        return None

    def _delivered(self, node: int) -> None:
        delivered = self._in_flight.get(node)
        if delivered is not None and node in self.owed:
            self.owed[node].remove(delivered)

    def _learn(self, node: int, content: RecordDict) -> None:
        partition = config_value(content, "reply", "partition-id", int)
        key_holder = config_value(content, "reply", "key-holder", bool)
        if node in self.nodes:
            return
        taken = {n.partition_id for n in self.nodes.values()}
        if partition >= self.config.clients or partition in taken:
            if partition >= 0:
                log(
                    WARNING,
                    "secagg: node %d claims partition %d, which is out of range or taken by "
                    "another node; it is not used as a client",
                    node,
                    partition,
                )
            partition = -1
        self.nodes[node] = _Node(partition if partition >= 0 else None, key_holder)
        holders = [n for n, known in self.nodes.items() if known.key_holder]
        if len(holders) > 1:
            raise ConfigurationError(
                f"nodes {holders} all say key-holder=true: exactly one node may release, so "
                "that one file records the key's decryption budget"
            )

    def _message(
        self, node: int, message_type: str, records: dict[str, Any], group: int, ttl: float
    ) -> Message:
        owed = self.owed.get(node, Outcomes())
        self._in_flight[node] = owed.copy()
        content = RecordDict({**records, "outcomes": owed.to_record()})
        return Message(
            content, dst_node_id=node, message_type=message_type, group_id=str(group), ttl=ttl
        )

    # ------------------------------------------------------------------ the transport
    def _send_and_receive(self, messages: list[Message], *, timeout: float) -> list[Message]:
        """Push ``messages`` and pull their replies every 50 ms until all arrived or timeout.

        ``Grid.send_and_receive`` waits three seconds between pulls, which would add up
        to three seconds to every exchange of a round; a reply pulled while its sender
        is still uploading it is retried after 50 ms rather than Flower's 1 s
        (:func:`~secagg.protocols.flower.latency.quick_pulls`).
        """
        waiting = set(self.grid.push_messages(messages))
        replies: list[Message] = []
        deadline = time.monotonic() + timeout
        with quick_pulls(sys.modules[type(self.grid).__module__]):
            while waiting:
                pulled = list(self.grid.pull_messages(waiting))
                replies += pulled
                waiting -= {m.metadata.reply_to_message_id for m in pulled}
                if not waiting or time.monotonic() >= deadline:
                    break
                time.sleep(_POLL_SECONDS)
        return replies

    def _exchange(
        self,
        plan: RoundPlan,
        message_type: str,
        global_state: Mapping[str, torch.Tensor],
        extra: dict[str, Any],
    ) -> list[ClientReport]:
        targets = [node for cid in plan.roster if (node := self._node_of(cid)) is not None]
        targets += [node for node in self.grid.get_node_ids() if node not in self.nodes]
        round_record = ConfigRecord(
            {
                "round": plan.round_id,
                "aggregation-round": plan.aggregation_round,
                "roster": json.dumps(list(plan.roster)),
                "dropouts": json.dumps(plan.dropouts),
                **extra,
            }
        )
        global_record = state_record(global_state)
        self._in_flight = {}
        messages = [
            self._message(
                node,
                message_type,
                {"global": global_record, "round": round_record},
                plan.round_id,
                self.options.round_timeout,
            )
            for node in dict.fromkeys(targets)
        ]
        self._sent[plan.round_id] = {m.metadata.dst_node_id for m in messages}
        replies = (
            self._send_and_receive(messages, timeout=self.options.round_timeout) if messages else []
        )
        reports: dict[str, ClientReport] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                failed = self._client_of(node)
                if failed is not None and failed in plan.roster:
                    reports[failed] = ClientReport(
                        failed, "failed", None, 0.0, 0.0, note=str(reply.error.reason)
                    )
                continue
            try:
                self._delivered(node)
                self._learn(node, reply.content)
                report = self._read_report(node, reply.content, plan)
            except PayloadError as exc:
                cid = self._client_of(node)
                if cid is not None and cid in plan.roster:
                    reports[cid] = ClientReport(cid, "failed", None, 0.0, 0.0, note=str(exc))
                continue
            if report is not None:
                reports[report.client_id] = report
        return list(reports.values())

    def _client_of(self, node: int) -> str | None:
        known = self.nodes.get(node)
        return (
            None if known is None or known.partition_id is None else client_id(known.partition_id)
        )

    def _read_report(self, node: int, content: RecordDict, plan: RoundPlan) -> ClientReport | None:
        status = config_value(content, "reply", "status", str)
        if status not in ("trained", "refused", "declined"):
            return None
        cid = config_value(content, "reply", "client-id", str)
        if cid != self._client_of(node):
            raise FormatError(f"node {node} replied for {cid}, which is not its partition")
        if cid not in plan.roster:
            raise FormatError(f"node {node} replied for {cid}, which was not sampled")

        def number(key: str) -> float:
            return float(config_value(content, "reply", key, (int, float)))

        payload = read_bytes(content, "update") if "update" in content.array_records else None
        return ClientReport(
            cid,
            status,
            payload,
            number("epsilon-before"),
            number("epsilon-after"),
            loss=number("loss"),
            train_seconds=number("train-seconds"),
            encrypt_seconds=number("encrypt-seconds"),
            payload_bytes=int(number("payload-bytes")),
            note=str(content.config_records["reply"].get("note", "")),
        )

    def train(
        self, plan: RoundPlan, global_state: Mapping[str, torch.Tensor]
    ) -> list[ClientReport]:
        """Send ``train`` to the sampled clients; return their reports."""
        return self._exchange(plan, MESSAGE_TRAIN, global_state, {})

    def analyse_attention(
        self, plan: RoundPlan, global_state: Mapping[str, torch.Tensor]
    ) -> list[ClientReport]:
        """Send ``query.attention`` to every client node; return their reports."""
        return self._exchange(plan, MESSAGE_ATTENTION, global_state, {})

    def settle(
        self, plan: RoundPlan, *, committed: Sequence[str], discarded: Sequence[str]
    ) -> None:
        """Owe each node its round outcome (delivered with its next message).

        A node that was asked but did not answer may have trained: its update is not in
        the sum, so it is told to roll the round back.
        """
        answered = set(committed) | set(discarded)
        for cid in [*committed, *discarded]:
            node = self._node_of(cid)
            if node is not None:
                outcome = self.owed.setdefault(node, Outcomes())
                outcome.add(plan.round_id, committed=cid in committed)
        for node in self._sent.get(plan.round_id, set()):
            silent = self._client_of(node)
            if silent is not None and silent not in answered:
                self.owed.setdefault(node, Outcomes()).add(plan.round_id, committed=False)

    def release(self, plan: RoundPlan, aggregate: bytes) -> Released:
        """Ask the key-holder node to verify, decrypt and release ``aggregate``."""
        if not self.config.he:  # the plaintext baseline: nothing to decrypt
            return PlaintextRelease().release(aggregate, min_clients=self.config.min_clients)
        holders = [node for node, n in self.nodes.items() if n.key_holder]
        if not holders:
            raise ReleaseError("no SuperNode with key-holder=true has answered")
        node = holders[0]
        self._in_flight = {}
        message = self._message(
            node,
            MESSAGE_RELEASE,
            {
                "aggregate": bytes_record(aggregate),
                "release": ConfigRecord(
                    {"round": plan.aggregation_round, "min-clients": self.config.min_clients}
                ),
            },
            plan.round_id,
            self.options.release_timeout,
        )
        replies = self._send_and_receive([message], timeout=self.options.release_timeout)
        if not replies:
            raise ReleaseError(f"the key holder (node {node}) did not answer in time")
        reply = replies[0]
        if reply.has_error():
            raise ReleaseError(f"the key holder refused: {reply.error.reason}")
        self._delivered(node)
        released = str_list(json_value(reply.content, "released", "contributors"), "contributors")
        if config_value(reply.content, "released", "round", int) != plan.aggregation_round:
            raise ReleaseError("the key holder released another round")
        weight_sum = float(config_value(reply.content, "released", "weight-sum", (int, float)))
        return Released(read_state(reply.content, "mean"), weight_sum, tuple(released))

    def settle_remaining(self) -> None:
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
        for reply in self._send_and_receive(messages, timeout=self.options.release_timeout):
            if not reply.has_error():
                self._delivered(reply.metadata.src_node_id)
        missing = sorted(node for node, o in self.owed.items() if o.discard)
        if missing:
            log(
                WARNING,
                "secagg: nodes %s did not confirm their roll-backs; they keep the spending "
                "(conservative)",
                missing,
            )


class FlowerServer:
    """The ServerApp's state: the coordinator, the transport and the output files.

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
        For an invalid run config or unreadable key files.
    """

    def __init__(self, grid: Grid, run_config: dict[str, Any]) -> None:
        config, options = config_from_run_config(run_config)
        self.config: FederationConfig = config
        self.options: FlowerOptions = options
        if options.threads:
            torch.set_num_threads(options.threads)
        server_context = registry = None
        if config.he:
            if options.server_context is None or options.registry is None:
                raise ConfigurationError("an HE run needs server-context and registry")
            server_context = load_server_context(options.server_context)
            registry = load_registry(options.registry)
        self.plan = RunPlan.load(config)
        self.transport = FlowerTransport(grid, config, options)
        # Aggregation round ids (in payloads and releases) are base + round, with the base
        # from the clock in milliseconds: a key holder releases each round id once and in
        # increasing order, across runs, and a round takes longer than a millisecond.
        self.round_base = time.time_ns() // 1_000_000
        self.coordinator = RoundCoordinator(
            self.plan,
            self.transport,
            server_context=server_context,
            registry=registry,
            aggregation_round=lambda r: self.round_base + r,
        )

    @property
    def global_state(self) -> dict[str, torch.Tensor]:
        """The global model's weights."""
        return self.coordinator.global_state

    def run(self) -> RunResult:
        """Wait for the SuperNodes, run every round and the analysis, write the output."""
        config = self.config
        self.transport.wait_for_nodes()
        for round_id in range(1, config.rounds + 1):
            metrics = self.coordinator.run_round(round_id)
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
        if config.attention_analysis:
            attention = self.coordinator.run_attention()
            for line in attention.describe(5):
                log(INFO, "secagg attention analysis: %s", line)
        self.transport.settle_remaining()
        self._write_output(finished=True)
        return RunResult(
            config,
            self.coordinator.metrics,
            self.coordinator.global_state,
            attention=self.coordinator.attention,
            epsilons=dict(self.coordinator.epsilons),
        )

    def _write_output(self, *, finished: bool) -> None:
        out = self.options.output
        if out is None:
            return
        out = Path(out)
        atomic_write_bytes(out / GLOBAL_STATE_FILE, state_to_bytes(self.global_state), mode=0o644)
        attention = self.coordinator.attention
        document = {
            "engine": "flower",
            "finished": finished,
            "config": self.config.to_json(),
            "weight_bound": self.plan.weight_bound,
            "round_base": self.round_base,
            "metrics": [asdict(m) for m in self.coordinator.metrics],
            # every client's ε over the whole run, the attention analysis included
            "epsilons": dict(self.coordinator.epsilons) if self.config.dp else None,
            "attention": asdict(attention) if attention is not None else None,
        }
        atomic_write_bytes(out / METRICS_FILE, json.dumps(document, indent=2).encode(), mode=0o644)
