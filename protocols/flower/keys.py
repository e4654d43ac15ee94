"""Key files for a Flower deployment: generate them out of band, load them by path.

The key holder's secret context goes to the client nodes (they encrypt with it) and
to the one key-holder node (it decrypts and releases); the server context, which
holds no key at all, goes to the SuperLink machine. Flower uploads the app folder to
every node, so key files must never be written inside it::

    python -m secagg.protocols.flower.keys /etc/secagg --preset default
    # → /etc/secagg/secret-context.secagg (mode 0600), /etc/secagg/server-context.secagg
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..._files import atomic_write_bytes
from ...context import ServerContext
from ...errors import ConfigurationError, ContextError, SecaggError
from ...keys import DEFAULT_DECRYPTION_BUDGET, DEFAULT_MIN_CLIENTS, KeyHolder

__all__ = [
    "SECRET_CONTEXT_NAME",
    "SERVER_CONTEXT_NAME",
    "KeyFiles",
    "find_app_dir",
    "generate_keys",
    "load_secret_context",
    "load_server_context",
    "main",
]

SECRET_CONTEXT_NAME = "secret-context.secagg"
SERVER_CONTEXT_NAME = "server-context.secagg"


@dataclass(frozen=True)
class KeyFiles:
    """Where :func:`generate_keys` wrote the key files.

    Attributes
    ----------
    secret_context : Path
        Secret context (mode 0600): client nodes and the key-holder node only.
    server_context : Path
        Server context (no keys): the SuperLink machine (run config ``server-context``).
    fingerprint : str
        The key fingerprint every payload carries.
    """

    secret_context: Path
    server_context: Path
    fingerprint: str


def find_app_dir(path: str | os.PathLike[str]) -> Path | None:
    """The Flower app folder containing ``path`` (``None`` if there is none).

    A folder counts as a Flower app when its ``pyproject.toml`` has a
    ``[tool.flwr.app]`` table; ``flwr run`` uploads everything in it.
    """
    current = Path(path).expanduser().resolve()
    for folder in (current, *current.parents):
        pyproject = folder / "pyproject.toml"
        try:
            text = pyproject.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if "[tool.flwr.app" in text:
            return folder
    return None


def generate_keys(
    directory: str | os.PathLike[str],
    *,
    preset: str = "default",
    decryption_budget: int = DEFAULT_DECRYPTION_BUDGET,
    min_clients: int = DEFAULT_MIN_CLIENTS,
    overwrite: bool = False,
) -> KeyFiles:
    """Generate a key pair of files in ``directory`` (outside any Flower app folder).

    Parameters
    ----------
    directory : path-like
        Where to write ``secret-context.secagg`` (mode 0600) and
        ``server-context.secagg`` (mode 0644); created (mode 0700) if missing.
    preset : str, optional
        CKKS parameter preset (see :data:`secagg.PRESETS`).
    decryption_budget : int, optional
        Most ciphertexts the key will ever decrypt (sets the flooding noise).
    min_clients : int, optional
        The key holder's own policy, kept in the secret context: it never releases a
        sum of fewer distinct clients, whatever the server or the run config asks.
    overwrite : bool, optional
        Replace existing key files (the old key is lost); refused by default.

    Raises
    ------
    ConfigurationError
        If ``directory`` lies inside a Flower app folder, or key files exist and
        ``overwrite`` is false.
    """
    target = Path(directory).expanduser().resolve()
    app = find_app_dir(target)
    if app is not None:
        raise ConfigurationError(
            f"refusing to write keys into the Flower app folder {app}: flwr run uploads "
            "it to every node; choose a directory outside it"
        )
    secret = target / SECRET_CONTEXT_NAME
    server = target / SERVER_CONTEXT_NAME
    if not overwrite and (secret.exists() or server.exists()):
        raise ConfigurationError(f"key files already exist in {target} (pass overwrite=True)")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = KeyHolder.generate(preset, decryption_budget=decryption_budget, min_clients=min_clients)
    keys.save(secret)
    atomic_write_bytes(server, keys.server_context(), mode=0o644)
    return KeyFiles(secret_context=secret, server_context=server, fingerprint=keys.fingerprint)


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


def load_secret_context(path: str | os.PathLike[str], *, bind: bool = False) -> KeyHolder:
    """Load a secret context from ``path``, refusing files others can read.

    Parameters
    ----------
    path : path-like
        The secret context file (mode 0600, like an SSH private key).
    bind : bool, optional
        Bind the key holder to the file so that every release records its spent
        decryption budget there (the key-holder node); clients only encrypt and
        leave the file untouched.

    Raises
    ------
    ContextError
        If the file is missing, readable by group or others, or not a secret context.
    """
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
    except OSError as exc:
        raise ContextError(f"cannot read secret context {file}: {exc}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ContextError(
            f"secret context {file} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {file}"
        )
    if bind:
        return KeyHolder.load(file)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ContextError(f"cannot read secret context {file}: {exc}") from None
    return KeyHolder.from_bytes(data)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m secagg.protocols.flower.keys DIR``: generate deployment key files."""
    parser = argparse.ArgumentParser(
        prog="python -m secagg.protocols.flower.keys",
        description="Generate a secagg key pair of files for a Flower deployment: the secret "
        "context (client and key-holder nodes) and the server context (SuperLink machine).",
    )
    parser.add_argument("directory", type=Path, help="output directory, outside the app folder")
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
            preset=args.preset,
            decryption_budget=args.decryption_budget,
            min_clients=args.min_clients,
            overwrite=args.overwrite,
        )
    except SecaggError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"secret context (client and key-holder nodes only): {files.secret_context}")
    print(f"server context (SuperLink machine):                {files.server_context}")
    print(f"key fingerprint: {files.fingerprint}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
