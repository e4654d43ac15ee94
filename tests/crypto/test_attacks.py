"""A malicious aggregation server: every aggregate it forges is refused before decryption.

Each test plays the server. It holds only what a server holds: the server context (SEAL
parameters and the key fingerprint, no key), the public client registry, the signed
update payloads it received and the aggregates it built, and SEAL's key-less tools
(``Evaluator``, ``CKKSEncoder``, a client's chunk loaded as a SEAL ciphertext with its
public ``c1`` expansion by ``SealParameters.load_ciphertext``). It forges an aggregate that
is structurally valid (it parses, names registered roster members, has the right chunk
count and reduced coefficients) and hands it to the key holder, which must refuse it with
``IntegrityError`` (or the typed error named) without decrypting anything (every use
of the secret key's SEAL ``Decryptor`` is counted) and without spending decryption
budget, and must still release the honest aggregate of the round.

Every forgery is first handed to a *control* key holder of the same keys whose MAC
check is switched off: the control decrypts it, and for the isolation attacks releases
exactly the single client's update the attacker was after. So each refusal below is
the MAC's (or the named policy's) doing, not an incidental parse error.

Every test runs under an exact preset (``small``: quantised integers in plaintext
coefficients, exact sums) and an approximate one (``approx``: CKKS slots, flooded).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tenseal.sealapi as sealapi
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import secagg
from secagg.crypto import wire
from secagg.crypto._codec import pack_coefficients, unpack_coefficients
from secagg.crypto._mac import MacScope, RoundMac
from secagg.crypto._seal import SEED_BYTES
from secagg.crypto.client import mac_scope
from secagg.crypto.layout import FieldLayout, layout_for
from secagg.crypto.spec import UpdateSpec
from secagg.errors import (
    FormatError,
    IntegrityError,
    ReleaseError,
    RosterError,
    RoundAlreadyReleasedError,
    SecaggError,
)

ROSTER = ("a", "b", "c")
PRESETS = ["small", "approx"]  # one exact, one approximate encoding
SLOTS = 8192  # values per chunk under both
assert all(secagg.PRESETS[name].slots == SLOTS for name in PRESETS)
NUMEL = 2 * SLOTS + 5  # three chunks (position 0 carries the weight)
CHUNKS = 3
# Each client's update is its value plus a little noise: an isolated update is recognisable.
VALUES = {"a": 0.25, "b": -0.5, "c": 0.125}


def _update(cid: str, round_id: int, variant: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([ord(cid), round_id, variant])
    return {"w": VALUES[cid] + 0.01 * rng.standard_normal(NUMEL)}


# ---------------------------------------------------------------------------- the parties
class Server:
    """What the aggregation server holds (no key of any kind) and what it can compute."""

    def __init__(self, context_bytes: bytes, registry_bytes: bytes) -> None:
        self.context = secagg.ServerContext.from_bytes(context_bytes)
        self.registry = secagg.ClientRegistry.from_bytes(registry_bytes)
        self.parameters = self.context.parameters
        self.moduli = self.parameters.moduli
        self.column = self.parameters.modulus_column()
        self.evaluator = sealapi.Evaluator(self.parameters.context)
        self.encoder = sealapi.CKKSEncoder(self.parameters.context)
        self.preset = self.context.preset
        self.scale = self.preset.scale

    # -- honest aggregation, as the protocol says
    def aggregate(self, payloads: Sequence[bytes], round_id: int) -> secagg.EncryptedAggregate:
        agg = secagg.Aggregator(
            self.context, registry=self.registry, round_id=round_id, roster=ROSTER, min_clients=1
        )
        for payload in payloads:
            agg.add(payload)
        return agg.finalize()

    # -- reading payloads (public format)
    def parts(self, payload: bytes) -> tuple[np.ndarray, bytes, tuple[int, ...]]:
        """A payload's ``c0`` rows, its seeds (32 bytes per chunk) and its MAC tag."""
        update = secagg.EncryptedUpdate.from_bytes(payload)
        count = self.column.size
        c0 = np.stack(
            [unpack_coefficients(c[SEED_BYTES:], count, 60) for c in update.chunks]
        ).astype(np.uint64)
        return c0, update.seeds, update.tag

    # -- SEAL with no key
    def load(self, c0_row: np.ndarray, seed: bytes) -> Any:
        return self.parameters.load_ciphertext(c0_row, self.parameters.expand_c1([seed]))

    def c0_of(self, ciphertext: Any) -> np.ndarray:
        """The first polynomial of a SEAL ciphertext (what the server may send on)."""
        data = ciphertext.dyn_array()
        return np.array([data[i] for i in range(self.column.size)], dtype=np.uint64)

    def encode(self, values: np.ndarray, scale: float) -> Any:
        """A CKKS plaintext (NTT form) of real ``values``, two per complex slot."""
        plain = sealapi.Plaintext()
        packed = values[0::2] + 1j * values[1::2]
        self.encoder.encode(packed.tolist(), scale, plain)
        return plain

    def plain_poly(self, plain: Any) -> np.ndarray:
        return np.array([plain.data(i) for i in range(self.column.size)], dtype=np.uint64)

    def plaintext_rows(self, values: np.ndarray, weight: float) -> np.ndarray:
        """NTT-form plaintext polynomials of ``values`` laid out as a client would.

        The layouts are public and SEAL's NTT needs no key: the server can encode any
        update it likes, exactly as a client's ciphertext carries one.
        """
        if self.preset.exact:
            layout = FieldLayout(self.preset)
            rows = layout.rows(layout.quantize(values, weight))
            return self.parameters.transform(rows, to_ntt=True, evaluator=self.evaluator)
        flat = np.zeros(CHUNKS * SLOTS)
        flat[0], flat[1 : 1 + values.size] = weight, values
        return np.stack(
            [self.plain_poly(self.encode(row, self.scale)) for row in flat.reshape(CHUNKS, -1)]
        )

    # -- arithmetic modulo the data primes
    def add(self, *polys: np.ndarray) -> np.ndarray:
        total = np.zeros_like(polys[0], dtype=object)
        for poly in polys:
            total = total + poly.astype(object)
        return (total % self._column_like(polys[0])).astype(np.uint64)

    def scale_by(self, k: int, poly: np.ndarray) -> np.ndarray:
        return ((poly.astype(object) * k) % self._column_like(poly)).astype(np.uint64)

    def _column_like(self, poly: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.column.astype(object), poly.shape)

    def tag_add(self, *tags: Sequence[int]) -> tuple[int, ...]:
        return tuple(sum(t[i] for t in tags) % q for i, q in enumerate(self.moduli))

    def tag_scale(self, k: int, tag: Sequence[int]) -> tuple[int, ...]:
        return tuple(k * t % q for t, q in zip(tag, self.moduli, strict=True))


