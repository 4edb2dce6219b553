"""Experiments, one file each. Importing this package registers them in ``EXPERIMENTS``."""
from . import fooling, latent, min_norm, transforms, universal  # noqa: F401
from .fooling import Fooling
from .latent import LatentUnrestricted
from .min_norm import MinNorm
from .transforms import Transforms
from .universal import Universal

__all__ = ["Fooling", "LatentUnrestricted", "MinNorm", "Transforms", "Universal"]
