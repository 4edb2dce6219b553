"""Experiments, one file each. Importing this package registers them in ``EXPERIMENTS``."""
from . import fooling, universal  # noqa: F401
from .fooling import Fooling
from .universal import Universal

__all__ = ["Fooling", "Universal"]
