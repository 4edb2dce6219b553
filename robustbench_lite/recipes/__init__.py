"""Training recipes, one file each. Importing this package registers them in ``RECIPES``."""
from . import fgsm_at, pgd_at, standard, trades  # noqa: F401
from .base import Recipe

__all__ = ["Recipe"]
