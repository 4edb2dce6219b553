"""DCGAN ("Unsupervised Representation Learning with Deep Convolutional Generative
Adversarial Networks", Radford, Metz and Chintala 2016, arXiv:1511.06434), with the
non-saturating GAN loss of Goodfellow et al. 2014, or optionally WGAN-GP ("Improved Training
of Wasserstein GANs", Gulrajani et al. 2017, arXiv:1704.00028): a critic without batch norm,
a gradient penalty of weight 10 on random interpolates, and n_critic critic steps per
generator step."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lite import devices
from robustbench_lite.validation import check_choice, check_int, check_positive
from robustbench_lite.generative import GenerativeModel
from robustbench_lite.registry import GENERATIVE

from ._nets import decoder, encoder


@GENERATIVE.register("gan")
class GAN(GenerativeModel):
    """Generator G: z ~ N(0, I) -> image in [0, 1]; discriminator (or critic) D: image -> score.

    Args:
        latent: dimension of z (default 32).
        width: channels of the first convolution of D and the last of G (default 64).
        loss: ``gan`` (default, non-saturating) or ``wgan-gp``.
        n_critic: critic steps per generator step under ``wgan-gp`` (default 5).
        gp: gradient-penalty weight under ``wgan-gp`` (default 10).
    """

    abilities = frozenset({"sample", "decode"})
    default_lr = 2e-4

    def __init__(self, channels: int, size: int, *, latent: int = 32, width: int = 64, loss: str = "gan",
                 n_critic: int = 5, gp: float = 10.0) -> None:
        super().__init__(channels, size)
        check_int("gan", "latent", latent, 1)
        check_int("gan", "width", width, 1)
        check_choice("gan", "loss", loss, ("gan", "wgan-gp"))
        check_int("gan", "n_critic", n_critic, 1)
        check_positive("gan", "gp", gp)
        self.hparams = {"latent": latent, "width": width, "loss": loss, "n_critic": n_critic, "gp": gp}
        self.latent, self.loss, self.n_critic, self.gp = latent, loss, n_critic, gp
        self.map_shape = (2 * width, size // 4, size // 4)
        flat = math.prod(self.map_shape)
        self.G = nn.Sequential(nn.Linear(latent, flat), nn.BatchNorm1d(flat), nn.ReLU(),
                               nn.Unflatten(1, self.map_shape), decoder(channels, width))
        # A critic must not use batch norm: the penalty is on per-example gradients.
        self.D = nn.Sequential(encoder(channels, width, norm=loss == "gan"), nn.Flatten(), nn.Linear(flat, 1))
        self._step = 0

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.G(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.G(torch.randn(n, self.latent, generator=generator, device=devices.of(self.G)))

    def optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        betas = (0.5, 0.999) if self.loss == "gan" else (0.5, 0.9)
        return [torch.optim.Adam(self.G.parameters(), lr=lr, betas=betas),
                torch.optim.Adam(self.D.parameters(), lr=lr, betas=betas)]

    def train_step(self, x, optimizers, generator):
        opt_g, opt_d = optimizers
        n = len(x)
        fake = self.sample(n, generator)
        d_real, d_fake = self.D(x).squeeze(1), self.D(fake.detach()).squeeze(1)
        if self.loss == "gan":
            d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        else:
            a = torch.rand(n, 1, 1, 1, generator=generator, device=x.device)
            mix = (a * x + (1 - a) * fake.detach()).requires_grad_(True)
            (g,) = torch.autograd.grad(self.D(mix).sum(), mix, create_graph=True)
            d_loss = d_fake.mean() - d_real.mean() + self.gp * ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        out = {"d_loss": d_loss.item()}
        self._step += 1
        if self.loss == "gan" or self._step % self.n_critic == 0:
            score = self.D(fake).squeeze(1)
            g_loss = F.softplus(-score).mean() if self.loss == "gan" else -score.mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            out["g_loss"] = g_loss.item()
        return out

    @torch.no_grad()
    def metrics(self, x, generator):
        s = self.sample(len(x), generator)
        # A crude check that samples match the data's pixel statistics (mean and std).
        return {"sample_pixel_mean": float(s.mean()), "test_pixel_mean": float(x.mean()),
                "sample_pixel_std": float(s.std()), "test_pixel_std": float(x.std())}
