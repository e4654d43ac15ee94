"""HE cost per role: client encryption, server add, key-holder release, wire size.

Schemes: ``plaintext`` (secagg's ``--no-he`` baseline), ``flare`` (the FLARE-style TenSEAL
reference) and ``secagg:<preset>`` for every preset (one encryption process, like
TenSEAL). Sizes default to 1e4 parameters; raise them with ``SECAGG_BENCH_SIZES=1e5,1e6``.

``pytest --benchmark-disable`` runs each benchmark once (the fast slice). Timings go to
``extra_info`` and are never asserted (shared machines are noisy); wire sizes are exact
and are.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest

import secagg
from bench.schemes import Scheme, make_scheme, scheme_names
from bench.targets import WIRE_TARGETS
from bench.updates import client_weights, make_update, parse_sizes

SIZES = parse_sizes(os.environ.get("SECAGG_BENCH_SIZES", "1e4"))
SCHEMES = scheme_names()
ROSTER = 4


@functools.cache
def _scheme(name: str) -> Scheme:
    return make_scheme(name, ROSTER)


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
    """Client: weight, (quantise, encrypt, tag, sign,) serialize one update."""
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
    """Server: verify, validate, unpack and add one client's payload to a running sum."""
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
def test_release(benchmark: Any, name: str, size: int) -> None:
    """Key holder: parse, verify, decrypt and dequantise (or flood) the aggregate."""
    scheme = _scheme(name)
    aggregate = _aggregate(name, size)
    benchmark.group = f"release-{size:.0e}"
    benchmark.extra_info.update(scheme=name, num_params=size)

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        scheme.reset_release()
        return (aggregate,), {}

    release = benchmark.pedantic(scheme.release, setup=setup, rounds=_rounds(size))
    benchmark.extra_info["stated_error_std"] = release.error_std
    assert len(release.mean) == len(make_update(size))


@pytest.mark.parametrize("size", sorted(WIRE_TARGETS), ids=lambda s: f"{s:.0e}")
def test_wire_bytes_target(benchmark: Any, size: int) -> None:
    """secagg default within the wire target at 1e5, 1e6 and 1e7, measured next to plaintext."""
    secagg_scheme = make_scheme("secagg:default/auto", 2)
    plain_scheme = _scheme("plaintext")
    update = make_update(size)
    plain = plain_scheme.payload_nbytes(plain_scheme.encrypt(update, client=0, weight=64.0))
    payload = benchmark.pedantic(
        secagg_scheme.encrypt, args=(update,), kwargs={"client": 0, "weight": 64.0}, rounds=1
    )
    per_param = secagg_scheme.payload_nbytes(payload) / size
    benchmark.group = "wire"
    benchmark.extra_info.update(
        num_params=size,
        secagg_default_bytes_per_param=per_param,
        plaintext_bytes_per_param=plain / size,
        plaintext_float32_bytes_per_param=(plain - 4 * size) / size,
        asymptotic_bytes_per_param=secagg.PRESETS["default"].bytes_per_parameter,
    )
    assert per_param <= WIRE_TARGETS[size], f"{per_param:.3f} B/param"
    # Plaintext sends float64 values today: 8 bytes each plus a small header.
    assert 8 * size <= plain < 8.05 * size


def test_wire_bytes_against_flare(benchmark: Any) -> None:
    """At 1e5 values, side by side: the FLARE-style payload is over 10x secagg's."""
    size = 100_000
    update = make_update(size)
    flare = _scheme("flare")
    ours = _scheme("secagg:default")
    flare_bytes = benchmark.pedantic(
        lambda: flare.payload_nbytes(flare.encrypt(update, client=0, weight=64.0)), rounds=1
    )
    ours_bytes = ours.payload_nbytes(ours.encrypt(update, client=0, weight=64.0))
    benchmark.group = "wire"
    benchmark.extra_info.update(
        num_params=size,
        flare_bytes_per_param=flare_bytes / size,
        secagg_default_bytes_per_param=ours_bytes / size,
        flare_over_secagg=flare_bytes / ours_bytes,
    )
    assert flare_bytes / ours_bytes > 10.0
