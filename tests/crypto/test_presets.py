"""Presets: each builds, round-trips, documents its limits, and keeps its wire-size claim."""

from __future__ import annotations

import math
import types
from collections.abc import Sequence

import numpy as np
import pytest
import tenseal.sealapi as sealapi

import secagg
from secagg.crypto._seal import SEED_BYTES, SealParameters, parameters_to_bytes
from secagg.crypto.layout import FieldLayout
from secagg.crypto.presets import APPROXIMATE, EXACT, SEAL_NOISE_BOUND
from secagg.errors import ConfigurationError, ContextError

PRESET_NAMES = sorted(secagg.PRESETS)
EXACT_NAMES = [n for n in PRESET_NAMES if secagg.PRESETS[n].exact]
APPROX_NAMES = [n for n in PRESET_NAMES if not secagg.PRESETS[n].exact]


def _tolerance(release: secagg.ReleasedAggregate, exact: np.ndarray, noise: float) -> np.ndarray:
    """7 standard deviations of what secure aggregation adds (flooding or rounding), plus
    the CKKS bound for approximate presets (derivation in tests/crypto/test_mean.py)."""
    return 7 * release.mean_error_std * np.sqrt(1 + exact**2) + (1 + np.abs(exact)) * (
        noise / release.weight_sum
    )


def _aggregate(
    fed: secagg.FederationKeys,
    updates: dict[str, np.ndarray],
    *,
    weights: Sequence[float] | None = None,
    weight_bound: float = 1.0,
    server: secagg.ServerContext | None = None,
) -> secagg.EncryptedAggregate:
    roster = list(updates)
    agg = secagg.Aggregator(
        fed.server_context() if server is None else server,
        registry=fed.registry,
        round_id=0,
        roster=roster,
        min_clients=1,
    )
    for i, (cid, values) in enumerate(updates.items()):
        agg.add(
            secagg.encrypt_update(
                fed.material,
                {"w": values},
                signing_key=fed.signing_keys[cid],
                weight=1.0 if weights is None else weights[i],
                weight_bound=weight_bound,
                round_id=0,
                roster=roster,
            )
        )
    return agg.finalize()


