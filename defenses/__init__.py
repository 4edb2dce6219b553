"""Defenses, one file each. Importing this package registers them in ``DEFENSES``."""
from . import bit_depth, gaussian_noise, jpeg, median, random_resize_pad, tv_min  # noqa: F401
from .bit_depth import BitDepth
from .gaussian_noise import GaussianNoise
from .jpeg import JPEG
from .median import Median
from .random_resize_pad import RandomResizePad
from .tv_min import TVMin

__all__ = ["JPEG", "BitDepth", "GaussianNoise", "Median", "RandomResizePad", "TVMin"]
