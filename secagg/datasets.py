"""Temporary alias of :mod:`secagg.protocols.datasets` (removed before release)."""

from secagg.protocols.datasets import *  # noqa: F403
from secagg.protocols.datasets import __all__  # noqa: F401
