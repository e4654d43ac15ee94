"""secagg: federated training with DP-SGD and CKKS-encrypted secure aggregation.

The core primitives::

    import secagg
    keys = secagg.KeyHolder.generate()                 # key holder (and clients)
    server_ctx = keys.server_context()                 # bytes, no secret key
    agg = secagg.Aggregator(server_ctx, round_id=1, roster=["a", "b"], min_clients=2)
    blob = secagg.encrypt_update(keys, update, weight=120, weight_bound=1000,
                                 round_id=1, client_id="a", roster=["a", "b"])
    agg.add(blob)                                      # once per client
    enc_sum = agg.finalize()                           # EncryptedAggregate
    mean_update = keys.decrypt_aggregate(enc_sum)      # dict[str, torch.Tensor]
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import errors
from .aggregate import Aggregator, EncryptedAggregate
from .client import PrivateClient, plan_noise_multiplier
from .context import ServerContext
from .keys import KeyHolder
from .presets import PRESETS, Preset, get_preset
from .release import ReleasedAggregate
from .spec import UpdateSpec, flatten_update, unflatten_update
from .update import EncryptedUpdate, encrypt_update

try:
    __version__ = version("secagg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "PRESETS",
    "Aggregator",
    "EncryptedAggregate",
    "EncryptedUpdate",
    "KeyHolder",
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
