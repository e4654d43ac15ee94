"""The secagg ClientApp: DP-SGD training, encrypted updates, and the key holder's release.

Every SuperNode runs this app; its node config says what it does (see
:func:`~secagg.protocols.flower.config.node_role`):

- a **client node** (``partition-id``, ``num-partitions``, ``secret-context``) takes its
  partition of the run's dataset, trains the global model with DP-SGD
  (:class:`~secagg.client.PrivateClient`, or the non-private baseline), and replies
  with its update encrypted under the shared secret key;
- the **key-holder node** (``key-holder=true``, ``secret-context``; it may be a client
  node too) answers ``query.release``: it decrypts the server's encrypted sum, checks
  its rosters, and releases only the noise-flooded weighted mean. Its secret context
  file records the spent decryption budget, so exactly one node holds this role.

Privacy ledgers live in the node's run state (``Context.state``), which Flower keeps
between messages of a run. A trained round is recorded as spent at once, with an undo
snapshot: the server later tells the node the round's outcome, and the node rolls the
round back only when told that its update was not released (a skipped round, a
dropout, a rejected payload) — the same commit-for-contributors rule as the in-process
federation, and a lost message can over-count spending but never forget it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from logging import INFO, WARNING

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log

from ...aggregate import EncryptedAggregate
from ...errors import (
    ConfigurationError,
    FormatError,
    PrivacyBudgetExceededError,
    ReleaseError,
    RoundMismatchError,
)
from ..aggregation import AggregationBackend, EncryptedBackend, PlaintextBackend
from ..config import FederationConfig
from ..local import derive_seed, train_round
from ..plan import RunPlan
from .config import NodeRole, client_id, config_from_run_config, node_role
from .keys import load_secret_context
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

__all__ = ["app", "handle_outcome", "handle_release", "handle_train"]

_CLIENT_STATE = "secagg.client"

app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train on this node's partition and reply with the encrypted update."""
    return Message(handle_train(message.content, context), reply_to=message)


@app.query("release")
def release(message: Message, context: Context) -> Message:
    """Key holder: decrypt the encrypted sum and reply with the flooded mean."""
    return Message(handle_release(message.content, context), reply_to=message)


@app.query("outcome")
def outcome(message: Message, context: Context) -> Message:
    """Apply round outcomes the server still owed this node."""
    return Message(handle_outcome(message.content, context), reply_to=message)


@dataclass
class _ClientState:
    """A client node's run state: its privacy ledger, undo snapshot and batch RNG."""

    ledger: str = ""  # JSON client.state_dict(), the latest trained round included
    undo_round: int = 0  # the round ``undo_ledger`` rolls back (0: nothing to undo)
    undo_ledger: str = ""
    last_round: int = 0  # the latest round trained (older train messages are refused)

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
            log(
                WARNING,
                "secagg: no outcome for round %d; its privacy spending is kept",
                self.undo_round,
            )
            self._settle()

    def _settle(self) -> None:
        self.undo_round = 0
        self.undo_ledger = ""


def _setup(context: Context) -> tuple[FederationConfig, NodeRole]:
    """Read and cross-check the run config and the node config; apply ``threads``."""
    config, options = config_from_run_config(context.run_config)
    role = node_role(context.node_config)
    if options.threads:
        torch.set_num_threads(options.threads)
    if role.is_client and role.num_partitions != config.clients:
        raise ConfigurationError(
            f"node has num-partitions={role.num_partitions} but the run has "
            f"clients={config.clients}"
        )
    if role.is_client and config.he and role.secret_context is None:
        raise ConfigurationError("an HE client node needs secret-context in its node config")
    return config, role


