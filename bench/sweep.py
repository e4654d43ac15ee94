"""The benchmark sweep: secagg's presets against a FLARE-style reference and plaintext.

Usage::

    python -m bench.sweep --out bench-results            # full: 1e4..1e7 values, 2..100 clients
    python -m bench.sweep --out /tmp/bench-quick --quick # 1e4 and 1e5 values, 2 and 10 clients
    python -m bench.sweep --out DIR --render DIR/bench.json   # re-render only

Writes ``bench.json`` (every raw number, the machine and the command), ``bench.md``
(tables, ratios against FLARE-style and plaintext, the targets with PASS/MISS) and PNG
plots. Every phase runs in one sweep, so ratios compare numbers taken under the same
conditions; client encryption is also timed interleaved (scheme by scheme, in turn) in
a fresh process (:mod:`bench.phases`).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from .machine import load_average, machine_info
from .phases import PHASES, log
from .plan import FULL, QUICK, SweepPlan, plan_from_json
from .plots import write_plots
from .report import markdown, notes
from .targets import judge
from .updates import parse_sizes

__all__ = ["main", "render", "run_sweep"]

_QUIET = (
    "Secure RNG turned off",
    "Full backward hook is firing",
    "Optimal order is the largest alpha",
)


def _python() -> str:
    """The interpreter as the user would type it (relative to the working folder if inside)."""
    relative = os.path.relpath(sys.executable)
    return sys.executable if relative.startswith("..") else relative


def _plan(quick: bool, sizes: Sequence[int] | None, clients: Sequence[int] | None) -> SweepPlan:
    plan = QUICK if quick else FULL
    if sizes:
        plan = replace(plan, sizes=tuple(sizes))
    if clients:
        plan = replace(plan, clients=tuple(clients))
    return plan


def _measure(plan: SweepPlan, results: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        for message in _QUIET:
            warnings.filterwarnings("ignore", message=message)
        for name, phase in PHASES:
            start = time.perf_counter()
            log(f"phase {name} (load {load_average()[0]:.2f})")
            results[name] = phase(plan)
            results["phase_seconds"][name] = time.perf_counter() - start
            gc.collect()


def run_sweep(
    out_dir: Path,
    quick: bool = False,
    *,
    sizes: Sequence[int] | None = None,
    clients: Sequence[int] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark sweep and write ``bench.json``, ``bench.md`` and PNG plots.

    Parameters
    ----------
    out_dir : Path
        Output directory (created if missing).
    quick : bool, optional
        The quick plan (:data:`bench.plan.QUICK`) instead of the full one.
    sizes : sequence of int, optional
        Override the plan's update sizes.
    clients : sequence of int, optional
        Override the plan's client counts.
    command : str, optional
        The command line, recorded in the report.

    Returns
    -------
    dict
        Everything written to ``bench.json``.
    """
    plan = _plan(quick, sizes, clients)
    # One torch thread, as ``secagg run`` (``--threads 1``): with more, torch's own thread
    # pool turns a client's float32-to-float64 conversion into milliseconds on a busy machine.
    torch.set_num_threads(1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "command": command or f"python -m bench.sweep --out {out_dir}" + " --quick" * quick,
        "quick": quick,
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "plan": asdict(plan),
        "phase_seconds": {},
        "notes": notes(plan),
    }
    _measure(plan, results)
    results["duration_s"] = time.perf_counter() - started
    results["loadavg_end"] = load_average()
    render(results, out_dir)
    return results


def render(results: dict[str, Any], out_dir: Path) -> None:
    """Judge the targets and write ``bench.json``, ``bench.md`` and the plots.

    Parameters
    ----------
    results : dict
        What :func:`run_sweep` measured (or a loaded ``bench.json``).
    out_dir : Path
        Output directory.
    """
    plan = plan_from_json(results["plan"])
    out_dir.mkdir(parents=True, exist_ok=True)
    results["targets"] = judge(results)
    results["plots"] = write_plots(results, out_dir)
    (out_dir / "bench.json").write_text(json.dumps(results, indent=1, default=str))
    (out_dir / "bench.md").write_text(markdown(results, plan))
    for target in results["targets"]:
        log(f"{target['verdict']}: {target['target']} — {target['measured']}")
    log(f"wrote {out_dir / 'bench.md'} ({results['duration_s']:.0f} s of measuring)")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m bench.sweep --out DIR [--quick]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    parser.add_argument("--sizes", type=parse_sizes, help="override sizes, e.g. 1e4,1e6")
    parser.add_argument("--clients", type=parse_sizes, help="override client counts, e.g. 2,10")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="BENCH_JSON",
        help="only re-render bench.md and the plots from a bench.json into --out",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        render(json.loads(args.render.read_text()), args.out)
        return 0
    words = sys.argv[1:] if argv is None else argv
    command = f"{_python()} -m bench.sweep " + " ".join(words)
    run_sweep(args.out, args.quick, sizes=args.sizes, clients=args.clients, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
