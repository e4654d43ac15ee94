"""The wire frame and header parsing: hostile but well-framed headers raise typed errors."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable
from typing import Any

import pytest
import torch

import secagg
from secagg import wire
from secagg.errors import ContextError, FormatError, SecaggError
from secagg.spec import UpdateSpec
from secagg.update import roster_digest

PREFIX = struct.Struct(">4sHIQH")
ROSTER = ["a", "b"]


def _reframe(data: bytes, magic: bytes, header_text: Callable[[str], str]) -> bytes:
    """Rewrite a frame's header text and fix up the prefix lengths."""
    frame = wire.unpack_frame(data, magic, max_chunk_bytes=1 << 30)
    header = header_text(json.dumps(frame.header, separators=(",", ":"), sort_keys=True))
    body = b"".join(frame.chunks)
    encoded = header.encode()
    return PREFIX.pack(magic, 1, len(encoded), len(body), 0) + encoded + body


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
    data = PREFIX.pack(wire.MAGIC_UPDATE, 1, len(header), 0, 0) + header
    with pytest.raises(FormatError):
        wire.unpack_frame(data, wire.MAGIC_UPDATE)


def test_oversized_header_length_is_refused_before_reading() -> None:
    data = PREFIX.pack(wire.MAGIC_UPDATE, 1, wire.MAX_HEADER_BYTES + 1, 0, 0)
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
            "key",
            lambda h: h.replace('"decryption_budget":65536', f'"decryption_budget":{HUGE_INT}'),
        ),
        ("aggregate", lambda h: h.replace('"min_clients":1', f'"min_clients":{HUGE_INT}')),
        ("key", lambda h: h.replace('"min_clients":2', f'"min_clients":{HUGE_INT}')),
        (
            "key",
            lambda h: h.replace('"last_released_round":-1', f'"last_released_round":{HUGE_INT}'),
        ),
    ],
    ids=[
        "update-round",
        "update-pad",
        "server-pad",
        "key-budget",
        "aggregate-min",
        "key-min-clients",
        "key-last-round",
    ],
)
def test_header_number_too_long_for_python_is_a_typed_error(
    small_keys: secagg.KeyHolder, kind: str, edit: Callable[[str], str]
) -> None:
    _check_typed_refusal(small_keys, kind, edit)


@pytest.mark.parametrize(
    ("kind", "edit"),
    [
        ("server", lambda h: h.replace('"coeff_bits":[60,49]', '"coeff_bits":[Infinity,49]')),
        ("server", lambda h: h.replace('"coeff_bits":[60,49]', '"coeff_bits":[NaN,49]')),
        ("server", lambda h: h.replace('"coeff_bits":[60,49]', '"coeff_bits":[1e400,49]')),
        ("key", lambda h: h.replace('"coeff_bits":[60,49]', '"coeff_bits":[-Infinity,49]')),
        ("update", lambda h: h.replace('"round_id":1', '"round_id":Infinity')),
        ("aggregate", lambda h: h.replace('"round_id":1', '"round_id":NaN')),
        ("key", lambda h: h.replace('"min_clients":2', '"min_clients":Infinity')),
        ("key", lambda h: h.replace('"last_released_round":-1', '"last_released_round":NaN')),
    ],
    ids=[
        "server-inf",
        "server-nan",
        "server-1e400",
        "key-neg-inf",
        "update-inf",
        "aggregate-nan",
        "key-min-clients-inf",
        "key-last-round-nan",
    ],
)
def test_non_finite_json_numbers_in_headers_are_typed_errors(
    small_keys: secagg.KeyHolder, kind: str, edit: Callable[[str], str]
) -> None:
    _check_typed_refusal(small_keys, kind, edit)