@dataclass
class World:
    """One federation: honest clients, a malicious server, a key holder bound to a file."""

    fed: secagg.FederationKeys
    server: Server
    holder: secagg.KeyHolder
    decryptions: list[int]
    monkeypatch: pytest.MonkeyPatch
    _payloads: dict[tuple[str, int, int], bytes] = field(default_factory=dict)

    def payload(self, cid: str, round_id: int = 1, variant: int = 0) -> bytes:
        """Client ``cid``'s signed payload for a round (``variant`` > 0: a re-encryption)."""
        key = (cid, round_id, variant)
        if key not in self._payloads:
            self._payloads[key] = secagg.encrypt_update(
                self.fed.material,
                _update(cid, round_id, variant),
                signing_key=self.fed.signing_keys[cid],
                round_id=round_id,
                roster=list(ROSTER),
                weight=1.0,
                weight_bound=1.0,
            )
        return self._payloads[key]

    def honest(
        self, clients: Sequence[str] = ("a", "b"), round_id: int = 1, variant: int = 0
    ) -> secagg.EncryptedAggregate:
        return self.server.aggregate(
            [self.payload(c, round_id, variant) for c in clients], round_id
        )

    def control(self, min_clients: int = 2) -> secagg.KeyHolder:
        """A key holder of the same keys with its MAC check switched off."""
        control = self.fed.key_holder(min_clients=min_clients)
        self.monkeypatch.setattr(control, "verify", lambda aggregate: None)
        return control

    def release_honest(
        self, clients: Sequence[str] = ("a", "b"), round_id: int = 1
    ) -> secagg.ReleasedAggregate:
        """The honest aggregate of the round is still released, and is right."""
        released = self.holder.release(self.honest(clients, round_id).to_bytes())
        _assert_mean(released, [_update(c, round_id)["w"] for c in clients])
        return released


def _assert_mean(released: secagg.ReleasedAggregate, updates: Sequence[np.ndarray]) -> None:
    exact = np.mean(updates, axis=0)
    tol = 7 * released.mean_error_std * np.sqrt(1 + exact**2) + 1e-9
    assert (np.abs(released.mean["w"] - exact) <= tol).all()


class _CountingDecryptor:
    """Wraps a SEAL decryptor: every use of the secret key to decrypt is recorded."""

    def __init__(self, decryptor: Any, calls: list[int]) -> None:
        self._decryptor = decryptor
        self._calls = calls

    def decrypt(self, ciphertext: Any, plaintext: Any) -> None:
        self._calls.append(1)
        self._decryptor.decrypt(ciphertext, plaintext)


