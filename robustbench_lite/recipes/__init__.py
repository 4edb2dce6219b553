"""Training recipes, one file each. Importing this package registers them in ``RECIPES``."""
from . import standard  # noqa: F401
from .base import Recipe

__all__ = ["Recipe"]
