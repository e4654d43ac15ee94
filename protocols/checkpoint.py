"""Atomic, checksummed checkpoints of a federated run.

A checkpoint holds the global model, the server optimiser's state, the number of
completed rounds, every client's privacy ledger and the metrics so far. It is
written with :func:`secagg._files.atomic_write_bytes` (a crash or full disk never
damages the previous checkpoint) and carries a SHA-256 checksum over its header
and body, so a corrupted file is detected instead of loaded.

Randomness needs no saved generator state: every random choice of round ``r``
(client sampling, dropouts, local training, DP noise) is seeded from
``(seed, r, ...)``, so a resumed run draws exactly what the uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._files import atomic_write_bytes
from ..crypto.wire import MAGIC_CHECKPOINT, pack_frame, unpack_frame
from ..crypto.wire import field as header_field
from ..errors import CheckpointError, FormatError

__all__ = ["CHECKPOINT_NAME", "Checkpoint", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.secagg"


@dataclass
class Checkpoint:
    """State needed to continue a run after the last completed round."""

    config_digest: str
    rounds_completed: int
    global_state: dict[str, torch.Tensor]
    server_optimizer: dict[str, Any]
    ledgers: dict[str, dict[str, Any]]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _tensors_to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _checksum(header: dict[str, Any], chunks: list[bytes]) -> str:
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for chunk in chunks:
        digest.update(len(chunk).to_bytes(8, "big"))
        digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically to ``path``."""
    chunks = [
        _tensors_to_bytes(checkpoint.global_state),
        _tensors_to_bytes(checkpoint.server_optimizer),
    ]
    header: dict[str, Any] = {
        "config_digest": checkpoint.config_digest,
        "rounds_completed": checkpoint.rounds_completed,
        "ledgers": checkpoint.ledgers,
        "metrics": checkpoint.metrics,
        "extra": checkpoint.extra,
    }
    header["checksum"] = _checksum(header, chunks)
    return atomic_write_bytes(path, pack_frame(MAGIC_CHECKPOINT, header, chunks), mode=0o600)


def load_checkpoint(
    path: str | os.PathLike[str], *, config_digest: str | None = None
) -> Checkpoint:
    """Read and verify a checkpoint.

    Raises
    ------
    CheckpointError
        If the file is missing, unreadable, fails its checksum, or belongs to a
        run with another configuration or model.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    try:
        frame = unpack_frame(data, MAGIC_CHECKPOINT, max_chunks=2)
        header = dict(frame.header)
        stored = header_field(header, "checksum", str)
        del header["checksum"]
        header.pop("chunk_sizes", None)
        if _checksum(header, list(frame.chunks)) != stored:
            raise CheckpointError(f"checkpoint {path} fails its checksum: it is corrupted")
        digest = header_field(header, "config_digest", str)
        rounds = header_field(header, "rounds_completed", int)
        ledgers = header_field(header, "ledgers", dict)
        metrics = header_field(header, "metrics", list)
        extra = header_field(header, "extra", dict)
    except FormatError as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from None
    if len(frame.chunks) != 2:
        raise CheckpointError(f"checkpoint {path} is missing its model state")
    if config_digest is not None and digest != config_digest:
        raise CheckpointError(
            f"checkpoint {path} belongs to a run with another configuration or model"
        )
    try:
        global_state = torch.load(io.BytesIO(frame.chunks[0]), weights_only=True)
        server_optimizer = torch.load(io.BytesIO(frame.chunks[1]), weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} has unreadable tensors: {exc}") from None
    return Checkpoint(
        config_digest=digest,
        rounds_completed=rounds,
        global_state=global_state,
        server_optimizer=server_optimizer,
        ledgers=ledgers,
        metrics=metrics,
        extra=extra,
    )