@pytest.fixture(params=PRESETS)
def world(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> World:
    fed = secagg.FederationKeys.generate(list(ROSTER), preset=request.param)
    assert fed.material.preset.num_chunks(NUMEL) == CHUNKS
    decryptions: list[int] = []
    session = fed.material.session
    monkeypatch.setattr(session, "decryptor", _CountingDecryptor(session.decryptor, decryptions))
    server = Server(fed.server_context().to_bytes(), fed.registry.to_bytes())
    holder = fed.key_holder(min_clients=2, state_path=tmp_path / "key-holder.secagg")
    return World(fed, server, holder, decryptions, monkeypatch)


def _forge(agg: secagg.EncryptedAggregate, **changes: Any) -> secagg.EncryptedAggregate:
    return dataclasses.replace(agg, **changes)


def _with_header(data: bytes, **changes: Any) -> bytes:
    """Rewrite fields of a serialized aggregate's header (the server owns these bytes)."""
    frame = wire.unpack_frame(data, wire.MAGIC_AGGREGATE)
    header = {k: v for k, v in frame.header.items() if k != "chunk_sizes"}
    assert set(changes) <= set(header)
    header.update(changes)
    return wire.pack_frame(wire.MAGIC_AGGREGATE, header, frame.chunks)


def _decrypted_by_the_control(
    world: World, forged: secagg.EncryptedAggregate | bytes, *, min_clients: int = 2
) -> secagg.ReleasedAggregate | None:
    """Hand the forgery to a key holder without the MAC check: it must decrypt it."""
    before = len(world.decryptions)
    data = forged.to_bytes() if isinstance(forged, secagg.EncryptedAggregate) else forged
    try:
        released = world.control(min_clients).release(data)
    except ReleaseError:  # refused only after decrypting: a garbage sum's weight, or (exact
        released = None  # presets) a decryption error beyond an honest sum's
    assert len(world.decryptions) > before, "the forgery is not structurally valid"
    return released


def _assert_refused(
    world: World,
    forged: secagg.EncryptedAggregate | bytes,
    expected: type[SecaggError] | tuple[type[SecaggError], ...] = IntegrityError,
    *,
    holder: secagg.KeyHolder | None = None,
    forms: Sequence[str] = ("bytes", "object"),
) -> None:
    """The key holder refuses the forgery in every form, decrypting and spending nothing."""
    holder = world.holder if holder is None else holder
    before = (holder.decryptions_used, holder.last_released_round, holder.refused)
    calls = len(world.decryptions)
    for form in forms:
        if isinstance(forged, bytes):
            data: secagg.EncryptedAggregate | bytes = forged
        elif form == "bytes":
            data = forged.to_bytes()
        else:
            data = forged
        with pytest.raises(expected):
            holder.release(data)
    assert len(world.decryptions) == calls, "the key holder decrypted a forgery"
    assert holder.decryptions_used == before[0], "a refused forgery spent decryption budget"
    assert holder.last_released_round == before[1], "a refused forgery spent its round"
    if expected is IntegrityError:
        assert holder.refused == before[2] + len(forms)
    if holder.state_path is not None:
        on_disk = secagg.KeyHolder.open(world.fed.material, holder.state_path)
        assert (on_disk.decryptions_used, on_disk.refused) == (
            holder.decryptions_used,
            holder.refused,
        )


def _only_the_mac_refuses(
    world: World, forged: secagg.EncryptedAggregate, *, min_clients: int = 2
) -> secagg.ReleasedAggregate | None:
    released = _decrypted_by_the_control(world, forged, min_clients=min_clients)
    _assert_refused(world, forged)
    return released


# ---------------------------------------------------------------------------- positive control
def test_honest_aggregate_verifies_and_is_released(world: World) -> None:
    honest = world.honest(("a", "b", "c"))
    world.holder.verify(honest)  # no IntegrityError
    world.holder.verify(
        secagg.EncryptedAggregate.from_bytes(honest.to_bytes(), world.server.context)
    )
    assert world.holder.refused == 0
    assert world.decryptions == []  # verifying decrypts nothing
    released = world.release_honest(("a", "b", "c"))
    assert len(world.decryptions) == CHUNKS  # one decryption per chunk
    assert world.holder.decryptions_used == CHUNKS
    assert released.contributors == ("a", "b", "c")
    assert released.weight_sum == pytest.approx(3.0, abs=7 * released.flooding_std)


@pytest.mark.parametrize("preset", ["small", "default", "large"])
def test_mac_chunk_term_is_the_exact_integer_inner_product_modulo_q(preset: str) -> None:
    # The forgery bound rests on the chunk term being exactly <a_i, c0> mod q for
    # uniform 64-bit words a_i (AES-256-CTR output): checked against Python integers.
    chosen = secagg.get_preset(preset)
    n = chosen.poly_modulus_degree
    q = secagg.FederationKeys.generate(["a"], preset=preset).material.moduli[0]
    scope = MacScope("f" * 64, 7, "r" * 64, "s" * 64, 3, "ckks-slots-v1")
    mac = RoundMac(os.urandom(32), scope, (q,), n)
    rng = np.random.default_rng(n)
    vectors = {
        "uniform below q": rng.integers(0, q, size=n, dtype=np.uint64),
        "q - 1 everywhere": np.full(n, q - 1, dtype=np.uint64),
        "every bit set": np.full(n, 2**64 - 1, dtype=np.uint64),
        "limb boundaries": np.tile(
            np.array([0xFFFF, 0x10000, 0xFFFF_FFFF, 2**48 - 1, 2**63, 1], dtype=np.uint64),
            n // 6 + 1,
        )[:n],
        "uniform 64-bit": rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True),
    }
    for index in (0, 2):
        stream = Cipher(
            algorithms.AES(mac._vector_key), modes.CTR(index.to_bytes(8, "big") + bytes(8))
        ).encryptor()
        words = np.frombuffer(stream.update(bytes(8 * n)), dtype="<u8")
        limbs = mac._vector_limbs(index).astype(np.uint64)
        rebuilt = sum(limbs[:, k] << np.uint64(16 * k) for k in range(4))
        assert np.array_equal(rebuilt, words)  # a_i is the full 64-bit AES-CTR word
        for name, c0 in vectors.items():
            exact = sum(int(a) * int(x) for a, x in zip(words, c0, strict=True)) % q
            assert mac.chunk_terms(index, c0) == (exact,), name
    # Linear modulo q: the terms of a sum are the sums of the terms (why honest sums verify).
    x, y = vectors["uniform below q"], rng.integers(0, q, size=n, dtype=np.uint64)
    total = ((x.astype(object) + y.astype(object)) % q).astype(np.uint64)
    assert mac.chunk_terms(1, total) == mac.add(mac.chunk_terms(1, x), mac.chunk_terms(1, y))
    # A single unit changed anywhere moves the term by that vector word (mod q).
    moved = x.copy()
    moved[123] = (int(moved[123]) + 1) % q
    stream = Cipher(algorithms.AES(mac._vector_key), modes.CTR(bytes(16))).encryptor()
    word = int(np.frombuffer(stream.update(bytes(8 * n)), dtype="<u8")[123])
    assert mac.chunk_terms(0, moved)[0] == (mac.chunk_terms(0, x)[0] + word) % q


def test_every_payload_is_masked_by_a_fresh_one_time_pad(world: World) -> None:
    # The key holder's view: each tag is its chunk terms plus a pad bound to the client
    # and the payload's seeds, so a re-encryption of the same update draws a new pad.
    material = world.fed.material
    spec = secagg.flatten_update(_update("a", 1))[1]
    scope = mac_scope(
        fingerprint=material.fingerprint,
        round_id=1,
        roster=ROSTER,
        spec=spec,
        layout=layout_for(material.preset),
    )
    mac = RoundMac(material.mac_key, scope, material.moduli, material.preset.poly_modulus_degree)
    pads = []
    for variant in (0, 1):
        c0, seeds, tag = world.server.parts(world.payload("a", 1, variant))
        terms = [mac.chunk_terms(i, row) for i, row in enumerate(c0)]
        assert mac.add(*terms, mac.pad("a", seeds)) == tag
        pads.append(mac.pad("a", seeds))
    seeds_a = world.server.parts(world.payload("a"))[1]
    assert pads[0] != pads[1]
    assert mac.pad("b", seeds_a) != mac.pad("a", seeds_a)  # the pad names its client


