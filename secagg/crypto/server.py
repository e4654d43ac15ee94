"""Summing encrypted updates without any key: the aggregator and the encrypted aggregate.

The server adds the clients' first ciphertext polynomials ``c0`` and their MAC tags
modulo the data primes, and keeps each contributor's ciphertext seeds (32 bytes per
chunk), from which the key holder rebuilds the second polynomials. Nothing here needs
or holds a key; nothing here can decrypt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import (
    ConfigurationError,
    DuplicateClientError,
    FormatError,
    KeyMismatchError,
    NotEnoughClientsError,
    RoundMismatchError,
    SpecMismatchError,
    UnknownClientError,
)
from ._codec import pack_coefficients, unpack_coefficients
from ._rlwe import SEED_BYTES, add_mod
from ._validate import check_count, check_roster, check_round_id
from .client import EncryptedUpdate, chunk_size
from .context import ServerContext
from .layout import layout_for
from .registry import ClientRegistry, check_client_id
from .spec import UpdateSpec
from .wire import MAGIC_AGGREGATE, pack_frame, unpack_frame
from .wire import field as header_field

__all__ = ["Aggregator", "EncryptedAggregate"]


@dataclass(eq=False)
class EncryptedAggregate:
    """An encrypted sum of weighted updates, with who contributed and their seeds.

    Serialize with :meth:`to_bytes` / :meth:`from_bytes`. Only the key holder can
    verify and decrypt it (:meth:`secagg.KeyHolder.release`).

    Attributes
    ----------
    fingerprint : str
        Key fingerprint of the ciphertexts.
    layout : str
        How values sit in the slots.
    spec : UpdateSpec
        The update layout.
    round_id : int
        The aggregation round.
    roster : tuple of str
        The round's published participants.
    contributors : tuple of str
        Clients whose updates are in the sum, in the order they were added.
    c0 : numpy.ndarray
        ``uint64`` of shape ``(chunks, L·N)``: the summed first polynomials.
    seeds : dict[str, bytes]
        Each contributor's chunk seeds, concatenated (32 bytes per chunk).
    tag : tuple of int
        The summed MAC tags, one per data prime.
    min_clients : int
        The server's threshold (the key holder applies its own as well).
    """

    fingerprint: str
    layout: str
    spec: UpdateSpec
    round_id: int
    roster: tuple[str, ...]
    contributors: tuple[str, ...]
    c0: np.ndarray
    seeds: dict[str, bytes]
    tag: tuple[int, ...]
    min_clients: int = 1
    moduli: tuple[int, ...] = field(default=(), repr=False)

    @property
    def num_contributors(self) -> int:
        """Number of updates in the sum."""
        return len(self.contributors)

    @property
    def num_chunks(self) -> int:
        """Ciphertext chunks."""
        return int(self.c0.shape[0])

    def check(self, context: ServerContext) -> None:
        """Check that this object is a well-formed aggregate for ``context``'s key.

        The same checks :meth:`from_bytes` applies to bytes, for an aggregate handed over
        as an object: types, a valid roster, distinct contributors on it, one 32-byte seed
        per chunk and contributor, the chunk count of the spec, every coefficient and tag
        reduced modulo its prime.

        Raises
        ------
        FormatError, KeyMismatchError
            On any inconsistency.
        """
        if self.fingerprint != context.fingerprint:
            raise KeyMismatchError("aggregate was made under another key")
        if not isinstance(self.spec, UpdateSpec) or not isinstance(self.layout, str):
            raise FormatError("an aggregate needs an UpdateSpec and a layout name")
        if type(self.round_id) is not int or not 0 <= self.round_id < 1 << 63:
            raise FormatError(f"round id {self.round_id!r:.40} is not an int in [0, 2^63)")
        if type(self.min_clients) is not int or self.min_clients < 1:
            raise FormatError("min_clients must be a positive int")
        try:
            roster = check_roster(self.roster)
            contributors = tuple(check_client_id(c) for c in self.contributors)
        except ConfigurationError as exc:
            raise FormatError(f"invalid roster or contributors: {exc}") from None
        if not contributors:
            raise FormatError("an aggregate needs at least one contributor")
        if len(set(contributors)) != len(contributors) or not set(contributors) <= set(roster):
            raise FormatError("contributors must be distinct members of the roster")
        preset = context.preset
        chunks = preset.num_chunks(self.spec.numel)
        width = preset.poly_modulus_degree * len(context.moduli)
        c0 = self.c0
        if not isinstance(c0, np.ndarray) or c0.dtype != np.uint64 or c0.shape != (chunks, width):
            raise FormatError(f"c0 must be uint64 of shape ({chunks}, {width})")
        column = np.repeat(np.asarray(context.moduli, dtype=np.uint64), preset.poly_modulus_degree)
        if np.any(c0 >= column):
            raise FormatError("an aggregate coefficient is not reduced modulo its prime")
        if not isinstance(self.seeds, dict) or set(self.seeds) != set(contributors):
            raise FormatError("the aggregate needs exactly one seed block per contributor")
        for cid, block in self.seeds.items():
            if not isinstance(block, bytes) or len(block) != SEED_BYTES * chunks:
                raise FormatError(f"the seeds of {cid!r} do not cover every chunk")
        _parse_tag(list(self.tag) if isinstance(self.tag, tuple | list) else [], context.moduli)

    def to_bytes(self) -> bytes:
        """Serialize: a header, the packed ``c0`` chunks, then one seed block per contributor."""
        header = {
            "fingerprint": self.fingerprint,
            "layout": self.layout,
            "spec": self.spec.to_json(),
            "spec_hash": self.spec.spec_hash,
            "round_id": self.round_id,
            "roster": list(self.roster),
            "contributors": list(self.contributors),
            "tag": list(self.tag),
            "min_clients": self.min_clients,
            "num_chunks": self.num_chunks,
        }
        bits = _bits(self.moduli)
        chunks = [pack_coefficients(row, bits) for row in self.c0]
        chunks += [self.seeds[cid] for cid in self.contributors]
        return pack_frame(MAGIC_AGGREGATE, header, chunks)

    @classmethod
    def from_bytes(cls, data: bytes, context: ServerContext) -> EncryptedAggregate:
        """Parse an aggregate for ``context``'s key (structure and ranges only).

        ``context`` may be the server context, or a key holder's (its
        :meth:`~secagg.KeyMaterial.server_context_object`).

        Raises
        ------
        FormatError, KeyMismatchError
            If the bytes are malformed, inconsistent, or made under another key.
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
        round_id = header_field(header, "round_id", int)
        num_chunks = header_field(header, "num_chunks", int)
        preset = context.preset
        if num_chunks != preset.num_chunks(spec.numel):
            raise FormatError(
                f"{num_chunks} chunks, but the spec needs {preset.num_chunks(spec.numel)}"
            )
        if len(frame.chunks) != num_chunks + len(contributors):
            raise FormatError("chunk count does not match the spec and the contributors")
        moduli = context.moduli
        count = preset.poly_modulus_degree * len(moduli)
        c0 = np.empty((num_chunks, count), dtype=np.uint64)
        for i in range(num_chunks):
            c0[i] = unpack_coefficients(frame.chunks[i], count, _bits(moduli))
        seeds = dict(zip(map(str, contributors), frame.chunks[num_chunks:], strict=True))
        aggregate = cls(
            fingerprint=context.fingerprint,
            layout=header_field(header, "layout", str),
            spec=spec,
            round_id=round_id,
            roster=tuple(roster),
            contributors=tuple(contributors),
            c0=c0,
            seeds=seeds,
            tag=tuple(header_field(header, "tag", list)),
            min_clients=header_field(header, "min_clients", int),
            moduli=moduli,
        )
        aggregate.check(context)
        return aggregate


