"""The aggregation server's CKKS context: parameters and key fingerprint, no keys at all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tenseal.sealapi as sealapi

from ._seal import context_from_parameters, parameters_from_bytes
from .errors import ContextError, FormatError, SecretKeyExposureError
from .presets import PRESETS, Preset
from .wire import MAGIC_KEY, MAGIC_SERVER_CONTEXT, field, pack_frame, unpack_frame

__all__ = ["ServerContext"]


@dataclass(frozen=True, eq=False)
class ServerContext:
    """What an aggregation server holds: CKKS parameters and the key fingerprint.

    It holds no secret key, public key, relinearization or Galois key: adding
    ciphertexts needs none of them, and without the secret key nothing can be
    decrypted. Build it with :meth:`from_bytes` from
    :meth:`secagg.KeyHolder.server_context`.

    Attributes
    ----------
    preset : Preset
        The CKKS parameter preset.
    fingerprint : str
        SHA-256 key fingerprint (hex) every payload must carry.
    seal_context : Any
        The SEAL context (parameters only).
    """

    preset: Preset
    fingerprint: str
    seal_context: Any
    parms_bytes: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerContext:
        """Load a server context, refusing anything that carries a secret key.

        Raises
        ------
        SecretKeyExposureError
            If ``data`` is a key holder's secret key file, or a TenSEAL context
            serialized with its secret key.
        ContextError
            If ``data`` is not a valid server context.
        """
        if isinstance(data, bytes | bytearray) and bytes(data[:4]) == MAGIC_KEY:
            raise SecretKeyExposureError(
                "this is a key holder's secret context; the aggregator accepts only "
                "KeyHolder.server_context() bytes, which hold no secret key"
            )
        try:
            frame = unpack_frame(data, MAGIC_SERVER_CONTEXT, max_chunks=1, max_chunk_bytes=1 << 16)
        except FormatError as exc:
            _refuse_tenseal_secret_context(data)
            raise ContextError(f"not a secagg server context: {exc}") from None
        header = frame.header
        if len(frame.chunks) != 1:
            raise ContextError("a server context holds exactly one chunk (the parameters)")
        try:
            preset = _preset_from_header(field(header, "preset", dict))
            fingerprint = field(header, "fingerprint", str)
        except FormatError as exc:
            raise ContextError(str(exc)) from None
        parms = parameters_from_bytes(frame.chunks[0])
        check_parameters_match(parms, preset)
        return cls(preset, fingerprint, context_from_parameters(parms), frame.chunks[0])

    def to_bytes(self) -> bytes:
        """Serialize (the inverse of :meth:`from_bytes`)."""
        return server_context_bytes(self.preset, self.fingerprint, self.parms_bytes)

    def can_decrypt(self) -> bool:
        """Return ``False``: a server context never holds a secret key."""
        return False


def server_context_bytes(preset: Preset, fingerprint: str, parms_bytes: bytes) -> bytes:
    """Frame a server context from its parts."""
    header = {"preset": preset_to_header(preset), "fingerprint": fingerprint}
    return pack_frame(MAGIC_SERVER_CONTEXT, header, [parms_bytes])


def preset_to_header(preset: Preset) -> dict[str, Any]:
    """Describe a preset fully, so a payload never depends on a local preset table."""
    return {
        "name": preset.name,
        "poly_modulus_degree": preset.poly_modulus_degree,
        "coeff_bits": list(preset.coeff_bits),
        "scale_bits": preset.scale_bits,
        "roster_slots": preset.roster_slots,
    }


def _preset_from_header(data: dict[str, Any]) -> Preset:
    try:
        name = field(data, "name", str)
        bits = field(data, "coeff_bits", list)
        if not all(type(b) is int for b in bits):
            raise ContextError("coeff_bits must be a list of integers")
        preset = Preset(
            name,
            field(data, "poly_modulus_degree", int),
            tuple(bits),
            field(data, "scale_bits", int),
            field(data, "roster_slots", int),
        )
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, ContextError):
            raise
        raise ContextError(f"invalid preset description: {exc}") from None
    known = PRESETS.get(name)
    if known is not None and known != preset:
        raise ContextError(f"preset {name!r} does not match this build's definition")
    return preset


def check_parameters_match(parms: Any, preset: Preset) -> None:
    if parms.poly_modulus_degree() != preset.poly_modulus_degree:
        raise ContextError("CKKS parameters do not match the declared preset")
    bits = tuple(m.bit_count() for m in parms.coeff_modulus())
    if bits != preset.coeff_bits:
        raise ContextError(f"coefficient modulus bits {bits} differ from {preset.coeff_bits}")
    if parms.scheme() != sealapi.SCHEME_TYPE.CKKS:
        raise ContextError("parameters are not for the CKKS scheme")


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
