"""The three roles of a round's aggregation, for secagg's CKKS scheme and the plaintext baseline.

- the **client** role turns a weighted update into a payload (:class:`EncryptedPayloads`:
  encrypted, MAC-tagged, signed; :class:`PlaintextPayloads`: in the clear);
- the **server** role sums payloads (:func:`round_server`: the key-less
  :class:`secagg.Aggregator`, or a numpy sum);
- the **key holder** role releases the weighted mean (:class:`EncryptedRelease`: a
  :class:`secagg.KeyHolder`; :class:`PlaintextRelease`: a division).

Every role talks to the others through bytes only, in both engines.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..crypto._validate import check_weight
from ..crypto.client import encrypt_update
from ..crypto.context import ServerContext
from ..crypto.keyholder import KeyHolder
from ..crypto.keys import KeyMaterial
from ..crypto.registry import ClientRegistry, SigningKey
from ..crypto.server import Aggregator
from ..crypto.spec import UpdateSpec, flatten_update, unflatten_update
from ..crypto.wire import field, pack_frame, unpack_frame
from ..dp.tensors import to_torch
from ..errors import (
    ConfigurationError,
    DuplicateClientError,
    FormatError,
    NotEnoughClientsError,
    RoundMismatchError,
    SpecMismatchError,
    UnknownClientError,
    UpdateValueError,
)

__all__ = [
    "EncryptedPayloads",
    "EncryptedRelease",
    "PayloadMaker",
    "PlaintextPayloads",
    "PlaintextRelease",
    "Released",
    "Releaser",
    "RoundServer",
    "round_server",
    "scaled",
    "state_from_bytes",
    "state_to_bytes",
    "unscaled",
]

_MAGIC_PLAIN_UPDATE = b"SAPU"
_MAGIC_PLAIN_SUM = b"SAPS"


@dataclass(frozen=True)
class Released:
    """A released weighted mean (torch tensors) and who contributed."""

    mean: dict[str, torch.Tensor]
    weight_sum: float
    contributors: tuple[str, ...]


class PayloadMaker(Protocol):
    """The client role: one client's weighted update as bytes."""

    def payload(
        self,
        update: Mapping[str, torch.Tensor],
        *,
        weight: float,
        weight_bound: float,
        round_id: int,
        roster: Sequence[str],
        scale: float = 1.0,
    ) -> bytes:
        """Serialize (and for HE, encrypt, tag and sign) ``weight/weight_bound · update/scale``.

        ``scale`` is the run's public bound on the update's coordinates (the coordinator
        multiplies the released mean by it).
        """
        ...


class RoundServer(Protocol):
    """The server role for one round."""

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


class Releaser(Protocol):
    """The key-holder role."""

    def release(self, aggregate: bytes, *, min_clients: int) -> Released:
        """Turn a serialized aggregate into the weighted mean update."""
        ...


class EncryptedPayloads:
    """A client's CKKS payloads: encrypted with the key material, signed with its own key."""

    def __init__(self, keys: KeyMaterial, signing_key: SigningKey) -> None:
        self.keys = keys
        self.signing_key = signing_key

    def payload(
        self,
        update: Mapping[str, torch.Tensor],
        *,
        weight: float,
        weight_bound: float,
        round_id: int,
        roster: Sequence[str],
        scale: float = 1.0,
    ) -> bytes:
        """Encrypt, MAC-tag and sign the weighted, scaled update."""
        return encrypt_update(
            self.keys,
            scaled(update, scale),
            signing_key=self.signing_key,
            weight=weight,
            weight_bound=weight_bound,
            round_id=round_id,
            roster=roster,
        )


