"""Generative models (AE, denoising AE, VAE, GAN), one file each; importing the package
registers them in :data:`robustbench_lite.registry.GENERATIVE`."""
from . import autoencoder, gan, vae  # noqa: F401
