"""The secagg ClientApp: a client's round, the attention analysis and the key holder's release.

Every SuperNode runs this app; its node config says what it does (see
:func:`~secagg.protocols.flower.config.node_role`):

- a **client node** (``partition-id``, ``num-partitions``, ``secret-context``,
  ``signing-key``) runs :func:`secagg.protocols.local.client_round` on its partition of
  the run's dataset (the same code as the in-process engine) and replies with its
  signed, MAC-tagged encrypted update; after the last round it answers
  ``query.attention`` with its noisy attention sum;
- the **key-holder node** (``key-holder=true``, ``secret-context``, ``key-holder-state``;
  it may be a client node too) answers ``query.release``: it verifies the server's
  encrypted sum before decrypting anything and releases only the mean (exact, or noise-flooded).
  Its state file records the spent decryption budget, so exactly one node holds this role.

A node forwards every message to its warm worker process (:mod:`.worker`), which keeps
torch, Opacus and the run's data loaded across messages; ``warm-worker=false`` in the
node config handles each message in the ClientApp process itself.

Privacy ledgers live in the node's run state (``Context.state``), which Flower keeps
between messages of a run. A round's spending is recorded at once with an undo
snapshot; the server later tells the node the round's outcome, and the node rolls the
round back only when told that its update was not released (a skipped round, a
dropout, a rejected payload): a lost message can over-count spending, never forget it.
Noise and batch sampling come from each node's OS CSPRNG; the server never knows them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log

from ...errors import ConfigurationError, FormatError, ReleaseError, RoundMismatchError
from ..config import FederationConfig
from . import worker
from .config import NodeRole, config_from_run_config, node_role
from .records import (
    Outcomes,
    bytes_record,
    config_value,
    json_value,
    read_bytes,
    read_state,
    state_record,
    str_list,
)

__all__ = ["app", "handle_attention", "handle_outcome", "handle_release", "handle_train"]

_CLIENT_STATE = "secagg.client"

app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train on this node's partition and reply with the encrypted update."""
    return Message(_dispatch("train", message.content, context), reply_to=message)


@app.query("attention")
def attention(message: Message, context: Context) -> Message:
    """Reply with this node's noisy attention sum, encrypted."""
    return Message(_dispatch("attention", message.content, context), reply_to=message)


@app.query("release")
def release(message: Message, context: Context) -> Message:
    """Key holder: verify the encrypted sum, decrypt it and reply with the mean."""
    return Message(_dispatch("release", message.content, context), reply_to=message)


@app.query("outcome")
def outcome(message: Message, context: Context) -> Message:
    """Apply round outcomes the server still owed this node."""
    return Message(_dispatch("outcome", message.content, context), reply_to=message)


def _dispatch(kind: str, content: RecordDict, context: Context) -> RecordDict:
    """Run handler ``kind`` in the node's warm worker, or here with ``warm-worker=false``."""
    if worker.enabled(context):
        return worker.call(kind, content, context)
    handlers = {
        "train": handle_train,
        "attention": handle_attention,
        "release": handle_release,
        "outcome": handle_outcome,
    }
    return handlers[kind](content, context)


_PLANS: dict[str, Any] = {}


def _run_plan(config: FederationConfig) -> Any:
    """The run's data and partitions, loaded once per process (a warm worker keeps it)."""
    from ..plan import RunPlan

    digest = config.digest()
    if digest not in _PLANS:
        if len(_PLANS) >= 4:
            _PLANS.pop(next(iter(_PLANS)))
        _PLANS[digest] = RunPlan.load(config)
    return _PLANS[digest]


