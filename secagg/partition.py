"""Temporary alias of :mod:`secagg.protocols.partition` (removed before release)."""

from secagg.protocols.partition import *  # noqa: F403
from secagg.protocols.partition import __all__  # noqa: F401
