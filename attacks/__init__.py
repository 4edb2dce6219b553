"""Attacks, one file each. Importing this package registers them in ``ATTACKS``."""
from . import (advgan, apgd, bim, deepfool, fab, fgsm, foolbox_adapter, gap, gradient_ascent, illc, latent, lbfgs, pgd,  # noqa: F401
               square, transfer, universal)
from .advgan import AdvGAN
from .apgd import APGDCE, APGDDLR
from .bim import BIM
from .deepfool import DeepFool
from .fab import FAB
from .fgsm import FGSM
from .foolbox_adapter import FoolboxAttack
from .gap import GAP
from .gradient_ascent import GradientAscent
from .illc import ILLC
from .latent import Latent
from .lbfgs import LBFGS
from .pgd import PGD
from .square import Square
from .transfer import Transfer
from .universal import Universal

__all__ = ["APGDCE", "APGDDLR", "GAP", "BIM", "AdvGAN", "DeepFool", "FAB", "FGSM", "FoolboxAttack", "GradientAscent", "ILLC", "LBFGS",
           "Latent", "PGD", "Square", "Transfer", "Universal"]
