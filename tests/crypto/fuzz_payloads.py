"""Fuzz secagg's byte loaders with corrupted payloads (run in a subprocess by test_fuzz.py).

Every case must be accepted or raise a :class:`secagg.errors.SecaggError` subclass; any
other exception is a failure, and a crash (segfault, abort) kills the process, which the
calling test sees as a non-zero return code. Beyond parsing, two security invariants are
counted: a rejected update leaves the aggregator's sums byte-identical, and the key
holder never releases a fuzzed aggregate (or a sum holding a fuzzed update) that is not
the honest sum it started from. The last line printed is ``FUZZ-SUMMARY <json>`` with
the seed and per-target counts.

Update payloads are fuzzed as received (the signature then fails for most mutations)
and *re-signed* by their client after mutation, as a malicious client could, so that the
checks behind the signature are reached.

Usage::

    python tests/crypto/fuzz_payloads.py [--cases N] [--other-cases M] [--seed S]

``--cases`` defaults to ``$SECAGG_FUZZ_CASES`` or 1000 (update payloads); ``--other-cases``
(aggregates, server contexts, secret contexts, key-holder states, registries, signing
keys: each) defaults to max(300, cases // 3).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import struct
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

import secagg
from secagg.crypto import wire
from secagg.crypto.registry import SigningKey
from secagg.errors import SecaggError

PREFIX = struct.Struct(">4sHIQH")
ROSTER = ["a", "b", "c"]
ROUND = 3
NUMEL = 9000  # two ciphertext chunks under preset "small" (8192 values each)
DEFAULT_SEED = 20240611

Mutator = Callable[[random.Random, bytes, bytes], bytes]


# ---------------------------------------------------------------------------- mutators
def _region(rng: random.Random, data: bytes) -> int:
    """A position biased towards the prefix and header, where parsing decisions live."""
    header_end = PREFIX.size + _header_len(data)
    if rng.random() < 0.5 and header_end <= len(data):
        return rng.randrange(0, max(1, header_end))
    return rng.randrange(0, max(1, len(data)))


def _header_len(data: bytes) -> int:
    if len(data) < PREFIX.size:
        return 0
    return min(PREFIX.unpack_from(data)[2], len(data) - PREFIX.size)


def bit_flips(rng: random.Random, data: bytes, magic: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8, 32])):
        pos = _region(rng, out)
        out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


def byte_overwrites(rng: random.Random, data: bytes, magic: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.choice([1, 2, 4, 16])):
        pos = _region(rng, out)
        out[pos] = rng.choice(
            [0, 0xFF, 0x7F, 0x80, ord('"'), ord("{"), ord("9"), rng.randrange(256)]
        )
    return bytes(out)


def truncation(rng: random.Random, data: bytes, magic: bytes) -> bytes:
    if not data:
        return data
    cut = rng.choice(
        [rng.randrange(len(data)), _region(rng, data), len(data) - rng.randrange(1, 80)]
    )
    return data[: max(0, cut)]


def insertion(rng: random.Random, data: bytes, magic: bytes) -> bytes:
    pos = _region(rng, data)
    return data[:pos] + rng.randbytes(rng.choice([1, 2, 7, 64, 1000])) + data[pos:]


def deletion(rng: random.Random, data: bytes, magic: bytes) -> bytes:
    pos = _region(rng, data)
    return data[:pos] + data[pos + rng.choice([1, 3, 16, 500]) :]


def prefix_edit(rng: random.Random, data: bytes, magic: bytes) -> bytes:
    if len(data) < PREFIX.size:
        return data
    fields = list(PREFIX.unpack_from(data))
    index = rng.randrange(1, 5)
    limits = {1: 2**16, 2: 2**32, 3: 2**64, 4: 2**16}
    fields[index] = (
        rng.choice(
            [
                0,
                1,
                2,
                63,
                64,
                65,
                limits[index] - 1,
                rng.randrange(limits[index]),
                fields[index] + 1,
            ]
        )
        % limits[index]
    )
    return PREFIX.pack(*fields) + data[PREFIX.size :]


def random_with_magic(rng: random.Random, data: bytes, magic: bytes) -> bytes:
    choice = rng.randrange(3)
    if choice == 0:  # magic then noise
        return magic + rng.randbytes(rng.randrange(0, 4000))
    header = rng.randbytes(rng.randrange(0, 200))
    body = rng.randbytes(rng.randrange(0, 3000))
    if choice == 1:  # consistent prefix, random header and body
        return PREFIX.pack(magic, _version(rng, magic), len(header), len(body), 0) + header + body
    # consistent prefix, valid JSON header with random chunk sizes, random body
    sizes = [rng.randrange(1, 2000) for _ in range(rng.randrange(1, 4))]
    text = json.dumps({"chunk_sizes": sizes, "kind": "x"}).encode()
    body = rng.randbytes(sum(sizes))
    return PREFIX.pack(magic, _version(rng, magic), len(text), len(body), 0) + text + body


def _version(rng: random.Random, magic: bytes) -> int:
    """Mostly this build's format version, so that parsing goes past the prefix."""
    current = wire.format_version(magic)
    return current if rng.random() < 0.9 else rng.choice([1, current + 1, 0xFFFF])


