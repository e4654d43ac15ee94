"""The key holder: verifies an aggregate, then (and only then) decrypts and releases it.

Its state is a policy (the fewest clients it releases a sum of, the statistical
security of the flooding), the registry of clients it releases sums of, and counters
that must never roll back: the decryption budget spent, the last released round and
the number of refused aggregates. Bound to a state file, every change is written
there atomically before anything is released.

The order of :meth:`KeyHolder.release` is the safety argument of
``docs/THREAT_MODEL.md``: structure and policy checks, then the MAC check of the
whole sum (nothing decrypted, no budget spent if it fails), then the budget is spent
and persisted, then SEAL decrypts, then the exact sum is recovered by rounding (exact
presets) or the result is flooded (approximate presets), and released.
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path

import numpy as np

from .._files import atomic_write_bytes, read_secret_file
from ..errors import (
    ConfigurationError,
    ContextError,
    DecryptionBudgetExceededError,
    FormatError,
    IntegrityError,
    ReleaseError,
    RosterError,
    RoundAlreadyReleasedError,
)
from ._mac import RoundMac
from ._parallel import map_blocks
from ._rlwe import SEED_BYTES
from ._validate import check_count
from .client import mac_scope
from .keys import KeyMaterial
from .layout import FieldLayout, layout_for
from .registry import ClientRegistry
from .release import ReleasedAggregate, flooding_std, secure_gaussian
from .server import EncryptedAggregate
from .spec import unflatten_update
from .wire import MAGIC_KEY_HOLDER, field, pack_frame, unpack_frame

__all__ = ["DEFAULT_DECRYPTION_BUDGET", "DEFAULT_MIN_CLIENTS", "KeyHolder"]

DEFAULT_DECRYPTION_BUDGET = 1 << 16
DEFAULT_STATISTICAL_SECURITY = 30
DEFAULT_MIN_CLIENTS = 2
# A flooded weight sum must stand this many flooding deviations above zero.
_MIN_WEIGHT_SUM_SIGMAS = 10.0


class KeyHolder:
    """Releases the weighted mean of verified aggregates (exact, or flooded within a budget).

    Parameters
    ----------
    keys : KeyMaterial
        The federation's secret context.
    registry : ClientRegistry
        The clients whose sums may be released.
    min_clients : int, optional
        Never release a sum of fewer distinct clients, whatever the server asks
        (default 2).
    decryption_budget : int, optional
        Most ciphertexts this key will ever decrypt (``τ``); the flooding noise grows
        with its square root. Default 65,536.
    statistical_security : int, optional
        Statistical security ``s`` of the flooding, in bits (at least 30).
    state_path : path-like, optional
        Bind to this state file and write it now (mode 0600); see :meth:`open`.

    Raises
    ------
    ConfigurationError
        On invalid arguments.
    """

    def __init__(
        self,
        keys: KeyMaterial,
        *,
        registry: ClientRegistry,
        min_clients: int = DEFAULT_MIN_CLIENTS,
        decryption_budget: int = DEFAULT_DECRYPTION_BUDGET,
        statistical_security: int = DEFAULT_STATISTICAL_SECURITY,
        state_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(keys, KeyMaterial):
            raise ConfigurationError(f"keys must be a KeyMaterial, got {type(keys).__name__}")
        if not isinstance(registry, ClientRegistry):
            raise ConfigurationError(
                f"registry must be a ClientRegistry, got {type(registry).__name__}"
            )
        self._keys = keys
        self.registry = registry
        self.min_clients = check_count(min_clients, "min_clients", high=keys.preset.max_clients)
        self.decryption_budget = check_count(decryption_budget, "decryption_budget")
        self.statistical_security = check_count(
            statistical_security, "statistical_security", low=30
        )
        self.decryptions_used = 0
        self.last_released_round = -1
        self.refused = 0
        self._path: Path | None = None
        if state_path is not None:
            self.save(state_path)

    # ------------------------------------------------------------------ properties
    @property
    def keys(self) -> KeyMaterial:
        """The key material (shared with the clients)."""
        return self._keys

    @property
    def fingerprint(self) -> str:
        """The key fingerprint."""
        return self._keys.fingerprint

    @property
    def decryptions_left(self) -> int:
        """Ciphertext decryptions left before the keys must be rotated."""
        return self.decryption_budget - self.decryptions_used

    @property
    def state_path(self) -> Path | None:
        """The state file this key holder is bound to, if any."""
        return self._path

    def __repr__(self) -> str:
        """Describe the key holder without revealing the key."""
        return (
            f"KeyHolder(preset={self._keys.preset.name!r}, fingerprint={self.fingerprint[:16]}…, "
            f"min_clients={self.min_clients}, decryptions_left={self.decryptions_left})"
        )

    def flooding_std(self, num_contributors: int) -> float:
        """Flooding standard deviation for an aggregate of ``num_contributors``.

        Zero for exact presets: their releases are exact integer sums, which reveal
        nothing about the encryption error, so no flooding is needed.
        """
        if self._keys.preset.exact:
            return 0.0
        return flooding_std(
            self._keys.preset.noise_bound(num_contributors),
            decryption_budget=self.decryption_budget,
            statistical_security=self.statistical_security,
        )

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        """Serialize the state (policy, counters, registry; no key), authenticated.

        An HMAC under a key derived from the secret context covers every field, so the
        state cannot be edited by anyone without the keys (it can still be replaced by an
        older copy of itself: keep it where the server cannot write).
        """
        header: dict[str, object] = {
            "fingerprint": self.fingerprint,
            "decryption_budget": self.decryption_budget,
            "decryptions_used": self.decryptions_used,
            "statistical_security": self.statistical_security,
            "min_clients": self.min_clients,
            "last_released_round": self.last_released_round,
            "refused": self.refused,
        }
        registry = self.registry.to_bytes()
        header["auth"] = _state_tag(self._keys, header, registry)
        return pack_frame(MAGIC_KEY_HOLDER, header, [registry])

    @classmethod
    def from_bytes(cls, keys: KeyMaterial, data: bytes) -> KeyHolder:
        """Rebuild a key holder for ``keys`` from :meth:`to_bytes` output.

        Raises
        ------
        ContextError
            If ``data`` is not a key-holder state for these keys, or is inconsistent.
        """
        try:
            frame = unpack_frame(data, MAGIC_KEY_HOLDER, max_chunks=1, max_chunk_bytes=1 << 26)
            header = frame.header
            fingerprint = field(header, "fingerprint", str)
            values = {
                name: field(header, name, int)
                for name in (
                    "decryption_budget",
                    "decryptions_used",
                    "statistical_security",
                    "min_clients",
                    "last_released_round",
                    "refused",
                )
            }
        except FormatError as exc:
            raise ContextError(f"not a secagg key-holder state: {exc}") from None
        if not isinstance(keys, KeyMaterial):
            raise ContextError(f"keys must be a KeyMaterial, got {type(keys).__name__}")
        if fingerprint != keys.fingerprint:
            raise ContextError("this key-holder state belongs to another key")
        if len(frame.chunks) != 1:
            raise ContextError("a key-holder state holds exactly one registry")
        fields = {k: v for k, v in frame.header.items() if k not in ("auth", "chunk_sizes")}
        auth = frame.header.get("auth")
        if not isinstance(auth, str) or not hmac.compare_digest(
            auth, _state_tag(keys, fields, frame.chunks[0])
        ):
            raise ContextError("the key-holder state does not verify: it was edited")
        try:
            holder = cls(
                keys,
                registry=ClientRegistry.from_bytes(frame.chunks[0]),
                min_clients=values["min_clients"],
                decryption_budget=values["decryption_budget"],
                statistical_security=values["statistical_security"],
            )
        except ConfigurationError as exc:
            raise ContextError(f"inconsistent key-holder state: {exc}") from None
        used, last, refused = (
            values["decryptions_used"],
            values["last_released_round"],
            values["refused"],
        )
        if not 0 <= used <= holder.decryption_budget or last < -1 or refused < 0:
            raise ContextError("inconsistent key-holder state counters")
        holder.decryptions_used, holder.last_released_round, holder.refused = used, last, refused
        return holder

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the state atomically to ``path`` (mode 0600) and bind to it."""
        self._path = atomic_write_bytes(path, self.to_bytes(), mode=0o600)
        return self._path

    @classmethod
    def open(cls, keys: KeyMaterial, path: str | os.PathLike[str]) -> KeyHolder:
        """Load the state file at ``path`` for ``keys`` and bind to it.

        Raises
        ------
        ContextError
            If the file is missing, readable by group or others, or not a state of
            these keys.
        """
        holder = cls.from_bytes(keys, read_secret_file(path, "key-holder state"))
        holder._path = Path(path)
        return holder

    def _persist(self) -> None:
        if self._path is not None:
            atomic_write_bytes(self._path, self.to_bytes(), mode=0o600)

    # ------------------------------------------------------------------ release
    def verify(self, aggregate: EncryptedAggregate) -> None:
        """Check the aggregate's MAC: it must be the exact sum of its contributors' ciphertexts.

        Nothing is decrypted and no budget is spent; a failure is counted in
        :attr:`refused` (persisted).

        Raises
        ------
        IntegrityError
            If the MAC does not verify.
        """
        keys = self._keys
        preset = keys.preset
        layout = layout_for(preset)
        mac = RoundMac(
            keys.mac_key,
            mac_scope(
                fingerprint=keys.fingerprint,
                round_id=aggregate.round_id,
                roster=aggregate.roster,
                spec=aggregate.spec,
                layout=layout,
            ),
            keys.moduli,
            preset.poly_modulus_degree,
        )
        terms = [mac.chunk_terms(i, row) for i, row in enumerate(aggregate.c0)]
        pads = [mac.pad(cid, aggregate.seeds[cid]) for cid in aggregate.contributors]
        if mac.add(*terms, *pads) != tuple(aggregate.tag):
            self.refused += 1
            self._persist()
            raise IntegrityError(
                f"round {aggregate.round_id}: the aggregate is not the sum of the claimed "
                f"{aggregate.num_contributors} clients' ciphertexts (MAC check failed); "
                "nothing was decrypted and no decryption budget was spent"
            )

    def release(
        self, aggregate: EncryptedAggregate | bytes, *, min_clients: int | None = None
    ) -> ReleasedAggregate:
        """Verify an aggregate, then decrypt it and release its weighted mean.

        The key holder releases at most one aggregate per round id, in increasing
        order, and never a sum of fewer distinct registered clients than the largest
        of its own ``min_clients`` policy, the aggregate's, and the argument.

        Parameters
        ----------
        aggregate : EncryptedAggregate or bytes
            The server's encrypted sum (or its serialized form).
        min_clients : int, optional
            Raise the threshold of distinct contributions for this release.

        Raises
        ------
        IntegrityError
            If the aggregate is not exactly the sum it claims (checked before anything
            is decrypted; no budget is spent).
        RosterError
            Too few contributors, or contributors that are not registered.
        RoundAlreadyReleasedError
            If this round id (or a later one) was already released under this key.
        DecryptionBudgetExceededError
            If releasing would pass the key's decryption budget; rotate the keys.
        ReleaseError
            If the flooded weight sum is too small to divide by.
        FormatError, KeyMismatchError
            If the aggregate is malformed or made under another key.
        """
        keys = self._keys
        context = keys.server_context_object()
        if isinstance(aggregate, EncryptedAggregate):
            aggregate.check(context)  # an object gets the checks bytes get
        else:
            aggregate = EncryptedAggregate.from_bytes(aggregate, context)
        if min_clients is not None:
            check_count(min_clients, "min_clients")
        preset = keys.preset
        layout = layout_for(preset)
        if aggregate.layout != layout.name:
            raise FormatError(f"aggregate uses layout {aggregate.layout!r}, not {layout.name!r}")
        if aggregate.num_chunks != preset.num_chunks(aggregate.spec.numel):
            raise FormatError("aggregate chunk count does not fit its spec")
        if aggregate.round_id <= self.last_released_round:
            raise RoundAlreadyReleasedError(
                f"round {aggregate.round_id} is not after the last released round "
                f"{self.last_released_round}: one release per round, in order"
            )
        if aggregate.num_contributors > preset.max_clients:
            raise RosterError(
                f"the aggregate claims {aggregate.num_contributors} contributors; preset "
                f"{preset.name!r} bounds its decryption error for {preset.max_clients} at most"
            )
        unregistered = [c for c in aggregate.contributors if c not in self.registry]
        if unregistered:
            raise RosterError(f"the aggregate names unregistered clients: {unregistered[:5]}")
        threshold = max(self.min_clients, aggregate.min_clients, min_clients or 1)
        count = aggregate.num_contributors
        if count < threshold:
            raise RosterError(
                f"the aggregate sums {count} distinct clients, fewer than min_clients="
                f"{threshold}; refusing to release it"
            )
        needed = aggregate.num_chunks
        if needed > self.decryptions_left:
            raise DecryptionBudgetExceededError(
                f"releasing needs {needed} decryptions but only {self.decryptions_left} of "
                f"{self.decryption_budget} are left; rotate the keys (KeyMaterial.generate)"
            )
        self.verify(aggregate)
        # Spend the budget first (and persist it): a crash can waste budget, never reuse it.
        self.decryptions_used += needed
        self._persist()
        numel = aggregate.spec.numel
        if isinstance(layout, FieldLayout):
            # Exact: the integer sums are a deterministic function of the clients'
            # quantised values; nothing about the encryption error is released.
            sums = layout.field_sums(self._decrypt(aggregate), _moduli(keys), count)
            weight_sum, total = layout.dequantize(sums, numel, count)
            sigma = 0.0
        else:
            weight, values = layout.split(self._decrypt(aggregate), numel)
            sigma = self.flooding_std(count)
            total = values + sigma * secure_gaussian(values.size)
            weight_sum = float(weight + sigma * secure_gaussian(1)[0])
        if weight_sum <= _MIN_WEIGHT_SUM_SIGMAS * sigma:
            raise ReleaseError(
                f"the released weight sum {weight_sum:.3g} is within {_MIN_WEIGHT_SUM_SIGMAS:g} "
                f"flooding deviations ({sigma:.3g}) of zero; use a tighter public weight_bound"
            )
        mean = unflatten_update(total / weight_sum, aggregate.spec)
        # The round is spent only by a release that passed every check (persisted before
        # anything leaves): a refused forgery cannot block the honest sum of its round.
        self.last_released_round = aggregate.round_id
        self._persist()
        return ReleasedAggregate(
            mean=mean,
            spec=aggregate.spec,
            weight_sum=weight_sum,
            contributors=aggregate.contributors,
            round_id=aggregate.round_id,
            flooding_std=sigma,
            quantization_std=preset.quantization_std,
        )

    def _decrypt(self, aggregate: EncryptedAggregate) -> np.ndarray:
        """Decrypt every verified chunk (in worker processes for large aggregates).

        Approximate presets give the decoded slot values (``float64``); exact presets
        the plaintext coefficients modulo ``q`` (``uint64``).
        """
        session = self._keys.session
        seeds = [aggregate.seeds[cid] for cid in aggregate.contributors]
        exact = self._keys.preset.exact

        def decrypt_block(start: int, block: np.ndarray) -> list[bytes]:
            out = []
            for i, c0 in enumerate(block, start):
                chunk_seeds = [s[SEED_BYTES * i : SEED_BYTES * (i + 1)] for s in seeds]
                if exact:
                    out.append(session.decrypt_coefficients(c0, chunk_seeds).tobytes())
                else:
                    out.append(session.decrypt_sum(c0, chunk_seeds).tobytes())
            return out

        rows = map_blocks(decrypt_block, aggregate.c0, None)
        dtype = np.uint64 if exact else np.float64
        return np.stack([np.frombuffer(r, dtype=dtype) for r in rows])


def _state_tag(keys: KeyMaterial, header: dict[str, object], registry: bytes) -> str:
    """HMAC-SHA-256 (hex) over the state's fields and registry."""
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    message = len(canonical).to_bytes(8, "big") + canonical + registry
    return hmac.new(keys.derived_key("key-holder-state"), message, "sha256").hexdigest()


def _moduli(keys: KeyMaterial) -> np.ndarray:
    return keys.parameters.modulus_column()
