"""Run outputs: ``config.json``, ``metrics.json``, PNG plots and ``report.md``."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from .._files import atomic_write_bytes

if TYPE_CHECKING:
    from secagg.protocols import RunResult

__all__ = ["PLOTS", "write_report"]

PLOTS = ("accuracy.png", "epsilon.png", "time_breakdown.png", "attention.png")
_PHASES = ("train", "encrypt", "aggregate", "decrypt")


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by ``None`` (JSON has no infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(_json_safe(data), indent=2).encode(), mode=0o644)


def write_report(result: RunResult, out_dir: str | Path) -> list[Path]:
    """Write every output file of a run into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rounds = [asdict(m) for m in result.metrics]
    _write_json(out / "config.json", result.config.to_json())
    _write_json(
        out / "metrics.json",
        {
            "rounds": rounds,
            "final_accuracy": result.final_accuracy,
            "attention": asdict(result.attention) if result.attention else None,
        },
    )
    written = [out / "config.json", out / "metrics.json"]
    written.append(_plot_accuracy(rounds, out / "accuracy.png"))
    written.append(_plot_epsilon(rounds, out / "epsilon.png"))
    written.append(_plot_times(rounds, out / "time_breakdown.png"))
    written.append(_plot_attention(result, out / "attention.png"))
    written.append(_write_markdown(result, rounds, out / "report.md"))
    return written


