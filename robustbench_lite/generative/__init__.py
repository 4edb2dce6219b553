"""Generative models (AE, denoising AE, VAE, GAN), one file each; ``base.py`` is the
:class:`GenerativeModel` protocol and the cache of trained ones. A new model is a new file here:
the registry imports every module of this package on first lookup.

``from robustbench_lite.generative import X`` finds ``X`` in whichever module defines it."""
from robustbench_lite.registry import exports

__getattr__ = exports(__name__)