def _parse(data: bytes, magic: bytes) -> wire.Frame | None:
    """The frame of ``data``, or None (any failure: the loaders are what is under test)."""
    try:
        return wire.unpack_frame(data, magic, max_chunk_bytes=1 << 30)
    except Exception:
        return None


def chunk_swap(rng: random.Random, data: bytes, magic: bytes) -> bytes:
    """Keep the frame valid but replace, drop, duplicate or reorder ciphertext chunks."""
    frame = _parse(data, magic)
    if frame is None:
        return data
    chunks = list(frame.chunks)
    action = rng.randrange(5)
    i = rng.randrange(len(chunks))
    if action == 0:
        chunks[i] = rng.randbytes(len(chunks[i]))
    elif action == 1 and len(chunks) > 1:
        del chunks[i]
    elif action == 2:
        chunks.insert(i, chunks[i])
    elif action == 3:
        chunks.reverse()
    else:
        raw = bytearray(chunks[i])
        for _ in range(rng.choice([1, 4, 64])):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        chunks[i] = bytes(raw)
    header = {k: v for k, v in frame.header.items() if k != "chunk_sizes"}
    signed = bool(frame.signature)
    return wire.pack_frame(magic, header, chunks, signed=signed) + frame.signature


WEIRD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**31,
    2**63,
    -(2**63) - 1,
    10**30,
    1.5,
    -0.0,
    float("inf"),
    float("nan"),
    "",
    "x",
    "1",
    "0" * 64,
    [],
    [1],
    ["a", "a"],
    {},
    {"a": 1},
    [[["w", [1], "float32"]]],
]


def _weird(rng: random.Random) -> Any:
    return rng.choice(WEIRD_VALUES)


def _edit_json(rng: random.Random, header: dict[str, Any]) -> dict[str, Any]:
    header = json.loads(json.dumps(header))
    keys = list(header)
    action = rng.randrange(8)
    if action == 0 and keys:  # change a field's type or value
        header[rng.choice(keys)] = _weird(rng)
    elif action == 1 and keys:  # drop a field
        del header[rng.choice(keys)]
    elif action == 2:  # chunk_sizes edits
        sizes = list(header.get("chunk_sizes") or [1])
        edit = rng.randrange(7)
        if edit == 0:
            sizes = sizes[::-1]
        elif edit == 1 and len(sizes) > 1:
            sizes[0] += 1
            sizes[-1] -= 1
        elif edit == 2:
            sizes[rng.randrange(len(sizes))] = _weird(rng)
        elif edit == 3:
            sizes.append(rng.choice([1, 0, -5]))
        elif edit == 4:
            sizes = [sum(s for s in sizes if isinstance(s, int))]
        elif edit == 5:
            sizes = [1] * rng.randrange(0, 50)
        else:
            sizes = [float(s) for s in sizes]
        header["chunk_sizes"] = sizes
    elif action == 3:  # round_id / client_id / min_clients and friends
        name = rng.choice(
            [
                "round_id",
                "client_id",
                "min_clients",
                "last_released_round",
                "decryption_budget",
                "decryptions_used",
                "statistical_security",
                "fingerprint",
                "preset",
                "num_chunks",
                "spec_hash",
                "roster_digest",
                "layout",
                "refused",
                "clients",
                "tag",
            ]
        )
        header[name] = _weird(rng)
    elif action == 4 and isinstance(header.get("spec"), list):  # spec edits
        spec = header["spec"]
        entry = spec[rng.randrange(len(spec))]
        if isinstance(entry, list) and len(entry) == 3:
            slot = rng.randrange(3)
            entry[slot] = (
                _weird(rng)
                if rng.random() < 0.5
                else (
                    [rng.choice([0, 1, 5000, 2**31 - 1, 2**30]) for _ in range(rng.randrange(4))]
                    if slot == 1
                    else rng.choice(["float16", "bfloat16", "int64", "w", ""])
                )
            )
        if rng.random() < 0.7:  # keep the hash consistent so parsing goes deeper
            with contextlib.suppress(Exception):
                header["spec_hash"] = secagg.UpdateSpec.from_json(spec).spec_hash
    elif action == 5 and isinstance(header.get("preset"), dict):  # preset description edits
        preset = header["preset"]
        preset[rng.choice(list(preset))] = rng.choice(
            [*WEIRD_VALUES, 4096, 8192, 60, 49, 40, [60, 49], [60, 60], [60, 49, 40], "default"]
        )
    elif action == 6:  # roster / contributors / registry edits
        name = rng.choice(["roster", "contributors", "clients", "tag"])
        value = header.get(name)
        if isinstance(value, list) and value:
            value = value[::-1] if rng.random() < 0.5 else [*value, value[0]]
        header[name] = value if rng.random() < 0.7 else _weird(rng)
    else:  # extra or nested junk
        header[rng.choice(["extra", "kind", ""])] = _weird(rng)
    return header


