"""Experiments, one file each. Importing this package registers them in ``EXPERIMENTS``."""
from . import feature_maps, fooling, latent, min_norm, nonrobust, transforms, universal  # noqa: F401
from .feature_maps import FeatureMaps
from .fooling import Fooling
from .latent import LatentUnrestricted
from .min_norm import MinNorm
from .nonrobust import NonRobust
from .transforms import Transforms
from .universal import Universal

__all__ = ["FeatureMaps", "Fooling", "LatentUnrestricted", "MinNorm", "NonRobust", "Transforms", "Universal"]
