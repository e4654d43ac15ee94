"""The fork server: one forked process per ClientApp task, Flower's own way otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr")

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

from secagg.protocols.flower.forkserver import ForkingExecutor
from secagg.protocols.flower.supernode import forking_subprocess

pytestmark = pytest.mark.flower

# A fork server whose children record their PID and spec instead of running Flower's
# ClientApp runtime (the real runtime runs in the loopback deployment test).
_RECORDING_SERVER = """
import json, os, sys
from pathlib import Path
from secagg._random import secure_normal
from secagg.protocols.flower.forkserver import serve
out = Path(sys.argv[1])
def run(spec):
    tmp = out / f"{os.getpid()}.tmp"
    noise = secure_normal(4).tolist()  # what a ClientApp would draw for DP
    tmp.write_text(json.dumps({"spec": spec, "ppid": os.getppid(), "noise": noise}))
    tmp.rename(out / f"{os.getpid()}.json")
    if spec["token"] == "fail":
        raise SystemExit(7)
serve(run=run)
print("served", os.getpid(), flush=True)
"""


def _spec(task_type: TaskType = TaskType.CLIENT_APP, token: str = "ab" * 16) -> ExecutionSpec:
    return ExecutionSpec(
        task_type=task_type,
        runtime_api_address="127.0.0.1:9094",
        token=token,
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=12345,
        suppress_output=False,
        task_id=1,
    )


class _Fallback:
    """Flower's subprocess executor, recording instead of starting processes."""

    def __init__(self) -> None:
        self.launched: list[ExecutionSpec] = []
        self.closed = False

    def get_eligible_capacity(self, types: set[Any], **_: Any) -> tuple[set[Any], set[str]]:
        return types, set()

    def wait_for_capacity(self, task_type: Any = None, **_: Any) -> None:
        return None

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        self.launched.append(spec)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


def _records(out: Path, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(list(out.glob("*.json"))) < count:
        time.sleep(0.05)
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def test_each_clientapp_task_runs_in_its_own_forked_child(tmp_path: Path) -> None:
    fallback = _Fallback()
    command = [sys.executable, "-c", _RECORDING_SERVER, str(tmp_path)]
    executor = ForkingExecutor(fallback, command=command)
    try:
        server = executor._server
        assert server is not None
        assert executor.launch(_spec(token="a1" * 16)).status == "accepted"
        assert executor.launch(_spec(token="fail")).status == "accepted"
        records = _records(tmp_path, 2)
    finally:
        executor.close()
    assert fallback.launched == [] and fallback.closed
    assert sorted(r["spec"]["token"] for r in records) == sorted(["a1" * 16, "fail"])
    assert {r["ppid"] for r in records} == {server.pid}  # forked by the fork server
    assert len({p.stem for p in tmp_path.glob("*.json")}) == 2  # one process per task
    assert records[0]["spec"]["parent_pid"] == 12345  # Flower's arguments, unchanged
    assert server.returncode == 0  # closing the pipe ends the fork server cleanly
    assert records[0]["noise"] != records[1]["noise"]  # forked children share no randomness


def test_other_task_types_and_a_dead_fork_server_fall_back_to_flowers_subprocesses(
    tmp_path: Path,
) -> None:
    fallback = _Fallback()
    executor = ForkingExecutor(fallback, command=[sys.executable, "-c", "pass"])
    try:
        server_app = _spec(TaskType.SERVER_APP)
        executor.launch(server_app)
        assert fallback.launched == [server_app]
        assert executor._server is not None
        executor._server.wait(timeout=20)
        executor.reconcile()  # notices the exit
        client_app = _spec()
        executor.launch(client_app)
        assert fallback.launched == [server_app, client_app]
    finally:
        executor.close()


def test_a_fork_server_that_cannot_start_leaves_flowers_way(tmp_path: Path) -> None:
    fallback = _Fallback()
    executor = ForkingExecutor(fallback, command=[str(tmp_path / "missing")])
    executor.launch(_spec())
    assert len(fallback.launched) == 1
    executor.close()


def test_malformed_task_lines_are_refused_and_the_server_keeps_serving(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", _RECORDING_SERVER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    good = {
        "runtime_api_address": "127.0.0.1:1",
        "token": "cd" * 16,
        "insecure": True,
        "root_certificates_path": None,
        "runtime_dependency_install": False,
        "parent_pid": None,
        "suppress_output": False,
    }
    lines = [b"not json\n", b"[1, 2]\n", b'{"token": "x"}\n', json.dumps(good).encode() + b"\n"]
    out, err = server.communicate(b"".join(lines), timeout=30)
    assert server.returncode == 0 and b"served" in out
    assert err.count(b"task line refused") == 3
    assert [r["spec"]["token"] for r in _records(tmp_path, 1)] == ["cd" * 16]


def test_the_launcher_replaces_flower_superexec_and_nothing_else() -> None:
    shim = forking_subprocess()
    superexec = shim.Popen(
        ["flower-superexec", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, _ = superexec.communicate(timeout=60)
    assert superexec.args[:3] == [sys.executable, "-m", "secagg.protocols.flower.forkserver"]
    assert superexec.returncode == 0 and b"--runtime-api-address" in out  # Flower's own CLI
    other = shim.Popen([sys.executable, "-c", "print(1)"], stdout=subprocess.PIPE)
    assert other.communicate(timeout=30)[0] == b"1\n"
    assert other.args == [sys.executable, "-c", "print(1)"]
    assert shim.PIPE is subprocess.PIPE
