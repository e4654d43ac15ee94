"""Versioned, self-describing framing shared by every secagg byte format.

Layout (big-endian)::

    magic      4 bytes   what the payload is (update, aggregate, context, key, checkpoint)
    version    u16       format version of the kind (:func:`format_version`)
    header_len u32       length of the JSON header (at most MAX_HEADER_BYTES)
    body_len   u64       length of the body: the chunks, back to back
    sig_len    u16       0, or 64 for a trailing Ed25519 signature
    header     JSON object, UTF-8; "chunk_sizes" lists the body's chunks
    body       chunks
    signature  over every byte before it

Sizes are checked against the real length before anything is parsed, the JSON
header is parsed only when its size is sane, and every failure raises
:class:`secagg.errors.FormatError`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import FormatError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC_AGGREGATE",
    "MAGIC_CHECKPOINT",
    "MAGIC_KEY",
    "MAGIC_KEY_HOLDER",
    "MAGIC_REGISTRY",
    "MAGIC_SERVER_CONTEXT",
    "MAGIC_SIGNING_KEY",
    "MAGIC_UPDATE",
    "Frame",
    "field",
    "format_version",
    "pack_frame",
    "unpack_frame",
]

FORMAT_VERSION = 2
MAGIC_UPDATE = b"SAUP"
MAGIC_AGGREGATE = b"SAAG"
MAGIC_SERVER_CONTEXT = b"SASC"
MAGIC_KEY = b"SAKM"
MAGIC_KEY_HOLDER = b"SAKH"
MAGIC_REGISTRY = b"SARG"
MAGIC_SIGNING_KEY = b"SASK"
MAGIC_CHECKPOINT = b"SACK"
_KNOWN_MAGICS = {
    MAGIC_UPDATE: "an encrypted update",
    MAGIC_AGGREGATE: "an encrypted aggregate",
    MAGIC_SERVER_CONTEXT: "a server context",
    MAGIC_KEY: "a secret context (key material)",
    MAGIC_KEY_HOLDER: "a key holder's state file",
    MAGIC_REGISTRY: "a client registry",
    MAGIC_SIGNING_KEY: "a client's signing key",
    MAGIC_CHECKPOINT: "a checkpoint",
}
# Kinds whose format changed since FORMAT_VERSION: updates and aggregates carry 32-byte
# AES-CTR c1 seeds from version 3 on (version 2 carried SEAL's 64-byte Blake2xb seeds).
_VERSIONS = {MAGIC_UPDATE: 3, MAGIC_AGGREGATE: 3}
SIGNATURE_BYTES = 64
MAX_HEADER_BYTES = 1 << 20
_PREFIX = struct.Struct(">4sHIQH")

T = TypeVar("T")


@dataclass(frozen=True)
class Frame:
    """A parsed frame: header, body chunks, signature and the bytes the signature covers."""

    header: dict[str, Any]
    chunks: tuple[bytes, ...]
    signature: bytes
    signed_bytes: bytes


def format_version(magic: bytes) -> int:
    """The format version this build writes and reads for frames of kind ``magic``."""
    return _VERSIONS.get(bytes(magic), FORMAT_VERSION)


def describe_magic(data: bytes) -> str:
    """Name what ``data`` looks like from its magic, for error messages."""
    return _KNOWN_MAGICS.get(bytes(data[:4]), "unknown bytes")


def pack_frame(
    magic: bytes, header: dict[str, Any], chunks: Sequence[bytes], *, signed: bool = False
) -> bytes:
    """Frame ``header`` and ``chunks``; with ``signed`` the caller appends a 64-byte signature.

    ``header["chunk_sizes"]`` is filled in here.
    """
    header = {**header, "chunk_sizes": [len(c) for c in chunks]}
    header_bytes = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise FormatError(f"header of {len(header_bytes)} bytes exceeds {MAX_HEADER_BYTES}")
    body_len = sum(len(c) for c in chunks)
    prefix = _PREFIX.pack(
        magic,
        format_version(magic),
        len(header_bytes),
        body_len,
        SIGNATURE_BYTES if signed else 0,
    )
    return b"".join([prefix, header_bytes, *chunks])


def unpack_frame(
    data: bytes,
    magic: bytes,
    *,
    max_chunks: int = 1 << 20,
    max_chunk_bytes: int = 1 << 30,
) -> Frame:
    """Parse and size-check a frame of kind ``magic``.

    Raises
    ------
    FormatError
        On a wrong magic or version, inconsistent or oversized lengths, a truncated
        or over-long payload, or an unreadable header.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _PREFIX.size:
        raise FormatError(f"payload of {len(data)} bytes is shorter than the frame prefix")
    got_magic, version, header_len, body_len, sig_len = _PREFIX.unpack_from(data)
    if got_magic != magic:
        raise FormatError(
            f"expected {_KNOWN_MAGICS.get(magic, magic.hex())}, got {describe_magic(data)}"
        )
    if version != format_version(magic):
        raise FormatError(
            f"unsupported format version {version} of {_KNOWN_MAGICS.get(magic, 'this kind')} "
            f"(this build reads {format_version(magic)})"
        )
    if header_len > MAX_HEADER_BYTES:
        raise FormatError(f"header length {header_len} exceeds {MAX_HEADER_BYTES}")
    if sig_len not in (0, SIGNATURE_BYTES):
        raise FormatError(f"signature length {sig_len} is neither 0 nor {SIGNATURE_BYTES}")
    expected = _PREFIX.size + header_len + body_len + sig_len
    if expected != len(data):
        raise FormatError(
            f"payload is {len(data)} bytes but its prefix declares {expected} (truncated or padded)"
        )
    header_end = _PREFIX.size + header_len
    try:
        header = json.loads(data[_PREFIX.size : header_end].decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSON, UTF-8 and int-size errors
        raise FormatError(f"unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    sizes = field(header, "chunk_sizes", list)
    if len(sizes) > max_chunks:
        raise FormatError(f"{len(sizes)} chunks exceed the limit of {max_chunks}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise FormatError("chunk sizes must be positive integers")
    if any(s > max_chunk_bytes for s in sizes):
        raise FormatError(f"a chunk exceeds {max_chunk_bytes} bytes")
    if sum(sizes) != body_len:
        raise FormatError("chunk sizes do not add up to the body length")
    chunks = []
    offset = header_end
    for size in sizes:
        chunks.append(data[offset : offset + size])
        offset += size
    body_end = header_end + body_len
    return Frame(header, tuple(chunks), data[body_end:], data[:body_end])


def field(header: dict[str, Any], name: str, kind: type[T]) -> T:
    """Return ``header[name]`` if present and of type ``kind``, else raise :class:`FormatError`."""
    value = header.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FormatError(f"header field {name!r} is missing or not {kind.__name__}")
    return value
