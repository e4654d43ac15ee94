"""The aggregation server's CKKS context: parameters and key fingerprint, no keys at all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ContextError, FormatError, SecretKeyExposureError
from ._seal import SealParameters
from .presets import PRESETS, Preset
from .wire import MAGIC_KEY, MAGIC_SERVER_CONTEXT, field, pack_frame, unpack_frame

__all__ = ["ServerContext", "preset_from_header", "preset_to_header"]


@dataclass(frozen=True, eq=False)
class ServerContext:
    """What an aggregation server holds: CKKS parameters and the key fingerprint.

    It holds no secret key, no MAC key and no public, relinearization or Galois key:
    the server adds the clients' first ciphertext polynomials modulo the data primes,
    which needs none of them. Build it with :meth:`from_bytes` from
    :meth:`secagg.KeyMaterial.server_context` bytes.

    Attributes
    ----------
    preset : Preset
        The CKKS parameter preset.
    fingerprint : str
        SHA-256 key fingerprint (hex) every payload must carry.
    parameters : SealParameters
        The SEAL context (parameters only) and its data primes.
    """

    preset: Preset
    fingerprint: str
    parameters: SealParameters

    @property
    def moduli(self) -> tuple[int, ...]:
        """The ciphertexts' data primes."""
        return self.parameters.moduli

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerContext:
        """Load a server context, refusing anything that carries a secret key.

        Raises
        ------
        SecretKeyExposureError
            If ``data`` is a secret key file, or a TenSEAL context with its secret key.
        ContextError
            If ``data`` is not a valid server context.
        """
        if isinstance(data, bytes | bytearray) and bytes(data[:4]) == MAGIC_KEY:
            raise SecretKeyExposureError(
                "this is the federation's secret context; the aggregator accepts only "
                "KeyMaterial.server_context() bytes, which hold no key"
            )
        try:
            frame = unpack_frame(data, MAGIC_SERVER_CONTEXT, max_chunks=1, max_chunk_bytes=1 << 16)
        except FormatError as exc:
            _refuse_tenseal_secret_context(data)
            raise ContextError(f"not a secagg server context: {exc}") from None
        if len(frame.chunks) != 1:
            raise ContextError("a server context holds exactly one chunk (the parameters)")
        try:
            preset = preset_from_header(field(frame.header, "preset", dict))
            fingerprint = field(frame.header, "fingerprint", str)
        except FormatError as exc:
            raise ContextError(str(exc)) from None
        return cls(preset, fingerprint, SealParameters(preset, frame.chunks[0]))

    def to_bytes(self) -> bytes:
        """Serialize (the inverse of :meth:`from_bytes`)."""
        return server_context_bytes(self.preset, self.fingerprint, self.parameters.parms_bytes)

    def can_decrypt(self) -> bool:
        """Return ``False``: a server context never holds a key."""
        return False


def server_context_bytes(preset: Preset, fingerprint: str, parms_bytes: bytes) -> bytes:
    """Frame a server context from its parts."""
    header = {"preset": preset_to_header(preset), "fingerprint": fingerprint}
    return pack_frame(MAGIC_SERVER_CONTEXT, header, [parms_bytes])


def preset_to_header(preset: Preset) -> dict[str, Any]:
    """Describe a preset fully, so a file never depends on a local preset table."""
    return {
        "name": preset.name,
        "encoding": preset.encoding,
        "poly_modulus_degree": preset.poly_modulus_degree,
        "coeff_bits": list(preset.coeff_bits),
        "max_clients": preset.max_clients,
        "value_bits": preset.value_bits,
        "value_range": preset.value_range,
        "scale_bits": preset.scale_bits,
    }


def preset_from_header(data: dict[str, Any]) -> Preset:
    """Rebuild a preset from :func:`preset_to_header`, checked against the known presets.

    Raises
    ------
    ContextError
        If the description is invalid or contradicts this build's preset of that name.
    """
    try:
        name = field(data, "name", str)
        bits = field(data, "coeff_bits", list)
        if not all(type(b) is int for b in bits) or len(bits) > 16:
            raise ContextError("coeff_bits must be a short list of integers")
        value_range = data.get("value_range")
        if isinstance(value_range, bool) or not isinstance(value_range, int | float):
            raise ContextError("value_range must be a number")
        preset = Preset(
            name,
            field(data, "encoding", str),
            field(data, "poly_modulus_degree", int),
            tuple(bits),
            field(data, "max_clients", int),
            value_bits=field(data, "value_bits", int),
            value_range=float(value_range),
            scale_bits=field(data, "scale_bits", int),
        )
    except FormatError as exc:
        raise ContextError(f"invalid preset description: {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, ContextError):
            raise
        raise ContextError(f"invalid preset description: {exc}") from None
    known = PRESETS.get(name)
    if known is not None and known != preset:
        raise ContextError(f"preset {name!r} does not match this build's definition")
    return preset


def _refuse_tenseal_secret_context(data: Any) -> None:
    """Refuse a TenSEAL-serialized context that carries a secret key."""
    import tenseal

    try:
        ctx = tenseal.context_from(bytes(data))
    except Exception:
        return
    if ctx.has_secret_key():
        raise SecretKeyExposureError(
            "this TenSEAL context holds a secret key; the aggregator must never hold one"
        )
