"""Bit-packing of ciphertext coefficients: ``bits`` bits each instead of 64.

A coefficient modulo a 60-bit prime fits in 60 bits, so 16 coefficients take 15
``uint64`` words (7.5 bytes each) instead of 16. Values are packed little-endian in
groups of ``G = 64 / gcd(bits, 64)`` coefficients, which fill a whole number of words.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import FormatError

__all__ = ["pack_coefficients", "packed_size", "unpack_coefficients"]


def _group(bits: int) -> tuple[int, int]:
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in [1, 64], got {bits}")
    group = 64 // math.gcd(bits, 64)
    return group, group * bits // 64


def packed_size(count: int, bits: int) -> int:
    """Bytes that :func:`pack_coefficients` writes for ``count`` coefficients.

    Raises
    ------
    ValueError
        If ``count`` is not a multiple of the packing group.
    """
    group, words = _group(bits)
    if count % group:
        raise ValueError(f"{count} coefficients are not a multiple of the group of {group}")
    return count // group * words * 8


def _pairwise(bits: int) -> bool:
    """Whether two values fill a whole number of bytes past one word (the fast path)."""
    return 32 < bits < 64 and bits % 4 == 0


def _words(buffer: bytes | bytearray, offset: int, stride: int, count: int) -> np.ndarray:
    """``count`` little-endian 64-bit words at ``offset``, ``stride`` bytes apart (a view)."""
    return np.ndarray((count,), dtype="<u8", buffer=buffer, offset=offset, strides=(stride,))


def pack_coefficients(values: np.ndarray, bits: int) -> bytes:
    """Pack ``uint64`` values, each below ``2**bits``, into ``bits`` bits apiece."""
    group, words = _group(bits)
    if _pairwise(bits):
        # Two values make a record of bits/4 bytes: one 64-bit word, then the rest of
        # the second value. Both are written as (unaligned) 64-bit words; the second
        # overlaps the first by 16 - bits/4 bytes, which both write alike.
        x = np.ascontiguousarray(values, dtype="<u8")
        low, high = x[0::2], x[1::2]
        first = low | (high << np.uint64(bits))
        record = bits // 4
        second = (first >> np.uint64(8 * (record - 8))) | (
            (high >> np.uint64(64 - bits)) << np.uint64(8 * (16 - record))
        )
        buffer = bytearray(record * low.size)
        _words(buffer, 0, record, low.size)[:] = first
        _words(buffer, record - 8, record, low.size)[:] = second
        return bytes(buffer)
    x = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1, group)
    out = np.zeros((x.shape[0], words), dtype=np.uint64)
    for i in range(group):
        word, shift = divmod(i * bits, 64)
        out[:, word] |= x[:, i] << np.uint64(shift)
        if shift + bits > 64:
            out[:, word + 1] |= x[:, i] >> np.uint64(64 - shift)
    packed: bytes = out.astype("<u8", copy=False).tobytes()
    return packed


def unpack_coefficients(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_coefficients`.

    Raises
    ------
    FormatError
        If ``data`` is not exactly ``packed_size(count, bits)`` bytes.
    """
    group, words = _group(bits)
    if len(data) != packed_size(count, bits):
        raise FormatError(f"{len(data)} bytes cannot hold {count} packed coefficients")
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(0xFFFF_FFFF_FFFF_FFFF)
    if _pairwise(bits):
        record = bits // 4
        first = _words(data, 0, record, count // 2).copy()
        rest = _words(data, record - 8, record, count // 2) >> np.uint64(8 * (16 - record))
        pairs = np.empty((count // 2, 2), dtype=np.uint64)
        pairs[:, 0] = first & mask
        pairs[:, 1] = (first >> np.uint64(bits)) | (rest << np.uint64(64 - bits))
        return pairs.reshape(-1)
    packed = np.frombuffer(data, dtype="<u8").reshape(-1, words)
    out = np.empty((packed.shape[0], group), dtype=np.uint64)
    for i in range(group):
        word, shift = divmod(i * bits, 64)
        value = packed[:, word] >> np.uint64(shift)
        if shift + bits > 64:
            value = value | (packed[:, word + 1] << np.uint64(64 - shift))
        out[:, i] = value & mask
    return out.reshape(-1)
