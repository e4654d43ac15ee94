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
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr")

import torch
from _tiny import release_std, tiny_config
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.serde import context_from_proto, context_to_proto
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

import secagg
from secagg.errors import (
    ConfigurationError,
    ContextError,
    FormatError,
    ReleaseError,
    RoundAlreadyReleasedError,
    SecretKeyExposureError,
)
from secagg.protocols import Federation, FederationConfig
from secagg.protocols.flower import (
    app_pyproject,
    config_from_run_config,
    generate_keys,
    load_registry,
    load_secret_context,
    load_server_context,
    load_signing_key,
    node_role,
    open_key_holder,
    run_config_from_config,
    write_app,
)
from secagg.protocols.flower.client_app import app as client_app
from secagg.protocols.flower.client_app import handle_release
from secagg.protocols.flower.keys import main as keys_main
from secagg.protocols.flower.records import bytes_record, read_state, state_record
from secagg.protocols.flower.server_app import FlowerServer, run_server

pytestmark = [
    pytest.mark.flower,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

RUN_ID = 7
SUPERLINK_NODE = 1


def tiny(**changes: Any) -> FederationConfig:
    """The small federation both engines run: 3 clients, 2 rounds, DP and HE on."""
    return tiny_config(
        **{"clients": 3, "fraction": 1.0, "noise_multiplier": 1.0, "seed": 11, **changes}
    )


def no_dp(**changes: Any) -> FederationConfig:
    """Without DP noise both engines draw nothing secret: their runs must agree."""
    return tiny(dp=False, noise_multiplier=None, **changes)


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


@pytest.fixture
def key_files(tmp_path: Path) -> Any:
    """Fresh key files per test (a key holder releases each round id once, ever)."""
    return generate_keys(tmp_path / "keys", clients=3)


def _run_config(config: FederationConfig, key_files: Any = None, **options: Any) -> dict[str, Any]:
    # Replies arrive at once or never (dropped): a lost reply costs the round timeout.
    options = {"round_timeout": 2.0, "release_timeout": 2.0, **options}
    if key_files is not None:
        options = {
            "server_context": str(key_files.server_context),
            "registry": str(key_files.registry),
            **options,
        }
    return run_config_from_config(config, **options)


def _contexts(
    run_config: dict[str, Any], key_files: Any, *, clients: int = 3, secret: bool = True
) -> dict[int, Context]:
    """Client nodes 101, 102, ...; node 101 is also the key holder."""
    contexts = {}
    for index in range(clients):
        node_config: dict[str, Any] = {
            "partition-id": index,
            "num-partitions": clients,
            "warm-worker": False,  # the warm worker has its own test
        }
        if secret:
            node_config["secret-context"] = str(key_files.secret_context)
            node_config["signing-key"] = str(key_files.signing_keys[f"client-{index:03d}"])
            if index == 0:
                node_config["key-holder"] = True
                node_config["key-holder-state"] = str(key_files.key_holder_state)
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


# ---------------------------------------------------------------------- the main checks
def test_an_encrypted_round_and_the_attention_map_match_the_in_process_federation(
    key_files: Any, tmp_path: Path
) -> None:
    """One coordinator, two transports: the same round and map, up to the release error.

    Without DP the runs must agree up to the independent errors secure aggregation adds
    to each release (stochastic rounding, or flooding): per coordinate N(0, σ²/W²), σ the
    release's error std and W the round's normalised weight sum, so the two runs differ
    by N(0, 2σ²/W²) per weight after one round; pure noise passes 10 such deviations on
    any of the ~2k weights with probability < 1e-19. (After more rounds local training
    amplifies those differences by a model-dependent factor; the multi-round equality of
    the two engines is checked exactly without HE, in the next test.)
    """
    config = no_dp(attention_analysis=True, rounds=1)
    federation = Federation(config)
    expected = federation.run()
    assert federation.key_holder is not None

    run_config = _run_config(config, key_files, output=str(tmp_path / "out"))
    contexts = _contexts(run_config, key_files)
    grid = InMemoryGrid(contexts)
    result = run_server(grid, _server_context(run_config))

    assert [m.status for m in result.metrics] == ["completed"]
    for ours, theirs in zip(result.metrics, expected.metrics, strict=True):
        assert ours.sampled == theirs.sampled
        assert ours.contributors == theirs.contributors
        assert abs(ours.bytes_per_client - theirs.bytes_per_client) <= 64
        assert abs(ours.accuracy - theirs.accuracy) <= 0.05
    contributors = len(expected.metrics[-1].contributors)
    weight_sum = sum(len(p) for p in federation.partitions) / federation.weight_bound
    sigma = release_std(federation, contributors) / weight_sum
    tolerance = 10 * 2**0.5 * sigma
    difference = _max_abs_diff(result.global_state, expected.global_state)
    print(f"flower vs in-process: max |Δw| = {difference:.3g}, tolerance {tolerance:.3g}")
    assert difference < tolerance

    # The attention analysis runs on Flower too, and gives the same map.
    assert result.attention is not None and expected.attention is not None
    assert result.attention.unit_names == expected.attention.unit_names
    ours_map = torch.tensor(result.attention.weights)
    theirs_map = torch.tensor(expected.attention.weights)
    map_tolerance = 10 * release_std(federation, config.clients) / weight_sum
    assert float((ours_map - theirs_map).abs().max()) < map_tolerance + 20 * tolerance

    # The ServerApp wrote the final global state and metrics where the run config said.
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["finished"] is True and len(written["metrics"]) == 1
    assert written["attention"]["weights"]
    saved = torch.load(tmp_path / "out" / "global_state.pt", weights_only=True)
    assert _max_abs_diff(saved, result.global_state) == 0.0

    # Train, attention and release messages went out; only the key holder saw aggregates.
    types = {(m.metadata.message_type, m.metadata.dst_node_id) for m in grid.sent}
    assert {t for t, _ in types} == {"train", "query.attention", "query.release"}
    assert {n for t, n in types if t == "query.release"} == {101}


def test_dp_rounds_keep_the_same_ledgers_as_the_in_process_federation(key_files: Any) -> None:
    """With DP the noise is each node's own (CSPRNG): weights differ, every ledger agrees."""
    config = tiny()
    federation = Federation(config)
    expected = federation.run()
    run_config = _run_config(config, key_files)
    grid = InMemoryGrid(_contexts(run_config, key_files))
    result = run_server(grid, _server_context(run_config))
    for ours, theirs in zip(result.metrics, expected.metrics, strict=True):
        assert ours.status == theirs.status == "completed"
        assert ours.contributors == theirs.contributors
        assert ours.epsilon_max == pytest.approx(theirs.epsilon_max, rel=1e-9)
    for index, context in enumerate(grid.contexts.values()):
        history = federation.clients[index].state_dict()["accountant"]["history"]  # type: ignore[union-attr]
        assert _ledger(context) == history and len(history) > 0
    assert _max_abs_diff(result.global_state, expected.global_state) > 0.0  # fresh noise


def test_plaintext_run_is_identical_to_the_in_process_federation() -> None:
    # Without HE and DP there is no noise at all: the two engines must agree exactly.
    config = no_dp(he=False)
    federation = Federation(config)
    expected = federation.run()
    run_config = _run_config(config)
    grid = InMemoryGrid(_contexts(run_config, None, secret=False))
    result = run_server(grid, _server_context(run_config))
    assert len(result.metrics) == config.rounds == 2
    assert _max_abs_diff(result.global_state, expected.global_state) == 0.0
    assert [m.loss for m in result.metrics] == [m.loss for m in expected.metrics]
    assert [m.sampled for m in result.metrics] == [m.sampled for m in expected.metrics]
    assert [m.contributors for m in result.metrics] == [m.contributors for m in expected.metrics]


def test_a_round_with_too_few_replies_is_skipped_and_rolled_back(key_files: Any) -> None:
    # Round 2 needs all three updates; node 102's reply is lost, so round 2 is skipped:
    # the global model and every ledger must end as after round 1 alone.
    config = tiny(min_clients=3)
    one_round = Federation(dataclasses.replace(config, rounds=1))
    one_round.run()

    run_config = _run_config(config, key_files)

    def lose_round_two_of_node_102(message: Message) -> bool:
        return message.metadata.dst_node_id == 102 and message.metadata.group_id == "2"

    grid = InMemoryGrid(_contexts(run_config, key_files), drop=lose_round_two_of_node_102)
    result = run_server(grid, _server_context(run_config))

    first, second = result.metrics
    assert first.status == "completed" and second.status == "skipped"
    assert second.contributors == ["client-000", "client-002"]
    assert "client-001" in second.dropped
    assert second.epsilon_max == pytest.approx(first.epsilon_max)
    assert (second.accuracy, second.loss) == (first.accuracy, first.loss)  # model unchanged
    # Every node trained round 2, and was told at the end of the run to roll it back.
    assert [m.metadata.message_type for m in grid.sent[-3:]] == ["query.outcome"] * 3
    for index, context in enumerate(grid.contexts.values()):
        history = one_round.clients[index].state_dict()["accountant"]["history"]  # type: ignore[union-attr]
        assert _ledger(context) == history


def test_the_flower_app_refuses_the_research_only_deterministic_mode(key_files: Any) -> None:
    config = tiny(insecure_deterministic=True)
    with pytest.raises(ConfigurationError, match="research runs only"):
        _run_config(config, key_files)
    run_config = _run_config(tiny(), key_files)
    run_config["insecure-deterministic"] = True
    with pytest.raises(ConfigurationError, match="research runs only"):
        FlowerServer(InMemoryGrid({}), run_config)


def test_unsigned_or_foreign_updates_are_rejected_on_flower(key_files: Any, tmp_path: Path) -> None:
    """A node holding another federation's signing key cannot contribute."""
    other = generate_keys(tmp_path / "other", clients=3)
    config = tiny(rounds=1, min_clients=2)
    run_config = _run_config(config, key_files)
    contexts = _contexts(run_config, key_files)
    contexts[103].node_config["signing-key"] = str(other.signing_keys["client-002"])
    result = run_server(InMemoryGrid(contexts), _server_context(run_config))
    metrics = result.metrics[0]
    assert metrics.status == "completed"
    assert metrics.contributors == ["client-000", "client-001"]
    assert any("SignatureError" in r for r in metrics.rejected)


# ---------------------------------------------------------------------- keys and configs
def test_server_refuses_a_context_that_holds_a_secret_key(key_files: Any) -> None:
    run_config = _run_config(tiny(), key_files, server_context=str(key_files.secret_context))
    with pytest.raises(SecretKeyExposureError):
        FlowerServer(InMemoryGrid({}), run_config)
    with pytest.raises(SecretKeyExposureError):
        load_server_context(key_files.secret_context)
    assert load_server_context(key_files.server_context).can_decrypt() is False


def test_generated_key_files_have_safe_modes_and_stay_out_of_app_folders(tmp_path: Path) -> None:
    files = generate_keys(tmp_path / "keys", clients=3, min_clients=3)
    secret = [files.secret_context, files.key_holder_state, *files.signing_keys.values()]
    for path in secret:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (files.server_context, files.registry):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert open_key_holder(files.secret_context, files.key_holder_state).min_clients == 3
    assert sorted(load_registry(files.registry)) == sorted(files.signing_keys)
    with pytest.raises(ConfigurationError, match="already exist"):
        generate_keys(tmp_path / "keys", clients=3)
    app = write_app(tmp_path / "app")
    with pytest.raises(ConfigurationError, match="app folder"):
        generate_keys(app / "keys", clients=3)
    with pytest.raises(ConfigurationError, match="other files"):
        write_app(files.secret_context.parent)
    for path in secret:
        os.chmod(path, 0o644)
    with pytest.raises(ContextError, match="chmod 600"):
        load_secret_context(files.secret_context)
    with pytest.raises(ContextError, match="chmod 600"):
        load_signing_key(files.signing_keys["client-000"], client="client-000")
    with pytest.raises(ContextError, match="chmod 600"):
        open_key_holder(files.secret_context, files.key_holder_state)
    os.chmod(files.signing_keys["client-001"], 0o600)
    with pytest.raises(ContextError, match="belongs to"):
        load_signing_key(files.signing_keys["client-001"], client="client-000")
    assert keys_main([str(tmp_path / "cli-keys"), "--clients", "2", "--min-clients", "2"]) == 0
    assert keys_main([str(app / "keys"), "--clients", "2"]) == 2  # refused: in the app folder
    assert not (app / "keys").exists()


def test_the_app_folder_in_the_source_tree_is_up_to_date() -> None:
    folder = Path(__file__).resolve().parents[3] / "protocols" / "flower" / "app"
    assert sorted(p.name for p in folder.iterdir()) == ["pyproject.toml"]
    assert (folder / "pyproject.toml").read_text(encoding="utf-8") == app_pyproject()


def test_run_config_round_trips_and_rejects_bad_values() -> None:
    config = tiny(dirichlet_alpha=None, epsilon=4.0, noise_multiplier=None, max_examples=None)
    run_config = run_config_from_config(
        config, server_context="/keys/server", registry="/keys/registry", round_timeout=30
    )
    decoded, options = config_from_run_config(run_config)
    assert decoded == config
    assert options.server_context == Path("/keys/server") and options.round_timeout == 30.0
    assert options.registry == Path("/keys/registry")
    with pytest.raises(ConfigurationError, match="unknown run config"):
        config_from_run_config({**run_config, "epochs": 3})
    with pytest.raises(ConfigurationError, match="integer"):
        config_from_run_config({**run_config, "rounds": 2.5})
    with pytest.raises(ConfigurationError, match="server-context"):
        config_from_run_config({**run_config, "server-context": ""})
    with pytest.raises(ConfigurationError, match="registry"):
        config_from_run_config({**run_config, "registry": ""})


def test_one_table_of_defaults_feeds_the_cli_the_api_and_the_app() -> None:
    """An "auto" option in the app's run config takes the dataset recipe's value."""
    from secagg.protocols import default_config
    from secagg.protocols.defaults import NONPRIVATE_RECIPES, RECIPES

    app_config = {
        line.split(" = ")[0]: line.split(" = ")[1]
        for line in app_pyproject().splitlines()
        if " = " in line and not line.startswith(("#", "["))
    }
    assert app_config["lr"] == app_config["rounds"] == '"auto"'
    assert app_config["clients"] != '"auto"'
    for dataset in ("digits", "bbc_news"):
        decoded, _ = config_from_run_config({"dataset": dataset, "lr": "auto", "he": False})
        assert decoded == default_config(dataset, he=False)
        assert decoded.lr == RECIPES[dataset]["lr"]
        # the non-private baseline gets its own recipe, from the same table
        baseline, _ = config_from_run_config({"dataset": dataset, "dp": False, "he": False})
        assert baseline == default_config(dataset, dp=False, he=False)
        assert baseline.lr == NONPRIVATE_RECIPES[dataset]["lr"] and baseline.epsilon is None


def test_node_roles() -> None:
    role = node_role(
        {"partition-id": 2, "num-partitions": 3, "secret-context": "/k", "signing-key": "/s"}
    )
    assert role.is_client and role.partition_id == 2 and not role.key_holder
    assert role.signing_key == Path("/s")
    holder = node_role({"key-holder": True, "secret-context": "/k", "key-holder-state": "/h"})
    assert holder.key_holder and not holder.is_client
    with pytest.raises(ConfigurationError):
        node_role({"partition-id": 3, "num-partitions": 3})
    with pytest.raises(ConfigurationError):
        node_role({"partition-id": 0})
    with pytest.raises(ConfigurationError):
        node_role({"key-holder": True, "secret-context": "/k"})
    with pytest.raises(ConfigurationError):
        node_role({"partition-id": 0, "num-partitions": 1, "signing-key": 3})


def test_only_the_key_holder_releases_and_each_round_once(key_files: Any) -> None:
    keys = load_secret_context(key_files.secret_context)
    roster = ["client-000", "client-001"]
    aggregator = secagg.Aggregator(
        load_server_context(key_files.server_context),
        registry=load_registry(key_files.registry),
        round_id=5,
        roster=roster,
        min_clients=2,
    )
    for cid in roster:
        update = {"w": torch.full((4,), 0.5)}
        signing = load_signing_key(key_files.signing_keys[cid], client=cid)
        aggregator.add(
            secagg.encrypt_update(
                keys,
                update,
                signing_key=signing,
                weight=10,
                weight_bound=16,
                round_id=5,
                roster=roster,
            )
        )
    content = RecordDict(
        {
            "aggregate": bytes_record(aggregator.finalize().to_bytes()),
            "release": ConfigRecord({"round": 5, "min-clients": 2}),
        }
    )
    run_config = _run_config(tiny(), key_files)
    node = {
        "warm-worker": False,
        "partition-id": 0,
        "num-partitions": 3,
        "secret-context": str(key_files.secret_context),
        "signing-key": str(key_files.signing_keys["client-000"]),
    }
    client_only = Context(RUN_ID, 101, node, RecordDict(), run_config)
    with pytest.raises(ReleaseError, match="not the key holder"):
        handle_release(content, client_only)
    holder_node = {
        **node,
        "key-holder": True,
        "key-holder-state": str(key_files.key_holder_state),
    }
    holder = Context(RUN_ID, 101, holder_node, RecordDict(), run_config)
    reply = handle_release(content, holder)
    mean = read_state(reply, "mean")["w"]
    assert torch.allclose(mean, torch.full((4,), 0.5), atol=1e-2)
    with pytest.raises(RoundAlreadyReleasedError):
        handle_release(content, holder)


@pytest.mark.parametrize("data", [b"", b"garbage", b"PK\x03\x04" + bytes(60)])
def test_a_hostile_model_state_raises_a_format_error(data: bytes) -> None:
    content = RecordDict({"global": bytes_record(data)})
    with pytest.raises(FormatError):
        read_state(content, "global")


def test_a_model_state_is_one_array_per_message() -> None:
    state = {f"layer{i}.weight": torch.randn(3, 4) for i in range(40)}
    record = state_record(state)
    assert list(record) == ["payload"]  # one Flower object, not forty
    back = read_state(RecordDict({"global": record}), "global")
    assert all(torch.equal(back[k], state[k]) for k in state)