# ---------------------------------------------------------------------------- one client isolated
@pytest.mark.parametrize("how", ["counted-twice", "plaintext-added", "server-seed-for-b"])
def test_one_clients_update_claimed_as_two_clients_is_refused(world: World, how: str) -> None:
    server = world.server
    c0_a, seeds_a, tag_a = server.parts(world.payload("a"))
    tag_b = server.parts(world.payload("b"))[2]
    honest = world.honest(("a", "b"))
    known = np.full(NUMEL, VALUES["b"])  # a plaintext update of the server's choosing
    if how == "counted-twice":  # A's update under both names: decrypts to 2·A
        c0, seeds = server.scale_by(2, c0_a), {"a": seeds_a, "b": seeds_a}
    elif how == "plaintext-added":  # 2·A plus a known plaintext: the server can subtract it
        c0 = server.add(server.scale_by(2, c0_a), server.plaintext_rows(known, 1.0))
        seeds = {"a": seeds_a, "b": seeds_a}
    else:  # A's ciphertexts, and a seed of the server's own for "b"
        c0, seeds = c0_a, {"a": seeds_a, "b": os.urandom(SEED_BYTES * CHUNKS)}
    for tag in (server.tag_add(tag_a, tag_b), server.tag_scale(2, tag_a), honest.tag):
        forged = _forge(honest, c0=c0, seeds=seeds, tag=tag)
        released = _only_the_mac_refuses(world, forged)
    # What the attack would have released: A's update alone (plus what the server knows).
    a = _update("a", 1)["w"]
    if how == "counted-twice":
        assert released is not None
        _assert_mean(released, [a, a])
    elif how == "plaintext-added":
        assert released is not None
        # Exact presets take k·value_range off a sum of k claimed contributors: the third,
        # unclaimed encoding keeps its offset (still known to the server).
        offset = server.preset.value_range if server.preset.exact else 0.0
        _assert_mean(released, [a, a, known + offset])
    world.release_honest(("a", "b"))


def test_one_clients_update_claimed_as_three_clients_is_refused_under_min_clients_3(
    world: World, tmp_path: Path
) -> None:
    holder = world.fed.key_holder(min_clients=3, state_path=tmp_path / "three.secagg")
    server = world.server
    c0_a, seeds_a, tag_a = server.parts(world.payload("a"))
    honest = world.honest(("a", "b", "c"))
    forgeries = {
        "a three times": _forge(
            honest,
            c0=server.scale_by(3, c0_a),
            seeds={cid: seeds_a for cid in ROSTER},
            tag=server.tag_scale(3, tag_a),
        ),
        "a and two fake contributors": _forge(
            honest,
            c0=c0_a,
            seeds={
                "a": seeds_a,
                "b": os.urandom(SEED_BYTES * CHUNKS),
                "c": os.urandom(SEED_BYTES * CHUNKS),
            },
            tag=tag_a,
        ),
    }
    for name, forged in forgeries.items():
        released = _decrypted_by_the_control(world, forged, min_clients=3)
        if name == "a three times":
            assert released is not None and released.contributors == ROSTER
            _assert_mean(released, [_update("a", 1)["w"]])
        _assert_refused(world, forged, holder=holder)
    released = holder.release(honest)
    assert released.contributors == ROSTER


# ---------------------------------------------------------------------------- homomorphic edits
@pytest.mark.parametrize("tag_scaled", [True, False], ids=["tag-scaled", "tag-summed"])
def test_scaled_sum_is_refused(world: World, tag_scaled: bool) -> None:
    server = world.server
    c0_a, seeds_a, tag_a = server.parts(world.payload("a"))
    c0_b, seeds_b, tag_b = server.parts(world.payload("b"))
    three = sealapi.Plaintext()
    server.encoder.encode(3.0, 1.0, three)  # the integer constant 3
    rows = []
    for i in range(CHUNKS):
        chunk = slice(SEED_BYTES * i, SEED_BYTES * (i + 1))
        ct_a = server.load(c0_a[i], seeds_a[chunk])
        server.evaluator.multiply_plain_inplace(ct_a, three)
        server.evaluator.add_inplace(ct_a, server.load(c0_b[i], seeds_b[chunk]))
        rows.append(server.c0_of(ct_a))
    c0 = np.stack(rows)
    assert np.array_equal(c0, server.add(server.scale_by(3, c0_a), c0_b))  # 3·ct_A + ct_B
    tag = server.tag_add(server.tag_scale(3, tag_a), tag_b) if tag_scaled else None
    honest = world.honest(("a", "b"))
    forged = _forge(honest, c0=c0, tag=tag or honest.tag)
    _only_the_mac_refuses(world, forged)
    world.release_honest(("a", "b"))


def test_sum_multiplied_by_an_integer_polynomial_is_refused(world: World) -> None:
    server = world.server
    honest = world.honest(("a", "b"))
    rng = np.random.default_rng(3)
    # Encoded at scale 2^6, the values round to an integer polynomial (coefficients ~±1).
    poly = server.encode(rng.uniform(-64, 64, server.preset.poly_modulus_degree), 2.0**6)
    assert len(set(server.plain_poly(poly).tolist())) > 1
    rows = []
    for i, row in enumerate(honest.c0):
        ciphertext = server.load(row, honest.seeds["a"][SEED_BYTES * i : SEED_BYTES * (i + 1)])
        server.evaluator.multiply_plain_inplace(ciphertext, poly)
        rows.append(server.c0_of(ciphertext))
    for tag in (honest.tag, server.tag_scale(3, honest.tag)):
        _only_the_mac_refuses(world, _forge(honest, c0=np.stack(rows), tag=tag))
    world.release_honest(("a", "b"))


@pytest.mark.parametrize("tag_negated", [True, False], ids=["tag-negated", "tag-kept"])
def test_negated_sum_is_refused(world: World, tag_negated: bool) -> None:
    server = world.server
    honest = world.honest(("a", "b"))
    rows = []
    for i, row in enumerate(honest.c0):
        ciphertext = server.load(row, honest.seeds["b"][SEED_BYTES * i : SEED_BYTES * (i + 1)])
        server.evaluator.negate_inplace(ciphertext)
        rows.append(server.c0_of(ciphertext))
    tag = tuple((-t) % q for t, q in zip(honest.tag, server.moduli, strict=True))
    forged = _forge(honest, c0=np.stack(rows), tag=tag if tag_negated else honest.tag)
    _only_the_mac_refuses(world, forged)
    world.release_honest(("a", "b"))