def handle_train(content: RecordDict, context: Context) -> RecordDict:
    """Handle a ``train`` message (see :mod:`~secagg.protocols.flower.records`).

    Raises
    ------
    ConfigurationError, FormatError, ContextError
        For a bad run config, node config or message, or an unusable key file.
    """
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
    roster = str_list(json_value(content, "round", "roster"), "roster")
    if cid not in roster:
        state.write(context.state)
        reply["status"] = "not-sampled"
        return RecordDict({"reply": reply})
    if round_id <= state.last_round:
        raise RoundMismatchError(
            f"train message for round {round_id}, but this node already trained round "
            f"{state.last_round}; refusing a stale or replayed round"
        )
    state.settle_before(round_id)
    aggregation_round = config_value(content, "round", "aggregation-round", int)
    weight_bound = float(config_value(content, "round", "weight-bound", (int, float)))
    sigma = float(config_value(content, "round", "noise-multiplier", (int, float)))
    dropouts = json_value(content, "round", "dropouts")
    dropout = dropouts.get(cid, "") if isinstance(dropouts, dict) else ""
    global_state = read_state(content, "global")

    plan = RunPlan.load(config)
    client, generator = plan.make_client(
        index, global_state=global_state, noise_multiplier=sigma if sigma >= 0 else None
    )
    try:
        if state.ledger:
            client.load_state_dict(json.loads(state.ledger))  # type: ignore[union-attr]
        epsilon_before = client.epsilon()
        # The round's random draws derive from (seed, round, client), as in the federation.
        torch.manual_seed(derive_seed(config.seed, round_id, index))
        generator.manual_seed(derive_seed(config.seed, round_id, index, 1))
        start = time.perf_counter()
        try:
            loss = train_round(client, global_state)
        except PrivacyBudgetExceededError as exc:
            log(WARNING, "secagg: %s declines round %d: %s", cid, round_id, exc)
            state.write(context.state)
            reply.update({"status": "declined", "note": str(exc)})
            return RecordDict({"reply": reply})
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        backend = _backend(config.he, role)
        payload = backend.client_payload(
            client.model_update(),
            weight=float(client.num_examples),
            weight_bound=weight_bound,
            round_id=aggregation_round,
            client_id=cid,
            roster=roster,
        )
        encrypt_seconds = time.perf_counter() - start
        before = client.state_dict()  # type: ignore[union-attr]
        client.commit_round()
        after = client.state_dict()  # type: ignore[union-attr]
        epsilon_after = client.epsilon()
    finally:
        close = getattr(client, "close", None)
        if close is not None:
            close()
    state.ledger = json.dumps(after)
    state.undo_round = round_id
    state.undo_ledger = json.dumps(before)
    state.last_round = round_id
    state.write(context.state)
    reply.update(
        {
            "status": "trained",
            "round": round_id,
            "epsilon-before": float(epsilon_before),
            "epsilon-after": float(epsilon_after),
            "loss": float(loss),
            "num-examples": int(client.num_examples),
            "train-seconds": train_seconds,
            "encrypt-seconds": encrypt_seconds,
            "payload-bytes": len(payload),
        }
    )
    log(INFO, "secagg: %s trained round %d (%d bytes)", cid, round_id, len(payload))
    out = RecordDict({"reply": reply})
    if dropout == "truncate":  # simulated failure mid-upload, as the federation's dropout
        out.array_records["update"] = bytes_record(payload[: len(payload) // 2])
    elif dropout != "silent":
        out.array_records["update"] = bytes_record(payload)
    return out


def _backend(he: bool, role: NodeRole) -> AggregationBackend:
    if not he:
        return PlaintextBackend()
    assert role.secret_context is not None  # checked in _setup
    return EncryptedBackend(load_secret_context(role.secret_context))


def handle_release(content: RecordDict, context: Context) -> RecordDict:
    """Handle a ``query.release`` message on the key-holder node.

    The key holder enforces its own floor on the number of contributions
    (``min-clients`` of the run, ``min-release-clients`` of its node config) and
    releases each round at most once.

    Raises
    ------
    ReleaseError
        If this node is not the key holder, the round was already released, or the
        key holder refuses the aggregate (budget, rosters).
    PayloadError
        If the aggregate is malformed or made under another key.
    """
    config, role = _setup(context)
    if not role.key_holder or role.secret_context is None:
        raise ReleaseError("this node is not the key holder (node config key-holder=true)")
    if role.is_client:
        state = _ClientState.read(context.state)
        state.apply(Outcomes.from_content(content))
        state.write(context.state)
    round_id = config_value(content, "release", "round", int)
    requested = config_value(content, "release", "min-clients", int)
    # Bound to its file: the spent budget and the last released round are written there
    # before anything is decrypted, so no round is ever released twice, even across runs.
    keys = load_secret_context(role.secret_context, bind=True)
    aggregate = EncryptedAggregate.from_bytes(read_bytes(content, "aggregate"), keys)
    if aggregate.round_id != round_id:
        raise FormatError(f"aggregate is for round {aggregate.round_id}, not {round_id}")
    # The key file's own min_clients policy applies on top of these (KeyHolder.release).
    released = keys.release(aggregate, min_clients=max(requested, config.min_clients))
    log(
        INFO,
        "secagg: released round %d (%d contributors, %d decryptions left)",
        round_id,
        len(released.contributors),
        keys.decryptions_left,
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
                    "decryptions-left": keys.decryptions_left,
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
