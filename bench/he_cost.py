"""Per-role HE costs of one round, and client encryption timed interleaved.

:func:`measure_scheme` runs one round of a scheme with real clients and times each
role: client encryption (wall and CPU time of the calling process), wire bytes,
the server's add of each payload and its finalize, and the key holder's release,
whose mean is checked against the exact weighted mean. :func:`interleaved_encrypt`
times several schemes' encryption in turn (A, B, C, A, B, C, ...), so that every scheme
runs under the same background load and the ratios of medians are fair on a shared
machine; :func:`summarise_interleaved` turns those timings into ratios.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .schemes import Scheme
from .updates import (
    client_weights,
    coefficient,
    expected_mean,
    flat,
    make_update,
    numel,
    scaled,
)

__all__ = [
    "FLARE_DISTINCT_PAYLOADS",
    "SchemeRun",
    "interleaved_encrypt",
    "measure_scheme",
    "summarise_interleaved",
]

#: Distinct FLARE payloads encrypted per round; FLARE's server cannot tell clients
#: apart from the ciphertexts, so adding a payload again is the same work as a new one.
FLARE_DISTINCT_PAYLOADS = 2

#: The update a client sends in the interleaved comparison carries this weight.
_INTERLEAVED_WEIGHT = 64.0


@dataclass
class SchemeRun:
    """Raw measurements of one scheme at one update size (times in seconds)."""

    scheme: str
    num_params: int
    num_tensors: int
    real_clients: int
    distinct_payloads: int
    encrypt_s: list[float]
    encrypt_cpu_s: list[float]
    payload_bytes: int
    add_s: list[float]
    finalize_s: float
    aggregate_bytes: int
    release_s: float
    max_abs_error: float
    stated_error_std: float | None
    max_clients: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def encrypt_us_per_param(self) -> float:
        """Median client encryption wall time per parameter, µs."""
        return statistics.median(self.encrypt_s) / self.num_params * 1e6

    @property
    def encrypt_cpu_us_per_param(self) -> float:
        """Median client encryption CPU time (this process) per parameter, µs."""
        return statistics.median(self.encrypt_cpu_s) / self.num_params * 1e6

    @property
    def bytes_per_param(self) -> float:
        """Wire bytes of one client's payload per parameter."""
        return self.payload_bytes / self.num_params

    @property
    def add_us_per_param_per_client(self) -> float:
        """Mean server time to add one client's payload, per parameter, µs."""
        return statistics.fmean(self.add_s) / self.num_params * 1e6

    @property
    def release_us_per_param(self) -> float:
        """Key-holder time to release the aggregate, per parameter, µs."""
        return self.release_s / self.num_params * 1e6

    def server_seconds(self, clients: int) -> tuple[float | None, bool]:
        """Server time to add ``clients`` payloads and finalize; ``(seconds, extrapolated)``.

        Measured when ``clients <= real_clients``; otherwise the mean per-client add
        time times ``clients`` (adding is linear in the number of clients). ``None`` when
        the scheme cannot hold that many clients in one round.
        """
        if self.max_clients is not None and clients > self.max_clients:
            return None, False
        if clients <= self.real_clients:
            return sum(self.add_s[:clients]) + self.finalize_s, False
        return statistics.fmean(self.add_s) * clients + self.finalize_s, True

    def to_json(self, clients: Sequence[int] = ()) -> dict[str, Any]:
        """Raw fields plus the derived per-parameter figures."""
        data = asdict(self)
        data.update(
            encrypt_us_per_param=self.encrypt_us_per_param,
            encrypt_cpu_us_per_param=self.encrypt_cpu_us_per_param,
            bytes_per_param=self.bytes_per_param,
            add_us_per_param_per_client=self.add_us_per_param_per_client,
            release_us_per_param=self.release_us_per_param,
            server_seconds={
                str(n): dict(zip(("seconds", "extrapolated"), self.server_seconds(n), strict=True))
                for n in clients
            },
        )
        return data


@dataclass
class _Timings:
    encrypt_s: list[float] = field(default_factory=list)
    encrypt_cpu_s: list[float] = field(default_factory=list)
    add_s: list[float] = field(default_factory=list)
    payload_bytes: int = 0


def _encrypt_timed(
    scheme: Scheme, update: Mapping[str, torch.Tensor], client: int, weight: float, t: _Timings
) -> Any:
    if numel(update) >= 1_000_000:
        gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    payload = scheme.encrypt(update, client=client, weight=weight)
    t.encrypt_s.append(time.perf_counter() - wall)
    t.encrypt_cpu_s.append(time.process_time() - cpu)
    t.payload_bytes = scheme.payload_nbytes(payload)
    return payload


def _clients_round(
    scheme: Scheme, base: Mapping[str, torch.Tensor], real_clients: int, distinct: int
) -> tuple[Any, _Timings, list[int]]:
    """Encrypt and add each client's payload (one alive at a time); return the server."""
    weights = client_weights(real_clients)
    server = scheme.server()
    timings = _Timings()
    cache: dict[int, Any] = {}
    sources = []
    for client in range(real_clients):
        source = client % distinct
        payload = cache.get(source)
        if payload is None:
            update = scaled(base, coefficient(source))
            payload = _encrypt_timed(scheme, update, client, weights[source], timings)
            del update
            if not scheme.distinct_payloads:
                cache[source] = payload
        wall = time.perf_counter()
        server.add(payload, weights[source])
        timings.add_s.append(time.perf_counter() - wall)
        sources.append(source)
        del payload
    cache.clear()
    return server, timings, sources


