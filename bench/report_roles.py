"""``bench.md``'s per-role tables: every scheme's cost of each role at every size."""

from __future__ import annotations

from collections.abc import Sequence

from ._markdown import Metric, Results, Run, fmt, label, run_of, table, value
from .plan import SweepPlan

__all__ = [
    "error_section",
    "glance_section",
    "release_section",
    "role_sections",
    "server_section",
]

#: The schemes of the at-a-glance table: the references and secagg's default preset.
GLANCE_SCHEMES = ("plaintext", "flare", "secagg:default", "secagg:default/auto")


def _cell(runs: Sequence[Run], scheme: str, size: int, key: Metric, ratios: bool) -> str:
    mine = value(run_of(runs, scheme, size), key)
    text = fmt(mine)
    if not ratios or not mine:
        return text
    parts = []
    flare = value(run_of(runs, "flare", size), key)
    plain = value(run_of(runs, "plaintext", size), key)
    if flare and scheme != "flare":
        parts.append(f"F/{flare / mine:.2g}")
    if plain and scheme != "plaintext":
        parts.append(f"P×{mine / plain:.2g}")
    return text + (" (" + ", ".join(parts) + ")" if parts else "")


def _metric_table(
    runs: Sequence[Run], sizes: Sequence[int], key: Metric, *, ratios: bool = True
) -> list[str]:
    schemes = list(dict.fromkeys(r["scheme"] for r in runs))
    rows = [[s, *(_cell(runs, s, n, key, ratios) for n in sizes)] for s in schemes]
    return table(["scheme", *(label(n) for n in sizes)], rows)


_GLANCE_METRICS: tuple[tuple[str, Metric], ...] = (
    ("client encryption µs/param", "encrypt_us_per_param"),
    ("wire B/param", "bytes_per_param"),
    ("server add µs/param/client", "add_us_per_param_per_client"),
    ("key-holder release µs/param", "release_us_per_param"),
)


def glance_section(results: Results, plan: SweepPlan) -> list[str]:
    """The per-role table of secagg's default preset against both references."""
    runs = results.get("he", [])
    if not runs:
        return []
    sizes = list(plan.sizes)
    rows = []
    for title, key in _GLANCE_METRICS:
        for scheme in GLANCE_SCHEMES:
            rows.append([title, scheme, *(_cell(runs, scheme, n, key, True) for n in sizes)])
    return [
        "## Per role at a glance (secagg `default` against FLARE-style and plaintext)",
        "",
        *table(["metric", "scheme", *(label(n) for n in sizes)], rows),
        "",
    ]


_SECTIONS: tuple[tuple[str, Metric, str], ...] = (
    ("Wire bytes per parameter (one client's payload)", "bytes_per_param", ""),
    ("Client encryption, µs per parameter (wall, median over clients)", "encrypt_us_per_param", ""),
    (
        "Client encryption, µs per parameter (CPU time of the encrypting process)",
        "encrypt_cpu_us_per_param",
        "`secagg:default/auto` encrypts in worker processes, whose CPU time is not counted.",
    ),
    (
        "Server add, µs per parameter per client (verify, validate, unpack, add one payload)",
        "add_us_per_param_per_client",
        "",
    ),
    (
        "Key-holder release, µs per parameter (parse, verify the MAC, rebuild every "
        "contributor's c1 from its seeds, decrypt, dequantise or flood)",
        "release_us_per_param",
        "secagg's key holder expands every contributor's seeds: its time grows with the "
        "number of clients in the sum (see the real-client counts in the notes).",
    ),
    (
        "Aggregate bytes per parameter (server to key holder)",
        lambda r: r["aggregate_bytes"] / r["num_params"],
        "secagg's aggregate is the summed packed c0 plus 32 B of seeds per chunk and "
        "contributor; FLARE-style's sum has been multiplied by 1/Σw (one level dropped).",
    ),
)


def role_sections(results: Results, plan: SweepPlan) -> list[str]:
    """One table per role metric, every scheme, every size."""
    runs = results.get("he", [])
    out: list[str] = []
    for title, key, note in _SECTIONS:
        out += [f"## {title}", "", *_metric_table(runs, plan.sizes, key), ""]
        out += [note, ""] if note else []
    return out if runs else []


def error_section(results: Results, plan: SweepPlan) -> list[str]:
    """Max error of every release against the exact weighted mean, and the stated σ."""
    runs = results.get("he", [])
    if not runs:
        return []

    def ratio(run: Run) -> float | None:
        std = run.get("stated_error_std")
        return run["max_abs_error"] / std if std else None

    return [
        "## Release error against the exact weighted mean",
        "",
        "Max |error| over the coordinates:",
        "",
        *_metric_table(runs, plan.sizes, "max_abs_error", ratios=False),
        "",
        "The same in stated standard deviations (`ReleasedAggregate.mean_error_std`: "
        "flooding for approximate presets, stochastic rounding for exact ones; n/a where "
        "none is stated). The float32 tensors of the mean add their own rounding.",
        "",
        *_metric_table(runs, plan.sizes, ratio, ratios=False),
        "",
    ]


def server_section(results: Results, plan: SweepPlan) -> list[str]:
    """Server time of a round (adds + finalize) for the plan's client counts."""
    runs = results.get("he", [])
    if not runs:
        return []
    rows = []
    for run in runs:
        cells = []
        for n in plan.clients:
            entry = run["server_seconds"].get(str(n), {})
            seconds = entry.get("seconds")
            if seconds is None:
                cells.append(f"n/a (max {run['max_clients']})")
            else:
                cells.append(f"{seconds:.3g}" + ("*" if entry.get("extrapolated") else ""))
        rows.append([run["scheme"], label(run["num_params"]), *cells])
    caps = ", ".join(f"{label(s)}: {plan.real_clients(s)}" for s in plan.sizes)
    return [
        "## Server time for a round, seconds (adds + finalize)",
        "",
        f"`*` = extrapolated from the mean per-client add time; real clients per size: {caps}.",
        "",
        *table(["scheme", "size", *(f"{n} clients" for n in plan.clients)], rows),
        "",
    ]


def release_section(results: Results, plan: SweepPlan) -> list[str]:
    """The key holder's release time against the number of contributors."""
    found = results.get("release_scaling")
    if not found:
        return []
    rows = [
        [
            str(r["clients"]),
            f"{r['release_s'] * 1e3:.1f}",
            fmt(r.get("marginal_us_per_chunk_and_client")),
        ]
        for r in found["rows"]
    ]
    header = ["contributors", "release ms", "marginal µs per chunk and contributor"]
    return [
        f"## Key-holder release against contributors ({label(found['num_params'])} values, "
        f"{found['chunks']} chunks, preset `{found['preset']}`)",
        "",
        "The key holder rebuilds each contributor's `c1` from its seeds (one AES-256-CTR seed "
        "expansion per chunk and contributor) before decrypting, so a release costs "
        "more the more clients it sums; FLARE-style's decryption does not depend on them.",
        "",
        *table(header, rows),
        "",
    ]
