"""Convolutional encoder and decoder shared by the autoencoders, the VAE and the GAN.

Images of size S (divisible by 4) go down to a (width*2, S/4, S/4) map and back up, in the
DCGAN pattern (Radford et al. 2016, arXiv:1511.06434): strided convolutions, no pooling.
"""
from __future__ import annotations

from torch import nn


def encoder(channels: int, width: int, *, norm: bool = True) -> nn.Sequential:
    """(C, S, S) -> (2 * width, S/4, S/4)."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width) if norm else nn.Identity(), nn.LeakyReLU(0.2),
    )


def decoder(channels: int, width: int) -> nn.Sequential:
    """(2 * width, S/4, S/4) -> (C, S, S) in [0, 1]."""
    return nn.Sequential(
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Sigmoid(),
    )