@pytest.mark.parametrize("fresh_b", [False, True], ids=["b-itself", "b-re-encrypted"])
def test_subtracting_a_client_to_isolate_another_is_refused(world: World, fresh_b: bool) -> None:
    server = world.server
    honest = world.honest(("a", "b"))
    c0_b, _, tag_b = server.parts(world.payload("b", variant=1 if fresh_b else 0))
    rows = []
    for i, row in enumerate(honest.c0):
        chunk = slice(SEED_BYTES * i, SEED_BYTES * (i + 1))
        ciphertext = server.load(row, honest.seeds["a"][chunk])
        server.evaluator.sub_inplace(ciphertext, server.load(c0_b[i], honest.seeds["b"][chunk]))
        rows.append(server.c0_of(ciphertext))
    c0 = np.stack(rows)  # (A + B) - B, still claiming {a, b}
    minus_b = server.tag_add(honest.tag, server.tag_scale(-1, tag_b))
    for tag in (honest.tag, minus_b):
        _only_the_mac_refuses(world, _forge(honest, c0=c0, tag=tag))
    world.release_honest(("a", "b"))


def test_a_single_clients_sum_isolated_by_subtraction_is_refused_by_the_policy(
    world: World,
) -> None:
    # (A + B) - B claiming only {a} with tag T_ab - T_b is exactly A's own payload: a
    # genuine single-client sum, which the MAC rightly accepts. The key holder's own
    # min_clients policy refuses it, before decrypting anything.
    server = world.server
    honest = world.honest(("a", "b"))
    c0_b, _, tag_b = server.parts(world.payload("b"))
    isolated = _forge(
        honest,
        contributors=("a",),
        seeds={"a": honest.seeds["a"]},
        c0=server.add(honest.c0, server.scale_by(-1, c0_b)),
        tag=server.tag_add(honest.tag, server.tag_scale(-1, tag_b)),
        min_clients=1,
    )
    world.holder.verify(isolated)  # a valid sum of one client...
    _assert_refused(world, isolated, RosterError)  # ...that the policy never releases
    for min_clients in (1, 2):  # neither the aggregate's nor the caller's threshold lowers it
        with pytest.raises(RosterError, match="min_clients=2"):
            world.holder.release(isolated.to_bytes(), min_clients=min_clients)
    assert world.decryptions == []
    world.release_honest(("a", "b"))


# ---------------------------------------------------------------------------- key recovery
SEED_SUBSTITUTIONS: dict[str, Callable[[World, bytes], bytes]] = {
    "server-random": lambda w, s: os.urandom(SEED_BYTES),
    "all-zero": lambda w, s: bytes(SEED_BYTES),
    "same-clients-other-chunk": lambda w, s: s[SEED_BYTES : 2 * SEED_BYTES],
    "one-seed-for-every-chunk": lambda w, s: s[2 * SEED_BYTES :] * CHUNKS,
    "other-clients-seed": lambda w, s: w.server.parts(w.payload("c"))[1][:SEED_BYTES],
    "other-rounds-seed": lambda w, s: w.server.parts(w.payload("a", 2))[1][:SEED_BYTES],
}


@pytest.mark.parametrize("substitute", sorted(SEED_SUBSTITUTIONS))
def test_a_substituted_seed_is_refused_before_decryption(world: World, substitute: str) -> None:
    # Replacing a seed replaces the c1 the key holder rebuilds: the first step of every
    # key-recovery attack that needs a c1 of the attacker's choosing.
    honest = world.honest(("a", "b"))
    seeds = dict(honest.seeds)
    seeds["a"] = (SEED_SUBSTITUTIONS[substitute](world, seeds["a"]) + seeds["a"][SEED_BYTES:])[
        : SEED_BYTES * CHUNKS
    ]
    assert seeds["a"] != honest.seeds["a"]
    _only_the_mac_refuses(world, _forge(honest, seeds=seeds))
    world.release_honest(("a", "b"))


def _crafted(server: Server, rng: np.random.Generator, kind: str) -> np.ndarray:
    n = server.column.size
    q = server.column
    if kind == "constant-2^55":  # shifts every decoded slot by 2^55 / Δ = 128
        return np.full(n, 2**55, dtype=np.uint64)
    if kind == "mask-encoded-at-2^55":  # a "zero" at a higher scale: tiny values, not zero
        tiny = rng.uniform(-1e-9, 1e-9, server.preset.poly_modulus_degree)
        return server.plain_poly(server.encode(tiny, 2.0**55))
    if kind == "one-unit":  # the smallest change there is
        delta = np.zeros(n, dtype=np.uint64)
        delta[int(rng.integers(n))] = 1
        return delta
    if kind == "minus-one-everywhere":
        return q - np.uint64(1)
    assert kind == "uniform"
    return rng.integers(0, q, dtype=np.uint64)


@pytest.mark.parametrize(
    "kind",
    ["constant-2^55", "mask-encoded-at-2^55", "one-unit", "minus-one-everywhere", "uniform"],
)
@pytest.mark.parametrize("chunk", [0, CHUNKS - 1])
def test_a_crafted_polynomial_added_to_c0_is_refused_before_decryption(
    world: World, kind: str, chunk: int
) -> None:
    server = world.server
    honest = world.honest(("a", "b"))
    delta = _crafted(server, np.random.default_rng(chunk), kind)
    assert delta.any()
    c0 = honest.c0.copy()
    c0[chunk] = server.add(c0[chunk], delta)
    assert (c0 < server.column).all()  # reduced: it parses like any honest aggregate
    _only_the_mac_refuses(world, _forge(honest, c0=c0))
    world.release_honest(("a", "b"))


def test_a_crafted_c1_has_no_channel_into_the_aggregate(world: World) -> None:
    # The server never sends a c1: there is no field for one. A full c1 polynomial where
    # a chunk or a seed block goes is refused when parsed; as an object, the pad (over the
    # contributor's whole seed block) no longer matches.
    server = world.server
    honest = world.honest(("a", "b"))
    c1 = pack_coefficients(np.random.default_rng(1).integers(0, server.column), 60)
    frame = wire.unpack_frame(honest.to_bytes(), wire.MAGIC_AGGREGATE)
    header = {k: v for k, v in frame.header.items() if k != "chunk_sizes"}
    extra_chunk = wire.pack_frame(wire.MAGIC_AGGREGATE, header, [*frame.chunks, c1])
    seed_block = wire.pack_frame(
        wire.MAGIC_AGGREGATE, header, [*frame.chunks[:CHUNKS], c1, frame.chunks[-1]]
    )
    for forged in (extra_chunk, seed_block):
        _assert_refused(world, forged, FormatError, forms=("bytes",))
    forged = _forge(honest, seeds={**honest.seeds, "a": c1})
    _assert_refused(world, forged, FormatError, forms=("object",))  # not a seed block
    # A seed block of the right size carrying the c1's bytes: the pad no longer matches.
    block = c1[: len(honest.seeds["a"])]
    _assert_refused(world, _forge(honest, seeds={**honest.seeds, "a": block}), IntegrityError)
    world.release_honest(("a", "b"))


