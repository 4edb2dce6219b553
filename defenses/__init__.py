"""Defenses, one file each. Importing this package registers them in ``DEFENSES``."""
from . import (  # noqa: F401
               bit_depth,
               defense_gan,
               feature_squeeze,
               gaussian_noise,
               jpeg,
               magnet,
               median,
               random_resize_pad,
               safetynet,
               tv_min,
               vae_purify,
)
from .bit_depth import BitDepth
from .defense_gan import DefenseGAN
from .feature_squeeze import FeatureSqueeze
from .gaussian_noise import GaussianNoise
from .jpeg import JPEG
from .magnet import MagNet, MagnetDetector, MagnetReformer
from .median import Median
from .random_resize_pad import RandomResizePad
from .safetynet import SafetyNet
from .tv_min import TVMin
from .vae_purify import VAEPurify

__all__ = ["JPEG", "BitDepth", "DefenseGAN", "FeatureSqueeze", "GaussianNoise", "MagNet", "MagnetDetector", "MagnetReformer",
           "Median", "RandomResizePad", "SafetyNet", "TVMin", "VAEPurify"]
