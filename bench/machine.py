"""The machine a sweep ran on: CPU, cores, memory, load and library versions."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = ["load_average", "machine_info"]

_PACKAGES = ("secagg", "tenseal", "torch", "opacus", "numpy", "cryptography", "pytest-benchmark")


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


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages."""
    return list(os.getloadavg())


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, memory, load and library versions."""
    import torch

    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "mem_total_gb": _mem_total_gb(),
        "loadavg": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in _PACKAGES},
        "torch_threads": torch.get_num_threads(),
    }
