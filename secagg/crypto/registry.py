"""Who may contribute: each client's Ed25519 signing key and the registry of public keys.

Every payload is signed by its client's :class:`SigningKey`; the aggregator accepts
only payloads signed by the key that the :class:`ClientRegistry` records for the
client id the payload claims, and the key holder releases only sums of registered
clients. Signing keys are secret files (mode 0600, one per client); the registry is
public.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from .._files import atomic_write_bytes, read_secret_file
from ..errors import ConfigurationError, ContextError, FormatError, SignatureError
from .wire import MAGIC_REGISTRY, MAGIC_SIGNING_KEY, field, pack_frame, unpack_frame

__all__ = ["MAX_CLIENT_ID_LENGTH", "ClientRegistry", "SigningKey", "check_client_id"]

MAX_CLIENT_ID_LENGTH = 256
_KEY_BYTES = 32
_MAX_CLIENTS = 1 << 20


def _signed_digest(client_id: str, data: bytes) -> bytes:
    """What is signed: SHA-256 over a domain tag, the client id and the payload.

    Hashing first makes one signature cost one pass over a large payload (Ed25519 itself
    would hash it twice); binding the client id means a key signs for its own id only.
    """
    name = client_id.encode()
    return hashlib.sha256(
        b"secagg-payload-v1\x00" + len(name).to_bytes(4, "big") + name + data
    ).digest()


def check_client_id(client_id: object) -> str:
    """Return ``client_id`` if it is a valid client id.

    Raises
    ------
    ConfigurationError
        Unless it is a non-empty string of at most 256 printable characters.
    """
    if (
        not isinstance(client_id, str)
        or not 0 < len(client_id) <= MAX_CLIENT_ID_LENGTH
        or not client_id.isprintable()
    ):
        raise ConfigurationError(
            f"a client id must be a non-empty printable string of at most "
            f"{MAX_CLIENT_ID_LENGTH} characters, got {client_id!r:.60}"
        )
    return client_id


class SigningKey:
    """One client's Ed25519 signing key, bound to its client id.

    Parameters
    ----------
    client_id : str
        The client this key signs for.
    private_key : Ed25519PrivateKey
        The key itself.
    """

    def __init__(self, client_id: str, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise ConfigurationError(
                f"a signing key must be an Ed25519 private key, got {type(private_key).__name__}"
            )
        self.client_id = check_client_id(client_id)
        self._key = private_key

    @classmethod
    def generate(cls, client_id: str) -> SigningKey:
        """A fresh key for ``client_id``."""
        return cls(client_id, Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public key to register."""
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data`` (over its domain-separated SHA-256)."""
        return self._key.sign(_signed_digest(self.client_id, data))

    def __repr__(self) -> str:
        """Describe the key without revealing it."""
        return f"SigningKey(client_id={self.client_id!r})"

    def to_bytes(self) -> bytes:
        """Serialize (secret)."""
        raw = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return pack_frame(MAGIC_SIGNING_KEY, {"client_id": self.client_id}, [raw])

    @classmethod
    def from_bytes(cls, data: bytes) -> SigningKey:
        """Load :meth:`to_bytes` output.

        Raises
        ------
        ContextError
            If ``data`` is not a signing key file.
        """
        try:
            frame = unpack_frame(data, MAGIC_SIGNING_KEY, max_chunks=1, max_chunk_bytes=64)
            client_id = field(frame.header, "client_id", str)
        except FormatError as exc:
            raise ContextError(f"not a secagg signing key: {exc}") from None
        if len(frame.chunks) != 1 or len(frame.chunks[0]) != _KEY_BYTES:
            raise ContextError("a signing key holds one 32-byte Ed25519 key")
        try:
            return cls(client_id, Ed25519PrivateKey.from_private_bytes(frame.chunks[0]))
        except ConfigurationError as exc:
            raise ContextError(str(exc)) from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the key atomically with mode 0600."""
        return atomic_write_bytes(path, self.to_bytes(), mode=0o600)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Load a key file, refusing one readable by group or others."""
        return cls.from_bytes(read_secret_file(path, "signing key"))


def _public_key(client_id: str, key: object) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, SigningKey):
        return key.public_key
    if isinstance(key, bytes | bytearray) and len(key) == _KEY_BYTES:
        try:
            return Ed25519PublicKey.from_public_bytes(bytes(key))
        except ValueError as exc:
            raise ConfigurationError(f"invalid public key for {client_id!r}: {exc}") from None
    raise ConfigurationError(
        f"the key registered for {client_id!r} must be an Ed25519 public key or its 32 raw "
        f"bytes, got {type(key).__name__}"
        + (f" of {len(key)} bytes" if isinstance(key, bytes | bytearray) else "")
    )


class ClientRegistry(Mapping[str, Ed25519PublicKey]):
    """The registered clients: client id → Ed25519 public key (public information).

    Parameters
    ----------
    keys : Mapping[str, Ed25519PublicKey or bytes or SigningKey]
        Each client's public key (raw 32 bytes, a key object, or its signing key).

    Raises
    ------
    ConfigurationError
        On an invalid client id or key, or an empty registry.
    """

    def __init__(self, keys: Mapping[str, object]) -> None:
        if not isinstance(keys, Mapping) or not keys:
            raise ConfigurationError("a client registry needs at least one client")
        if len(keys) > _MAX_CLIENTS:
            raise ConfigurationError(f"a registry holds at most {_MAX_CLIENTS} clients")
        self._keys = {check_client_id(cid): _public_key(cid, key) for cid, key in keys.items()}

    @classmethod
    def of(cls, signing_keys: Iterable[SigningKey]) -> ClientRegistry:
        """The registry of these clients' signing keys."""
        return cls({key.client_id: key.public_key for key in signing_keys})

    def __getitem__(self, client_id: str) -> Ed25519PublicKey:
        """The public key of ``client_id``."""
        return self._keys[client_id]

    def __iter__(self) -> Iterator[str]:
        """Client ids, in registration order."""
        return iter(self._keys)

    def __len__(self) -> int:
        """Number of registered clients."""
        return len(self._keys)

    def verify(self, client_id: str, signature: bytes, data: bytes) -> None:
        """Check ``signature`` over ``data`` by ``client_id``'s registered key.

        Raises
        ------
        SignatureError
            If the client is not registered, or the signature is missing or invalid.
        """
        key = self._keys.get(client_id)
        if key is None:
            raise SignatureError(f"client {client_id!r} is not registered")
        if len(signature) != 64:
            raise SignatureError(f"the payload from {client_id!r} is not signed")
        try:
            key.verify(signature, _signed_digest(client_id, data))
        except InvalidSignature:
            raise SignatureError(f"bad signature on the payload from {client_id!r}") from None

    def _raw(self) -> list[bytes]:
        return [k.public_bytes(Encoding.Raw, PublicFormat.Raw) for k in self._keys.values()]

    @property
    def digest(self) -> str:
        """SHA-256 (hex) over the client ids and keys, in order."""
        h = hashlib.sha256(b"secagg-registry-v1\x00")
        for cid, raw in zip(self._keys, self._raw(), strict=True):
            h.update(len(cid.encode()).to_bytes(4, "big") + cid.encode() + raw)
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        """Serialize (public)."""
        return pack_frame(MAGIC_REGISTRY, {"clients": list(self._keys)}, [b"".join(self._raw())])

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientRegistry:
        """Load :meth:`to_bytes` output.

        Raises
        ------
        ContextError
            If ``data`` is not a registry.
        """
        try:
            frame = unpack_frame(data, MAGIC_REGISTRY, max_chunks=1, max_chunk_bytes=1 << 26)
            clients = field(frame.header, "clients", list)
        except FormatError as exc:
            raise ContextError(f"not a secagg client registry: {exc}") from None
        if len(frame.chunks) != 1 or len(frame.chunks[0]) != _KEY_BYTES * len(clients):
            raise ContextError("the registry's keys do not match its client list")
        if len(set(map(str, clients))) != len(clients):
            raise ContextError("the registry lists a client twice")
        raw = frame.chunks[0]
        try:
            return cls(
                {cid: raw[i * _KEY_BYTES : (i + 1) * _KEY_BYTES] for i, cid in enumerate(clients)}
            )
        except ConfigurationError as exc:
            raise ContextError(f"invalid client registry: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the registry atomically (mode 0644: it is public)."""
        return atomic_write_bytes(path, self.to_bytes(), mode=0o644)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClientRegistry:
        """Load a registry file.

        Raises
        ------
        ContextError
            If the file cannot be read or is not a registry.
        """
        try:
            data = Path(path).read_bytes()
        except (OSError, TypeError) as exc:
            raise ContextError(f"cannot read client registry {path!r}: {exc}") from None
        return cls.from_bytes(data)
