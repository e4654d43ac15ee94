"""The wire frame and header parsing: hostile but well-framed headers raise typed errors."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import secagg
from secagg.crypto import wire
from secagg.crypto._validate import roster_digest
from secagg.crypto.registry import SigningKey
from secagg.crypto.spec import UpdateSpec
from secagg.errors import ContextError, FormatError, IntegrityError, SecaggError

PREFIX = struct.Struct(">4sHIQH")
ROSTER = ["a", "b"]


def _reframe(
    data: bytes,
    magic: bytes,
    header_text: Callable[[str], str],
    signing_key: SigningKey | None = None,
) -> bytes:
    """Rewrite a frame's header text, fix up the prefix lengths, optionally re-sign it."""
    frame = wire.unpack_frame(data, magic, max_chunk_bytes=1 << 30)
    header = header_text(json.dumps(frame.header, separators=(",", ":"), sort_keys=True))
    body = b"".join(frame.chunks)
    encoded = header.encode()
    sig_len = 0 if signing_key is None else wire.SIGNATURE_BYTES
    signed = PREFIX.pack(magic, wire.format_version(magic), len(encoded), len(body), sig_len)
    signed += encoded + body
    return signed if signing_key is None else signed + signing_key.sign(signed)


def test_pack_and_unpack_are_inverse() -> None:
    chunks = [b"abc", b"\x00" * 10, b"z"]
    data = wire.pack_frame(wire.MAGIC_UPDATE, {"x": [1, "y"]}, chunks)
    frame = wire.unpack_frame(data, wire.MAGIC_UPDATE)
    assert frame.chunks == tuple(chunks)
    assert frame.header == {"x": [1, "y"], "chunk_sizes": [3, 10, 1]}
    assert frame.signature == b""
    assert frame.signed_bytes == data


@pytest.mark.parametrize(
    "sizes",
    [[3, 10], [3, 10, 1, 0], [14, 0], [-1, 14, 1], [3.0, 10, 1], ["3", 10, 1], [True, 12, 1], 14],
    ids=str,
)
def test_inconsistent_chunk_sizes_are_refused(sizes: Any) -> None:
    data = wire.pack_frame(wire.MAGIC_UPDATE, {}, [b"abc", b"\x00" * 10, b"z"])
    forged = _reframe(
        data,
        wire.MAGIC_UPDATE,
        lambda h: h.replace('"chunk_sizes":[3,10,1]', json.dumps({"chunk_sizes": sizes})[1:-1]),
    )
    with pytest.raises(FormatError):
        wire.unpack_frame(forged, wire.MAGIC_UPDATE)


@pytest.mark.parametrize("header", [b"[1,2]", b"\xff\xfe", b"{", b"[" * 100_000, b"null"])
def test_unreadable_headers_are_refused(header: bytes) -> None:
    data = (
        PREFIX.pack(wire.MAGIC_UPDATE, wire.format_version(wire.MAGIC_UPDATE), len(header), 0, 0)
        + header
    )
    with pytest.raises(FormatError):
        wire.unpack_frame(data, wire.MAGIC_UPDATE)


def test_oversized_header_length_is_refused_before_reading() -> None:
    data = PREFIX.pack(
        wire.MAGIC_UPDATE, wire.format_version(wire.MAGIC_UPDATE), wire.MAX_HEADER_BYTES + 1, 0, 0
    )
    with pytest.raises(FormatError, match="header length"):
        wire.unpack_frame(data, wire.MAGIC_UPDATE)


# A JSON number with more digits than Python's int-conversion limit (4300) makes
# json.loads raise a plain ValueError, not json.JSONDecodeError.
HUGE_INT = "9" * 5000


