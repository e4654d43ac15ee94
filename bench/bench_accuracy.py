"""A fast slice of the accuracy benchmark (the full one: ``python -m bench.accuracy``)."""

from __future__ import annotations

import pytest
import torch

from bench.accuracy import markdown, measure, summarise

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
    assert "## Targets" in markdown([run], 1.0)
