"""``bench.md``'s tables behind the targets: encryption, wire, MAC, exactness, memory."""

from __future__ import annotations

from ._markdown import Results, fmt, label, table
from .memory import memory_slope, series, series_label
from .plan import SweepPlan

__all__ = [
    "exact_section",
    "interleaved_section",
    "mac_section",
    "memory_section",
    "profile_section",
    "wire_section",
]


def interleaved_section(results: Results, plan: SweepPlan) -> list[str]:
    """Client encryption of the schemes timed in turn in a fresh process."""
    ratio = results.get("encrypt_interleaved")
    if not ratio:
        return []
    rows = [
        [
            name,
            f"{m['wall_us_per_param']:.3f}",
            f"{m['cpu_us_per_param']:.3f}",
            f"{ratio['speedup_wall'][name]:.2f}",
            f"{ratio['speedup_cpu'][name]:.2f}",
        ]
        for name, m in ratio["medians"].items()
    ]
    header = ["scheme", "wall µs/param", "CPU µs/param", "FLARE ÷ scheme (wall)", "(CPU)"]
    return [
        f"## Client encryption side by side at {label(ratio['num_params'])} (interleaved)",
        "",
        f"Medians of {ratio['repeats']} encryptions per scheme, timed in turn (the order "
        "rotating) in one fresh process with torch imported and one torch thread, as a "
        "client of `secagg run` has. CPU time is the calling process's: forked workers' "
        "time is not in it.",
        "",
        *table(header, rows),
        "",
    ]


def profile_section(results: Results, plan: SweepPlan) -> list[str]:
    """Exclusive time per stage of a one-process encryption."""
    profile = results.get("encrypt_profile")
    if not profile:
        return []
    stages, flatten = profile["stages"], profile["flatten"]
    total = stages["total_s"]
    rows = [
        [name, f"{seconds * 1e3:.2f}", f"{seconds / total:.1%}"]
        for name, seconds in sorted(stages["stages"].items(), key=lambda item: -item[1])
    ]
    return [
        f"## Where one-process encryption time goes ({label(stages['num_params'])} values, "
        f"{stages['chunks']} chunks, {total * 1e3:.0f} ms)",
        "",
        "Exclusive time per stage of `encrypt_update` (`workers=1`), medians; see "
        "`bench/encrypt_profile.py` for what each stage wraps.",
        "",
        *table(["stage", "ms", "share"], rows),
        "",
        f"Flattening the float32 torch update to float64 (`secagg/crypto/spec.py`, "
        f"`Tensor.to(float64)` on torch's thread pool): {flatten['one_thread_s'] * 1e3:.1f} "
        f"ms with one torch thread, {flatten['all_threads_s'] * 1e3:.1f} ms with "
        f"{flatten['threads']}; through `Tensor.numpy()` {flatten['numpy_s'] * 1e3:.1f} ms. "
        "The sweep runs with one torch thread, as `secagg run` does.",
        "",
    ]


def wire_section(results: Results, plan: SweepPlan) -> list[str]:
    """Wire bytes of the default preset and of plaintext at each size."""
    wire = results.get("wire", [])
    if not wire:
        return []
    rows = [
        [
            label(r["num_params"]),
            str(r["chunks"]),
            f"{r['bytes_per_param']:.3f}",
            f"{r['plaintext_bytes_per_param']:.3f}",
            f"{r['plaintext_float32_bytes_per_param']:.3f}",
            f"{r['plaintext_bytes_per_param'] / r['bytes_per_param']:.2f}",
        ]
        for r in wire
    ]
    header = ["size", "chunks", "secagg default B/param", "plaintext (float64, sent)",
              "plaintext if float32", "plaintext ÷ secagg"]  # fmt: skip
    return [
        "## Wire size of the default preset",
        "",
        f"Asymptote {wire[0]['asymptotic_bytes_per_param']:.3f} B/param (full chunks of "
        "16,384 values: 32-byte seed + 8,192 coefficients at 7.5 bytes). The plaintext "
        "baseline frames float64 values today; the float32 column is the same frame "
        "with 4-byte values.",
        "",
        *table(header, rows),
        "",
    ]


def _mac_bytes_rows(results: Results) -> list[list[str]]:
    return [
        [
            label(r["num_params"]),
            str(r["payload_bytes"]),
            str(r["tag_bytes"]),
            f"{r['tag_share']:.4%}",
            f"{r['signature_share']:.4%}",
        ]
        for r in results.get("wire", [])
    ]


