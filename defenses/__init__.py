"""Defenses, one file each. Importing this package registers them in ``DEFENSES``."""
from . import bit_depth, feature_squeeze, gaussian_noise, jpeg, median, random_resize_pad, safetynet, tv_min  # noqa: F401
from .bit_depth import BitDepth
from .feature_squeeze import FeatureSqueeze
from .gaussian_noise import GaussianNoise
from .jpeg import JPEG
from .median import Median
from .random_resize_pad import RandomResizePad
from .safetynet import SafetyNet
from .tv_min import TVMin

__all__ = ["JPEG", "BitDepth", "FeatureSqueeze", "GaussianNoise", "Median", "RandomResizePad", "SafetyNet", "TVMin"]
