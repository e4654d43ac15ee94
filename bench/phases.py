"""The phases of a sweep: each measures one thing for a :class:`~bench.plan.SweepPlan`.

Every phase returns JSON-ready data; :mod:`bench.targets` judges it and
:mod:`bench.report` renders it.
"""

from __future__ import annotations

import gc
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._ratio_child import DEFAULT_SCHEMES
from ._subprocess import run_json_child
from .dp_cost import dp_step_overhead
from .encrypt_profile import encrypt_stages, flatten_thread_cost
from .exactness import exact_presets, measure_exactness
from .he_cost import measure_scheme, summarise_interleaved
from .mac_cost import mac_in_situ, mac_release_cost, mac_wire_bytes
from .memory import FIXED_MMAP_THRESHOLD, measure_server_memory, series_label
from .plan import SweepPlan
from .release_cost import release_scaling
from .round_cost import default_run_config, measure_round_split
from .schemes import PlaintextScheme, SecaggScheme, make_scheme, max_clients_of, scheme_names
from .updates import make_update, model_update, numel

__all__ = ["PHASES", "log"]


def log(message: str) -> None:
    """Progress on standard error, time-stamped."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _he_run(name: str, size: int, plan: SweepPlan) -> dict[str, Any]:
    cap = max_clients_of(name)
    real = plan.real_clients(size) if cap is None else min(plan.real_clients(size), cap)
    scheme = make_scheme(name, real)
    start = time.perf_counter()
    run = measure_scheme(scheme, size, real)
    data = run.to_json(plan.clients)
    data["wall_s"] = time.perf_counter() - start
    if run.real_clients < max(plan.clients):
        data["notes"].append(
            f"server time for more than {run.real_clients} clients is extrapolated "
            "from the measured per-client add time (adding is linear in clients)"
        )
    log(
        f"{name:20s} n={size:.0e}: enc {run.encrypt_us_per_param:.3f} µs/p, "
        f"{run.bytes_per_param:.2f} B/p, add {run.add_us_per_param_per_client:.3f} "
        f"µs/p/client, release {run.release_us_per_param:.3f} µs/p "
        f"({real} clients, {data['wall_s']:.1f}s)"
    )
    return data


def he_phase(plan: SweepPlan) -> list[dict[str, Any]]:
    """Per-role costs of every scheme at every size (:func:`bench.he_cost.measure_scheme`)."""
    runs = []
    for size in plan.sizes:
        for name in scheme_names(auto_workers=True):
            runs.append(_he_run(name, size, plan))
            gc.collect()
    return runs


def ratio_phase(plan: SweepPlan) -> dict[str, Any]:
    """Interleaved encryption in a fresh process (:mod:`bench._ratio_child`)."""
    args = [str(plan.ratio_params), str(plan.ratio_repeats), *DEFAULT_SCHEMES]
    times = run_json_child("bench._ratio_child", args, timeout=1800)
    result = summarise_interleaved(times, plan.ratio_params)
    wall = result["speedup_wall"]
    log(
        f"interleaved encrypt n={plan.ratio_params:.0e}: FLARE ÷ secagg "
        f"{wall['secagg:default/auto']:.2f}x (default), {wall['secagg:default']:.2f}x "
        "(one process)"
    )
    return result


def _wire_row(secagg_scheme: SecaggScheme, plain: PlaintextScheme, size: int) -> dict[str, Any]:
    update = make_update(size, seed=5)
    payload = secagg_scheme.encrypt(update, client=0, weight=64.0)
    plain_bytes = len(plain.encrypt(update, client=0, weight=64.0))
    row = {"num_params": size, "bytes_per_param": len(payload) / size, **mac_wire_bytes(payload)}
    row.update(
        plaintext_bytes_per_param=plain_bytes / size,
        # The same frame with float32 values: 4 bytes per value instead of 8.
        plaintext_float32_bytes_per_param=(plain_bytes - 4 * size) / size,
        asymptotic_bytes_per_param=secagg_scheme.preset.bytes_per_parameter,
        chunks=secagg_scheme.preset.num_chunks(size),
    )
    del update, payload
    return row


def profile_phase(plan: SweepPlan) -> dict[str, Any]:
    """Where one-process encryption time goes, and the torch-thread cost of flattening."""
    stages = encrypt_stages(plan.ratio_params, repeats=plan.mac_repeats)
    flatten = flatten_thread_cost(plan.ratio_params)
    top = max(stages["stages"].items(), key=lambda item: item[1])
    log(
        f"encrypt stages n={plan.ratio_params:.0e}: {stages['total_s'] * 1e3:.0f} ms, most in "
        f"{top[0]} ({top[1] / stages['total_s']:.0%}); flatten {flatten['one_thread_s'] * 1e3:.1f}"
        f" ms with 1 torch thread, {flatten['all_threads_s'] * 1e3:.1f} ms with "
        f"{flatten['threads']}"
    )
    return {"stages": stages, "flatten": flatten}


def wire_phase(plan: SweepPlan) -> list[dict[str, Any]]:
    """Wire bytes of the default preset and of plaintext, and the MAC's bytes, per size."""
    secagg_scheme = SecaggScheme("default", 2, workers=None)
    plain = PlaintextScheme(2)
    rows = []
    for size in plan.wire_sizes:
        row = _wire_row(secagg_scheme, plain, size)
        log(
            f"wire n={size:.0e}: secagg {row['bytes_per_param']:.3f} B/p (tag "
            f"{row['tag_bytes']} B = {row['tag_share']:.2e}), plaintext "
            f"{row['plaintext_bytes_per_param']:.3f} B/p"
        )
        rows.append(row)
        gc.collect()
    return rows


