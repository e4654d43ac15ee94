"""HE cost per role: client encryption, server add, key-holder release, wire size.

Schemes: ``plaintext`` (secagg's ``--no-he`` baseline), ``flare`` (the FLARE-style TenSEAL
reference) and ``secagg:<preset>`` for every preset (one encryption process, like
TenSEAL). Sizes default to 1e4 parameters; raise them with ``SECAGG_BENCH_SIZES=1e5,1e6``.

``pytest --benchmark-disable`` runs each benchmark once (the fast slice). No speed ratio
is asserted (timings on shared CI are noisy); the wire-size checks are exact and are.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest

import secagg
from bench._measure import (
    Scheme,
    client_weights,
    make_scheme,
    make_update,
    parse_sizes,
    scheme_names,
)

SIZES = parse_sizes(os.environ.get("SECAGG_BENCH_SIZES", "1e4"))
SCHEMES = scheme_names()
ROSTER = 4
# Benchmarks release many aggregates; only the flooding σ depends on the budget.
BUDGET = 1 << 16
# The wire-size targets: secagg's default preset against the FLARE-style reference.
WIRE_TARGET_BYTES_PER_PARAM = 8.5
FLARE_FLOOR_BYTES_PER_PARAM = 40.0


@functools.cache
def _scheme(name: str) -> Scheme:
    return make_scheme(name, ROSTER, decryption_budget=BUDGET)


@functools.cache
def _payloads(name: str, size: int) -> tuple[Any, Any]:
    """Client 0's and client 1's payloads for ``size`` parameters."""
    scheme = _scheme(name)
    update = make_update(size)
    weights = client_weights(2)
    return (
        scheme.encrypt(update, client=0, weight=weights[0]),
        scheme.encrypt(update, client=1, weight=weights[1]),
    )


@functools.cache
def _aggregate(name: str, size: int) -> Any:
    scheme = _scheme(name)
    server = scheme.server()
    for payload, weight in zip(_payloads(name, size), client_weights(2), strict=True):
        server.add(payload, weight)
    return server.finalize()


def _rounds(size: int) -> int:
    return max(3, min(30, int(3e6 // size)))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s:.0e}")
@pytest.mark.parametrize("name", SCHEMES)
def test_encrypt(benchmark: Any, name: str, size: int) -> None:
    """Client: weight, (encrypt,) serialize one update."""
    scheme = _scheme(name)
    update = make_update(size)
    benchmark.group = f"encrypt-{size:.0e}"
    benchmark.extra_info.update(scheme=name, num_params=size)
    payload = benchmark.pedantic(
        scheme.encrypt,
        args=(update,),
        kwargs={"client": 0, "weight": 64.0},
        rounds=_rounds(size),
        warmup_rounds=1,
    )
    nbytes = scheme.payload_nbytes(payload)
    benchmark.extra_info["bytes_per_param"] = nbytes / size
    assert nbytes > 0


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s:.0e}")
@pytest.mark.parametrize("name", SCHEMES)
def test_add(benchmark: Any, name: str, size: int) -> None:
    """Server: validate, load and add one client's payload to a running sum."""
    scheme = _scheme(name)
    first, second = _payloads(name, size)
    weights = client_weights(2)

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        server = scheme.server()
        server.add(first, weights[0])
        return (server,), {}

    def add(server: Any) -> Any:
        server.add(second, weights[1])
        return server

    benchmark.group = f"add-{size:.0e}"
    benchmark.extra_info.update(scheme=name, num_params=size)
    server = benchmark.pedantic(add, setup=setup, rounds=_rounds(size))
    assert server.finalize()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s:.0e}")
@pytest.mark.parametrize("name", SCHEMES)
def test_decrypt(benchmark: Any, name: str, size: int) -> None:
    """Key holder: load, decrypt (and for secagg check rosters and flood) the aggregate."""
    scheme = _scheme(name)
    aggregate = _aggregate(name, size)
    benchmark.group = f"decrypt-{size:.0e}"
    benchmark.extra_info.update(scheme=name, num_params=size)

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        scheme.prepare_decrypt()
        return (aggregate,), {}

    mean = benchmark.pedantic(scheme.decrypt, setup=setup, rounds=_rounds(size))
    assert len(mean) == len(make_update(size))


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(
            100_000,
            marks=pytest.mark.xfail(
                strict=True,
                reason="known miss: 1e5 values need 13 chunks of ~8,060 and the last "
                "one's zero padding gives 8.55 B/param; every size from ~2e5 values on "
                "is within 8.5",
            ),
        ),
        1_000_000,
    ],
    ids=["1e5", "1e6"],
)
def test_wire_bytes_target(benchmark: Any, size: int) -> None:
    """secagg default <= 8.5 B/param on the wire, measured next to plaintext."""
    secagg_scheme = _scheme("secagg:default")
    plain_scheme = _scheme("plaintext")
    update = make_update(size)
    plain = plain_scheme.payload_nbytes(plain_scheme.encrypt(update, client=0, weight=64.0))
    payload = benchmark.pedantic(
        secagg_scheme.encrypt,
        args=(update,),
        kwargs={"client": 0, "weight": 64.0},
        rounds=3,
    )
    per_param = secagg_scheme.payload_nbytes(payload) / size
    benchmark.group = "wire"
    benchmark.extra_info.update(
        num_params=size,
        secagg_default_bytes_per_param=per_param,
        plaintext_bytes_per_param=plain / size,
        secagg_over_plaintext=per_param / (plain / size),
        asymptotic_bytes_per_param=secagg.PRESETS["default"].bytes_per_parameter,
    )
    assert per_param <= WIRE_TARGET_BYTES_PER_PARAM, f"{per_param:.3f} B/param"


def test_wire_bytes_against_flare(benchmark: Any) -> None:
    """At 1e5 values, side by side: FLARE-style > 40 B/param, and the ratio to secagg."""
    size = 100_000
    update = make_update(size)
    flare = _scheme("flare")
    ours = _scheme("secagg:default")
    flare_bytes = benchmark.pedantic(
        lambda: flare.payload_nbytes(flare.encrypt(update, client=0, weight=64.0)), rounds=1
    )
    ours_bytes = ours.payload_nbytes(ours.encrypt(update, client=0, weight=64.0))
    ratio = flare_bytes / ours_bytes
    benchmark.group = "wire"
    benchmark.extra_info.update(
        num_params=size,
        flare_bytes_per_param=flare_bytes / size,
        secagg_default_bytes_per_param=ours_bytes / size,
        flare_over_secagg=ratio,
    )
    assert flare_bytes / size > FLARE_FLOOR_BYTES_PER_PARAM
    assert ratio > 4.0, f"FLARE-style payload only {ratio:.2f}x secagg's"
