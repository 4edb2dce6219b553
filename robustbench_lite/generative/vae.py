"""Variational autoencoder: "Auto-Encoding Variational Bayes", Kingma and Welling 2014,
arXiv:1312.6114. Gaussian encoder q(z|x) = N(mu(x), diag sigma(x)^2), standard normal prior,
and a Bernoulli or fixed-variance Gaussian decoder p(x|z); trained on the negative ELBO with
the reparameterisation trick."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lite.validation import check_choice, check_int, check_interval
from robustbench_lite.generative import GenerativeModel
from robustbench_lite.registry import GENERATIVE

from ._nets import decoder, encoder


@GENERATIVE.register("vae")
class VAE(GenerativeModel):
    """Args:
        latent: dimension of z (default 16).
        width: channels of the first convolution (default 32).
        likelihood: ``bernoulli`` (default; pixels as probabilities) or ``gaussian``.
        sigma: the Gaussian decoder's fixed std (default 0.1).

    The card's ``test_elbo`` is the mean ELBO per test image in nats (a lower bound on
    log p(x); higher is better), with one sample of z per image.
    """

    abilities = frozenset({"reconstruct", "sample", "encode", "decode"})

    def __init__(self, channels: int, size: int, *, latent: int = 16, width: int = 32,
                 likelihood: str = "bernoulli", sigma: float = 0.1) -> None:
        super().__init__(channels, size)
        check_int("vae", "latent", latent, 1)
        check_int("vae", "width", width, 1)
        check_choice("vae", "likelihood", likelihood, ("bernoulli", "gaussian"))
        check_interval("vae", "sigma", sigma, 0, 1, "(]")
        self.hparams = {"latent": latent, "width": width, "likelihood": likelihood, "sigma": sigma}
        self.latent, self.likelihood, self.sigma = latent, likelihood, sigma
        self.map_shape = (2 * width, size // 4, size // 4)
        flat = math.prod(self.map_shape)
        self.enc = nn.Sequential(encoder(channels, width), nn.Flatten(), nn.Linear(flat, 2 * latent))
        self.fc = nn.Linear(latent, flat)
        self.dec = decoder(channels, width)
        self.dec[-1] = nn.Identity()  # the likelihood decides how logits become pixels

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.enc(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 8)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

    def _out(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(F.relu(self.fc(z)).view(-1, *self.map_shape))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self._out(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out.clamp(0, 1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean at the posterior mean: deterministic and differentiable."""
        self.check_input(x)
        return self.decode(self.encode(x))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.decode(torch.randn(n, self.latent, generator=generator, device=self.fc.weight.device))

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per image: E_q[log p(x|z)] - KL(q(z|x) || N(0, I)), one reparameterised sample."""
        mu, logvar = self.posterior(x)
        z = mu + torch.randn(mu.shape, generator=generator, device=mu.device) * (0.5 * logvar).exp()
        out = self._out(z)
        if self.likelihood == "bernoulli":
            rec = -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        else:
            var = self.sigma ** 2
            rec = (-0.5 * (x - out) ** 2 / var - 0.5 * math.log(2 * math.pi * var)).flatten(1).sum(1)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)
        return rec - kl

    def optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=lr)]

    def train_step(self, x, optimizers, generator):
        elbo = self.elbo(x, generator).mean()
        optimizers[0].zero_grad(set_to_none=True)
        (-elbo).backward()
        optimizers[0].step()
        return {"elbo": elbo.item()}

    @torch.no_grad()
    def metrics(self, x, generator):
        elbo = torch.cat([self.elbo(b, generator) for b in x.split(500)])
        rec = torch.cat([self.reconstruct(b) for b in x.split(500)])
        return {"test_elbo": float(elbo.mean()), "test_mse": float((rec - x).pow(2).mean())}