def header_json_edit(rng: random.Random, data: bytes, magic: bytes) -> bytes:
    frame = _parse(data, magic)
    if frame is None:
        return data
    header = _edit_json(rng, frame.header)
    text = json.dumps(header, separators=(",", ":"), allow_nan=True).encode()
    body = b"".join(frame.chunks)
    if rng.random() < 0.1:  # occasionally leave the prefix inconsistent
        prefix = PREFIX.pack(
            magic, wire.format_version(magic), len(text) + rng.choice([-1, 1]), len(body), 0
        )
        return prefix + text + body
    sig = frame.signature if rng.random() < 0.8 else b""
    prefix = PREFIX.pack(magic, wire.format_version(magic), len(text), len(body), len(sig))
    return prefix + text + body + sig


def header_text_edit(rng: random.Random, data: bytes, magic: bytes) -> bytes:
    """Raw edits of the JSON text: long numbers, non-finite literals, deep nesting."""
    frame = _parse(data, magic)
    if frame is None:
        return data
    text = json.dumps(frame.header, separators=(",", ":"))
    literal = rng.choice(
        [
            "9" * rng.choice([20, 400, 4301, 5000]),
            "Infinity",
            "-Infinity",
            "NaN",
            "1e400",
            "[" * 50 + "]" * 50,
            '"\\ud800"',
            "-0",
            "0.0",
        ]
    )
    digits = [i for i, ch in enumerate(text) if ch.isdigit() and not text[i - 1].isalnum()]
    if digits and rng.random() < 0.8:
        i = rng.choice(digits)
        j = i
        while j < len(text) and (text[j].isdigit() or text[j] in ".eE+-"):
            j += 1
        text = text[:i] + literal + text[j:]
    else:
        text = '{"pad":' + literal + "," + text[1:]
    encoded = text.encode()
    body = b"".join(frame.chunks)
    sig = frame.signature
    prefix = PREFIX.pack(magic, wire.format_version(magic), len(encoded), len(body), len(sig))
    return prefix + encoded + body + sig


MUTATORS: dict[str, Mutator] = {
    "bit_flips": bit_flips,
    "byte_overwrites": byte_overwrites,
    "truncation": truncation,
    "insertion": insertion,
    "deletion": deletion,
    "prefix_edit": prefix_edit,
    "random_with_magic": random_with_magic,
    "chunk_swap": chunk_swap,
    "header_json_edit": header_json_edit,
    "header_text_edit": header_text_edit,
}
WEIGHTS = {
    "bit_flips": 3,
    "byte_overwrites": 2,
    "truncation": 1,
    "insertion": 1,
    "deletion": 1,
    "prefix_edit": 1,
    "random_with_magic": 1,
    "chunk_swap": 2,
    "header_json_edit": 4,
    "header_text_edit": 2,
}