@pytest.mark.parametrize(
    ("kind", "edit"),
    [
        ("update", lambda h: h.replace('"round_id":1', f'"round_id":{HUGE_INT}')),
        ("update", lambda h: h.replace('{"chunk_sizes"', f'{{"pad":{HUGE_INT},"chunk_sizes"')),
        ("server", lambda h: h.replace('"fingerprint"', f'"pad":-{HUGE_INT},"fingerprint"')),
        (
            "holder",
            lambda h: h.replace('"decryption_budget":65536', f'"decryption_budget":{HUGE_INT}'),
        ),
        ("aggregate", lambda h: h.replace('"min_clients":1', f'"min_clients":{HUGE_INT}')),
        ("aggregate", lambda h: h.replace('"tag":[', f'"tag":[{HUGE_INT},')),
        ("holder", lambda h: h.replace('"min_clients":2', f'"min_clients":{HUGE_INT}')),
        (
            "holder",
            lambda h: h.replace('"last_released_round":-1', f'"last_released_round":{HUGE_INT}'),
        ),
        ("key", lambda h: h.replace('"fingerprint"', f'"pad":{HUGE_INT},"fingerprint"')),
        ("registry", lambda h: h.replace('"clients":[', f'"clients":[{HUGE_INT},')),
        ("signing", lambda h: h.replace('"client_id":"a"', f'"client_id":{HUGE_INT}')),
    ],
    ids=[
        "update-round",
        "update-pad",
        "server-pad",
        "holder-budget",
        "aggregate-min",
        "aggregate-tag",
        "holder-min-clients",
        "holder-last-round",
        "key-pad",
        "registry-client",
        "signing-client-id",
    ],
)
def test_header_number_too_long_for_python_is_a_typed_error(
    small_federation: secagg.FederationKeys, kind: str, edit: Callable[[str], str]
) -> None:
    _check_typed_refusal(small_federation, kind, edit)


@pytest.mark.parametrize(
    ("kind", "edit"),
    [
        ("server", lambda h: h.replace('"coeff_bits":[60,49]', '"coeff_bits":[Infinity,49]')),
        ("server", lambda h: h.replace('"coeff_bits":[60,49]', '"coeff_bits":[NaN,49]')),
        ("server", lambda h: h.replace('"coeff_bits":[60,49]', '"coeff_bits":[1e400,49]')),
        ("key", lambda h: h.replace('"coeff_bits":[60,49]', '"coeff_bits":[-Infinity,49]')),
        ("update", lambda h: h.replace('"round_id":1', '"round_id":Infinity')),
        ("aggregate", lambda h: h.replace('"round_id":1', '"round_id":NaN')),
        ("holder", lambda h: h.replace('"min_clients":2', '"min_clients":Infinity')),
        ("holder", lambda h: h.replace('"last_released_round":-1', '"last_released_round":NaN')),
        ("update", lambda h: h.replace('"tag":[', '"tag":[NaN,')),
        ("aggregate", lambda h: h.replace('"tag":[', '"tag":[1e400,')),
    ],
    ids=[
        "server-inf",
        "server-nan",
        "server-1e400",
        "key-neg-inf",
        "update-inf",
        "aggregate-nan",
        "holder-min-clients-inf",
        "holder-last-round-nan",
        "update-tag-nan",
        "aggregate-tag-1e400",
    ],
)
def test_non_finite_json_numbers_in_headers_are_typed_errors(
    small_federation: secagg.FederationKeys, kind: str, edit: Callable[[str], str]
) -> None:
    _check_typed_refusal(small_federation, kind, edit)


def _check_typed_refusal(fed: secagg.FederationKeys, kind: str, edit: Callable[[str], str]) -> None:
    update = secagg.encrypt_update(
        fed.material,
        {"w": np.zeros(10)},
        signing_key=fed.signing_keys["a"],
        round_id=1,
        roster=ROSTER,
    )
    agg = secagg.Aggregator(
        fed.server_context(), registry=fed.registry, round_id=1, roster=ROSTER, min_clients=1
    )
    agg.add(update)
    material = fed.material
    original, magic, load = {
        "update": (update, wire.MAGIC_UPDATE, secagg.EncryptedUpdate.from_bytes),
        "aggregate": (
            agg.finalize().to_bytes(),
            wire.MAGIC_AGGREGATE,
            lambda d: secagg.EncryptedAggregate.from_bytes(d, fed.server_context()),
        ),
        "server": (
            material.server_context(),
            wire.MAGIC_SERVER_CONTEXT,
            secagg.ServerContext.from_bytes,
        ),
        "key": (material.to_bytes(), wire.MAGIC_KEY, secagg.KeyMaterial.from_bytes),
        "holder": (
            fed.key_holder().to_bytes(),
            wire.MAGIC_KEY_HOLDER,
            lambda d: secagg.KeyHolder.from_bytes(material, d),
        ),
        "registry": (
            fed.registry.to_bytes(),
            wire.MAGIC_REGISTRY,
            secagg.ClientRegistry.from_bytes,
        ),
        "signing": (
            fed.signing_keys["a"].to_bytes(),
            wire.MAGIC_SIGNING_KEY,
            SigningKey.from_bytes,
        ),
    }[kind]
    # Updates are re-signed by their client, so the aggregator parses past the signature.
    key = fed.signing_keys["a"] if kind == "update" else None
    forged = _reframe(original, magic, edit, key)
    assert forged != _reframe(original, magic, lambda h: h, key), "the edit did not apply"
    with pytest.raises(SecaggError):
        load(forged)
    if kind == "update":
        agg = secagg.Aggregator(
            fed.server_context(), registry=fed.registry, round_id=1, roster=ROSTER
        )
        with pytest.raises(SecaggError):
            agg.add(forged)
        assert agg.contributors == ()
    if kind == "aggregate":
        with pytest.raises(SecaggError):
            fed.key_holder(min_clients=1).release(forged)
    if kind in ("server", "key", "holder", "registry", "signing"):
        with pytest.raises(ContextError):
            load(forged)


