"""Generative models (AE, VAE, GAN) used as attack generators and purifiers."""
