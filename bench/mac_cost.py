"""What the aggregate MAC costs a client (time and bytes) and the key holder (time).

Time, two ways:

- **A/B, paired** (:func:`mac_ab`, run in a fresh process by :mod:`bench._mac_child`):
  the same update is encrypted with the MAC and with its work switched off
  (:func:`bench._mac_patch.null_mac`) back to back, in alternating order (ABBA), in one
  process and with the default parallelism; the overhead is the median over pairs of
  ``time(with) / time(without) - 1``, so that both halves of a pair share the
  machine's load.
- **In situ** (:func:`mac_in_situ`): the time spent inside ``RoundMac.chunk_terms`` and
  ``RoundMac.tag`` (the pad and the sum) during real one-process encryptions, over the
  rest of the encryption: precise, where the A/B difference carries timing noise.

Bytes (:func:`mac_wire_bytes`): the tag is one JSON integer per data prime in the
signed header; its share is measured on a real payload by serialising the header with
and without it. The Ed25519 signature (64 bytes) authenticates the client to the
server and is reported apart.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Mapping
from typing import Any

import secagg
from secagg.crypto.wire import MAGIC_UPDATE, SIGNATURE_BYTES, unpack_frame

from ._mac_patch import mac_timer
from .schemes import ROUND_ID, SecaggScheme
from .updates import client_weights, make_update

__all__ = [
    "MAC_BYTES_TARGET",
    "MAC_TIME_TARGET",
    "mac_ab",
    "mac_in_situ",
    "mac_release_cost",
    "mac_wire_bytes",
]

#: Target: under 10% more client encryption time than without the MAC ...
MAC_TIME_TARGET = 0.10
#: ... and under 1% more bytes.
MAC_BYTES_TARGET = 0.01


def _header_bytes(header: Mapping[str, Any]) -> int:
    """Bytes of a header as :func:`secagg.crypto.wire.pack_frame` serialises it."""
    return len(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())


def mac_wire_bytes(payload: bytes) -> dict[str, Any]:
    """The MAC tag's and the signature's bytes in one real update payload.

    Returns
    -------
    dict
        ``payload_bytes``, ``tag_bytes`` (the header's ``"tag":[...]`` entry),
        ``tag_share`` (``tag_bytes`` over the payload without it), ``signature_bytes``
        and ``signature_share``.
    """
    frame = unpack_frame(payload, MAGIC_UPDATE)
    without = {k: v for k, v in frame.header.items() if k != "tag"}
    tag_bytes = _header_bytes(frame.header) - _header_bytes(without)
    size = len(payload)
    return {
        "payload_bytes": size,
        "tag_bytes": tag_bytes,
        "tag_share": tag_bytes / (size - tag_bytes),
        "signature_bytes": SIGNATURE_BYTES,
        "signature_share": SIGNATURE_BYTES / size,
    }


def mac_in_situ(num_params: int, *, repeats: int = 5, preset: str = "default") -> dict[str, Any]:
    """Time spent in the MAC during real one-process encryptions.

    Parameters
    ----------
    num_params : int
        Update size.
    repeats : int, optional
        Timed encryptions (after one untimed warm-up).
    preset : str, optional
        The preset.

    Returns
    -------
    dict
        Per encryption ``encrypt_s`` and ``mac_s`` (lists), the chunks, and
        ``overhead``: median MAC time over the median of the rest of the encryption.
    """
    scheme = SecaggScheme(preset, 2, workers=1)
    update = make_update(num_params, seed=3)
    scheme.encrypt(update, client=0, weight=64.0)
    encrypt_s, mac_s, chunks = [], [], 0
    for _ in range(repeats):
        with mac_timer() as times:
            start = time.perf_counter()
            scheme.encrypt(update, client=0, weight=64.0)
            encrypt_s.append(time.perf_counter() - start)
        mac_s.append(times.total_s)
        chunks = times.chunk_calls
    rest = statistics.median(e - m for e, m in zip(encrypt_s, mac_s, strict=True))
    return {
        "num_params": num_params,
        "chunks": chunks,
        "encrypt_s": encrypt_s,
        "mac_s": mac_s,
        "overhead": statistics.median(mac_s) / rest,
        "mac_us_per_chunk": statistics.median(mac_s) / max(chunks, 1) * 1e6,
    }


def _pair(
    with_mac: SecaggScheme, without: SecaggScheme, update: Any, mac_first: bool
) -> tuple[float, float]:
    seconds = {}
    for scheme in (with_mac, without) if mac_first else (without, with_mac):
        gc.collect()
        start = time.perf_counter()
        scheme.encrypt(update, client=0, weight=64.0)
        seconds[scheme.mac] = time.perf_counter() - start
    return seconds[True], seconds[False]


def mac_ab(num_params: int, *, pairs: int = 20, workers: int | None = 1) -> dict[str, Any]:
    """Encryption time with and without the MAC, paired back to back (ABBA order).

    Parameters
    ----------
    num_params : int
        Update size.
    pairs : int, optional
        Timed pairs (after one untimed encryption of each).
    workers : int or None, optional
        Encryption processes (``None``: the library's default parallelism).

    Returns
    -------
    dict
        ``with_s`` and ``without_s`` (lists), ``overhead`` (median of the pairs'
        ratios, minus 1) and ``overhead_of_medians``.
    """
    with_mac = SecaggScheme("default", 2, workers=workers)
    without = SecaggScheme("default", 2, workers=workers, mac=False)
    update = make_update(num_params, seed=9)
    for scheme in (with_mac, without):
        scheme.encrypt(update, client=0, weight=64.0)
    timed = [_pair(with_mac, without, update, i % 4 in (0, 3)) for i in range(pairs)]
    with_s, without_s = [t[0] for t in timed], [t[1] for t in timed]
    return {
        "num_params": num_params,
        "workers": workers,
        "pairs": pairs,
        "with_s": with_s,
        "without_s": without_s,
        "overhead": statistics.median(a / b for a, b in timed) - 1,
        "overhead_of_medians": statistics.median(with_s) / statistics.median(without_s) - 1,
    }


def mac_release_cost(num_params: int, *, clients: int = 2) -> dict[str, Any]:
    """Key holder: the MAC check (``KeyHolder.verify``) against the whole release.

    Parameters
    ----------
    num_params : int
        Update size.
    clients : int, optional
        Clients summed.
    """
    scheme = SecaggScheme("default", clients, workers=None)
    update = make_update(num_params, seed=4)
    server = scheme.server()
    for client, weight in enumerate(client_weights(clients)):
        server.add(scheme.encrypt(update, client=client, weight=weight), weight)
    data = server.finalize()
    context = scheme.keys.material.server_context_object()
    aggregate = secagg.EncryptedAggregate.from_bytes(data, context)
    start = time.perf_counter()
    scheme.holder.verify(aggregate)
    verify_s = time.perf_counter() - start
    scheme.reset_release()
    start = time.perf_counter()
    released = scheme.holder.release(data)
    release_s = time.perf_counter() - start
    return {
        "num_params": num_params,
        "clients": clients,
        "round_id": ROUND_ID,
        "verify_s": verify_s,
        "release_s": release_s,
        "verify_share": verify_s / release_s,
        "contributors": len(released.contributors),
    }
