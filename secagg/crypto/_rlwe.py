"""Internal: seeded secret-key RLWE encryption in SEAL's NTT domain, computed with numpy.

A client holds the secret key ``s`` (SEAL's ternary secret, read in SEAL's NTT form).
For a plaintext polynomial whose NTT (over ``m + e``) the caller has computed, it makes
the ciphertext SEAL's symmetric encryption makes::

    c1 = expand(seed)                    uniform in R_q, NTT form, from a fresh 32-byte seed
    c0 = NTT(m + e) - c1 · s   (mod q)   e from SEAL's error distribution

and SEAL's own ``Decryptor`` (``c0 + c1 · s``) gives back ``NTT(m + e)``.

- **The error** ``e`` is SEAL's default sampler, a centred binomial of 21 coin pairs
  (standard deviation ``sqrt(10.5) ≈ 3.24``, ``|e| <= 21``), drawn from the OS CSPRNG
  (:mod:`secagg._random`) afresh for every ciphertext.
- **The expansion** keys AES-256-CTR with the seed (the counter block starts at the
  data prime's index), reads little-endian 64-bit words, keeps each word's low
  ``bit_length(q)`` bits and rejects values ``>= q``: the first ``N`` accepted values are
  the residues of ``c1`` modulo that prime. SEAL itself expands ``c1`` from a seed with a
  PRG (Blake2xb); the seed's secrecy is not needed, only that ``c1`` is uniform and
  chosen by nobody.
- **The product** ``c1 · s`` is pointwise in the NTT domain: Shoup's modular
  multiplication by the fixed ``s`` with a precomputed ``floor(s · 2^64 / q)``, its
  128-bit high half assembled from 32-bit limbs, every step exact in ``uint64``.

This replaces SEAL's ``encrypt_zero_symmetric`` (and the compressed file round trip
``tenseal.sealapi`` forces on every ciphertext) with a few vector operations; the
tests check the result against SEAL's decryptor and the sampler's distribution.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .._random import secure_bits64

__all__ = [
    "ERROR_BOUND",
    "SEED_BYTES",
    "CiphertextParts",
    "SecretKeyEncryptor",
    "add_mod",
    "expand_c1",
    "reduce_once",
    "sample_error",
]

SEED_BYTES = 32
#: The largest ``|e|`` of the error sampler (21 coin pairs).
ERROR_BOUND = 21
_CBD_MASK = np.uint64((1 << ERROR_BOUND) - 1)
_LOW32 = np.uint64(0xFFFFFFFF)
_THIRTY_TWO = np.uint64(32)


@dataclass(frozen=True)
class CiphertextParts:
    """What defines one seeded ciphertext.

    Attributes
    ----------
    c0 : numpy.ndarray
        ``uint64`` of shape ``(L·N,)``: the first polynomial in NTT form, residues
        modulo each of the ``L`` data primes in turn, every one below its prime.
    seed : bytes
        The 32-byte seed :func:`expand_c1` expands into the second polynomial ``c1``.
    """

    c0: np.ndarray
    seed: bytes


def _uniform_below(seed: bytes, prime_index: int, q: int, count: int) -> np.ndarray:
    """The first ``count`` accepted values of the seed's stream for one prime (see above)."""
    nonce = prime_index.to_bytes(8, "big") + bytes(8)
    stream = Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor()
    mask = np.uint64((1 << q.bit_length()) - 1)
    bound = np.uint64(q)
    words = np.frombuffer(stream.update(bytes(8 * count)), dtype="<u8") & mask
    if bool((words < bound).all()):
        return words
    accepted = words[words < bound]
    while accepted.size < count:  # rejection: more words from the same stream
        more = np.frombuffer(stream.update(bytes(8 * count)), dtype="<u8") & mask
        accepted = np.concatenate([accepted, more[more < bound]])
    return accepted[:count]


def expand_c1(seed: bytes, moduli: Sequence[int], degree: int) -> np.ndarray:
    """The second polynomial (NTT form, ``uint64`` of shape ``(L·N,)``) a seed defines.

    Raises
    ------
    ValueError
        If ``seed`` is not :data:`SEED_BYTES` bytes.
    """
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ValueError(f"a c1 seed is {SEED_BYTES} bytes")
    return np.concatenate([_uniform_below(seed, i, int(q), degree) for i, q in enumerate(moduli)])


def sample_error(rows: int, degree: int) -> np.ndarray:
    """``rows`` fresh error polynomials (``int64``, shape ``(rows, N)``, ``|e| <= 21``)."""
    words = secure_bits64(rows * degree).reshape(rows, degree)
    plus = np.bitwise_count(words & _CBD_MASK).astype(np.int64)
    minus = np.bitwise_count((words >> np.uint64(ERROR_BOUND)) & _CBD_MASK).astype(np.int64)
    error: np.ndarray = plus - minus
    return error