def test_the_documented_presets_exist() -> None:
    assert set(EXACT_NAMES) == {"default", "small", "large"}
    assert set(APPROX_NAMES) == {"approx", "wide", "precise"}
    assert secagg.get_preset("default") is secagg.PRESETS["default"]
    preset = secagg.PRESETS["small"]
    assert secagg.get_preset(preset) is preset
    with pytest.raises(ConfigurationError, match="unknown preset"):
        secagg.get_preset("nope")
    with pytest.raises(ConfigurationError, match="unknown preset"):
        secagg.get_preset(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_documents_its_security_and_limits(name: str) -> None:
    preset = secagg.PRESETS[name]
    assert preset.name == name
    for attribute in (
        "security_bits",
        "slots",
        "max_aggregate_magnitude",
        "max_client_magnitude",
        "bytes_per_parameter",
        "chunk_bytes",
    ):
        doc = getattr(type(preset), attribute).__doc__
        assert doc and len(doc.split()) >= 4, attribute
    n = preset.poly_modulus_degree
    assert preset.security_bits == 128
    assert sum(preset.coeff_bits) <= preset.max_modulus_bits
    assert preset.data_prime_bits == (60,)
    # The seed and c0 at 60 bits per coefficient: 7.5 bytes per coefficient + 64 per chunk.
    assert preset.chunk_bytes == SEED_BYTES + 60 * n // 8
    assert preset.bytes_per_parameter == preset.chunk_bytes / preset.slots
    assert preset.max_client_magnitude * preset.max_clients == preset.max_aggregate_magnitude
    # Position 0 of the first chunk carries the weight.
    s = preset.slots
    assert (preset.num_chunks(1), preset.num_chunks(s - 1), preset.num_chunks(s)) == (1, 1, 2)
    if preset.exact:
        assert preset.encoding == EXACT and preset.scale == 1.0
        assert preset.slots == n * preset.fields and preset.fields >= 2
        assert 3.75 < preset.bytes_per_parameter < 3.76
        # max_clients values of value_bits bits sum without a carry into the next field...
        assert preset.max_clients * preset.levels < 2**preset.field_bits
        assert preset.fields * preset.field_bits <= preset.coefficient_bits
        # ...and Δ/2 exceeds the largest decryption error of a sum of max_clients.
        assert 2 ** (preset.noise_shift - 1) > SEAL_NOISE_BOUND * preset.max_clients
        assert preset.coefficient_bits + preset.noise_shift < 60  # below q/2 > 2^58
        assert preset.quantization_step == pytest.approx(
            2 * preset.value_range / (2**preset.value_bits - 1)
        )
        assert preset.noise_bound(4) == 4 * SEAL_NOISE_BOUND
    else:
        assert preset.encoding == APPROXIMATE and preset.scale == 2.0**preset.scale_bits
        assert preset.slots == n
        assert 7.5 < preset.bytes_per_parameter < 7.52
        assert preset.max_aggregate_magnitude == 2.0 ** (60 - preset.scale_bits - 2)
        assert preset.noise_bound(4) == pytest.approx(2 * preset.noise_bound(1))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_builds_and_round_trips(name: str) -> None:
    fed = secagg.FederationKeys.generate(["a", "b"], preset=name)
    preset = fed.material.preset
    assert preset is secagg.PRESETS[name]
    # The SEAL context really is at these parameters and 128-bit security.
    parms = fed.material.parameters.context.key_context_data().parms()
    assert parms.poly_modulus_degree() == preset.poly_modulus_degree
    assert [m.bit_count() for m in parms.coeff_modulus()] == list(preset.coeff_bits)

    server_bytes = fed.material.server_context()
    server = secagg.ServerContext.from_bytes(server_bytes)
    assert server.to_bytes() == server_bytes
    assert server.preset == preset
    rng = np.random.default_rng(len(name))
    numel = preset.slots + 17  # two chunks
    scale = 0.9 * preset.max_client_magnitude
    updates = {cid: rng.uniform(-scale, scale, numel) for cid in ("a", "b")}
    enc = _aggregate(fed, updates, weights=(3.0, 4.0), weight_bound=4.0, server=server)
    assert enc.num_chunks == 2
    release = fed.key_holder().release(secagg.EncryptedAggregate.from_bytes(enc.to_bytes(), server))
    exact = (3 * updates["a"] + 4 * updates["b"]) / 7
    noise = 0.0 if preset.exact else preset.noise_bound(2)
    err = np.abs(release.mean["w"] - exact)
    assert (err <= _tolerance(release, exact, noise)).all()
    assert (release.flooding_std == 0.0) == preset.exact
    assert (release.quantization_std == 0.0) != preset.exact
    assert release.weight_sum == pytest.approx(
        1.75, abs=7 * release.flooding_std + 4 / (preset.levels if preset.exact else 1e9)
    )


@pytest.mark.parametrize("name", EXACT_NAMES)
def test_a_full_roster_at_the_value_range_sums_exactly_without_carry(name: str) -> None:
    # Every client at ±value_range quantises to the extreme integers 2^value_bits - 1 and
    # 0 (deterministically), and max_clients of them must sum exactly in their field.
    preset = secagg.PRESETS[name]
    roster = [f"c{i}" for i in range(preset.max_clients)]
    fed = secagg.FederationKeys.generate(roster, preset=name)
    signs = np.where(np.arange(64) % 3 == 0, -1.0, 1.0)
    enc = _aggregate(fed, {cid: preset.value_range * signs for cid in roster})
    seeds = [enc.seeds[cid] for cid in roster]
    phases = fed.material.session.decrypt_coefficients(enc.c0[0], seeds)[None, :]
    layout = FieldLayout(preset)
    column = fed.material.parameters.modulus_column()
    sums = layout.field_sums(phases, column, len(roster))
    k = len(roster)
    assert sums[0] == k * preset.levels  # the weights, all 1
    assert sums[1:65].tolist() == [k * preset.levels if v > 0 else 0 for v in signs]
    assert not sums[65:].any()  # padding, untouched by any carry
    release = fed.key_holder().release(enc)
    assert release.contributors == tuple(roster)
    assert np.array_equal(release.mean["w"], preset.value_range * signs)
    assert release.weight_sum == k


@pytest.mark.parametrize("name", APPROX_NAMES)
def test_a_full_roster_at_the_headroom_limit_decrypts_without_wrapping(name: str) -> None:
    preset = secagg.PRESETS[name]
    roster = [f"c{i}" for i in range(preset.max_clients)]
    fed = secagg.FederationKeys.generate(roster, preset=name)
    peak = preset.max_client_magnitude * (1 - 1e-9)
    signs = np.where(np.arange(64) % 3 == 0, -1.0, 1.0)
    enc = _aggregate(fed, {cid: peak * signs for cid in roster})
    # The sum reaches max_aggregate_magnitude in every value slot and still decodes.
    seeds = [enc.seeds[cid] for cid in roster]
    plain = fed.material.session.decrypt_sum(enc.c0[0], seeds)
    expected = preset.max_aggregate_magnitude * (1 - 1e-9) * signs
    assert np.abs(plain[1:65] - expected).max() <= preset.noise_bound(len(roster))
    assert abs(plain[0] - len(roster)) <= preset.noise_bound(len(roster))
    release = fed.key_holder().release(enc)
    assert release.contributors == tuple(roster)
    exact = peak * signs
    assert (np.abs(release.mean["w"] - exact) <= _tolerance(release, exact, 1e-6)).all()


def test_default_preset_costs_under_3_85_bytes_per_parameter_at_a_million(
    federation: secagg.FederationKeys,
) -> None:
    numel = 1_000_000
    rng = np.random.default_rng(0)
    update = {"w": (rng.standard_normal(numel) * 0.1).clip(-1, 1).astype(np.float32)}
    blob = secagg.encrypt_update(
        federation.material,
        update,
        signing_key=federation.signing_keys["a"],
        round_id=0,
        roster=["a", "b"],
    )
    preset = federation.material.preset
    assert preset.name == "default" and preset.exact
    assert len(blob) / numel < 3.85  # 62 chunks, the last one partly padding
    # Exactly the chunks (the last one zero-padded) plus a small header and the signature.
    overhead = len(blob) - preset.num_chunks(numel) * preset.chunk_bytes
    assert 64 < overhead < 2048


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_full_chunks_cost_what_bytes_per_parameter_claims(name: str) -> None:
    fed = secagg.FederationKeys.generate(["a"], preset=name)
    preset = fed.material.preset
    numel = 3 * preset.slots - 1  # three full chunks with the weight position
    update = {"w": np.random.default_rng(1).random(numel) * preset.max_client_magnitude}
    blob = secagg.encrypt_update(
        fed.material,
        update,
        signing_key=fed.signing_keys["a"],
        round_id=0,
        roster=["a"],
        workers=1,
    )
    assert len(secagg.EncryptedUpdate.from_bytes(blob).chunks) == 3
    measured = len(blob) / numel
    # The frame header and signature stay under 2% of three chunks.
    assert measured <= preset.bytes_per_parameter * 1.02
    assert measured >= preset.bytes_per_parameter  # and the claim is not loose


WEAK: dict[str, tuple[object, ...]] = {
    "below-128-bit": ("c", EXACT, 4096, (60, 60), 64, 16, 1.0),  # 120 > 109 bits
    "not-a-power-of-two": ("c", EXACT, 3000, (60, 40), 64, 16, 1.0),
    "two-data-primes": ("c", EXACT, 8192, (60, 60, 60), 128, 16, 1.0),
    "a-59-bit-data-prime": ("c", EXACT, 8192, (59, 60), 128, 16, 1.0),
    "one-client": ("c", EXACT, 4096, (60, 40), 1, 16, 1.0),
    "too-many-clients": ("c", EXACT, 4096, (60, 40), 2**17, 16, 1.0),
    "3-bit-values": ("c", EXACT, 4096, (60, 40), 64, 3, 1.0),
    "fields-too-wide": ("c", EXACT, 4096, (60, 40), 65536, 40, 1.0),
    "range-not-a-power-of-two": ("c", EXACT, 4096, (60, 40), 64, 16, 3.0),
    "no-range": ("c", EXACT, 4096, (60, 40), 64, 16, 0.0),
    "unknown-encoding": ("c", "fuzzy", 4096, (60, 40), 64, 16, 1.0),
}
WEAK_APPROX: dict[str, tuple[object, ...]] = {
    "too-little-headroom": ("c", APPROXIMATE, 8192, (60, 60), 128, 0, 0.0, 57),
    "too-little-precision": ("c", APPROXIMATE, 8192, (60, 60), 128, 0, 0.0, 19),
}


@pytest.mark.parametrize("case", sorted({**WEAK, **WEAK_APPROX}))
def test_weak_or_inconsistent_presets_are_refused(case: str) -> None:
    with pytest.raises(ConfigurationError):
        secagg.Preset(*{**WEAK, **WEAK_APPROX}[case])  # type: ignore[arg-type]


def test_seal_refuses_parameters_below_128_bit_security() -> None:
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(4096)
    parms.set_coeff_modulus(sealapi.CoeffModulus.Create(4096, [60, 60]))
    # A preset-like description that skips secagg's own check: SEAL must refuse anyway.
    weak = types.SimpleNamespace(poly_modulus_degree=4096, coeff_bits=(60, 60))
    with pytest.raises(ContextError):
        SealParameters(weak, parameters_to_bytes(parms))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"value_bits":16', b'"value_bits":20'),
        (b'"max_clients":128', b'"max_clients":64'),
        (b'"encoding":"exact"', b'"encoding":"approximate"'),
        (b'"value_range":1.0', b'"value_range":2.0'),
        (b'"poly_modulus_degree":8192', b'"poly_modulus_degree":4096'),
    ],
)
def test_server_context_refuses_a_preset_that_contradicts_this_build(
    federation: secagg.FederationKeys, old: bytes, new: bytes
) -> None:
    data = federation.material.server_context()
    forged = data.replace(old, new)
    assert forged != data
    forged = (
        forged[:6]
        + (len(forged) - len(data) + int.from_bytes(data[6:10], "big")).to_bytes(4, "big")
        + forged[10:]
    )
    with pytest.raises(ContextError):
        secagg.ServerContext.from_bytes(forged)


def test_exact_presets_quantise_without_bias() -> None:
    # Stochastic rounding is unbiased: the mean of many roundings of one value is the
    # value, to within its standard error, and every rounding is one of the two
    # neighbouring levels.
    preset = secagg.PRESETS["small"]
    layout = FieldLayout(preset)
    value = 0.123456789
    draws = 200_000
    levels = layout.quantize(np.full(draws, value), 1.0)[1:].astype(np.float64)
    decoded = levels * preset.quantization_step - preset.value_range
    low = math.floor((value + preset.value_range) / preset.quantization_step)
    assert set(np.unique(levels).tolist()) <= {float(low), float(low + 1)}
    stderr = preset.quantization_step / 2 / math.sqrt(draws)
    assert abs(float(decoded.mean()) - value) <= 6 * stderr
