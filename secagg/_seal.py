"""Internal bridge to SEAL through ``tenseal.sealapi``.

TenSEAL's vector API cannot produce seeded symmetric ciphertexts nor pack two reals
per complex slot, so secagg talks to SEAL directly. SEAL objects save and load only
through file paths; an anonymous in-memory file (``memfd``) keeps every byte off disk.
Every SEAL exception raised while loading untrusted bytes is re-raised as a typed
:mod:`secagg.errors` exception.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import tenseal.sealapi as sealapi

from .errors import ContextError, FormatError
from .presets import Preset

__all__ = [
    "SealSession",
    "ciphertext_from_bytes",
    "ciphertext_to_bytes",
    "context_from_parameters",
    "parameters_from_bytes",
    "parameters_to_bytes",
]


class _Saveable(Protocol):
    def save(self, path: str) -> None: ...


@contextlib.contextmanager
def _memfile(data: bytes | None = None) -> Iterator[str]:
    """Yield the path of an anonymous in-memory file, optionally pre-filled with ``data``."""
    fd = os.memfd_create("secagg", 0)
    try:
        if data:
            os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _save(obj: _Saveable) -> bytes:
    with _memfile() as path:
        obj.save(path)
        with open(path, "rb") as handle:
            return handle.read()


def parameters_for(preset: Preset) -> Any:
    """Build SEAL encryption parameters for ``preset``."""
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(preset.poly_modulus_degree)
    parms.set_coeff_modulus(
        sealapi.CoeffModulus.Create(preset.poly_modulus_degree, list(preset.coeff_bits))
    )
    return parms


def parameters_to_bytes(parms: Any) -> bytes:
    """Serialize SEAL encryption parameters."""
    return _save(parms)


def parameters_from_bytes(data: bytes) -> Any:
    """Load SEAL encryption parameters, raising :class:`ContextError` on bad bytes."""
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    try:
        with _memfile(data) as path:
            parms.load(path)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ContextError(f"unreadable CKKS parameters: {exc}") from None
    return parms


def context_from_parameters(parms: Any) -> Any:
    """Build a SEAL context at 128-bit security, raising :class:`ContextError` if invalid."""
    try:
        context = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ContextError(f"invalid CKKS parameters: {exc}") from None
    if not context.parameters_set():
        raise ContextError(f"invalid CKKS parameters: {context.parameters_error_message()}")
    if parms.scheme() != sealapi.SCHEME_TYPE.CKKS:
        raise ContextError("parameters are not for the CKKS scheme")
    return context


def ciphertext_to_bytes(ciphertext: Any) -> bytes:
    """Serialize a ciphertext (or a seeded ``Serializable`` ciphertext)."""
    return _save(ciphertext)


def ciphertext_from_bytes(context: Any, data: bytes, *, scale: float) -> Any:
    """Load and validate one ciphertext of this context's data level.

    Raises
    ------
    FormatError
        If SEAL cannot load the bytes, or the ciphertext is not a fresh-level,
        two-component CKKS ciphertext at the expected scale.
    """
    ciphertext = sealapi.Ciphertext()
    try:
        with _memfile(data) as path:
            ciphertext.load(context, path)
    except (RuntimeError, ValueError, TypeError, MemoryError) as exc:
        raise FormatError(f"unreadable ciphertext: {exc}") from None
    if ciphertext.size() != 2 or not ciphertext.is_ntt_form():
        raise FormatError("ciphertext is not a two-component CKKS ciphertext")
    if ciphertext.parms_id() != context.first_parms_id():
        raise FormatError("ciphertext is not at the data level of this context")
    if ciphertext.scale != scale:
        raise FormatError(f"ciphertext scale {ciphertext.scale} differs from {scale}")
    return ciphertext


def secret_key_to_bytes(secret_key: Any) -> bytes:
    """Serialize a secret key."""
    return _save(secret_key)


def secret_key_from_bytes(context: Any, data: bytes) -> Any:
    """Load a secret key for ``context``, raising :class:`ContextError` on bad bytes."""
    secret_key = sealapi.SecretKey()
    try:
        with _memfile(data) as path:
            secret_key.load(context, path)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ContextError(f"unreadable secret key: {exc}") from None
    return secret_key


class SealSession:
    """SEAL objects for one key: encoder, symmetric encryptor and decryptor.

    Parameters
    ----------
    preset : Preset
        The parameters the key was made for.
    parms_bytes : bytes
        Serialized SEAL encryption parameters.
    secret_key_bytes : bytes or None
        Serialized secret key; ``None`` generates a fresh key.
    """

    def __init__(self, preset: Preset, parms_bytes: bytes, secret_key_bytes: bytes | None) -> None:
        self.preset = preset
        self.parms_bytes = parms_bytes
        self.context = context_from_parameters(parameters_from_bytes(parms_bytes))
        if secret_key_bytes is None:
            self.secret_key = sealapi.KeyGenerator(self.context).secret_key()
        else:
            self.secret_key = secret_key_from_bytes(self.context, secret_key_bytes)
        self.encoder = sealapi.CKKSEncoder(self.context)
        self.encryptor = sealapi.Encryptor(self.context, self.secret_key)
        self.decryptor = sealapi.Decryptor(self.context, self.secret_key)

    def secret_key_bytes(self) -> bytes:
        """Serialize the secret key."""
        return secret_key_to_bytes(self.secret_key)

    def encrypt(self, values: np.ndarray) -> bytes:
        """Encrypt ``N`` reals (two per complex slot) as a seeded symmetric ciphertext."""
        packed = values[0::2] + 1j * values[1::2]
        plaintext = sealapi.Plaintext()
        self.encoder.encode(packed, self.preset.scale, plaintext)
        return _save(self.encryptor.encrypt_symmetric(plaintext))

    def decrypt(self, ciphertext: Any) -> np.ndarray:
        """Decrypt and decode one ciphertext into its ``N`` reals."""
        plaintext = sealapi.Plaintext()
        self.decryptor.decrypt(ciphertext, plaintext)
        decoded = np.asarray(self.encoder.decode_complex(plaintext), dtype=np.complex128)
        values = np.empty(self.preset.slots, dtype=np.float64)
        values[0::2] = decoded.real
        values[1::2] = decoded.imag
        return values
