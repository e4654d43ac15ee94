"""Fuzz the byte loaders in a subprocess, so that a crash fails the test instead of pytest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).with_name("fuzz_payloads.py")
SEED = 20240611
DEFAULT_CASES = 5000  # with the six other parsers: > 20,000 cases per CI run (about 10 s)


def _run_fuzz(cases: int, other_cases: int, seed: int, timeout: float) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--cases",
            str(cases),
            "--other-cases",
            str(other_cases),
            "--seed",
            str(seed),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=SCRIPT.parents[2],
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode >= 0, f"fuzz process killed by signal {-proc.returncode}:\n{tail}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FUZZ-SUMMARY ")]
    assert lines, f"no summary (exit {proc.returncode}):\n{tail}"
    summary: dict[str, Any] = json.loads(lines[-1].removeprefix("FUZZ-SUMMARY "))
    print(proc.stdout)
    failures = {
        name: target["failure_kinds"]
        for name, target in summary["targets"].items()
        if target["failures"]
    }
    assert not failures, f"non-secagg exceptions (seed {seed}): {json.dumps(failures, indent=1)}"
    assert proc.returncode == 0, tail
    return summary


def _check_counts(summary: dict[str, Any], cases: int, other_cases: int) -> None:
    targets = summary["targets"]
    updates = targets["Aggregator.add"]
    assert updates["cases"] == cases
    assert updates["accepted"] + sum(updates["errors"].values()) == cases
    # Every mutator family was exercised, and most corruptions are refused: by the
    # signature as received, by the checks behind it once re-signed by the client.
    assert len(updates["by_mutator"]) == 10
    assert min(updates["by_mutator"].values()) >= cases // 100
    assert updates["accepted"] < cases // 4
    assert updates["errors"].get("FormatError", 0) > cases // 4
    assert updates["errors"].get("SignatureError", 0) > cases // 20
    for name in (
        "EncryptedAggregate.from_bytes",
        "ServerContext.from_bytes",
        "KeyMaterial.from_bytes",
        "KeyHolder.from_bytes",
        "ClientRegistry.from_bytes",
        "SigningKey.from_bytes",
    ):
        target = targets[name]
        assert target["cases"] == other_cases >= 300, name
        assert target["accepted"] + sum(target["errors"].values()) == other_cases, name
        assert sum(target["errors"].values()) > other_cases // 2, name
    # Accepted (mutated) updates were summed and handed to the key holder, and fuzzed
    # aggregates the loader accepted were released, each by a fresh key holder: they reach
    # the MAC, not the once-per-round rule. Only semantically untouched sums come out.
    for name, loaded in (
        ("KeyHolder.release(sum with a fuzzed update)", updates["accepted"]),
        (
            "KeyHolder.release(fuzzed aggregate)",
            targets["EncryptedAggregate.from_bytes"]["accepted"],
        ),
    ):
        releases = targets[name]
        assert releases["cases"] == loaded > 0, name
        assert releases["accepted"] > 0, name
        assert releases["errors"].get("IntegrityError", 0) > 0, name
        assert releases["errors"].get("RoundAlreadyReleasedError", 0) == 0, name
    assert summary["forged_updates_released"] == 0
    assert summary["forged_aggregates_released"] == 0
    assert summary["unmutated_aggregate_releases"] is True
    assert summary["sum_intact_after_rejections"] is True
    assert summary["sums_changed_by_a_rejection"] == 0
    assert summary["rejections_checked"] > cases // 2
    assert summary["seed"] == SEED


def test_fuzzed_payloads_are_accepted_or_raise_secagg_errors() -> None:
    cases = int(os.environ.get("SECAGG_FUZZ_CASES", DEFAULT_CASES))
    other = max(300, cases // 3)
    summary = _run_fuzz(cases, other, SEED, timeout=600)
    _check_counts(summary, cases, other)


@pytest.mark.soak
def test_fuzz_soak() -> None:
    cases = max(20 * DEFAULT_CASES, int(os.environ.get("SECAGG_FUZZ_CASES", 0)))
    other = max(300, cases // 3)
    summary = _run_fuzz(cases, other, SEED, timeout=24 * 3600)
    _check_counts(summary, cases, other)