def _update_with_spec(fed: secagg.FederationKeys, spec_json: list[list[Any]]) -> bytes:
    """Client a's payload with another layout in its header, re-signed by a."""
    honest = secagg.encrypt_update(
        fed.material,
        {"w": np.zeros(10)},
        signing_key=fed.signing_keys["a"],
        round_id=1,
        roster=ROSTER,
    )
    frame = wire.unpack_frame(honest, wire.MAGIC_UPDATE)
    # The hash UpdateSpec.spec_hash computes, without going through UpdateSpec.
    canonical = json.dumps(spec_json, separators=(",", ":"), sort_keys=True)
    header = {k: v for k, v in frame.header.items() if k != "chunk_sizes"}
    header.update(spec=spec_json, spec_hash=hashlib.sha256(canonical.encode()).hexdigest())
    assert header["roster_digest"] == roster_digest(ROSTER)
    unsigned = wire.pack_frame(wire.MAGIC_UPDATE, header, frame.chunks, signed=True)
    return unsigned + fed.signing_keys["a"].sign(unsigned)


@pytest.mark.parametrize(
    "shape",
    [
        [2**30, 2**30, 16],  # 2^64 values: wraps to 0 in int64
        [2**31 - 1, 2**31 - 1, 2**31 - 1],  # wraps to a positive, wrong count
        [2**21, 2**21, 2**21 + 1],  # wraps to 2^63 + ...: negative
        [2**17, 2**17],  # 2^34 values: more than one update may hold
    ],
    ids=["wraps-to-zero", "wraps-positive", "wraps-negative", "too-many"],
)
def test_spec_with_an_impossible_number_of_values_is_refused(
    small_federation: secagg.FederationKeys, shape: list[int]
) -> None:
    # A layout whose value count overflows int64 cannot match any real update: the
    # aggregator must refuse it (FormatError/SpecMismatchError), not fold it in and
    # leave the key holder to crash with a non-secagg error at release.
    fed = small_federation
    payload = _update_with_spec(fed, [["w", shape, "float32"]])
    agg = secagg.Aggregator(
        fed.server_context(), registry=fed.registry, round_id=1, roster=ROSTER, min_clients=1
    )
    with pytest.raises(SecaggError):
        agg.add(payload)
    assert agg.contributors == ()
    try:
        spec = UpdateSpec.from_json([["w", shape, "float32"]])
    except FormatError:
        return
    assert spec.numel == math.prod(shape)  # if accepted, the count must be right


def test_re_hashed_spec_passes_the_aggregator_but_not_the_key_holder(
    small_federation: secagg.FederationKeys,
) -> None:
    # A client may sign any layout of the right size; the aggregator (which checks
    # structure only) folds it in, but the MAC binds the spec the client encrypted under,
    # so the key holder refuses the relabelled sum without decrypting it.
    fed = small_federation
    payload = _update_with_spec(fed, [["v", [2, 5], "float64"]])
    agg = secagg.Aggregator(
        fed.server_context(), registry=fed.registry, round_id=1, roster=ROSTER, min_clients=1
    )
    assert agg.add(payload) == "a"
    holder = fed.key_holder(min_clients=1)
    with pytest.raises(IntegrityError):
        holder.release(agg.finalize())
    assert (holder.decryptions_used, holder.refused) == (0, 1)