@dataclass
class _ClientState:
    """A client node's run state: its privacy ledger and undo snapshot."""

    ledger: str = ""  # JSON client.state_dict(), the latest round included
    undo_round: int = 0  # the round ``undo_ledger`` rolls back (0: nothing to undo)
    undo_ledger: str = ""
    last_round: int = 0  # the latest round worked on (older messages are refused)

    @classmethod
    def read(cls, state: RecordDict) -> _ClientState:
        record = state.config_records.get(_CLIENT_STATE)
        if record is None:
            return cls()
        return cls(
            ledger=str(record["ledger"]),
            undo_round=int(record["undo-round"]),  # type: ignore[arg-type]
            undo_ledger=str(record["undo-ledger"]),
            last_round=int(record["last-round"]),  # type: ignore[arg-type]
        )

    def write(self, state: RecordDict) -> None:
        state.config_records[_CLIENT_STATE] = ConfigRecord(
            {
                "ledger": self.ledger,
                "undo-round": self.undo_round,
                "undo-ledger": self.undo_ledger,
                "last-round": self.last_round,
            }
        )

    def apply(self, outcomes: Outcomes) -> None:
        """Commit or roll back the pending round as the server says."""
        if not self.undo_round:
            return
        if self.undo_round in outcomes.discard:
            log(
                INFO,
                "secagg: round %d was not released with this update: rolled back",
                self.undo_round,
            )
            self.ledger = self.undo_ledger
            self._settle()
        elif self.undo_round in outcomes.commit:
            self._settle()

    def settle_before(self, round_id: int) -> None:
        """Keep an earlier round's spending if its outcome never arrived (conservative)."""
        if self.undo_round and self.undo_round < round_id:
            log(WARNING, "secagg: no outcome for round %d; its spending is kept", self.undo_round)
            self._settle()

    def _settle(self) -> None:
        self.undo_round = 0
        self.undo_ledger = ""


def _setup(context: Context) -> tuple[FederationConfig, NodeRole]:
    """Read and cross-check the run config and the node config; apply ``threads``."""
    config, options = config_from_run_config(context.run_config)
    role = node_role(context.node_config)
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    if role.is_client and role.num_partitions != config.clients:
        raise ConfigurationError(
            f"node has num-partitions={role.num_partitions} but the run has "
            f"clients={config.clients}"
        )
    if role.is_client and config.he and (role.secret_context is None or role.signing_key is None):
        raise ConfigurationError(
            "an HE client node needs secret-context and signing-key in its node config"
        )
    return config, role


def _client_turn(
    content: RecordDict,
    context: Context,
    work: Callable[..., Any],
) -> RecordDict:
    """What a training or analysis message does on a client node (see the module docs)."""
    from ..backends import EncryptedPayloads, PlaintextPayloads
    from ..config import client_id
    from ..roundlog import RoundPlan
    from .keys import load_secret_context, load_signing_key

    config, role = _setup(context)
    reply = ConfigRecord(
        {
            "partition-id": -1 if role.partition_id is None else role.partition_id,
            "key-holder": role.key_holder,
        }
    )
    if role.partition_id is None:
        reply["status"] = "not-a-client"
        return RecordDict({"reply": reply})
    index = role.partition_id
    cid = client_id(index)
    reply["client-id"] = cid
    state = _ClientState.read(context.state)
    state.apply(Outcomes.from_content(content))
    round_id = config_value(content, "round", "round", int)
    roster = tuple(str_list(json_value(content, "round", "roster"), "roster"))
    if cid not in roster:
        state.write(context.state)
        reply["status"] = "not-sampled"
        return RecordDict({"reply": reply})
    if round_id <= state.last_round:
        raise RoundMismatchError(
            f"message for round {round_id}, but this node already worked on round "
            f"{state.last_round}; refusing a stale or replayed round"
        )
    state.settle_before(round_id)
    dropouts = json_value(content, "round", "dropouts")
    if not isinstance(dropouts, dict) or not all(isinstance(v, str) for v in dropouts.values()):
        raise FormatError("round.dropouts must map client ids to strings")
    plan = RoundPlan(
        round_id,
        config_value(content, "round", "aggregation-round", int),
        roster,
        {str(k): v for k, v in dropouts.items()},
    )
    global_state = read_state(content, "global")
    run = _run_plan(config)
    client = run.make_client(index, global_state=global_state)
    if config.he:
        assert role.secret_context is not None and role.signing_key is not None  # _setup
        payloads: Any = EncryptedPayloads(
            load_secret_context(role.secret_context),
            load_signing_key(role.signing_key, client=cid),
        )
    else:
        payloads = PlaintextPayloads(cid)
    try:
        if state.ledger:
            client.load_state_dict(json.loads(state.ledger))
        before = client.state_dict()
        report = work(client, payloads, cid, plan, global_state, run, index)
        if report.status in ("trained", "refused"):
            client.commit_round()
    finally:
        close = getattr(client, "close", None)
        if close is not None:
            close()
    if report.status in ("trained", "refused"):
        state.ledger = json.dumps(client.state_dict())
    if report.status == "trained":  # a refused update is counted for good: no undo
        state.undo_round = round_id
        state.undo_ledger = json.dumps(before)
    state.last_round = round_id
    state.write(context.state)
    reply.update(
        {
            "status": report.status,
            "round": round_id,
            "epsilon-before": float(report.epsilon_before),
            "epsilon-after": float(report.epsilon_after),
            "loss": float(report.loss),
            "train-seconds": report.train_seconds,
            "encrypt-seconds": report.encrypt_seconds,
            "payload-bytes": report.payload_bytes,
            "note": report.note,
        }
    )
    out = RecordDict({"reply": reply})
    if report.payload is not None:
        out.array_records["update"] = bytes_record(report.payload)
    log(
        INFO,
        "secagg: %s %s round %d (%d bytes)",
        cid,
        report.status,
        round_id,
        report.payload_bytes,
    )
    return out


