"""``bench.md``'s training-side tables: real model layouts, DP-SGD steps, a run's rounds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._markdown import Results, table
from .plan import SweepPlan

__all__ = ["dp_section", "models_section", "round_section"]

_RUN_LABELS = {"he": "HE (secagg default)", "plaintext": "plaintext backend"}


def models_section(results: Results, plan: SweepPlan) -> list[str]:
    """Wire size and encryption on the default models' update layouts."""
    models = results.get("models", [])
    if not models:
        return []
    flare = {r["dataset"]: r for r in models if r["scheme"] == "flare"}
    rows = [
        [
            r["dataset"], str(r["num_params"]), str(r["num_tensors"]), r["scheme"],
            f"{r['bytes_per_param']:.2f}", f"{r['encrypt_us_per_param']:.3f}",
            f"{flare[r['dataset']]['bytes_per_param'] / r['bytes_per_param']:.2f}",
        ]
        for r in models
    ]  # fmt: skip
    header = ["dataset", "values", "tensors", "scheme", "B/param", "encrypt µs/param",
              "FLARE ÷ scheme (bytes)"]  # fmt: skip
    return [
        "## Real model layouts (the default models' trainable tensors, 2 clients)",
        "",
        *table(header, rows),
        "",
    ]


def dp_section(results: Results, plan: SweepPlan) -> list[str]:
    """DP-SGD step time against a plain step."""
    dp = results.get("dp", [])
    if not dp:
        return []
    rows = [
        [
            r["dataset"], r["model"], str(r["params"]), f"{r['plain_s'] * 1e3:.2f}",
            f"{r['private_s'] * 1e3:.2f}", f"{r['ratio']:.2f}",
        ]
        for r in dp
    ]  # fmt: skip
    header = ["dataset", "model", "params", "plain ms/step", "DP-SGD ms/step", "DP ÷ plain"]
    return [
        "## DP-SGD step overhead (PrivateClient, Opacus hooks, batch 64, 1 thread)",
        "",
        "Plain and private steps alternate on the same batch; medians.",
        "",
        *table(header, rows),
        "",
    ]


def _round_rows(label: str, result: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for r in result["rounds"]:
        s = r["seconds"]
        rows.append([
            _RUN_LABELS.get(label, label), str(r["round"]), str(r["clients"]),
            f"{r['wall_s']:.2f}", f"{s.get('train', 0):.3f}", f"{s.get('encrypt', 0):.3f}",
            f"{s.get('aggregate', 0):.3f}", f"{s.get('decrypt', 0):.3f}",
            f"{r['he_share']:.2%}", f"{r['bytes_per_client']:.0f}",
        ])  # fmt: skip
    return rows


def _round_summary(he: Mapping[str, Any], plain: Mapping[str, Any]) -> str:
    return (
        f"Whole rounds: {he['wall_s']:.2f} s with HE, {plain['wall_s']:.2f} s with the "
        f"plaintext backend (model of {he['params']} values). The two runs are one after "
        "the other, so their ratio follows the machine's load (compare the train "
        "columns); the HE share within a run does not. Key generation, once per run: "
        f"{he.get('keygen_s', float('nan')) * 1e3:.1f} ms. For the plaintext backend the "
        '"HE share" column is its serialize + sum + divide time.'
    )


def round_section(results: Results, plan: SweepPlan) -> list[str]:
    """The default ``secagg run``'s rounds split into training and HE."""
    runs = results.get("round", {})
    if not runs:
        return []
    dataset = next(iter(runs.values()))["config"]["dataset"]
    rows = [row for label, result in runs.items() for row in _round_rows(label, result)]
    header = ["run", "round", "clients", "wall s", "train s", "encrypt s", "aggregate s",
              "release s", "HE share", "bytes/client"]  # fmt: skip
    out = [
        f"## Default `secagg run` rounds ({dataset}, CLI defaults, 1 torch thread)",
        "",
        "Wall time between round-end callbacks; the split is `RoundMetrics.seconds` "
        "(`decrypt` = the key holder's release); the rest of the wall is evaluation and "
        "bookkeeping. The attention analysis (after the last round) is off.",
        "",
        *table(header, rows),
        "",
    ]
    if "he" in runs and "plaintext" in runs:
        out += [_round_summary(runs["he"], runs["plaintext"]), ""]
    return out
