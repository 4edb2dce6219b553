"""Latent-space attacks: search near the VAE code of x for a decoded image the classifier
misreads. Song et al. 2018 ("Constructing Unrestricted Adversarial Examples with Generative
Models", arXiv:1805.07894), Zhao et al. 2018 ("Generating Natural Adversarial Examples",
arXiv:1710.11342); Stutz et al. 2019 ran such on-manifold attacks on Fashion-MNIST
("Disentangling Adversarial Robustness and Generalization", arXiv:1812.00740)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustbench_lite.generative import base as generative
from robustbench_lite.attacks.base import Attack, scores
from robustbench_lite.params import choice, integer, positive, value
from robustbench_lite.registry import ATTACKS
from robustbench_lite.rng import PointStreams
from robustbench_lite.threat import Threat

from .advgan import _margin


ANCHORS = ("x", "reconstruction")


def latent_search(classifier: nn.Module, vae: generative.GenerativeModel, x: torch.Tensor, y: torch.Tensor, *,
                  steps: int, lr: float, radius: float, threat: Threat | None, z0: torch.Tensor | None = None,
                  anchor: str = "x") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam on r, z = z0 + r with ||r||_2 <= radius (z0 = E(x) unless given), minimising the
    classifier's C&W margin on the decoded image D(z); with ``threat``, on that image projected
    onto the threat around x: x + clip(D(z) - x) for ``anchor="x"``, or x + clip(D(z) - D(z0))
    for ``anchor="reconstruction"`` (the latent step's change moved onto x, which matters when
    D(z0) is far from x, as for a GAN's projection). Keeps, per point, the first candidate that
    fools, else the last.

    Returns (images, latent distances ||r||_2, fooled)."""
    if z0 is None:
        with torch.no_grad():
            z0 = vae.encode(x)
    with torch.no_grad():
        base = vae.decode(z0) if anchor == "reconstruction" else x
    r = torch.zeros_like(z0, requires_grad=True)
    opt = torch.optim.Adam([r], lr=lr)
    best = torch.empty_like(x)
    dist = torch.zeros(len(x), device=x.device)
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    def image(rr: torch.Tensor) -> torch.Tensor:
        d = vae.decode(z0 + rr)
        return threat.project(x + (d - base), x) if threat is not None else d

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


@ATTACKS.register("latent", example={"source": "vae-fmnist", "steps": 30}, conformance_needs="generative_zoo")
@dataclass(frozen=True, kw_only=True)
class Latent(Attack):
    """The L-inf- (or L2-) projected latent attack: x_adv = x + clip(D(z0 + r) - x) within the
    threat (``anchor=x``), or x + clip(D(z0 + r) - D(z0)) (``anchor=reconstruction``), with r
    found by :func:`latent_search`. z0 is E(x) for a model with an encoder (a VAE) and
    Defense-GAN's projection of x for one without (a GAN). It competes with the other attacks
    under the same budget and is ranked with them; the unrestricted version (the decoded
    image itself) is ``rbl experiment latent``, reported in its own table.

    Against ``defense_gan`` this is the on-manifold attack of Athalye et al. 2018 (Section 5.3)
    in its L-inf form: ``latent:source=gan-fmnist,anchor=reconstruction`` moves x along the
    generator's range, where the projection follows it, and in adaptive mode the search sees
    the real projection in its forward pass (BPDA, EOT).

    The generative models are trained with ``rbl train-generative --model vae|gan``; the
    defaults of ``invert_steps`` and ``invert_restarts`` are Defense-GAN's.

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --attack latent --eps 0.1
        >>> rbl eval --model smallcnn-fmnist-standard --defense defense_gan --attack latent:source=gan-fmnist,anchor=reconstruction --eps 0.1
    """

    batch_invariant = True

    source: str = value("vae-fmnist", "a trained generative model that can decode (gan-fmnist is inverted by "
                                      "projection)", allowed="a generative model that can decode")
    steps: int = integer(100, "Adam steps on r", lo=1)
    lr: float = positive(0.05, "Adam's step size")
    radius: float = positive(3.0, "bound on ||r||_2 in latent space (3 is about 3 prior standard deviations)")
    anchor: str = choice("x", "what the latent step's change is measured from, as above", ANCHORS)
    invert_steps: int = integer(200, "the projection's L, for a model without an encoder", lo=1)
    invert_restarts: int = integer(10, "the projection's R, for a model without an encoder", lo=1)

    def validate(self, method: str) -> None:
        generative.require(method, self.source, "decode")

    def config(self) -> dict:
        loaded = generative.cached(self.source)
        return super().config() | {"source_sha256": loaded.weights_sha256, "source_arch_sha256": loaded.arch_sha256}

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: PointStreams) -> torch.Tensor:
        net = generative.cached(self.source, x.device).model
        net.check_input(x)
        out = []
        for i, (xb, yb) in enumerate(zip(x.split(500), y.split(500), strict=True)):
            if "encode" in net.abilities:
                with torch.no_grad():
                    z0 = net.encode(xb)
            else:
                z0 = generative.invert(net, xb, steps=self.invert_steps, restarts=self.invert_restarts,
                                       generator=generator[i * 500:(i + 1) * 500])
            out.append(latent_search(model, net, xb, yb, steps=self.steps, lr=self.lr, radius=self.radius, threat=threat,
                                     z0=z0, anchor=self.anchor)[0])
        return threat.project(torch.cat(out), x)
