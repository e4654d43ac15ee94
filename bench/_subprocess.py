"""Run a ``bench`` module in a fresh Python process and read the JSON line it prints last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["run_json_child"]

_ROOT = Path(__file__).resolve().parent.parent


def run_json_child(
    module: str, args: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
) -> Any:
    """Run ``python -m module args`` from the repository root; parse its last stdout line.

    ``env`` adds variables to the child's environment.

    Raises
    ------
    RuntimeError
        If the child exits with a non-zero status (its stderr's tail is in the message).
    """
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(_ROOT)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
