"""Randomness that protects privacy, from the operating system's CSPRNG.

Gaussian noise (DP, flooding), rounding bits and encryption errors. Every draw keys a
fresh AES-256-CTR stream with 32 bytes from ``os.urandom`` (a CSPRNG seeded by the OS;
nothing anyone else knows, no global state). Raw words serve as bits; for normals the
stream becomes 53-bit uniforms and those normals by Box–Muller. Each returned value is the
sum of four independent normals divided by two (still ``N(0, 1)``), the defence
against floating-point attacks on Gaussian sampling that Opacus's ``secure_mode``
uses (Holohan and Braghin 2021, section 5.1).

Run seeds never reach this module: they make partitions, client sampling and batch
order reproducible, and nothing else.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["secure_bits32", "secure_bits64", "secure_normal", "secure_seed", "secure_uniform"]

_SUMMANDS = 4


def _stream_bytes(size: int) -> bytes:
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    return encryptor.update(bytes(size)) + encryptor.finalize()


def secure_uniform(size: int) -> np.ndarray:
    """``size`` uniforms in ``[0, 1)`` with 53 random bits each, from the OS CSPRNG."""
    words = np.frombuffer(_stream_bytes(8 * size), dtype="<u8")
    return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53


def secure_bits32(size: int) -> np.ndarray:
    """``size`` uniform 32-bit words (``uint32``) from the OS CSPRNG."""
    return np.frombuffer(_stream_bytes(4 * size), dtype="<u4")


def secure_bits64(size: int) -> np.ndarray:
    """``size`` uniform 64-bit words (``uint64``) from the OS CSPRNG."""
    return np.frombuffer(_stream_bytes(8 * size), dtype="<u8")


def secure_normal(size: int) -> np.ndarray:
    """``size`` standard normals from the OS CSPRNG (hardened: see the module docstring)."""
    if size < 0:
        raise ValueError("size must be non-negative")
    count = _SUMMANDS * size
    half = (count + 1) // 2
    uniforms = secure_uniform(2 * half).reshape(2, half)
    radius = np.sqrt(-2.0 * np.log1p(-uniforms[0]))  # 1 - u in (0, 1]
    angle = 2.0 * np.pi * uniforms[1]
    normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]
    summed: np.ndarray = normals.reshape(_SUMMANDS, size).sum(axis=0) / np.sqrt(_SUMMANDS)
    return summed


def secure_seed() -> int:
    """A 63-bit seed from the OS CSPRNG, for a generator used once (one round's sampling)."""
    return int.from_bytes(os.urandom(8), "big") >> 1
