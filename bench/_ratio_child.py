"""Child process of the sweep: interleaved client-encryption timings in a fresh process.

``python -m bench._ratio_child NUM_PARAMS REPEATS`` prints one JSON line:
``{scheme: {"wall_s": [...], "cpu_s": [...]}}``.
"""

from __future__ import annotations

import json
import sys

from bench._measure import interleaved_encrypt, make_scheme

NAMES = ("flare", "secagg:default", "secagg:default/auto", "plaintext")


def main() -> None:
    """Time the schemes and print the raw timings."""
    num_params, repeats = int(sys.argv[1]), int(sys.argv[2])
    schemes = [make_scheme(name, 2) for name in NAMES]
    print(json.dumps(interleaved_encrypt(schemes, num_params, repeats=repeats)))


if __name__ == "__main__":
    main()
