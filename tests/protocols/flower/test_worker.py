"""The warm per-node worker: real processes, a real Unix socket, Flower's own serialisation."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, RecordDict

from secagg.errors import ConfigurationError, ReleaseError
from secagg.protocols.flower import worker

pytestmark = pytest.mark.flower


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def _context(tmp_path: Path, node: int, **node_config: object) -> Context:
    config = {"worker-dir": str(tmp_path / f"node-{node}"), **node_config}
    run_config = {"he": False}
    return Context(
        run_id=1, node_id=node, node_config=config, state=RecordDict(), run_config=run_config
    )


def _pid(context: Context) -> int:
    return int((Path(str(context.node_config["worker-dir"])) / "worker.pid").read_text())


def _outcomes(commit: list[int], discard: list[int]) -> RecordDict:
    record = ConfigRecord({"commit": json.dumps(commit), "discard": json.dumps(discard)})
    return RecordDict({"outcomes": record})


@pytest.fixture
def contexts(tmp_path: Path) -> Iterator[list[Context]]:
    made: list[Context] = []
    yield made
    for context in made:  # stop every worker a test started
        pid_file = Path(str(context.node_config["worker-dir"])) / "worker.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)


def test_messages_go_to_one_warm_worker_per_node_and_state_comes_back(
    tmp_path: Path, contexts: list[Context]
) -> None:
    context = _context(tmp_path, 7001, **{"partition-id": 0, "num-partitions": 2})
    contexts.append(context)
    reply = worker.call("outcome", _outcomes([], [3]), context)
    assert reply.config_records["reply"]["status"] == "settled"
    first = _pid(context)
    assert _alive(first)
    # The node's state travels to the worker and back (the client's ledger record).
    assert "secagg.client" in context.state.config_records
    worker.call("outcome", _outcomes([3], []), context)
    assert _pid(context) == first  # the same warm process answered
    socket_dir = worker.socket_path(context).parent
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700


def test_a_handler_error_comes_back_with_its_secagg_type(
    tmp_path: Path, contexts: list[Context]
) -> None:
    context = _context(tmp_path, 7002)
    contexts.append(context)
    content = RecordDict({"release": ConfigRecord({"round": 1, "min-clients": 2})})
    with pytest.raises(ReleaseError, match="not the key holder"):
        worker.call("release", content, context)
    assert _alive(_pid(context))  # a failed message does not take the worker down


def test_the_worker_exits_when_its_node_process_is_gone(tmp_path: Path) -> None:
    """The worker watches the process that launches ClientApps (the SuperNode)."""
    launcher = textwrap.dedent(
        f"""
        import json, subprocess, sys
        from flwr.app import ConfigRecord, Context, RecordDict
        from secagg.protocols.flower import worker
        context = Context(run_id=1, node_id=7003, state=RecordDict(), run_config={{}},
                          node_config={{"worker-dir": {str(tmp_path / "node")!r}}})
        record = ConfigRecord({{"commit": "[]", "discard": "[]"}})
        worker.call("outcome", RecordDict({{"outcomes": record}}), context)
        """
    )
    # The "SuperNode" runs the "ClientApp" as a child, then waits to be killed.
    node = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys, time\n"
            f"subprocess.run([sys.executable, '-c', {launcher!r}], check=True)\n"
            f"time.sleep(600)\n",
        ]
    )
    pid_file = tmp_path / "node" / "worker.pid"
    deadline = time.monotonic() + 120
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    time.sleep(1.0)
    assert _alive(pid)
    node.kill()
    node.wait()
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


def test_warm_worker_can_be_switched_off(tmp_path: Path) -> None:
    context = _context(tmp_path, 7004, **{"warm-worker": False})
    assert not worker.enabled(context)
    with pytest.raises(Exception, match="warm-worker"):
        worker.enabled(_context(tmp_path, 7005, **{"warm-worker": "yes"}))


def test_the_worker_directory_must_be_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another local user able to enter the socket directory could talk to the worker
    # (which holds the client's model, data and ledger): such a directory is refused.
    monkeypatch.setattr(worker.tempfile, "gettempdir", lambda: str(tmp_path))
    shared = tmp_path / f"secagg-{os.getuid()}"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(ConfigurationError, match="mode 0700"):
        worker.socket_path(_context(tmp_path, 1))
    shared.chmod(0o700)
    path = worker.socket_path(_context(tmp_path, 1))
    assert path.parent == shared and stat.S_IMODE(shared.stat().st_mode) == 0o700