class PlaintextPayloads:
    """The plaintext baseline's payloads: the same message, in the clear."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id

    def payload(
        self,
        update: Mapping[str, torch.Tensor],
        *,
        weight: float,
        weight_bound: float,
        round_id: int,
        roster: Sequence[str],
        scale: float = 1.0,
    ) -> bytes:
        """Frame ``weight/weight_bound · update/scale``."""
        weight, weight_bound = check_weight(weight, weight_bound)
        flat, spec = flatten_update(scaled(update, scale))
        if not np.isfinite(flat).all():
            raise UpdateValueError("update holds non-finite values")
        normalised = weight / weight_bound
        header = {
            "round_id": round_id,
            "client_id": self.client_id,
            "weight": normalised,
            "spec": spec.to_json(),
        }
        return pack_frame(_MAGIC_PLAIN_UPDATE, header, [(flat * normalised).tobytes()])


def scaled(update: Mapping[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """``update / scale`` (the run's public bound on its coordinates), tensor by tensor.

    Raises
    ------
    ConfigurationError
        If ``scale`` is not a positive finite number.
    """
    if not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise ConfigurationError(f"the update scale must be a positive number, got {scale!r}")
    if scale == 1.0:
        return dict(update)
    return {name: tensor / scale for name, tensor in update.items()}


def unscaled(released: Released, scale: float) -> Released:
    """The released mean multiplied back by the round's update scale."""
    if scale == 1.0:
        return released
    mean = {name: tensor * scale for name, tensor in released.mean.items()}
    return Released(mean, released.weight_sum, released.contributors)


def round_server(
    *,
    he: bool,
    round_id: int,
    roster: Sequence[str],
    min_clients: int,
    server_context: ServerContext | None = None,
    registry: ClientRegistry | None = None,
) -> RoundServer:
    """The server role of one round: the key-less aggregator, or the plaintext sum."""
    if not he:
        return _PlainRoundServer(round_id, tuple(roster), min_clients)
    if server_context is None or registry is None:
        raise FormatError("an encrypted round needs the server context and the registry")
    return _EncryptedRoundServer(
        Aggregator(
            server_context,
            registry=registry,
            round_id=round_id,
            roster=roster,
            min_clients=min_clients,
        )
    )


class _EncryptedRoundServer:
    def __init__(self, aggregator: Aggregator) -> None:
        self._aggregator = aggregator

    def add(self, payload: bytes) -> str:
        return self._aggregator.add(payload)

    @property
    def contributors(self) -> tuple[str, ...]:
        return self._aggregator.contributors

    def finalize(self) -> bytes:
        return self._aggregator.finalize().to_bytes()


class EncryptedRelease:
    """The key holder releasing verified aggregates."""

    def __init__(self, key_holder: KeyHolder) -> None:
        self.key_holder = key_holder

    def release(self, aggregate: bytes, *, min_clients: int) -> Released:
        """Verify, decrypt and flood (see :meth:`secagg.KeyHolder.release`)."""
        released = self.key_holder.release(aggregate, min_clients=min_clients)
        return Released(
            to_torch(released.mean, released.spec), released.weight_sum, released.contributors
        )


class PlaintextRelease:
    """The plaintext baseline's release: the weighted sum divided by the weight sum."""

    def release(self, aggregate: bytes, *, min_clients: int) -> Released:
        """Divide the weighted sum by the weight sum."""
        frame = unpack_frame(aggregate, _MAGIC_PLAIN_SUM)
        spec = UpdateSpec.from_json(frame.header.get("spec"))
        weight_sum = float(field(frame.header, "weight_sum", float))
        total = np.frombuffer(frame.chunks[0], dtype=np.float64)
        contributors = tuple(field(frame.header, "contributors", list))
        if len(contributors) < min_clients:
            raise NotEnoughClientsError(
                f"{len(contributors)} contributions, fewer than {min_clients}"
            )
        mean = unflatten_update(total / weight_sum, spec)
        return Released(to_torch(mean, spec), weight_sum, contributors)


class _PlainRoundServer:
    def __init__(self, round_id: int, roster: tuple[str, ...], min_clients: int) -> None:
        self.round_id = round_id
        self.roster = roster
        self.min_clients = min_clients
        self._sum: np.ndarray | None = None
        self._weight = 0.0
        self._spec: UpdateSpec | None = None
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
        if len(frame.chunks) != 1 or len(frame.chunks[0]) != 8 * spec.numel:
            raise FormatError("update length does not match its spec")
        values = np.frombuffer(frame.chunks[0], dtype=np.float64)
        if self._spec is not None and spec != self._spec:
            raise SpecMismatchError("update layout differs from the round's")
        weight = float(field(header, "weight", float))
        if self._sum is None:
            self._sum = values.copy()
            self._spec = spec
        else:
            self._sum += values
        self._weight += weight
        self._contributors.append(client_id)
        return client_id

    def finalize(self) -> bytes:
        if self._sum is None or self._spec is None or len(self._contributors) < self.min_clients:
            raise NotEnoughClientsError(
                f"{len(self._contributors)} contribution(s), fewer than {self.min_clients}"
            )
        header = {
            "weight_sum": self._weight,
            "contributors": self._contributors,
            "spec": self._spec.to_json(),
        }
        return pack_frame(_MAGIC_PLAIN_SUM, header, [self._sum.tobytes()])


def state_to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialize a model state (tensors only) for broadcasting."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def state_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Load a model state written by :func:`state_to_bytes` (tensors only, no pickle code).

    Raises
    ------
    FormatError
        If ``data`` is not a serialized mapping of names to tensors.
    """
    try:
        loaded = torch.load(io.BytesIO(bytes(data)), weights_only=True)
    except Exception as exc:  # torch raises many types on hostile bytes
        raise FormatError(f"unreadable model state: {type(exc).__name__}") from None
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise FormatError("a model state must map names to tensors")
    return dict(loaded)
