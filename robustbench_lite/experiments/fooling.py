"""Fooling images: "Deep Neural Networks are Easily Fooled: High Confidence Predictions for
Unrecognizable Images", Nguyen, Yosinski and Clune, 2015, arXiv:1412.1897."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from robustbench_lite import devices
from robustbench_lite.params import choice, integer, positive, real
from robustbench_lite.inference import eval_mode
from robustbench_lite.data import Split
from robustbench_lite.experiments.base import Experiment, Outcome
from robustbench_lite.registry import EXPERIMENTS
from robustbench_lite.zoo import LoadedModel


def gradient_ascent(model: nn.Module, shape: tuple[int, ...], classes: int, *, steps: int, lr: float,
                    threshold: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image per class from uniform noise, by signed ascent on log p(class); a class stops
    once it reaches ``threshold``. Returns (images, confidences, steps used per class)."""
    x = torch.rand((classes, *shape), generator=generator, device=generator.device)
    target = torch.arange(classes, device=generator.device)
    used = torch.full((classes,), steps, device=generator.device)
    for i in range(steps):
        xg = x.detach().requires_grad_(True)
        logp = torch.log_softmax(model(xg), dim=1).gather(1, target[:, None]).squeeze(1)
        done = logp.exp() >= threshold
        used[done & (used == steps)] = i
        if bool(done.all()):
            break
        (g,) = torch.autograd.grad(logp.sum(), xg)
        x = torch.where(done.view(-1, *[1] * len(shape)), x, (x + lr * g.sign()).clamp(0, 1))
    with torch.no_grad():
        conf = torch.softmax(model(x), dim=1).gather(1, target[:, None]).squeeze(1)
    return x.detach(), conf, used


def evolution(model: nn.Module, shape: tuple[int, ...], classes: int, *, generations: int, population: int,
              sigma: float, lr: float, threshold: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient-free: a natural evolution strategy (Wierstra et al. 2014, arXiv:1106.4487) per
    class over the image's logits w (x = sigmoid(w)). Each generation samples an antithetic
    population w +- sigma * eps, ranks the members by p(class) alone (output queries only) and
    moves w along the rank-weighted noise. Returns (images, confidences, queries per class)."""
    half = population // 2
    w = torch.logit(torch.rand((classes, *shape), generator=generator, device=generator.device).clamp(0.05, 0.95))
    target = torch.arange(classes, device=generator.device)
    queries = torch.full((classes,), generations * 2 * half, device=generator.device)
    dims = [1] * len(shape)
    for gen in range(generations):
        with torch.no_grad():
            p = torch.softmax(model(torch.sigmoid(w)), dim=1).gather(1, target[:, None]).squeeze(1)
        done = p >= threshold
        queries[done & (queries == generations * 2 * half)] = gen * 2 * half
        if bool(done.all()):
            break
        eps = torch.randn((classes, half, *shape), generator=generator, device=generator.device)
        eps = torch.cat([eps, -eps], 1)  # antithetic pairs halve the estimate's variance
        cand = torch.sigmoid(w[:, None] + sigma * eps).flatten(0, 1)
        with torch.no_grad():
            fit = torch.log_softmax(model(cand), dim=1).view(classes, 2 * half, -1).gather(
                2, target.view(-1, 1, 1).expand(-1, 2 * half, 1)).squeeze(2)
        # Fitness shaping: centred ranks, so the step does not depend on the scale of p.
        ranks = fit.argsort(1).argsort(1).float() / (2 * half - 1) - 0.5
        step = (ranks.view(classes, 2 * half, *dims) * eps).mean(1) / sigma
        w = torch.where(done.view(-1, *dims), w, w + lr * step)
    x = torch.sigmoid(w)
    with torch.no_grad():
        conf = torch.softmax(model(x), dim=1).gather(1, target[:, None]).squeeze(1)
    return x, conf, queries


@EXPERIMENTS.register("fooling")
@dataclass(frozen=True, kw_only=True)
class Fooling(Experiment):
    """Unrecognisable images that each model assigns every class with confidence >= 0.99,
    found from noise by gradient ascent (white-box) or by an evolution strategy (black-box).

    Reported per model: the share of classes that reach the threshold within the budget,
    the mean confidence, and the steps (gradient) or queries (evolution) used.

    Example:
        >>> rbl experiment fooling:method=evolution --models smallcnn-fmnist-standard
    """

    method: str = choice("gradient", "white-box gradient ascent or the black-box evolution strategy",
                         ("gradient", "evolution"))
    threshold: float = real(0.99, "the confidence to reach, as in the paper", lo=0, hi=1, interval="()")
    steps: int = integer(1000, "gradient steps of lr at most; a class stops once it reaches the threshold", lo=1)
    lr: float = positive(0.01, "the signed step of the gradient ascent; the evolution's is 1")
    generations: int = integer(300, "evolution generations, each of population queries per class", lo=1)
    population: int = integer(50, "queries per generation and class, in antithetic pairs", lo=2)
    sigma: float = positive(0.5, "the evolution's search radius in logit space")

    def run(self, models: Sequence[LoadedModel], train: Split, test: Split, *, seed: int) -> list[Outcome]:
        shape = tuple(test.images.shape[1:])
        outcomes = []
        for lm in models:
            g = devices.generator(seed, test.images.device)
            with torch.no_grad():
                classes = lm.model(test.first(1).floats()).shape[1]
            with eval_mode(lm.model):
                if self.method == "gradient":
                    x, conf, used = gradient_ascent(lm.model, shape, classes, steps=self.steps, lr=self.lr,
                                                    threshold=self.threshold, generator=g)
                    budget = {"steps": self.steps}
                else:
                    x, conf, used = evolution(lm.model, shape, classes, generations=self.generations,
                                              population=self.population, sigma=self.sigma, lr=1.0,
                                              threshold=self.threshold, generator=g)
                    budget = {"queries": self.generations * 2 * (self.population // 2)}
            reached = conf >= self.threshold
            metrics = {"method": self.method, "threshold": self.threshold, **{f"budget_{k}": v for k, v in budget.items()},
                       "classes_reached": float(reached.float().mean()), "mean_confidence": float(conf.mean()),
                       "median_cost_reached": float(used[reached].float().median()) if bool(reached.any()) else None}
            outcomes.append(Outcome(lm.name, metrics, {"images": x, "confidence": conf}))
        return outcomes