def mac_phase(plan: SweepPlan) -> dict[str, Any]:
    """MAC time: paired A/B in a fresh process, in situ, and the key holder's check."""
    args = [str(plan.mac_params), str(plan.mac_pairs)]
    ab = run_json_child("bench._mac_child", args, timeout=1800)
    in_situ = mac_in_situ(plan.mac_params, repeats=plan.mac_repeats)
    release = mac_release_cost(plan.mac_params)
    log(
        f"mac n={plan.mac_params:.0e}: A/B {ab['one_process']['overhead']:+.1%} (one process), "
        f"{ab['default']['overhead']:+.1%} (default); in situ {in_situ['overhead']:+.1%}; "
        f"key-holder check {release['verify_s'] * 1e3:.1f} ms of a "
        f"{release['release_s'] * 1e3:.0f} ms release"
    )
    return {"ab": ab, "in_situ": in_situ, "release": release}


def exact_phase(plan: SweepPlan) -> list[dict[str, Any]]:
    """Exactness of every exact preset (:func:`bench.exactness.measure_exactness`)."""
    rows = []
    for preset in exact_presets():
        row = measure_exactness(preset, plan.exact_params, plan.exact_clients)
        log(
            f"exact {preset:8s} n={plan.exact_params:.0e}: max |release - quantised mean| "
            f"{row['max_abs_diff_quantised']:g}; error RMS {row['rms_sigmas']:.3f}σ, "
            f"max {row['max_sigmas']:.2f}σ (σ = {row['mean_error_std']:.3g})"
        )
        rows.append(row)
    return rows


def release_phase(plan: SweepPlan) -> dict[str, Any]:
    """The key holder's release time against the contributor count (:mod:`bench.release_cost`)."""
    result = release_scaling(plan.release_params, plan.release_clients)
    cells = ", ".join(f"{r['clients']}: {r['release_s'] * 1e3:.0f} ms" for r in result["rows"])
    log(f"release n={plan.release_params:.0e} by contributors: {cells}")
    return result


def _log_memory(report: dict[str, Any]) -> None:
    log(
        f"memory {series_label(report):34s} {report['clients']:3d} clients: peak growth "
        f"{report['growth_kb'] / 1024:.1f} MiB (payload {report['payload_bytes'] / 2**20:.2f} MiB)"
    )


def memory_phase(plan: SweepPlan) -> list[dict[str, Any]]:
    """Server peak RSS against the client count (:mod:`bench.memory`).

    secagg's series run twice: with the default allocator and with glibc's mmap
    threshold fixed (:data:`bench.memory.FIXED_MMAP_THRESHOLD`).
    """
    reports: list[dict[str, Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix="secagg-bench-mem-"))
    try:
        for name in plan.memory_schemes:
            scheme = make_scheme(name, max(plan.memory_clients))
            thresholds = (None, FIXED_MMAP_THRESHOLD) if scheme.kind == "secagg" else (None,)
            workdir = scratch / name.replace(":", "_")
            found = measure_server_memory(
                scheme, plan.memory_params, plan.memory_clients, workdir, mmap_thresholds=thresholds
            )
            for report in found:
                _log_memory(report)
            reports += found
            shutil.rmtree(workdir, ignore_errors=True)
            del scheme
            gc.collect()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return reports


def model_phase(plan: SweepPlan) -> list[dict[str, Any]]:
    """Per-role costs on the update layouts of the default models (2 clients)."""
    rows = []
    for dataset in plan.model_datasets:
        base = model_update(dataset)
        size = numel(base)
        for name in scheme_names():
            run = measure_scheme(make_scheme(name, 2), size, 2, base=base)
            rows.append({**run.to_json(), "dataset": dataset})
        log(f"model {dataset}: {size} values in {len(base)} tensors")
    return rows


def dp_phase(plan: SweepPlan) -> list[dict[str, Any]]:
    """DP-SGD step overhead of each dataset's default model (:mod:`bench.dp_cost`)."""
    rows = []
    for dataset in plan.dp_datasets:
        row = dp_step_overhead(dataset, steps=plan.dp_steps)
        rows.append(row)
        log(
            f"dp {dataset:16s}: plain {row['plain_s'] * 1e3:.1f} ms, private "
            f"{row['private_s'] * 1e3:.1f} ms, {row['ratio']:.2f}x"
        )
    return rows


def round_phase(plan: SweepPlan) -> dict[str, Any]:
    """The default ``secagg run``, with HE and with the plaintext backend."""
    result: dict[str, Any] = {}
    for label, he in (("he", True), ("plaintext", False)):
        config = default_run_config(rounds=plan.round_rounds, clients=plan.round_clients, he=he)
        result[label] = measure_round_split(config)
        log(
            f"default run ({label}): {plan.round_rounds} rounds, wall "
            f"{result[label]['wall_s']:.2f}s, HE {result[label]['he_s']:.3f}s "
            f"({result[label]['he_share']:.1%})"
        )
    return result


#: The phases of a sweep, in the order they run: the interleaved comparison first, in a
#: fresh process, while the sweep's own process is still small.
PHASES: tuple[tuple[str, Callable[[SweepPlan], Any]], ...] = (
    ("encrypt_interleaved", ratio_phase),
    ("encrypt_profile", profile_phase),
    ("wire", wire_phase),
    ("mac", mac_phase),
    ("exact", exact_phase),
    ("he", he_phase),
    ("release_scaling", release_phase),
    ("memory", memory_phase),
    ("models", model_phase),
    ("dp", dp_phase),
    ("round", round_phase),
)
