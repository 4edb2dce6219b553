"""Attacks, one file each. Importing this package registers them in ``ATTACKS``."""
from . import bim, fgsm, foolbox_adapter, gradient_ascent, illc, pgd  # noqa: F401
from .bim import BIM
from .fgsm import FGSM
from .foolbox_adapter import FoolboxAttack
from .gradient_ascent import GradientAscent
from .illc import ILLC
from .pgd import PGD

__all__ = ["BIM", "FGSM", "FoolboxAttack", "GradientAscent", "ILLC", "PGD"]
