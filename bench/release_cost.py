"""The key holder's release time against the number of contributors.

secagg's key holder rebuilds every contributor's second polynomial ``c1`` from its
32-byte seed (no ``c1`` chosen by the server is ever decrypted), so its work grows
with the contributors: one seed expansion per chunk and contributor, on top of one
decryption per chunk. :func:`release_scaling` releases sums of the first ``k`` of a set
of real payloads, for each ``k``, with a fresh key holder each time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .schemes import SecaggScheme
from .updates import client_weights, make_update

__all__ = ["release_scaling"]


def release_scaling(
    num_params: int, counts: Sequence[int], *, preset: str = "default"
) -> dict[str, Any]:
    """Seconds of ``KeyHolder.release`` for sums of each of ``counts`` contributors.

    Parameters
    ----------
    num_params : int
        Update size.
    counts : sequence of int
        Contributors per sum (at most the preset's ``max_clients``).
    preset : str, optional
        The preset.

    Returns
    -------
    dict
        ``rows``: per count the release seconds and µs per chunk and contributor (the
        marginal cost over the smallest count); ``chunks``.
    """
    most = max(counts)
    scheme = SecaggScheme(preset, most, workers=None)
    update = make_update(num_params, seed=8)
    weights = client_weights(most)
    payloads = [scheme.encrypt(update, client=i, weight=weights[i]) for i in range(most)]
    chunks = scheme.preset.num_chunks(num_params)
    rows = []
    for count in sorted(counts):
        server = scheme.server()
        for payload, weight in zip(payloads[:count], weights, strict=False):
            server.add(payload, weight)
        aggregate = server.finalize()
        scheme.reset_release()
        start = time.perf_counter()
        scheme.release(aggregate)
        rows.append({"clients": count, "release_s": time.perf_counter() - start})
    first = rows[0]
    for row in rows[1:]:
        extra = (row["clients"] - first["clients"]) * chunks
        row["marginal_us_per_chunk_and_client"] = (
            (row["release_s"] - first["release_s"]) / extra * 1e6
        )
    return {"num_params": num_params, "preset": preset, "chunks": chunks, "rows": rows}
