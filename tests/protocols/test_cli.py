"""The ``secagg`` console script, run as a user would: in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secagg import __version__
from secagg.errors import CheckpointError
from secagg.protocols import load_checkpoint
from secagg.protocols.defaults import DATASET_NAMES, GENERAL, RECIPES

SECAGG = [sys.executable, "-m", "secagg.protocols.cli"]
SMALL = [
    "--dataset", "digits", "--max-examples", "300",
    "--model-arg", "orientations=4", "--model-arg", "attention_dim=4",
]  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SECAGG, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_version_and_help() -> None:
    version = run_cli("--version")
    assert version.returncode == 0 and __version__ in version.stdout
    help_text = run_cli("run", "--help")
    assert help_text.returncode == 0
    for option in ("--dataset", "--epsilon", "--noise-multiplier", "--no-he", "--resume"):
        assert option in help_text.stdout
    # Every dataset's recipe is listed with the values a run would really use.
    recipes = help_text.stdout.split("recipes (")[1].splitlines()
    for name in DATASET_NAMES:
        (dp_line,) = [line for line in recipes if line.strip().startswith(name)]
        recipe = {**GENERAL, **RECIPES[name]}
        assert f"{recipe['rounds']} rounds of {recipe['local_epochs']} local" in dp_line
        assert f"lr {recipe['lr']:g}," in dp_line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "nope"], "dataset must be one of"),
        (["--dirichlet-alpha", "abc"], "--dirichlet-alpha expects"),
        (["--lr", "nan"], "lr has an invalid value"),
        (["--clients", "abc"], "invalid int value"),
        (["--epsilon", "-1"], "epsilon must be positive"),
        (["--seed", "-3"], "seed must be in"),
        (["--accountant", "moments"], "invalid choice: 'moments'"),
    ],
)
def test_bad_input_is_one_clean_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "never"
    start = time.monotonic()
    result = run_cli("run", *args, "--out", str(out))
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()  # refused before anything was written or trained
    assert time.monotonic() - start < 60


def test_out_pointing_at_a_file_or_a_used_directory_is_refused(tmp_path: Path) -> None:
    existing = tmp_path / "a-file"
    existing.write_text("keep me")
    result = run_cli("run", *SMALL, "--out", str(existing))
    assert result.returncode == 2 and "not a directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert existing.read_text() == "keep me"
    used = tmp_path / "used"
    used.mkdir()
    (used / "checkpoint.secagg").write_text("an earlier run")
    result = run_cli("run", *SMALL, "--out", str(used))
    assert result.returncode == 2 and "not empty" in result.stderr


def test_two_round_three_client_run_writes_every_output(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("run", *SMALL, "--clients", "3", "--rounds", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Final test accuracy" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["clients"] == 3 and config["rounds"] == 2 and config["he"] and config["dp"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    for record in metrics["rounds"]:
        assert 0.0 <= record["accuracy"] <= 1.0
        assert record["epsilon_max"] > 0 and record["delta"] == config["delta"]
        assert record["bytes_per_client"] > 0
        assert {"train", "encrypt", "aggregate", "decrypt", "wall"} <= set(record["seconds"])
        assert record["status"] == "completed" and len(record["contributors"]) >= 2
    assert metrics["attention"]["weights"], "attention map missing"
    report = (out / "report.md").read_text()
    for png in ("accuracy.png", "epsilon.png", "time_breakdown.png", "attention.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
        assert f"]({png})" in report
    key_file = out / "keys" / "secret-context.secagg"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_killed_run_resumes_to_the_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*SECAGG, "run", *SMALL, "--max-examples", "600", "--clients", "3", "--rounds", "4"]
    process = subprocess.Popen(
        [*args, "--out", str(out), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoint = out / "checkpoint.secagg"
    killed_after = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            try:
                state = load_checkpoint(checkpoint)
            except CheckpointError:
                state = None
            if state is not None and state.rounds_completed >= 1:
                os.killpg(process.pid, signal.SIGKILL)
                killed_after = state.rounds_completed
                break
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert killed_after is not None and killed_after < 4, "the run was not killed mid-way"
    ledgers_before = load_checkpoint(checkpoint).ledgers

    resumed = run_cli("run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3, 4]
    final = load_checkpoint(checkpoint)
    for client_id, ledger in ledgers_before.items():
        steps_before = sum(h[2] for h in ledger["accountant"]["history"])
        steps_after = sum(h[2] for h in final.ledgers[client_id]["accountant"]["history"])
        assert steps_after >= steps_before  # no privacy spending is forgotten


@pytest.mark.parametrize("flag", ["--no-he", "--no-dp"])
def test_baselines_run(tmp_path: Path, flag: str) -> None:
    out = tmp_path / "run"
    result = run_cli(
        "run", *SMALL, "--clients", "3", "--rounds", "1", "--no-attention", flag,
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    record = metrics["rounds"][0]
    if flag == "--no-dp":
        assert record["epsilon_max"] is None
    else:
        assert record["seconds"]["decrypt"] >= 0.0
