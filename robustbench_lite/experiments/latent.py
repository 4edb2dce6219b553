"""Unrestricted latent-space adversarial examples: decoded images near the VAE code of a test
point that the classifier misreads, with no eps around the original (Song et al. 2018,
arXiv:1805.07894; Stutz et al. 2019, arXiv:1812.00740, on Fashion-MNIST). They are not
comparable with eps-bounded attacks, so they get their own table; the projected version is
the ``latent`` attack."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from robustbench_lite.attacks.latent import latent_search
from robustbench_lite.generative import base as generative
from robustbench_lite.params import integer, positive, value
from robustbench_lite.inference import eval_mode
from robustbench_lite.data import Split
from robustbench_lite.experiments.base import Experiment, Outcome
from robustbench_lite.inference import predictions
from robustbench_lite.registry import EXPERIMENTS
from robustbench_lite.zoo import LoadedModel

EXAMPLES = 8


@EXPERIMENTS.register("latent")
@dataclass(frozen=True, kw_only=True)
class LatentUnrestricted(Experiment):
    """Per model: the share of test points whose VAE reconstruction D(E(x)) the classifier
    reads correctly (the baseline: the attack starts there) and, among the points correct on
    both x and D(E(x)), the share for which a latent step of L2 size at most ``radius``
    yields a misread decoded image; with the latent distances and the image distances to x
    of the successes. Eight examples (x, D(E(x)), adversarial decode) are stored.

    Example:
        >>> rbl experiment latent --models smallcnn-fmnist-standard smallcnn-fmnist-pgd_at
    """

    vae: str = value("vae-fmnist", "a trained VAE: a cache name or a checkpoint folder",
                     allowed="a generative model that can encode")
    radius: float = positive(1.0, "bound on the latent step ||r||_2")
    steps: int = integer(100, "Adam steps on r", lo=1)
    lr: float = positive(0.05, "the Adam step size on r")
    n: int = integer(500, "test points", lo=1)

    def validate(self, method: str) -> None:
        generative.require(method, self.vae, "encode")  # last: it loads the model

    def config(self) -> dict:
        return super().config() | {"vae_sha256": generative.cached(self.vae).weights_sha256}

    def run(self, models: Sequence[LoadedModel], train: Split, test: Split, *, seed: int) -> list[Outcome]:
        vae = generative.cached(self.vae, test.images.device).model
        sub = test.first(min(self.n, len(test)))
        x, y = sub.floats(), sub.labels
        vae.check_input(x)
        with torch.no_grad():
            rec = torch.cat([vae.reconstruct(b) for b in x.split(500)])
        outcomes = []
        for lm in models:
            ok = (predictions(lm.model, x) == y) & (predictions(lm.model, rec) == y)
            xs, ys = x[ok], y[ok]
            with eval_mode(lm.model):
                adv, dist, fooled = latent_search(lm.model, vae, xs, ys, steps=self.steps, lr=self.lr, radius=self.radius,
                                                  threat=None)
            fooled &= predictions(lm.model, adv) != ys  # re-judged here
            img = (adv - xs).flatten(1)
            metrics = {
                "n": len(x), "radius": self.radius, "vae": self.vae,
                "clean_acc": float((predictions(lm.model, x) == y).float().mean()),
                "acc_on_reconstructions": float((predictions(lm.model, rec) == y).float().mean()),
                "attacked": int(ok.sum()),
                "success": float(fooled.float().mean()) if len(xs) else None,
                "median_latent_distance": float(dist[fooled].median()) if fooled.any() else None,
                "median_l2_to_x": float(img.norm(dim=1)[fooled].median()) if fooled.any() else None,
                "median_linf_to_x": float(img.abs().amax(1)[fooled].median()) if fooled.any() else None,
            }
            idx = fooled.nonzero().squeeze(1)[:EXAMPLES]
            with torch.no_grad():
                labels = predictions(lm.model, adv[idx]) if len(idx) else torch.zeros(0, dtype=torch.long, device=adv.device)
            outcomes.append(Outcome(lm.name, metrics, {"originals": xs[idx], "reconstructions": rec[ok][idx],
                                                       "adversarial": adv[idx], "labels": ys[idx], "adversarial_labels": labels}))
        return outcomes
