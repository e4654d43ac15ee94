"""Bench-only patches of the client's MAC: switch it off, or time it inside a real encryption.

:func:`secagg.encrypt_update` builds a :class:`secagg.crypto._mac.RoundMac` (looked up in
:mod:`secagg.crypto.client` at call time), asks it for one term per chunk
(``chunk_terms``) and, at the end, for the tag (``tag``: the pad and the sum). Both
patches act on exactly those calls and nothing else:

- :func:`null_mac` replaces the class with :class:`NullMac`, whose terms and tag are
  zeros: the same encryption without the MAC's work (its payloads do not verify);
- :func:`mac_timer` wraps the real methods and adds up the time spent in them (in
  this process: use it with ``workers=1``, since forked workers time themselves).

The few per-chunk integer/bytes conversions of the tag assembly that remain in
``encrypt_update`` with :class:`NullMac` cost microseconds per update.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import secagg.crypto.client as client_module
from secagg.crypto._mac import MacScope, RoundMac

__all__ = ["MacTimes", "NullMac", "mac_timer", "null_mac"]


class NullMac:
    """A stand-in for :class:`RoundMac` that computes nothing (terms and tags are zeros).

    Parameters
    ----------
    mac_key : bytes
        Ignored.
    scope : MacScope
        Ignored.
    moduli : sequence of int
        The data primes (one zero per prime).
    degree : int
        Ignored.
    """

    def __init__(self, mac_key: bytes, scope: MacScope, moduli: Sequence[int], degree: int) -> None:
        self._zeros = tuple(0 for _ in moduli)

    def chunk_terms(self, index: int, c0: np.ndarray) -> tuple[int, ...]:
        """Zeros instead of ``<a_index, c0> mod q``."""
        return self._zeros

    def tag(
        self, client_id: str, chunk_terms: Iterable[Sequence[int]], seeds: bytes
    ) -> tuple[int, ...]:
        """Zeros instead of the sum of the terms and the pad."""
        return self._zeros


@contextlib.contextmanager
def null_mac() -> Iterator[None]:
    """Encrypt without the MAC's work while the block runs (payloads will not verify)."""
    saved = getattr(client_module, "RoundMac")  # noqa: B009 - not re-exported
    setattr(client_module, "RoundMac", NullMac)  # noqa: B010
    try:
        yield
    finally:
        setattr(client_module, "RoundMac", saved)  # noqa: B010


@dataclass
class MacTimes:
    """Seconds spent in the MAC's methods while a :func:`mac_timer` block ran."""

    chunk_terms_s: float = 0.0
    tag_s: float = 0.0
    chunk_calls: int = 0

    @property
    def total_s(self) -> float:
        """All MAC time: the per-chunk inner products, the pad and the tag's sum."""
        return self.chunk_terms_s + self.tag_s


def _timed(method: Callable[..., Any], record: Callable[[float], None]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            record(time.perf_counter() - start)

    return wrapper


@contextlib.contextmanager
def mac_timer() -> Iterator[MacTimes]:
    """Time ``RoundMac.chunk_terms`` and ``RoundMac.tag`` (pad included) in this process."""
    times = MacTimes()

    def chunk(seconds: float) -> None:
        times.chunk_terms_s += seconds
        times.chunk_calls += 1

    def tag(seconds: float) -> None:
        times.tag_s += seconds

    saved = RoundMac.chunk_terms, RoundMac.tag
    RoundMac.chunk_terms = _timed(saved[0], chunk)  # type: ignore[method-assign]
    RoundMac.tag = _timed(saved[1], tag)  # type: ignore[method-assign]
    try:
        yield times
    finally:
        RoundMac.chunk_terms, RoundMac.tag = saved  # type: ignore[method-assign]
