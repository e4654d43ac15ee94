"""Measuring helpers shared by the benchmark suites and :mod:`bench.sweep`.

Three aggregation schemes are measured through one small interface (:class:`Scheme`):

* ``plaintext``: secagg's ``--no-he`` baseline (:class:`~secagg.protocols.PlaintextBackend`),
  a framed float64 numpy weighted sum: the floor.
* ``flare``: the FLARE-style TenSEAL reference (:mod:`bench.flare_reference`).
* ``secagg:<preset>``: secagg with each preset of :data:`secagg.PRESETS`. Encryption runs
  in one process (``workers=1``) so that per-parameter costs compare with TenSEAL, which
  encrypts on one core; ``secagg:default/auto`` is the library default (worker processes
  for large updates).

What is measured, per scheme and update size ``n``:

* client encryption time per parameter (wall and CPU time of the calling process),
* wire bytes per parameter of one client's payload,
* server time per parameter per client to validate, load and add one payload,
* key-holder time per parameter to load, decrypt and release the aggregate,
* server peak RSS while aggregating a growing number of clients, in a fresh subprocess
  (:mod:`bench._rss_child`; ``tracemalloc`` cannot see SEAL's C++ allocations).

Updates are synthetic (:func:`make_update`): four weight tensors and four small bias
tensors, float32, values ``N(0, 0.01²)``; client ``i`` sends ``c_i`` times a shared base
update with weight ``w_i``, so the expected weighted mean is known exactly and every
released mean is checked against it (:attr:`SchemeRun.max_abs_error`).
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import pickle
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

import secagg
from secagg.protocols.aggregation import PlaintextBackend

from .flare_reference import FlareStyleHE, Layout, layout_of

__all__ = [
    "ROUND_ID",
    "DPSteps",
    "FlareScheme",
    "PlaintextScheme",
    "Scheme",
    "SchemeRun",
    "SecaggScheme",
    "ServerSession",
    "client_weights",
    "default_run_config",
    "dp_step_overhead",
    "interleaved_encrypt",
    "machine_info",
    "make_dp_steps",
    "make_scheme",
    "make_update",
    "measure_round_split",
    "measure_scheme",
    "measure_server_memory",
    "model_update",
    "parse_sizes",
    "scheme_names",
]

ROUND_ID = 1
#: Public upper bound on client weights (secagg encrypts weight / bound).
WEIGHT_BOUND = 128.0
#: Distinct FLARE payloads encrypted per measurement; FLARE's server cannot tell clients
#: apart from the ciphertexts, so adding a payload again is the same work as a new one.
FLARE_DISTINCT_PAYLOADS = 2


# --------------------------------------------------------------------------- inputs


def parse_sizes(text: str) -> list[int]:
    """Parse a comma-separated list of sizes such as ``"1e4,1e5,250000"``.

    Parameters
    ----------
    text : str
        Sizes, comma-separated; scientific notation is allowed.

    Returns
    -------
    list of int
        The sizes, each at least 1.
    """
    sizes = [int(float(part)) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be positive numbers, got {text!r}")
    return sizes


def _layer_sizes(num_params: int) -> list[tuple[str, int]]:
    bias = max(1, round(math.sqrt(num_params / 4))) if num_params >= 16 else 1
    if num_params < 8:
        return [(f"layer{i}.weight", 1) for i in range(num_params)]
    weights = num_params - 4 * bias
    sizes: list[tuple[str, int]] = []
    for i in range(4):
        share = weights // 4 + (weights % 4 if i == 3 else 0)
        sizes += [(f"block{i}.weight", share), (f"block{i}.bias", bias)]
    return sizes


def make_update(num_params: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A synthetic float32 model update of exactly ``num_params`` values.

    Four weight tensors share most values; four bias tensors hold ``≈ sqrt(n/4)`` values
    each, so one-ciphertext-per-layer schemes pay for small layers as real models make
    them (the default digits model has 41 tensors for 18k values).

    Parameters
    ----------
    num_params : int
        Total number of values.
    seed : int, optional
        Seed of the values (``N(0, 0.01²)``).

    Returns
    -------
    dict[str, torch.Tensor]
        Tensor name to 1-D float32 tensor.
    """
    generator = np.random.default_rng(seed)
    return {
        name: torch.from_numpy((generator.standard_normal(size) * 0.01).astype(np.float32))
        for name, size in _layer_sizes(num_params)
    }


