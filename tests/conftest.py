"""Shared fixtures and collection policy for the secagg test suite.

A key holder releases at most one aggregate per round id, in increasing order, and
keeps its own ``min_clients`` policy (default 2). Key fixtures are therefore
function-scoped (generation takes milliseconds): no test inherits rounds another test
already released. Tests that release a single client's sum generate their keys with
``min_clients=1``.
"""

from __future__ import annotations

import pytest

import secagg


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``soak``-marked tests unless the run selects them with ``-m soak``."""
    if "soak" in (config.getoption("markexpr", default="") or ""):
        return
    skip = pytest.mark.skip(reason="soak test: run with `-m soak` (make soak)")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(skip)


@pytest.fixture
def keys() -> secagg.KeyHolder:
    """A fresh default-preset key holder (each releases a round id at most once)."""
    return secagg.KeyHolder.generate()


@pytest.fixture
def small_keys() -> secagg.KeyHolder:
    """A fresh ``small``-preset key holder with the default ``min_clients=2`` policy."""
    return secagg.KeyHolder.generate("small")
