"""Measured accuracy of `secagg run` settings next to a centralised non-private baseline.

``python -m bench.accuracy --out bench-results`` runs, for each dataset, the
federation with no DP and no HE, DP only, and DP with HE (the ``secagg run``
recipe for that dataset, same seed), and trains the same model centrally without
privacy for as many epochs as a client's local epochs over all rounds. It writes
``accuracy.json`` and ``accuracy.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from secagg.protocols import Federation, FederationConfig
from secagg.protocols.datasets import load_dataset
from secagg.protocols.local import (
    NonPrivateClient,
    evaluate,
    make_loader,
    make_optimizer,
    train_round,
)
from secagg.protocols.recipes import default_config

__all__ = ["centralized_baseline", "measure"]

SETTINGS = {
    "no DP, no HE": {"dp": False, "he": False, "noise_multiplier": None},
    "DP only": {"dp": True, "he": False},
    "DP + HE": {"dp": True, "he": True},
}


def centralized_baseline(config: FederationConfig, *, epochs: int) -> float:
    """Test accuracy of the same model trained centrally, without privacy."""
    dataset = load_dataset(config.dataset, seed=config.seed, max_examples=config.max_examples)
    torch.manual_seed(config.seed)
    model = dataset.default_model()
    optimizer = make_optimizer(config.client_optimizer, model.parameters(), config.lr)
    loader = make_loader(
        dataset.x_train, dataset.y_train, batch_size=config.batch_size, seed=config.seed
    )
    client = NonPrivateClient(
        module=model, optimizer=optimizer, data_loader=loader, max_grad_norm=config.clip
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(epochs):
        train_round(client, state)
        state = {k: v.clone() for k, v in model.state_dict().items()}
    return evaluate(model, dataset.x_test, dataset.y_test)[0]


def measure(dataset: str, *, rounds: int, seed: int = 0) -> dict[str, Any]:
    """Run the three settings and the baseline for ``dataset``."""
    base = default_config(dataset, rounds=rounds, seed=seed, attention_analysis=False)
    rows: dict[str, Any] = {}
    for name, changes in SETTINGS.items():
        config = dataclasses.replace(base, **changes)
        start = time.perf_counter()
        result = Federation(config).run()
        rows[name] = {
            "accuracy": result.final_accuracy,
            "epsilon_max": result.metrics[-1].epsilon_max,
            "delta": config.delta,
            "seconds": time.perf_counter() - start,
        }
        print(dataset, name, rows[name], flush=True)
    epochs = rounds * base.local_epochs
    rows["centralised, non-private"] = {"accuracy": centralized_baseline(base, epochs=epochs)}
    print(dataset, "centralised", rows["centralised, non-private"], flush=True)
    return {"config": dataclasses.asdict(base), "rows": rows}


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "| dataset | setting | test accuracy | ε (δ = 1e-5) | wall s |",
        "|---|---|---|---|---|",
    ]
    for dataset, result in results.items():
        for name, row in result["rows"].items():
            eps = row.get("epsilon_max")
            eps_text = (
                "∞"
                if eps is None and name != "centralised, non-private"
                else ("—" if eps is None else f"{eps:.2f}")
            )
            seconds = f"{row['seconds']:.0f}" if "seconds" in row else "—"
            lines.append(f"| {dataset} | {name} | {row['accuracy']:.4f} | {eps_text} | {seconds} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--datasets", default="digits,bbc_news")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    results = {d: measure(d, rounds=args.rounds) for d in args.datasets.split(",")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(json.dumps(results, indent=2))
    (args.out / "accuracy.md").write_text(_markdown(results))
    print(_markdown(results))


if __name__ == "__main__":
    main()
