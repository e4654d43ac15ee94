"""Shared fixtures and collection policy for the secagg test suite."""

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
