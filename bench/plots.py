"""PNG plots of a sweep: per-parameter costs against the update size, server memory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .memory import series, series_label

__all__ = ["write_plots"]

_ROLE_PLOTS = (
    ("encrypt.png", "encrypt_us_per_param", "client encryption, µs / parameter"),
    ("wire.png", "bytes_per_param", "wire bytes / parameter"),
    ("server_add.png", "add_us_per_param_per_client", "server add, µs / parameter / client"),
    ("release.png", "release_us_per_param", "key-holder release, µs / parameter"),
)


def _role_plot(runs: Sequence[Mapping[str, Any]], key: str, ylabel: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for scheme in dict.fromkeys(r["scheme"] for r in runs):
        points = sorted((r["num_params"], r[key]) for r in runs if r["scheme"] == scheme)
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=scheme)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters per update")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _memory_plot(memory: Sequence[Mapping[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(series_label(r) for r in memory):
        found = series(memory, label)
        xs = [r["clients"] for r in found]
        ys = [r["growth_kb"] / 1024 for r in found]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("clients aggregated")
    ax.set_ylabel("server peak RSS growth, MiB")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(results: Mapping[str, Any], out_dir: Path) -> list[str]:
    """Write the plots of the phases that ran into ``out_dir``; return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    runs = results.get("he", [])
    if runs:
        for filename, key, ylabel in _ROLE_PLOTS:
            _role_plot(runs, key, ylabel, out_dir / filename)
            written.append(filename)
    memory = results.get("memory", [])
    if memory:
        _memory_plot(memory, out_dir / "server_memory.png")
        written.append("server_memory.png")
    return written