def _bits(moduli: Sequence[int]) -> int:
    return max(int(q).bit_length() for q in moduli)


def _parse_tag(tag: list[object], moduli: Sequence[int]) -> tuple[int, ...]:
    if len(tag) != len(moduli) or not all(
        type(t) is int and 0 <= t < q for t, q in zip(tag, moduli, strict=True)
    ):
        raise FormatError("the MAC tag must hold one reduced integer per data prime")
    return tuple(int(t) for t in tag)  # type: ignore[call-overload]


class Aggregator:
    """Sums one round's encrypted updates holding only the server context.

    Each :meth:`add` checks a payload completely (frame, signature by the client's
    registered key, round, roster, key, layout, ciphertext ranges) and only then folds
    it into the running sums, so a rejected payload leaves them exactly as they were
    and memory stays at about one update's worth (plus 32 bytes per chunk and client).

    Parameters
    ----------
    server_context : bytes or ServerContext
        From :meth:`secagg.KeyMaterial.server_context`; a secret context is refused
        (:class:`secagg.errors.SecretKeyExposureError`).
    registry : ClientRegistry
        The registered clients' public keys; every payload must be signed by its
        client's key.
    round_id : int
        The round being aggregated; updates for another round are rejected.
    roster : sequence of str
        The round's published participants (all registered).
    min_clients : int, optional
        Fewest contributions :meth:`finalize` accepts.
    expected_spec_hash : str, optional
        Reject updates of any other model layout from the first one on.

    Raises
    ------
    ConfigurationError
        On invalid arguments (a roster naming an unregistered client included).
    """

    def __init__(
        self,
        server_context: bytes | ServerContext,
        *,
        registry: ClientRegistry,
        round_id: int,
        roster: Sequence[str],
        min_clients: int = 2,
        expected_spec_hash: str | None = None,
    ) -> None:
        if expected_spec_hash is not None and (
            not isinstance(expected_spec_hash, str)
            or len(expected_spec_hash) != 64
            or any(c not in "0123456789abcdef" for c in expected_spec_hash)
        ):
            raise ConfigurationError("expected_spec_hash must be a SHA-256 hex digest")
        if isinstance(server_context, ServerContext):
            self.context = server_context
        else:
            self.context = ServerContext.from_bytes(server_context)
        if not isinstance(registry, ClientRegistry):
            raise ConfigurationError(
                f"registry must be a ClientRegistry, got {type(registry).__name__}"
            )
        self.round_id = check_round_id(round_id)
        self.roster = check_roster(roster, max_clients=self.context.preset.max_clients)
        unknown = [cid for cid in self.roster if cid not in registry]
        if unknown:
            raise ConfigurationError(f"the roster names unregistered clients: {unknown[:5]}")
        self.min_clients = check_count(min_clients, "min_clients", high=len(self.roster))
        self.registry = registry
        self.expected_spec_hash = expected_spec_hash
        self._moduli = np.repeat(
            np.asarray(self.context.moduli, dtype=np.uint64),
            self.context.preset.poly_modulus_degree,
        )
        self._bits = _bits(self.context.moduli)
        self._chunk_size = chunk_size(self.context.preset)
        self._spec: UpdateSpec | None = None
        self._c0: np.ndarray | None = None
        self._tag = tuple(0 for _ in self.context.moduli)
        self._seeds: dict[str, bytes] = {}
        self.rejected: list[tuple[str, str]] = []

    @property
    def contributors(self) -> tuple[str, ...]:
        """Client ids folded in so far, in order."""
        return tuple(self._seeds)

    def add(self, payload: bytes) -> str:
        """Validate ``payload`` completely, then fold it into the running sums.

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
            c0 = self._check(update)
        except Exception as exc:
            self.rejected.append((type(exc).__name__, str(exc)))
            raise
        # Everything is checked: mutate.
        if self._c0 is None:
            self._c0 = c0
            self._spec = update.spec
        else:
            for total, addend in zip(self._c0, c0, strict=True):
                add_mod(total, addend, self._moduli)
        self._tag = tuple(
            (a + b) % q for a, b, q in zip(self._tag, update.tag, self.context.moduli, strict=True)
        )
        self._seeds[update.client_id] = update.seeds
        return update.client_id

    def _check(self, update: EncryptedUpdate) -> np.ndarray:
        """Every check of one update; returns its unpacked ``c0`` chunks."""
        cid = update.client_id
        if cid not in self.roster:
            raise UnknownClientError(f"client {cid!r} is not on this round's roster")
        self.registry.verify(cid, update.signature, update.signed_bytes)
        if update.round_id != self.round_id:
            raise RoundMismatchError(
                f"update is for round {update.round_id}, this is round {self.round_id}"
            )
        if update.roster != self.roster:
            raise FormatError("update was made for another roster of this round")
        if update.fingerprint != self.context.fingerprint:
            raise KeyMismatchError(f"update from {cid!r} was made under another key")
        preset = self.context.preset
        if update.preset_name != preset.name or update.layout != layout_for(preset).name:
            raise FormatError(f"update uses preset {update.preset_name!r} / {update.layout!r}")
        if self.expected_spec_hash is not None and update.spec_hash != self.expected_spec_hash:
            raise SpecMismatchError("update layout differs from the expected model spec")
        if self._spec is not None and update.spec_hash != self._spec.spec_hash:
            raise SpecMismatchError("update layout differs from the round's first update")
        if cid in self._seeds:
            raise DuplicateClientError(f"client {cid!r} already contributed")
        _parse_tag(list(update.tag), self.context.moduli)
        expected = preset.num_chunks(update.spec.numel)
        if len(update.chunks) != expected:
            raise FormatError(f"{len(update.chunks)} chunks, but the spec needs {expected}")
        if any(len(c) != self._chunk_size for c in update.chunks):
            raise FormatError(f"a ciphertext chunk is not {self._chunk_size} bytes")
        count = self._moduli.size
        c0 = np.empty((expected, count), dtype=np.uint64)
        for i, chunk in enumerate(update.chunks):
            c0[i] = unpack_coefficients(chunk[SEED_BYTES:], count, self._bits)
            if np.any(c0[i] >= self._moduli):
                raise FormatError("a ciphertext coefficient is not reduced modulo its prime")
        return c0

    def finalize(self) -> EncryptedAggregate:
        """Return the encrypted sum once at least ``min_clients`` have contributed.

        Raises
        ------
        NotEnoughClientsError
            With fewer contributions than ``min_clients``.
        """
        count = len(self._seeds)
        if self._c0 is None or self._spec is None or count < self.min_clients:
            raise NotEnoughClientsError(
                f"{count} contribution(s), fewer than min_clients={self.min_clients}"
            )
        return EncryptedAggregate(
            fingerprint=self.context.fingerprint,
            layout=layout_for(self.context.preset).name,
            spec=self._spec,
            round_id=self.round_id,
            roster=self.roster,
            contributors=self.contributors,
            c0=self._c0.copy(),
            seeds=dict(self._seeds),
            tag=self._tag,
            min_clients=self.min_clients,
            moduli=self.context.moduli,
        )
