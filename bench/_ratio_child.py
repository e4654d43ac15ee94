"""Child process of the sweep: interleaved client-encryption timings in a fresh process.

``python -m bench._ratio_child NUM_PARAMS REPEATS [SCHEME ...]`` prints one JSON line:
``{scheme: {"wall_s": [...], "cpu_s": [...]}}``. A fresh process encrypts as a client
would: forking worker processes costs time in proportion to the parent's memory, and
the sweep's own process holds far more than a client does. Like a client of
``secagg run``, it has torch imported and uses one torch thread (``--threads 1``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import torch

from bench.he_cost import interleaved_encrypt
from bench.schemes import make_scheme

__all__ = ["DEFAULT_SCHEMES", "main"]

#: FLARE-style, secagg default in one process and with the default parallelism, and
#: plaintext.
DEFAULT_SCHEMES = ("flare", "secagg:default", "secagg:default/auto", "plaintext")


def main(argv: Sequence[str]) -> int:
    """Time the schemes and print the raw timings."""
    num_params, repeats = int(float(argv[0])), int(argv[1])
    names = list(argv[2:]) or list(DEFAULT_SCHEMES)
    torch.set_num_threads(1)
    schemes = [make_scheme(name, 2) for name in names]
    print(json.dumps(interleaved_encrypt(schemes, num_params, repeats=repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
