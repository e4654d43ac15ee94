"""What a sweep measures: :class:`SweepPlan`, with the :data:`FULL` and :data:`QUICK` plans."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["FULL", "QUICK", "WIRE_SIZES", "SweepPlan", "plan_from_json"]

#: Sizes at which the wire size and the MAC's bytes are measured in every plan.
WIRE_SIZES = (10_000, 100_000, 1_000_000, 10_000_000)


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep measures.

    Parameters
    ----------
    sizes : tuple of int
        Update sizes (values per client) of the per-role measurements.
    clients : tuple of int
        Client counts reported for server time (measured up to the real-client cap of
        each size, extrapolated linearly beyond it).
    wire_sizes : tuple of int
        Sizes of the wire-size and MAC-bytes measurements.
    ratio_params : int
        Update size of the interleaved client-encryption comparison.
    ratio_repeats : int
        Timed encryptions per scheme in that comparison.
    mac_params : int
        Update size of the in-situ MAC timing and the key holder's MAC check.
    mac_repeats : int
        Timed encryptions of the in-situ MAC timing.
    mac_pairs : int
        Timed pairs (with and without the MAC) of the A/B MAC timing, per mode.
    exact_params : int
        Update size of the exactness check of the exact presets.
    exact_clients : int
        Clients of that check.
    release_params : int
        Update size of the key holder's release against the contributor count.
    release_clients : tuple of int
        Contributor counts of that measurement.
    memory_params : int
        Update size of the server-memory test.
    memory_clients : tuple of int
        Client counts of the server-memory test (real adds, a fresh process each).
    memory_schemes : tuple of str
        Schemes of the server-memory test.
    model_datasets : tuple of str
        Datasets whose default model's update layout is measured too.
    dp_datasets : tuple of str
        Datasets of the DP-SGD step overhead.
    dp_steps : int
        Timed steps per mode.
    round_rounds : int
        Rounds of the default ``secagg run`` measured.
    round_clients : int
        Clients of that run (the CLI default is 10).
    """

    sizes: tuple[int, ...]
    clients: tuple[int, ...]
    wire_sizes: tuple[int, ...]
    ratio_params: int
    ratio_repeats: int
    mac_params: int
    mac_repeats: int
    mac_pairs: int
    exact_params: int
    exact_clients: int
    release_params: int
    release_clients: tuple[int, ...]
    memory_params: int
    memory_clients: tuple[int, ...]
    memory_schemes: tuple[str, ...]
    model_datasets: tuple[str, ...]
    dp_datasets: tuple[str, ...]
    dp_steps: int
    round_rounds: int
    round_clients: int

    def real_clients(self, size: int) -> int:
        """Real clients run at ``size``: all up to 1e5 values, 10 up to 1e6, else 2."""
        cap = 100 if size <= 100_000 else 10 if size <= 1_000_000 else 2
        return max(1, min(max(self.clients), cap))


FULL = SweepPlan(
    sizes=(10_000, 100_000, 1_000_000, 10_000_000),
    clients=(2, 10, 100),
    wire_sizes=WIRE_SIZES,
    ratio_params=1_000_000,
    ratio_repeats=15,
    mac_params=1_000_000,
    mac_repeats=7,
    mac_pairs=20,
    exact_params=1_000_000,
    exact_clients=3,
    release_params=100_000,
    release_clients=(2, 10, 30, 100),
    memory_params=1_000_000,
    memory_clients=(2, 10, 30, 100),
    memory_schemes=("plaintext", "flare", "secagg:default"),
    model_datasets=("digits", "breast_cancer", "mnist", "rotten_tomatoes"),
    dp_datasets=("digits", "breast_cancer", "mnist", "rotten_tomatoes"),
    dp_steps=10,
    round_rounds=2,
    round_clients=10,
)

QUICK = SweepPlan(
    sizes=(10_000, 100_000),
    clients=(2, 10),
    wire_sizes=WIRE_SIZES,
    ratio_params=1_000_000,
    ratio_repeats=5,
    mac_params=1_000_000,
    mac_repeats=3,
    mac_pairs=8,
    exact_params=100_000,
    exact_clients=3,
    release_params=100_000,
    release_clients=(2, 10, 30),
    memory_params=100_000,
    memory_clients=(2, 10, 30),
    memory_schemes=("plaintext", "flare", "secagg:default"),
    model_datasets=("digits",),
    dp_datasets=("digits", "mnist"),
    dp_steps=3,
    round_rounds=1,
    round_clients=10,
)


def plan_from_json(data: dict[str, Any]) -> SweepPlan:
    """Rebuild a plan from its ``bench.json`` form (lists become tuples)."""
    names = {f.name for f in fields(SweepPlan)}
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names
    }
    return SweepPlan(**values)
