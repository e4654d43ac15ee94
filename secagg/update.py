"""The encrypted update: encode, check, pack into CKKS slots, encrypt, frame, sign.

Slot layout of every ciphertext chunk (``N`` reals, two per complex slot)::

    [0, R)        contribution roster: 1 at this client's roster position, else 0
    R             the client's normalised weight w = weight / weight_bound
    R+1, R+2      round tag and chunk tag (see :mod:`secagg._slots`)
    [R+3, N)      the next N-R-3 values of w · update (zero-padded in the last chunk)

Every chunk carries the roster, the weight and the tags, so the key holder can prove
that a decrypted sum adds each client at most once and that all its chunks come from
one sum of one round, in order.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ._parallel import encrypt_rows
from ._slots import CHUNK_TAG_SCALE, MAX_ROUND_ID, round_tag
from .errors import ConfigurationError, FormatError, UpdateValueError
from .presets import Preset
from .spec import UpdateSpec, flatten_update
from .wire import MAGIC_UPDATE, field, pack_frame, unpack_frame

if TYPE_CHECKING:
    from .keys import KeyHolder

__all__ = ["EncryptedUpdate", "encrypt_update", "roster_digest"]

_MAX_CLIENT_ID_LENGTH = 256


@dataclass(frozen=True)
class EncryptedUpdate:
    """One client's encrypted, weighted update as it travels on the wire.

    Parse with :meth:`from_bytes` (structure only: cheap, no SEAL); the ciphertexts
    are loaded and summed by :class:`secagg.Aggregator` or
    :class:`secagg.EncryptedAggregate`.
    """

    fingerprint: str
    spec: UpdateSpec
    round_id: int
    client_id: str
    roster: tuple[str, ...]
    preset_name: str
    chunks: tuple[bytes, ...]
    signature: bytes
    signed_bytes: bytes

    @property
    def spec_hash(self) -> str:
        """SHA-256 of the update's layout."""
        return self.spec.spec_hash

    @property
    def position(self) -> int:
        """This client's roster position."""
        return self.roster.index(self.client_id)

    @property
    def is_signed(self) -> bool:
        """Whether the payload carries an Ed25519 signature."""
        return bool(self.signature)

    def to_bytes(self) -> bytes:
        """Serialize (the exact bytes it was parsed from or made as)."""
        return self.signed_bytes + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedUpdate:
        """Parse and validate an update payload's frame and header.

        Raises
        ------
        FormatError
            If the bytes are malformed, truncated, foreign or inconsistent.
        """
        frame = unpack_frame(data, MAGIC_UPDATE, max_chunk_bytes=1 << 22)
        header = frame.header
        spec = UpdateSpec.from_json(header.get("spec"))
        if field(header, "spec_hash", str) != spec.spec_hash:
            raise FormatError("spec hash does not match the spec carried in the header")
        roster = field(header, "roster", list)
        client_id = field(header, "client_id", str)
        if not all(isinstance(c, str) for c in roster) or len(set(roster)) != len(roster):
            raise FormatError("roster must be a list of distinct client ids")
        if client_id not in roster:
            raise FormatError(f"client {client_id!r} is not on the payload's own roster")
        if field(header, "roster_digest", str) != roster_digest(roster):
            raise FormatError("roster digest does not match the roster")
        round_id = field(header, "round_id", int)
        if not 0 <= round_id <= MAX_ROUND_ID:
            raise FormatError(f"round id {round_id} is outside [0, 2^63)")
        return cls(
            fingerprint=field(header, "fingerprint", str),
            spec=spec,
            round_id=round_id,
            client_id=client_id,
            roster=tuple(roster),
            preset_name=field(header, "preset", str),
            chunks=frame.chunks,
            signature=frame.signature,
            signed_bytes=frame.signed_bytes,
        )


def roster_digest(roster: Sequence[str]) -> str:
    """SHA-256 (hex) of a round's roster, in order."""
    return hashlib.sha256(json.dumps(list(roster), separators=(",", ":")).encode()).hexdigest()


