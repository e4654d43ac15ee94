"""Benchmarks for secagg: HE cost against a FLARE-style reference and plaintext, DP overhead.

* :mod:`bench.flare_reference` re-creates NVIDIA FLARE's TenSEAL HE mode (the anchor).
* :mod:`bench._measure` holds the measuring helpers shared by the suites and the sweep.
* ``bench_*.py`` are pytest-benchmark suites; ``pytest --benchmark-disable`` runs each once
  at small sizes (raise them with ``SECAGG_BENCH_SIZES=1e5,1e6``).
* :mod:`bench.sweep` runs the full sweep and writes ``bench.json``, ``bench.md`` and plots::

      python -m bench.sweep --out bench-results [--quick]
"""
