"""The aggregator: every rejection is typed and leaves the running sum exactly as it was."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import secagg
from secagg import wire
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
ROUND = 4
NUMEL = 5000  # two chunks under preset "small" (4031 values per chunk)
WEIGHTS = {"a": 2.0, "b": 5.0, "c": 3.0}
BOUND = 8.0


def _values(seed: int, offset: float = 0.0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(NUMEL, generator=gen, dtype=torch.float64) * 0.2 + offset}


HONEST = {cid: _values(i) for i, cid in enumerate(ROSTER)}
EVIL = _values(99, offset=4.0)  # far from every honest mean: folding it in would show


def _encrypt(
    keys: secagg.KeyHolder,
    client_id: str,
    update: dict[str, torch.Tensor] | None = None,
    *,
    round_id: int = ROUND,
    roster: list[str] | None = None,
    signing_key: Ed25519PrivateKey | None = None,
) -> bytes:
    return secagg.encrypt_update(
        keys,
        HONEST[client_id] if update is None else update,
        weight=WEIGHTS.get(client_id, 1.0),
        weight_bound=BOUND,
        round_id=round_id,
        client_id=client_id,
        roster=ROSTER if roster is None else roster,
        signing_key=signing_key,
    )


def _assert_mean_of(
    keys: secagg.KeyHolder, enc: secagg.EncryptedAggregate, clients: list[str]
) -> None:
    release = keys.release(enc)
    assert sorted(release.contributors) == sorted(clients)
    total = sum(WEIGHTS[c] for c in clients)
    exact = sum(WEIGHTS[c] * HONEST[c]["w"].numpy() for c in clients) / total
    got = release.mean["w"].numpy()
    # 7-sigma flooding band (derivation in test_core_mean) plus a CKKS allowance.
    tol = 7 * release.mean_error_std * np.sqrt(1 + exact**2) + 1e-9 * (1 + np.abs(exact))
    assert (np.abs(got - exact) <= tol).all()
    assert release.weight_sum == pytest.approx(total / BOUND, abs=7 * release.flooding_std + 1e-9)


def _replace_chunk(payload: bytes, magic: bytes, index: int) -> bytes:
    frame = wire.unpack_frame(payload, magic, max_chunk_bytes=1 << 30)
    start = len(frame.signed_bytes) - sum(len(c) for c in frame.chunks)
    start += sum(len(c) for c in frame.chunks[:index])
    size = len(frame.chunks[index])
    garbage = os.urandom(size)
    return payload[:start] + garbage + payload[start + size :]


def _other_spec(keys: secagg.KeyHolder) -> bytes:
    update = {"w": EVIL["w"][: NUMEL - 1], "extra": torch.zeros(1, dtype=torch.float64)}
    return _encrypt(keys, "c", update)


BAD_PAYLOADS: dict[str, tuple[Callable[[secagg.KeyHolder], bytes], type[SecaggError]]] = {
    "wrong-round": (lambda k: _encrypt(k, "c", EVIL, round_id=ROUND + 1), RoundMismatchError),
    "other-key": (
        lambda k: _encrypt(secagg.KeyHolder.generate("small"), "c", EVIL),
        KeyMismatchError,
    ),
    "not-on-roster": (
        lambda k: _encrypt(k, "mallory", EVIL, roster=[*ROSTER, "mallory"]),
        UnknownClientError,
    ),
    "another-roster": (lambda k: _encrypt(k, "c", EVIL, roster=["c", "b", "a"]), FormatError),
    "truncated-tail": (lambda k: _encrypt(k, "c", EVIL)[:-100], FormatError),
    "truncated-half": (lambda k: (b := _encrypt(k, "c", EVIL))[: len(b) // 2], FormatError),
    "padded": (lambda k: _encrypt(k, "c", EVIL) + b"\0", FormatError),
    "garbage-first-chunk": (
        lambda k: _replace_chunk(_encrypt(k, "c", EVIL), wire.MAGIC_UPDATE, 0),
        FormatError,
    ),
    "garbage-later-chunk": (
        lambda k: _replace_chunk(_encrypt(k, "c", EVIL), wire.MAGIC_UPDATE, 1),
        FormatError,
    ),
    "aggregate-bytes": (
        lambda k: secagg.EncryptedAggregate.from_update(k, _encrypt(k, "c", EVIL)).to_bytes(),
        FormatError,
    ),
    "empty": (lambda k: b"", FormatError),
}


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
@pytest.mark.parametrize("position", ["first", "after-one"])
def test_rejected_payload_leaves_the_sum_unchanged(
    small_keys: secagg.KeyHolder, case: str, position: str
) -> None:
    make, expected = BAD_PAYLOADS[case]
    bad = make(small_keys)
    agg = secagg.Aggregator(small_keys.server_context(), round_id=ROUND, roster=ROSTER)
    if position == "after-one":
        agg.add(_encrypt(small_keys, "a"))
    before = agg.contributors
    with pytest.raises(expected):
        agg.add(bad)
    assert agg.contributors == before
    assert agg.rejected[-1][0] == expected.__name__
    if position == "first":
        agg.add(_encrypt(small_keys, "a"))
    agg.add(_encrypt(small_keys, "b"))
    _assert_mean_of(small_keys, agg.finalize(), ["a", "b"])


def test_duplicate_client_is_rejected_and_sum_unchanged(small_keys: secagg.KeyHolder) -> None:
    agg = secagg.Aggregator(small_keys.server_context(), round_id=ROUND, roster=ROSTER)
    agg.add(_encrypt(small_keys, "a"))
    with pytest.raises(DuplicateClientError):
        agg.add(_encrypt(small_keys, "a", EVIL))  # a fresh encryption, other values
    first = _encrypt(small_keys, "b")
    agg.add(first)
    with pytest.raises(DuplicateClientError):
        agg.add(first)  # a byte-identical replay
    assert agg.contributors == ("a", "b")
    _assert_mean_of(small_keys, agg.finalize(), ["a", "b"])


def test_other_spec_is_rejected_and_sum_unchanged(small_keys: secagg.KeyHolder) -> None:
    agg = secagg.Aggregator(small_keys.server_context(), round_id=ROUND, roster=ROSTER)
    agg.add(_encrypt(small_keys, "a"))
    with pytest.raises(SpecMismatchError):
        agg.add(_other_spec(small_keys))
    agg.add(_encrypt(small_keys, "b"))
    _assert_mean_of(small_keys, agg.finalize(), ["a", "b"])


def test_expected_spec_hash_rejects_even_the_first_update(small_keys: secagg.KeyHolder) -> None:
    _, spec = secagg.flatten_update(HONEST["a"])
    agg = secagg.Aggregator(
        small_keys.server_context(),
        round_id=ROUND,
        roster=ROSTER,
        expected_spec_hash=spec.spec_hash,
    )
    with pytest.raises(SpecMismatchError):
        agg.add(_other_spec(small_keys))
    assert agg.contributors == ()
    agg.add(_encrypt(small_keys, "a"))
    agg.add(_encrypt(small_keys, "c"))
    _assert_mean_of(small_keys, agg.finalize(), ["a", "c"])


def test_client_rejected_for_a_corrupt_chunk_can_resubmit(small_keys: secagg.KeyHolder) -> None:
    agg = secagg.Aggregator(small_keys.server_context(), round_id=ROUND, roster=ROSTER)
    agg.add(_encrypt(small_keys, "a"))
    agg.add(_encrypt(small_keys, "b"))
    corrupt = _replace_chunk(_encrypt(small_keys, "c", EVIL), wire.MAGIC_UPDATE, 1)
    with pytest.raises(FormatError):
        agg.add(corrupt)
    assert agg.contributors == ("a", "b")
    agg.add(_encrypt(small_keys, "c"))
    _assert_mean_of(small_keys, agg.finalize(), ["a", "b", "c"])


def test_finalize_needs_min_clients(small_keys: secagg.KeyHolder) -> None:
    agg = secagg.Aggregator(
        small_keys.server_context(), round_id=ROUND, roster=ROSTER, min_clients=3
    )
    with pytest.raises(NotEnoughClientsError):
        agg.finalize()
    agg.add(_encrypt(small_keys, "a"))
    agg.add(_encrypt(small_keys, "b"))
    with pytest.raises(NotEnoughClientsError, match="min_clients=3"):
        agg.finalize()
    agg.add(_encrypt(small_keys, "c"))
    enc = agg.finalize()
    assert enc.min_clients == 3
    _assert_mean_of(small_keys, enc, ROSTER)


@pytest.mark.parametrize(
    ("roster", "min_clients"),
    [([], 1), (["a", "a"], 1), (["a", "b"], 0), (["a", "b"], 3), ([f"c{i}" for i in range(65)], 1)],
)
def test_inconsistent_aggregator_options_are_refused(
    small_keys: secagg.KeyHolder, roster: list[str], min_clients: int
) -> None:
    with pytest.raises(ConfigurationError):
        secagg.Aggregator(
            small_keys.server_context(), round_id=ROUND, roster=roster, min_clients=min_clients
        )


# ---------------------------------------------------------------------------- signatures
@pytest.fixture(scope="module")
def signing() -> dict[str, Ed25519PrivateKey]:
    return {cid: Ed25519PrivateKey.generate() for cid in [*ROSTER, "spare"]}


def _signed_aggregator(
    keys: secagg.KeyHolder, signing: dict[str, Ed25519PrivateKey], round_id: int = ROUND
) -> secagg.Aggregator:
    public = {cid: signing[cid].public_key() for cid in ("a", "b")}
    raw_b = public["b"].public_bytes(Encoding.Raw, PublicFormat.Raw)
    # "c" is on the roster but has no registered key; "b" is registered as raw bytes.
    return secagg.Aggregator(
        keys.server_context(),
        round_id=round_id,
        roster=ROSTER,
        client_keys={"a": public["a"], "b": raw_b},
    )


def _strip_signature(payload: bytes) -> bytes:
    body = payload[: -wire.SIGNATURE_BYTES]
    magic, version, header_len, body_len, _ = struct.unpack_from(">4sHIQH", body)
    return struct.pack(">4sHIQH", magic, version, header_len, body_len, 0) + body[20:]


def _flip_fingerprint_char(payload: bytes, fingerprint: str) -> bytes:
    fp = fingerprint.encode()
    assert payload.count(fp) == 1
    forged = (b"1" if fp[:1] == b"0" else b"0") + fp[1:]
    return payload.replace(fp, forged)


def test_signatures_are_required_and_checked(
    small_keys: secagg.KeyHolder, signing: dict[str, Ed25519PrivateKey]
) -> None:
    agg = _signed_aggregator(small_keys, signing)
    signed_a = _encrypt(small_keys, "a", signing_key=signing["a"])
    cases: dict[str, tuple[bytes, tuple[type[SecaggError], ...]]] = {
        "unsigned": (_encrypt(small_keys, "a", EVIL), (SignatureError,)),
        "stripped": (_strip_signature(signed_a), (SignatureError,)),
        "signed-by-b-as-a": (
            _encrypt(small_keys, "a", EVIL, signing_key=signing["b"]),
            (SignatureError,),
        ),
        "unregistered-key": (
            _encrypt(small_keys, "a", EVIL, signing_key=signing["spare"]),
            (SignatureError,),
        ),
        "no-key-for-client": (
            _encrypt(small_keys, "c", EVIL, signing_key=signing["c"]),
            (SignatureError,),
        ),
        "header-fingerprint-edited": (
            _flip_fingerprint_char(signed_a, small_keys.fingerprint),
            (SignatureError,),
        ),
        "ciphertext-byte-flipped": (
            signed_a[:-2000] + bytes([signed_a[-2000] ^ 1]) + signed_a[-1999:],
            (SignatureError,),
        ),
        "signature-byte-flipped": (signed_a[:-1] + bytes([signed_a[-1] ^ 0x80]), (SignatureError,)),
    }
    header_start = 20
    for offset in (header_start, header_start + 5, header_start + 40, header_start + 300):
        tampered = bytearray(signed_a)
        tampered[offset] ^= 0x04
        cases[f"header-byte-{offset}"] = (bytes(tampered), (SignatureError, FormatError))
    for name, (payload, expected) in cases.items():
        with pytest.raises(PayloadError) as info:
            agg.add(payload)
        assert isinstance(info.value, expected), f"{name}: {info.value!r}"
        assert agg.contributors == (), name
    assert agg.add(signed_a) == "a"
    assert agg.add(_encrypt(small_keys, "b", signing_key=signing["b"])) == "b"
    _assert_mean_of(small_keys, agg.finalize(), ["a", "b"])


def test_signed_payload_replayed_into_another_round_is_rejected(
    small_keys: secagg.KeyHolder, signing: dict[str, Ed25519PrivateKey]
) -> None:
    round_one = _encrypt(small_keys, "a", EVIL, round_id=1, signing_key=signing["a"])
    agg = _signed_aggregator(small_keys, signing, round_id=2)
    with pytest.raises(RoundMismatchError):
        agg.add(round_one)
    agg.add(_encrypt(small_keys, "a", round_id=2, signing_key=signing["a"]))
    agg.add(_encrypt(small_keys, "b", round_id=2, signing_key=signing["b"]))
    release = small_keys.release(agg.finalize())
    assert release.round_id == 2
    assert release.contributors == ("a", "b")


def test_signed_payloads_are_accepted_without_client_keys(
    small_keys: secagg.KeyHolder, signing: dict[str, Ed25519PrivateKey]
) -> None:
    agg = secagg.Aggregator(small_keys.server_context(), round_id=ROUND, roster=ROSTER)
    agg.add(_encrypt(small_keys, "a", signing_key=signing["a"]))
    agg.add(_encrypt(small_keys, "b"))
    _assert_mean_of(small_keys, agg.finalize(), ["a", "b"])