# ---------------------------------------------------------------------------- rounds
@pytest.mark.parametrize("how", ["header-bytes", "constructed"])
def test_sum_relabelled_as_the_next_round_is_refused(world: World, how: str) -> None:
    honest = world.honest(("a", "b"), round_id=1)
    if how == "header-bytes":
        relabelled = _with_header(honest.to_bytes(), round_id=2)
        parsed = secagg.EncryptedAggregate.from_bytes(relabelled, world.server.context)
        assert parsed.round_id == 2
        _decrypted_by_the_control(world, relabelled)
        _assert_refused(world, relabelled, forms=("bytes",))
    else:
        _only_the_mac_refuses(world, _forge(honest, round_id=2))
    # The refusal spent neither budget nor round 2: the honest round-2 sum is released.
    world.release_honest(("a", "b"), round_id=2)


def test_sum_relabelled_as_an_unreleased_older_round_is_refused(world: World) -> None:
    honest = world.honest(("a", "b", "c"), round_id=9)
    _only_the_mac_refuses(world, _forge(honest, round_id=2))
    _assert_refused(world, _with_header(honest.to_bytes(), round_id=2), forms=("bytes",))
    world.release_honest(("a", "b", "c"), round_id=9)


def test_an_aggregate_is_released_once_and_older_rounds_never(world: World) -> None:
    honest = world.honest(("a", "b"), round_id=4)
    world.release_honest(("a", "b"), round_id=4)
    calls = len(world.decryptions)
    for again in (honest, world.honest(("b", "c"), round_id=4)):
        _assert_refused(world, again, RoundAlreadyReleasedError)
    _assert_refused(world, world.honest(("a", "c"), round_id=3), RoundAlreadyReleasedError)
    assert len(world.decryptions) == calls
    world.release_honest(("a", "c"), round_id=6)


def test_tag_replayed_from_another_round_is_refused(world: World) -> None:
    round_one = world.honest(("a", "b"), round_id=1)
    round_two = world.honest(("a", "b"), round_id=2)
    _only_the_mac_refuses(world, _forge(round_two, tag=round_one.tag))
    _only_the_mac_refuses(world, _forge(round_one, round_id=2))  # the whole sum replayed
    world.release_honest(("a", "b"), round_id=2)


MIXES = ["chunk-and-its-seeds", "seeds-only", "c0-only", "a-whole-contribution"]


@pytest.mark.parametrize("mix", MIXES)
def test_ciphertexts_from_another_round_mixed_in_are_refused(world: World, mix: str) -> None:
    server = world.server
    old = world.honest(("a", "b"), round_id=1)
    new = world.honest(("a", "b"), round_id=2)
    chunk = slice(SEED_BYTES, 2 * SEED_BYTES)
    if mix == "a-whole-contribution":  # client c's round-1 payload added to round 2's sum
        c0_c, seeds_c, tag_c = server.parts(world.payload("c", round_id=1))
        forged = _forge(
            new,
            contributors=("a", "b", "c"),
            c0=server.add(new.c0, c0_c),
            seeds={**new.seeds, "c": seeds_c},
            tag=server.tag_add(new.tag, tag_c),
        )
    else:
        c0, seeds = new.c0.copy(), dict(new.seeds)
        if mix != "seeds-only":
            c0[1] = old.c0[1]
        if mix != "c0-only":
            seeds = {
                cid: s[: chunk.start] + old.seeds[cid][chunk] + s[chunk.stop :]
                for cid, s in seeds.items()
            }
        forged = _forge(new, c0=c0, seeds=seeds)
    _only_the_mac_refuses(world, forged)
    world.release_honest(("a", "b"), round_id=2)


def test_a_contribution_made_for_another_roster_is_refused(world: World) -> None:
    # The server runs the round twice, with the roster in another order, and sums a's
    # payload for one roster with b's for the other: it decrypts to the honest sum of a
    # and b, but b never agreed to be summed under this roster.
    server = world.server
    other_roster = ["b", "a", "c"]
    payload_b = secagg.encrypt_update(
        world.fed.material,
        _update("b", 1),
        signing_key=world.fed.signing_keys["b"],
        round_id=1,
        roster=other_roster,
    )
    c0_a, seeds_a, tag_a = server.parts(world.payload("a"))
    c0_b, seeds_b, tag_b = server.parts(payload_b)
    honest = world.honest(("a", "b"))
    forged = _forge(
        honest,
        c0=server.add(c0_a, c0_b),
        seeds={"a": seeds_a, "b": seeds_b},
        tag=server.tag_add(tag_a, tag_b),
    )
    released = _only_the_mac_refuses(world, forged)
    assert released is not None
    _assert_mean(released, [_update(c, 1)["w"] for c in ("a", "b")])
    for roster in (ROSTER, tuple(other_roster)):  # under either roster
        _assert_refused(world, _forge(forged, roster=roster))
    world.release_honest(("a", "b"))


# ---------------------------------------------------------------------------- chunks
def _reorder(agg: secagg.EncryptedAggregate, order: Sequence[int]) -> secagg.EncryptedAggregate:
    """Move whole chunks (c0 row and every contributor's seed), so each stays a valid sum."""

    def seeds(block: bytes) -> bytes:
        return b"".join(block[SEED_BYTES * i : SEED_BYTES * (i + 1)] for i in order)

    return _forge(
        agg, c0=agg.c0[list(order)], seeds={cid: seeds(s) for cid, s in agg.seeds.items()}
    )


REORDERINGS = {
    "swap-0-1": (1, 0, 2),
    "swap-1-2": (0, 2, 1),
    "reverse": (2, 1, 0),
    "rotate": (1, 2, 0),
    "first-twice": (0, 0, 2),
    "last-twice": (0, 2, 2),
}


