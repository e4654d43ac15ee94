"""Named CKKS parameter presets.

Every preset uses one 60-bit data prime plus a special prime, seeded symmetric
encryption and two real values per complex slot, so a ciphertext costs
``8 * N`` bytes for ``N`` real values: 8 bytes per parameter before the small
per-chunk header region (the contribution roster, the encrypted weight and two
integrity tags; see :mod:`secagg._slots`).

Security basis
--------------
SEAL enforces the HomomorphicEncryption.org standard's 128-bit classical bound
on the total coefficient-modulus size for each ring degree ``N`` (SEAL
``native/src/seal/util/hestdparms.h``): N=4096 → at most 109 bits, N=8192 →
218 bits, N=16384 → 438 bits. Each preset's total is below its bound, and the
context is built with ``sec_level_type.tc128`` so SEAL itself rejects anything
weaker.

Precision and headroom
----------------------
With scale ``Δ = 2^s`` and a data prime ``q ≈ 2^60``, a decrypted sum is exact
(up to noise) while every coefficient of ``Δ·m`` stays below ``q/2``. A slot of
complex packing holds ``re + i·im``, whose coefficient bound is ``√2·max|value|``;
keeping one more bit for noise gives the largest aggregate magnitude
``2^(60 - s - 2)``. Each client may contribute at most that divided by
``max_clients`` (checked before encryption, never clipped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = ["PRESETS", "Preset", "get_preset"]

# SEAL's 128-bit maxima for the total coefficient modulus bits (hestdparms.h).
_MAX_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# SEAL's error distribution: a clipped normal with standard deviation 3.2.
_SEAL_NOISE_STDDEV = 3.2


@dataclass(frozen=True)
class Preset:
    """A named set of CKKS parameters for add-only secure aggregation.

    Parameters
    ----------
    name : str
        Preset name, as given to :meth:`secagg.KeyHolder.generate`.
    poly_modulus_degree : int
        Ring degree ``N``; a ciphertext holds ``N`` real values.
    coeff_bits : tuple of int
        Bit sizes of the coefficient-modulus primes; the last one is SEAL's special prime.
    scale_bits : int
        ``log2`` of the CKKS scale; higher is more precise and leaves less headroom.
    roster_slots : int
        Real slots per chunk reserved for the contribution roster, which is also the
        largest number of clients in one round.
    """

    name: str
    poly_modulus_degree: int
    coeff_bits: tuple[int, ...]
    scale_bits: int
    roster_slots: int

    def __post_init__(self) -> None:
        """Check the parameters against SEAL's 128-bit bound and the layout."""
        n = self.poly_modulus_degree
        if n not in _MAX_BITS_128:
            raise ConfigurationError(f"poly_modulus_degree must be one of {sorted(_MAX_BITS_128)}")
        if len(self.coeff_bits) != 2 or self.coeff_bits[0] > 60:
            raise ConfigurationError("presets use exactly one data prime (<= 60 bits) + special")
        if sum(self.coeff_bits) > _MAX_BITS_128[n]:
            raise ConfigurationError(
                f"{sum(self.coeff_bits)} modulus bits exceed the 128-bit bound "
                f"{_MAX_BITS_128[n]} for N={n}"
            )
        if not 20 <= self.scale_bits <= self.coeff_bits[0] - 4:
            raise ConfigurationError("scale_bits must leave at least 4 bits of headroom")
        if not 2 <= self.roster_slots < n // 2:
            raise ConfigurationError("roster_slots must be in [2, N/2)")

    @property
    def security_bits(self) -> int:
        """Classical security level SEAL enforces for these parameters (always 128)."""
        return 128

    @property
    def max_modulus_bits(self) -> int:
        """The HomomorphicEncryption.org 128-bit bound on the total modulus bits for ``N``."""
        return _MAX_BITS_128[self.poly_modulus_degree]

    @property
    def scale(self) -> float:
        """The CKKS scale ``2^scale_bits``."""
        return float(2**self.scale_bits)

    @property
    def slots(self) -> int:
        """Real values per ciphertext (two per complex slot)."""
        return self.poly_modulus_degree

    @property
    def header_slots(self) -> int:
        """Real slots per chunk reserved for the roster, the weight, the round and chunk tags."""
        return self.roster_slots + 3

    @property
    def values_per_chunk(self) -> int:
        """Update values carried by one ciphertext chunk."""
        return self.slots - self.header_slots

    @property
    def max_clients(self) -> int:
        """Largest number of contributions to one aggregate (one roster slot each)."""
        return self.roster_slots

    @property
    def max_aggregate_magnitude(self) -> float:
        """Largest absolute value any slot of an aggregate may reach: ``2^(60 - s - 2)``."""
        return float(2 ** (self.coeff_bits[0] - self.scale_bits - 2))

    @property
    def max_client_magnitude(self) -> float:
        """Largest absolute weighted value one client may encrypt (headroom / max_clients)."""
        return self.max_aggregate_magnitude / self.max_clients

    @property
    def bytes_per_parameter(self) -> float:
        """Asymptotic wire bytes per update value: 8 bytes per slot over the usable slots."""
        return 8.0 * self.slots / self.values_per_chunk

    def noise_bound(self, num_ciphertexts: int) -> float:
        """High-probability bound ``t`` on the decoded error of a sum of fresh ciphertexts.

        Each of the ``N`` coefficients of a fresh symmetric ciphertext carries SEAL's
        error (standard deviation 3.2) plus encoding rounding (variance 1/12). A decoded
        slot is a unit-modulus combination of the ``N`` coefficients, so the error of
        one real slot of a sum of ``k`` ciphertexts has standard deviation
        ``sqrt(k·N·(3.2² + 1/12)) / Δ``; we take 8 standard deviations (a Gaussian tail
        below 1e-15 per slot).

        Parameters
        ----------
        num_ciphertexts : int
            Number of fresh ciphertexts summed.

        Returns
        -------
        float
            The bound ``t`` in decoded (value) units.
        """
        k = max(1, num_ciphertexts)
        variance = k * self.poly_modulus_degree * (_SEAL_NOISE_STDDEV**2 + 1.0 / 12.0)
        return 8.0 * math.sqrt(variance) / self.scale


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # Default: 8.13 B/param, 128 clients per round, |aggregate| <= 1024, |client| <= 8.
        Preset("default", 8192, (60, 60), 48, 128),
        # Small models: half the chunk size, so less padding on updates under ~50k values.
        Preset("small", 4096, (60, 49), 48, 64),
        # Large cohorts and models: 256 clients per round, the roster costs half as much.
        Preset("large", 16384, (60, 60), 48, 256),
        # More headroom (|aggregate| <= 2^18), more flooding noise per released value.
        Preset("wide", 8192, (60, 60), 40, 128),
        # More precision (flooding noise ~16x below default), |aggregate| <= 64.
        Preset("precise", 8192, (60, 60), 52, 128),
    )
}


def get_preset(name: str | Preset) -> Preset:
    """Return the preset called ``name`` (a :class:`Preset` passes through).

    Raises
    ------
    ConfigurationError
        If no preset has that name.
    """
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown preset {name!r}; choose one of {sorted(PRESETS)}"
        ) from None
