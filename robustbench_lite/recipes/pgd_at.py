"""PGD adversarial training: "Towards Deep Learning Models Resistant to Adversarial Attacks",
Madry et al., 2018, arXiv:1706.06083."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..params import integer, positive, real
from ..registry import ATTACKS, RECIPES
from ..threat import Threat
from .base import Recipe, Step, clean_logits


@RECIPES.register("pgd_at")
@dataclass(frozen=True, kw_only=True)
class PGDAT(Recipe):
    """Minimise CE(f(x'), y) where x' maximises it: PGD from a random start inside the L-inf ball.

    From scratch the min-max can stall at chance (loss ln 10), so eps may ramp up linearly
    over the first ``ramp`` fraction of training.

    Example:
        >>> rbl train --arch smallcnn --recipe pgd_at --epochs 15
    """

    eps: float = real(0.1, "L-inf radius (0.1: the Fashion-MNIST headline)", lo=0, hi=1, interval="()")
    steps: int = integer(10, "inner PGD steps", lo=1)
    step_size: float | None = positive(None, "inner step; None means 2.5 * eps / steps")
    ramp: float = real(0.2, "fraction of training over which eps grows from 0 (0 disables the ramp)",
                       lo=0, hi=1, interval="[]")

    def current_eps(self, progress: float) -> float:
        return self.eps if self.ramp == 0 else self.eps * min(1.0, progress / self.ramp)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator, progress: float) -> Step:
        eps = self.current_eps(progress)
        x_adv = x
        if eps > 0:
            alpha = (self.step_size or 2.5 * self.eps / self.steps) * eps / self.eps
            # The attack crafts in eval mode (fixed batch-norm statistics) and restores train mode.
            pgd = ATTACKS.create("pgd", steps=self.steps, step_size=alpha, early_stop=False)
            x_adv = pgd(model, x, y, Threat("linf", eps), generator=generator)
        logits = model(x_adv)
        return Step(F.cross_entropy(logits, y), clean_logits(model, x), logits)