def measure_scheme(
    scheme: Scheme,
    num_params: int,
    real_clients: int,
    *,
    seed: int = 0,
    base: Mapping[str, torch.Tensor] | None = None,
) -> SchemeRun:
    """Run one round of ``scheme`` with ``real_clients`` real clients and time each role.

    Each client encrypts its own update (FLARE-style: the first
    :data:`FLARE_DISTINCT_PAYLOADS`, then re-sent), the server adds each payload as it
    arrives (one payload alive at a time) and finalizes, and the key holder releases
    the mean, which is checked against the exact weighted mean.

    Parameters
    ----------
    scheme : Scheme
        The scheme, whose roster holds at least ``real_clients`` clients.
    num_params : int
        Update size.
    real_clients : int
        Clients in the round.
    seed : int, optional
        Seed of the synthetic base update.
    base : Mapping[str, torch.Tensor], optional
        Use this update (e.g. a real model's layout) instead of :func:`make_update`.

    Returns
    -------
    SchemeRun
        The raw timings and sizes.

    Raises
    ------
    ValueError
        If ``base`` does not hold ``num_params`` values.
    """
    if base is None:
        base = make_update(num_params, seed=seed)
    elif numel(base) != num_params:
        raise ValueError("base update does not hold num_params values")
    distinct = real_clients if scheme.distinct_payloads else FLARE_DISTINCT_PAYLOADS
    distinct = min(distinct, real_clients)
    server, timings, sources = _clients_round(scheme, base, real_clients, distinct)
    gc.collect()
    wall = time.perf_counter()
    aggregate = server.finalize()
    finalize_s = time.perf_counter() - wall
    del server
    gc.collect()
    wall = time.perf_counter()
    release = scheme.release(aggregate)
    release_s = time.perf_counter() - wall
    error = float(np.abs(flat(release.mean) - expected_mean(base, sources)).max())
    return SchemeRun(
        scheme=scheme.name,
        num_params=num_params,
        num_tensors=len(base),
        real_clients=real_clients,
        distinct_payloads=distinct,
        encrypt_s=timings.encrypt_s,
        encrypt_cpu_s=timings.encrypt_cpu_s,
        payload_bytes=timings.payload_bytes,
        add_s=timings.add_s,
        finalize_s=finalize_s,
        aggregate_bytes=scheme.aggregate_nbytes(aggregate),
        release_s=release_s,
        max_abs_error=error,
        stated_error_std=release.error_std,
        max_clients=scheme.max_clients,
    )


def interleaved_encrypt(
    schemes: Sequence[Scheme], num_params: int, *, repeats: int = 5
) -> dict[str, dict[str, list[float]]]:
    """Time client encryption of several schemes in turn at one size.

    Each repeat runs every scheme once; the order rotates by one scheme per repeat, so
    no scheme always follows the same one. One untimed warm-up per scheme first.

    Parameters
    ----------
    schemes : sequence of Scheme
        Schemes to compare (distinct names).
    num_params : int
        Update size.
    repeats : int, optional
        Timed encryptions per scheme.

    Returns
    -------
    dict
        ``{scheme name: {"wall_s": [...], "cpu_s": [...]}}``.
    """
    update = make_update(num_params, seed=1)
    times: dict[str, dict[str, list[float]]] = {
        s.name: {"wall_s": [], "cpu_s": []} for s in schemes
    }
    for scheme in schemes:
        scheme.encrypt(update, client=0, weight=_INTERLEAVED_WEIGHT)
    for repeat in range(repeats):
        shift = repeat % len(schemes)
        for scheme in [*schemes[shift:], *schemes[:shift]]:
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            payload = scheme.encrypt(update, client=0, weight=_INTERLEAVED_WEIGHT)
            times[scheme.name]["wall_s"].append(time.perf_counter() - wall)
            times[scheme.name]["cpu_s"].append(time.process_time() - cpu)
            del payload
    return times


def summarise_interleaved(
    times: Mapping[str, Mapping[str, Sequence[float]]], num_params: int, *, reference: str = "flare"
) -> dict[str, Any]:
    """Medians per parameter and ``reference ÷ scheme`` speed-ups of interleaved timings.

    Parameters
    ----------
    times : Mapping
        :func:`interleaved_encrypt` output.
    num_params : int
        The update size timed.
    reference : str, optional
        The scheme the speed-ups are taken against.
    """
    medians = {
        name: {
            "wall_us_per_param": statistics.median(t["wall_s"]) / num_params * 1e6,
            "cpu_us_per_param": statistics.median(t["cpu_s"]) / num_params * 1e6,
        }
        for name, t in times.items()
    }
    ref = medians[reference]
    return {
        "num_params": num_params,
        "repeats": min(len(t["wall_s"]) for t in times.values()),
        "raw": {name: {k: list(v) for k, v in t.items()} for name, t in times.items()},
        "medians": medians,
        "speedup_wall": {
            n: ref["wall_us_per_param"] / m["wall_us_per_param"] for n, m in medians.items()
        },
        "speedup_cpu": {
            n: ref["cpu_us_per_param"] / m["cpu_us_per_param"] for n, m in medians.items()
        },
    }
