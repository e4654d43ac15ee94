"""The federation's key material: the CKKS secret key and the MAC key, and nothing else.

Clients encrypt and tag with it; the key holder verifies and decrypts with it; the
aggregation server never gets it (only :meth:`KeyMaterial.server_context`). The key
holder's release policy and decryption budget live apart, in
:class:`secagg.KeyHolder`'s own state file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from .._files import atomic_write_bytes, read_secret_file
from ..errors import ContextError, FormatError
from ._mac import MAC_KEY_BYTES
from ._seal import SealParameters, SealSession, parameters_for, parameters_to_bytes
from .context import ServerContext, preset_from_header, preset_to_header, server_context_bytes
from .presets import Preset, get_preset
from .wire import MAGIC_KEY, MAGIC_SERVER_CONTEXT, field, pack_frame, unpack_frame

__all__ = ["KeyMaterial"]


class KeyMaterial:
    """The secret shared by the clients and the key holder (never by the server).

    Create it with :meth:`generate`; keep it with :meth:`save` / :meth:`load` (mode
    0600, refused when others can read it). A client colluding with the server gives
    the server everything this protects: see ``docs/THREAT_MODEL.md``.

    Parameters
    ----------
    session : SealSession
        SEAL objects for the secret key.
    mac_key : bytes
        The 32-byte key of the aggregate MAC.
    """

    def __init__(self, session: SealSession, mac_key: bytes) -> None:
        if len(mac_key) != MAC_KEY_BYTES:
            raise ContextError(f"the MAC key must be {MAC_KEY_BYTES} bytes")
        self._session = session
        self._mac_key = bytes(mac_key)
        self._fingerprint = _fingerprint(session, self._mac_key)

    @classmethod
    def generate(cls, preset: str | Preset = "default") -> KeyMaterial:
        """Generate a fresh CKKS secret key and MAC key under a named parameter preset.

        Raises
        ------
        ConfigurationError
            If no preset has that name.
        """
        chosen = get_preset(preset)
        parameters = SealParameters(chosen, parameters_to_bytes(parameters_for(chosen)))
        return cls(SealSession(parameters, None), secrets.token_bytes(MAC_KEY_BYTES))

    @property
    def preset(self) -> Preset:
        """The CKKS parameter preset."""
        return self._session.preset

    @property
    def fingerprint(self) -> str:
        """SHA-256 fingerprint (hex) carried by every payload made with this key."""
        return self._fingerprint

    @property
    def session(self) -> SealSession:
        """SEAL encoder, encryptor and decryptor (internal use)."""
        return self._session

    @property
    def parameters(self) -> SealParameters:
        """The SEAL context and its data primes."""
        return self._session.parameters

    @property
    def moduli(self) -> tuple[int, ...]:
        """The ciphertexts' data primes."""
        return self._session.parameters.moduli

    @property
    def mac_key(self) -> bytes:
        """The MAC key (internal use)."""
        return self._mac_key

    def derived_key(self, purpose: str) -> bytes:
        """A 32-byte key for ``purpose``, derived from the MAC key (HMAC-SHA-256)."""
        return hmac.digest(self._mac_key, b"secagg-derived-key-v1\x00" + purpose.encode(), "sha256")

    def __repr__(self) -> str:
        """Describe the key without revealing it."""
        return f"KeyMaterial(preset={self.preset.name!r}, fingerprint={self.fingerprint[:16]}…)"

    def server_context(self) -> bytes:
        """Serialize what the aggregation server needs: parameters and fingerprint, no keys."""
        return server_context_bytes(self.preset, self.fingerprint, self.parameters.parms_bytes)

    def server_context_object(self) -> ServerContext:
        """The server context as an object (what :class:`secagg.Aggregator` loads)."""
        return ServerContext(self.preset, self.fingerprint, self.parameters)

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        """Serialize the secret context (CKKS secret key and MAC key). Keep it secret."""
        header = {"preset": preset_to_header(self.preset), "fingerprint": self.fingerprint}
        chunks = [self.parameters.parms_bytes, self._session.secret_key_bytes(), self._mac_key]
        return pack_frame(MAGIC_KEY, header, chunks)

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyMaterial:
        """Load a secret context written by :meth:`to_bytes`.

        Raises
        ------
        ContextError
            If ``data`` is not a secret context (a server context is refused with a
            message saying so), or its key does not match its fingerprint.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ContextError(f"a secret context is bytes, got {type(data).__name__}")
        if bytes(data[:4]) == MAGIC_SERVER_CONTEXT:
            raise ContextError("this is a server context: it holds no secret key")
        try:
            frame = unpack_frame(data, MAGIC_KEY, max_chunks=3, max_chunk_bytes=1 << 24)
            preset = preset_from_header(field(frame.header, "preset", dict))
            fingerprint = field(frame.header, "fingerprint", str)
        except FormatError as exc:
            raise ContextError(f"not a secagg secret context: {exc}") from None
        if len(frame.chunks) != 3:
            raise ContextError("a secret context holds parameters, a secret key and a MAC key")
        parms_bytes, secret_key, mac_key = frame.chunks
        material = cls(SealSession(SealParameters(preset, parms_bytes), secret_key), mac_key)
        if material.fingerprint != fingerprint:
            raise ContextError("the secret context's keys do not match its recorded fingerprint")
        return material

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the secret context atomically to ``path`` with mode 0600."""
        return atomic_write_bytes(path, self.to_bytes(), mode=0o600)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyMaterial:
        """Load a secret context from ``path``.

        Raises
        ------
        ContextError
            If the file is missing, unreadable, readable by group or others, or not a
            secret context.
        """
        return cls.from_bytes(read_secret_file(path, "secret context"))


def _fingerprint(session: SealSession, mac_key: bytes) -> str:
    """SHA-256 over the preset, the parameters and a hash commitment to both keys.

    The keys have hundreds (MAC) to thousands (CKKS) of bits of entropy, so the
    commitment reveals nothing usable about them, yet binds the fingerprint to them; the
    preset description binds it to one encoding (presets may share SEAL parameters).
    """
    commitment = hashlib.sha256(
        b"secagg-key-commitment-v2\x00" + session.secret_key_bytes() + b"\x00" + mac_key
    )
    preset = json.dumps(preset_to_header(session.preset), sort_keys=True).encode()
    return hashlib.sha256(
        b"secagg-key-fingerprint-v2\x00"
        + preset
        + b"\x00"
        + session.parameters.parms_bytes
        + commitment.digest()
    ).hexdigest()
