"""The aggregator: every rejection is typed and leaves the running sum exactly as it was."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch

import secagg
from secagg.crypto import wire
from secagg.crypto._codec import pack_coefficients, unpack_coefficients
from secagg.crypto._seal import SEED_BYTES
from secagg.crypto.registry import SigningKey
from secagg.errors import (
    ConfigurationError,
    DuplicateClientError,
    FormatError,
    KeyMismatchError,
    NotEnoughClientsError,
    PayloadError,
    RoundMismatchError,
    SecaggError,
    SignatureError,
    SpecMismatchError,
    UnknownClientError,
)

ROSTER = ["a", "b", "c"]
CLIENTS = [*ROSTER, "mallory"]  # mallory is registered, but not on this round's roster
ROUND = 4
NUMEL = 9000  # two chunks under preset "small" (8192 values per chunk, one the weight)
WEIGHTS = {"a": 2.0, "b": 5.0, "c": 3.0, "mallory": 1.0}
BOUND = 8.0


def _values(seed: int, offset: float = 0.0, spread: float = 0.5) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(NUMEL, generator=gen, dtype=torch.float64) * 2 - 1
    return {"w": noise * spread + offset}


HONEST = {cid: _values(i) for i, cid in enumerate(ROSTER)}
EVIL = _values(99, offset=0.9, spread=0.05)  # far from every honest mean: folding it in shows


@pytest.fixture
def fed() -> secagg.FederationKeys:
    return secagg.FederationKeys.generate(CLIENTS, preset="small")


def _encrypt(
    fed: secagg.FederationKeys,
    client_id: str,
    update: dict[str, Any] | None = None,
    *,
    round_id: int = ROUND,
    roster: Sequence[str] = ROSTER,
    signing_key: SigningKey | None = None,
    material: secagg.KeyMaterial | None = None,
) -> bytes:
    return secagg.encrypt_update(
        fed.material if material is None else material,
        HONEST[client_id] if update is None else update,
        signing_key=fed.signing_keys[client_id] if signing_key is None else signing_key,
        weight=WEIGHTS[client_id],
        weight_bound=BOUND,
        round_id=round_id,
        roster=list(roster),
    )


def _aggregator(fed: secagg.FederationKeys, **kwargs: Any) -> secagg.Aggregator:
    args: dict[str, Any] = {"registry": fed.registry, "round_id": ROUND, "roster": ROSTER}
    return secagg.Aggregator(fed.server_context(), **{**args, **kwargs})


def _assert_mean_of(
    fed: secagg.FederationKeys, enc: secagg.EncryptedAggregate, clients: Sequence[str]
) -> None:
    release = fed.key_holder().release(enc)
    assert sorted(release.contributors) == sorted(clients)
    total = sum(WEIGHTS[c] for c in clients)
    exact = sum(WEIGHTS[c] * HONEST[c]["w"].numpy() for c in clients) / total
    # 7-sigma flooding band (derivation in tests/crypto/test_mean.py) plus a CKKS allowance.
    tol = 7 * release.mean_error_std * np.sqrt(1 + exact**2) + 1e-9 * (1 + np.abs(exact))
    assert (np.abs(release.mean["w"] - exact) <= tol).all()
    rounding = len(clients) / fed.material.preset.levels  # the weights' quantisation
    assert release.weight_sum == pytest.approx(total / BOUND, abs=rounding + 1e-9)


def _sums(agg: secagg.Aggregator) -> bytes:
    """The aggregator's running sums (c0, tag, seeds, contributors), exactly."""
    return agg.finalize().to_bytes() if agg.contributors else b""


def _resign(fed: secagg.FederationKeys, cid: str, unsigned: bytes) -> bytes:
    """What a (malicious) client can do: sign any bytes with its own key."""
    return unsigned + fed.signing_keys[cid].sign(unsigned)


def _rechunk(
    fed: secagg.FederationKeys, cid: str, payload: bytes, edit: Callable[..., Any]
) -> bytes:
    """Rebuild a payload from edited chunks and re-sign it with the client's key."""
    frame = wire.unpack_frame(payload, wire.MAGIC_UPDATE)
    header = {k: v for k, v in frame.header.items() if k != "chunk_sizes"}
    chunks = edit(list(frame.chunks))
    return _resign(fed, cid, wire.pack_frame(wire.MAGIC_UPDATE, header, chunks, signed=True))


def _unreduced_chunk(chunks: list[bytes]) -> list[bytes]:
    count = len(unpack_coefficients(chunks[1][SEED_BYTES:], 4096, 60))
    chunks[1] = chunks[1][:SEED_BYTES] + pack_coefficients(np.full(count, 2**60 - 1, np.uint64), 60)
    return chunks


