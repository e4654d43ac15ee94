"""Named CKKS parameter presets: exact (quantised, packed) or approximate (flooded).

Every preset uses seeded symmetric encryption with one 60-bit data prime plus SEAL's
special prime. A ciphertext travels as its first polynomial, bit-packed at 60 bits per
coefficient (7.5 bytes), and the 32-byte seed of its second.

Exact presets (``encoding="exact"``; the default)
-------------------------------------------------
Each client quantises its weighted update, ``|weight × value| <= value_range``, to
``value_bits``-bit integers by unbiased stochastic rounding, and packs ``fields``
integers into every plaintext *coefficient* (not CKKS slots), each field with
``guard_bits = ceil(log2(max_clients))`` spare bits so that sums of up to
``max_clients`` integers never carry into the next field. The packed integer ``V`` is
scaled by ``Δ = 2^noise_shift``, chosen so that ``Δ/2`` exceeds the largest possible
decryption error of a sum of ``max_clients`` fresh ciphertexts (each coefficient of
SEAL's error is at most 21 in absolute value): the key holder recovers every field's
exact integer sum with certainty, and releases a deterministic function of the
clients' quantised values. Two 23-bit fields per 60-bit coefficient make 3.75 bytes per
parameter.

Approximate presets (``encoding="approximate"``)
------------------------------------------------
Two reals per complex slot at CKKS scale ``2^scale_bits``: 7.5 bytes per parameter,
values up to ``2^(60 - scale_bits - 2) / max_clients``, and every released coordinate
flooded with Gaussian noise (see :mod:`secagg.crypto.release`), because a raw CKKS
decryption would leak the secret key (Li and Micciancio 2021).

Security basis
--------------
SEAL enforces the HomomorphicEncryption.org standard's 128-bit classical bound on the
total coefficient-modulus size for each ring degree ``N`` (SEAL
``native/src/seal/util/hestdparms.h``): N=4096 → at most 109 bits, N=8192 → 218 bits,
N=16384 → 438 bits. Every preset is below its bound, and contexts are built with
``sec_level_type.tc128`` so SEAL itself rejects anything weaker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigurationError
from ._rlwe import SEED_BYTES

__all__ = [
    "APPROXIMATE",
    "EXACT",
    "PRESETS",
    "SEAL_NOISE_BOUND",
    "Preset",
    "get_preset",
]

EXACT = "exact"
APPROXIMATE = "approximate"
# SEAL's 128-bit maxima for the total coefficient modulus bits (hestdparms.h).
_MAX_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
# SEAL's error distribution: a centred binomial (or clipped normal) of standard
# deviation 3.2 whose samples never exceed 21 in absolute value.
_SEAL_NOISE_STDDEV = 3.2
SEAL_NOISE_BOUND = 21


@dataclass(frozen=True)
class Preset:
    """A named set of CKKS parameters for add-only secure aggregation.

    Parameters
    ----------
    name : str
        Preset name, as given to :meth:`secagg.KeyMaterial.generate`.
    encoding : {"exact", "approximate"}
        Quantised integers packed in coefficients, or reals in CKKS slots (flooded).
    poly_modulus_degree : int
        Ring degree ``N``.
    coeff_bits : tuple of int
        Bit sizes of the coefficient-modulus primes; the last one is SEAL's special prime.
    max_clients : int
        Largest number of contributions to one aggregate.
    value_bits : int, optional
        Exact: bits of each quantised value.
    value_range : float, optional
        Exact: the largest ``|weight × value|`` a client may encode (a power of two).
    scale_bits : int, optional
        Approximate: ``log2`` of the CKKS scale.
    """

    name: str
    encoding: str
    poly_modulus_degree: int
    coeff_bits: tuple[int, ...]
    max_clients: int
    value_bits: int = 0
    value_range: float = 0.0
    scale_bits: int = 0

    def __post_init__(self) -> None:
        """Check the parameters against SEAL's 128-bit bound and the encoding's limits."""
        n = self.poly_modulus_degree
        if n not in _MAX_BITS_128:
            raise ConfigurationError(f"poly_modulus_degree must be one of {sorted(_MAX_BITS_128)}")
        if len(self.coeff_bits) != 2 or self.coeff_bits[0] != 60:
            raise ConfigurationError("presets use exactly one 60-bit data prime + a special prime")
        if sum(self.coeff_bits) > _MAX_BITS_128[n]:
            raise ConfigurationError(
                f"{sum(self.coeff_bits)} modulus bits exceed the 128-bit bound "
                f"{_MAX_BITS_128[n]} for N={n}"
            )
        if not 2 <= self.max_clients <= 1 << 16:
            raise ConfigurationError("max_clients must be in [2, 65536]")
        if self.encoding == EXACT:
            if not 4 <= self.value_bits <= 40:
                raise ConfigurationError("value_bits must be in [4, 40]")
            if not self.value_range > 0 or math.log2(self.value_range) % 1:
                raise ConfigurationError("value_range must be a positive power of two")
            if self.fields < 1:
                raise ConfigurationError(
                    f"a {self.field_bits}-bit field does not fit a coefficient's "
                    f"{self.coefficient_bits} usable bits"
                )
        elif self.encoding == APPROXIMATE:
            if not 20 <= self.scale_bits <= self.coeff_bits[0] - 4:
                raise ConfigurationError("scale_bits must leave at least 4 bits of headroom")
        else:
            raise ConfigurationError(f"encoding must be {EXACT!r} or {APPROXIMATE!r}")

    # ------------------------------------------------------------------ common
    @property
    def exact(self) -> bool:
        """Whether this preset quantises and releases exact sums (no flooding)."""
        return self.encoding == EXACT

    @property
    def security_bits(self) -> int:
        """Classical security level SEAL enforces for these parameters (always 128)."""
        return 128

    @property
    def max_modulus_bits(self) -> int:
        """The HomomorphicEncryption.org 128-bit bound on the total modulus bits for ``N``."""
        return _MAX_BITS_128[self.poly_modulus_degree]

    @property
    def data_prime_bits(self) -> tuple[int, ...]:
        """Bit sizes of the data primes (every prime but SEAL's special one)."""
        return self.coeff_bits[:-1]

    @property
    def scale(self) -> float:
        """The scale stamped on ciphertexts: ``2^scale_bits`` (approximate) or 1 (exact)."""
        return float(2**self.scale_bits) if not self.exact else 1.0

    @property
    def slots(self) -> int:
        """Values one ciphertext chunk carries."""
        return self.poly_modulus_degree * (self.fields if self.exact else 1)

    def num_chunks(self, num_values: int) -> int:
        """Ciphertext chunks that carry ``num_values`` values and the weight."""
        return max(1, -(-(num_values + 1) // self.slots))

    @property
    def chunk_bytes(self) -> int:
        """Wire bytes of one ciphertext chunk: the seed and the bit-packed ``c0``."""
        bits = sum(self.data_prime_bits)
        return SEED_BYTES + -(-self.poly_modulus_degree * bits // 8)

    @property
    def bytes_per_parameter(self) -> float:
        """Asymptotic wire bytes per update value (full chunks)."""
        return self.chunk_bytes / self.slots

    @property
    def max_client_magnitude(self) -> float:
        """Largest absolute weighted value one client may encode (checked, never clipped)."""
        if self.exact:
            return self.value_range
        return self.max_aggregate_magnitude / self.max_clients

    # ------------------------------------------------------------------ exact
    @property
    def guard_bits(self) -> int:
        """Spare bits per field, so that ``max_clients`` values sum without a carry."""
        return math.ceil(math.log2(self.max_clients))

    @property
    def field_bits(self) -> int:
        """Width of one packed field."""
        return self.value_bits + self.guard_bits

    @property
    def noise_shift(self) -> int:
        """``log2 Δ``: ``Δ/2`` exceeds the largest decryption error of a full sum."""
        return (2 * SEAL_NOISE_BOUND * self.max_clients).bit_length()

    @property
    def coefficient_bits(self) -> int:
        """Bits of packed integer one coefficient carries below ``q / Δ`` (``q > 2^59``)."""
        return self.data_prime_bits[0] - 1 - self.noise_shift

    @property
    def fields(self) -> int:
        """Quantised values per plaintext coefficient (exact presets)."""
        return self.coefficient_bits // self.field_bits if self.exact else 0

    @property
    def levels(self) -> int:
        """Quantisation levels: values map to integers in ``[0, 2^value_bits - 1]``."""
        return (1 << self.value_bits) - 1

    @property
    def quantization_step(self) -> float:
        """The gap between adjacent quantised values (exact presets)."""
        return 2.0 * self.value_range / self.levels if self.exact else 0.0

    @property
    def quantization_std(self) -> float:
        """Standard deviation of the stochastic-rounding error of one value.

        Rounding ``x`` up with probability ``p`` (its fractional part in steps) has
        variance ``p(1-p)·step²``; for values whose fractional parts are spread
        uniformly that averages ``step²/6`` (at most ``step²/4``).
        """
        return self.quantization_step / math.sqrt(6.0)

    # ------------------------------------------------------------------ approximate
    @property
    def max_aggregate_magnitude(self) -> float:
        """Largest absolute value any slot of an aggregate may reach."""
        if self.exact:
            return self.value_range * self.max_clients
        return float(2 ** (self.coeff_bits[0] - self.scale_bits - 2))

    def noise_bound(self, num_ciphertexts: int) -> float:
        """A bound ``t`` on the decryption error of a sum of fresh ciphertexts.

        Exact presets: the hard bound ``21·k`` per coefficient, in integer units.
        Approximate presets: each of the ``N`` coefficients of a fresh symmetric
        ciphertext carries SEAL's error (standard deviation 3.2) plus encoding rounding
        (variance 1/12); a decoded slot is a unit-modulus combination of the ``N``
        coefficients, so the error of one real slot of a sum of ``k`` ciphertexts has
        standard deviation ``sqrt(k·N·(3.2² + 1/12)) / Δ``; we take 8 standard
        deviations (a Gaussian tail below 1e-15 per slot).

        Parameters
        ----------
        num_ciphertexts : int
            Number of fresh ciphertexts summed.
        """
        k = max(1, num_ciphertexts)
        if self.exact:
            return float(SEAL_NOISE_BOUND * k)
        variance = k * self.poly_modulus_degree * (_SEAL_NOISE_STDDEV**2 + 1.0 / 12.0)
        return 8.0 * math.sqrt(variance) / float(2**self.scale_bits)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # Exact, 3.75 B/param: 128 clients, 16-bit values in [-1, 1] (step 3.1e-5).
        Preset("default", EXACT, 8192, (60, 60), 128, value_bits=16, value_range=1.0),
        # Exact with half-size chunks (less padding on small updates): 64 clients, 17 bits.
        Preset("small", EXACT, 4096, (60, 49), 64, value_bits=17, value_range=1.0),
        # Exact for large cohorts: 256 clients, 14-bit values.
        Preset("large", EXACT, 16384, (60, 60), 256, value_bits=14, value_range=1.0),
        # Approximate (flooded) CKKS, 7.5 B/param: |client value| <= 8.
        Preset("approx", APPROXIMATE, 8192, (60, 60), 128, scale_bits=48),
        # Approximate with more headroom: |client value| <= 2048, more flooding noise.
        Preset("wide", APPROXIMATE, 8192, (60, 60), 128, scale_bits=40),
        # Approximate with more precision (flooding ~16x below approx): |client| <= 0.5.
        Preset("precise", APPROXIMATE, 8192, (60, 60), 128, scale_bits=52),
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
    except (KeyError, TypeError):
        raise ConfigurationError(
            f"unknown preset {name!r}; choose one of {sorted(PRESETS)}"
        ) from None
