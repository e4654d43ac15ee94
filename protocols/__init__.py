"""The federation application: datasets, recipes, the round coordinator and its two engines.

- :class:`Federation` runs a whole federation in one process (research, CI);
- :mod:`secagg.protocols.flower` runs the same rounds on Flower (the ``flower`` extra);
- both drive one :class:`~secagg.protocols.coordinator.RoundCoordinator`.

Names resolve on first use (PEP 562), so importing this package is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .attention import AttentionMap
    from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .config import FederationConfig, default_config
    from .coordinator import RoundCoordinator
    from .inprocess import Federation, RunResult
    from .roundlog import RoundMetrics
    from .server_opt import ServerOptimizer

_EXPORTS: dict[str, str] = {
    "AttentionMap": ".attention",
    "Checkpoint": ".checkpoint",
    "Federation": ".inprocess",
    "FederationConfig": ".config",
    "RoundCoordinator": ".coordinator",
    "RoundMetrics": ".roundlog",
    "RunResult": ".inprocess",
    "ServerOptimizer": ".server_opt",
    "default_config": ".config",
    "load_checkpoint": ".checkpoint",
    "save_checkpoint": ".checkpoint",
}

__all__ = [
    "AttentionMap",
    "Checkpoint",
    "Federation",
    "FederationConfig",
    "RoundCoordinator",
    "RoundMetrics",
    "RunResult",
    "ServerOptimizer",
    "default_config",
    "load_checkpoint",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Public names, including those not imported yet."""
    return sorted({*globals(), *__all__})
