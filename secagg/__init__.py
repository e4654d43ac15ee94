"""secagg: federated training with DP-SGD and CKKS-encrypted, verified secure aggregation.

The core primitives::

    import secagg
    roster = ["a", "b"]
    keys = secagg.FederationKeys.generate(roster)       # CKKS + MAC key, Ed25519 per client
    holder = keys.key_holder(min_clients=2)             # releases verified sums only
    agg = secagg.Aggregator(keys.server_context(), registry=keys.registry,
                            round_id=1, roster=roster)   # no key at all
    agg.add(secagg.encrypt_update(keys.material, update, signing_key=keys.signing_keys["a"],
                                  round_id=1, client_id="a", roster=roster,
                                  weight=120, weight_bound=1024))   # once per client
    released = holder.release(agg.finalize())           # .mean: the weighted mean update

Names resolve on first use (PEP 562), so ``import secagg`` is cheap and the server and
key-holder paths never import torch or Opacus.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import errors
    from .aggregate import Aggregator, EncryptedAggregate
    from .client import PrivateClient, plan_noise_multiplier
    from .context import ServerContext
    from .federation_keys import FederationKeys
    from .keyholder import KeyHolder
    from .keys import KeyMaterial
    from .presets import PRESETS, Preset, get_preset
    from .registry import ClientRegistry
    from .release import ReleasedAggregate
    from .spec import UpdateSpec, flatten_update, unflatten_update
    from .update import EncryptedUpdate, encrypt_update

try:
    __version__ = version("secagg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

# name -> module that defines it (relative to this package)
_EXPORTS: dict[str, str] = {
    "Aggregator": ".aggregate",
    "ClientRegistry": ".registry",
    "EncryptedAggregate": ".aggregate",
    "EncryptedUpdate": ".update",
    "FederationKeys": ".federation_keys",
    "KeyHolder": ".keyholder",
    "KeyMaterial": ".keys",
    "PRESETS": ".presets",
    "Preset": ".presets",
    "PrivateClient": ".client",
    "ReleasedAggregate": ".release",
    "ServerContext": ".context",
    "UpdateSpec": ".spec",
    "encrypt_update": ".update",
    "flatten_update": ".spec",
    "get_preset": ".presets",
    "plan_noise_multiplier": ".client",
    "unflatten_update": ".spec",
}

__all__ = [
    "PRESETS",
    "Aggregator",
    "ClientRegistry",
    "EncryptedAggregate",
    "EncryptedUpdate",
    "FederationKeys",
    "KeyHolder",
    "KeyMaterial",
    "Preset",
    "PrivateClient",
    "ReleasedAggregate",
    "ServerContext",
    "UpdateSpec",
    "__version__",
    "encrypt_update",
    "errors",
    "flatten_update",
    "get_preset",
    "plan_noise_multiplier",
    "unflatten_update",
]


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first use (PEP 562)."""
    if name == "errors":
        return importlib.import_module(".errors", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Public names, including those not imported yet."""
    return sorted({*globals(), *__all__})
