"""Run config and node config of the Flower apps: parsing, defaults, validation.

Flower run configs hold flat ``bool``/``int``/``float``/``str`` values, so every
:class:`~secagg.protocols.FederationConfig` field travels under its kebab-case name
(``min_clients`` → ``min-clients``) and an optional field that is ``None`` is written
as ``"none"`` (``dirichlet-alpha`` also takes ``"iid"``; ``max-examples`` takes ``0``).
A few Flower-only options (paths, timeouts) sit beside them; see :data:`FLOWER_DEFAULTS`.

Node configs (``flower-supernode --node-config``) say what a SuperNode is::

    partition-id=0 num-partitions=3 secret-context="/etc/secagg/secret-context.secagg"
    signing-key="/etc/secagg/signing-keys/client-000.secagg"
    key-holder=true key-holder-state="/etc/secagg/key-holder.secagg"   # exactly one node

Recipe-dependent options default to ``"auto"``: the run's dataset recipe decides
(:mod:`secagg.protocols.defaults`, the same table ``secagg run`` reads).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigurationError
from ..config import FederationConfig, client_id, default_config
from ..defaults import GENERAL, recipe_fields

__all__ = [
    "DEFAULT_CONFIG",
    "FLOWER_DEFAULTS",
    "FlowerOptions",
    "NodeRole",
    "client_id",
    "config_from_run_config",
    "node_role",
    "run_config_from_config",
]

#: The apps' default federation: the defaults of the default dataset (``secagg run``'s).
DEFAULT_CONFIG = default_config()

#: The value of a recipe-dependent option in the app's run config: the dataset decides.
AUTO = "auto"

#: Flower-only run config keys and their defaults.
FLOWER_DEFAULTS: dict[str, bool | int | float | str] = {
    "server-context": "",
    "registry": "",
    "output": "",
    "min-nodes": 0,
    "node-wait-timeout": 120.0,
    "round-timeout": 600.0,
    "release-timeout": 120.0,
    "threads": 0,
}

_OPTIONAL_FLOATS = ("dirichlet_alpha", "epsilon", "noise_multiplier")
_NONE = "none"


@dataclass(frozen=True)
class FlowerOptions:
    """The Flower-only part of a run config.

    Attributes
    ----------
    server_context : Path or None
        Server context file (on the SuperLink's machine); required with HE.
    registry : Path or None
        The clients' public signing keys (on the SuperLink's machine); required with HE.
    output : Path or None
        Directory where the ServerApp writes ``global_state.pt`` and ``metrics.json``.
    min_nodes : int
        SuperNodes to wait for before round 1 (``0``: one per client).
    node_wait_timeout : float
        Most seconds to wait for them.
    round_timeout : float
        Most seconds to wait for the sampled clients' updates.
    release_timeout : float
        Most seconds to wait for the key holder's release (and, at the end of a run,
        for nodes to confirm their roll-backs).
    threads : int
        Torch CPU threads in the apps (``0``: leave torch's default).
    """

    server_context: Path | None = None
    registry: Path | None = None
    output: Path | None = None
    min_nodes: int = 0
    node_wait_timeout: float = 120.0
    round_timeout: float = 600.0
    release_timeout: float = 120.0
    threads: int = 0


@dataclass(frozen=True)
class NodeRole:
    """What a SuperNode does, from its node config.

    Attributes
    ----------
    partition_id : int or None
        Its data partition (``None``: it trains nothing, e.g. a dedicated key holder).
    num_partitions : int or None
        How many partitions the federation has (must equal the run's ``clients``).
    secret_context : Path or None
        The secret context file on this node (clients encrypt and MAC-tag with it; the
        key holder verifies and decrypts with it).
    signing_key : Path or None
        A client node's own Ed25519 signing key file.
    key_holder : bool
        Whether this node releases aggregates.
    key_holder_state : Path or None
        The key holder's state file (policy, budget spent, registry).
    """

    partition_id: int | None
    num_partitions: int | None
    secret_context: Path | None
    signing_key: Path | None
    key_holder: bool
    key_holder_state: Path | None

    @property
    def is_client(self) -> bool:
        """Whether this node trains (it has a partition)."""
        return self.partition_id is not None


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def run_config_from_config(
    config: FederationConfig, **flower: bool | int | float | str
) -> dict[str, bool | int | float | str]:
    """Encode a :class:`FederationConfig` (and Flower options) as a flat run config.

    Parameters
    ----------
    config : FederationConfig
        The federation to run.
    **flower
        Flower-only options by their run-config names with ``_`` for ``-``
        (``server_context="/path"``, ``round_timeout=60``).

    Raises
    ------
    ConfigurationError
        For an unknown Flower option, or the research-only deterministic mode.
    """
    _refuse_deterministic(config)
    out: dict[str, bool | int | float | str] = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        key = _kebab(item.name)
        if item.name == "model_overrides":
            out[key] = json.dumps(value, sort_keys=True) if value else _NONE
        elif item.name == "max_examples":
            out[key] = 0 if value is None else int(value)
        elif value is None:
            out[key] = _NONE
        else:
            out[key] = value
    options = dict(FLOWER_DEFAULTS)
    for name, value in flower.items():
        key = _kebab(name)
        if key not in FLOWER_DEFAULTS:
            raise ConfigurationError(f"unknown Flower option {name!r}")
        options[key] = str(value) if isinstance(value, Path) else value
    out.update(options)
    return out


def _refuse_deterministic(config: FederationConfig) -> None:
    if config.insecure_deterministic:
        raise ConfigurationError(
            "insecure-deterministic is for in-process research runs only: on Flower the "
            "server would know the seed of every client's DP noise"
        )


def _number(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"run config {key!r} must be a number, not {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise ConfigurationError(f"run config {key!r} must be an integer, not {value!r}")
        return int(value)
    if not math.isfinite(float(value)):
        raise ConfigurationError(f"run config {key!r} must be finite")
    return float(value)


def _field_value(name: str, key: str, value: Any, default: Any) -> Any:
    if name in _OPTIONAL_FLOATS:
        if isinstance(value, str):
            accepted = (_NONE, "", "iid") if name == "dirichlet_alpha" else (_NONE, "")
            if value.strip().lower() in accepted:
                return None
            raise ConfigurationError(f"run config {key!r} must be a number or 'none'")
        return _number(key, value, float)
    if name == "max_examples":
        count = _number(key, value, int)
        return None if count == 0 else count
    if name == "model_overrides":
        if not isinstance(value, str):
            raise ConfigurationError(f"run config {key!r} must be a JSON object string")
        if value.strip().lower() in (_NONE, ""):
            return None
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise ConfigurationError(f"run config {key!r} is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ConfigurationError(f"run config {key!r} must be a JSON object")
        return parsed
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigurationError(f"run config {key!r} must be true or false")
        return value
    if isinstance(default, int):
        return _number(key, value, int)
    if isinstance(default, float):
        return _number(key, value, float)
    if not isinstance(value, str):
        raise ConfigurationError(f"run config {key!r} must be a string")
    return value


def config_from_run_config(
    run_config: Mapping[str, Any],
) -> tuple[FederationConfig, FlowerOptions]:
    """Decode a run config into a :class:`FederationConfig` and :class:`FlowerOptions`.

    Missing keys, and recipe-dependent keys set to ``"auto"``, take the dataset's
    defaults (:func:`secagg.protocols.default_config`); Flower options take
    :data:`FLOWER_DEFAULTS`' values.

    Raises
    ------
    ConfigurationError
        For unknown keys, values of the wrong type, or an invalid federation.
    """
    fields = {_kebab(f.name): f.name for f in dataclasses.fields(FederationConfig)}
    unknown = sorted(set(run_config) - set(fields) - set(FLOWER_DEFAULTS))
    if unknown:
        raise ConfigurationError(f"unknown run config keys: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, name in fields.items():
        if key not in run_config:
            continue
        raw = run_config[key]
        if isinstance(raw, str) and raw.strip().lower() == AUTO and name in recipe_fields():
            continue
        values[name] = _field_value(name, key, raw, GENERAL[name])
    dataset = values.pop("dataset", GENERAL["dataset"])
    config = default_config(dataset, **values)
    _refuse_deterministic(config)
    flower: dict[str, Any] = {}
    for key, default in FLOWER_DEFAULTS.items():
        value = run_config.get(key, default)
        flower[key.replace("-", "_")] = _field_value(key, key, value, default)
    options = FlowerOptions(
        server_context=Path(flower["server_context"]) if flower["server_context"] else None,
        registry=Path(flower["registry"]) if flower["registry"] else None,
        output=Path(flower["output"]) if flower["output"] else None,
        min_nodes=flower["min_nodes"],
        node_wait_timeout=flower["node_wait_timeout"],
        round_timeout=flower["round_timeout"],
        release_timeout=flower["release_timeout"],
        threads=flower["threads"],
    )
    if options.min_nodes < 0 or options.threads < 0:
        raise ConfigurationError("min-nodes and threads must be non-negative")
    if min(options.node_wait_timeout, options.round_timeout, options.release_timeout) <= 0:
        raise ConfigurationError("timeouts must be positive")
    if config.he and (options.server_context is None or options.registry is None):
        raise ConfigurationError(
            "with he=true the run config needs server-context and registry (paths)"
        )
    return config, options


def node_role(node_config: Mapping[str, Any]) -> NodeRole:
    """Read a SuperNode's role from its node config.

    Raises
    ------
    ConfigurationError
        If ``partition-id`` and ``num-partitions`` are inconsistent, a path is not a
        string, or a key holder has no ``secret-context`` or ``key-holder-state``.
    """
    partition = node_config.get("partition-id")
    partitions = node_config.get("num-partitions")
    if (partition is None) != (partitions is None):
        raise ConfigurationError("node config needs both partition-id and num-partitions")
    if partition is not None:
        partition = _number("partition-id", partition, int)
        partitions = _number("num-partitions", partitions, int)
        if not 0 <= partition < partitions:
            raise ConfigurationError(
                f"partition-id {partition} is outside [0, num-partitions={partitions})"
            )
    paths = {}
    for key in ("secret-context", "signing-key", "key-holder-state"):
        value = node_config.get(key, "")
        if not isinstance(value, str):
            raise ConfigurationError(f"node config {key} must be a path string")
        paths[key] = Path(value) if value else None
    key_holder = node_config.get("key-holder", False)
    if not isinstance(key_holder, bool):
        raise ConfigurationError("node config key-holder must be true or false")
    if key_holder and (paths["secret-context"] is None or paths["key-holder-state"] is None):
        raise ConfigurationError(
            "a key-holder node needs secret-context and key-holder-state in its node config"
        )
    return NodeRole(
        partition_id=partition,
        num_partitions=partitions,
        secret_context=paths["secret-context"],
        signing_key=paths["signing-key"],
        key_holder=key_holder,
        key_holder_state=paths["key-holder-state"],
    )
