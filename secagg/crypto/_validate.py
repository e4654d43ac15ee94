"""Argument checks shared by the client, server and key-holder entry points.

Each raises a typed :mod:`secagg.errors` exception (a ``ValueError`` subclass) with a
message that names the argument, for any input of the wrong type or range.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Sequence

from ..errors import ConfigurationError, UpdateValueError
from .registry import check_client_id

__all__ = [
    "MAX_ROUND_ID",
    "check_count",
    "check_roster",
    "check_round_id",
    "check_weight",
    "roster_digest",
]

# Round ids are non-negative 63-bit integers.
MAX_ROUND_ID = (1 << 63) - 1


def check_round_id(round_id: object, name: str = "round_id") -> int:
    """Return ``round_id`` if it is an int in ``[0, 2^63)``, else raise ConfigurationError."""
    if isinstance(round_id, bool) or not isinstance(round_id, int):
        raise ConfigurationError(f"{name} must be an int, got {round_id!r:.60}")
    if not 0 <= round_id <= MAX_ROUND_ID:
        raise ConfigurationError(f"{name} must be in [0, 2^63), got {round_id}")
    return round_id


def check_count(value: object, name: str, *, low: int = 1, high: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[low, high]``, else raise ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an int, got {value!r:.60}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigurationError(f"{name} must be {bound}, got {value}")
    return value


def check_roster(roster: object, *, max_clients: int | None = None) -> tuple[str, ...]:
    """Return the roster as a tuple of distinct, valid client ids.

    Raises
    ------
    ConfigurationError
        If ``roster`` is not a sequence (a string is refused), is empty, holds
        something that is not a valid client id, repeats one, or is longer than
        ``max_clients``.
    """
    if isinstance(roster, str | bytes) or not isinstance(roster, Sequence):
        raise ConfigurationError(
            f"roster must be a sequence of client ids, got {type(roster).__name__}"
        )
    ids = tuple(roster)
    if not ids:
        raise ConfigurationError("roster must not be empty")
    for cid in ids:
        check_client_id(cid)
    if len(set(ids)) != len(ids):
        raise ConfigurationError("roster repeats a client id")
    if max_clients is not None and len(ids) > max_clients:
        raise ConfigurationError(
            f"a roster of {len(ids)} clients exceeds the preset's {max_clients} clients per "
            "aggregate (use preset 'large' for more)"
        )
    return ids


def roster_digest(roster: Sequence[str]) -> str:
    """SHA-256 (hex) of a round's roster, in order."""
    return hashlib.sha256(json.dumps(list(roster), separators=(",", ":")).encode()).hexdigest()


def check_weight(weight: object, weight_bound: object) -> tuple[float, float]:
    """Return ``(weight, weight_bound)`` as floats with ``0 < weight <= weight_bound``.

    Raises
    ------
    UpdateValueError
        If either is not a real number (strings, ``None``, complex and booleans are
        refused), is not finite (``10**400`` included), or the range does not hold.
    """
    values = []
    for name, value in (("weight", weight), ("weight_bound", weight_bound)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UpdateValueError(f"{name} must be a real number, got {value!r:.60}")
        try:
            number = float(value)
        except (OverflowError, ValueError):
            raise UpdateValueError(f"{name} {value!r:.40} is not a finite float") from None
        if not math.isfinite(number):
            raise UpdateValueError(f"{name} must be finite, got {value!r:.40}")
        values.append(number)
    weight_f, bound_f = values
    if bound_f <= 0:
        raise UpdateValueError(f"weight_bound must be positive, got {bound_f}")
    if not 0 < weight_f <= bound_f:
        raise UpdateValueError(
            f"weight {weight_f} is outside (0, weight_bound={bound_f}]; pass a public "
            "weight_bound at least as large as every client's weight"
        )
    return weight_f, bound_f