def _flip(payload: bytes, offset: int) -> bytes:
    offset %= len(payload)
    return payload[:offset] + bytes([payload[offset] ^ 1]) + payload[offset + 1 :]


def _strip_signature(payload: bytes) -> bytes:
    body = payload[: -wire.SIGNATURE_BYTES]
    magic, version, header_len, body_len, _ = struct.unpack_from(">4sHIQH", body)
    return struct.pack(">4sHIQH", magic, version, header_len, body_len, 0) + body[20:]


def _other_spec(fed: secagg.FederationKeys) -> bytes:
    update = {"w": EVIL["w"][: NUMEL - 1], "extra": torch.zeros(1, dtype=torch.float64)}
    return _encrypt(fed, "c", update)


BadPayload = Callable[[secagg.FederationKeys], bytes]
BAD_PAYLOADS: dict[str, tuple[BadPayload, type[SecaggError]]] = {
    "wrong-round": (lambda f: _encrypt(f, "c", EVIL, round_id=ROUND + 1), RoundMismatchError),
    "other-key": (
        lambda f: _encrypt(f, "c", EVIL, material=secagg.KeyMaterial.generate("small")),
        KeyMismatchError,
    ),
    "registered-but-not-on-roster": (
        lambda f: _encrypt(f, "mallory", EVIL, roster=[*ROSTER, "mallory"]),
        UnknownClientError,
    ),
    "another-roster": (lambda f: _encrypt(f, "c", EVIL, roster=["c", "b", "a"]), FormatError),
    "truncated-tail": (lambda f: _encrypt(f, "c", EVIL)[:-100], FormatError),
    "truncated-half": (lambda f: (b := _encrypt(f, "c", EVIL))[: len(b) // 2], FormatError),
    "padded": (lambda f: _encrypt(f, "c", EVIL) + b"\0", FormatError),
    "unsigned": (lambda f: _strip_signature(_encrypt(f, "c", EVIL)), SignatureError),
    "ciphertext-bit-flipped": (lambda f: _flip(_encrypt(f, "c", EVIL), -3000), SignatureError),
    "re-signed-unreduced-coefficient": (
        lambda f: _rechunk(f, "c", _encrypt(f, "c", EVIL), _unreduced_chunk),
        FormatError,
    ),
    "re-signed-short-chunk": (
        lambda f: _rechunk(f, "c", _encrypt(f, "c", EVIL), lambda c: [c[0], c[1][:-8]]),
        FormatError,
    ),
    "re-signed-missing-chunk": (
        lambda f: _rechunk(f, "c", _encrypt(f, "c", EVIL), lambda c: c[:1]),
        FormatError,
    ),
    "aggregate-bytes": (lambda f: _one_client_aggregate(f).to_bytes(), FormatError),
    "empty": (lambda f: b"", FormatError),
}


def _one_client_aggregate(fed: secagg.FederationKeys) -> secagg.EncryptedAggregate:
    agg = _aggregator(fed, min_clients=1)
    agg.add(_encrypt(fed, "c", EVIL))
    return agg.finalize()


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
@pytest.mark.parametrize("position", ["first", "after-one"])
def test_rejected_payload_leaves_the_sum_unchanged(
    fed: secagg.FederationKeys, case: str, position: str
) -> None:
    make, expected = BAD_PAYLOADS[case]
    bad = make(fed)
    agg = _aggregator(fed, min_clients=1)
    if position == "after-one":
        agg.add(_encrypt(fed, "a"))
    before = _sums(agg)
    with pytest.raises(expected):
        agg.add(bad)
    assert _sums(agg) == before
    assert agg.rejected[-1][0] == expected.__name__
    if position == "first":
        agg.add(_encrypt(fed, "a"))
    agg.add(_encrypt(fed, "b"))
    _assert_mean_of(fed, agg.finalize(), ["a", "b"])


def test_running_sums_are_the_exact_sums_modulo_q(fed: secagg.FederationKeys) -> None:
    # c0 and the MAC tags add modulo the data prime, exactly (checked with Python ints);
    # each contributor's seeds are kept as they came, 64 bytes per chunk.
    agg = _aggregator(fed)
    payloads = {cid: _encrypt(fed, cid) for cid in ROSTER}
    for payload in payloads.values():
        agg.add(payload)
    enc = agg.finalize()
    (q,) = fed.material.moduli
    updates = {cid: secagg.EncryptedUpdate.from_bytes(p) for cid, p in payloads.items()}
    for i in range(enc.num_chunks):
        rows = [
            unpack_coefficients(u.chunks[i][SEED_BYTES:], 4096, 60).astype(object)
            for u in updates.values()
        ]
        assert np.array_equal(enc.c0[i].astype(object), sum(rows) % q)
    assert enc.tag == (sum(u.tag[0] for u in updates.values()) % q,)
    assert enc.seeds == {cid: u.seeds for cid, u in updates.items()}
    assert all(len(s) == SEED_BYTES * enc.num_chunks for s in enc.seeds.values())


def test_duplicate_client_is_rejected_and_sum_unchanged(fed: secagg.FederationKeys) -> None:
    agg = _aggregator(fed, min_clients=1)
    agg.add(_encrypt(fed, "a"))
    before = _sums(agg)
    with pytest.raises(DuplicateClientError):
        agg.add(_encrypt(fed, "a", EVIL))  # a fresh encryption, other values
    assert _sums(agg) == before
    first = _encrypt(fed, "b")
    agg.add(first)
    with pytest.raises(DuplicateClientError):
        agg.add(first)  # a byte-identical replay
    assert agg.contributors == ("a", "b")
    _assert_mean_of(fed, agg.finalize(), ["a", "b"])


def test_other_spec_is_rejected_and_sum_unchanged(fed: secagg.FederationKeys) -> None:
    agg = _aggregator(fed)
    agg.add(_encrypt(fed, "a"))
    with pytest.raises(SpecMismatchError):
        agg.add(_other_spec(fed))
    agg.add(_encrypt(fed, "b"))
    _assert_mean_of(fed, agg.finalize(), ["a", "b"])


def test_expected_spec_hash_rejects_even_the_first_update(fed: secagg.FederationKeys) -> None:
    _, spec = secagg.flatten_update(HONEST["a"])
    agg = _aggregator(fed, expected_spec_hash=spec.spec_hash)
    with pytest.raises(SpecMismatchError):
        agg.add(_other_spec(fed))
    assert agg.contributors == ()
    agg.add(_encrypt(fed, "a"))
    agg.add(_encrypt(fed, "c"))
    _assert_mean_of(fed, agg.finalize(), ["a", "c"])


def test_client_rejected_for_a_corrupt_chunk_can_resubmit(fed: secagg.FederationKeys) -> None:
    agg = _aggregator(fed)
    agg.add(_encrypt(fed, "a"))
    agg.add(_encrypt(fed, "b"))
    corrupt = _rechunk(fed, "c", _encrypt(fed, "c", EVIL), _unreduced_chunk)
    with pytest.raises(FormatError):
        agg.add(corrupt)
    assert agg.contributors == ("a", "b")
    agg.add(_encrypt(fed, "c"))
    _assert_mean_of(fed, agg.finalize(), ["a", "b", "c"])


def test_finalize_needs_min_clients(fed: secagg.FederationKeys) -> None:
    agg = _aggregator(fed, min_clients=3)
    with pytest.raises(NotEnoughClientsError):
        agg.finalize()
    agg.add(_encrypt(fed, "a"))
    agg.add(_encrypt(fed, "b"))
    with pytest.raises(NotEnoughClientsError, match="min_clients=3"):
        agg.finalize()
    agg.add(_encrypt(fed, "c"))
    enc = agg.finalize()
    assert enc.min_clients == 3
    _assert_mean_of(fed, enc, ROSTER)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"roster": []}, ConfigurationError),
        ({"roster": ["a", "a"]}, ConfigurationError),
        ({"roster": None}, ConfigurationError),
        ({"roster": [1, 2]}, ConfigurationError),
        ({"roster": "abc"}, ConfigurationError),
        ({"roster": ["a", "nobody"]}, ConfigurationError),  # not registered
        ({"roster": [f"c{i}" for i in range(65)]}, ConfigurationError),  # over max_clients
        ({"min_clients": 0}, ConfigurationError),
        ({"min_clients": 4}, ConfigurationError),
        ({"min_clients": "2"}, ConfigurationError),
        ({"round_id": -1}, ConfigurationError),
        ({"round_id": 1.0}, ConfigurationError),
        ({"round_id": True}, ConfigurationError),
        ({"round_id": None}, ConfigurationError),
        ({"registry": None}, ConfigurationError),
        ({"registry": {"a": b"\0" * 32}}, ConfigurationError),
        ({"expected_spec_hash": 5}, ConfigurationError),
        ({"server_context": None}, secagg.errors.ContextError),
        ({"server_context": b"junk"}, secagg.errors.ContextError),
    ],
    ids=lambda v: str(v)[:40],
)
def test_inconsistent_aggregator_options_are_refused(
    fed: secagg.FederationKeys, changes: dict[str, Any], expected: type[SecaggError]
) -> None:
    args: dict[str, Any] = {
        "server_context": fed.server_context(),
        "registry": fed.registry,
        "round_id": ROUND,
        "roster": ROSTER,
        **changes,
    }
    with pytest.raises(expected) as info:
        secagg.Aggregator(args.pop("server_context"), **args)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("payload", [None, "text", 7, bytearray(b"SAUP")], ids=str)
