"""Key files for a Flower deployment: generate them out of band, load them by path.

Flower uploads the app folder to every node, so key files are never written inside
one. :func:`generate_keys` writes (see :class:`secagg.FederationKeys`)::

    python -m secagg.protocols.flower.keys /etc/secagg --clients 3 --min-clients 2
    # secret-context.secagg         0600  client nodes and the key-holder node
    # signing-keys/client-000.secagg 0600 client node 0 only (one per client)
    # key-holder.secagg             0600  the key-holder node only
    # server-context.secagg, registry.secagg  the SuperLink machine (no key)

Every secret file is refused when group or others can read it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...crypto.context import ServerContext
from ...crypto.federation_keys import (
    KEY_HOLDER_FILE,
    REGISTRY_FILE,
    SECRET_CONTEXT_FILE,
    SERVER_CONTEXT_FILE,
    FederationKeys,
    signing_key_path,
)
from ...crypto.keyholder import DEFAULT_DECRYPTION_BUDGET, DEFAULT_MIN_CLIENTS, KeyHolder
from ...crypto.keys import KeyMaterial
from ...crypto.registry import ClientRegistry, SigningKey
from ...errors import ConfigurationError, ContextError, SecaggError
from ..config import client_id

__all__ = [
    "KeyFiles",
    "find_app_dir",
    "generate_keys",
    "load_registry",
    "load_secret_context",
    "load_server_context",
    "load_signing_key",
    "main",
    "open_key_holder",
]


@dataclass(frozen=True)
class KeyFiles:
    """Where :func:`generate_keys` wrote the key files.

    Attributes
    ----------
    directory : Path
        The folder.
    secret_context : Path
        Secret context (0600): client nodes and the key-holder node only.
    key_holder_state : Path
        The key holder's policy, budget and registry (0600): the key-holder node only.
    server_context : Path
        Server context (no key): the SuperLink machine (run config ``server-context``).
    registry : Path
        Public signing keys: the SuperLink machine (run config ``registry``).
    signing_keys : dict[str, Path]
        Each client's signing key (0600): that client's node only.
    fingerprint : str
        The key fingerprint every payload carries.
    """

    directory: Path
    secret_context: Path
    key_holder_state: Path
    server_context: Path
    registry: Path
    signing_keys: dict[str, Path]
    fingerprint: str


def find_app_dir(path: str | os.PathLike[str]) -> Path | None:
    """The Flower app folder containing ``path`` (``None`` if there is none).

    A folder counts as a Flower app when its ``pyproject.toml`` has a
    ``[tool.flwr.app]`` table; ``flwr run`` uploads everything in it.
    """
    current = Path(path).expanduser().resolve()
    for folder in (current, *current.parents):
        try:
            text = (folder / "pyproject.toml").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if "[tool.flwr.app" in text:
            return folder
    return None


def _outside_app(path: str | os.PathLike[str], what: str) -> Path:
    target = Path(path).expanduser().resolve()
    app = find_app_dir(target)
    if app is not None:
        raise ConfigurationError(
            f"refusing to use a {what} inside the Flower app folder {app}: flwr run uploads "
            "it to every node; keep key files outside it"
        )
    return target


def generate_keys(
    directory: str | os.PathLike[str],
    *,
    clients: int,
    preset: str = "default",
    decryption_budget: int = DEFAULT_DECRYPTION_BUDGET,
    min_clients: int = DEFAULT_MIN_CLIENTS,
    overwrite: bool = False,
) -> KeyFiles:
    """Generate a federation's key files in ``directory`` (outside any Flower app folder).

    Parameters
    ----------
    directory : path-like
        Where to write the files; created (mode 0700) if missing.
    clients : int
        Number of client nodes (partitions); their ids are ``client-000``, ...
    preset : str, optional
        CKKS parameter preset (see :data:`secagg.PRESETS`).
    decryption_budget : int, optional
        Most ciphertexts the key will ever decrypt (sets the flooding noise).
    min_clients : int, optional
        The key holder's own policy: it never releases a sum of fewer distinct clients,
        whatever the server or the run config asks.
    overwrite : bool, optional
        Replace existing key files (the old keys are lost); refused by default.

    Raises
    ------
    ConfigurationError
        If ``directory`` lies inside a Flower app folder, key files exist and
        ``overwrite`` is false, or an argument is invalid.
    """
    target = _outside_app(directory, "key directory")
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise ConfigurationError(f"clients must be a positive int, got {clients!r}")
    if not overwrite and (target / SECRET_CONTEXT_FILE).exists():
        raise ConfigurationError(f"key files already exist in {target} (pass overwrite=True)")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    ids = [client_id(i) for i in range(clients)]
    keys = FederationKeys.generate(ids, preset=preset)
    keys.save(target)
    keys.key_holder(
        min_clients=min_clients,
        decryption_budget=decryption_budget,
        state_path=target / KEY_HOLDER_FILE,
    )
    return KeyFiles(
        directory=target,
        secret_context=target / SECRET_CONTEXT_FILE,
        key_holder_state=target / KEY_HOLDER_FILE,
        server_context=target / SERVER_CONTEXT_FILE,
        registry=target / REGISTRY_FILE,
        signing_keys={cid: signing_key_path(target, cid) for cid in ids},
        fingerprint=keys.material.fingerprint,
    )


def load_server_context(path: str | os.PathLike[str]) -> ServerContext:
    """Load the aggregation server's context from ``path``.

    Raises
    ------
    SecretKeyExposureError
        If the file holds a secret key (a secret context given by mistake).
    ContextError
        If the file is missing or not a server context.
    """
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ContextError(f"cannot read server context {path}: {exc}") from None
    return ServerContext.from_bytes(data)


def load_registry(path: str | os.PathLike[str]) -> ClientRegistry:
    """Load the clients' public signing keys from ``path``."""
    return ClientRegistry.load(Path(path).expanduser())