def model_update(dataset: str, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """An update with the layout of a dataset's default model (its trainable tensors).

    Parameters
    ----------
    dataset : str
        A name from :data:`secagg.protocols.datasets.DATASET_NAMES`.
    seed : int, optional
        Seed of the values (``N(0, 0.01²)``).

    Returns
    -------
    dict[str, torch.Tensor]
        Parameter name to float32 tensor, in the model's order.
    """
    model = _dataset(dataset, 200).default_model()
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(p.shape, generator=generator) * 0.01
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def client_weights(count: int) -> list[float]:
    """Deterministic client weights (local example counts) in ``[96, 128]``.

    Near the public bound (128), so that even two clients' flooded weight sum stands
    well above secagg's flooding noise (the key holder refuses to divide otherwise).
    """
    return [float(96 + (37 * i) % 33) for i in range(count)]


def _coefficient(index: int) -> float:
    """Client ``index`` sends this multiple of the base update."""
    return (1 + index % 7) / 7.0


def _scaled(update: Mapping[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    return {name: tensor * factor for name, tensor in update.items()}


def _flat(values: Mapping[str, Any]) -> np.ndarray:
    parts = []
    for value in values.values():
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        parts.append(np.asarray(array, dtype=np.float64).ravel())
    return np.concatenate(parts)


# --------------------------------------------------------------------------- schemes


class ServerSession(Protocol):
    """The server side of one round of a scheme."""

    def add(self, payload: Any, weight: float) -> None:
        """Validate (where the scheme does) and fold one client's payload into the sum."""
        ...

    def finalize(self) -> Any:
        """Return the aggregate as it is sent to the key holder."""
        ...


class Scheme(Protocol):
    """One aggregation scheme: client, server and key-holder roles."""

    name: str
    kind: str
    distinct_payloads: bool
    max_clients: int | None

    def encrypt(self, update: Mapping[str, torch.Tensor], *, client: int, weight: float) -> Any:
        """Client ``client``'s wire payload for ``update`` with weight ``weight``."""
        ...

    def payload_nbytes(self, payload: Any) -> int:
        """Bytes of a payload on the wire."""
        ...

    def server(self) -> ServerSession:
        """A fresh server for one round."""
        ...

    def aggregate_nbytes(self, aggregate: Any) -> int:
        """Bytes of the aggregate sent to the key holder."""
        ...

    def decrypt(self, aggregate: Any) -> Mapping[str, Any]:
        """Key holder: the weighted mean update from the aggregate."""
        ...

    def prepare_decrypt(self) -> None:
        """Make the key holder ready to release this round again (for repeated timing)."""
        ...

    def server_context(self) -> bytes:
        """What the server is provisioned with (empty for plaintext)."""
        ...

    def to_file_bytes(self, payload: Any) -> bytes:
        """A payload as one byte string (for the server-memory subprocess)."""
        ...


def _roster(clients: int) -> list[str]:
    return [f"client-{i:03d}" for i in range(clients)]


class _PlainSession:
    def __init__(self, server: Any) -> None:
        self._server = server

    def add(self, payload: Any, weight: float) -> None:
        self._server.add(payload)

    def finalize(self) -> Any:
        return self._server.finalize()


class PlaintextScheme:
    """secagg's plaintext baseline: framed float64 weighted updates, numpy sum.

    Parameters
    ----------
    clients : int
        Roster size of the round.
    """

    kind = "plaintext"
    distinct_payloads = True
    max_clients: int | None = None

    def __init__(self, clients: int) -> None:
        self.name = "plaintext"
        self.roster = _roster(clients)
        self.backend = PlaintextBackend()

    def encrypt(self, update: Mapping[str, torch.Tensor], *, client: int, weight: float) -> bytes:
        """Frame ``weight / bound · update`` in the clear."""
        return self.backend.client_payload(
            update,
            weight=weight,
            weight_bound=WEIGHT_BOUND,
            round_id=ROUND_ID,
            client_id=self.roster[client],
            roster=self.roster,
        )

    def payload_nbytes(self, payload: Any) -> int:
        """Length of the framed payload."""
        return len(payload)

    def server(self) -> ServerSession:
        """A numpy weighted-sum server."""
        return _PlainSession(
            self.backend.server(round_id=ROUND_ID, roster=self.roster, min_clients=1)
        )

    def aggregate_nbytes(self, aggregate: Any) -> int:
        """Length of the framed sum."""
        return len(aggregate)

    def decrypt(self, aggregate: Any) -> Mapping[str, Any]:
        """Divide the sum by the weight sum."""
        return self.backend.release(aggregate).mean

    def prepare_decrypt(self) -> None:
        """Nothing to reset."""

    def server_context(self) -> bytes:
        """Nothing: the plaintext server needs no context."""
        return b""

    def to_file_bytes(self, payload: Any) -> bytes:
        """The payload itself."""
        return bytes(payload)


class FlareScheme:
    """The FLARE-style TenSEAL reference (:class:`bench.flare_reference.FlareStyleHE`)."""

    kind = "flare"
    distinct_payloads = False
    max_clients: int | None = None

    def __init__(self) -> None:
        self.name = "flare"
        self.he = FlareStyleHE()
        self.layout: Layout = ()

    def encrypt(
        self, update: Mapping[str, torch.Tensor], *, client: int, weight: float
    ) -> list[bytes]:
        """One serialized ``ckks_vector`` per layer, weighted in plaintext."""
        self.layout = layout_of(update)
        return self.he.encrypt(update, weight)

    def payload_nbytes(self, payload: Any) -> int:
        """Sum of the serialized layers."""
        return sum(len(layer) for layer in payload)

    def server(self) -> ServerSession:
        """FLARE's in-time accumulating aggregator with the key-less server context."""
        return self.he.server()

    def aggregate_nbytes(self, aggregate: Any) -> int:
        """Sum of the serialized aggregate layers."""
        return sum(len(layer) for layer in aggregate)

    def decrypt(self, aggregate: Any) -> Mapping[str, Any]:
        """Deserialize with the secret context and decrypt each layer."""
        return self.he.decrypt(aggregate, self.layout)

    def prepare_decrypt(self) -> None:
        """Nothing to reset."""

    def server_context(self) -> bytes:
        """The context with relinearization keys only."""
        return self.he.server_context_bytes

    def to_file_bytes(self, payload: Any) -> bytes:
        """Pickle of the list of layers (a trusted local temporary file)."""
        return pickle.dumps(list(payload))


class _SecaggSession:
    def __init__(self, aggregator: secagg.Aggregator) -> None:
        self._aggregator = aggregator

    def add(self, payload: Any, weight: float) -> None:
        self._aggregator.add(payload)

    def finalize(self) -> Any:
        return self._aggregator.finalize().to_bytes()


class SecaggScheme:
    """secagg with one preset: ``encrypt_update``, ``Aggregator``, ``KeyHolder.release``.

    Parameters
    ----------
    preset : str
        A name in :data:`secagg.PRESETS`.
    clients : int
        Roster size of the round (at most the preset's ``max_clients``).
    workers : int or None, optional
        Encryption processes; ``1`` (default) for one core, ``None`` for secagg's default.
    decryption_budget : int, optional
        The key's decryption budget; only the flooding σ depends on it, not the time.
    """

    kind = "secagg"
    distinct_payloads = True

    def __init__(
        self,
        preset: str,
        clients: int,
        *,
        workers: int | None = 1,
        decryption_budget: int = 1 << 16,
    ) -> None:
        self.preset = secagg.get_preset(preset)
        self.max_clients: int | None = self.preset.max_clients
        if clients > self.preset.max_clients:
            raise ValueError(f"preset {preset!r} holds at most {self.preset.max_clients} clients")
        self.name = f"secagg:{preset}" + ("" if workers == 1 else "/auto")
        self.workers = workers
        self.roster = _roster(clients)
        self.keys = secagg.KeyHolder.generate(preset, decryption_budget=decryption_budget)
        self._server_context = self.keys.server_context()
        self._key_snapshot = self.keys.to_bytes()

    def encrypt(self, update: Mapping[str, torch.Tensor], *, client: int, weight: float) -> bytes:
        """``secagg.encrypt_update`` for roster position ``client``."""
        return secagg.encrypt_update(
            self.keys,
            update,
            round_id=ROUND_ID,
            client_id=self.roster[client],
            roster=self.roster,
            weight=weight,
            weight_bound=WEIGHT_BOUND,
            workers=self.workers,
        )

    def payload_nbytes(self, payload: Any) -> int:
        """Length of the framed payload."""
        return len(payload)

    def server(self) -> ServerSession:
        """An ``Aggregator`` holding only the server context bytes."""
        return _SecaggSession(
            secagg.Aggregator(
                self._server_context, round_id=ROUND_ID, roster=self.roster, min_clients=1
            )
        )

    def aggregate_nbytes(self, aggregate: Any) -> int:
        """Length of the serialized aggregate (full ciphertexts)."""
        return len(aggregate)

    def decrypt(self, aggregate: Any) -> Mapping[str, Any]:
        """``KeyHolder.release``: load, decrypt, check rosters, flood, divide."""
        released = self.keys.release(aggregate)
        self.last_flooding_std = released.mean_error_std
        return released.mean

    def prepare_decrypt(self) -> None:
        """Restore the key holder's state from before any release.

        A key holder releases each round once; timing repeated releases of one round
        needs the state (spent budget, last released round) as it was, restored from
        the secret context serialized at key generation.
        """
        if self.keys.last_released_round >= ROUND_ID:
            self.keys = secagg.KeyHolder.from_bytes(self._key_snapshot)

    def server_context(self) -> bytes:
        """``KeyHolder.server_context()``: parameters and fingerprint, no keys."""
        return self._server_context

    def to_file_bytes(self, payload: Any) -> bytes:
        """The payload itself."""
        return bytes(payload)


def scheme_names(*, auto_workers: bool = False) -> list[str]:
    """Every scheme measured: plaintext, FLARE-style and one per secagg preset."""
    names = ["plaintext", "flare", *(f"secagg:{p}" for p in secagg.PRESETS)]
    if auto_workers:
        names.append("secagg:default/auto")
    return names


def make_scheme(name: str, clients: int, *, decryption_budget: int = 1 << 16) -> Scheme:
    """Build a scheme by name (see :func:`scheme_names`) for a roster of ``clients``.

    Parameters
    ----------
    name : str
        ``"plaintext"``, ``"flare"``, ``"secagg:<preset>"`` or ``"secagg:<preset>/auto"``.
    clients : int
        Roster size.
    decryption_budget : int, optional
        secagg key's decryption budget.

    Returns
    -------
    Scheme
        The scheme, with fresh keys.
    """
    if name == "plaintext":
        return PlaintextScheme(clients)
    if name == "flare":
        return FlareScheme()
    if name.startswith("secagg:"):
        preset, _, mode = name.removeprefix("secagg:").partition("/")
        workers = None if mode == "auto" else 1
        return SecaggScheme(preset, clients, workers=workers, decryption_budget=decryption_budget)
    raise ValueError(f"unknown scheme {name!r}")


# --------------------------------------------------------------------------- HE costs


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
    decrypt_s: float
    max_abs_error: float
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
    def decrypt_us_per_param(self) -> float:
        """Key-holder time to release the aggregate, per parameter, µs."""
        return self.decrypt_s / self.num_params * 1e6

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
            decrypt_us_per_param=self.decrypt_us_per_param,
            server_seconds={
                str(n): dict(zip(("seconds", "extrapolated"), self.server_seconds(n), strict=True))
                for n in clients
            },
        )
        return data


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
        Use this update (e.g. a real model's layout) instead of :func:`make_update`;
        it must hold ``num_params`` values.

    Returns
    -------
    SchemeRun
        The raw timings and sizes.
    """
    if base is None:
        base = make_update(num_params, seed=seed)
    elif sum(int(t.numel()) for t in base.values()) != num_params:
        raise ValueError("base update does not hold num_params values")
    weights = client_weights(real_clients)
    distinct = (
        real_clients if scheme.distinct_payloads else min(real_clients, FLARE_DISTINCT_PAYLOADS)
    )
    server = scheme.server()
    cache: dict[int, Any] = {}
    encrypt_s: list[float] = []
    encrypt_cpu_s: list[float] = []
    add_s: list[float] = []
    payload_bytes = 0
    numerator = denominator = 0.0
    for client in range(real_clients):
        source = client if scheme.distinct_payloads else client % distinct
        if source in cache:
            payload = cache[source]
        else:
            update = _scaled(base, _coefficient(source))
            if num_params >= 1_000_000:
                gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            payload = scheme.encrypt(update, client=client, weight=weights[source])
            encrypt_s.append(time.perf_counter() - wall)
            encrypt_cpu_s.append(time.process_time() - cpu)
            payload_bytes = scheme.payload_nbytes(payload)
            del update
            if not scheme.distinct_payloads:
                cache[source] = payload
        wall = time.perf_counter()
        server.add(payload, weights[source])
        add_s.append(time.perf_counter() - wall)
        numerator += weights[source] * _coefficient(source)
        denominator += weights[source]
        del payload
    cache.clear()
    gc.collect()
    wall = time.perf_counter()
    aggregate = server.finalize()
    finalize_s = time.perf_counter() - wall
    aggregate_bytes = scheme.aggregate_nbytes(aggregate)
    del server
    gc.collect()
    wall = time.perf_counter()
    mean = scheme.decrypt(aggregate)
    decrypt_s = time.perf_counter() - wall
    expected = _flat(base) * (numerator / denominator)
    error = float(np.abs(_flat(mean) - expected).max())
    return SchemeRun(
        scheme=scheme.name,
        num_params=num_params,
        num_tensors=len(base),
        real_clients=real_clients,
        distinct_payloads=distinct,
        encrypt_s=encrypt_s,
        encrypt_cpu_s=encrypt_cpu_s,
        payload_bytes=payload_bytes,
        add_s=add_s,
        finalize_s=finalize_s,
        aggregate_bytes=aggregate_bytes,
        decrypt_s=decrypt_s,
        max_abs_error=error,
        max_clients=scheme.max_clients,
    )


def interleaved_encrypt(
    schemes: Sequence[Scheme], num_params: int, *, repeats: int = 5
) -> dict[str, dict[str, list[float]]]:
    """Time client encryption of several schemes in turn (A, B, A, B, ...) at one size.

    Interleaving puts every scheme under the same background load, so the ratios of
    the medians are fair on a shared machine. One untimed warm-up per scheme first.

    Parameters
    ----------
    schemes : sequence of Scheme
        Schemes to compare.
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
        scheme.encrypt(update, client=0, weight=64.0)
    for _ in range(repeats):
        for scheme in schemes:
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            payload = scheme.encrypt(update, client=0, weight=64.0)
            times[scheme.name]["wall_s"].append(time.perf_counter() - wall)
            times[scheme.name]["cpu_s"].append(time.process_time() - cpu)
            del payload
    return times


# --------------------------------------------------------------------------- memory


def measure_server_memory(
    scheme: Scheme,
    num_params: int,
    client_counts: Sequence[int],
    workdir: Path,
    *,
    timeout: float = 600.0,
) -> list[dict[str, Any]]:
    """Peak RSS of a fresh server process aggregating ``N`` real payloads, for each ``N``.

    Payloads are encrypted here once and written to ``workdir``; each child process
    (:mod:`bench._rss_child`) loads the server context, then reads and adds the first
    ``N`` payloads one at a time and finalizes. FLARE-style payloads cycle through
    :data:`FLARE_DISTINCT_PAYLOADS` distinct ones (its server cannot tell them apart).

    Parameters
    ----------
    scheme : Scheme
        The scheme, whose roster holds at least ``max(client_counts)`` clients.
    num_params : int
        Update size.
    client_counts : sequence of int
        Numbers of clients to aggregate, one child process each.
    workdir : Path
        Scratch directory for the payload files (removed by the caller).
    timeout : float, optional
        Seconds allowed per child.

    Returns
    -------
    list of dict
        One child report per client count (``rss_before_kb``, ``peak_kb``, ``seconds``…),
        plus ``payload_bytes`` and ``growth_kb = peak_kb - rss_before_kb``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    most = max(client_counts)
    distinct = most if scheme.distinct_payloads else min(most, FLARE_DISTINCT_PAYLOADS)
    base = make_update(num_params, seed=2)
    weights = client_weights(most)
    files: list[Path] = []
    payload_bytes = 0
    for client in range(distinct):
        payload = scheme.encrypt(
            _scaled(base, _coefficient(client)), client=client, weight=weights[client]
        )
        payload_bytes = scheme.payload_nbytes(payload)
        path = workdir / f"payload-{client:03d}.bin"
        path.write_bytes(scheme.to_file_bytes(payload))
        files.append(path)
        del payload
    context = workdir / "server-context.bin"
    context.write_bytes(scheme.server_context())
    roster = getattr(scheme, "roster", _roster(most))
    reports = []
    root = Path(__file__).resolve().parent.parent
    for count in client_counts:
        spec = {
            "kind": scheme.kind,
            "context": str(context),
            "roster": list(roster),
            "payloads": [str(files[i % distinct]) for i in range(count)],
            "weights": [weights[i % distinct] for i in range(count)],
        }
        spec_path = workdir / f"spec-{count}.json"
        spec_path.write_text(json.dumps(spec))
        done = subprocess.run(
            [sys.executable, "-m", "bench._rss_child", str(spec_path)],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        if done.returncode != 0:
            raise RuntimeError(f"server-memory child failed: {done.stderr[-2000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        report.update(
            scheme=scheme.name,
            num_params=num_params,
            payload_bytes=payload_bytes,
            distinct_payloads=distinct,
            growth_kb=report["peak_kb"] - report["rss_before_kb"],
        )
        reports.append(report)
    return reports


# --------------------------------------------------------------------------- DP-SGD


def _timed_steps(step: Callable[[], None], count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


@functools.lru_cache(maxsize=8)
def _dataset(name: str, max_examples: int | None) -> Any:
    from secagg.protocols.datasets import load_dataset

    return load_dataset(name, max_examples=max_examples)


@dataclass
class DPSteps:
    """One plain and one DP-SGD training step of a dataset's default model, same batch.

    Build with :func:`make_dp_steps`; call :meth:`close` to detach Opacus hooks.
    """

    dataset: str
    model: str
    params: int
    batch_size: int
    plain_step: Callable[[], None]
    private_step: Callable[[], None]
    close: Callable[[], None]


def make_dp_steps(dataset: str, *, batch_size: int = 64, max_examples: int | None = 600) -> DPSteps:
    """Build a plain and a DP-SGD step (PrivateClient, Opacus hooks) on one fixed batch.

    Both models are the dataset's default model with the same initial weights and SGD;
    a step is ``zero_grad``, forward, cross-entropy, backward and ``optimizer.step()``
    on the same ``batch_size`` examples (no Poisson sampling, so both see exactly that
    batch: one logical batch, one physical batch).

    Parameters
    ----------
    dataset : str
        A name from :data:`secagg.protocols.datasets.DATASET_NAMES`.
    batch_size : int, optional
        Examples per step.
    max_examples : int or None, optional
        Subsample the dataset (only one batch is used).

    Returns
    -------
    DPSteps
        The two step functions and a ``close`` that detaches the Opacus hooks.
    """
    from secagg.dp.client import PrivateClient

    data = _dataset(dataset, max_examples)
    count = min(batch_size, data.num_train)
    inputs, labels = data.x_train[:count], data.y_train[:count]
    torch.manual_seed(0)
    plain_model = data.default_model()
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.01)
    private_model = data.default_model()
    private_model.load_state_dict(plain_model.state_dict())
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.x_train, data.y_train), batch_size=count
    )
    private = PrivateClient(
        module=private_model,
        optimizer=torch.optim.SGD(private_model.parameters(), lr=0.01),
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=False,
    )
    plain_model.train()
    private_model.train()

    def plain_step() -> None:
        plain_opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(plain_model(inputs), labels)
        loss.backward()
        plain_opt.step()

    def private_step() -> None:
        private.optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(private_model(inputs), labels)
        loss.backward()
        private.optimizer.step()

    return DPSteps(
        dataset=dataset,
        model=type(plain_model).__name__,
        params=sum(p.numel() for p in plain_model.parameters() if p.requires_grad),
        batch_size=count,
        plain_step=plain_step,
        private_step=private_step,
        close=private.close,
    )


def dp_step_overhead(
    dataset: str,
    *,
    batch_size: int = 64,
    steps: int = 10,
    warmup: int = 2,
    max_examples: int | None = 600,
    threads: int = 1,
) -> dict[str, Any]:
    """Median time of a DP-SGD step against a plain step, measured alternately.

    Steps alternate between the two modes (plain, private, plain, ...) so both run
    under the same background load; see :func:`make_dp_steps` for what a step is.

    Parameters
    ----------
    dataset : str
        A name from :data:`secagg.protocols.datasets.DATASET_NAMES`.
    batch_size : int, optional
        Examples per step.
    steps : int, optional
        Timed steps per mode.
    warmup : int, optional
        Untimed steps per mode first.
    max_examples : int or None, optional
        Subsample the dataset (only one batch is used).
    threads : int, optional
        ``torch.set_num_threads`` while measuring (restored afterwards).

    Returns
    -------
    dict
        ``plain_s`` and ``private_s`` (median seconds per step), ``ratio``, ``params``…
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pair = make_dp_steps(dataset, batch_size=batch_size, max_examples=max_examples)
        try:
            _timed_steps(pair.plain_step, warmup)
            _timed_steps(pair.private_step, warmup)
            plain: list[float] = []
            private: list[float] = []
            for _ in range(steps):
                plain += _timed_steps(pair.plain_step, 1)
                private += _timed_steps(pair.private_step, 1)
        finally:
            pair.close()
    finally:
        torch.set_num_threads(previous)
    plain_s, private_s = statistics.median(plain), statistics.median(private)
    return {
        "dataset": dataset,
        "model": pair.model,
        "params": pair.params,
        "batch_size": pair.batch_size,
        "steps": steps,
        "threads": threads,
        "plain_s": plain_s,
        "private_s": private_s,
        "ratio": private_s / plain_s,
        "plain_all_s": plain,
        "private_all_s": private,
    }


# --------------------------------------------------------------------------- a whole run


def default_run_config(**overrides: Any) -> Any:
    """The configuration ``secagg run`` uses by default, with ``overrides``.

    :func:`secagg.protocols.recipes.default_config`; the attention analysis, which runs
    once after the last round and is in no round's time, is off unless overridden.
    """
    from secagg.protocols.recipes import DEFAULT_DATASET, default_config

    dataset = str(overrides.pop("dataset", DEFAULT_DATASET))
    return default_config(dataset, **{"attention_analysis": False, **overrides})


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
        holds key generation), the ``seconds`` split of :class:`RoundMetrics`, ``he_s``
        (encrypt + aggregate + decrypt) and ``he_share`` (of the wall); plus totals and
        ``keygen_s``, one key generation timed apart (the run makes its own, once).
    """
    from secagg.protocols import Federation

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    stamps: list[float] = []
    keygen_s = 0.0
    if config.he:
        start = time.perf_counter()
        secagg.KeyHolder.generate(config.preset)
        keygen_s = time.perf_counter() - start
    try:
        setup = time.perf_counter()
        federation = Federation(config, on_round=lambda _m: stamps.append(time.perf_counter()))
        start = time.perf_counter()
        result = federation.run()
        end = time.perf_counter()
    finally:
        torch.set_num_threads(previous)
    rounds = []
    last = start
    for metrics, stamp in zip(result.metrics, stamps, strict=True):
        seconds = dict(metrics.seconds)
        he = (
            seconds.get("encrypt", 0.0)
            + seconds.get("aggregate", 0.0)
            + seconds.get("decrypt", 0.0)
        )
        wall = stamp - last
        last = stamp
        rounds.append(
            {
                "round": metrics.round,
                "status": metrics.status,
                "accuracy": metrics.accuracy,
                "clients": len(metrics.contributors),
                "bytes_per_client": metrics.bytes_per_client,
                "wall_s": wall,
                "seconds": seconds,
                "he_s": he,
                "he_share": he / wall if wall > 0 else float("nan"),
            }
        )
    wall_total = sum(r["wall_s"] for r in rounds)
    he_total = sum(r["he_s"] for r in rounds)
    train_total = sum(r["seconds"].get("train", 0.0) for r in rounds)
    return {
        "config": config.to_json(),
        "setup_s": start - setup,
        "run_s": end - start,
        "rounds": rounds,
        "wall_s": wall_total,
        "train_s": train_total,
        "he_s": he_total,
        "he_share": he_total / wall_total if wall_total > 0 else float("nan"),
        "keygen_s": keygen_s,
        "params": sum(v.numel() for v in result.global_state.values()),
    }


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, memory, load and library versions."""
    from importlib.metadata import version

    def _version(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "not installed"

    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "mem_total_gb": _mem_total_gb(),
        "loadavg": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in ("secagg", "tenseal", "torch", "opacus", "numpy", "pytest-benchmark")
        },
        "torch_threads": torch.get_num_threads(),
    }
