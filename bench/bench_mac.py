"""The aggregate MAC's cost to a client: bytes (asserted) and time (recorded).

The bytes are exact: the tag is one integer per data prime in the signed header, under
1% of the payload at every size. The time is measured A/B with the MAC's work
switched off (:func:`bench._mac_patch.null_mac`) and in situ (:func:`bench._mac_patch.mac_timer`);
both go to ``extra_info`` only. The patches themselves are checked: without the MAC the
key holder refuses the sum, and the timer sees one term per chunk.
"""

from __future__ import annotations

from typing import Any

import pytest

import secagg
from bench._mac_patch import mac_timer, null_mac
from bench.mac_cost import MAC_BYTES_TARGET, mac_ab, mac_in_situ, mac_wire_bytes
from bench.schemes import SecaggScheme
from bench.updates import client_weights, make_update

SIZE = 100_000


@pytest.mark.parametrize("size", [10_000, 100_000], ids=["1e4", "1e5"])
def test_mac_tag_bytes(benchmark: Any, size: int) -> None:
    """The tag adds under 1% to the payload (the signature is reported apart)."""
    scheme = SecaggScheme("default", 2)
    payload = benchmark.pedantic(
        scheme.encrypt, args=(make_update(size),), kwargs={"client": 0, "weight": 64.0}, rounds=1
    )
    found = mac_wire_bytes(payload)
    benchmark.group = "mac"
    benchmark.extra_info.update(found)
    assert 0 < found["tag_bytes"] <= 32
    assert found["tag_share"] < MAC_BYTES_TARGET


def test_mac_time_in_situ(benchmark: Any) -> None:
    """Time inside the MAC during real encryptions (recorded, not asserted)."""
    result = benchmark.pedantic(mac_in_situ, args=(SIZE,), kwargs={"repeats": 3}, rounds=1)
    benchmark.group = "mac"
    benchmark.extra_info.update(overhead=result["overhead"], chunks=result["chunks"])
    assert result["chunks"] == secagg.PRESETS["default"].num_chunks(SIZE)


def test_mac_time_ab(benchmark: Any) -> None:
    """One process, with and without the MAC, paired (recorded, not asserted)."""
    result = benchmark.pedantic(mac_ab, args=(SIZE,), kwargs={"pairs": 4}, rounds=1)
    benchmark.group = "mac"
    benchmark.extra_info.update(overhead=result["overhead"], pairs=result["pairs"])
    assert len(result["with_s"]) == len(result["without_s"]) == 4


def test_the_patches_remove_and_time_exactly_the_mac() -> None:
    """Without the MAC the sum is refused before decryption; the timer sees every chunk."""
    scheme = SecaggScheme("default", 2)
    update = make_update(SIZE)
    server = scheme.server()
    with null_mac():
        for client, weight in enumerate(client_weights(2)):
            server.add(scheme.encrypt(update, client=client, weight=weight), weight)
    with pytest.raises(secagg.errors.IntegrityError):
        scheme.release(server.finalize())
    with mac_timer() as times:
        scheme.encrypt(update, client=0, weight=64.0)
    assert times.chunk_calls == secagg.PRESETS["default"].num_chunks(SIZE)
    assert times.tag_s > 0
