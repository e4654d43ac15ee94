"""Slot layout of a ciphertext chunk, shared by clients (encode) and the key holder (check).

Every chunk of ``N`` reals starts with a header region::

    [0, R)   contribution roster: 1 at the client's roster position, else 0
    R        the client's normalised weight, in (0, 1]
    R + 1    round tag: a 30-bit value derived from the round id, in [0, 1)
    R + 2    chunk tag: (chunk index + 1) / 2^24

A decrypted honest sum of ``k`` updates therefore reads, in every chunk, the same
0/1 roster, the same weight sum, ``k × round tag`` and ``k × chunk tag``: chunks of
different sums, rounds or positions cannot be mixed without the key holder noticing.
"""

from __future__ import annotations

import hashlib

from .errors import FormatError

__all__ = ["CHUNK_TAG_SCALE", "MAX_ROUND_ID", "chunk_tag", "round_tag"]

CHUNK_TAG_SCALE = float(1 << 24)
# Round ids are non-negative 63-bit integers (they are hashed as 8 bytes).
MAX_ROUND_ID = (1 << 63) - 1


def round_tag(round_id: int) -> float:
    """A value in [0, 1) with 30 bits derived from ``round_id`` by SHA-256.

    Raises
    ------
    FormatError
        If ``round_id`` is outside ``[0, MAX_ROUND_ID]``.
    """
    if not 0 <= round_id <= MAX_ROUND_ID:
        raise FormatError(f"round id {round_id} is outside [0, 2^63)")
    digest = hashlib.sha256(b"secagg-round-tag-v1\x00" + round_id.to_bytes(8, "big")).digest()
    return (int.from_bytes(digest[:4], "big") >> 2) / float(1 << 30)


def chunk_tag(index: int) -> float:
    """The tag of chunk ``index`` (0-based)."""
    return (index + 1) / CHUNK_TAG_SCALE
