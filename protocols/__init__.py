"""Round protocols and engines: the in-process federation (and Flower, with the extra)."""

from __future__ import annotations

from .aggregation import AggregationBackend, EncryptedBackend, PlaintextBackend
from .attention import AttentionMap
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import FederationConfig
from .federation import Federation, RoundMetrics, RunResult
from .server_opt import ServerOptimizer

__all__ = [
    "AggregationBackend",
    "AttentionMap",
    "Checkpoint",
    "EncryptedBackend",
    "Federation",
    "FederationConfig",
    "PlaintextBackend",
    "RoundMetrics",
    "RunResult",
    "ServerOptimizer",
    "load_checkpoint",
    "save_checkpoint",
]
