"""secagg on Flower (the ``secagg[flower]`` extra): the same federation, real processes.

- :mod:`.server_app` — the ServerApp (``app``): its own round loop, a key-less
  :class:`secagg.Aggregator`, releases requested from the key-holder node;
- :mod:`.client_app` — the ClientApp (``app``): DP-SGD on the node's partition,
  encrypted updates, and ``query.release`` on the key-holder node;
- :mod:`.keys` — generate key files out of band (secret context, key-holder state,
  server context, registry, one signing key per client), load them by path;
- :mod:`.config` — run config and node config;
- :mod:`.appdir` — the app folder that ``flwr run`` uploads;
- :mod:`.deploy` — a local loopback deployment (SuperLink, SuperNodes, ``flwr run``).

The apps are imported from their modules (``secagg.protocols.flower.server_app:app``)
so that importing this package does not build them.
"""

from __future__ import annotations

from .appdir import APP_NAME, app_pyproject, write_app
from .config import (
    DEFAULT_CONFIG,
    FLOWER_DEFAULTS,
    FlowerOptions,
    NodeRole,
    config_from_run_config,
    node_role,
    run_config_from_config,
)
from .keys import (
    KeyFiles,
    generate_keys,
    load_registry,
    load_secret_context,
    load_server_context,
    load_signing_key,
    open_key_holder,
)

__all__ = [
    "APP_NAME",
    "DEFAULT_CONFIG",
    "FLOWER_DEFAULTS",
    "FlowerOptions",
    "KeyFiles",
    "NodeRole",
    "app_pyproject",
    "config_from_run_config",
    "generate_keys",
    "load_registry",
    "load_secret_context",
    "load_server_context",
    "load_signing_key",
    "node_role",
    "open_key_holder",
    "run_config_from_config",
    "write_app",
]
