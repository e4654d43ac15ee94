"""One-time linear MACs on ciphertexts, so the key holder verifies a sum before decrypting it.

A linearly homomorphic MAC over ``Z_q`` (Agrawal and Boneh, ACNS 2009), with one-time
pads so that no tag reveals anything about the MAC key. For one *scope* (key
fingerprint, round, roster, update layout, encoding) the shared MAC key derives

- for chunk ``i`` a vector ``a_i`` of ``L·N`` uniform 64-bit words (AES-256-CTR), and
- for each contribution a pad ``u = PRF(client id, SHA-256 of its seeds)`` in ``Z_q``.

A client's tag is ``T = Σ_i <a_i, c0_i> + u  (mod q)`` for each data prime ``q``.
Tags add like ciphertexts. For an aggregate claiming contributors ``S``, with
first polynomials ``C0_i`` and the contributors' seeds, the key holder accepts only if
``T = Σ_i <a_i, C0_i> + Σ_{j∈S} u_j``.

Every tag the server sees is masked by a pad used once (pads are bound to the fresh
ciphertext seeds), so its view is independent of the ``a_i``. A forged aggregate
differs from ``Σ_{j∈S} c0_j`` by some non-zero ``V`` (or swaps a seed, which draws a
fresh pad); it passes only if ``<a, V>`` hits one value modulo ``q``, which a uniform
64-bit word does with probability at most ``⌈2^64/q⌉ / 2^64 < 2^-59`` for a 60-bit
prime. See ``docs/THREAT_MODEL.md`` for the argument and its assumptions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["MAC_KEY_BYTES", "MacScope", "RoundMac"]

MAC_KEY_BYTES = 32
_LIMB_WEIGHTS = [[1 << (16 * (k + m)) for m in range(4)] for k in range(4)]


@dataclass(frozen=True)
class MacScope:
    """Everything one aggregation binds: a sum is valid only within one scope.

    Attributes
    ----------
    fingerprint : str
        Key fingerprint.
    round_id : int
        The aggregation round.
    roster_digest : str
        SHA-256 of the round's roster.
    spec_hash : str
        SHA-256 of the update layout.
    num_chunks : int
        Ciphertext chunks per update.
    encoding : str
        Canonical description of how values are encoded in the slots.
    """

    fingerprint: str
    round_id: int
    roster_digest: str
    spec_hash: str
    num_chunks: int
    encoding: str

    def digest(self) -> bytes:
        """SHA-256 over the canonical JSON of the scope, domain-separated."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(b"secagg-mac-scope-v1\x00" + canonical.encode()).digest()


class RoundMac:
    """The one-time MAC of one scope (see the module docstring).

    Parameters
    ----------
    mac_key : bytes
        The federation's 32-byte MAC key (clients and key holder only).
    scope : MacScope
        What the MAC binds.
    moduli : sequence of int
        The ciphertext's data primes, in the order of ``c0``'s residues.
    degree : int
        Ring degree ``N``.
    """

    def __init__(self, mac_key: bytes, scope: MacScope, moduli: Sequence[int], degree: int) -> None:
        root = hmac.digest(mac_key, b"secagg-mac-v1\x00" + scope.digest(), "sha256")
        self._vector_key = hmac.digest(root, b"chunk-vectors", "sha256")
        self._pad_key = hmac.digest(root, b"pads", "sha256")
        self.moduli = tuple(int(q) for q in moduli)
        self.degree = int(degree)
        self.num_chunks = scope.num_chunks

    def _vector_limbs(self, index: int) -> np.ndarray:
        """``a_i`` as 16-bit limbs, ``float64`` of shape ``(L·N, 4)`` (exact)."""
        nonce = index.to_bytes(8, "big") + bytes(8)
        stream = Cipher(algorithms.AES(self._vector_key), modes.CTR(nonce)).encryptor()
        size = 8 * self.degree * len(self.moduli)
        words = np.frombuffer(stream.update(bytes(size)), dtype="<u2")
        return words.reshape(-1, 4).astype(np.float64)

    def chunk_terms(self, index: int, c0: np.ndarray) -> tuple[int, ...]:
        """``<a_index, c0> mod q`` for each data prime.

        Each inner product is computed exactly from 16-bit limbs: a limb product is
        below ``2^32`` and ``N <= 2^15`` of them sum below ``2^47``, exact in ``float64``.
        """
        vector = self._vector_limbs(index)
        limbs = np.ascontiguousarray(c0, dtype="<u8").view("<u2").reshape(-1, 4)
        limbs = limbs.astype(np.float64)
        n = self.degree
        terms = []
        for prime, q in enumerate(self.moduli):
            part = slice(prime * n, (prime + 1) * n)
            products = vector[part].T @ limbs[part]
            total = 0
            for k in range(4):
                for m in range(4):
                    total += int(products[k, m]) * _LIMB_WEIGHTS[k][m]
            terms.append(total % q)
        return tuple(terms)

    def pad(self, client_id: str, seeds: bytes) -> tuple[int, ...]:
        """The one-time pad of one contribution, bound to its client and ciphertext seeds."""
        name = client_id.encode()
        message = len(name).to_bytes(4, "big") + name + hashlib.sha256(seeds).digest()
        pads = []
        for prime, q in enumerate(self.moduli):
            wide = hmac.digest(self._pad_key, prime.to_bytes(2, "big") + message, "sha512")
            pads.append(int.from_bytes(wide, "big") % q)
        return tuple(pads)

    def add(self, *tags: Sequence[int]) -> tuple[int, ...]:
        """Add tags (or terms) modulo each prime."""
        return tuple(sum(int(t[prime]) for t in tags) % q for prime, q in enumerate(self.moduli))

    def tag(
        self, client_id: str, chunk_terms: Iterable[Sequence[int]], seeds: bytes
    ) -> tuple[int, ...]:
        """A contribution's tag from its per-chunk terms and its seeds."""
        return self.add(*chunk_terms, self.pad(client_id, seeds))
