"""Keys: the server never holds a secret key and cannot decrypt; key files are safe."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal
import tenseal.sealapi as sealapi
import torch

import secagg
from secagg import wire
from secagg._slots import chunk_tag, round_tag
from secagg.context import preset_to_header
from secagg.errors import ContextError, SecretKeyExposureError

ROSTER = ["a", "b"]


def _updates() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    return [{"w": torch.randn(3000, generator=gen, dtype=torch.float64)} for _ in ROSTER]


def _aggregate(keys: secagg.KeyHolder, server: bytes | secagg.ServerContext) -> Any:
    agg = secagg.Aggregator(server, round_id=3, roster=ROSTER, min_clients=2)
    for cid, upd in zip(ROSTER, _updates(), strict=True):
        agg.add(secagg.encrypt_update(keys, upd, round_id=3, client_id=cid, roster=ROSTER))
    return agg.finalize()


def _expected_slots(keys: secagg.KeyHolder) -> np.ndarray:
    """The plaintext layout of the aggregate's first chunk (roster, weight, tags, values)."""
    preset = keys.preset
    k = len(ROSTER)
    row = np.zeros(preset.slots)
    row[:k] = 1.0
    row[preset.roster_slots] = float(k)  # weights 1/1 each
    row[preset.roster_slots + 1] = k * round_tag(3)
    row[preset.roster_slots + 2] = k * chunk_tag(0)
    assert preset.header_slots == preset.roster_slots + 3
    values = sum(u["w"].numpy() for u in _updates())
    row[preset.header_slots : preset.header_slots + values.size] = values
    return row


def _decode(context: Any, decryptor: Any, ciphertext: Any, slots: int) -> np.ndarray:
    plaintext = sealapi.Plaintext()
    decryptor.decrypt(ciphertext, plaintext)
    decoded = np.asarray(sealapi.CKKSEncoder(context).decode_complex(plaintext))
    out = np.empty(slots)
    out[0::2] = decoded.real
    out[1::2] = decoded.imag
    return out


def _within_release_tolerance(release: secagg.ReleasedAggregate, exact: np.ndarray) -> bool:
    """7-sigma flooding band (see test_core_mean) plus a generous CKKS allowance."""
    tol = 7 * release.mean_error_std * np.sqrt(1 + exact**2) + 1e-9 * (1 + np.abs(exact))
    return bool((np.abs(release.mean["w"].numpy() - exact) <= tol).all())


def _load_secret_key(context: Any, data: bytes, tmp_path: Path) -> Any:
    path = tmp_path / "candidate.bin"
    path.write_bytes(data)
    secret_key = sealapi.SecretKey()
    secret_key.load(context, str(path))
    return secret_key


def test_server_context_bytes_hold_no_secret_key(keys: secagg.KeyHolder) -> None:
    server_bytes = keys.server_context()
    secret = keys.session.secret_key_bytes()
    assert len(secret) > 1000
    assert secret not in server_bytes
    assert secret[64:128] not in server_bytes  # not even a slice of the key body
    # A ternary secret of N coefficients carries N·log2(3) bits of entropy (1.6 KiB for
    # N = 8192): no encoding of it, compressed or not, fits in a context this small.
    assert len(server_bytes) < 1024
    assert secret in keys.to_bytes()  # the secret context, by contrast, does hold it
    server = secagg.ServerContext.from_bytes(server_bytes)
    assert server.can_decrypt() is False
    assert server.fingerprint == keys.fingerprint
    assert server.preset == keys.preset


def test_secret_context_is_refused_as_a_server_context(keys: secagg.KeyHolder) -> None:
    with pytest.raises(SecretKeyExposureError):
        secagg.ServerContext.from_bytes(keys.to_bytes())
    with pytest.raises(SecretKeyExposureError):
        secagg.Aggregator(keys.to_bytes(), round_id=1, roster=ROSTER)


