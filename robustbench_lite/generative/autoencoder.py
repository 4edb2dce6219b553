"""Convolutional autoencoders, plain and denoising: the reformer and detector networks of
MagNet ("MagNet: a Two-Pronged Defense against Adversarial Examples", Meng and Chen 2017,
arXiv:1705.09064), which trains them on clean images with Gaussian noise of volume 0.1 added
to the input (the denoising autoencoder of Vincent et al. 2008)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lite.validation import check_int, check_interval
from robustbench_lite.generative import GenerativeModel
from robustbench_lite.registry import GENERATIVE

from ._nets import decoder, encoder


@GENERATIVE.register("ae")
class AutoEncoder(GenerativeModel):
    """x -> conv encoder -> (bottleneck channels, S/4, S/4) -> conv decoder -> x_hat in [0, 1],
    trained on the mean squared error.

    Args:
        width: channels of the first convolution (default 32).
        bottleneck: channels of the code map (default 4: 196 numbers for a 28x28 image).
        noise: std of the Gaussian noise added to training inputs (default 0: plain AE).
    """

    abilities = frozenset({"reconstruct", "encode"})
    default_noise = 0.0

    def __init__(self, channels: int, size: int, *, width: int = 32, bottleneck: int = 4,
                 noise: float | None = None) -> None:
        super().__init__(channels, size)
        name = type(self).__name__
        check_int(name, "width", width, 1)
        check_int(name, "bottleneck", bottleneck, 1)
        noise = self.default_noise if noise is None else noise
        check_interval(name, "noise", noise, 0, 1, "[]")
        self.hparams = {"width": width, "bottleneck": bottleneck, "noise": noise}
        self.noise = noise
        self.enc = nn.Sequential(encoder(channels, width), nn.Conv2d(2 * width, bottleneck, 3, 1, 1))
        self.dec = nn.Sequential(nn.Conv2d(bottleneck, 2 * width, 3, 1, 1), nn.ReLU(), decoder(channels, width))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.dec(self.enc(x))

    def optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=lr)]

    def train_step(self, x, optimizers, generator):
        noisy = x if self.noise == 0 else (x + self.noise * torch.randn(x.shape, generator=generator, device=x.device)).clamp(0, 1)
        loss = F.mse_loss(self.dec(self.enc(noisy)), x)
        optimizers[0].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[0].step()
        return {"mse": loss.item()}

    @torch.no_grad()
    def metrics(self, x, generator):
        rec = torch.cat([self.reconstruct(b) for b in x.split(500)])
        err = (rec - x).flatten(1)
        return {"test_mse": float(err.pow(2).mean()), "test_l1_per_image": float(err.abs().mean(1).mean())}


@GENERATIVE.register("dae")
class DenoisingAutoEncoder(AutoEncoder):
    """The autoencoder trained to remove Gaussian noise of std 0.1 (MagNet's setting)."""

    default_noise = 0.1
