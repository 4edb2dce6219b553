"""Training recipes, one file each. Importing this package registers them in ``RECIPES``."""
from . import ensemble_at, fast_at, fgsm_at, pgd_at, standard, trades  # noqa: F401
from .base import Recipe, Step

__all__ = ["Recipe", "Step"]
