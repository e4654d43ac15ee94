"""The numpy RLWE encryption against SEAL's own decryptor, exact integers and its distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tenseal.sealapi as sealapi
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import secagg
from secagg.crypto._rlwe import (
    ERROR_BOUND,
    SEED_BYTES,
    SecretKeyEncryptor,
    expand_c1,
    reduce_once,
    sample_error,
)
from secagg.crypto._seal import SealSession, _save
from secagg.errors import FormatError


@pytest.fixture(scope="module", params=["small", "default"])
def session(request: pytest.FixtureRequest) -> SealSession:
    return secagg.KeyMaterial.generate(request.param).session


def _centred(values: np.ndarray, q: int) -> np.ndarray:
    return np.array([int(v) - q if int(v) > q // 2 else int(v) for v in values], dtype=np.int64)


def _seal_phases(session: SealSession, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """SEAL's own Decryptor on (c0, c1), back to coefficients: m + e modulo q."""
    parameters = session.parameters
    plaintext = sealapi.Plaintext()
    session.decryptor.decrypt(parameters.load_ciphertext(c0, c1), plaintext)
    ntt = parameters.parse_plaintext(_save(plaintext))
    phases: np.ndarray = parameters.transform(
        ntt[None, :], to_ntt=False, evaluator=session.evaluator
    )[0]
    return phases


def test_seal_decrypts_our_ciphertexts_to_the_message_plus_a_bounded_error(
    session: SealSession,
) -> None:
    parameters = session.parameters
    q, n = parameters.moduli[0], parameters.preset.poly_modulus_degree
    rng = np.random.default_rng(0)
    messages = rng.integers(0, q, (3, n), dtype=np.uint64)
    messages[0, :4] = [0, 1, q - 1, q - 21]  # wrap-around edges of m + e
    errors = []
    for message, parts in zip(messages, session.encrypt_coefficients(messages), strict=True):
        c1 = expand_c1(parts.seed, parameters.moduli, n)
        error = _centred((_seal_phases(session, parts.c0, c1).astype(object) - message) % q, q)
        assert np.abs(error).max() <= ERROR_BOUND
        errors.append(error)
    assert 2.9 < float(np.std(np.concatenate(errors))) < 3.6  # SEAL's 3.24


def test_two_encryptions_of_one_message_share_nothing(session: SealSession) -> None:
    message = np.zeros((2, session.parameters.coefficients), dtype=np.uint64)
    first, second = session.encrypt_coefficients(message)
    assert first.seed != second.seed and len(first.seed) == SEED_BYTES
    assert np.count_nonzero(first.c0 == second.c0) < 4


def test_the_error_has_seals_binomial_distribution_and_is_fresh() -> None:
    errors = sample_error(64, 8192).ravel()
    assert errors.dtype == np.int64 and np.abs(errors).max() <= ERROR_BOUND
    # 21 coin pairs: mean 0 and variance 21/2; 524,288 samples give about ±0.4% and ±0.01.
    assert abs(float(errors.mean())) < 0.03
    assert 10.3 < float(errors.var()) < 10.7
    counts = np.bincount(errors + ERROR_BOUND, minlength=2 * ERROR_BOUND + 1)
    expected = np.array([math.comb(42, k) for k in range(43)], dtype=np.float64)
    expected *= errors.size / 2.0**42
    seen = expected > 50
    chi2 = float((((counts - expected) ** 2)[seen] / expected[seen]).sum())
    assert chi2 < 80  # about 25 degrees of freedom: far below a 1e-6 tail
    assert not np.array_equal(sample_error(1, 8192), sample_error(1, 8192))


def test_c1_is_uniform_below_each_prime(session: SealSession) -> None:
    parameters = session.parameters
    q, n = parameters.moduli[0], parameters.preset.poly_modulus_degree
    seed = bytes(range(SEED_BYTES))
    c1 = expand_c1(seed, parameters.moduli, n)
    assert np.array_equal(c1, expand_c1(seed, parameters.moduli, n))  # public and deterministic
    many = np.concatenate(
        [expand_c1(bytes([i]) * SEED_BYTES, parameters.moduli, n) for i in range(16)]
    )
    assert int(many.max()) < q
    bins = np.bincount((many.astype(np.float64) / q * 64).astype(np.int64), minlength=64)
    expected = many.size / 64
    assert float(((bins - expected) ** 2 / expected).sum()) < 150  # 63 d.o.f.
    assert not np.array_equal(c1, expand_c1(bytes(SEED_BYTES), parameters.moduli, n))


def test_c1_rejection_sampling_takes_the_first_accepted_words_of_the_stream() -> None:
    q = (1 << 59) + 21  # 60 bits wide: about half of all masked words are rejected
    seed = bytes(range(32, 32 + SEED_BYTES))
    got = expand_c1(seed, [q, q], 64)
    stream = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    words = np.frombuffer(stream.update(bytes(8 * 1024)), dtype="<u8") & np.uint64(2**60 - 1)
    assert np.array_equal(got[:64], words[words < q][:64])
    second = Cipher(algorithms.AES(seed), modes.CTR((1).to_bytes(8, "big") + bytes(8)))
    words = np.frombuffer(second.encryptor().update(bytes(8 * 1024)), dtype="<u8")
    words = words & np.uint64(2**60 - 1)
    assert np.array_equal(got[64:], words[words < q][:64])  # each prime its own stream


@pytest.mark.parametrize("seed", [b"", bytes(SEED_BYTES - 1), bytes(SEED_BYTES + 1)])
def test_a_seed_of_the_wrong_length_is_refused(session: SealSession, seed: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        expand_c1(seed, session.parameters.moduli, 8)
    with pytest.raises(FormatError):
        session.parameters.expand_c1([seed])


@pytest.mark.parametrize("q", [(1 << 60) - 98303, (1 << 61) - 1, (1 << 59) + 21, 40961])
def test_the_ntt_domain_product_equals_python_integers(q: int) -> None:
    rng = np.random.default_rng(q % 1000)
    n = 512
    secret = rng.integers(0, q, n, dtype=np.uint64)
    secret[:3] = [0, 1, q - 1]
    polys = rng.integers(0, q, (9, n), dtype=np.uint64)
    polys[0, :3] = [q - 1, q - 1, q - 1]
    polys[1, :] = q - 1
    got = SecretKeyEncryptor(secret, [q], n).times_secret(polys)
    want = (polys.astype(object) * secret.astype(object)) % q
    assert np.array_equal(got.astype(object), want)


def test_secret_keys_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="below 2"):
        SecretKeyEncryptor(np.zeros(8, np.uint64), [(1 << 62) - 57], 8)
    with pytest.raises(ValueError, match="match"):
        SecretKeyEncryptor(np.zeros(7, np.uint64), [40961], 8)
    with pytest.raises(ValueError, match="residue"):
        SecretKeyEncryptor(np.full(8, 40961, np.uint64), [40961], 8)


def test_reduce_once_maps_zero_to_two_q_onto_residues() -> None:
    q = np.uint64((1 << 60) - 98303)
    values = np.array([0, 1, q - 1, q, q + 1, 2 * q - 1], dtype=np.uint64)
    assert reduce_once(values, q).tolist() == [0, 1, int(q) - 1, 0, 1, int(q) - 1]
