"""Fuzz secagg's byte loaders with corrupted payloads (run in a subprocess by test_fuzz.py).

Every case must be accepted or raise a :class:`secagg.errors.SecaggError` subclass; any
other exception is a failure, and a crash (segfault, abort) kills the process, which the
calling test sees as a non-zero return code. The last line printed is
``FUZZ-SUMMARY <json>`` with the seed and per-target counts.

Usage::

    python tests/fuzz_payloads.py [--cases N] [--other-cases M] [--seed S]

``--cases`` defaults to ``$SECAGG_FUZZ_CASES`` or 1000 (update payloads); ``--other-cases``
(aggregates, server contexts, key files, each) defaults to max(300, cases // 3).
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
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import secagg
from secagg import wire
from secagg.errors import SecaggError

PREFIX = struct.Struct(">4sHIQH")
ROSTER = ["a", "b", "c"]
ROUND = 3
NUMEL = 5000  # two ciphertext chunks under preset "small"
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
        return PREFIX.pack(magic, 1, len(header), len(body), 0) + header + body
    # consistent prefix, valid JSON header with random chunk sizes, random body
    sizes = [rng.randrange(1, 2000) for _ in range(rng.randrange(1, 4))]
    text = json.dumps({"chunk_sizes": sizes, "kind": "x"}).encode()
    body = rng.randbytes(sum(sizes))
    return PREFIX.pack(magic, 1, len(text), len(body), 0) + text + body


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
    return wire.pack_frame(magic, header, chunks)


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
    elif action == 6:  # roster / contributors edits
        name = rng.choice(["roster", "contributors"])
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
        return PREFIX.pack(magic, 1, len(text) + rng.choice([-1, 1]), len(body), 0) + text + body
    sig = frame.signature if rng.random() < 0.5 else b""
    return PREFIX.pack(magic, 1, len(text), len(body), len(sig)) + text + body + sig


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
    return PREFIX.pack(magic, 1, len(encoded), len(body), 0) + encoded + body


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
    torch.manual_seed(args.seed)
    # Policy min_clients=1, so single-client fuzzed aggregates reach every release check.
    keys = secagg.KeyHolder.generate("small", min_clients=1)
    pristine_key = keys.to_bytes()  # before any release: round state -1

    def fresh_holder() -> secagg.KeyHolder:
        """A copy of the key with no round released yet (one release per round and key)."""
        return secagg.KeyHolder.from_bytes(pristine_key)

    server_bytes = keys.server_context()
    server = secagg.ServerContext.from_bytes(server_bytes)
    signer = Ed25519PrivateKey.generate()
    update = {"w": torch.randn(NUMEL, dtype=torch.float64) * 0.1}

    def encrypt(cid: str, signed: bool = False) -> bytes:
        return secagg.encrypt_update(
            keys,
            update,
            weight=2.0,
            weight_bound=4.0,
            round_id=ROUND,
            client_id=cid,
            roster=ROSTER,
            signing_key=signer if signed else None,
        )

    base_plain = encrypt("c")
    base_signed = encrypt("c", signed=True)
    assert len(secagg.EncryptedUpdate.from_bytes(base_plain).chunks) == 2

    def fresh(signed: bool) -> secagg.Aggregator:
        agg = secagg.Aggregator(
            server,
            round_id=ROUND,
            roster=ROSTER,
            min_clients=1,
            client_keys={"a": signer.public_key(), "c": signer.public_key()} if signed else None,
        )
        agg.add(encrypt("a", signed=signed))
        return agg

    def state(agg: secagg.Aggregator) -> bytes:
        return agg.finalize().to_bytes()

    # Updates: one reused aggregator per flavour (holding client "a"), replaced whenever a
    # case is accepted; every rejection must leave its serialized sum byte-identical.
    updates = Target("Aggregator.add")
    aggregators = {False: fresh(False), True: fresh(True)}
    changed_by_rejection = 0
    rejections = 0
    for case in range(args.cases):
        signed = rng.random() < 0.25
        name, data = _mutate(rng, base_signed if signed else base_plain, wire.MAGIC_UPDATE)
        agg = aggregators[signed]
        before = state(agg)
        if updates.run(case, name, lambda d=data, a=agg: a.add(d)):
            aggregators[signed] = fresh(signed)
            continue
        rejections += 1
        if state(agg) != before or agg.contributors != ("a",):
            changed_by_rejection += 1

    # And the last reused aggregator still releases the right mean.
    agg = aggregators[False]
    agg.add(encrypt("b"))
    release = keys.release(agg.finalize())
    exact = update["w"].numpy()
    tol = 7 * release.mean_error_std * np.sqrt(1 + exact**2) + 1e-9
    sum_intact = changed_by_rejection == 0 and bool(
        (np.abs(release.mean["w"].numpy() - exact) <= tol).all()
    )

    # Aggregates (loaded by the server and by the key holder; accepted ones released, each
    # by a fresh copy of the key, so that the once-per-round rule does not hide the
    # integrity checks behind RoundAlreadyReleasedError).
    aggregate_bytes = secagg.EncryptedAggregate.from_update(server, base_plain).to_bytes()
    unmutated_release = fresh_holder().release(aggregate_bytes)
    unmutated_releases = unmutated_release.contributors == ("c",)
    aggregates = Target("EncryptedAggregate.from_bytes")
    releases = Target("KeyHolder.release(fuzzed aggregate)")
    for case in range(other_cases):
        name, data = _mutate(rng, aggregate_bytes, wire.MAGIC_AGGREGATE)
        holder = rng.random() < 0.5
        ctx: Any = keys if holder else server
        if aggregates.run(
            case,
            name,
            lambda d=data, c=ctx: secagg.EncryptedAggregate.from_bytes(d, c),
        ):
            releases.run(case, name, lambda d=data: fresh_holder().release(d, min_clients=1))

    # Server contexts.
    contexts = Target("ServerContext.from_bytes")
    for case in range(other_cases):
        name, data = _mutate(rng, server_bytes, wire.MAGIC_SERVER_CONTEXT)
        contexts.run(case, name, lambda d=data: secagg.ServerContext.from_bytes(d))

    # Key files.
    key_bytes = keys.to_bytes()
    key_files = Target("KeyHolder.from_bytes")
    for case in range(other_cases):
        name, data = _mutate(rng, key_bytes, wire.MAGIC_KEY)
        key_files.run(case, name, lambda d=data: secagg.KeyHolder.from_bytes(d))

    targets = [updates, aggregates, releases, contexts, key_files]
    summary = {
        "seed": args.seed,
        "seconds": round(time.monotonic() - started, 1),
        "sum_intact_after_rejections": sum_intact,
        "unmutated_aggregate_releases": unmutated_releases,
        "rejections_checked": rejections,
        "sums_changed_by_a_rejection": changed_by_rejection,
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
    ok = summary["total_failures"] == 0 and sum_intact and unmutated_releases
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
