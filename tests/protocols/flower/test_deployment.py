"""A real loopback Flower deployment: SuperLink, three SuperNodes and ``flwr run`` on 127.0.0.1.

Free ports are picked at run time, every process gets a temporary ``FLWR_HOME``,
runtime dependency installation and update checks are off, and every process (with
the SuperExec and app processes they start) is stopped by PID in the fixture's
teardown, whatever the test's outcome.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr")

import torch
from _tiny import tiny_config

from secagg.protocols import Federation, FederationConfig
from secagg.protocols.backends import state_from_bytes
from secagg.protocols.flower import generate_keys, run_config_from_config, write_app
from secagg.protocols.flower.deploy import LocalDeployment, is_running
from secagg.protocols.flower.keys import KeyFiles
from secagg.protocols.flower.server_app import GLOBAL_STATE_FILE, METRICS_FILE

pytestmark = [
    pytest.mark.deployment,
    pytest.mark.flower,
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

NODES = 3
RUN_TIMEOUT = 300.0  # seconds for `flwr run` (the whole run), on a busy 2-core machine


def tiny() -> FederationConfig:
    """The small federation of the in-process Flower tests (3 clients, 2 rounds), DP + HE,
    with the attention analysis."""
    return tiny_config(
        clients=NODES, fraction=1.0, noise_multiplier=1.0, seed=11, attention_analysis=True
    )


@pytest.fixture
def key_files(tmp_path: Path) -> KeyFiles:
    return generate_keys(tmp_path / "keys", clients=NODES)


@pytest.fixture
def deployment(tmp_path: Path, key_files: KeyFiles) -> Iterator[LocalDeployment]:
    """SuperLink + SuperNodes, stopped by PID at teardown (also when the test fails)."""
    local = LocalDeployment(tmp_path / "work", key_files, nodes=NODES)
    tree: list[tuple[int, str | None]] = []
    try:
        local.start()
        yield local
    finally:
        tree = local.process_tree()
        local.stop()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(is_running(p, s) for p, s in tree):
        time.sleep(0.2)
    assert not [pid for pid, started in tree if is_running(pid, started)]


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_loopback_deployment_matches_the_in_process_federation(
    tmp_path: Path, key_files: KeyFiles, deployment: LocalDeployment
) -> None:
    config = tiny()
    app = write_app(tmp_path / "app")
    output = tmp_path / "output"
    run_config = run_config_from_config(
        config,
        server_context=str(key_files.server_context),
        registry=str(key_files.registry),
        output=str(output),
        threads=1,
        node_wait_timeout=60,
        round_timeout=RUN_TIMEOUT,
        release_timeout=RUN_TIMEOUT,
    )
    seconds = deployment.run(app, run_config, timeout=RUN_TIMEOUT)
    print(f"flwr run: {seconds:.1f} s")

    # every ClientApp process was forked from the node's warm fork server, none started cold
    for log in deployment.log_dir.glob("supernode-*.log"):
        text = log.read_text(errors="replace")
        assert "Start `flwr-clientapp` process" not in text and "fork server" not in text, log

    written: dict[str, Any] = json.loads((output / METRICS_FILE).read_text())
    assert written["finished"] is True
    statuses = [m["status"] for m in written["metrics"]]
    assert statuses == ["completed", "completed"], written["metrics"]
    state = state_from_bytes((output / GLOBAL_STATE_FILE).read_bytes())
    assert written["attention"]["weights"], "no attention map on Flower"

    torch.set_num_threads(1)
    federation = Federation(config)
    expected = federation.run()
    # Signed, MAC-tagged payloads by default: every sampled client contributed, with the
    # in-process engine's sampling and privacy ledgers. The DP noise is each node's own.
    for ours, theirs in zip(written["metrics"], expected.metrics, strict=True):
        assert ours["sampled"] == theirs.sampled
        assert ours["contributors"] == theirs.contributors
        assert ours["rejected"] == []
        assert ours["epsilon_max"] == pytest.approx(theirs.epsilon_max, rel=1e-9)
        assert abs(ours["bytes_per_client"] - theirs.bytes_per_client) <= 64
    assert written["attention"]["contributors"] == list(expected.attention.contributors)  # type: ignore[union-attr]
    assert state.keys() == expected.global_state.keys()
    assert dataclasses.asdict(config) == written["config"]