def encrypt_update(
    keys: KeyHolder,
    update: Mapping[str, torch.Tensor],
    *,
    round_id: int,
    client_id: str,
    roster: Sequence[str],
    weight: float = 1.0,
    weight_bound: float = 1.0,
    signing_key: Ed25519PrivateKey | None = None,
    workers: int | None = None,
) -> bytes:
    """Encrypt one client's update for the round's aggregate.

    Parameters
    ----------
    keys : KeyHolder
        The federation's secret context (clients encrypt with the secret key).
    update : Mapping[str, torch.Tensor]
        Floating-point tensors, e.g. local weights minus the global weights.
    round_id : int
        The round this update belongs to (non-negative).
    client_id : str
        This client's id; it must be on ``roster``.
    roster : sequence of str
        The round's participants, in the order the server published them; each
        client marks its own position in every chunk's contribution roster.
    weight : float, optional
        The client's FedAvg weight, e.g. its number of local examples.
    weight_bound : float, optional
        A public upper bound on any client's weight; the encrypted weight is
        ``weight / weight_bound`` in ``(0, 1]``, so the server learns no weight.
    signing_key : Ed25519PrivateKey, optional
        Signs the header and ciphertexts so the aggregator can authenticate them.
    workers : int, optional
        Encryption processes; default: up to the CPU count for large updates, else 1.

    Returns
    -------
    bytes
        The framed, optionally signed, payload.

    Raises
    ------
    UpdateValueError
        On non-finite values, a weight out of range, or values that could overflow
        the preset's headroom once summed (the message names the bound).
    ConfigurationError
        On an invalid round id, client id or roster.
    """
    preset = keys.preset
    _check_round_args(preset, round_id=round_id, client_id=client_id, roster=roster)
    if not (math.isfinite(weight) and math.isfinite(weight_bound)) or weight_bound <= 0:
        raise UpdateValueError("weight and weight_bound must be finite, weight_bound > 0")
    if not 0 < weight <= weight_bound:
        raise UpdateValueError(
            f"weight {weight} is outside (0, weight_bound={weight_bound}]; pass a public "
            "weight_bound at least as large as every client's weight"
        )
    weighted, spec = flatten_update(update)  # a fresh vector: weighted in place below
    normalised = weight / weight_bound
    weighted *= normalised
    _check_values(weighted, preset)
    matrix = _layout(weighted, normalised, roster.index(client_id), preset, round_id)
    chunks = encrypt_rows(keys.session, matrix, workers)
    header = {
        "kind": "update",
        "fingerprint": keys.fingerprint,
        "preset": preset.name,
        "spec": spec.to_json(),
        "spec_hash": spec.spec_hash,
        "round_id": round_id,
        "client_id": client_id,
        "roster": list(roster),
        "roster_digest": roster_digest(roster),
        "num_values": spec.numel,
    }
    payload = pack_frame(MAGIC_UPDATE, header, chunks, signed=signing_key is not None)
    if signing_key is not None:
        payload += signing_key.sign(payload)
    return payload


def _check_round_args(
    preset: Preset, *, round_id: int, client_id: str, roster: Sequence[str]
) -> None:
    if not isinstance(round_id, int) or isinstance(round_id, bool):
        raise ConfigurationError(f"round_id must be an int, got {round_id!r}")
    if not 0 <= round_id <= MAX_ROUND_ID:
        raise ConfigurationError(f"round_id must be in [0, 2^63), got {round_id}")
    if not isinstance(client_id, str) or not 0 < len(client_id) <= _MAX_CLIENT_ID_LENGTH:
        raise ConfigurationError("client_id must be a non-empty string of at most 256 chars")
    roster = list(roster)
    if len(set(roster)) != len(roster):
        raise ConfigurationError("roster repeats a client id")
    if len(roster) > preset.roster_slots:
        raise ConfigurationError(
            f"roster of {len(roster)} clients exceeds the preset's {preset.roster_slots} "
            f"roster slots (preset {preset.name!r}; use preset 'large' for more)"
        )
    if client_id not in roster:
        raise ConfigurationError(f"client {client_id!r} is not on the round's roster")


def _check_values(weighted: np.ndarray, preset: Preset) -> None:
    if not np.isfinite(weighted).all():
        bad = int(np.count_nonzero(~np.isfinite(weighted)))
        raise UpdateValueError(f"update holds {bad} non-finite values (NaN or inf)")
    peak = float(np.abs(weighted).max(initial=0.0))
    bound = preset.max_client_magnitude
    if peak > bound:
        raise UpdateValueError(
            f"weighted update value {peak:.4g} exceeds the per-client bound {bound:.4g} "
            f"(preset {preset.name!r}: aggregate headroom {preset.max_aggregate_magnitude:g} "
            f"shared by up to {preset.max_clients} clients); nothing was clipped: scale the "
            "update down, or use a preset with more headroom such as 'wide'"
        )


def _layout(
    weighted: np.ndarray, weight: float, position: int, preset: Preset, round_id: int
) -> np.ndarray:
    """All chunks' slots, one row each (built before forking: children only read it)."""
    per_chunk = preset.values_per_chunk
    num_chunks = max(1, -(-weighted.size // per_chunk))
    matrix = np.zeros((num_chunks, preset.slots), dtype=np.float64)
    r = preset.roster_slots
    matrix[:, position] = 1.0
    matrix[:, r] = weight
    matrix[:, r + 1] = round_tag(round_id)
    matrix[:, r + 2] = np.arange(1, num_chunks + 1) / CHUNK_TAG_SCALE
    for index in range(num_chunks):
        values = weighted[index * per_chunk : (index + 1) * per_chunk]
        matrix[index, preset.header_slots : preset.header_slots + values.size] = values
    return matrix
