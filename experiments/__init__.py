"""Experiments, one file each. Importing this package registers them in ``EXPERIMENTS``."""
from . import universal  # noqa: F401
from .universal import Universal

__all__ = ["Universal"]