def reduce_once(values: np.ndarray, column: np.ndarray) -> np.ndarray:
    """``values - q`` where ``values >= q``, in place (``values < 2q``; branch-free).

    In unsigned arithmetic ``v - q`` wraps above ``v`` exactly when ``v < q``, so the
    smaller of the two is the reduced value.
    """
    np.minimum(values, values - column, out=values)
    return values


def add_mod(total: np.ndarray, addend: np.ndarray, column: np.ndarray) -> np.ndarray:
    """``total = (total + addend) mod q`` in place, both reduced (``q < 2^63``)."""
    total += addend
    return reduce_once(total, column)


class SecretKeyEncryptor:
    """Seeded symmetric encryption under one secret key (see the module docstring).

    Parameters
    ----------
    secret_ntt : numpy.ndarray
        The secret key's residues modulo each data prime in SEAL's NTT form,
        ``uint64`` of shape ``(L·N,)``.
    moduli : sequence of int
        The data primes (each below ``2^61``).
    degree : int
        Ring degree ``N``.
    """

    #: Rows per vector operation: small enough for the temporaries to stay in cache.
    block_rows = 4

    def __init__(self, secret_ntt: np.ndarray, moduli: Sequence[int], degree: int) -> None:
        self.moduli = tuple(int(q) for q in moduli)
        self.degree = int(degree)
        if any(q.bit_length() > 61 for q in self.moduli):
            raise ValueError("data primes must be below 2^61")
        secret = np.ascontiguousarray(secret_ntt, dtype=np.uint64)
        if secret.shape != (self.degree * len(self.moduli),):
            raise ValueError("the secret key does not match the moduli and degree")
        self.column = np.repeat(np.asarray(self.moduli, dtype=np.uint64), self.degree)
        if bool((secret >= self.column).any()):
            raise ValueError("a secret-key residue is not below its prime")
        self._secret = secret
        self._twice = 2 * self.column
        # Shoup's precomputed quotients floor(s · 2^64 / q), exact in Python integers,
        # split into 32-bit halves.
        shoup = np.array(
            [(int(s) << 64) // int(q) for s, q in zip(secret, self.column, strict=True)],
            dtype=np.uint64,
        )
        self._shoup_low = shoup & _LOW32
        self._shoup_high = shoup >> _THIRTY_TWO

    def times_secret(self, polys: np.ndarray) -> np.ndarray:
        """``polys · s  (mod q)`` for NTT-form rows of reduced residues.

        Shoup's product ``a·s - floor(a·s'/2^64)·q`` lies in ``[0, 2q)``. The quotient
        is estimated from the three high 32-bit partial products, dropping the carries
        of the low halves, which makes it at most 2 too small: the product then lies in
        ``[0, 4q)`` (below ``2^63``, so exact modulo ``2^64``) and two branch-free
        conditional subtractions reduce it.
        """
        out = np.empty_like(polys)
        for start in range(0, polys.shape[0], self.block_rows):
            rows = polys[start : start + self.block_rows]
            low, high = rows & _LOW32, rows >> _THIRTY_TWO
            estimate = high * self._shoup_high
            partial = high * self._shoup_low
            partial >>= _THIRTY_TWO
            estimate += partial
            np.multiply(low, self._shoup_high, out=partial)
            partial >>= _THIRTY_TWO
            estimate += partial
            estimate *= self.column
            product = rows * self._secret
            product -= estimate
            np.minimum(product, product - self._twice, out=product)
            np.minimum(product, product - self.column, out=out[start : start + self.block_rows])
        return out

    def add_error(self, messages: np.ndarray) -> np.ndarray:
        """``m + e (mod q)`` for coefficient-form rows of reduced residues, fresh errors ``e``."""
        error = sample_error(messages.shape[0], self.degree).astype(np.uint64)  # wraps e < 0
        noisy = messages + np.tile(error, len(self.moduli))
        noisy += self.column  # m + e + q in [q - 21, 2q + 21)
        reduce_once(noisy, self.column)
        return reduce_once(noisy, self.column)

    def error_residues(self, rows: int) -> np.ndarray:
        """``rows`` fresh error polynomials as coefficient-form residues modulo each prime."""
        return self.add_error(np.zeros((rows, self.column.size), dtype=np.uint64))

    def encrypt_ntt(self, noisy_ntt: np.ndarray) -> list[CiphertextParts]:
        """Encrypt rows that already hold ``NTT(m + e)`` (reduced): one seeded ciphertext each."""
        rows = noisy_ntt.shape[0]
        seeds = [os.urandom(SEED_BYTES) for _ in range(rows)]
        c1 = np.empty_like(noisy_ntt)
        for row, seed in zip(c1, seeds, strict=True):
            row[:] = expand_c1(seed, self.moduli, self.degree)
        c0 = noisy_ntt - self.times_secret(c1)  # wraps (above q) exactly where it is negative
        np.minimum(c0, c0 + self.column, out=c0)
        return [CiphertextParts(c0=row, seed=seed) for row, seed in zip(c0, seeds, strict=True)]