# ---------------------------------------------------------------------------- harness
class Target:
    """Counts the outcome of each case for one loader."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cases = 0
        self.accepted = 0
        self.errors: Counter[str] = Counter()
        self.by_mutator: Counter[str] = Counter()
        self.failures: list[dict[str, Any]] = []

    def run(self, case: int, mutator: str, call: Callable[[], object]) -> bool:
        self.cases += 1
        self.by_mutator[mutator.split("+")[0]] += 1
        try:
            call()
        except SecaggError as exc:
            self.errors[type(exc).__name__] += 1
            return False
        except Exception as exc:  # any other type is the finding
            self.failures.append(
                {
                    "case": case,
                    "mutator": mutator,
                    "type": type(exc).__name__,
                    "message": str(exc)[:200],
                    "where": traceback.format_exc(limit=-2).splitlines()[-4:],
                }
            )
            return False
        self.accepted += 1
        return True

    def summary(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "accepted": self.accepted,
            "errors": dict(self.errors.most_common()),
            "by_mutator": dict(sorted(self.by_mutator.items())),
            "failures": len(self.failures),
            "failure_kinds": dict(
                Counter(f"{f['type']}: {f['message'][:60]}" for f in self.failures).most_common()
            ),
            "first_failures": self.failures[:5],
        }


def _pick(rng: random.Random) -> str:
    names = list(WEIGHTS)
    return rng.choices(names, weights=[WEIGHTS[n] for n in names])[0]


def _mutate(rng: random.Random, data: bytes, magic: bytes) -> tuple[str, bytes]:
    name = _pick(rng)
    out = MUTATORS[name](rng, data, magic)
    if rng.random() < 0.15:  # stack a second mutation now and then
        second = _pick(rng)
        out = MUTATORS[second](rng, out, magic)
        name = f"{name}+{second}"
    return name, out


def resign(data: bytes, key: SigningKey) -> bytes:
    """Re-sign a (mutated) payload that declares a signature, as its client could."""
    if len(data) < PREFIX.size + wire.SIGNATURE_BYTES:
        return data
    if PREFIX.unpack_from(data)[4] != wire.SIGNATURE_BYTES:
        return data
    body = data[: -wire.SIGNATURE_BYTES]
    return body + key.sign(body)


def _semantics(agg: secagg.EncryptedAggregate) -> tuple[Any, ...]:
    """What a release depends on (the contributor order and header extras do not count)."""
    return (
        agg.round_id,
        agg.spec.spec_hash,
        agg.roster,
        frozenset(agg.contributors),
        agg.c0.tobytes(),
        tuple(sorted(agg.seeds.items())),
        tuple(agg.tag),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=int(os.environ.get("SECAGG_FUZZ_CASES", 1000)))
    parser.add_argument("--other-cases", type=int, default=None)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    other_cases = args.other_cases if args.other_cases is not None else max(300, args.cases // 3)
    print(f"fuzz seed={args.seed} update_cases={args.cases} other_cases={other_cases}", flush=True)
    started = time.monotonic()

    rng = random.Random(args.seed)
    fed = secagg.FederationKeys.generate(ROSTER, preset="small")
    material = fed.material
    # Policy min_clients=1, so single-client fuzzed sums reach every release check.
    pristine_holder = fed.key_holder(min_clients=1).to_bytes()

    def fresh_holder() -> secagg.KeyHolder:
        """A key holder with no round released yet (one release per round and key)."""
        return secagg.KeyHolder.from_bytes(material, pristine_holder)

    server_bytes = material.server_context()
    server = secagg.ServerContext.from_bytes(server_bytes)
    values = np.random.default_rng(args.seed).standard_normal(NUMEL) * 0.1
    update = {"w": values}

    def encrypt(cid: str) -> bytes:
        return secagg.encrypt_update(
            material,
            update,
            signing_key=fed.signing_keys[cid],
            weight=2.0,
            weight_bound=4.0,
            round_id=ROUND,
            roster=ROSTER,
        )

    base = encrypt("c")
    assert len(secagg.EncryptedUpdate.from_bytes(base).chunks) == 2

    def fresh() -> secagg.Aggregator:
        agg = secagg.Aggregator(
            server, registry=fed.registry, round_id=ROUND, roster=ROSTER, min_clients=1
        )
        agg.add(encrypt("a"))
        return agg

    def state(agg: secagg.Aggregator) -> bytes:
        return agg.finalize().to_bytes()

    def honest_release(released: secagg.ReleasedAggregate) -> bool:
        """Every client encrypted the same values: an honest release is their mean."""
        tol = 7 * released.mean_error_std * np.sqrt(1 + values**2) + 1e-9
        return bool((np.abs(released.mean["w"] - values) <= tol).all())

    # Updates: one reused aggregator per flavour (holding client "a"), replaced whenever a
    # case is accepted; every rejection must leave its serialized sum byte-identical. An
    # accepted (mutated) update is summed with a's and handed to the key holder, which
    # must refuse the sum or release the honest mean.
    updates = Target("Aggregator.add")
    update_releases = Target("KeyHolder.release(sum with a fuzzed update)")
    aggregators = {False: fresh(), True: fresh()}
    changed_by_rejection = 0
    rejections = 0
    forged_updates_released = 0
    for case in range(args.cases):
        resigned = rng.random() < 0.5
        name, data = _mutate(rng, base, wire.MAGIC_UPDATE)
        if resigned:
            data = resign(data, fed.signing_keys["c"])
        agg = aggregators[resigned]
        before = state(agg)
        if updates.run(case, name, lambda d=data, a=agg: a.add(d)):
            aggregators[resigned] = fresh()
            total = agg.finalize()
            outcome: list[secagg.ReleasedAggregate] = []
            if update_releases.run(
                case, name, lambda t=total, o=outcome: o.append(fresh_holder().release(t))
            ) and not honest_release(outcome[0]):
                forged_updates_released += 1
            continue
        rejections += 1
        if state(agg) != before or agg.contributors != ("a",):
            changed_by_rejection += 1

    # And the last reused aggregator still releases the right mean.
    agg = aggregators[False]
    agg.add(encrypt("b"))
    sum_intact = changed_by_rejection == 0 and honest_release(
        fresh_holder().release(agg.finalize())
    )

    # Aggregates (loaded by the server and by the key holder; accepted ones released, each
    # by a fresh key holder, so that the once-per-round rule does not hide the integrity
    # checks behind RoundAlreadyReleasedError). A release of anything but the honest sum
    # is a forgery that got through.
    honest = fresh()
    honest.add(base)
    honest_aggregate = honest.finalize()
    aggregate_bytes = honest_aggregate.to_bytes()
    honest_semantics = _semantics(honest_aggregate)
    unmutated_releases = honest_release(fresh_holder().release(aggregate_bytes))
    aggregates = Target("EncryptedAggregate.from_bytes")
    releases = Target("KeyHolder.release(fuzzed aggregate)")
    forged_aggregates_released = 0
    holder_context = material.server_context_object()
    for case in range(other_cases):
        name, data = _mutate(rng, aggregate_bytes, wire.MAGIC_AGGREGATE)
        ctx = holder_context if rng.random() < 0.5 else server
        parsed: list[secagg.EncryptedAggregate] = []
        if aggregates.run(
            case,
            name,
            lambda d=data, c=ctx, p=parsed: p.append(secagg.EncryptedAggregate.from_bytes(d, c)),
        ):
            outcome = []
            if releases.run(
                case, name, lambda d=data, o=outcome: o.append(fresh_holder().release(d))
            ) and (_semantics(parsed[0]) != honest_semantics or not honest_release(outcome[0])):
                forged_aggregates_released += 1

    # Contexts, keys, key-holder states, registries.
    loaders: list[tuple[Target, bytes, bytes, Callable[[bytes], object]]] = [
        (
            Target("ServerContext.from_bytes"),
            server_bytes,
            wire.MAGIC_SERVER_CONTEXT,
            secagg.ServerContext.from_bytes,
        ),
        (
            Target("KeyMaterial.from_bytes"),
            material.to_bytes(),
            wire.MAGIC_KEY,
            secagg.KeyMaterial.from_bytes,
        ),
        (
            Target("KeyHolder.from_bytes"),
            pristine_holder,
            wire.MAGIC_KEY_HOLDER,
            lambda d: secagg.KeyHolder.from_bytes(material, d),
        ),
        (
            Target("ClientRegistry.from_bytes"),
            fed.registry.to_bytes(),
            wire.MAGIC_REGISTRY,
            secagg.ClientRegistry.from_bytes,
        ),
        (
            Target("SigningKey.from_bytes"),
            fed.signing_keys["a"].to_bytes(),
            wire.MAGIC_SIGNING_KEY,
            SigningKey.from_bytes,
        ),
    ]
    for target, original, magic, load in loaders:
        for case in range(other_cases):
            name, data = _mutate(rng, original, magic)
            target.run(case, name, lambda d=data, f=load: f(d))  # type: ignore[misc]

    targets = [updates, update_releases, aggregates, releases, *(t for t, *_ in loaders)]
    summary = {
        "seed": args.seed,
        "seconds": round(time.monotonic() - started, 1),
        "sum_intact_after_rejections": sum_intact,
        "unmutated_aggregate_releases": unmutated_releases,
        "rejections_checked": rejections,
        "sums_changed_by_a_rejection": changed_by_rejection,
        "forged_updates_released": forged_updates_released,
        "forged_aggregates_released": forged_aggregates_released,
        "targets": {t.name: t.summary() for t in targets},
        "total_failures": sum(len(t.failures) for t in targets),
    }
    for target in targets:
        print(
            f"{target.name}: {target.cases} cases, {target.accepted} accepted, "
            f"{sum(target.errors.values())} typed errors, {len(target.failures)} failures",
            flush=True,
        )
    print("FUZZ-SUMMARY " + json.dumps(summary, default=str), flush=True)
    ok = (
        summary["total_failures"] == 0
        and sum_intact
        and unmutated_releases
        and forged_updates_released == forged_aggregates_released == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
