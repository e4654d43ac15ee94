"""Aggregation backends: the roles of a round, talking only through bytes.

:class:`EncryptedBackend` is secagg's CKKS pipeline: clients encrypt, the server
sums with the server context only, the key holder releases the flooded mean.
:class:`PlaintextBackend` is the baseline (``--no-he``): the same messages in the
clear, summed as a numpy weighted sum.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..aggregate import Aggregator
from ..errors import (
    DuplicateClientError,
    NotEnoughClientsError,
    RoundMismatchError,
    SpecMismatchError,
    UnknownClientError,
    UpdateValueError,
)
from ..keys import KeyHolder
from ..spec import UpdateSpec, flatten_update, unflatten_update
from ..update import encrypt_update
from ..wire import field, pack_frame, unpack_frame

__all__ = [
    "AggregationBackend",
    "AggregatorRoundServer",
    "EncryptedBackend",
    "PlaintextBackend",
    "Released",
    "RoundServer",
]

_MAGIC_PLAIN_UPDATE = b"SAPU"
_MAGIC_PLAIN_SUM = b"SAPS"


@dataclass(frozen=True)
class Released:
    """A released weighted mean and the total normalised weight."""

    mean: dict[str, torch.Tensor]
    weight_sum: float
    contributors: tuple[str, ...]


class RoundServer(Protocol):
    """The server side of one round."""

    def add(self, payload: bytes) -> str:
        """Validate and fold one client's payload; return its client id."""
        ...

    @property
    def contributors(self) -> tuple[str, ...]:
        """Client ids folded in so far."""
        ...

    def finalize(self) -> bytes:
        """Return the serialized aggregate (raises ``NotEnoughClientsError``)."""
        ...


class AggregationBackend(Protocol):
    """Client, server and release roles of one aggregation scheme."""

    name: str

    def client_payload(
        self,
        update: Mapping[str, torch.Tensor],
        *,
        weight: float,
        weight_bound: float,
        round_id: int,
        client_id: str,
        roster: Sequence[str],
    ) -> bytes:
        """Serialize (and for HE, encrypt) a client's weighted update."""
        ...

    def server(self, *, round_id: int, roster: Sequence[str], min_clients: int) -> RoundServer:
        """Start the server side of a round."""
        ...

    def release(self, aggregate: bytes) -> Released:
        """Turn the serialized aggregate into the weighted mean update."""
        ...


class EncryptedBackend:
    """CKKS secure aggregation (see :mod:`secagg`).

    Parameters
    ----------
    keys : KeyHolder
        The key holder (clients share its secret context).
    """

    name = "ckks"

    def __init__(self, keys: KeyHolder) -> None:
        self.keys = keys
        self._server_context = keys.server_context()

    def client_payload(
        self,
        update: Mapping[str, torch.Tensor],
        *,
        weight: float,
        weight_bound: float,
        round_id: int,
        client_id: str,
        roster: Sequence[str],
    ) -> bytes:
        """Encrypt a client's weighted update."""
        return encrypt_update(
            self.keys,
            update,
            weight=weight,
            weight_bound=weight_bound,
            round_id=round_id,
            client_id=client_id,
            roster=roster,
        )

    def server(self, *, round_id: int, roster: Sequence[str], min_clients: int) -> RoundServer:
        """An :class:`secagg.Aggregator` holding only the server context bytes."""
        return AggregatorRoundServer(
            Aggregator(
                self._server_context, round_id=round_id, roster=roster, min_clients=min_clients
            )
        )

    def release(self, aggregate: bytes) -> Released:
        """Key holder: decrypt, check rosters, flood, divide by the weight sum."""
        released = self.keys.release(aggregate)
        return Released(released.mean, released.weight_sum, released.contributors)


class AggregatorRoundServer:
    """A :class:`secagg.Aggregator` behind the :class:`RoundServer` interface."""

    def __init__(self, aggregator: Aggregator) -> None:
        self._aggregator = aggregator

    def add(self, payload: bytes) -> str:
        return self._aggregator.add(payload)

    @property
    def contributors(self) -> tuple[str, ...]:
        return self._aggregator.contributors

    def finalize(self) -> bytes:
        return self._aggregator.finalize().to_bytes()


