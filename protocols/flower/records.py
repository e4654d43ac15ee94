"""What the Flower messages carry, and how secagg's bytes ride in Flower records.

Message types (``Message.metadata.message_type``):

- ``"train"`` (ServerApp → client nodes): the global model (``ArrayRecord`` ``"global"``,
  one serialized state),
  the round's instructions (``ConfigRecord`` ``"round"``) and the outcomes of the node's
  earlier rounds (``ConfigRecord`` ``"outcomes"``). The reply holds the encrypted update
  as one ``uint8`` :class:`flwr.app.Array` in ``ArrayRecord`` ``"update"`` (Flower
  chunks it) and what the node did in ``ConfigRecord`` ``"reply"``.
- ``"query.release"`` (ServerApp → the key holder): the encrypted aggregate in
  ``ArrayRecord`` ``"aggregate"``; the reply holds the released mean update
  (``ArrayRecord`` ``"mean"``, one serialized state) and ``ConfigRecord`` ``"released"``.
- ``"query.attention"`` (ServerApp → every client node, after the last round): the final
  global model; the reply holds the node's noisy attention sum as an encrypted payload
  (``ArrayRecord`` ``"update"``) and ``ConfigRecord`` ``"reply"``.
- ``"query.outcome"`` (ServerApp → a client node, at the end of a run): outcomes only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from ...errors import FormatError

if TYPE_CHECKING:
    import torch

__all__ = [
    "MESSAGE_ATTENTION",
    "MESSAGE_OUTCOME",
    "MESSAGE_RELEASE",
    "MESSAGE_TRAIN",
    "Outcomes",
    "array_from_bytes",
    "bytes_from_array",
    "bytes_record",
    "config_value",
    "json_value",
    "read_bytes",
    "read_state",
    "state_record",
    "str_list",
]

MESSAGE_TRAIN = "train"
MESSAGE_RELEASE = "query.release"
MESSAGE_OUTCOME = "query.outcome"
MESSAGE_ATTENTION = "query.attention"

PAYLOAD = "payload"


def array_from_bytes(data: bytes) -> Array:
    """Wrap a byte string as a one-dimensional ``uint8`` :class:`flwr.app.Array`."""
    return Array(np.frombuffer(data, dtype=np.uint8))


def bytes_from_array(array: Array) -> bytes:
    """Unwrap :func:`array_from_bytes`.

    Raises
    ------
    FormatError
        If the array is not a one-dimensional ``uint8`` array.
    """
    if not isinstance(array, Array) or array.dtype != "uint8" or len(array.shape) != 1:
        raise FormatError("expected a one-dimensional uint8 array carrying bytes")
    try:
        return array.numpy().tobytes()
    except (TypeError, ValueError) as exc:
        raise FormatError(f"unreadable byte array: {exc}") from None


def bytes_record(data: bytes) -> ArrayRecord:
    """An ``ArrayRecord`` holding ``data`` under ``"payload"``."""
    return ArrayRecord({PAYLOAD: array_from_bytes(data)})


def read_bytes(content: RecordDict, record: str) -> bytes:
    """The bytes in ``content[record]["payload"]`` (see :func:`bytes_record`).

    Raises
    ------
    FormatError
        If the record or its payload is missing or malformed.
    """
    found = content.array_records.get(record)
    if found is None or PAYLOAD not in found:
        raise FormatError(f"message has no {record!r} byte payload")
    return bytes_from_array(found[PAYLOAD])


def state_record(state: Mapping[str, torch.Tensor | np.ndarray]) -> ArrayRecord:
    """A model state (or a mean update: torch tensors or numpy arrays) as one byte payload.

    One array per message rather than one per tensor: Flower stores and transfers every
    array as its own object, and a model of 40 tensors sent to every node would cost
    hundreds of round trips per round.
    """
    import torch

    from ..backends import state_to_bytes

    tensors = {
        k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
        for k, v in state.items()
    }
    return bytes_record(state_to_bytes(tensors))


def read_state(content: RecordDict, record: str) -> dict[str, torch.Tensor]:
    """The tensors of ``content[record]`` (see :func:`state_record`).

    Raises
    ------
    FormatError
        If the record is missing or holds anything but a serialized model state.
    """
    from ..backends import state_from_bytes

    return state_from_bytes(read_bytes(content, record))


def config_value(content: RecordDict, record: str, key: str, kind: type | tuple[type, ...]) -> Any:
    """``content[record][key]``, checked against ``kind``.

    Raises
    ------
    FormatError
        If the record or key is missing or the value has another type.
    """
    found = content.config_records.get(record)
    if found is None or key not in found:
        raise FormatError(f"message has no {record}.{key}")
    value = found[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise FormatError(f"{record}.{key} has the wrong type")
    if not isinstance(value, kind):
        raise FormatError(f"{record}.{key} has the wrong type")
    return value


def json_value(content: RecordDict, record: str, key: str) -> Any:
    """Decode the JSON string at ``content[record][key]``."""
    text = config_value(content, record, key, str)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise FormatError(f"{record}.{key} is not valid JSON: {exc}") from None


@dataclass
class Outcomes:
    """Round outcomes the server owes one client node.

    ``commit`` lists rounds whose aggregate held this client's update (its spending is
    final); ``discard`` lists rounds it trained for but that released nothing with its
    update (skipped, dropped or rejected): the client rolls those back.
    """

    commit: list[int] = field(default_factory=list)
    discard: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        """Whether anything is owed."""
        return bool(self.commit or self.discard)

    def add(self, round_id: int, *, committed: bool) -> None:
        """Record one round's outcome."""
        (self.commit if committed else self.discard).append(round_id)

    def remove(self, delivered: Outcomes) -> None:
        """Forget outcomes that reached the node."""
        self.commit = [r for r in self.commit if r not in delivered.commit]
        self.discard = [r for r in self.discard if r not in delivered.discard]

    def copy(self) -> Outcomes:
        """A snapshot."""
        return Outcomes(list(self.commit), list(self.discard))

    def to_record(self) -> ConfigRecord:
        """Encode as a ``ConfigRecord``."""
        return ConfigRecord(
            {"commit": json.dumps(self.commit), "discard": json.dumps(self.discard)}
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> Outcomes:
        """Decode the ``"outcomes"`` record of a message (empty when absent)."""
        if "outcomes" not in content.config_records:
            return cls()
        commit = json_value(content, "outcomes", "commit")
        discard = json_value(content, "outcomes", "discard")
        if not all(_int_list(v) for v in (commit, discard)):
            raise FormatError("outcomes must be lists of round numbers")
        return cls(list(commit), list(discard))


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    )


def str_list(value: Any, what: str) -> list[str]:
    """Check that a decoded JSON value is a list of strings."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FormatError(f"{what} must be a list of strings")
    return list(value)