def handle_train(content: RecordDict, context: Context) -> RecordDict:
    """Handle a ``train`` message (see :mod:`~secagg.protocols.flower.records`).

    Raises
    ------
    ConfigurationError, FormatError, ContextError
        For a bad run config, node config or message, or an unusable key file.
    """
    from ..local import client_round

    def work(
        client: Any, payloads: Any, cid: str, plan: Any, state: Any, run: Any, index: int
    ) -> Any:
        return client_round(
            client,
            payloads,
            client_id=cid,
            plan=dataclasses.replace(plan, update_scale=run.update_scale),
            global_state=state,
            weight_bound=run.weight_bound,
            seed=run.round_seed(plan.round_id, index),
        )

    return _client_turn(content, context, work)


def handle_attention(content: RecordDict, context: Context) -> RecordDict:
    """Handle a ``query.attention`` message: this node's noisy attention sum, encrypted."""
    import torch

    from ..attention import attention_round

    def work(
        client: Any, payloads: Any, cid: str, plan: Any, state: Any, run: Any, index: int
    ) -> Any:
        config = run.config
        idx = torch.as_tensor(run.partitions[index])
        return attention_round(
            client,
            payloads,
            client_id=cid,
            plan=dataclasses.replace(plan, update_scale=run.attention_scale),
            global_state=state,
            inputs=run.dataset.x_train[idx],
            weight_bound=run.weight_bound,
            noise_multiplier=config.attention_noise_multiplier if config.dp else None,
            seed=None,
        )

    return _client_turn(content, context, work)


def handle_release(content: RecordDict, context: Context) -> RecordDict:
    """Handle a ``query.release`` message on the key-holder node.

    The key holder verifies the aggregate's MAC before decrypting anything, enforces its
    own floor on the number of contributions (the state file's ``min_clients``, raised
    to the run's), and releases each round at most once.

    Raises
    ------
    ReleaseError
        If this node is not the key holder, or it refuses the aggregate (integrity,
        budget, roster, round already released).
    PayloadError
        If the aggregate is malformed or made under another key.
    """
    from ...crypto.server import EncryptedAggregate
    from .keys import open_key_holder

    config, role = _setup(context)
    if not role.key_holder or role.secret_context is None or role.key_holder_state is None:
        raise ReleaseError("this node is not the key holder (node config key-holder=true)")
    if role.is_client:
        state = _ClientState.read(context.state)
        state.apply(Outcomes.from_content(content))
        state.write(context.state)
    round_id = config_value(content, "release", "round", int)
    requested = config_value(content, "release", "min-clients", int)
    holder = open_key_holder(role.secret_context, role.key_holder_state)
    aggregate = EncryptedAggregate.from_bytes(
        read_bytes(content, "aggregate"), holder.keys.server_context_object()
    )
    if aggregate.round_id != round_id:
        raise FormatError(f"aggregate is for round {aggregate.round_id}, not {round_id}")
    released = holder.release(aggregate, min_clients=max(requested, config.min_clients))
    log(
        INFO,
        "secagg: released round %d (%d contributors, %d decryptions left)",
        round_id,
        len(released.contributors),
        holder.decryptions_left,
    )
    return RecordDict(
        {
            "mean": state_record(released.mean),
            "released": ConfigRecord(
                {
                    "round": released.round_id,
                    "weight-sum": released.weight_sum,
                    "flooding-std": released.flooding_std,
                    "contributors": json.dumps(list(released.contributors)),
                    "decryptions-left": holder.decryptions_left,
                }
            ),
        }
    )


def handle_outcome(content: RecordDict, context: Context) -> RecordDict:
    """Handle a ``query.outcome`` message: settle the pending round as told."""
    role = node_role(context.node_config)
    if role.is_client:
        state = _ClientState.read(context.state)
        state.apply(Outcomes.from_content(content))
        state.write(context.state)
    return RecordDict({"reply": ConfigRecord({"status": "settled"})})
