"""The key holder: generates CKKS keys, exports a key-less server context, decrypts safely."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._files import atomic_write_bytes
from ._seal import SealSession, parameters_for, parameters_from_bytes, parameters_to_bytes
from ._slots import MAX_ROUND_ID
from .aggregate import EncryptedAggregate
from .context import (
    _preset_from_header,
    check_parameters_match,
    preset_to_header,
    server_context_bytes,
)
from .errors import (
    ConfigurationError,
    ContextError,
    DecryptionBudgetExceededError,
    FormatError,
    KeyMismatchError,
    ReleaseError,
    RosterError,
    RoundAlreadyReleasedError,
)
from .presets import Preset, get_preset
from .release import ReleasedAggregate, check_integrity, flooding_std, secure_gaussian
from .spec import unflatten_update
from .wire import MAGIC_KEY, MAGIC_SERVER_CONTEXT, field, pack_frame, unpack_frame

__all__ = ["KeyHolder"]

DEFAULT_DECRYPTION_BUDGET = 1 << 16
DEFAULT_STATISTICAL_SECURITY = 30
DEFAULT_MIN_CLIENTS = 2
# A flooded weight sum must stand this many flooding deviations above zero.
_MIN_WEIGHT_SUM_SIGMAS = 10.0


class KeyHolder:
    """Holds a CKKS secret key: encrypts updates, decrypts and releases aggregates.

    Clients of a federation share one key holder's secret context (they encrypt with
    the secret key, which gives seeded, half-size ciphertexts); the aggregation
    server gets only :meth:`server_context`. Create keys with :meth:`generate`.

    Every release spends the key's decryption budget (counted in ciphertexts). When
    the key holder is bound to a file (:meth:`save` or :meth:`load`), the spent
    budget is written there *before* anything is released, so it never rolls back.
    """

    def __init__(
        self,
        session: SealSession,
        *,
        fingerprint: str,
        decryption_budget: int,
        decryptions_used: int,
        statistical_security: int,
        min_clients: int = DEFAULT_MIN_CLIENTS,
        last_released_round: int = -1,
    ) -> None:
        self._session = session
        self._fingerprint = fingerprint
        self.decryption_budget = decryption_budget
        self.decryptions_used = decryptions_used
        self.statistical_security = statistical_security
        self.min_clients = min_clients
        self.last_released_round = last_released_round
        self._path: Path | None = None

    # ------------------------------------------------------------------ creation
    @classmethod
    def generate(
        cls,
        preset: str | Preset = "default",
        *,
        decryption_budget: int = DEFAULT_DECRYPTION_BUDGET,
        statistical_security: int = DEFAULT_STATISTICAL_SECURITY,
        min_clients: int = DEFAULT_MIN_CLIENTS,
    ) -> KeyHolder:
        """Generate a fresh secret key under a named parameter preset.

        Parameters
        ----------
        preset : str or Preset, optional
            Parameter preset name (see :data:`secagg.PRESETS`), default ``"default"``.
        decryption_budget : int, optional
            Most ciphertexts this key will ever decrypt and release (``τ``); the
            flooding noise grows with its square root. Default 65,536.
        statistical_security : int, optional
            Statistical security ``s`` of the flooding, in bits (at least 30).
        min_clients : int, optional
            The key holder's own policy: never release a sum of fewer distinct clients,
            whatever the server asks (default 2).
        """
        chosen = get_preset(preset)
        if decryption_budget < 1:
            raise ConfigurationError("decryption_budget must be at least 1")
        if statistical_security < 30:
            raise ConfigurationError("statistical_security below 30 bits is not supported")
        if not 1 <= min_clients <= chosen.max_clients:
            raise ConfigurationError(f"min_clients must be in [1, {chosen.max_clients}]")
        parms_bytes = parameters_to_bytes(parameters_for(chosen))
        session = SealSession(chosen, parms_bytes, None)
        return cls(
            session,
            fingerprint=_fingerprint(session),
            decryption_budget=decryption_budget,
            decryptions_used=0,
            statistical_security=statistical_security,
            min_clients=min_clients,
        )

    # ------------------------------------------------------------------ properties
    @property
    def fingerprint(self) -> str:
        """SHA-256 key fingerprint (hex) carried by every payload made with this key."""
        return self._fingerprint

    @property
    def preset(self) -> Preset:
        """The CKKS parameter preset."""
        return self._session.preset

    @property
    def seal_context(self) -> Any:
        """The SEAL context (used to load ciphertexts)."""
        return self._session.context

    @property
    def session(self) -> SealSession:
        """SEAL encoder, encryptor and decryptor for this key (internal use)."""
        return self._session

    @property
    def decryptions_left(self) -> int:
        """Ciphertext decryptions left before the keys must be rotated."""
        return self.decryption_budget - self.decryptions_used

    def __repr__(self) -> str:
        """Describe the key without revealing it."""
        return (
            f"KeyHolder(preset={self.preset.name!r}, fingerprint={self.fingerprint[:16]}…, "
            f"decryptions_left={self.decryptions_left})"
        )

    # ------------------------------------------------------------------ export
    def server_context(self) -> bytes:
        """Serialize what the aggregation server needs: parameters and fingerprint, no keys."""
        return server_context_bytes(self.preset, self.fingerprint, self._session.parms_bytes)

    def to_bytes(self) -> bytes:
        """Serialize the secret context (secret key, budget state). Keep it secret."""
        header = {
            "preset": preset_to_header(self.preset),
            "fingerprint": self.fingerprint,
            "decryption_budget": self.decryption_budget,
            "decryptions_used": self.decryptions_used,
            "statistical_security": self.statistical_security,
            "min_clients": self.min_clients,
            "last_released_round": self.last_released_round,
        }
        chunks = [self._session.parms_bytes, self._session.secret_key_bytes()]
        return pack_frame(MAGIC_KEY, header, chunks)

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyHolder:
        """Load a secret context written by :meth:`to_bytes`.

        Raises
        ------
        ContextError
            If ``data`` is not a secret context (a server context is refused with a
            message saying so).
        """
        if isinstance(data, bytes | bytearray) and bytes(data[:4]) == MAGIC_SERVER_CONTEXT:
            raise ContextError("this is a server context: it holds no secret key")
        try:
            frame = unpack_frame(data, MAGIC_KEY, max_chunks=2, max_chunk_bytes=1 << 24)
            header = frame.header
            preset = _preset_from_header(field(header, "preset", dict))
            fingerprint = field(header, "fingerprint", str)
            budget = field(header, "decryption_budget", int)
            used = field(header, "decryptions_used", int)
            security = field(header, "statistical_security", int)
            min_clients = field(header, "min_clients", int)
            last_round = field(header, "last_released_round", int)
        except FormatError as exc:
            raise ContextError(f"not a secagg secret context: {exc}") from None
        if (
            len(frame.chunks) != 2
            or not 0 <= used <= budget
            or security < 30
            or not 1 <= min_clients <= preset.max_clients
            or last_round < -1
        ):
            raise ContextError("secret context has inconsistent fields")
        check_parameters_match(parameters_from_bytes(frame.chunks[0]), preset)
        session = SealSession(preset, frame.chunks[0], frame.chunks[1])
        holder = cls(
            session,
            fingerprint=fingerprint,
            decryption_budget=budget,
            decryptions_used=used,
            statistical_security=security,
            min_clients=min_clients,
            last_released_round=last_round,
        )
        if _fingerprint(session) != fingerprint:
            raise ContextError("secret key does not match its recorded fingerprint")
        return holder

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the secret context atomically to ``path`` (mode 0600) and bind to it.

        Later releases record their spent budget in this file before releasing.
        """
        self._path = atomic_write_bytes(path, self.to_bytes(), mode=0o600)
        return self._path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyHolder:
        """Load a secret context from ``path`` and bind to it (see :meth:`save`)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ContextError(f"cannot read key file {path}: {exc}") from None
        holder = cls.from_bytes(data)
        holder._path = Path(path)
        return holder

    # ------------------------------------------------------------------ release
    def flooding_std(self, num_contributors: int) -> float:
        """Flooding noise standard deviation for an aggregate of ``num_contributors``."""
        return flooding_std(
            self.preset.noise_bound(num_contributors),
            decryption_budget=self.decryption_budget,
            statistical_security=self.statistical_security,
        )

    def release(
        self, aggregate: EncryptedAggregate | bytes, *, min_clients: int | None = None
    ) -> ReleasedAggregate:
        """Decrypt an aggregate, check its integrity, and release the flooded weighted mean.

        The key holder releases at most one aggregate per round id, in increasing
        order, and never a sum of fewer distinct clients than the largest of its own
        ``min_clients`` policy, the aggregate's, and the argument.

        Parameters
        ----------
        aggregate : EncryptedAggregate or bytes
            The server's encrypted sum (or its serialized form).
        min_clients : int, optional
            Raise the threshold of distinct contributions for this release.

        Raises
        ------
        DecryptionBudgetExceededError
            If releasing would pass the key's decryption budget; rotate the keys.
        RoundAlreadyReleasedError
            If this round id (or a later one) was already released under this key.
        RosterError
            If the encrypted header slots show too few, duplicated or mixed contributions.
        ReleaseError
            If the flooded weight sum is too small to divide by (raise ``weight_bound``
            tightness: a smaller public bound gives larger normalised weights).
        KeyMismatchError
            If the aggregate was made under another key.
        """
        if not isinstance(aggregate, EncryptedAggregate):
            aggregate = EncryptedAggregate.from_bytes(aggregate, self)
        elif aggregate.fingerprint != self.fingerprint:
            raise KeyMismatchError("aggregate was made under another key")
        needed = len(aggregate.ciphertexts)
        if needed > self.decryptions_left:
            raise DecryptionBudgetExceededError(
                f"releasing needs {needed} decryptions but only {self.decryptions_left} of "
                f"{self.decryption_budget} are left; rotate the keys (KeyHolder.generate)"
            )
        if not 0 <= aggregate.round_id <= MAX_ROUND_ID:
            raise RosterError(f"round id {aggregate.round_id} is outside [0, 2^63)")
        if aggregate.round_id <= self.last_released_round:
            raise RoundAlreadyReleasedError(
                f"round {aggregate.round_id} is not after the last released round "
                f"{self.last_released_round}: one release per round, in order"
            )
        threshold = max(self.min_clients, aggregate.min_clients, min_clients or 1)
        # Spend the budget first (and persist it): a crash can waste budget, never reuse it.
        self.decryptions_used += needed
        self._persist()
        preset = self.preset
        contributors = len(aggregate.contributors)
        plain = np.stack([self._session.decrypt(ct) for ct in aggregate.ciphertexts])
        check_integrity(
            plain,
            preset,
            roster=aggregate.roster,
            contributors=aggregate.contributors,
            min_clients=threshold,
            round_id=aggregate.round_id,
            tolerance=4 * preset.noise_bound(contributors),
        )
        sigma = self.flooding_std(contributors)
        numel = aggregate.spec.numel
        values = plain[:, preset.header_slots :].reshape(-1)[:numel]
        flooded = values + sigma * secure_gaussian(numel)
        weight_sum = float(plain[0, preset.roster_slots] + sigma * secure_gaussian(1)[0])
        if weight_sum < _MIN_WEIGHT_SUM_SIGMAS * sigma:
            raise ReleaseError(
                f"the flooded weight sum {weight_sum:.3g} is within {_MIN_WEIGHT_SUM_SIGMAS:g} "
                f"flooding deviations ({sigma:.3g}) of zero; use a tighter public weight_bound"
            )
        mean = unflatten_update(flooded / weight_sum, aggregate.spec)
        # The round is spent only by a release that passed every check (persisted before
        # anything leaves): a refused forgery cannot block the honest sum of its round.
        self.last_released_round = aggregate.round_id
        self._persist()
        return ReleasedAggregate(
            mean=mean,
            weight_sum=weight_sum,
            contributors=aggregate.contributors,
            round_id=aggregate.round_id,
            flooding_std=sigma,
        )

    def _persist(self) -> None:
        if self._path is not None:
            atomic_write_bytes(self._path, self.to_bytes(), mode=0o600)

    def decrypt_aggregate(
        self, aggregate: EncryptedAggregate | bytes, *, min_clients: int | None = None
    ) -> dict[str, Any]:
        """Release an aggregate and return just its weighted mean update (see :meth:`release`)."""
        return self.release(aggregate, min_clients=min_clients).mean


def _fingerprint(session: SealSession) -> str:
    """SHA-256 over the parameters and a public commitment to the secret key.

    The commitment is a domain-separated SHA-256 of the serialized secret key: the
    key has thousands of bits of entropy, so the hash reveals nothing usable about it,
    yet it binds the fingerprint to this exact key and can be re-checked on load.
    """
    commitment = hashlib.sha256(b"secagg-key-commitment-v1\x00" + session.secret_key_bytes())
    return hashlib.sha256(
        b"secagg-key-fingerprint-v1\x00" + session.parms_bytes + commitment.digest()
    ).hexdigest()
