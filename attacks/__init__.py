"""Attacks, one file each. Importing this package registers them in ``ATTACKS``."""
from . import apgd, bim, deepfool, fgsm, foolbox_adapter, gradient_ascent, illc, lbfgs, pgd, square, transfer, universal  # noqa: F401
from .apgd import APGDCE, APGDDLR
from .bim import BIM
from .deepfool import DeepFool
from .fgsm import FGSM
from .foolbox_adapter import FoolboxAttack
from .gradient_ascent import GradientAscent
from .illc import ILLC
from .lbfgs import LBFGS
from .pgd import PGD
from .square import Square
from .transfer import Transfer
from .universal import Universal

__all__ = ["APGDCE", "APGDDLR", "BIM", "DeepFool", "FGSM", "FoolboxAttack", "GradientAscent", "ILLC", "LBFGS", "PGD", "Square", "Transfer", "Universal"]
