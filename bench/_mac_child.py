"""Child process of the sweep: the MAC's client time, paired A/B, in a fresh process.

``python -m bench._mac_child NUM_PARAMS PAIRS`` prints one JSON line:
``{"one_process": mac_ab(workers=1), "default": mac_ab(workers=None)}`` (see
:func:`bench.mac_cost.mac_ab`). A fresh process with one torch thread, as a client of
``secagg run`` encrypts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import torch

from bench.mac_cost import mac_ab

__all__ = ["main"]


def main(argv: Sequence[str]) -> int:
    """Time both modes and print the results."""
    num_params, pairs = int(float(argv[0])), int(argv[1])
    torch.set_num_threads(1)
    result = {
        "one_process": mac_ab(num_params, pairs=pairs, workers=1),
        "default": mac_ab(num_params, pairs=pairs, workers=None),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