def load_secret_context(path: str | os.PathLike[str]) -> KeyMaterial:
    """Load the secret context (outside the app folder, mode 0600).

    Raises
    ------
    ContextError
        If the file is missing, readable by group or others, or not a secret context.
    ConfigurationError
        If it lies inside the Flower app folder.
    """
    return KeyMaterial.load(_outside_app(path, "secret context"))


def load_signing_key(path: str | os.PathLike[str], *, client: str) -> SigningKey:
    """Load a client node's signing key and check it signs for ``client``.

    Raises
    ------
    ContextError
        If the file is unusable, too widely readable, or another client's key.
    """
    key = SigningKey.load(_outside_app(path, "signing key"))
    if key.client_id != client:
        raise ContextError(f"signing key {path} belongs to {key.client_id!r}, not {client!r}")
    return key


def open_key_holder(
    secret_context: str | os.PathLike[str], state: str | os.PathLike[str]
) -> KeyHolder:
    """The key-holder node's :class:`secagg.KeyHolder`, bound to its state file."""
    keys = load_secret_context(secret_context)
    return KeyHolder.open(keys, _outside_app(state, "key-holder state"))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m secagg.protocols.flower.keys DIR --clients K``: generate key files."""
    parser = argparse.ArgumentParser(
        prog="python -m secagg.protocols.flower.keys",
        description="Generate the key files of a secagg Flower deployment.",
    )
    parser.add_argument("directory", type=Path, help="output directory, outside the app folder")
    parser.add_argument("--clients", type=int, required=True, help="number of client nodes")
    parser.add_argument("--preset", default="default", help="CKKS parameter preset")
    parser.add_argument(
        "--decryption-budget",
        type=int,
        default=DEFAULT_DECRYPTION_BUDGET,
        help="most ciphertexts the key may ever decrypt",
    )
    parser.add_argument(
        "--min-clients",
        type=int,
        default=DEFAULT_MIN_CLIENTS,
        help="the key holder never releases a sum of fewer distinct clients",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing key files")
    args = parser.parse_args(argv)
    try:
        files = generate_keys(
            args.directory,
            clients=args.clients,
            preset=args.preset,
            decryption_budget=args.decryption_budget,
            min_clients=args.min_clients,
            overwrite=args.overwrite,
        )
    except SecaggError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"secret context (client and key-holder nodes): {files.secret_context}")
    print(f"key-holder state (the key-holder node only):  {files.key_holder_state}")
    print(f"signing keys (each client node its own):      {files.directory / 'signing-keys'}")
    print(f"server context and registry (SuperLink):      {files.server_context}, {files.registry}")
    print(f"key fingerprint: {files.fingerprint}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
