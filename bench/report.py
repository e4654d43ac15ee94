"""``bench.md``: the sweep's results as Markdown.

Every section function takes the loaded ``bench.json`` and the plan and returns its
lines (none when its phase did not run); :func:`markdown` joins them in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ._markdown import Results, fmt, label
from .plan import SweepPlan
from .report_roles import (
    error_section,
    glance_section,
    release_section,
    role_sections,
    server_section,
)
from .report_targets import (
    exact_section,
    interleaved_section,
    mac_section,
    memory_section,
    profile_section,
    wire_section,
)
from .report_training import dp_section, models_section, round_section

__all__ = ["markdown", "notes"]

Section = Callable[[Results, SweepPlan], list[str]]


def header_section(results: Results, plan: SweepPlan) -> list[str]:
    """Title, command, machine and load."""
    machine = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    return [
        "# secagg benchmarks",
        "",
        f"Command: `{results['command']}` ({'quick' if results['quick'] else 'full'} plan), "
        f"started {results['started']}, {results['duration_s']:.0f} s.",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpus_usable']} usable cores, "
        f"{fmt(machine['mem_total_gb'])} GiB; Python {machine['python']}, {versions}. "
        f"Load average at start {machine['loadavg'][0]:.2f}, at end "
        f"{results['loadavg_end'][0]:.2f} (absolute times follow the load; ratios are "
        "taken side by side).",
        "",
    ]


def targets_section(results: Results, plan: SweepPlan) -> list[str]:
    """The targets with PASS/MISS."""
    lines = ["## Targets", "", "| target | measured | verdict | note |", "|---|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | **{t['verdict']}** | {t['note']} |")
    return [*lines, ""]


def guide_section(results: Results, plan: SweepPlan) -> list[str]:
    """How to read the tables."""
    return [
        "## How to read the tables",
        "",
        "Schemes: `plaintext` is secagg's `--no-he` baseline (framed float64 weighted "
        "update, numpy sum: the floor); `flare` is the FLARE-style TenSEAL reference "
        "(`bench/flare_reference.py`: N=8192, [60, 40, 40], scale 2^40, one `ckks_vector` "
        "per tensor, server context with relinearization keys only); `secagg:<preset>` "
        "encrypts in one process (`workers=1`, like TenSEAL); `secagg:default/auto` uses "
        "the library's default parallelism (forked workers from 24 chunks). Cells: value, "
        "then `F/x` = FLARE-style value ÷ this value (times less than FLARE-style) and "
        "`P×x` = this value ÷ plaintext value (times the floor). Synthetic updates: 4 "
        "weight and 4 bias tensors (float32), values N(0, 0.01²).",
        "",
    ]


def notes(plan: SweepPlan) -> list[str]:
    """What a reader of the tables should know about the plan."""
    caps = ", ".join(f"{label(s)}: {plan.real_clients(s)}" for s in plan.sizes)
    out = [
        f"Real clients per size: {caps}; server time beyond them is extrapolated linearly "
        "(`*`). The server-memory test always uses real adds.",
    ]
    if any(c > 64 for c in plan.clients):
        out.append("secagg `small` holds at most 64 clients per round: larger cells are n/a.")
    return out


def notes_section(results: Results, plan: SweepPlan) -> list[str]:
    """The plan's notes and the list of plots."""
    items = [f"- {note}" for note in results.get("notes", [])]
    plots = ", ".join(f"`{p}`" for p in results.get("plots", []))
    return ["## Notes", "", *items, "", f"Plots: {plots}.", ""]


SECTIONS: Sequence[Section] = (
    header_section,
    targets_section,
    guide_section,
    glance_section,
    interleaved_section,
    profile_section,
    wire_section,
    mac_section,
    exact_section,
    role_sections,
    server_section,
    release_section,
    error_section,
    memory_section,
    models_section,
    dp_section,
    round_section,
    notes_section,
)


def markdown(results: Results, plan: SweepPlan) -> str:
    """The whole ``bench.md``."""
    return "\n".join(line for section in SECTIONS for line in section(results, plan))
