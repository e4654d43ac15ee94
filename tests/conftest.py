"""Shared fixtures and collection policy for the secagg test suite.

A key holder releases at most one aggregate per round id, in increasing order, and
keeps its own ``min_clients`` policy (default 2). Key fixtures are therefore
function-scoped (generating a federation's keys takes milliseconds): no test inherits
rounds another test already released, and each test makes its key holder with the
policy it needs (``federation.key_holder(min_clients=1)`` for single-client sums).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import secagg

ROSTER = ("a", "b", "c")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``soak``-marked tests unless the run selects them with ``-m soak``."""
    if "soak" in (config.getoption("markexpr", default="") or ""):
        return
    skip = pytest.mark.skip(reason="soak test: run with `-m soak` (make soak)")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(skip)


@pytest.fixture
def federation() -> secagg.FederationKeys:
    """Fresh default-preset keys (exact, N = 8192) of the federation of ``a``, ``b``, ``c``."""
    return secagg.FederationKeys.generate(list(ROSTER))


@pytest.fixture
def small_federation() -> secagg.FederationKeys:
    """Fresh ``small``-preset keys (exact, N = 4096) of the federation of ``a``, ``b``, ``c``."""
    return secagg.FederationKeys.generate(list(ROSTER), preset="small")


@pytest.fixture
def approx_federation() -> secagg.FederationKeys:
    """Fresh ``approx``-preset keys (approximate CKKS, flooded) of ``a``, ``b`` and ``c``."""
    return secagg.FederationKeys.generate(list(ROSTER), preset="approx")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run the test with one torch thread, as ``secagg run``'s clients do (then restore)."""
    import torch  # here, not at the top: most tests never load torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