def test_payloads_that_are_not_bytes_are_format_errors(
    fed: secagg.FederationKeys, payload: Any
) -> None:
    agg = _aggregator(fed)
    with pytest.raises(FormatError):
        agg.add(payload)


# ---------------------------------------------------------------------------- signatures
def _flip_fingerprint_char(payload: bytes, fingerprint: str) -> bytes:
    fp = fingerprint.encode()
    assert payload.count(fp) == 1
    forged = (b"1" if fp[:1] == b"0" else b"0") + fp[1:]
    return payload.replace(fp, forged)


def test_signatures_are_required_and_checked(fed: secagg.FederationKeys) -> None:
    agg = _aggregator(fed)
    signed_a = _encrypt(fed, "a")
    outsider = SigningKey.generate("a")  # an unregistered key that claims to be a
    cases: dict[str, tuple[bytes, tuple[type[SecaggError], ...]]] = {
        "stripped": (_strip_signature(signed_a), (SignatureError,)),
        "signed-by-b-as-a": (
            _encrypt(fed, "a", EVIL, signing_key=SigningKey("a", fed.signing_keys["b"]._key)),
            (SignatureError,),
        ),
        "unregistered-key": (_encrypt(fed, "a", EVIL, signing_key=outsider), (SignatureError,)),
        "header-fingerprint-edited": (
            _flip_fingerprint_char(signed_a, fed.material.fingerprint),
            (SignatureError,),
        ),
        "ciphertext-byte-flipped": (_flip(signed_a, -2000), (SignatureError,)),
        "signature-byte-flipped": (_flip(signed_a, -1), (SignatureError,)),
        "signature-zeroed": (signed_a[:-64] + bytes(64), (SignatureError,)),
        "signature-of-another-payload": (
            signed_a[:-64] + _encrypt(fed, "a", EVIL)[-64:],
            (SignatureError,),
        ),
    }  # fmt: skip
    header_start = 20
    for offset in (header_start, header_start + 5, header_start + 40, header_start + 300):
        cases[f"header-byte-{offset}"] = (_flip(signed_a, offset), (SignatureError, FormatError))
    for name, (payload, expected) in cases.items():
        with pytest.raises(PayloadError) as info:
            agg.add(payload)
        assert isinstance(info.value, expected), f"{name}: {info.value!r}"
        assert agg.contributors == (), name
    assert agg.add(signed_a) == "a"
    assert agg.add(_encrypt(fed, "b")) == "b"
    _assert_mean_of(fed, agg.finalize(), ["a", "b"])


