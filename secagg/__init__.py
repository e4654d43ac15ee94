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
    from .crypto.client import EncryptedUpdate, encrypt_update
    from .crypto.context import ServerContext
    from .crypto.federation_keys import FederationKeys
    from .crypto.keyholder import KeyHolder
    from .crypto.keys import KeyMaterial
    from .crypto.presets import PRESETS, Preset, get_preset
    from .crypto.registry import ClientRegistry
    from .crypto.release import ReleasedAggregate
    from .crypto.server import Aggregator, EncryptedAggregate
    from .crypto.spec import UpdateSpec, flatten_update, unflatten_update
    from .dp.client import PrivateClient, plan_noise_multiplier

try:
    __version__ = version("secagg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

# name -> module that defines it (relative to this package)
_EXPORTS: dict[str, str] = {
    "Aggregator": ".crypto.server",
    "ClientRegistry": ".crypto.registry",
    "EncryptedAggregate": ".crypto.server",
    "EncryptedUpdate": ".crypto.client",
    "FederationKeys": ".crypto.federation_keys",
    "KeyHolder": ".crypto.keyholder",
    "KeyMaterial": ".crypto.keys",
    "PRESETS": ".crypto.presets",
    "Preset": ".crypto.presets",
    "PrivateClient": ".dp.client",
    "ReleasedAggregate": ".crypto.release",
    "ServerContext": ".crypto.context",
    "UpdateSpec": ".crypto.spec",
    "encrypt_update": ".crypto.client",
    "flatten_update": ".crypto.spec",
    "get_preset": ".crypto.presets",
    "plan_noise_multiplier": ".dp.client",
    "unflatten_update": ".crypto.spec",
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
