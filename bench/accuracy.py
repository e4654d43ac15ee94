"""Accuracy of secagg's recipes, side by side with the alternatives, in one run.

``python -m bench.accuracy --out bench-results [--datasets ...] [--seeds 0 1 2]`` runs, for
each dataset and seed, on the same partitions:

- **DP + HE**: ``secagg run``'s defaults for the dataset (DP-SGD at ε = 8, exact secure
  aggregation, the attention analysis), as a user gets them;
- **HE effect**: the same run twice in the research-only deterministic mode, with and
  without HE: the DP noise is then the same in both, so the difference is what secure
  aggregation (its stochastic rounding) does to accuracy, and nothing else (judged on the
  mean absolute difference over seeds; the largest is reported beside it);
- **non-private**: the same model with its own best recipe (``dp=False``), no HE;
- **DP-FedAvg MLP**: Opacus directly, a 64-64 MLP, same partitions and (ε, δ)
  (:func:`bench.references.mlp_dp_fedavg`);
- **centralised**: the same model trained on all the data without privacy, and its
  attention map, against which the federated DP map is ranked (with permutation
  importance on tabular data): Spearman's ρ over the reference's top 20 units (what the
  target judges), over all units, and the overlap of the two top-10 sets. Beside it, how
  well the reference agrees with itself: its maps from the different seeds, ranked
  against each other the same way. A federated DP map cannot be expected to agree with
  the reference better than a second non-private run of the same model does.

It writes ``accuracy.json`` and ``accuracy.md`` (tables and the issue's targets, each
with its verdict).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secagg.protocols import Federation
from secagg.protocols.config import default_config
from secagg.protocols.defaults import DATASET_NAMES

from ._markdown import table
from .references import (
    central_reference,
    mlp_dp_fedavg,
    permutation_importance,
    rank_agreement,
)

__all__ = ["measure", "targets"]

#: Datasets whose DP + HE accuracy must reach 0.90 (the issue's target).
HIGH_BAR = ("digits", "mnist")


def _federated(config: Any) -> dict[str, Any]:
    start = time.perf_counter()
    result = Federation(config).run()
    row: dict[str, Any] = {
        "accuracy": result.final_accuracy,
        "epsilon": result.epsilon,
        "seconds": time.perf_counter() - start,
    }
    if result.attention is not None and result.attention.weights:
        row["attention"] = list(result.attention.weights)
        row["unit_names"] = list(result.attention.unit_names)
        row["noise_to_signal"] = result.attention.noise_to_signal
        row["units_above_noise"] = result.attention.units_above_noise
    return row


def measure(dataset: str, *, seed: int) -> dict[str, Any]:
    """Every row of the benchmark for one dataset and seed."""
    config = default_config(dataset, seed=seed)
    rows: dict[str, Any] = {"DP + HE": _federated(config)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ResearchOnlyWarning: deliberate here
        same_noise = default_config(dataset, seed=seed, insecure_deterministic=True)
        rows["DP + HE, seeded noise"] = _federated(same_noise)
        rows["DP, seeded noise"] = _federated(
            default_config(dataset, seed=seed, he=False, insecure_deterministic=True)
        )
    rows["non-private"] = _federated(
        default_config(dataset, seed=seed, dp=False, he=False, attention_analysis=False)
    )
    start = time.perf_counter()
    rows["DP-FedAvg MLP (Opacus)"] = {
        **mlp_dp_fedavg(config),
        "seconds": time.perf_counter() - start,
    }
    start = time.perf_counter()
    central = central_reference(config)
    rows["centralised, non-private"] = {
        "accuracy": central.accuracy,
        "seconds": time.perf_counter() - start,
    }
    attention: dict[str, Any] = {}
    released = rows["DP + HE"].get("attention")
    if released is not None:
        attention["vs centralised attention"] = rank_agreement(released, central.attention)
        plan_data = _test_split(config)
        if plan_data is not None:
            importance = permutation_importance(central.model, *plan_data, seed=seed)
            attention["vs permutation importance"] = rank_agreement(released, importance)
        attention["noise_to_signal"] = rows["DP + HE"]["noise_to_signal"]
        attention["units_above_noise"] = rows["DP + HE"]["units_above_noise"]
        attention["units"] = len(released)
        attention["top5"] = [
            rows["DP + HE"]["unit_names"][i] for i in np.argsort(-np.asarray(released))[:5]
        ]
        attention["top5 centralised"] = [
            rows["DP + HE"]["unit_names"][i] for i in np.argsort(-central.attention)[:5]
        ]
        attention["centralised map"] = [float(w) for w in central.attention]
    for row in rows.values():
        row.pop("attention", None)
        row.pop("unit_names", None)
    return {"dataset": dataset, "seed": seed, "rows": rows, "attention": attention}


def _test_split(config: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    from secagg.protocols.datasets import load_dataset

    data = load_dataset(config.dataset, seed=config.seed, max_examples=config.max_examples)
    return (data.x_test, data.y_test) if data.kind == "tabular" else None


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _rho(value: float) -> str:
    """A correlation for the report: two decimals, or a dash when not measured."""
    return "—" if np.isnan(value) else f"{value:.2f}"


def reference_stability(maps: Sequence[Sequence[float]]) -> float:
    """Mean Spearman ρ over the top 20 units between the centralised maps of different seeds.

    Every ordered pair counts once (``rank_agreement`` judges the second map's top units),
    so the result is symmetric in the seeds; ``nan`` with fewer than two maps.
    """
    pairs = [
        rank_agreement(maps[i], maps[j])["spearman top20"]
        for i in range(len(maps))
        for j in range(len(maps))
        if i != j
    ]
    return _mean([rho for rho in pairs if np.isfinite(rho)])


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per dataset: the mean of each row's accuracy over seeds, the gaps and ranks."""
    out: dict[str, dict[str, Any]] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        mine = [r for r in runs if r["dataset"] == dataset]

        def acc(row: str, runs_: list[dict[str, Any]] = mine) -> list[float]:
            return [r["rows"][row]["accuracy"] for r in runs_]

        he_effect = [
            abs(a - b)
            for a, b in zip(acc("DP + HE, seeded noise"), acc("DP, seeded noise"), strict=True)
        ]
        attention = [r["attention"] for r in mine if r["attention"]]

        def vs_centralised(key: str, attention: list[dict[str, Any]] = attention) -> list[float]:
            return [a["vs centralised attention"][key] for a in attention]

        out[dataset] = {
            "seeds": [r["seed"] for r in mine],
            "DP + HE": _mean(acc("DP + HE")),
            "epsilon": max(r["rows"]["DP + HE"]["epsilon"] or 0.0 for r in mine),
            "non-private": _mean(acc("non-private")),
            "MLP": _mean(acc("DP-FedAvg MLP (Opacus)")),
            "centralised": _mean(acc("centralised, non-private")),
            # Judged on the mean over seeds: one run's difference moves in whole test
            # examples (0.9 point on breast_cancer's 114), coarser than the 0.5-point target.
            "HE effect (mean)": _mean(he_effect),
            "HE effect (max)": max(he_effect),
            "seconds DP + HE": _mean([r["rows"]["DP + HE"]["seconds"] for r in mine]),
            "spearman vs centralised": _mean(vs_centralised("spearman")),
            "spearman top20 vs centralised": _mean(vs_centralised("spearman top20")),
            "top10 overlap": _mean(vs_centralised("top10_overlap")),
            "reference vs itself top20": reference_stability(
                [a["centralised map"] for a in attention if "centralised map" in a]
            ),
            "spearman vs permutation importance": _mean(
                [
                    a["vs permutation importance"]["spearman"]
                    for a in attention
                    if "vs permutation importance" in a
                ]
            ),
            "noise_to_signal": _mean([a["noise_to_signal"] for a in attention]),
            "units above noise": _mean([a["units_above_noise"] for a in attention]),
            "units": attention[0]["units"] if attention else 0,
            "top5": attention[0]["top5"] if attention else [],
            "top5 centralised": attention[0]["top5 centralised"] if attention else [],
        }
    return out


def targets(summary: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """The issue's accuracy targets: (target, measured, met)."""
    rows: list[tuple[str, str, bool]] = []
    for dataset, s in summary.items():
        dp_he, eps = s["DP + HE"], s["epsilon"]
        if dataset in HIGH_BAR:
            met = dp_he >= 0.90 and eps <= 8.0
            rows.append((f"{dataset}: DP + HE ≥ 0.90 at ε ≤ 8", f"{dp_he:.3f} at ε {eps:.2f}", met))
        gap = s["non-private"] - dp_he
        measured = f"{100 * gap:.1f} points below"
        rows.append((f"{dataset}: within 5 points of the non-private run", measured, gap <= 0.05))
        measured = f"{dp_he:.3f} vs {s['MLP']:.3f}"
        rows.append((f"{dataset}: at least the DP-FedAvg MLP", measured, dp_he >= s["MLP"]))
        effect = s["HE effect (mean)"]
        measured = (
            f"{100 * effect:.2f} points (mean over {len(s['seeds'])} seeds; largest "
            f"{100 * s['HE effect (max)']:.2f})"
        )
        rows.append((f"{dataset}: HE changes accuracy by < 0.5 point", measured, effect < 0.005))
        rho = s["spearman top20 vs centralised"]
        measured = (
            f"Spearman {rho:.2f} over its top 20 ({s['spearman vs centralised']:.2f} over all "
            f"units), noise/signal {s['noise_to_signal']:.2f}, "
            f"{s['units above noise']:.0f} of {s['units']} units above the noise; "
            "the reference across seeds: "
            f"{_rho(s['reference vs itself top20'])}"
        )
        target = f"{dataset}: attention ranks the non-private reference's top units alike (ρ > 0.3)"
        rows.append((target, measured, rho > 0.3))
    return rows


def markdown(runs: list[dict[str, Any]], seconds: float) -> str:
    """The report: accuracy, HE effect, attention agreement and targets."""
    summary = summarise(runs)
    accuracy = table(
        [
            "dataset",
            "DP + HE (ε)",
            "non-private",
            "gap",
            "DP-FedAvg MLP",
            "centralised",
            "HE effect",
            "DP + HE run s",
        ],
        [
            [
                dataset,
                f"{s['DP + HE']:.3f} ({s['epsilon']:.2f})",
                f"{s['non-private']:.3f}",
                f"{100 * (s['DP + HE'] - s['non-private']):+.1f}",
                f"{s['MLP']:.3f}",
                f"{s['centralised']:.3f}",
                f"{100 * s['HE effect (mean)']:.2f} pt (max {100 * s['HE effect (max)']:.2f})",
                f"{s['seconds DP + HE']:.0f}",
            ]
            for dataset, s in summary.items()
        ],
    )
    attention = table(
        [
            "dataset",
            "noise / signal",
            "units above the noise",
            "Spearman vs centralised: its top 20 / all units",
            "centralised vs itself across seeds (top 20)",
            "top-10 overlap",
            "vs permutation importance",
            "top 5 (DP, federated)",
            "top 5 (centralised)",
        ],
        [
            [
                dataset,
                f"{s['noise_to_signal']:.2f}",
                f"{s['units above noise']:.0f} of {s['units']}",
                f"{s['spearman top20 vs centralised']:.2f} / {s['spearman vs centralised']:.2f}",
                _rho(s["reference vs itself top20"]),
                f"{s['top10 overlap']:.1f}",
                _rho(s["spearman vs permutation importance"]),
                ", ".join(s["top5"]),
                ", ".join(s["top5 centralised"]),
            ]
            for dataset, s in summary.items()
        ],
    )
    verdicts = table(
        ["target", "measured", "verdict"],
        [
            [target, measured, "met" if met else "**missed**"]
            for target, measured, met in targets(summary)
        ],
    )
    lines = [
        "# Accuracy, side by side",
        "",
        f"10 clients, Dirichlet α = 1, δ = 1e-5; mean over seeds; {seconds:.0f} s in all.",
        "",
        *accuracy,
        "",
        "## Attention analysis",
        "",
        *attention,
        "",
        "## Targets",
        "",
        *verdicts,
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench.accuracy``."""
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=list(DATASET_NAMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    report = ""
    for dataset in args.datasets:
        for seed in args.seeds:
            run = measure(dataset, seed=seed)
            runs.append(run)
            brief = {k: round(v["accuracy"], 4) for k, v in run["rows"].items()}
            print(dataset, seed, brief, flush=True)
            # written after every run: a long benchmark that dies keeps what it measured
            report = _write(args.out, runs, time.perf_counter() - start)
    print(report)
    return 0


def _write(out: Path, runs: list[dict[str, Any]], seconds: float) -> str:
    (out / "accuracy.json").write_text(json.dumps(runs, indent=2))
    report = markdown(runs, seconds)
    (out / "accuracy.md").write_text(report)
    return report


if __name__ == "__main__":
    raise SystemExit(main())
