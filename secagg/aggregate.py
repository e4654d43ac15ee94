"""Summing ciphertexts without a secret key: the encrypted aggregate and the aggregator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import tenseal.sealapi as sealapi
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ._seal import ciphertext_from_bytes, ciphertext_to_bytes
from .context import ServerContext
from .errors import (
    ConfigurationError,
    DuplicateClientError,
    FormatError,
    KeyMismatchError,
    NotEnoughClientsError,
    RoundMismatchError,
    SignatureError,
    SpecMismatchError,
    UnknownClientError,
)
from .presets import Preset
from .spec import UpdateSpec
from .update import EncryptedUpdate, roster_digest
from .wire import MAGIC_AGGREGATE, pack_frame, unpack_frame
from .wire import field as header_field

__all__ = ["Aggregator", "EncryptedAggregate", "load_update_ciphertexts"]


class CiphertextContext(Protocol):
    """Anything that can load ciphertexts: a :class:`ServerContext` or a key holder."""

    @property
    def preset(self) -> Preset: ...

    @property
    def seal_context(self) -> Any: ...

    @property
    def fingerprint(self) -> str: ...


def load_update_ciphertexts(context: CiphertextContext, update: EncryptedUpdate) -> list[Any]:
    """Load every ciphertext chunk of ``update`` (nothing is summed yet).

    Raises
    ------
    KeyMismatchError
        If the update was made under another key.
    FormatError
        If the chunk count does not fit the spec or a chunk does not load.
    """
    if update.fingerprint != context.fingerprint:
        raise KeyMismatchError(
            f"update from {update.client_id!r} was encrypted under key "
            f"{update.fingerprint[:16]}…, not {context.fingerprint[:16]}…"
        )
    preset = context.preset
    expected = max(1, -(-update.spec.numel // preset.values_per_chunk))
    if len(update.chunks) != expected:
        raise FormatError(f"{len(update.chunks)} chunks, but the spec needs {expected}")
    limit = 16 * preset.slots + 4096
    if any(len(c) > limit for c in update.chunks):
        raise FormatError(f"a ciphertext chunk exceeds {limit} bytes")
    return [
        ciphertext_from_bytes(context.seal_context, c, scale=preset.scale) for c in update.chunks
    ]


@dataclass(eq=False)
class EncryptedAggregate:
    """An encrypted sum of weighted updates, with who contributed.

    Add an :class:`EncryptedUpdate` with ``+`` (or :meth:`add_update`); serialize
    with :meth:`to_bytes` / :meth:`from_bytes`. Only a key holder can decrypt it
    (:meth:`secagg.KeyHolder.release`).
    """

    context: CiphertextContext
    spec: UpdateSpec
    round_id: int
    roster: tuple[str, ...]
    contributors: tuple[str, ...]
    ciphertexts: list[Any]
    min_clients: int = 1
    _evaluator: Any = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str:
        """Key fingerprint of the ciphertexts."""
        return self.context.fingerprint

    @property
    def num_contributors(self) -> int:
        """Number of updates in the sum."""
        return len(self.contributors)

    @classmethod
    def from_update(
        cls, context: CiphertextContext, update: EncryptedUpdate | bytes
    ) -> EncryptedAggregate:
        """Start an aggregate from one update."""
        if not isinstance(update, EncryptedUpdate):
            update = EncryptedUpdate.from_bytes(update)
        return cls(
            context=context,
            spec=update.spec,
            round_id=update.round_id,
            roster=update.roster,
            contributors=(update.client_id,),
            ciphertexts=load_update_ciphertexts(context, update),
        )

    def _check_compatible(self, update: EncryptedUpdate) -> None:
        if update.round_id != self.round_id:
            raise RoundMismatchError(
                f"update is for round {update.round_id}, the aggregate for round {self.round_id}"
            )
        if update.spec_hash != self.spec.spec_hash:
            raise SpecMismatchError(
                f"update layout {update.spec_hash[:16]}… differs from {self.spec.spec_hash[:16]}…"
            )
        if roster_digest(update.roster) != roster_digest(self.roster):
            raise FormatError("update was made for another roster of this round")
        if update.client_id in self.contributors:
            raise DuplicateClientError(f"client {update.client_id!r} already contributed")

    def add_update(self, update: EncryptedUpdate | bytes) -> None:
        """Fold ``update`` into the sum in place; on any error the sum is unchanged."""
        if not isinstance(update, EncryptedUpdate):
            update = EncryptedUpdate.from_bytes(update)
        self._check_compatible(update)
        loaded = load_update_ciphertexts(self.context, update)  # may raise: sum untouched
        if self._evaluator is None:
            self._evaluator = sealapi.Evaluator(self.context.seal_context)
        for total, ciphertext in zip(self.ciphertexts, loaded, strict=True):
            self._evaluator.add_inplace(total, ciphertext)
        self.contributors = (*self.contributors, update.client_id)

    def __add__(self, update: EncryptedUpdate | bytes) -> EncryptedAggregate:
        """Return a new aggregate with ``update`` added (this one is unchanged)."""
        copy = EncryptedAggregate.from_bytes(self.to_bytes(), self.context)
        copy.add_update(update)
        return copy

    def to_bytes(self) -> bytes:
        """Serialize the aggregate (full, non-seeded ciphertexts: 16 bytes per slot)."""
        header = {
            "kind": "aggregate",
            "fingerprint": self.fingerprint,
            "preset": self.context.preset.name,
            "spec": self.spec.to_json(),
            "spec_hash": self.spec.spec_hash,
            "round_id": self.round_id,
            "roster": list(self.roster),
            "contributors": list(self.contributors),
            "min_clients": self.min_clients,
        }
        chunks = [ciphertext_to_bytes(ct) for ct in self.ciphertexts]
        return pack_frame(MAGIC_AGGREGATE, header, chunks)

    @classmethod
    def from_bytes(cls, data: bytes, context: CiphertextContext) -> EncryptedAggregate:
        """Load an aggregate under ``context`` (a server context or a key holder).

        Raises
        ------
        FormatError, KeyMismatchError
            If the bytes are malformed or made under another key.
        """
        frame = unpack_frame(data, MAGIC_AGGREGATE, max_chunk_bytes=1 << 23)
        header = frame.header
        if header_field(header, "fingerprint", str) != context.fingerprint:
            raise KeyMismatchError("aggregate was made under another key")
        spec = UpdateSpec.from_json(header.get("spec"))
        if header_field(header, "spec_hash", str) != spec.spec_hash:
            raise FormatError("spec hash does not match the spec carried in the header")
        roster = header_field(header, "roster", list)
        contributors = header_field(header, "contributors", list)
        if not all(isinstance(c, str) for c in [*roster, *contributors]):
            raise FormatError("roster and contributors must be client ids")
        if len(set(contributors)) != len(contributors) or not set(contributors) <= set(roster):
            raise FormatError("contributors must be distinct members of the roster")
        preset = context.preset
        expected = max(1, -(-spec.numel // preset.values_per_chunk))
        if len(frame.chunks) != expected:
            raise FormatError(f"{len(frame.chunks)} chunks, but the spec needs {expected}")
        ciphertexts = [
            ciphertext_from_bytes(context.seal_context, c, scale=preset.scale) for c in frame.chunks
        ]
        min_clients = header_field(header, "min_clients", int)
        return cls(
            context=context,
            spec=spec,
            round_id=header_field(header, "round_id", int),
            roster=tuple(roster),
            contributors=tuple(contributors),
            ciphertexts=ciphertexts,
            min_clients=max(1, min_clients),
        )


class Aggregator:
    """Sums one round's encrypted updates holding only the server context.

    Each :meth:`add` validates a payload and folds it into a running sum at once,
    so memory stays at about one update's worth whatever the number of clients.
    A rejected payload leaves the sum exactly as it was.

    Parameters
    ----------
    server_context : bytes or ServerContext
        From :meth:`secagg.KeyHolder.server_context`; a context with a secret key
        is refused (:class:`secagg.errors.SecretKeyExposureError`).
    round_id : int
        The round being aggregated; updates for another round are rejected.
    roster : sequence of str
        The round's published participants; updates from anyone else are rejected.
    min_clients : int, optional
        Fewest contributions :meth:`finalize` accepts (and the key holder releases).
    client_keys : Mapping[str, Ed25519PublicKey or bytes], optional
        Registered Ed25519 public keys (raw 32 bytes allowed); when given, every
        payload must be signed by its client's key.
    expected_spec_hash : str, optional
        Reject updates of any other model layout from the first one on.
    """

    def __init__(
        self,
        server_context: bytes | ServerContext,
        *,
        round_id: int,
        roster: Sequence[str],
        min_clients: int = 2,
        client_keys: Mapping[str, Ed25519PublicKey | bytes] | None = None,
        expected_spec_hash: str | None = None,
    ) -> None:
        if isinstance(server_context, ServerContext):
            self.context = server_context
        else:
            self.context = ServerContext.from_bytes(server_context)
        if len(set(roster)) != len(roster) or not roster:
            raise ConfigurationError("roster must be a non-empty list of distinct client ids")
        if len(roster) > self.context.preset.roster_slots:
            raise ConfigurationError(
                f"roster of {len(roster)} exceeds {self.context.preset.roster_slots} slots"
            )
        if not 1 <= min_clients <= len(roster):
            raise ConfigurationError("min_clients must be between 1 and the roster size")
        self.round_id = round_id
        self.roster = tuple(roster)
        self.min_clients = min_clients
        self.expected_spec_hash = expected_spec_hash
        self._client_keys = {
            cid: Ed25519PublicKey.from_public_bytes(k) if isinstance(k, bytes) else k
            for cid, k in (client_keys or {}).items()
        }
        self._require_signatures = client_keys is not None
        self._aggregate: EncryptedAggregate | None = None
        self.rejected: list[tuple[str, str]] = []

    @property
    def contributors(self) -> tuple[str, ...]:
        """Client ids folded in so far."""
        return () if self._aggregate is None else self._aggregate.contributors

    def add(self, payload: bytes) -> str:
        """Validate ``payload`` and fold it into the running sum.

        Returns
        -------
        str
            The contributing client's id.

        Raises
        ------
        PayloadError
            (``FormatError``, ``KeyMismatchError``, ``SpecMismatchError``,
            ``RoundMismatchError``, ``SignatureError``) for a bad payload;
        DuplicateClientError, UnknownClientError
            for a second update or a client off the roster.
        """
        try:
            update = EncryptedUpdate.from_bytes(payload)
            self._check(update)
            if self._aggregate is None:
                aggregate = EncryptedAggregate.from_update(self.context, update)
                aggregate.min_clients = self.min_clients
                self._aggregate = aggregate
            else:
                self._aggregate.add_update(update)
        except Exception as exc:
            self.rejected.append((type(exc).__name__, str(exc)))
            raise
        return update.client_id

    def _check(self, update: EncryptedUpdate) -> None:
        if update.client_id not in self.roster:
            raise UnknownClientError(f"client {update.client_id!r} is not on this round's roster")
        if self._require_signatures:
            key = self._client_keys.get(update.client_id)
            if key is None:
                raise SignatureError(f"no registered key for client {update.client_id!r}")
            if not update.is_signed:
                raise SignatureError(f"update from {update.client_id!r} is not signed")
            try:
                key.verify(update.signature, update.signed_bytes)
            except InvalidSignature:
                raise SignatureError(f"bad signature on update from {update.client_id!r}") from None
        if update.round_id != self.round_id:
            raise RoundMismatchError(
                f"update is for round {update.round_id}, this is round {self.round_id}"
            )
        if tuple(update.roster) != self.roster:
            raise FormatError("update was made for another roster of this round")
        if update.fingerprint != self.context.fingerprint:
            raise KeyMismatchError(f"update from {update.client_id!r} was made under another key")
        if self.expected_spec_hash is not None and update.spec_hash != self.expected_spec_hash:
            raise SpecMismatchError("update layout differs from the expected model spec")

    def finalize(self) -> EncryptedAggregate:
        """Return the encrypted sum once at least ``min_clients`` have contributed.

        Raises
        ------
        NotEnoughClientsError
            With fewer contributions than ``min_clients``.
        """
        count = len(self.contributors)
        if self._aggregate is None or count < self.min_clients:
            raise NotEnoughClientsError(
                f"{count} contribution(s), fewer than min_clients={self.min_clients}"
            )
        return self._aggregate
