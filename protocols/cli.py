"""The ``secagg`` command line: ``secagg run``, the main job."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..dp.accounting import ACCOUNTANTS
from ..errors import ConfigurationError, SecaggError
from .defaults import (
    CLIENT_OPTIMIZERS,
    DATASET_NAMES,
    GENERAL,
    NONPRIVATE_RECIPES,
    RECIPES,
    SERVER_OPTIMIZERS,
)

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one clean line and exit status 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        """Print ``secagg: error: message`` and exit 2 (no usage dump)."""
        self.exit(2, f"secagg: error: {message} (see `{self.prog} --help`)\n")


def _recipes_epilog() -> str:
    """Each dataset's recipe, as ``secagg run --help`` lists it under the options."""

    def describe(recipe: dict[str, Any]) -> str:
        batch = recipe["batch_size"]
        batches = "full batch" if batch >= GENERAL["batch_size"] else f"batch {batch}"
        return (
            f"{recipe['rounds']} rounds of {recipe['local_epochs']} local epoch(s), "
            f"{recipe['client_optimizer']} lr {recipe['lr']:g}, {batches}"
        )

    lines = ["recipes (the defaults an option given overrides):"]
    for name in DATASET_NAMES:
        dp = {**GENERAL, **RECIPES[name]}
        analysis = f", analysis σ {dp['attention_noise_multiplier']:g}"
        lines.append(f"  {name:<16}{'DP:':<9}{describe(dp)}{analysis}")
        lines.append(f"  {'':<16}{'--no-dp:':<9}{describe({**dp, **NONPRIVATE_RECIPES[name]})}")
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="secagg",
        description="Federated training of attention models with DP-SGD and CKKS-encrypted "
        "secure aggregation.",
    )
    parser.add_argument("--version", action="version", version=f"secagg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a federated training job on a bundled dataset",
        description="Run an in-process federation: DP-SGD clients, encrypted updates, "
        "a key-less aggregator and a key holder that releases only verified sums.",
        epilog=_recipes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--dataset",
        help=f"bundled dataset: {', '.join(DATASET_NAMES)} (default: {GENERAL['dataset']})",
    )
    run.add_argument(
        "--clients", type=int, help=f"number of clients K (default {GENERAL['clients']})"
    )
    run.add_argument("--rounds", type=int, help="number of rounds T (default: the recipe)")
    run.add_argument("--fraction", type=float, help="fraction of clients sampled per round")
    run.add_argument("--min-clients", type=int, help="fewest updates for a round to complete")
    privacy = run.add_mutually_exclusive_group()
    privacy.add_argument(
        "--epsilon",
        type=float,
        help=f"target ε per client for the whole run (default {GENERAL['epsilon']:g})",
    )
    privacy.add_argument("--noise-multiplier", type=float, help="DP-SGD noise multiplier σ")
    run.add_argument(
        "--clip", type=float, help=f"per-sample clipping norm C (default {GENERAL['clip']:g})"
    )
    run.add_argument(
        "--delta", type=float, help=f"δ of the reported (ε, δ) (default {GENERAL['delta']:g})"
    )
    run.add_argument(
        "--accountant",
        choices=list(ACCOUNTANTS),
        help="how ε is computed and σ planned (default auto: exact for full-batch recipes, "
        "RDP for mini-batches)",
    )
    run.add_argument(
        "--dirichlet-alpha",
        help="Dirichlet α of the non-IID label partition, or 'iid'",
    )
    run.add_argument("--dropout", type=float, help="fraction of sampled clients that fail")
    run.add_argument("--seed", type=int, help="random seed")
    run.add_argument(
        "--local-epochs", type=int, help="local epochs per round (default: the recipe)"
    )
    run.add_argument(
        "--batch-size",
        type=int,
        help="expected (Poisson) batch size (default: the recipe; DP: the whole client)",
    )
    run.add_argument("--lr", type=float, help="client learning rate (default: the recipe)")
    run.add_argument("--client-optimizer", choices=list(CLIENT_OPTIMIZERS))
    run.add_argument("--server-optimizer", choices=list(SERVER_OPTIMIZERS))
    run.add_argument("--server-lr", type=float, help="server learning rate")
    run.add_argument("--preset", help="CKKS parameter preset (default: default)")
    run.add_argument("--max-examples", type=int, help="subsample the dataset (faster runs)")
    run.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="NAME=INT",
        help="override a default-model constructor argument, e.g. attention_dim=16 (repeatable)",
    )
    run.add_argument("--no-he", action="store_true", help="plaintext aggregation (baseline)")
    run.add_argument("--no-dp", action="store_true", help="no DP-SGD (baseline)")
    run.add_argument("--no-attention", action="store_true", help="skip the attention analysis")
    run.add_argument(
        "--insecure-deterministic",
        action="store_true",
        help="RESEARCH ONLY: DP noise and batch sampling from the run seed (bit-reproducible "
        "runs; whoever knows the seed can remove the noise)",
    )
    run.add_argument("--out", type=Path, help="output directory (default: runs/<dataset>-<time>)")
    run.add_argument("--resume", type=Path, metavar="DIR", help="continue a stopped run in DIR")
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    run.add_argument("--quiet", action="store_true", help="no progress display")

    return parser