@pytest.mark.parametrize("order", sorted(REORDERINGS))
def test_reordered_or_repeated_chunks_are_refused(world: World, order: str) -> None:
    honest = world.honest(("a", "c"))
    _only_the_mac_refuses(world, _reorder(honest, REORDERINGS[order]))
    world.release_honest(("a", "c"))


@pytest.mark.parametrize("other", ["same-clients-re-encrypted", "other-clients"])
def test_chunks_mixed_between_two_aggregates_of_the_round_are_refused(
    world: World, other: str
) -> None:
    first = world.honest(("a", "b"))
    if other == "same-clients-re-encrypted":  # both clients re-sent their updates
        second = world.honest(("a", "b"), variant=1)
        seeds = {
            cid: s[:SEED_BYTES]
            + second.seeds[cid][SEED_BYTES : 2 * SEED_BYTES]
            + s[2 * SEED_BYTES :]
            for cid, s in first.seeds.items()
        }
    else:  # chunk 1 of the sum of a and c, with c's seed standing in for b's
        second = world.honest(("a", "c"))
        seeds = {
            "a": first.seeds["a"][:SEED_BYTES]
            + second.seeds["a"][SEED_BYTES : 2 * SEED_BYTES]
            + first.seeds["a"][2 * SEED_BYTES :],
            "b": first.seeds["b"][:SEED_BYTES]
            + second.seeds["c"][SEED_BYTES : 2 * SEED_BYTES]
            + first.seeds["b"][2 * SEED_BYTES :],
        }
    c0 = first.c0.copy()
    c0[1] = second.c0[1]
    for tag in (first.tag, second.tag):
        _only_the_mac_refuses(world, _forge(first, c0=c0, seeds=seeds, tag=tag))
    world.release_honest(("a", "b"))


def test_a_chunk_dropped_with_a_shortened_spec_is_refused(world: World) -> None:
    honest = world.honest(("a", "b"))
    shorter = UpdateSpec.from_json([["w", [2 * SLOTS - 1], "float64"]])  # fits two chunks
    assert shorter.spec_hash != honest.spec.spec_hash
    assert world.fed.material.preset.num_chunks(shorter.numel) == CHUNKS - 1
    forged = _forge(
        honest,
        spec=shorter,
        c0=honest.c0[: CHUNKS - 1],
        seeds={cid: s[: SEED_BYTES * (CHUNKS - 1)] for cid, s in honest.seeds.items()},
    )
    _only_the_mac_refuses(world, forged)
    world.release_honest(("a", "b"))


# ---------------------------------------------------------------------------- contributors
def test_reordering_the_contributor_list_is_the_same_sum_and_is_released(world: World) -> None:
    # Not a forgery: the claim "b and a" is the same sum as "a and b".
    honest = world.honest(("a", "b"))
    reordered = _forge(honest, contributors=("b", "a"))
    world.holder.verify(reordered)
    released = world.holder.release(reordered.to_bytes())
    assert sorted(released.contributors) == ["a", "b"]
    _assert_mean(released, [_update(c, 1)["w"] for c in ("a", "b")])


RENAMES: dict[str, Callable[[secagg.EncryptedAggregate], dict[str, Any]]] = {
    # Both seed sets are there, under each other's names: it decrypts to the honest sum.
    "names-swapped": lambda h: {"seeds": {"a": h.seeds["b"], "b": h.seeds["a"]}},
    # A's ciphertexts claimed as c's.
    "a-claimed-as-c": lambda h: {
        "contributors": ("c", "b"),
        "seeds": {"c": h.seeds["a"], "b": h.seeds["b"]},
    },
    # The sum of a and b claimed as the sum of a and c, with c's real seeds from its payload.
    "b-replaced-by-c": lambda h: {"contributors": ("a", "c"), "seeds": {"a": h.seeds["a"]}},
}


@pytest.mark.parametrize("rename", sorted(RENAMES))
def test_contributors_renamed_or_their_seeds_swapped_are_refused(world: World, rename: str) -> None:
    honest = world.honest(("a", "b"))
    changes = RENAMES[rename](honest)
    if rename == "b-replaced-by-c":
        changes["seeds"]["c"] = world.server.parts(world.payload("c"))[1]
    released = _only_the_mac_refuses(world, _forge(honest, **changes))
    if rename == "names-swapped":  # the control decrypted the honest sum itself
        assert released is not None
        _assert_mean(released, [_update(c, 1)["w"] for c in ("a", "b")])
    world.release_honest(("a", "b"))


# ---------------------------------------------------------------------------- budget burn
def test_refused_forgeries_spend_no_budget_and_the_honest_round_is_still_released(
    world: World, tmp_path: Path
) -> None:
    path = tmp_path / "tight.secagg"
    holder = world.fed.key_holder(min_clients=2, decryption_budget=CHUNKS, state_path=path)
    honest = world.honest(("a", "b", "c"))
    rng = np.random.default_rng(0)
    server = world.server
    forgeries = 0
    for attempt in range(40):
        kind = attempt % 4
        if kind == 0:
            c0 = honest.c0.copy()
            i, j = int(rng.integers(CHUNKS)), int(rng.integers(server.column.size))
            c0[i, j] = (int(c0[i, j]) + int(rng.integers(1, 2**20))) % int(server.column[j])
            forged = _forge(honest, c0=c0)
        elif kind == 1:
            forged = _forge(honest, seeds={**honest.seeds, "b": os.urandom(SEED_BYTES * CHUNKS)})
        elif kind == 2:
            forged = _forge(honest, round_id=int(rng.integers(2, 2**40)))
        else:
            forged = _forge(honest, tag=server.tag_add(honest.tag, (int(rng.integers(1, 99)),)))
        with pytest.raises(IntegrityError, match="nothing was decrypted"):
            holder.release(forged.to_bytes())
        forgeries += 1
    assert world.decryptions == []
    on_disk = secagg.KeyHolder.open(world.fed.material, path)
    assert (on_disk.refused, on_disk.decryptions_used, on_disk.last_released_round) == (
        forgeries,
        0,
        -1,
    )
    # The whole budget is still there for the honest sum of the round.
    released = on_disk.release(honest.to_bytes())
    assert released.contributors == ROSTER
    assert on_disk.decryptions_left == 0
    reopened = secagg.KeyHolder.open(world.fed.material, path)
    assert (reopened.refused, reopened.decryptions_used) == (forgeries, CHUNKS)


