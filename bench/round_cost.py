"""The HE share of a default ``secagg run`` round, from the in-process federation.

:func:`measure_round_split` runs :class:`secagg.protocols.Federation` and splits each
round's wall time (between round-end callbacks) with ``RoundMetrics.seconds``: local
training, encryption, aggregation (the key-less server) and the key holder's release.
HE is encryption + aggregation + release.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

import secagg

__all__ = ["HE_PHASES", "default_run_config", "measure_round_split"]

#: The ``RoundMetrics.seconds`` entries that are HE work.
HE_PHASES = ("encrypt", "aggregate", "decrypt")


def default_run_config(**overrides: Any) -> Any:
    """The configuration ``secagg run`` uses by default, with ``overrides``.

    :func:`secagg.protocols.default_config` of the default dataset (or ``dataset``);
    the attention analysis, which runs once after the last round and is in no round's
    time, is off unless overridden.
    """
    from secagg.protocols import default_config

    dataset = overrides.pop("dataset", None)
    return default_config(dataset, **{"attention_analysis": False, **overrides})


def _round_rows(
    metrics: Sequence[Any], stamps: Sequence[float], start: float
) -> list[dict[str, Any]]:
    rows = []
    last = start
    for m, stamp in zip(metrics, stamps, strict=True):
        seconds = dict(m.seconds)
        he = sum(seconds.get(k, 0.0) for k in HE_PHASES)
        wall, last = stamp - last, stamp
        rows.append(
            {
                "round": m.round,
                "status": m.status,
                "accuracy": m.accuracy,
                "clients": len(m.contributors),
                "bytes_per_client": m.bytes_per_client,
                "wall_s": wall,
                "seconds": seconds,
                "he_s": he,
                "he_share": he / wall if wall > 0 else float("nan"),
            }
        )
    return rows


def _keygen_seconds(config: Any) -> float:
    if not config.he:
        return 0.0
    start = time.perf_counter()
    secagg.FederationKeys.generate(
        [f"client-{i:03d}" for i in range(config.clients)], preset=config.preset
    )
    return time.perf_counter() - start


def measure_round_split(config: Any, *, threads: int = 1) -> dict[str, Any]:
    """Run a federation and split each round's wall time into training and HE.

    Parameters
    ----------
    config : FederationConfig
        The run (see :func:`default_run_config`).
    threads : int, optional
        ``torch.set_num_threads`` during the run, as ``secagg run --threads`` (default 1).

    Returns
    -------
    dict
        Per round: ``wall_s`` (between round-end callbacks; the first round's wall also
        holds key generation), the ``seconds`` split of ``RoundMetrics``, ``he_s`` and
        ``he_share`` (of the wall); plus totals and ``keygen_s``, one key generation timed
        apart (the run makes its own, once).
    """
    from secagg.protocols import Federation

    keygen_s = _keygen_seconds(config)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    stamps: list[float] = []
    try:
        setup = time.perf_counter()
        federation = Federation(config, on_round=lambda _m: stamps.append(time.perf_counter()))
        start = time.perf_counter()
        result = federation.run()
        end = time.perf_counter()
    finally:
        torch.set_num_threads(previous)
    rounds = _round_rows(result.metrics, stamps, start)
    wall = sum(r["wall_s"] for r in rounds)
    he = sum(r["he_s"] for r in rounds)
    return {
        "config": config.to_json(),
        "setup_s": start - setup,
        "run_s": end - start,
        "rounds": rounds,
        "wall_s": wall,
        "train_s": sum(r["seconds"].get("train", 0.0) for r in rounds),
        "he_s": he,
        "he_share": he / wall if wall > 0 else float("nan"),
        "keygen_s": keygen_s,
        "params": sum(v.numel() for v in result.global_state.values()),
    }