def _check_typed_refusal(keys: secagg.KeyHolder, kind: str, edit: Callable[[str], str]) -> None:
    update = secagg.encrypt_update(
        keys, {"w": torch.zeros(10)}, round_id=1, client_id="a", roster=ROSTER
    )
    original, magic, load = {
        "update": (update, wire.MAGIC_UPDATE, secagg.EncryptedUpdate.from_bytes),
        "aggregate": (
            secagg.EncryptedAggregate.from_update(keys, update).to_bytes(),
            wire.MAGIC_AGGREGATE,
            lambda d: secagg.EncryptedAggregate.from_bytes(d, keys),
        ),
        "server": (
            keys.server_context(),
            wire.MAGIC_SERVER_CONTEXT,
            secagg.ServerContext.from_bytes,
        ),
        "key": (keys.to_bytes(), wire.MAGIC_KEY, secagg.KeyHolder.from_bytes),
    }[kind]
    forged = _reframe(original, magic, edit)
    assert forged != _reframe(original, magic, lambda h: h), "the edit did not apply"
    with pytest.raises(SecaggError):
        load(forged)
    if kind == "update":
        agg = secagg.Aggregator(keys.server_context(), round_id=1, roster=ROSTER)
        with pytest.raises(SecaggError):
            agg.add(forged)
    if kind in ("server", "key"):
        with pytest.raises(ContextError):
            load(forged)


def _update_with_spec(keys: secagg.KeyHolder, spec_json: list[list[Any]]) -> bytes:
    honest = secagg.encrypt_update(
        keys, {"w": torch.zeros(10)}, round_id=1, client_id="a", roster=ROSTER
    )
    frame = wire.unpack_frame(honest, wire.MAGIC_UPDATE)
    # The hash UpdateSpec.spec_hash computes, without going through UpdateSpec.
    canonical = json.dumps(spec_json, separators=(",", ":"), sort_keys=True)
    header = {k: v for k, v in frame.header.items() if k != "chunk_sizes"}
    header.update(spec=spec_json, spec_hash=hashlib.sha256(canonical.encode()).hexdigest())
    assert header["roster_digest"] == roster_digest(ROSTER)
    return wire.pack_frame(wire.MAGIC_UPDATE, header, frame.chunks)


@pytest.mark.parametrize(
    "shape",
    [
        [2**30, 2**30, 16],  # 2^64 values: wraps to 0 in int64
        [2**31 - 1, 2**31 - 1, 2**31 - 1],  # wraps to a positive, wrong count
        [2**21, 2**21, 2**21 + 1],  # wraps to 2^63 + ...: negative
    ],
    ids=["wraps-to-zero", "wraps-positive", "wraps-negative"],
)
def test_spec_with_an_impossible_number_of_values_is_refused(
    small_keys: secagg.KeyHolder, shape: list[int]
) -> None:
    # A layout whose value count overflows int64 cannot match any real update: the
    # aggregator must refuse it (FormatError/SpecMismatchError), not fold it in and
    # leave the key holder to crash with a non-secagg error at release.
    payload = _update_with_spec(small_keys, [["w", shape, "float32"]])
    agg = secagg.Aggregator(small_keys.server_context(), round_id=1, roster=ROSTER, min_clients=1)
    with pytest.raises(SecaggError):
        agg.add(payload)
    try:
        spec = UpdateSpec.from_json([["w", shape, "float32"]])
    except FormatError:
        return
    assert spec.numel == math.prod(shape)  # if accepted, the count must be right


def test_payload_with_a_re_hashed_plausible_spec_is_accepted() -> None:
    # Guards the helper above: a forged but consistent layout of the right size passes,
    # so the refusals of impossible layouts are not hash mismatches. (A 1-client sum: the
    # key holder's policy must allow it.)
    small_keys = secagg.KeyHolder.generate("small", min_clients=1)
    payload = _update_with_spec(small_keys, [["v", [2, 5], "float64"]])
    agg = secagg.Aggregator(small_keys.server_context(), round_id=1, roster=ROSTER, min_clients=1)
    assert agg.add(payload) == "a"
    release = small_keys.release(agg.finalize())
    assert release.mean["v"].shape == (2, 5)
    assert release.mean["v"].dtype == torch.float64