# ---------------------------------------------------------------------------- registry and roster
def test_an_unregistered_contributor_is_refused(world: World) -> None:
    honest = world.honest(("a", "b"))
    roster = [*ROSTER, "mallory"]  # the server publishes a roster with a client of its own
    forged = _forge(
        honest,
        roster=tuple(roster),
        contributors=("a", "b", "mallory"),
        seeds={**honest.seeds, "mallory": os.urandom(SEED_BYTES * CHUNKS)},
    ).to_bytes()
    _assert_refused(world, forged, RosterError, forms=("bytes",))
    with pytest.raises(RosterError, match="unregistered"):
        world.holder.release(forged)
    assert world.decryptions == []
    world.release_honest(("a", "b"))


def test_a_contributor_off_the_roster_is_refused(world: World) -> None:
    honest = world.honest(("a", "b"))
    shortened = _forge(honest, roster=("a", "c"))  # b is summed but not on the roster
    _assert_refused(world, shortened.to_bytes(), FormatError, forms=("bytes",))
    _assert_refused(world, shortened, (FormatError, RosterError), forms=("object",))
    # Re-listing the roster (all still contributing) changes the MAC scope: refused.
    _only_the_mac_refuses(world, _forge(honest, roster=("b", "a", "c")))
    world.release_honest(("a", "b"))


def test_duplicate_contributors_are_refused(world: World) -> None:
    # A's update counted twice under one name: c0 = 2·c0_A, tag 2·T_A, contributors
    # ("a", "a"). The pads add up (u_A twice) and the seeds expand to 2·c1_A, so the MAC
    # verifies and the sum decrypts to 2·A: one client's update released as a "two-client"
    # mean. Only a distinctness check stops it. EncryptedAggregate.from_bytes has one; the
    # key holder must not rely on it when handed an EncryptedAggregate object.
    server = world.server
    c0_a, seeds_a, tag_a = server.parts(world.payload("a"))
    honest = world.honest(("a", "b"))
    doubled = _forge(
        honest,
        contributors=("a", "a"),
        seeds={"a": seeds_a},
        c0=server.scale_by(2, c0_a),
        tag=server.tag_scale(2, tag_a),
    )
    as_bytes = _with_header(honest.to_bytes(), contributors=["a", "a"])
    _assert_refused(world, as_bytes, FormatError, forms=("bytes",))
    _assert_refused(world, doubled, (RosterError, FormatError), forms=("object",))
    world.release_honest(("a", "b"))


# ---------------------------------------------------------------------------- non-canonical objects
def test_an_unreduced_coefficient_congruent_to_the_honest_one_is_refused_before_decryption(
    world: World,
) -> None:
    # c0 + q·e_k is the honest sum modulo q, so the MAC (computed modulo q) verifies it; it
    # must be refused as malformed before any budget is spent or anything reaches SEAL.
    # EncryptedAggregate.from_bytes checks the range; an EncryptedAggregate object handed
    # to release() must be checked the same way.
    honest = world.honest(("a", "b"))
    column = world.server.column
    k = int(np.argmin(honest.c0[0]))
    c0 = honest.c0.copy()
    c0[0, k] += column[k]
    assert int(c0[0, k]) < 2**64
    _assert_refused(world, _forge(honest, c0=c0), (FormatError, IntegrityError), forms=("object",))
    # In bytes, an unreduced value does not even parse (60-bit packing, checked below q).
    data = bytearray(honest.to_bytes())
    frame = wire.unpack_frame(bytes(data), wire.MAGIC_AGGREGATE)
    start = len(frame.signed_bytes) - sum(len(c) for c in frame.chunks)
    packed = pack_coefficients(np.full(column.size, 2**60 - 1, dtype=np.uint64), 60)
    data[start : start + len(packed)] = packed
    _assert_refused(world, bytes(data), FormatError, forms=("bytes",))
    world.release_honest(("a", "b"))


MALFORMED: dict[str, Callable[[secagg.EncryptedAggregate], dict[str, Any]]] = {
    "seeds-missing-for-a-contributor": lambda h: {"seeds": {"a": h.seeds["a"]}},
    "c0-rows-too-short": lambda h: {"c0": h.c0[:, :100]},
    "tag-too-short": lambda h: {"tag": ()},
    "seed-block-too-short": lambda h: {"seeds": {**h.seeds, "b": h.seeds["b"][:SEED_BYTES]}},
    "round-id-a-numpy-int": lambda h: {"round_id": np.int64(h.round_id)},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_aggregate_objects_raise_typed_errors_and_spend_nothing(
    world: World, case: str
) -> None:
    # What from_bytes would refuse as FormatError must not escape release() as a KeyError
    # or a numpy ValueError when the aggregate comes as an object.
    honest = world.honest(("a", "b"))
    forged = _forge(honest, **MALFORMED[case](honest))
    _assert_refused(world, forged, SecaggError, forms=("object",))
    world.release_honest(("a", "b"))


def test_the_scope_binds_fingerprint_round_roster_spec_and_chunk_count() -> None:
    # Every field of the MAC scope changes the derived vectors and pads.
    base = MacScope("f" * 64, 1, "r" * 64, "s" * 64, 3, "ckks-slots-v1")
    key = os.urandom(32)
    c0 = np.arange(4096, dtype=np.uint64)
    q = secagg.FederationKeys.generate(["a"], preset="small").material.moduli

    def view(scope: MacScope) -> tuple[Any, ...]:
        mac = RoundMac(key, scope, q, 4096)
        return mac.chunk_terms(0, c0), mac.pad("a", b"s" * 64)

    reference = view(base)
    for name, value in {
        "fingerprint": "e" * 64,
        "round_id": 2,
        "roster_digest": hashlib.sha256(json.dumps(["a"]).encode()).hexdigest(),
        "spec_hash": "t" * 64,
        "num_chunks": 4,
        "encoding": "other",
    }.items():
        assert view(dataclasses.replace(base, **{name: value})) != reference, name
    assert view(base) == reference
    assert RoundMac(os.urandom(32), base, q, 4096).chunk_terms(0, c0) != reference[0]
