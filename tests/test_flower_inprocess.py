"""The Flower apps in one process (no Ray, no SuperLink): a Grid double routes real messages.

The Grid double below is test logic only: it sends every real :class:`flwr.app.Message`
through Flower's own serialisation (deflate/inflate of the object tree), runs the real
ClientApp on the destination node's :class:`flwr.app.Context` (round-tripped through its
protobuf form after each message, as a SuperNode does between ClientApp processes), and
can drop replies to simulate dropouts and timeouts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr")

import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.serde import context_from_proto, context_to_proto
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from secagg.protocols import Federation, FederationConfig
from secagg.protocols.flower import (
    generate_keys,
    load_secret_context,
    run_config_from_config,
)
from secagg.protocols.flower.client_app import app as client_app
from secagg.protocols.flower.server_app import run_server

pytestmark = [pytest.mark.flower, pytest.mark.filterwarnings("ignore::UserWarning")]

TINY_MODEL = {"embed_dim": 16, "num_heads": 2, "num_layers": 1, "ff_dim": 16}
RUN_ID = 7
SUPERLINK_NODE = 1


def tiny(**changes: Any) -> FederationConfig:
    """The small federation both engines run: 3 clients, 2 rounds, DP and HE on."""
    base = FederationConfig(
        dataset="digits",
        clients=3,
        rounds=2,
        fraction=1.0,
        min_clients=2,
        max_examples=300,
        batch_size=32,
        lr=0.5,
        client_optimizer="sgd",
        model_overrides=TINY_MODEL,
        attention_analysis=False,
        noise_multiplier=1.0,
        seed=11,
    )
    return dataclasses.replace(base, **changes)


# ---------------------------------------------------------------------- the Grid double
def _over_the_wire(message: Message) -> Message:
    """Deflate a message into Flower's object contents and inflate it back."""
    objects = get_all_nested_objects(message)
    contents = {object_id: obj.deflate() for object_id, obj in objects.items()}
    inflated = inflate_object_from_contents(message.object_id, contents)
    assert isinstance(inflated, Message)
    inflated.metadata.__dict__["_message_id"] = message.metadata.message_id
    return inflated


class InMemoryGrid(Grid):  # type: ignore[misc]
    """Routes messages to the ClientApp on per-node contexts; ``drop`` loses replies."""

    def __init__(
        self,
        contexts: dict[int, Context],
        *,
        drop: Callable[[Message], bool] | None = None,
    ) -> None:
        self.contexts = contexts
        self.drop = drop
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count(1)
        self._run = Run.create_empty(RUN_ID)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = f"m{next(self._ids)}"
            message.metadata.__dict__["_message_id"] = message_id
            self.sent.append(message)
            ids.append(message_id)
            reply = self._deliver(_over_the_wire(message))
            if reply is not None and not (self.drop and self.drop(message)):
                reply.metadata.__dict__["_message_id"] = f"r{message_id}"
                self._replies[message_id] = _over_the_wire(reply)
        return ids

    def _deliver(self, message: Message) -> Message | None:
        node = message.metadata.dst_node_id
        if node not in self.contexts:
            return None
        context = self.contexts[node]
        try:
            reply: Message = client_app(message, context)
        except Exception as exc:  # a ClientApp exception becomes an error reply
            return Message(Error(code=3, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
        self.contexts[node] = context_from_proto(context_to_proto(context))
        return reply

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return list(self.pull_messages(list(self.push_messages(list(messages)))))


@pytest.fixture(autouse=True)
def _task_identity() -> Iterator[None]:
    """Messages need the sending task's identity (a ServerApp process sets it)."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, SUPERLINK_NODE, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return generate_keys(tmp_path_factory.mktemp("keys"))


def _contexts(
    run_config: dict[str, Any], key_files: Any, *, clients: int = 3, key_holder: int = 0
) -> dict[int, Context]:
    contexts = {}
    for index in range(clients):
        node_config: dict[str, Any] = {
            "partition-id": index,
            "num-partitions": clients,
            "secret-context": str(key_files.secret_context),
        }
        if index == key_holder:
            node_config["key-holder"] = True
        node = 101 + index
        contexts[node] = Context(RUN_ID, node, node_config, RecordDict(), dict(run_config))
    return contexts


def _server_context(run_config: dict[str, Any]) -> Context:
    return Context(RUN_ID, SUPERLINK_NODE, {}, RecordDict(), dict(run_config))


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _ledger(context: Context) -> list[Any]:
    record = context.state.config_records["secagg.client"]
    return list(json.loads(str(record["ledger"]))["accountant"]["history"])


# ---------------------------------------------------------------------- the main check
def test_two_rounds_match_the_in_process_federation(key_files: Any, tmp_path: Path) -> None:
    config = tiny()
    expected = Federation(config).run()
    federation = Federation(config)  # only to read the flooding noise of this key size
    keys = load_secret_context(key_files.secret_context)

    run_config = run_config_from_config(
        config, server_context=str(key_files.server_context), output=str(tmp_path / "out")
    )
    contexts = _contexts(run_config, key_files)
    grid = InMemoryGrid(contexts)
    result = run_server(grid, _server_context(run_config))

    assert [m.status for m in result.metrics] == ["completed", "completed"]
    for ours, theirs in zip(result.metrics, expected.metrics, strict=True):
        assert ours.sampled == theirs.sampled
        assert ours.contributors == theirs.contributors
        assert ours.epsilon_max == pytest.approx(theirs.epsilon_max, rel=1e-9)
        assert abs(ours.bytes_per_client - theirs.bytes_per_client) <= 64
        assert abs(ours.accuracy - theirs.accuracy) <= 0.05

    # Both engines add independent flooding noise to each released mean: per coordinate
    # N(0, σ²/W²) with W the (normalised) weight sum of the round. The difference of two
    # runs after T rounds has std ≤ sqrt(2T)·σ/W (to first order; training in round 2
    # starts from slightly different weights, which the 8-sigma margin absorbs).
    contributors = len(expected.metrics[-1].contributors)
    weight_sum = sum(len(p) for p in federation.partitions) / federation.weight_bound
    sigma = keys.flooding_std(contributors) / weight_sum
    tolerance = 8 * (2 * config.rounds) ** 0.5 * sigma
    difference = _max_abs_diff(result.global_state, expected.global_state)
    print(f"flower vs in-process: max |Δw| = {difference:.3g}, tolerance {tolerance:.3g}")
    assert difference < tolerance

    # The ledgers on the nodes hold both rounds (every client contributed twice).
    for context in grid.contexts.values():
        assert sum(steps for _, _, steps in _ledger(context)) > 0
        assert context.state.config_records["secagg.client"]["undo-round"] == 2

    # The ServerApp wrote the final global state and metrics where the run config said.
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["finished"] is True and len(written["metrics"]) == 2
    saved = torch.load(tmp_path / "out" / "global_state.pt", weights_only=True)
    assert _max_abs_diff(saved, result.global_state) == 0.0

    # Only train and release messages went out; only the key holder saw the aggregate.
    types = {(m.metadata.message_type, m.metadata.dst_node_id) for m in grid.sent}
    assert {t for t, _ in types} == {"train", "query.release"}
    assert {n for t, n in types if t == "query.release"} == {101}