def _config_from_args(args: argparse.Namespace) -> Any:
    from .config import default_config

    values: dict[str, Any] = {}
    options = {
        "clients": args.clients,
        "rounds": args.rounds,
        "fraction": args.fraction,
        "min_clients": args.min_clients,
        "clip": args.clip,
        "delta": args.delta,
        "accountant": args.accountant,
        "dropout": args.dropout,
        "seed": args.seed,
        "local_epochs": args.local_epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "client_optimizer": args.client_optimizer,
        "server_optimizer": args.server_optimizer,
        "server_lr": args.server_lr,
        "preset": args.preset,
        "max_examples": args.max_examples,
    }
    values.update({k: v for k, v in options.items() if v is not None})
    if args.dirichlet_alpha is not None:
        values["dirichlet_alpha"] = _alpha(args.dirichlet_alpha)
    if args.model_arg:
        values["model_overrides"] = dict(_parse_model_arg(a) for a in args.model_arg)
    values["he"] = not args.no_he
    values["dp"] = not args.no_dp
    values["attention_analysis"] = not args.no_attention
    values["insecure_deterministic"] = args.insecure_deterministic
    if args.epsilon is not None:
        values["epsilon"] = args.epsilon
        values["noise_multiplier"] = None
    elif args.noise_multiplier is not None:
        values["noise_multiplier"] = args.noise_multiplier
        values["epsilon"] = None
    if args.no_dp:
        values["noise_multiplier"] = None
        values["epsilon"] = None
    return default_config(args.dataset, **values)


def _alpha(text: str) -> float | None:
    if text.strip().lower() == "iid":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigurationError(
            f"--dirichlet-alpha expects a positive number or 'iid', got {text!r}"
        ) from None


def _parse_model_arg(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier() or not value.lstrip("-").isdigit():
        raise ConfigurationError(f"--model-arg expects NAME=INT, got {text!r}")
    return name, int(value)


def _run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .config import FederationConfig
    from .inprocess import Federation
    from .report import write_report
    from .roundlog import RoundMetrics

    torch.set_num_threads(max(1, args.threads))
    console = Console(stderr=False, quiet=args.quiet)
    if args.resume is not None:
        out_dir = args.resume
        try:
            stored = json.loads((out_dir / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise SecaggError(f"cannot resume {out_dir}: no readable config.json ({exc})") from None
        config = FederationConfig.from_json(stored)
    else:
        config = _config_from_args(args)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_dir = args.out or Path("runs") / f"{config.dataset}-{stamp}"
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigurationError(f"--out {out_dir} exists and is not a directory")
        if out_dir.is_dir() and any(out_dir.iterdir()):
            raise ConfigurationError(
                f"--out {out_dir} is not empty; choose a new directory or --resume it"
            )
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.json").write_text(json.dumps(config.to_json(), indent=2))
        except OSError as exc:
            raise ConfigurationError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None

    mode = (
        f"{'CKKS ' + config.preset if config.he else 'plaintext'}, {'DP' if config.dp else 'no DP'}"
    )
    if config.insecure_deterministic:
        console.print(
            "[bold red]research-only deterministic mode:[/bold red] DP noise and batch "
            "sampling follow the run seed; whoever knows it can remove the noise"
        )
    console.print(
        f"[bold]secagg run[/bold] {config.dataset}: {config.clients} clients, "
        f"{config.rounds} rounds, {mode} → {out_dir}"
    )
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("rounds", total=config.rounds)

        def on_round(m: RoundMetrics) -> None:
            eps = "∞" if m.epsilon_max is None else f"{m.epsilon_max:.2f}"
            progress.update(
                task,
                completed=m.round,
                description=f"round {m.round}: {m.status}, acc {m.accuracy:.3f}, ε {eps}",
            )

        start = time.perf_counter()
        federation = Federation(config, out_dir=out_dir, on_round=on_round)
        sigmas = federation.noise_multipliers
        if sigmas:
            low, high = min(sigmas.values()), max(sigmas.values())
            target = f" for ε = {config.epsilon} over the run" if config.epsilon else ""
            console.print(f"DP-SGD noise multiplier σ = {low:.3f}–{high:.3f} per client{target}")
        result = federation.run(resume=args.resume is not None)
        progress.update(task, completed=federation.rounds_completed)
        elapsed = time.perf_counter() - start
    files = write_report(result, out_dir)

    table = Table(title=f"secagg run: {config.dataset} ({mode})")
    for column in ("round", "status", "accuracy", "ε max", "contributors", "KB/client", "HE s"):
        table.add_column(column, justify="right")
    for m in result.metrics:
        he_seconds = m.seconds["encrypt"] + m.seconds["aggregate"] + m.seconds["decrypt"]
        table.add_row(
            str(m.round),
            m.status,
            f"{m.accuracy:.4f}",
            "∞" if m.epsilon_max is None else f"{m.epsilon_max:.2f}",
            f"{len(m.contributors)}/{len(m.sampled)}",
            f"{m.bytes_per_client / 1024:.0f}",
            f"{he_seconds:.2f}",
        )
    console.print(table)
    attention = result.attention
    if attention is not None and attention.weights:
        for line in attention.describe(5):
            console.print(line, markup=False)
    spent = (
        f" at ε = {result.epsilon:.2f} (δ = {config.delta:g}, largest over clients, the "
        "attention analysis included)"
        if result.epsilon is not None
        else ""
    )
    console.print(
        f"Final test accuracy [bold]{result.final_accuracy:.4f}[/bold]{spent} in "
        f"{elapsed:.1f} s; wrote {len(files)} files to {out_dir}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``secagg`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _run(args)
    except SecaggError as exc:
        print(f"secagg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
