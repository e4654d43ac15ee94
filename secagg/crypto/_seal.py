"""Internal bridge to SEAL through ``tenseal.sealapi``: parameters, NTTs, decryption.

secagg never ships SEAL's own ciphertext files. A ciphertext travels as its first
polynomial ``c0`` (in NTT form, one ``uint64`` per coefficient and data prime) and the
32-byte seed from which :func:`secagg.crypto._rlwe.expand_c1` expands the second
polynomial ``c1``. Clients encrypt with :mod:`secagg.crypto._rlwe` (SEAL's symmetric
encryption, computed with numpy) and use SEAL for the NTT of their plaintexts and for
CKKS encoding. The server adds ``c0`` polynomials itself (modulo the data primes); the
key holder expands every contributor's ``c1`` from its seed and hands the sum to SEAL's
``Decryptor``, so no ``c1`` chosen by anyone is ever decrypted (see
``docs/THREAT_MODEL.md``).

SEAL objects only save to and load from paths; an anonymous in-memory file (``memfd``)
keeps every byte off disk. SEAL compresses what it saves with zstd; the ciphertext
files secagg hands to SEAL are written uncompressed by :meth:`SealParameters._polys_file`.
Every SEAL failure on untrusted bytes becomes a typed :mod:`secagg.errors` exception.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import tenseal.sealapi as sealapi
import zstandard

from ..errors import ContextError, FormatError
from ._rlwe import SEED_BYTES, CiphertextParts, SecretKeyEncryptor, add_mod, expand_c1
from .presets import Preset

__all__ = [
    "SEED_BYTES",
    "CiphertextParts",
    "SealParameters",
    "SealSession",
    "parameters_for",
    "parameters_from_bytes",
    "parameters_to_bytes",
]

_HEADER = struct.Struct("<HBBBBHQ")  # SEALHeader: magic, size, major, minor, compression, _, bytes
_MAGIC = 0xA15E
_COMPR_NONE, _COMPR_ZLIB, _COMPR_ZSTD = 0, 1, 2
# Ciphertext members: parms_id, is_ntt_form, size, N, coeff_modulus_size, scale, correction.
_CT_MEMBERS = struct.Struct("<32sBQQQdQ")
_PT_MEMBERS = struct.Struct("<32sQd")  # Plaintext: parms_id, coeff_count, scale
_MAX_OBJECT_BYTES = 1 << 26
# One decompressor per process (a client or key holder decompresses one object at a time).
_ZSTD = zstandard.ZstdDecompressor()
# SEAL's largest ciphertext size: the most polynomials one NTT round trip carries.
_MAX_POLYS = 16


class _Saveable(Protocol):
    def save(self, path: str) -> None: ...


@contextlib.contextmanager
def _memfile(data: bytes | None = None) -> Iterator[str]:
    """Yield the path of an anonymous in-memory file, optionally pre-filled with ``data``."""
    fd = os.memfd_create("secagg", 0)
    try:
        if data:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
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


class SealParameters:
    """A validated SEAL CKKS context for a preset (no key of any kind).

    Parameters
    ----------
    preset : Preset
        The preset the parameters must match.
    parms_bytes : bytes
        Serialized SEAL encryption parameters.

    Raises
    ------
    ContextError
        If the bytes do not load, do not match ``preset`` or are below 128-bit security.
    """

    def __init__(self, preset: Preset, parms_bytes: bytes) -> None:
        parms = parameters_from_bytes(parms_bytes)
        if parms.scheme() != sealapi.SCHEME_TYPE.CKKS:
            raise ContextError("parameters are not for the CKKS scheme")
        if parms.poly_modulus_degree() != preset.poly_modulus_degree:
            raise ContextError("CKKS parameters do not match the declared preset")
        bits = tuple(m.bit_count() for m in parms.coeff_modulus())
        if bits != preset.coeff_bits:
            raise ContextError(f"coefficient modulus bits {bits} differ from {preset.coeff_bits}")
        try:
            context = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ContextError(f"invalid CKKS parameters: {exc}") from None
        if not context.parameters_set():
            raise ContextError(f"invalid CKKS parameters: {context.parameters_error_message()}")
        self.preset = preset
        self.parms_bytes = parms_bytes
        self.context = context
        data = context.first_context_data().parms()
        self.moduli: tuple[int, ...] = tuple(int(m.value()) for m in data.coeff_modulus())
        self.parms_id = struct.pack("<4Q", *context.first_parms_id())
        # Files handed back to SEAL carry this build's own version in their headers.
        saved = _HEADER.unpack_from(parms_bytes)
        self._version = (saved[2], saved[3])

    @property
    def coefficients(self) -> int:
        """``L·N``: coefficients of one ciphertext polynomial over all data primes."""
        return self.preset.poly_modulus_degree * len(self.moduli)

    def modulus_column(self) -> np.ndarray:
        """The data prime of each coefficient of ``c0``, as ``uint64`` of shape ``(L·N,)``."""
        n = self.preset.poly_modulus_degree
        return np.repeat(np.asarray(self.moduli, dtype=np.uint64), n)

    # ------------------------------------------------------------------ SEAL files
    def _sized(self, members: bytes) -> bytes:
        major, minor = self._version
        size = _HEADER.size + len(members)
        return _HEADER.pack(_MAGIC, _HEADER.size, major, minor, _COMPR_NONE, 0, size) + members

    def _polys_file(self, polys: np.ndarray, *, ntt: bool, scale: float = 1.0) -> bytes:
        """An uncompressed SEAL file of a ciphertext whose polynomials are ``polys``."""
        n = self.preset.poly_modulus_degree
        data = np.ascontiguousarray(polys, dtype="<u8")
        dyn = self._sized(struct.pack("<Q", data.size) + data.tobytes())
        members = _CT_MEMBERS.pack(
            self.parms_id, 1 if ntt else 0, polys.shape[0], n, len(self.moduli), scale, 1
        )
        return self._sized(members + dyn)

    def expand_c1(self, seeds: Sequence[bytes]) -> np.ndarray:
        """``Σ expand(seed)`` modulo each data prime: the ``c1`` of a sum (public)."""
        column = self.modulus_column()
        total = np.zeros(self.coefficients, dtype=np.uint64)
        for seed in seeds:
            try:
                c1 = expand_c1(seed, self.moduli, self.preset.poly_modulus_degree)
            except ValueError as exc:
                raise FormatError(str(exc)) from None
            add_mod(total, c1, column)
        return total

    def load_ciphertext(self, c0: np.ndarray, c1: np.ndarray) -> Any:
        """Load the NTT-form ciphertext ``(c0, c1)`` into a SEAL ``Ciphertext``.

        Raises
        ------
        FormatError
            If SEAL refuses it (for example a coefficient not below its prime).
        """
        ciphertext = sealapi.Ciphertext()
        polys = np.vstack([c0, c1])
        try:
            with _memfile(self._polys_file(polys, ntt=True, scale=self.preset.scale)) as path:
                ciphertext.load(self.context, path)
        except (RuntimeError, ValueError, TypeError, MemoryError) as exc:
            raise FormatError(f"SEAL refused a ciphertext: {exc}") from None
        return ciphertext

    def _read_polys(self, data: bytes, count: int) -> np.ndarray:
        members = _members(data)
        dyn = _members(members[_CT_MEMBERS.size :], nested=True)
        width = self.coefficients
        if len(dyn) != 8 + 8 * count * width:
            raise FormatError("SEAL returned a ciphertext of an unexpected size")
        return np.frombuffer(dyn, dtype="<u8", offset=8).reshape(count, width).copy()

    def transform(self, polys: np.ndarray, *, to_ntt: bool, evaluator: Any) -> np.ndarray:
        """NTT (or inverse NTT) of every row of ``polys`` (each reduced), computed by SEAL.

        Rows travel in batches of up to 16 as the polynomials of one ciphertext. A
        ciphertext whose polynomials after the first are all zero is "transparent" to
        SEAL, which refuses it, so such a batch gets one more row, of ones.
        """
        rows = polys.shape[0]
        out = np.empty_like(polys)
        for start in range(0, rows, _MAX_POLYS - 1):
            block = polys[start : start + _MAX_POLYS - 1]
            if not block[1:].any():
                block = np.vstack([block, np.ones_like(block[:1])])
            ciphertext = sealapi.Ciphertext()
            with _memfile(self._polys_file(block, ntt=not to_ntt)) as path:
                ciphertext.load(self.context, path)
            if to_ntt:
                evaluator.transform_to_ntt_inplace(ciphertext)
            else:
                evaluator.transform_from_ntt_inplace(ciphertext)
            done = self._read_polys(_save(ciphertext), block.shape[0])
            count = min(_MAX_POLYS - 1, rows - start)
            out[start : start + count] = done[:count]
        return out

    def parse_plaintext(self, data: bytes, *, parms_id: bytes | None = None) -> np.ndarray:
        """The NTT-form coefficients of a plaintext file saved by SEAL.

        A plaintext at another level (``parms_id``, e.g. the secret key's) gives the
        residues of its first ``L`` primes: those of the data primes.
        """
        members = _members(data)
        if len(members) < _PT_MEMBERS.size:
            raise FormatError("plaintext file is too short")
        got_id, count, _ = _PT_MEMBERS.unpack_from(members)
        dyn = _members(members[_PT_MEMBERS.size :], nested=True)
        if got_id != (parms_id or self.parms_id) or count < self.coefficients:
            raise FormatError("not an NTT-form plaintext of this context")
        if len(dyn) != 8 + 8 * count:
            raise FormatError("plaintext data does not match its size")
        return np.frombuffer(dyn, dtype="<u8", count=self.coefficients, offset=8).copy()


def _members(data: bytes, *, nested: bool = False) -> bytes:
    """The (decompressed) members of a SEAL object; with ``nested``, of its first object."""
    if len(data) < _HEADER.size:
        raise FormatError("SEAL object is shorter than its header")
    magic, header_size, _, _, compression, _, size = _HEADER.unpack_from(data)
    if magic != _MAGIC or header_size != _HEADER.size or not _HEADER.size <= size:
        raise FormatError("not a SEAL object")
    if size > len(data) or (not nested and size != len(data)) or size > _MAX_OBJECT_BYTES:
        raise FormatError("SEAL object size does not match its header")
    body = data[_HEADER.size : size]
    try:
        if compression == _COMPR_NONE:
            return bytes(body)
        if compression == _COMPR_ZSTD:
            return bytes(_ZSTD.decompress(body, max_output_size=_MAX_OBJECT_BYTES))
        if compression == _COMPR_ZLIB:
            return zlib.decompress(body, bufsize=1 << 16)
    except (zstandard.ZstdError, zlib.error) as exc:
        raise FormatError(f"SEAL object does not decompress: {exc}") from None
    raise FormatError(f"unknown SEAL compression mode {compression}")


class SealSession:
    """Encryption, SEAL encoder and decryptor for one secret key.

    Parameters
    ----------
    parameters : SealParameters
        The validated context.
    secret_key_bytes : bytes or None
        Serialized secret key; ``None`` generates a fresh key.

    Raises
    ------
    ContextError
        If the secret key does not load for these parameters.
    """

    def __init__(self, parameters: SealParameters, secret_key_bytes: bytes | None) -> None:
        self.parameters = parameters
        context = parameters.context
        if secret_key_bytes is None:
            self.secret_key = sealapi.KeyGenerator(context).secret_key()
        else:
            self.secret_key = sealapi.SecretKey()
            try:
                with _memfile(secret_key_bytes) as path:
                    self.secret_key.load(context, path)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise ContextError(f"unreadable secret key: {exc}") from None
        key_level = struct.pack("<4Q", *context.key_parms_id())
        secret_ntt = parameters.parse_plaintext(_save(self.secret_key), parms_id=key_level)
        self.encryptor = SecretKeyEncryptor(
            secret_ntt, parameters.moduli, self.preset.poly_modulus_degree
        )
        self.encoder = sealapi.CKKSEncoder(context)
        self.decryptor = sealapi.Decryptor(context, self.secret_key)
        self.evaluator = sealapi.Evaluator(context)

    @property
    def preset(self) -> Preset:
        """The preset of the parameters."""
        return self.parameters.preset

    def secret_key_bytes(self) -> bytes:
        """Serialize the secret key (keep it secret)."""
        return _save(self.secret_key)

    def _ntt(self, polys: np.ndarray) -> np.ndarray:
        return self.parameters.transform(polys, to_ntt=True, evaluator=self.evaluator)

    def encrypt_slots(self, rows: np.ndarray) -> list[CiphertextParts]:
        """Encrypt rows of ``N`` reals (two per complex slot, CKKS-encoded at the scale)."""
        parameters = self.parameters
        encoded = np.empty((rows.shape[0], parameters.coefficients), dtype=np.uint64)
        plaintext = sealapi.Plaintext()
        for out, values in zip(encoded, rows, strict=True):
            self.encoder.encode(values[0::2] + 1j * values[1::2], self.preset.scale, plaintext)
            out[:] = parameters.parse_plaintext(_save(plaintext))
        errors = self._ntt(self.encryptor.error_residues(rows.shape[0]))
        return self.encryptor.encrypt_ntt(add_mod(encoded, errors, parameters.modulus_column()))

    def encrypt_coefficients(self, messages: np.ndarray) -> list[CiphertextParts]:
        """Encrypt plaintext polynomials given by their coefficients (each below ``q``).

        For every row ``m``: fresh error ``e``, the NTT of ``m + e`` (computed by SEAL,
        see :meth:`SealParameters.transform`), then a seeded encryption of it: SEAL's
        symmetric encryption of ``m`` with no CKKS encoding.
        """
        return self.encryptor.encrypt_ntt(self._ntt(self.encryptor.add_error(messages)))

    def _decrypt_plaintext(self, c0: np.ndarray, seeds: Sequence[bytes]) -> Any:
        if not seeds:
            raise FormatError("a sum needs at least one contribution")
        total = self.parameters.load_ciphertext(c0, self.parameters.expand_c1(seeds))
        plaintext = sealapi.Plaintext()
        self.decryptor.decrypt(total, plaintext)
        return plaintext

    def decrypt_coefficients(self, c0: np.ndarray, seeds: Sequence[bytes]) -> np.ndarray:
        """The coefficients (modulo ``q``) of the decryption of ``(c0, Σ expand(seed))``."""
        ntt = self.parameters.parse_plaintext(_save(self._decrypt_plaintext(c0, seeds)))
        phases: np.ndarray = self.parameters.transform(
            ntt[None, :], to_ntt=False, evaluator=self.evaluator
        )[0]
        return phases

    def decrypt_sum(self, c0: np.ndarray, seeds: Sequence[bytes]) -> np.ndarray:
        """Decrypt ``(c0, Σ expand(seed))`` and decode its ``N`` reals (approximate presets).

        ``c0`` must already be the sum of the contributors' first polynomials; each
        seed's ``c1`` is expanded and added here.
        """
        plaintext = self._decrypt_plaintext(c0, seeds)
        decoded = np.asarray(self.encoder.decode_complex(plaintext), dtype=np.complex128)
        values = np.empty(self.preset.slots, dtype=np.float64)
        values[0::2] = decoded.real
        values[1::2] = decoded.imag
        return values
