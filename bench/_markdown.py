"""Small Markdown helpers shared by the report modules."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["Metric", "Results", "Run", "fmt", "label", "run_of", "table", "value"]

Results = Mapping[str, Any]
Run = Mapping[str, Any]
#: A run's field name, or a function of the run.
Metric = str | Callable[[Run], float | None]


def fmt(value: float | None, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits; ``n/a`` for ``None``."""
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    return f"{value:.{digits}g}"


def label(size: int) -> str:
    """``1e6`` for 1,000,000."""
    return f"{size:.0e}".replace("e+0", "e")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def run_of(runs: Sequence[Run], scheme: str, size: int) -> Run | None:
    """The run of ``scheme`` at ``size``, if measured."""
    return next((r for r in runs if r["scheme"] == scheme and r["num_params"] == size), None)


def value(run: Run | None, key: Metric) -> float | None:
    """A metric of a run (``None`` without a run)."""
    if run is None:
        return None
    return key(run) if callable(key) else run[key]
