"""Benchmarks for secagg: HE cost against a FLARE-style reference and plaintext, DP overhead.

What is measured, one module each:

* :mod:`bench.schemes`: the schemes (``plaintext``, ``flare``, ``secagg:<preset>``) behind
  one interface; :mod:`bench.updates`: synthetic and model-shaped updates;
  :mod:`bench.flare_reference`: NVIDIA FLARE's TenSEAL HE mode, re-created (the anchor).
* :mod:`bench.he_cost`: per-role costs of a round, encryption timed interleaved;
  :mod:`bench.encrypt_profile`: where one encryption's time goes;
  :mod:`bench.release_cost`: the key holder's release against the contributor count;
  :mod:`bench.mac_cost`: what the aggregate MAC costs; :mod:`bench.exactness`: the exact
  presets' releases against the quantised and unquantised means;
  :mod:`bench.memory`: server peak RSS against the client count;
  :mod:`bench.dp_cost`: DP-SGD step overhead; :mod:`bench.round_cost`: HE share of a
  default ``secagg run`` round.
* :mod:`bench.sweep` runs everything (:mod:`bench.plan`, :mod:`bench.phases`), judges the
  targets (:mod:`bench.targets`) and writes ``bench.json``, ``bench.md``
  (:mod:`bench.report`) and PNG plots (:mod:`bench.plots`)::

      python -m bench.sweep --out bench-results [--quick]

* ``bench_*.py`` are pytest-benchmark suites; ``pytest --benchmark-disable`` runs each once
  at small sizes (the fast slice: exact, non-timing assertions only; timings go to
  ``extra_info``).
"""
