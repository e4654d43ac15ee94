"""The SuperNode launcher: Flower's own node, its fixed idle waits capped, nothing else."""

from __future__ import annotations

import subprocess
import sys
import time
import types

import pytest

pytest.importorskip("flwr")

from secagg.errors import ConfigurationError
from secagg.protocols.flower.supernode import capped_time, check_flower_loop, main

pytestmark = pytest.mark.flower


def test_capped_sleep_waits_at_most_the_interval_and_shorter_sleeps_unchanged() -> None:
    shim = capped_time(0.05)
    start = time.perf_counter()
    shim.sleep(3)  # Flower's idle wait
    assert time.perf_counter() - start < 1.0
    start = time.perf_counter()
    shim.sleep(0.03)
    assert time.perf_counter() - start >= 0.025
    assert shim.monotonic is time.monotonic  # everything else is the real module


@pytest.mark.parametrize("interval", [0.0, -1.0, 5.0, float("nan"), "0.1"])
def test_bad_poll_intervals_are_refused(interval: object) -> None:
    with pytest.raises(ConfigurationError, match="poll-interval"):
        capped_time(interval)  # type: ignore[arg-type]


def test_the_pinned_flower_loop_has_the_waits_the_launcher_caps() -> None:
    from flwr.supernode import start_client_internal

    check_flower_loop(start_client_internal)


def test_a_flower_without_those_waits_is_refused() -> None:
    other = types.ModuleType("start_client_internal")
    other.__file__ = __file__  # any source without Flower 1.42's waits
    other.time = time  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="flower-supernode instead"):
        check_flower_loop(other)


def test_the_launcher_rejects_a_bad_interval_with_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--poll-interval", "soon", "--insecure"]) == 2
    assert main(["--poll-interval"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --poll-interval needs a number of seconds",
        "error: --poll-interval needs a number of seconds",
    ]


def test_the_launchers_help_names_its_own_options_then_flowers() -> None:
    # One run serves both checks: the launcher starts Flower's own SuperNode CLI, and its
    # --help lists the launcher's options before Flower's.
    done = subprocess.run(
        [sys.executable, "-m", "secagg.protocols.flower.supernode", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0
    assert "--poll-interval" in done.stdout and "--no-fork-server" in done.stdout
    assert "--superlink" in done.stdout and "--node-config" in done.stdout
    assert done.stdout.index("--no-fork-server") < done.stdout.index("--superlink")


def test_quick_pulls_retry_sooner_inside_the_block_only() -> None:
    from secagg.protocols.flower.latency import quick_pulls

    seen: list[dict[str, object]] = []

    def pull_objects(object_ids: list[str], **kwargs: object) -> dict[str, bytes]:
        seen.append(kwargs)
        return {}

    module = types.ModuleType("flower_module")
    module.pull_objects = pull_objects  # type: ignore[attr-defined]
    with quick_pulls(module):
        module.pull_objects(["a"])  # type: ignore[attr-defined]
        with quick_pulls(module):  # nested: not wrapped twice
            module.pull_objects(["b"])  # type: ignore[attr-defined]
    module.pull_objects(["c"])  # type: ignore[attr-defined]
    assert seen == [
        {"initial_backoff": 0.05, "backoff_cap": 0.5},
        {"initial_backoff": 0.05, "backoff_cap": 0.5},
        {},
    ]
    assert module.pull_objects is pull_objects  # type: ignore[attr-defined]
    with quick_pulls(types.ModuleType("no_pulls")):  # nothing to change: no error
        pass


def test_the_pinned_flower_pulls_objects_with_these_keywords() -> None:
    import inspect

    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal

    for module in (http_grid, start_client_internal):
        parameters = inspect.signature(module.pull_objects).parameters
        assert {"initial_backoff", "backoff_cap"} <= set(parameters)