def test_signed_payload_replayed_into_another_round_is_rejected(
    fed: secagg.FederationKeys,
) -> None:
    round_one = _encrypt(fed, "a", EVIL, round_id=1)
    agg = _aggregator(fed, round_id=2)
    with pytest.raises(RoundMismatchError):
        agg.add(round_one)
    # Its header relabelled as round 2 no longer carries a's signature.
    relabelled = round_one.replace(b'"round_id":1,', b'"round_id":2,')
    assert relabelled != round_one
    with pytest.raises(SignatureError):
        agg.add(relabelled)
    agg.add(_encrypt(fed, "a", round_id=2))
    agg.add(_encrypt(fed, "b", round_id=2))
    release = fed.key_holder().release(agg.finalize())
    assert (release.round_id, release.contributors) == (2, ("a", "b"))


def test_a_client_cannot_contribute_under_another_clients_name(
    fed: secagg.FederationKeys,
) -> None:
    # b signs a payload that names a: the registry's key for a does not verify it.
    agg = _aggregator(fed)
    payload = _encrypt(fed, "a", EVIL, signing_key=SigningKey("a", fed.signing_keys["b"]._key))
    with pytest.raises(SignatureError, match="'a'"):
        agg.add(payload)
    with pytest.raises(secagg.errors.ConfigurationError, match="roster"):
        _encrypt(fed, "b", roster=["a", "c"])  # and no client encrypts off the roster


def test_numpy_and_torch_updates_aggregate_alike(fed: secagg.FederationKeys) -> None:
    agg = _aggregator(fed)
    agg.add(_encrypt(fed, "a", {"w": HONEST["a"]["w"].numpy()}))
    agg.add(_encrypt(fed, "b"))
    _assert_mean_of(fed, agg.finalize(), ["a", "b"])
