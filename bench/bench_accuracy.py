"""A fast slice of the accuracy benchmark (the full one: ``python -m bench.accuracy``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.accuracy import markdown, measure, reference_stability, summarise, targets
from bench.references import rank_agreement

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_breast_cancer_side_by_side_in_one_run() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = measure("breast_cancer", seed=0)
    finally:
        torch.set_num_threads(threads)
    rows = run["rows"]
    assert set(rows) == {
        "DP + HE",
        "DP + HE, seeded noise",
        "DP, seeded noise",
        "non-private",
        "DP-FedAvg MLP (Opacus)",
        "centralised, non-private",
    }
    # DP + HE at ε = 8 learns (the majority class is 0.63) and spends what it plans.
    assert rows["DP + HE"]["accuracy"] > 0.90
    assert 7.5 < rows["DP + HE"]["epsilon"] <= 8.0
    assert rows["DP-FedAvg MLP (Opacus)"]["epsilon"] <= 8.05
    summary = summarise([run])["breast_cancer"]
    assert summary["HE effect (max)"] < 0.01  # same DP noise: HE's rounding alone
    assert summary["spearman vs centralised"] > 0.0
    assert -1.0 <= summary["spearman top20 vs centralised"] <= 1.0
    assert 0.0 <= summary["top10 overlap"] <= 1.0
    # One seed: no second reference map to compare the first with, and the report says so.
    assert len(run["attention"]["centralised map"]) == 30
    assert np.isnan(summary["reference vs itself top20"])
    report = markdown([run], 1.0)
    assert "## Targets" in report and "the reference across seeds: —" in report
    _assert_tables_are_rectangular(report)


def _assert_tables_are_rectangular(report: str) -> None:
    """Every row of every Markdown table has as many cells as its header."""
    tables: list[list[str]] = []
    previous_was_row = False
    for line in report.splitlines():
        is_row = line.startswith("|")
        if is_row and not previous_was_row:
            tables.append([])
        if is_row:
            tables[-1].append(line)
        previous_was_row = is_row
    assert len(tables) == 3
    for table in tables:
        cells = [len(row.strip("|").split("|")) for row in table]
        assert len(set(cells)) == 1, (table[0], cells)


def test_rank_agreement_over_the_reference_top_units() -> None:
    rng = np.random.default_rng(0)
    reference = np.concatenate([np.linspace(1.0, 0.1, 20), np.zeros(4000)])
    # The release orders the 20 units that matter exactly, and the 4,000 others at random.
    released = np.concatenate([np.linspace(1.0, 0.1, 20), 0.2 * rng.random(4000)])
    agreement = rank_agreement(released, reference)
    assert agreement["spearman top20"] == pytest.approx(1.0)
    assert agreement["top10_overlap"] == 1.0
    assert agreement["spearman"] < 0.2  # the full ranking is mostly noise over empty units
    assert rank_agreement(released, reference, top_rank=5)["spearman top5"] == pytest.approx(1.0)
    flipped = np.concatenate([np.linspace(0.1, 1.0, 20), np.zeros(4000)])
    assert rank_agreement(flipped, reference)["spearman top20"] == pytest.approx(-1.0)


def test_reference_stability_ranks_each_seed_against_the_others() -> None:
    top = np.linspace(1.0, 0.1, 20)
    rest = np.zeros(100)
    same = np.concatenate([top, rest])
    assert reference_stability([same, same.copy(), same.copy()]) == pytest.approx(1.0)
    reversed_top = np.concatenate([top[::-1], rest])
    # Each map orders the other's top 20 in reverse: ρ = -1 both ways.
    assert reference_stability([same, reversed_top]) == pytest.approx(-1.0)
    assert np.isnan(reference_stability([same]))


def _synthetic_run(seed: int, *, with_he: float, without_he: float) -> dict[str, object]:
    """One seed's rows, as :func:`bench.accuracy.measure` returns them (no attention)."""
    rows = {
        name: {"accuracy": 0.97, "epsilon": 8.0, "seconds": 1.0}
        for name in ("DP + HE", "non-private", "DP-FedAvg MLP (Opacus)", "centralised, non-private")
    }
    rows["DP + HE, seeded noise"] = {"accuracy": with_he, "seconds": 1.0}
    rows["DP, seeded noise"] = {"accuracy": without_he, "seconds": 1.0}
    return {"dataset": "breast_cancer", "seed": seed, "rows": rows, "attention": {}}


def test_he_effect_is_judged_on_the_mean_over_seeds_and_reports_the_largest() -> None:
    one_example = 1 / 114  # one of breast_cancer's test examples: 0.88 point
    runs = [_synthetic_run(0, with_he=0.97, without_he=0.97 - one_example)]
    runs += [_synthetic_run(s, with_he=0.97, without_he=0.97) for s in range(1, 10)]
    summary = summarise(runs)["breast_cancer"]
    assert summary["HE effect (max)"] == pytest.approx(one_example)
    assert summary["HE effect (mean)"] == pytest.approx(one_example / 10)
    (verdict,) = [t for t in targets(summarise(runs)) if "HE changes" in t[0]]
    assert verdict[2] and "mean over 10 seeds; largest 0.88" in verdict[1]
    # An effect of a whole example on every seed is one, and is judged so (absolute values:
    # a gain on one seed cannot hide a loss on another).
    runs = [
        _synthetic_run(s, with_he=0.97, without_he=0.97 + (-1) ** s * one_example) for s in range(4)
    ]
    (verdict,) = [t for t in targets(summarise(runs)) if "HE changes" in t[0]]
    assert not verdict[2]