def test_tenseal_context_with_secret_key_is_refused_by_the_aggregator() -> None:
    ctx = tenseal.context(tenseal.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    with_secret = ctx.serialize(save_secret_key=True)
    with pytest.raises(SecretKeyExposureError):
        secagg.Aggregator(with_secret, round_id=1, roster=ROSTER)
    with pytest.raises(SecretKeyExposureError):
        secagg.ServerContext.from_bytes(with_secret)
    # A public TenSEAL context is not a secagg server context either, but no exposure.
    public = ctx.serialize(save_secret_key=False)
    with pytest.raises(ContextError) as info:
        secagg.ServerContext.from_bytes(public)
    assert not isinstance(info.value, SecretKeyExposureError)


def test_no_secret_key_loads_from_anything_the_server_holds(
    keys: secagg.KeyHolder, tmp_path: Path
) -> None:
    server_bytes = keys.server_context()
    server = secagg.ServerContext.from_bytes(server_bytes)
    enc = _aggregate(keys, server_bytes)
    payload = secagg.encrypt_update(keys, _updates()[0], round_id=3, client_id="a", roster=ROSTER)
    candidates = {
        "server context": server_bytes,
        **{
            f"server context chunk {i}": c
            for i, c in enumerate(wire.unpack_frame(server_bytes, wire.MAGIC_SERVER_CONTEXT).chunks)
        },
        "update payload": payload,
        **{
            f"update chunk {i}": c
            for i, c in enumerate(wire.unpack_frame(payload, wire.MAGIC_UPDATE).chunks)
        },
        **{
            f"aggregate chunk {i}": c
            for i, c in enumerate(wire.unpack_frame(enc.to_bytes(), wire.MAGIC_AGGREGATE).chunks)
        },
    }
    loaded = []
    for name, data in candidates.items():
        try:
            _load_secret_key(server.seal_context, data, tmp_path)
        except (RuntimeError, ValueError):
            continue
        loaded.append(name)
    assert len(candidates) == 5
    assert loaded == []


def test_a_random_key_on_the_server_context_decrypts_to_garbage(keys: secagg.KeyHolder) -> None:
    server = secagg.ServerContext.from_bytes(keys.server_context())
    enc = _aggregate(keys, server)
    preset = keys.preset
    expected = _expected_slots(keys)
    tolerance = 7 * keys.flooding_std(2) / 2 + preset.noise_bound(2)

    forged = sealapi.KeyGenerator(server.seal_context).secret_key()
    garbage = _decode(
        server.seal_context,
        sealapi.Decryptor(server.seal_context, forged),
        enc.ciphertexts[0],
        preset.slots,
    )
    assert float(np.abs(garbage - expected).mean()) > 1e3 * tolerance

    real = keys.session.decrypt(enc.ciphertexts[0])
    assert float(np.abs(real - expected).max()) <= preset.noise_bound(2)

    exact = sum(u["w"].numpy() for u in _updates()) / 2
    assert _within_release_tolerance(keys.release(enc), exact)


def test_key_file_is_private_and_round_trips(tmp_path: Path) -> None:
    holder = secagg.KeyHolder.generate("small")
    path = tmp_path / "keys" / "holder.key"
    path.parent.mkdir()
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    old_umask = os.umask(0)
    try:
        holder.save(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert not [p for p in path.parent.iterdir() if p != path]  # no temp file left

    loaded = secagg.KeyHolder.load(path)
    assert loaded.fingerprint == holder.fingerprint
    assert loaded.preset == holder.preset
    assert loaded.decryptions_used == holder.decryptions_used
    assert loaded.session.secret_key_bytes() == holder.session.secret_key_bytes()
    # An aggregate encrypted under the original decrypts with the loaded copy.
    enc = _aggregate(holder, holder.server_context())
    exact = sum(u["w"].numpy() for u in _updates()) / 2
    release = loaded.release(enc)
    assert _within_release_tolerance(release, exact)
    # ... and KeyHolder.from_bytes(to_bytes()) is the same key.
    assert secagg.KeyHolder.from_bytes(holder.to_bytes()).fingerprint == holder.fingerprint


def test_fingerprints_differ_across_generated_keys() -> None:
    prints = {secagg.KeyHolder.generate("small").fingerprint for _ in range(4)}
    assert len(prints) == 4
    assert all(len(p) == 64 and int(p, 16) >= 0 for p in prints)


def _secret_chunk_span(data: bytes) -> tuple[int, int]:
    frame = wire.unpack_frame(data, wire.MAGIC_KEY, max_chunk_bytes=1 << 24)
    end = len(frame.signed_bytes)
    return end - len(frame.chunks[1]), end


@pytest.mark.parametrize(
    "where", [0.0, 0.001, 0.5, 0.999], ids=["seal-magic", "head", "mid", "end"]
)
def test_tampered_secret_key_chunk_is_refused(where: float, tmp_path: Path) -> None:
    holder = secagg.KeyHolder.generate("small")
    path = holder.save(tmp_path / "k.key")
    data = bytearray(path.read_bytes())
    start, end = _secret_chunk_span(bytes(data))
    data[start + int(where * (end - start - 1))] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(ContextError):
        secagg.KeyHolder.load(path)


def test_key_file_whose_fingerprint_was_edited_is_refused() -> None:
    holder = secagg.KeyHolder.generate("small")
    data = holder.to_bytes()
    fp = holder.fingerprint.encode()
    forged = fp[:-1] + (b"0" if fp[-1:] != b"0" else b"1")
    assert data.count(fp) == 1
    with pytest.raises(ContextError):
        secagg.KeyHolder.from_bytes(data.replace(fp, forged))


def _key_file_with_header(data: bytes, **changes: Any) -> bytes:
    frame = wire.unpack_frame(data, wire.MAGIC_KEY, max_chunk_bytes=1 << 24)
    header = {k: v for k, v in frame.header.items() if k != "chunk_sizes"}
    header.update(changes)
    return wire.pack_frame(wire.MAGIC_KEY, header, frame.chunks)


@pytest.mark.parametrize(
    ("generated", "claimed"),
    [
        ("small", secagg.PRESETS["default"]),
        ("default", secagg.PRESETS["small"]),
        ("default", secagg.PRESETS["large"]),
        ("large", secagg.PRESETS["default"]),
        ("small", secagg.Preset("custom", 4096, (60, 40), 30, 64)),  # same N, other modulus
    ],
    ids=["small-as-default", "default-as-small", "default-as-large", "large-as-default", "custom"],
)
def test_key_file_whose_preset_disagrees_with_its_parameters_is_refused(
    generated: str, claimed: secagg.Preset
) -> None:
    # The fingerprint covers the SEAL parameters and the key, not the preset header: a
    # file relabelled with another (valid, known) preset keeps a matching fingerprint,
    # so only the parameter check can refuse it.
    holder = secagg.KeyHolder.generate(generated)
    forged = _key_file_with_header(holder.to_bytes(), preset=preset_to_header(claimed))
    assert secagg.KeyHolder.from_bytes(_key_file_with_header(holder.to_bytes())).fingerprint == (
        holder.fingerprint
    )
    with pytest.raises(ContextError, match=r"do not match|differ from"):
        secagg.KeyHolder.from_bytes(forged)


def test_server_context_is_refused_as_a_key_file(keys: secagg.KeyHolder, tmp_path: Path) -> None:
    with pytest.raises(ContextError):
        secagg.KeyHolder.from_bytes(keys.server_context())
    with pytest.raises(ContextError):
        secagg.KeyHolder.load(tmp_path / "missing.key")


def test_repr_does_not_reveal_the_key(keys: secagg.KeyHolder) -> None:
    text = repr(keys)
    assert keys.fingerprint[:16] in text
    assert keys.fingerprint not in text