def _finish(fig: Any, path: Path) -> Path:
    for ax in fig.axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_accuracy(rounds: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [r["round"] for r in rounds]
    ax.plot(xs, [r["accuracy"] for r in rounds], marker="o")
    skipped = [r["round"] for r in rounds if r["status"] != "completed"]
    for x in skipped:
        ax.axvline(x, color="grey", alpha=0.3, linestyle="--")
    ax.set(xlabel="round", ylabel="test accuracy", title="Global model accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def _plot_epsilon(rounds: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [r["round"] for r in rounds]
    if any(r["epsilon_max"] is not None for r in rounds):
        ax.plot(xs, [r["epsilon_max"] for r in rounds], marker="o", label="max over clients")
        ax.plot(xs, [r["epsilon_mean"] for r in rounds], marker=".", label="mean over clients")
        ax.legend()
        delta = rounds[0]["delta"] if rounds else 0.0
        ax.set(ylabel=f"ε (δ = {delta:g})")
    else:
        ax.text(0.5, 0.5, "no differential privacy (ε = ∞)", ha="center", transform=ax.transAxes)
    ax.set(xlabel="round", title="Privacy spent")
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def _plot_times(rounds: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [r["round"] for r in rounds]
    bottom = [0.0] * len(rounds)
    for phase in _PHASES:
        values = [r["seconds"].get(phase, 0.0) for r in rounds]
        ax.bar(xs, values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set(xlabel="round", ylabel="seconds", title="Round time by phase")
    ax.legend()
    return _finish(fig, path)


def _plot_attention(result: RunResult, path: Path) -> Path:
    attention = result.attention
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if attention is None or not attention.weights:
        note = attention.note if attention is not None else "attention analysis not run"
        ax.text(0.5, 0.5, note or "no attention map", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _finish(fig, path)
    names = attention.unit_names
    patches = [n for n in names if n.startswith("patch (")]
    if patches and len(patches) == len(names):
        side = round(math.sqrt(len(names)))
        grid = [attention.weights[r * side : (r + 1) * side] for r in range(side)]
        image = ax.imshow(grid, cmap="viridis")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="patch column", ylabel="patch row")
        fig.colorbar(image, ax=ax)
        ax.set(title="Federation-wide attention per image patch")
    else:
        top = attention.top(15)
        ax.barh([n for n, _ in reversed(top)], [w for _, w in reversed(top)])
        title = "Top attended units (federation-wide)"
        if attention.all_within_noise:
            title += ": all within the DP noise"
        ax.set(xlabel="mean attention weight", title=title)
        if attention.noise_std > 0:
            ax.axvline(
                attention.noise_threshold,
                color="black",
                linestyle="--",
                linewidth=1,
                label="above the DP noise beyond this (5% family-wise)",
            )
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize="small")
    return _finish(fig, path)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "∞" if value is None else f"{value:.{digits}f}"


def _write_markdown(result: RunResult, rounds: Sequence[dict[str, Any]], path: Path) -> Path:
    config = result.config
    lines = [
        f"# secagg run: {config.dataset}",
        "",
        *(
            [
                "> **Research-only deterministic mode**: DP noise and batch sampling followed "
                "the run seed; anyone who knows it can remove the noise. These results carry "
                "no privacy guarantee.",
                "",
            ]
            if config.insecure_deterministic
            else []
        ),
        f"- clients: {config.clients}, rounds: {config.rounds}, "
        f"sampled per round: {config.sampled_per_round}, min_clients: {config.min_clients}",
        f"- partition: {'IID' if config.dirichlet_alpha is None else 'Dirichlet'}"
        f"{'' if config.dirichlet_alpha is None else f'(α = {config.dirichlet_alpha})'}, "
        f"dropout: {config.dropout}",
        "- aggregation: "
        + (f"CKKS secure aggregation, preset {config.preset}" if config.he else "plaintext"),
        "- DP-SGD: "
        + (
            "off"
            if not config.dp
            else (f"target ε = {config.epsilon}" if config.epsilon else "fixed σ")
            + (
                f", σ = {min(result.noise_multipliers.values()):.3f}–"
                f"{max(result.noise_multipliers.values()):.3f} per client"
                if result.noise_multipliers
                else ""
            )
            + f", δ = {config.delta:g}, noise and batch sampling from the OS CSPRNG"
        ),
        f"- final test accuracy: **{result.final_accuracy:.4f}**"
        + (
            f" at ε = {result.epsilon:.3f} (largest over clients, the attention analysis included)"
            if result.epsilon is not None
            else ""
        ),
        "",
        "| round | status | accuracy | loss | ε max | ε mean | contributors | bytes/client | "
        "train s | encrypt s | aggregate s | decrypt s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        s = r["seconds"]
        lines.append(
            f"| {r['round']} | {r['status']} | {r['accuracy']:.4f} | {r['loss']:.4f} | "
            f"{_fmt(r['epsilon_max'])} | {_fmt(r['epsilon_mean'])} | {len(r['contributors'])} | "
            f"{r['bytes_per_client']:.0f} | {s['train']:.2f} | {s['encrypt']:.2f} | "
            f"{s['aggregate']:.2f} | {s['decrypt']:.2f} |"
        )
    lines += ["", "![accuracy](accuracy.png)", "![epsilon](epsilon.png)"]
    lines += ["![time breakdown](time_breakdown.png)", ""]
    attention = result.attention
    lines.append("## Federation-wide attention")
    if attention is not None and attention.weights:
        sigma = attention.noise_multiplier
        lines += [
            "",
            f"Aggregated from {len(attention.contributors)} clients"
            + (
                f", DP-noised with σ = {sigma} per client (counted in each client's ε): "
                f"noise std {attention.noise_std:.2e} per unit, "
                f"{attention.noise_to_signal:.2f} of the attention's spread across units; "
                f"{attention.units_above_noise} of {len(attention.weights)} units stand "
                "above the noise (5% family-wise)"
                if sigma
                else " (no DP noise)"
            )
            + ".",
            "",
        ]
        if attention.all_within_noise:
            lines += [
                "**No unit stands above the noise: this map cannot rank its units at this "
                "privacy level, and the order below is the noise's.**",
                "",
            ]
        lines += ["Top units:", "", "| unit | mean attention | above the noise |", "|---|---|---|"]
        lines += [
            f"| {name} | {weight:.4f} | {'yes' if attention.above_noise(weight) else 'no'} |"
            for name, weight in attention.top(10)
        ]
    else:
        lines += ["", attention.note if attention is not None else "Not run."]
    lines += ["", "![attention](attention.png)", ""]
    atomic_write_bytes(path, "\n".join(lines).encode(), mode=0o644)
    return path
