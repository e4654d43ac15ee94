"""Where a client's encryption time goes: exclusive time per stage of ``encrypt_update``.

:func:`encrypt_stages` wraps the functions ``encrypt_update`` calls (bench-only
patches, removed afterwards) and charges each one's time, less the time of the wrapped
functions it calls, to its stage; what ``encrypt_update`` does itself (the header, the
tag assembly, joining the chunks) is ``frame and rest``. One process (``workers=1``),
so every stage runs where it is timed.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

import secagg
import secagg.crypto._rlwe as rlwe_module
import secagg.crypto._seal as seal_module
import secagg.crypto.client as client_module
import secagg.crypto.layout as layout_module
from secagg.crypto._mac import RoundMac
from secagg.crypto._rlwe import SecretKeyEncryptor
from secagg.crypto._seal import SealParameters
from secagg.crypto.layout import FieldLayout
from secagg.crypto.registry import SigningKey
from secagg.crypto.spec import flatten_update

from .schemes import SecaggScheme
from .updates import make_update

__all__ = ["STAGES", "encrypt_stages", "flatten_thread_cost"]

#: (owner, attribute, stage): every function timed, and the stage its time goes to.
STAGES: tuple[tuple[Any, str, str], ...] = (
    (client_module, "flatten_update", "flatten (tensors to float64)"),
    (client_module, "_check_values", "value checks"),
    (layout_module, "secure_bits32", "CSPRNG bits (rounding)"),
    (FieldLayout, "quantize", "quantise"),
    (FieldLayout, "rows", "pack fields into coefficients"),
    (rlwe_module, "sample_error", "error sampling (CSPRNG)"),
    (SecretKeyEncryptor, "add_error", "add error (m + e)"),
    (SealParameters, "transform", "NTT via SEAL files"),
    (seal_module, "_save", "SEAL serialisation (zstd)"),
    (rlwe_module, "expand_c1", "c1 expansion (AES-256-CTR)"),
    (SecretKeyEncryptor, "times_secret", "c1 · s (NTT domain)"),
    (SecretKeyEncryptor, "encrypt_ntt", "c0 = NTT(m + e) - c1 · s"),
    (RoundMac, "chunk_terms", "MAC"),
    (RoundMac, "tag", "MAC"),
    (client_module, "pack_coefficients", "bit-pack c0"),
    (SigningKey, "sign", "Ed25519 signature"),
)
_ROOT = "frame and rest"


class _Clock:
    """Exclusive time per stage: a wrapped call's time less its wrapped callees'."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._children: list[float] = []

    def wrap(self, function: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._children.append(0.0)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._children.pop()
                self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed - inner
                if self._children:
                    self._children[-1] += elapsed

        return timed


@contextlib.contextmanager
def _patched(clock: _Clock) -> Iterator[None]:
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in STAGES]
    try:
        for (owner, name, stage), (_, _, original) in zip(STAGES, saved, strict=True):
            setattr(owner, name, clock.wrap(original, stage))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def encrypt_stages(num_params: int, *, repeats: int = 3, preset: str = "default") -> dict[str, Any]:
    """Median exclusive seconds per stage of one-process encryptions of ``num_params``.

    Parameters
    ----------
    num_params : int
        Update size.
    repeats : int, optional
        Timed encryptions (after one untimed warm-up).
    preset : str, optional
        The preset (the stages are those of the exact presets' path).

    Returns
    -------
    dict
        ``stages`` (stage name to median seconds), ``total_s`` (median wall time of an
        encryption with the patches in place), ``num_params``, ``chunks``.
    """
    scheme = SecaggScheme(preset, 2, workers=1)
    update = make_update(num_params, seed=6)
    scheme.encrypt(update, client=0, weight=64.0)
    runs: list[dict[str, float]] = []
    totals = []
    for _ in range(repeats):
        clock = _Clock()
        with _patched(clock):
            encrypt = clock.wrap(scheme.encrypt, _ROOT)
            start = time.perf_counter()
            encrypt(update, client=0, weight=64.0)
            totals.append(time.perf_counter() - start)
        runs.append(clock.seconds)
    names = list(dict.fromkeys([stage for _, _, stage in STAGES] + [_ROOT]))
    stages = {name: statistics.median(r.get(name, 0.0) for r in runs) for name in names}
    return {
        "num_params": num_params,
        "preset": preset,
        "chunks": secagg.get_preset(preset).num_chunks(num_params),
        "total_s": statistics.median(totals),
        "stages": stages,
    }


def flatten_thread_cost(num_params: int, *, repeats: int = 5) -> dict[str, Any]:
    """``flatten_update`` of a float32 torch update with one torch thread and with all.

    ``secagg.crypto.spec`` converts torch tensors with ``Tensor.to(float64)``, which
    runs on torch's intra-op thread pool; the two settings are timed alternately.

    Returns
    -------
    dict
        Median seconds per setting (``one_thread_s``, ``all_threads_s``), the thread
        count, and ``numpy_s``: the same conversion through ``Tensor.numpy()``.
    """
    update = make_update(num_params, seed=7)
    threads = len(os.sched_getaffinity(0))
    previous = torch.get_num_threads()
    timings: dict[str, list[float]] = {"one_thread_s": [], "all_threads_s": [], "numpy_s": []}
    try:
        for _ in range(repeats):
            for key, count in (("one_thread_s", 1), ("all_threads_s", threads)):
                torch.set_num_threads(count)
                start = time.perf_counter()
                flatten_update(update)
                timings[key].append(time.perf_counter() - start)
            start = time.perf_counter()
            np.concatenate([t.numpy().astype(np.float64).ravel() for t in update.values()])
            timings["numpy_s"].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    result: dict[str, Any] = {k: statistics.median(v) for k, v in timings.items()}
    result.update(num_params=num_params, threads=threads)
    return result
