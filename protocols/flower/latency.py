"""Shorter retries when a Flower message's contents are still being uploaded.

Flower 1.42 sends a message's metadata first and its contents (objects) after; a
receiver that pulls in between gets "object unavailable" and retries after 1 s, then
2 s, 4 s, up to 10 s (``flwr.supercore.inflatable.inflatable_utils.pull_objects``).
With secagg's fast polling that window is hit on most messages, so every exchange of a
round waited about a second for data that arrived milliseconds later.
:func:`quick_pulls` makes one Flower module retry after 50 ms, doubling to at most
0.5 s (with the same overall limits), while it is active.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator

__all__ = ["PULL_BACKOFF_CAP", "PULL_INITIAL_BACKOFF", "quick_pulls"]

#: First retry delay (s) for contents still being uploaded (Flower's own: 1 s).
PULL_INITIAL_BACKOFF = 0.05
#: Largest retry delay (s) (Flower's own: 10 s).
PULL_BACKOFF_CAP = 0.5


@contextlib.contextmanager
def quick_pulls(module: types.ModuleType) -> Iterator[None]:
    """Within the block, ``module.pull_objects`` retries after 50 ms, doubling to 0.5 s.

    A module without ``pull_objects`` is left alone (for example a test double's).
    """
    original = getattr(module, "pull_objects", None)
    if original is None or isinstance(original, functools.partial):
        yield
        return
    module.pull_objects = functools.partial(  # type: ignore[attr-defined]
        original, initial_backoff=PULL_INITIAL_BACKOFF, backoff_cap=PULL_BACKOFF_CAP
    )
    try:
        yield
    finally:
        module.pull_objects = original  # type: ignore[attr-defined]
