"""Latent-space attacks: search near the VAE code of x for a decoded image the classifier
misreads. Song et al. 2018 ("Constructing Unrestricted Adversarial Examples with Generative
Models", arXiv:1805.07894), Zhao et al. 2018 ("Generating Natural Adversarial Examples",
arXiv:1710.11342); Stutz et al. 2019 ran such on-manifold attacks on Fashion-MNIST
("Disentangling Adversarial Robustness and Generalization", arXiv:1812.00740)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustbench_lite import generative
from robustbench_lite.attack import Attack, check_int, check_positive, scores
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat

from .advgan import _margin


def latent_search(classifier: nn.Module, vae: generative.GenerativeModel, x: torch.Tensor, y: torch.Tensor, *,
                  steps: int, lr: float, radius: float, threat: Threat | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam on r, z = E(x) + r with ||r||_2 <= radius, minimising the classifier's C&W margin
    on the decoded image D(z), or with ``threat`` on x + clip(D(z) - x) (projected onto the
    threat around x). Keeps, per point, the first candidate that fools, else the last.

    Returns (images, latent distances ||r||_2, fooled)."""
    with torch.no_grad():
        z0 = vae.encode(x)
    r = torch.zeros_like(z0, requires_grad=True)
    opt = torch.optim.Adam([r], lr=lr)
    best = torch.empty_like(x)
    dist = torch.zeros(len(x))
    fooled = torch.zeros(len(x), dtype=torch.bool)

    def image(rr: torch.Tensor) -> torch.Tensor:
        d = vae.decode(z0 + rr)
        return threat.project(d, x) if threat is not None else d

    for i in range(steps + 1):
        img = image(r)
        margin = _margin(scores(classifier, img, y), y, float("inf"))  # unclamped: < 0 once misread
        with torch.no_grad():
            new = (margin < 0) & ~fooled
            keep = new | ~fooled if i == steps else new
            best[keep] = img.detach()[keep]
            dist[keep] = r.detach().flatten(1).norm(dim=1)[keep]
            fooled |= new
        if i == steps or bool(fooled.all()):
            break
        (g,) = torch.autograd.grad(margin[~fooled].sum() if (~fooled).any() else margin.sum() * 0, r)
        r.grad = g
        opt.step()
        with torch.no_grad():  # project r onto the latent ball
            n = r.flatten(1).norm(dim=1).clamp_min(1e-12)
            r.mul_((radius / n).clamp(max=1.0).view(-1, *([1] * (r.ndim - 1))))
    return best, dist, fooled


@ATTACKS.register("latent", example={"vae": "vae-fmnist", "steps": 30}, conformance_needs="generative_zoo")
@dataclass(frozen=True, kw_only=True)
class Latent(Attack):
    """The L-inf- (or L2-) projected latent attack: x_adv = x + clip(D(E(x) + r) - x) within
    the threat, with r found by :func:`latent_search`. It competes with the other attacks
    under the same budget and is ranked with them; the unrestricted version (the decoded
    image itself) is ``rbl experiment latent``, reported in its own table.

    Args:
        vae: a trained VAE (default ``vae-fmnist``; ``rbl train-generative --model vae``).
        steps: Adam steps on r (default 100).
        lr: Adam's step size (default 0.05).
        radius: bound on ||r||_2 in latent space (default 3, about 3 prior standard deviations).

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --attack latent --eps 0.1
    """

    vae: str = "vae-fmnist"
    steps: int = 100
    lr: float = 0.05
    radius: float = 3.0

    def __post_init__(self) -> None:
        check_int("latent", "steps", self.steps, 1)
        check_positive("latent", "lr", self.lr)
        check_positive("latent", "radius", self.radius)
        generative.require("latent", self.vae, "encode")

    def config(self) -> dict:
        return super().config() | {"vae_sha256": generative.cached(self.vae).weights_sha256}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        if threat.eps == 0:
            return x.clone()
        vae = generative.cached(self.vae).model
        vae.check_input(x)
        out = torch.cat([latent_search(model, vae, xb, yb, steps=self.steps, lr=self.lr, radius=self.radius, threat=threat)[0]
                         for xb, yb in zip(x.split(500), y.split(500), strict=True)])
        return threat.project(out, x)
