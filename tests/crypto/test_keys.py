"""Keys: the server holds no key and cannot decrypt; key files are private and bound."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal
import tenseal.sealapi as sealapi

import secagg
from secagg.crypto import wire
from secagg.crypto._seal import SEED_BYTES, SealSession
from secagg.crypto.context import preset_to_header
from secagg.crypto.federation_keys import (
    REGISTRY_FILE,
    SECRET_CONTEXT_FILE,
    SERVER_CONTEXT_FILE,
    signing_key_path,
)
from secagg.crypto.layout import FieldLayout
from secagg.crypto.registry import SigningKey
from secagg.errors import (
    ConfigurationError,
    ContextError,
    IntegrityError,
    KeyMismatchError,
    SecretKeyExposureError,
)

ROSTER = ["a", "b", "c"]
NUMEL = 3000


def _updates() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {cid: rng.uniform(-0.5, 0.5, NUMEL) for cid in ROSTER}


def _payload(fed: secagg.FederationKeys, cid: str, round_id: int = 3) -> bytes:
    return secagg.encrypt_update(
        fed.material,
        {"w": _updates()[cid]},
        signing_key=fed.signing_keys[cid],
        round_id=round_id,
        roster=ROSTER,
    )


def _aggregate(
    fed: secagg.FederationKeys, server: bytes | secagg.ServerContext | None = None
) -> secagg.EncryptedAggregate:
    agg = secagg.Aggregator(
        fed.server_context() if server is None else server,
        registry=fed.registry,
        round_id=3,
        roster=ROSTER,
    )
    for cid in ("a", "b"):
        agg.add(_payload(fed, cid))
    return agg.finalize()


def _within_release_tolerance(release: secagg.ReleasedAggregate, exact: np.ndarray) -> bool:
    """7-sigma flooding band (see tests/crypto/test_mean.py) plus a generous CKKS allowance."""
    tol = 7 * release.mean_error_std * np.sqrt(1 + exact**2) + 1e-9 * (1 + np.abs(exact))
    return bool((np.abs(release.mean["w"] - exact) <= tol).all())


def _secrets(fed: secagg.FederationKeys) -> dict[str, bytes]:
    material = fed.material
    return {
        "secret key": material.session.secret_key_bytes(),
        "MAC key": material.mac_key,
        **{f"signing key {cid}": key.to_bytes()[-32:] for cid, key in fed.signing_keys.items()},
    }


# ---------------------------------------------------------------------------- the server's view
def test_server_context_holds_no_secret_key_and_no_mac_key(
    federation: secagg.FederationKeys,
) -> None:
    server_bytes = federation.material.server_context()
    secrets = _secrets(federation)
    assert len(secrets["secret key"]) > 1000
    for name, secret in secrets.items():
        assert secret not in server_bytes, name
    assert secrets["secret key"][64:128] not in server_bytes  # not even a slice of it
    # A ternary secret of N coefficients carries N·log2(3) bits (1.6 KiB for N = 8192) and
    # the MAC key 256: no encoding of them fits in a context this small.
    assert len(server_bytes) < 1024
    assert secrets["secret key"] in federation.material.to_bytes()  # the secret context does
    assert secrets["MAC key"] in federation.material.to_bytes()
    server = secagg.ServerContext.from_bytes(server_bytes)
    assert server.can_decrypt() is False
    assert (server.fingerprint, server.preset) == (
        federation.material.fingerprint,
        federation.material.preset,
    )
    assert set(vars(server)) == {"preset", "fingerprint", "parameters"}
    assert set(vars(server.parameters)) <= {
        "preset",
        "parms_bytes",
        "context",
        "moduli",
        "parms_id",
        "_version",
    }
    assert federation.server_context().to_bytes() == server_bytes


def test_secret_context_is_refused_as_a_server_context(
    small_federation: secagg.FederationKeys,
) -> None:
    fed = small_federation
    secret = fed.material.to_bytes()
    with pytest.raises(SecretKeyExposureError):
        secagg.ServerContext.from_bytes(secret)
    with pytest.raises(SecretKeyExposureError):
        secagg.Aggregator(secret, registry=fed.registry, round_id=1, roster=ROSTER)
    with pytest.raises(ContextError):
        secagg.Aggregator(fed.material, registry=fed.registry, round_id=1, roster=ROSTER)  # type: ignore[arg-type]


def test_tenseal_context_with_secret_key_is_refused_by_the_aggregator(
    small_federation: secagg.FederationKeys,
) -> None:
    ctx = tenseal.context(tenseal.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    with_secret = ctx.serialize(save_secret_key=True)
    registry = small_federation.registry
    with pytest.raises(SecretKeyExposureError):
        secagg.Aggregator(with_secret, registry=registry, round_id=1, roster=ROSTER)
    with pytest.raises(SecretKeyExposureError):
        secagg.ServerContext.from_bytes(with_secret)
    # A public TenSEAL context is not a secagg server context either, but no exposure.
    public = ctx.serialize(save_secret_key=False)
    with pytest.raises(ContextError) as info:
        secagg.ServerContext.from_bytes(public)
    assert not isinstance(info.value, SecretKeyExposureError)


def test_no_key_loads_from_anything_the_server_holds(
    federation: secagg.FederationKeys, tmp_path: Path
) -> None:
    server_bytes = federation.material.server_context()
    server = secagg.ServerContext.from_bytes(server_bytes)
    enc = _aggregate(federation, server_bytes)
    payload = _payload(federation, "a")
    registry = federation.registry.to_bytes()
    frames = {
        "server context": (server_bytes, wire.MAGIC_SERVER_CONTEXT),
        "update": (payload, wire.MAGIC_UPDATE),
        "aggregate": (enc.to_bytes(), wire.MAGIC_AGGREGATE),
        "registry": (registry, wire.MAGIC_REGISTRY),
    }
    candidates = {name: data for name, (data, _) in frames.items()}
    for name, (data, magic) in frames.items():
        for i, chunk in enumerate(wire.unpack_frame(data, magic).chunks):
            candidates[f"{name} chunk {i}"] = chunk
    assert len(candidates) >= 10
    path = tmp_path / "candidate.bin"
    loaded = []
    for name, data in candidates.items():
        path.write_bytes(data)
        try:
            sealapi.SecretKey().load(server.parameters.context, str(path))
        except (RuntimeError, ValueError):
            pass
        else:
            loaded.append(name)
        for secret_name, secret in _secrets(federation).items():
            assert secret not in data, f"{secret_name} in {name}"
    assert loaded == []


def test_a_random_key_on_the_server_context_decrypts_to_garbage(
    approx_federation: secagg.FederationKeys,
) -> None:
    fed = approx_federation
    server = fed.server_context()
    enc = _aggregate(fed, server)
    seeds = [enc.seeds[cid][:SEED_BYTES] for cid in enc.contributors]
    updates = _updates()
    expected = np.zeros(fed.material.preset.slots)
    expected[0] = 2.0  # two unit weights
    expected[1 : 1 + NUMEL] = updates["a"] + updates["b"]
    bound = fed.material.preset.noise_bound(2)

    forged = SealSession(server.parameters, None)  # a key of the server's own making
    garbage = forged.decrypt_sum(enc.c0[0], seeds)
    assert float(np.abs(garbage - expected).mean()) > 1e6 * bound

    real = fed.material.session.decrypt_sum(enc.c0[0], seeds)
    assert float(np.abs(real - expected).max()) <= bound
    exact = (updates["a"] + updates["b"]) / 2
    assert _within_release_tolerance(fed.key_holder().release(enc), exact)


def test_a_random_key_recovers_no_exact_sum(federation: secagg.FederationKeys) -> None:
    server = federation.server_context()
    enc = _aggregate(federation, server)
    seeds = [enc.seeds[cid][:SEED_BYTES] for cid in enc.contributors]
    layout = FieldLayout(federation.material.preset)
    column = server.parameters.modulus_column()
    updates = _updates()
    exact = updates["a"] + updates["b"]
    step = federation.material.preset.quantization_step

    real = federation.material.session.decrypt_coefficients(enc.c0[0], seeds)[None, :]
    weight, total = layout.dequantize(layout.field_sums(real, column, 2), NUMEL, 2)
    assert abs(weight - 2.0) <= 2 / federation.material.preset.levels
    assert float(np.abs(total - exact).max()) <= 2 * step

    forged = SealSession(server.parameters, None).decrypt_coefficients(enc.c0[0], seeds)[None, :]
    with pytest.raises(IntegrityError):  # not even close to an honest sum's coefficients
        layout.field_sums(forged, column, 2)
    assert _within_release_tolerance(federation.key_holder().release(enc), exact / 2)


# ---------------------------------------------------------------------------- key files
def test_secret_context_file_is_private_and_round_trips(
    small_federation: secagg.FederationKeys, tmp_path: Path
) -> None:
    material = small_federation.material
    path = tmp_path / "keys" / "secret.secagg"
    path.parent.mkdir()
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    old_umask = os.umask(0)
    try:
        material.save(path)
    finally:
        os.umask(old_umask)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret.secagg"]  # no temp file left

    loaded = secagg.KeyMaterial.load(path)
    assert loaded.fingerprint == material.fingerprint
    assert loaded.preset == material.preset
    assert loaded.mac_key == material.mac_key
    assert loaded.session.secret_key_bytes() == material.session.secret_key_bytes()
    assert secagg.KeyMaterial.from_bytes(material.to_bytes()).fingerprint == material.fingerprint
    # An aggregate encrypted under the original is verified and released with the copy.
    holder = secagg.KeyHolder(loaded, registry=small_federation.registry)
    exact = (_updates()["a"] + _updates()["b"]) / 2
    assert _within_release_tolerance(holder.release(_aggregate(small_federation)), exact)


LOADERS: dict[str, Callable[[secagg.FederationKeys, Path], Any]] = {
    "KeyMaterial.load": lambda fed, p: secagg.KeyMaterial.load(p),
    "SigningKey.load": lambda fed, p: SigningKey.load(p),
    "KeyHolder.open": lambda fed, p: secagg.KeyHolder.open(fed.material, p),
}
WRITERS: dict[str, Callable[[secagg.FederationKeys, Path], Any]] = {
    "KeyMaterial.load": lambda fed, p: fed.material.save(p),
    "SigningKey.load": lambda fed, p: fed.signing_keys["a"].save(p),
    "KeyHolder.open": lambda fed, p: fed.key_holder(state_path=p),
}


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620, 0o602, 0o660])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_secret_files_accessible_to_group_or_others_are_refused(
    small_federation: secagg.FederationKeys, tmp_path: Path, loader: str, mode: int
) -> None:
    path = tmp_path / "secret.secagg"
    WRITERS[loader](small_federation, path)
    os.chmod(path, mode)
    with pytest.raises(ContextError, match="chmod 600") as info:
        LOADERS[loader](small_federation, path)
    assert isinstance(info.value, ValueError)
    os.chmod(path, 0o600)
    assert LOADERS[loader](small_federation, path) is not None


def test_federation_keys_load_refuses_a_readable_secret_context(
    small_federation: secagg.FederationKeys, tmp_path: Path
) -> None:
    small_federation.save(tmp_path)
    os.chmod(tmp_path / SECRET_CONTEXT_FILE, 0o640)
    with pytest.raises(ContextError, match="chmod"):
        secagg.FederationKeys.load(tmp_path)


def _save_under_umask_0(fed: secagg.FederationKeys, directory: Path) -> dict[str, int]:
    old_umask = os.umask(0)
    try:
        fed.save(directory)
    finally:
        os.umask(old_umask)
    return {
        p.relative_to(directory).as_posix(): p.stat().st_mode & 0o777
        for p in directory.rglob("*")
        if p.is_file()
    }


def test_federation_keys_save_secret_files_0600_and_load_back(
    small_federation: secagg.FederationKeys, tmp_path: Path
) -> None:
    fed = small_federation
    modes = _save_under_umask_0(fed, tmp_path)
    assert modes[SECRET_CONTEXT_FILE] == 0o600
    for cid in ROSTER:
        assert modes[signing_key_path(tmp_path, cid).relative_to(tmp_path).as_posix()] == 0o600
    assert len(modes) == 3 + len(ROSTER)
    loaded = secagg.FederationKeys.load(tmp_path)
    assert loaded.material.fingerprint == fed.material.fingerprint
    assert loaded.registry.digest == fed.registry.digest
    assert {cid: k.client_id for cid, k in loaded.signing_keys.items()} == {c: c for c in ROSTER}
    server = secagg.ServerContext.from_bytes((tmp_path / SERVER_CONTEXT_FILE).read_bytes())
    assert server.fingerprint == fed.material.fingerprint


@pytest.mark.parametrize("name", [REGISTRY_FILE, SERVER_CONTEXT_FILE])
def test_federation_keys_save_public_files_writable_only_by_their_owner(
    small_federation: secagg.FederationKeys, tmp_path: Path, name: str
) -> None:
    # Public, but their integrity matters: the registry decides who may contribute, the
    # server context which key the server accepts. Whatever the umask, nobody else may
    # write them.
    modes = _save_under_umask_0(small_federation, tmp_path)
    assert modes[name] & 0o044 == 0o044  # readable by all
    assert modes[name] & 0o022 == 0, f"{name} is mode {modes[name]:o}"


@pytest.mark.parametrize("client_id", ["../evil", "a/b", ".hidden", "", "x" * 200])
def test_client_ids_that_cannot_name_a_key_file_are_refused(tmp_path: Path, client_id: str) -> None:
    with pytest.raises(ConfigurationError):
        signing_key_path(tmp_path, client_id)


def test_fingerprints_differ_across_generated_keys() -> None:
    prints = {secagg.KeyMaterial.generate("small").fingerprint for _ in range(4)}
    assert len(prints) == 4
    assert all(len(p) == 64 and int(p, 16) >= 0 for p in prints)


def test_fingerprint_binds_the_secret_key_and_the_mac_key(
    small_federation: secagg.FederationKeys,
) -> None:
    material = small_federation.material
    same_ckks = secagg.KeyMaterial(material.session, os.urandom(32))
    other_ckks = secagg.KeyMaterial(SealSession(material.parameters, None), material.mac_key)
    prints = {material.fingerprint, same_ckks.fingerprint, other_ckks.fingerprint}
    assert len(prints) == 3
    # A payload under the same CKKS key but another MAC key is another key to the server.
    payload = secagg.encrypt_update(
        same_ckks,
        {"w": np.zeros(10)},
        signing_key=small_federation.signing_keys["a"],
        round_id=1,
        roster=ROSTER,
    )
    agg = secagg.Aggregator(
        small_federation.server_context(),
        registry=small_federation.registry,
        round_id=1,
        roster=ROSTER,
    )
    with pytest.raises(KeyMismatchError):
        agg.add(payload)
    with pytest.raises(ContextError, match="32 bytes"):
        secagg.KeyMaterial(material.session, b"short")


def _chunk_span(data: bytes, index: int) -> tuple[int, int]:
    frame = wire.unpack_frame(data, wire.MAGIC_KEY)
    start = len(frame.signed_bytes) - sum(len(c) for c in frame.chunks)
    start += sum(len(c) for c in frame.chunks[:index])
    return start, start + len(frame.chunks[index])


@pytest.mark.parametrize(
    ("chunk", "where"),
    [(1, 0.0), (1, 0.001), (1, 0.5), (1, 0.999), (2, 0.0), (2, 0.999)],
    ids=["sk-seal-magic", "sk-head", "sk-mid", "sk-end", "mac-first", "mac-last"],
)
def test_tampered_secret_or_mac_key_is_refused(
    small_federation: secagg.FederationKeys, tmp_path: Path, chunk: int, where: float
) -> None:
    path = small_federation.material.save(tmp_path / "k.secagg")
    data = bytearray(path.read_bytes())
    start, end = _chunk_span(bytes(data), chunk)
    data[start + int(where * (end - start - 1))] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(ContextError):
        secagg.KeyMaterial.load(path)


def _secret_with_header(data: bytes, **changes: Any) -> bytes:
    frame = wire.unpack_frame(data, wire.MAGIC_KEY)
    header = {k: v for k, v in frame.header.items() if k != "chunk_sizes"}
    header.update(changes)
    return wire.pack_frame(wire.MAGIC_KEY, header, frame.chunks)


def test_secret_context_whose_fingerprint_was_edited_is_refused(
    small_federation: secagg.FederationKeys,
) -> None:
    material = small_federation.material
    fp = material.fingerprint
    forged = fp[:-1] + ("0" if fp[-1] != "0" else "1")
    with pytest.raises(ContextError, match="fingerprint"):
        secagg.KeyMaterial.from_bytes(_secret_with_header(material.to_bytes(), fingerprint=forged))


@pytest.mark.parametrize(
    ("generated", "claimed"),
    [
        ("small", secagg.PRESETS["default"]),
        ("default", secagg.PRESETS["small"]),
        ("default", secagg.PRESETS["large"]),
        ("large", secagg.PRESETS["default"]),
        # Same N, another special prime.
        ("small", secagg.Preset("custom", "exact", 4096, (60, 40), 64, 16, 1.0)),
    ],
    ids=["small-as-default", "default-as-small", "default-as-large", "large-as-default", "custom"],
)
def test_secret_context_whose_preset_disagrees_with_its_parameters_is_refused(
    generated: str, claimed: secagg.Preset
) -> None:
    # The fingerprint covers the SEAL parameters and the keys, not the preset header: a
    # file relabelled with another (valid, known) preset keeps a matching fingerprint,
    # so only the parameter check can refuse it.
    material = secagg.KeyMaterial.generate(generated)
    data = material.to_bytes()
    assert secagg.KeyMaterial.from_bytes(_secret_with_header(data)).fingerprint == (
        material.fingerprint
    )
    with pytest.raises(ContextError, match=r"do not match|differ from"):
        secagg.KeyMaterial.from_bytes(_secret_with_header(data, preset=preset_to_header(claimed)))


def test_server_context_is_refused_as_a_secret_context(
    small_federation: secagg.FederationKeys, tmp_path: Path
) -> None:
    with pytest.raises(ContextError, match="server context"):
        secagg.KeyMaterial.from_bytes(small_federation.material.server_context())
    with pytest.raises(ContextError):
        secagg.KeyMaterial.load(tmp_path / "missing.secagg")


@pytest.mark.parametrize("path", [None, "", 7, b"\0"])
def test_key_material_load_refuses_a_path_that_is_not_one(path: Any) -> None:
    with pytest.raises(ContextError):
        secagg.KeyMaterial.load(path)


@pytest.mark.parametrize("data", [None, "text", 7, b"", b"SAKM"])
def test_key_material_from_bytes_refuses_what_is_not_a_secret_context(data: Any) -> None:
    with pytest.raises(ContextError):
        secagg.KeyMaterial.from_bytes(data)


def test_repr_reveals_no_key(small_federation: secagg.FederationKeys) -> None:
    fed = small_federation
    holder = fed.key_holder()
    texts = [repr(fed), repr(fed.material), repr(holder), repr(fed.signing_keys["a"]), str(fed)]
    assert fed.material.fingerprint[:16] in repr(fed.material)
    assert fed.material.fingerprint[:16] in repr(holder)
    for text in texts:
        assert fed.material.fingerprint not in text
        for name, secret in _secrets(fed).items():
            assert secret.hex() not in text, name
            assert secret.hex()[:16] not in text, name
            assert repr(secret)[2:40] not in text, name


# ---------------------------------------------------------------------------- signing keys
def test_a_signing_key_relabelled_as_another_client_cannot_sign_for_it(
    small_federation: secagg.FederationKeys,
) -> None:
    fed = small_federation
    data = fed.signing_keys["a"].to_bytes()
    frame = wire.unpack_frame(data, wire.MAGIC_SIGNING_KEY)
    relabelled = SigningKey.from_bytes(
        wire.pack_frame(wire.MAGIC_SIGNING_KEY, {"client_id": "b"}, frame.chunks)
    )
    assert relabelled.client_id == "b"
    payload = secagg.encrypt_update(
        fed.material, {"w": np.zeros(5)}, signing_key=relabelled, round_id=1, roster=ROSTER
    )
    agg = secagg.Aggregator(fed.server_context(), registry=fed.registry, round_id=1, roster=ROSTER)
    with pytest.raises(secagg.errors.SignatureError):
        agg.add(payload)
    assert agg.contributors == ()


@pytest.mark.parametrize(
    "keys",
    [
        None,
        {},
        {"a": b"abc"},  # a 3-byte public key
        {"a": b"\0" * 33},
        {"a": "k" * 32},
        {"a": None},
        {1: b"\0" * 32},
        {"": b"\0" * 32},
        {"a\n": b"\0" * 32},
        [("a", b"\0" * 32)],
    ],
    ids=str,
)
def test_registry_refuses_invalid_ids_and_keys(keys: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        secagg.ClientRegistry(keys)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("private_key", [None, "a", b"\0" * 32])
def test_signing_key_refuses_what_is_not_an_ed25519_key(private_key: Any) -> None:
    with pytest.raises(ConfigurationError):
        SigningKey("a", private_key)


@pytest.mark.parametrize(
    ("client_ids", "preset"),
    [(None, "small"), ([1, 2], "small"), (["a", "a"], "small"), ([], "small"), ("ab", "small"),
     (["a"], "nope")],
    ids=["none", "ints", "repeated", "empty", "string", "unknown-preset"],
)  # fmt: skip
def test_federation_keys_refuse_invalid_client_lists_and_presets(
    client_ids: Any, preset: str
) -> None:
    with pytest.raises(ConfigurationError):
        secagg.FederationKeys.generate(client_ids, preset=preset)
