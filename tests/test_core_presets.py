"""Presets: each builds, round-trips, documents its limits, and keeps its wire-size claim."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as sealapi
import torch

import secagg
from secagg import _seal
from secagg.errors import ConfigurationError, ContextError

PRESET_NAMES = sorted(secagg.PRESETS)


def _tolerance(release: secagg.ReleasedAggregate, exact: np.ndarray, noise: float) -> np.ndarray:
    """7-sigma flooding band plus the CKKS bound (derivation in test_core_mean)."""
    return 7 * release.mean_error_std * np.sqrt(1 + exact**2) + (1 + np.abs(exact)) * (
        noise / release.weight_sum
    )


def test_the_documented_presets_exist() -> None:
    assert {"default", "small", "large", "wide", "precise"} <= set(secagg.PRESETS)
    assert secagg.get_preset("default") is secagg.PRESETS["default"]
    preset = secagg.PRESETS["small"]
    assert secagg.get_preset(preset) is preset
    with pytest.raises(ConfigurationError, match="unknown preset"):
        secagg.get_preset("nope")


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
    ):
        doc = getattr(type(preset), attribute).__doc__
        assert doc and len(doc.split()) >= 4, attribute
    assert preset.security_bits == 128
    assert sum(preset.coeff_bits) <= preset.max_modulus_bits
    assert preset.slots == preset.poly_modulus_degree
    assert preset.values_per_chunk == preset.slots - preset.roster_slots - 3
    assert preset.max_aggregate_magnitude == 2.0 ** (preset.coeff_bits[0] - preset.scale_bits - 2)
    assert preset.max_client_magnitude * preset.max_clients == preset.max_aggregate_magnitude
    assert 8.0 < preset.bytes_per_parameter < 8.3
    assert preset.noise_bound(4) == pytest.approx(2 * preset.noise_bound(1))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_builds_and_round_trips(name: str) -> None:
    keys = secagg.KeyHolder.generate(name)
    preset = keys.preset
    assert preset is secagg.PRESETS[name]
    # The SEAL context really is at these parameters and 128-bit security.
    parms = keys.seal_context.key_context_data().parms()
    assert parms.poly_modulus_degree() == preset.poly_modulus_degree
    assert [m.bit_count() for m in parms.coeff_modulus()] == list(preset.coeff_bits)

    server_bytes = keys.server_context()
    server = secagg.ServerContext.from_bytes(server_bytes)
    assert server.to_bytes() == server_bytes
    assert server.preset == preset
    roster = ["a", "b"]
    gen = torch.Generator().manual_seed(len(name))
    numel = preset.values_per_chunk + 17  # two chunks
    scale = 0.9 * preset.max_client_magnitude
    updates = [
        {"w": (torch.rand(numel, generator=gen, dtype=torch.float64) * 2 - 1) * scale}
        for _ in roster
    ]
    agg = secagg.Aggregator(server, round_id=0, roster=roster, min_clients=2)
    for cid, upd, weight in zip(roster, updates, (3.0, 4.0), strict=True):
        agg.add(
            secagg.encrypt_update(
                keys, upd, weight=weight, weight_bound=4.0, round_id=0, client_id=cid, roster=roster
            )
        )
    enc = agg.finalize()
    assert len(enc.ciphertexts) == 2
    release = keys.release(secagg.EncryptedAggregate.from_bytes(enc.to_bytes(), server))
    exact = (3 * updates[0]["w"].numpy() + 4 * updates[1]["w"].numpy()) / 7
    err = np.abs(release.mean["w"].numpy() - exact)
    assert (err <= _tolerance(release, exact, preset.noise_bound(2))).all()
    assert release.weight_sum == pytest.approx(1.75, abs=7 * release.flooding_std + 1e-9)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_full_roster_at_the_headroom_limit_decrypts_without_wrapping(name: str) -> None:
    keys = secagg.KeyHolder.generate(name)
    preset = keys.preset
    roster = [f"c{i}" for i in range(preset.max_clients)]
    peak = preset.max_client_magnitude * (1 - 1e-9)
    signs = np.where(np.arange(64) % 3 == 0, -1.0, 1.0)
    update = {"w": torch.from_numpy(peak * signs)}
    agg = secagg.Aggregator(keys.server_context(), round_id=0, roster=roster, min_clients=1)
    for cid in roster:
        agg.add(secagg.encrypt_update(keys, update, round_id=0, client_id=cid, roster=roster))
    enc = agg.finalize()
    # The sum reaches max_aggregate_magnitude in every value slot and still decodes.
    plain = keys.session.decrypt(enc.ciphertexts[0])
    values = plain[preset.header_slots : preset.header_slots + 64]
    expected = preset.max_aggregate_magnitude * (1 - 1e-9) * signs
    assert np.abs(values - expected).max() <= preset.noise_bound(len(roster))
    release = keys.release(enc)
    assert release.contributors == tuple(roster)
    exact = peak * signs
    assert (np.abs(release.mean["w"].numpy() - exact) <= _tolerance(release, exact, 1e-6)).all()


def test_default_preset_costs_at_most_8_5_bytes_per_parameter(keys: secagg.KeyHolder) -> None:
    numel = 200_000
    gen = torch.Generator().manual_seed(0)
    update = {"w": torch.randn(numel, generator=gen) * 0.1}
    blob = secagg.encrypt_update(keys, update, round_id=0, client_id="a", roster=["a", "b"])
    assert keys.preset.name == "default"
    assert len(blob) / numel <= 8.5


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_full_chunks_cost_what_bytes_per_parameter_claims(name: str) -> None:
    keys = secagg.KeyHolder.generate(name)
    preset = keys.preset
    numel = 3 * preset.values_per_chunk
    update = {"w": torch.rand(numel, dtype=torch.float64) * preset.max_client_magnitude}
    blob = secagg.encrypt_update(keys, update, round_id=0, client_id="a", roster=["a"], workers=1)
    measured = len(blob) / numel
    # Frame header and per-ciphertext SEAL headers/seeds stay under 2% of three chunks.
    assert measured <= preset.bytes_per_parameter * 1.02
    assert measured >= 0.9 * preset.bytes_per_parameter  # and the claim is not loose


@pytest.mark.parametrize(
    ("degree", "bits", "scale_bits", "roster"),
    [
        (4096, (60, 60), 48, 64),  # 120 > 109 bits: below 128-bit security
        (8192, (60, 60), 57, 128),  # too little headroom
        (8192, (60, 60, 60), 48, 128),  # more than one data prime
        (3000, (60, 40), 40, 64),  # not a power-of-two ring degree
        (4096, (60, 40), 40, 4096),  # roster as big as the ring
    ],
)
def test_weak_or_inconsistent_presets_are_refused(
    degree: int, bits: tuple[int, ...], scale_bits: int, roster: int
) -> None:
    with pytest.raises(ConfigurationError):
        secagg.Preset("custom", degree, bits, scale_bits, roster)


def test_seal_refuses_parameters_below_128_bit_security() -> None:
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(4096)
    parms.set_coeff_modulus(sealapi.CoeffModulus.Create(4096, [60, 60]))
    with pytest.raises(ContextError):
        _seal.context_from_parameters(parms)


def test_server_context_refuses_a_preset_that_contradicts_this_build(
    keys: secagg.KeyHolder,
) -> None:
    data = keys.server_context()
    forged = data.replace(b'"scale_bits":48', b'"scale_bits":40')
    assert forged != data and len(forged) == len(data)
    with pytest.raises(ContextError, match="does not match"):
        secagg.ServerContext.from_bytes(forged)