class PlaintextBackend:
    """The plaintext baseline: the same roles and messages, no encryption."""

    name = "plaintext"

    def client_payload(
        self,
        update: Mapping[str, torch.Tensor],
        *,
        weight: float,
        weight_bound: float,
        round_id: int,
        client_id: str,
        roster: Sequence[str],
    ) -> bytes:
        """Frame ``weight/weight_bound · update`` in the clear."""
        if not 0 < weight <= weight_bound:
            raise UpdateValueError(f"weight {weight} is outside (0, {weight_bound}]")
        flat, spec = flatten_update(update)
        if not np.isfinite(flat).all():
            raise UpdateValueError("update holds non-finite values")
        normalised = weight / weight_bound
        header = {
            "round_id": round_id,
            "client_id": client_id,
            "weight": normalised,
            "spec": spec.to_json(),
        }
        return pack_frame(_MAGIC_PLAIN_UPDATE, header, [(flat * normalised).tobytes()])

    def server(self, *, round_id: int, roster: Sequence[str], min_clients: int) -> RoundServer:
        """A numpy weighted-sum server."""
        return _PlainRoundServer(round_id, tuple(roster), min_clients)

    def release(self, aggregate: bytes) -> Released:
        """Divide the weighted sum by the weight sum."""
        frame = unpack_frame(aggregate, _MAGIC_PLAIN_SUM)
        spec = UpdateSpec.from_json(frame.header.get("spec"))
        weight_sum = float(field(frame.header, "weight_sum", float))
        total = np.frombuffer(frame.chunks[0], dtype=np.float64)
        contributors = tuple(field(frame.header, "contributors", list))
        return Released(unflatten_update(total / weight_sum, spec), weight_sum, contributors)


class _PlainRoundServer:
    def __init__(self, round_id: int, roster: tuple[str, ...], min_clients: int) -> None:
        self.round_id = round_id
        self.roster = roster
        self.min_clients = min_clients
        self._sum: np.ndarray | None = None
        self._weight = 0.0
        self._spec: list[list[Any]] | None = None
        self._contributors: list[str] = []

    @property
    def contributors(self) -> tuple[str, ...]:
        return tuple(self._contributors)

    def add(self, payload: bytes) -> str:
        frame = unpack_frame(payload, _MAGIC_PLAIN_UPDATE)
        header = frame.header
        client_id = field(header, "client_id", str)
        if client_id not in self.roster:
            raise UnknownClientError(f"client {client_id!r} is not on the roster")
        if client_id in self._contributors:
            raise DuplicateClientError(f"client {client_id!r} already contributed")
        if field(header, "round_id", int) != self.round_id:
            raise RoundMismatchError("update is for another round")
        spec = UpdateSpec.from_json(header.get("spec"))
        values = np.frombuffer(frame.chunks[0], dtype=np.float64)
        if values.size != spec.numel:
            raise UpdateValueError("update length does not match its spec")
        if self._spec is not None and spec.to_json() != self._spec:
            raise SpecMismatchError("update layout differs from the round's")
        if self._sum is None:
            self._sum = values.copy()
            self._spec = spec.to_json()
        else:
            self._sum += values
        self._weight += float(field(header, "weight", float))
        self._contributors.append(client_id)
        return client_id

    def finalize(self) -> bytes:
        if self._sum is None or len(self._contributors) < self.min_clients:
            raise NotEnoughClientsError(
                f"{len(self._contributors)} contribution(s), fewer than {self.min_clients}"
            )
        header = {
            "weight_sum": self._weight,
            "contributors": self._contributors,
            "spec": self._spec,
        }
        return pack_frame(_MAGIC_PLAIN_SUM, header, [self._sum.tobytes()])


def state_to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialize a model state (tensors only) for broadcasting."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def state_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Load a model state written by :func:`state_to_bytes` (tensors only, no pickle code)."""
    loaded = torch.load(io.BytesIO(data), weights_only=True)
    return {str(k): v for k, v in loaded.items()}