def mac_section(results: Results, plan: SweepPlan) -> list[str]:
    """What the MAC costs: client time (A/B and in situ), bytes, the key holder's check."""
    mac = results.get("mac", {})
    if not mac:
        return []
    out = ["## MAC cost", ""]
    for mode, ab in mac.get("ab", {}).items():
        out.append(
            f"- A/B at {label(ab['num_params'])} ({mode.replace('_', ' ')}, {ab['pairs']} "
            f"pairs back to back, ABBA order, fresh process): {ab['overhead']:+.2%} "
            f"encryption time (median of the pairs' ratios; ratio of the medians "
            f"{ab['overhead_of_medians']:+.2%})."
        )
    situ = mac.get("in_situ")
    if situ:
        out.append(
            f"- In situ at {label(situ['num_params'])} (one process, time inside "
            f"`RoundMac.chunk_terms` and `RoundMac.tag`): {situ['overhead']:+.2%} of the rest "
            f"of the encryption, {situ['mac_us_per_chunk']:.0f} µs per chunk "
            f"({situ['chunks']} chunks)."
        )
    release = mac.get("release")
    if release:
        out.append(
            f"- Key holder at {label(release['num_params'])}, {release['clients']} clients: "
            f"`KeyHolder.verify` {release['verify_s'] * 1e3:.1f} ms of a "
            f"{release['release_s'] * 1e3:.0f} ms release ({release['verify_share']:.1%})."
        )
    rows = _mac_bytes_rows(results)
    if rows:
        header = ["size", "payload B", "tag B", "tag share", "signature (64 B) share"]
        out += ["", *table(header, rows)]
    return [*out, ""]


def exact_section(results: Results, plan: SweepPlan) -> list[str]:
    """The exact presets' releases against the quantised and the unquantised means."""
    rows_in = results.get("exact", [])
    if not rows_in:
        return []
    rows = [
        [
            r["preset"],
            f"{r['max_abs_diff_quantised']:g}",
            fmt(r["mean_error_std"]),
            fmt(r["rms_error"]),
            f"{r['rms_sigmas']:.3f}",
            f"{r['max_sigmas']:.2f}",
            f"{r['flooding_std']:g}",
        ]
        for r in rows_in
    ]
    header = ["preset", "max |release − quantised mean|", "stated σ", "RMS error",
              "RMS ÷ σ", "max ÷ σ", "flooding σ"]  # fmt: skip
    first = rows_in[0]
    return [
        f"## Exact presets ({label(first['num_params'])} float64 values, "
        f"{first['clients']} clients, own updates and weights)",
        "",
        "Each client's quantised integers are recorded by wrapping "
        "`FieldLayout.quantize`, summed in the clear and dequantised as the layout "
        "defines: the released mean must equal that exactly. The error columns compare "
        "with the unquantised weighted mean.",
        "",
        *table(header, rows),
        "",
    ]


def memory_section(results: Results, plan: SweepPlan) -> list[str]:
    """Server peak RSS growth against the client count, per scheme."""
    memory = results.get("memory", [])
    if not memory:
        return []
    rows = []
    for name in dict.fromkeys(series_label(r) for r in memory):
        found = series(memory, name)
        by_count = {r["clients"]: r for r in found}
        slope = memory_slope(found)
        growth = [
            f"{by_count[n]['growth_kb'] / 1024:.1f}" if n in by_count else "n/a"
            for n in plan.memory_clients
        ]
        rows.append([
            name, f"{found[0]['payload_bytes'] / 2**20:.2f}", *growth,
            f"{slope / 1024:+.1f}", f"{found[0]['seed_bytes_per_client'] / 1024:.1f}",
            f"{found[0]['rss_before_kb'] / 1024:.0f}",
        ])  # fmt: skip
    header = ["scheme", "payload MiB", *(f"{n} clients: growth MiB" for n in plan.memory_clients),
              "slope KiB/client", "seeds KiB/client", "RSS before adds MiB"]  # fmt: skip
    return [
        f"## Server peak memory against clients ({label(plan.memory_params)} values)",
        "",
        "A fresh process per cell loads what the server is provisioned with, then reads "
        "and adds real payloads one at a time and finalizes; growth = peak RSS (`VmHWM`, "
        "reset after set-up) minus the RSS before the first add. `(mmap ≥ 1024 KiB)`: the "
        "same with glibc's mmap threshold fixed (`MALLOC_MMAP_THRESHOLD_`), so freed "
        "payload buffers are returned to the system instead of staying in the heap: what "
        "is left is what the server keeps.",
        "",
        *table(header, rows),
        "",
    ]
