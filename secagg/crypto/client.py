"""The encrypted update: weigh, check, lay out, encrypt, MAC-tag, frame, sign.

Wire form (a :mod:`secagg.crypto.wire` frame, always Ed25519-signed by the client)::

    header   fingerprint, preset, layout, spec (+ hash), round id, client id,
             roster (+ digest), the MAC tag (one integer per data prime)
    chunks   one per ciphertext: the 32-byte seed of c1, then c0 bit-packed

The MAC tag (:mod:`secagg.crypto._mac`) lets the key holder verify, before decrypting, that
an aggregate is exactly the sum of the claimed clients' ciphertexts of this round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigurationError, FormatError, UpdateValueError
from ._codec import pack_coefficients, packed_size
from ._mac import MacScope, RoundMac
from ._parallel import map_blocks
from ._seal import SEED_BYTES, CiphertextParts
from ._validate import (
    MAX_ROUND_ID,
    check_roster,
    check_round_id,
    check_weight,
    roster_digest,
)
from .keys import KeyMaterial
from .layout import FieldLayout, Layout, layout_for
from .presets import Preset
from .registry import SigningKey, check_client_id
from .spec import UpdateSpec, flatten_update
from .wire import MAGIC_UPDATE, field, pack_frame, unpack_frame

__all__ = ["EncryptedUpdate", "encrypt_update", "mac_scope"]

_TAG_BYTES = 8


def mac_scope(
    *,
    fingerprint: str,
    round_id: int,
    roster: Sequence[str],
    spec: UpdateSpec,
    layout: Layout,
) -> MacScope:
    """The MAC scope an update of this round, roster and layout belongs to."""
    return MacScope(
        fingerprint=fingerprint,
        round_id=round_id,
        roster_digest=roster_digest(roster),
        spec_hash=spec.spec_hash,
        num_chunks=layout.num_chunks(spec.numel),
        encoding=layout.name,
    )


@dataclass(frozen=True)
class EncryptedUpdate:
    """One client's encrypted, weighted update as it travels on the wire.

    Parse with :meth:`from_bytes` (structure only: cheap, no cryptography); the
    :class:`secagg.Aggregator` checks the signature and sums it.
    """

    fingerprint: str
    preset_name: str
    layout: str
    spec: UpdateSpec
    round_id: int
    client_id: str
    roster: tuple[str, ...]
    tag: tuple[int, ...]
    chunks: tuple[bytes, ...]
    signature: bytes
    signed_bytes: bytes

    @property
    def spec_hash(self) -> str:
        """SHA-256 of the update's layout."""
        return self.spec.spec_hash

    @property
    def seeds(self) -> bytes:
        """The chunks' 32-byte seeds, concatenated in chunk order."""
        return b"".join(c[:SEED_BYTES] for c in self.chunks)

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
        raw_roster = field(header, "roster", list)
        try:
            roster = check_roster(raw_roster)
            client_id = check_client_id(field(header, "client_id", str))
        except ConfigurationError as exc:
            raise FormatError(f"invalid roster or client id: {exc}") from None
        if client_id not in roster:
            raise FormatError(f"client {client_id!r} is not on the payload's own roster")
        if field(header, "roster_digest", str) != roster_digest(roster):
            raise FormatError("roster digest does not match the roster")
        round_id = field(header, "round_id", int)
        if not 0 <= round_id <= MAX_ROUND_ID:
            raise FormatError(f"round id {round_id} is outside [0, 2^63)")
        tag = field(header, "tag", list)
        if not tag or not all(type(t) is int and 0 <= t < 1 << 64 for t in tag):
            raise FormatError("the MAC tag must be a list of 64-bit integers")
        return cls(
            fingerprint=field(header, "fingerprint", str),
            preset_name=field(header, "preset", str),
            layout=field(header, "layout", str),
            spec=spec,
            round_id=round_id,
            client_id=client_id,
            roster=roster,
            tag=tuple(tag),
            chunks=frame.chunks,
            signature=frame.signature,
            signed_bytes=frame.signed_bytes,
        )


