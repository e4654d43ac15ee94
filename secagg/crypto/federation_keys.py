"""Everything a federation's keys consist of, made in one call and kept in one folder.

:meth:`FederationKeys.generate` makes the CKKS secret key and the MAC key (the
*secret context*, for the clients and the key holder), one Ed25519 signing key per
client, and the registry of their public keys. :meth:`FederationKeys.save` writes
them to a folder; each machine then gets only its own files::

    secret-context.secagg       0600  clients and the key holder
    key-holder.secagg           0600  the key holder (policy, budget, registry)
    server-context.secagg       0644  the aggregation server (no key)
    registry.secagg             0644  the server and the key holder (public keys)
    signing-keys/<client>.secagg 0600 that client only
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._files import atomic_write_bytes
from ..errors import ConfigurationError
from ._validate import check_roster
from .context import ServerContext
from .keyholder import DEFAULT_DECRYPTION_BUDGET, DEFAULT_MIN_CLIENTS, KeyHolder
from .keys import KeyMaterial
from .presets import Preset
from .registry import ClientRegistry, SigningKey

__all__ = [
    "KEY_HOLDER_FILE",
    "REGISTRY_FILE",
    "SECRET_CONTEXT_FILE",
    "SERVER_CONTEXT_FILE",
    "FederationKeys",
    "signing_key_path",
]

SECRET_CONTEXT_FILE = "secret-context.secagg"
SERVER_CONTEXT_FILE = "server-context.secagg"
REGISTRY_FILE = "registry.secagg"
KEY_HOLDER_FILE = "key-holder.secagg"
_SIGNING_DIR = "signing-keys"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def signing_key_path(directory: str | os.PathLike[str], client_id: str) -> Path:
    """Where :meth:`FederationKeys.save` puts ``client_id``'s signing key.

    Raises
    ------
    ConfigurationError
        If the client id is not usable as a file name (letters, digits, ``._-``).
    """
    if not _SAFE_NAME.fullmatch(client_id):
        raise ConfigurationError(
            f"client id {client_id!r:.60} cannot name a key file (letters, digits, '._-')"
        )
    return Path(directory) / _SIGNING_DIR / f"{client_id}.secagg"


@dataclass
class FederationKeys:
    """A federation's secret context, client signing keys and registry.

    Attributes
    ----------
    material : KeyMaterial
        CKKS secret key and MAC key (clients and key holder only).
    registry : ClientRegistry
        Every client's public signing key.
    signing_keys : dict[str, SigningKey]
        Every client's signing key (each client gets only its own).
    """

    material: KeyMaterial
    registry: ClientRegistry
    signing_keys: dict[str, SigningKey]

    @classmethod
    def generate(
        cls, client_ids: Sequence[str], *, preset: str | Preset = "default"
    ) -> FederationKeys:
        """Generate the keys of a federation of ``client_ids``.

        Raises
        ------
        ConfigurationError
            On an invalid client list or preset.
        """
        ids = check_roster(client_ids)
        signing = {cid: SigningKey.generate(cid) for cid in ids}
        return cls(KeyMaterial.generate(preset), ClientRegistry.of(signing.values()), signing)

    def server_context(self) -> ServerContext:
        """The aggregation server's context (no key)."""
        return self.material.server_context_object()

    def key_holder(
        self,
        *,
        min_clients: int = DEFAULT_MIN_CLIENTS,
        decryption_budget: int = DEFAULT_DECRYPTION_BUDGET,
        statistical_security: int = 30,
        state_path: str | os.PathLike[str] | None = None,
    ) -> KeyHolder:
        """A fresh key holder for these keys (bound to ``state_path`` if given)."""
        return KeyHolder(
            self.material,
            registry=self.registry,
            min_clients=min_clients,
            decryption_budget=decryption_budget,
            statistical_security=statistical_security,
            state_path=state_path,
        )

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the secret context, server context, registry and signing keys to ``directory``.

        The key holder's state file is written by :meth:`key_holder` with
        ``state_path=directory / KEY_HOLDER_FILE``.
        """
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        paths = {cid: signing_key_path(root, cid) for cid in self.signing_keys}
        self.material.save(root / SECRET_CONTEXT_FILE)
        atomic_write_bytes(root / SERVER_CONTEXT_FILE, self.material.server_context(), mode=0o644)
        self.registry.save(root / REGISTRY_FILE)
        for cid, key in self.signing_keys.items():
            key.save(paths[cid])
        return root

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> FederationKeys:
        """Load what :meth:`save` wrote (every signing key included).

        Raises
        ------
        ContextError
            If a file is missing, unreadable, too widely readable or invalid.
        """
        root = Path(directory)
        material = KeyMaterial.load(root / SECRET_CONTEXT_FILE)
        registry = ClientRegistry.load(root / REGISTRY_FILE)
        signing = {cid: SigningKey.load(signing_key_path(root, cid)) for cid in registry}
        return cls(material, registry, signing)
