"""Route filters (Pingap's plugins with typed configs): see :mod:`ferryman.filters.base`."""

from .base import PHASES, Filter, implemented
from .registry import kinds, lookup, register

__all__ = ["PHASES", "Filter", "implemented", "kinds", "lookup", "register"]