def encrypt_update(
    keys: KeyMaterial,
    update: Mapping[str, Any],
    *,
    signing_key: SigningKey,
    round_id: int,
    roster: Sequence[str],
    weight: float = 1.0,
    weight_bound: float = 1.0,
    workers: int | None = None,
) -> bytes:
    """Encrypt, MAC-tag and sign one client's update for the round's aggregate.

    Parameters
    ----------
    keys : KeyMaterial
        The federation's secret context (clients encrypt with the secret key).
    update : Mapping[str, numpy.ndarray or torch.Tensor]
        Floating-point arrays, e.g. local weights minus the global weights.
    signing_key : SigningKey
        This client's Ed25519 key; its client id names the contributor, and must be
        on ``roster``.
    round_id : int
        The round this update belongs to (in ``[0, 2^63)``).
    roster : sequence of str
        The round's participants, in the order the server published them.
    weight : float, optional
        The client's FedAvg weight, e.g. its number of local examples.
    weight_bound : float, optional
        A public upper bound on any client's weight; the encrypted weight is
        ``weight / weight_bound`` in ``(0, 1]``, so the server learns no weight.
    workers : int, optional
        Encryption processes; default: one per core (at most 8) for updates of 24 chunks
        or more on machines with 4 cores or more, else 1 (forking did not pay off on 2).

    Returns
    -------
    bytes
        The framed, MAC-tagged, signed payload.

    Raises
    ------
    UpdateValueError
        On an empty or non-floating update, non-finite values, a weight that is not
        a real number in range, or values that could overflow the preset's headroom
        once summed (the message names the bound; nothing is clipped).
    ConfigurationError
        On an invalid key, signing key, round id or roster.
    """
    if not isinstance(keys, KeyMaterial):
        raise ConfigurationError(
            f"keys must be the federation's KeyMaterial, got {type(keys).__name__}"
        )
    if not isinstance(signing_key, SigningKey):
        raise ConfigurationError(
            f"signing_key must be a secagg SigningKey, got {type(signing_key).__name__}"
        )
    preset = keys.preset
    round_id = check_round_id(round_id)
    roster = check_roster(roster, max_clients=preset.max_clients)
    client_id = signing_key.client_id
    if client_id not in roster:
        raise ConfigurationError(f"client {client_id!r} is not on the round's roster")
    weight, weight_bound = check_weight(weight, weight_bound)
    weighted, spec = flatten_update(update)  # a fresh vector: weighted in place below
    normalised = weight / weight_bound
    weighted *= normalised
    _check_values(weighted, preset)
    layout = layout_for(preset)
    mac = RoundMac(
        keys.mac_key,
        mac_scope(
            fingerprint=keys.fingerprint, round_id=round_id, roster=roster, spec=spec, layout=layout
        ),
        keys.moduli,
        preset.poly_modulus_degree,
    )
    bits = preset.data_prime_bits[0]
    session = keys.session

    def chunk(index: int, parts: CiphertextParts) -> bytes:
        terms = b"".join(t.to_bytes(_TAG_BYTES, "big") for t in mac.chunk_terms(index, parts.c0))
        return terms + parts.seed + pack_coefficients(parts.c0, bits)

    def encrypt_slots(start: int, block: np.ndarray) -> list[bytes]:
        return [chunk(start + i, p) for i, p in enumerate(session.encrypt_slots(block))]

    def encrypt_fields(start: int, block: np.ndarray) -> list[bytes]:
        parts = session.encrypt_coefficients(block)
        return [chunk(start + i, p) for i, p in enumerate(parts)]

    if isinstance(layout, FieldLayout):
        matrix = layout.rows(layout.quantize(weighted, normalised))
        results = map_blocks(encrypt_fields, matrix, workers)
    else:
        matrix = layout.rows(weighted, normalised)
        results = map_blocks(encrypt_slots, matrix, workers)
    width = _TAG_BYTES * len(keys.moduli)
    chunks = [r[width:] for r in results]
    terms = [
        [int.from_bytes(r[i : i + _TAG_BYTES], "big") for i in range(0, width, _TAG_BYTES)]
        for r in results
    ]
    seeds = b"".join(c[:SEED_BYTES] for c in chunks)
    header = {
        "fingerprint": keys.fingerprint,
        "preset": preset.name,
        "layout": layout.name,
        "spec": spec.to_json(),
        "spec_hash": spec.spec_hash,
        "round_id": round_id,
        "client_id": client_id,
        "roster": list(roster),
        "roster_digest": roster_digest(roster),
        "tag": list(mac.tag(client_id, terms, seeds)),
    }
    payload = pack_frame(MAGIC_UPDATE, header, chunks, signed=True)
    return payload + signing_key.sign(payload)


def chunk_size(preset: Preset) -> int:
    """Bytes of one update chunk on the wire (seed + packed ``c0``)."""
    return SEED_BYTES + packed_size(
        preset.poly_modulus_degree * len(preset.data_prime_bits), preset.data_prime_bits[0]
    )


def _check_values(weighted: np.ndarray, preset: Preset) -> None:
    if not np.isfinite(weighted).all():
        bad = int(np.count_nonzero(~np.isfinite(weighted)))
        raise UpdateValueError(f"update holds {bad} non-finite values (NaN or inf)")
    peak = float(np.abs(weighted).max(initial=0.0))
    bound = preset.max_client_magnitude
    if peak > bound:
        where = (
            f"exact preset {preset.name!r} encodes |weight × value| <= {bound:g}"
            if preset.exact
            else f"preset {preset.name!r}: aggregate headroom "
            f"{preset.max_aggregate_magnitude:g} shared by up to {preset.max_clients} clients"
        )
        raise UpdateValueError(
            f"weighted update value {peak:.4g} exceeds the per-client bound {bound:.4g} "
            f"({where}); nothing was clipped: scale the update down, or use a preset with "
            "more range such as 'approx' (±8) or 'wide' (±2048)"
        )
