"""Every corrupted checkpoint raises a typed error; none crashes the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("fuzz_checkpoint.py")


def _fuzz(cases: int, seed: int) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cases", str(cases), "--seed", str(seed)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode >= 0, f"fuzz process killed by signal {-proc.returncode}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FUZZ-SUMMARY ")]
    assert lines, proc.stdout + proc.stderr
    summary: dict[str, object] = json.loads(lines[-1].removeprefix("FUZZ-SUMMARY "))
    assert summary["failures"] == {}, summary["failures"]
    assert proc.returncode == 0
    return summary


def test_corrupted_checkpoints_raise_checkpoint_errors() -> None:
    summary = _fuzz(int(os.environ.get("SECAGG_FUZZ_CHECKPOINT_CASES", "2000")), seed=7)
    # The checksum covers every byte: no corruption may load as a valid checkpoint.
    assert summary["accepted"] == 0
    assert summary["errors"] == {"CheckpointError": summary["cases"]}


@pytest.mark.soak
def test_checkpoint_soak() -> None:
    _fuzz(int(os.environ.get("SECAGG_FUZZ_CASES", "50000")), seed=11)
