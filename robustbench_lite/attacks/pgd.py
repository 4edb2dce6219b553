"""PGD: "Towards Deep Learning Models Resistant to Adversarial Attacks", Madry et al., 2018, arXiv:1706.06083."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustbench_lite.attacks.base import TARGETS, Attack, gradient_steps, warn_unreachable
from robustbench_lite.params import choice, flag, integer, positive
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat


@ATTACKS.register("pgd")
@dataclass(frozen=True, kw_only=True)
class PGD(Attack):
    """Projected gradient descent from a uniform random start in the ball, with restarts.

    Signed steps under L-inf, L2-normalised steps under L2, each followed by projection
    onto the eps-ball intersected with [0, 1].

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> x_adv = PGD(steps=20, restarts=2)(model, x, y, Threat("linf", 0.1))
    """

    batch_invariant = True

    steps: int = integer(50, "iterations per restart", lo=1)
    step_size: float | None = positive(None, "absolute step; None means 2.5 * eps / steps (Madry's rule of "
                                             "thumb), which always reaches the boundary")
    restarts: int = integer(1, "random restarts; a restart only sees points still robust", lo=1)
    random_start: bool = flag(True, "start at x + U(ball); False gives BIM with PGD's step")
    target: str = choice("none", "the target class of a targeted run", TARGETS)
    early_stop: bool = flag(True, "stop moving a point once it is misclassified")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        alpha = self.step_size if self.step_size is not None else 2.5 * threat.eps / self.steps
        warn_unreachable("pgd", self.steps, alpha, threat.eps)
        return gradient_steps(model, x, y, threat, steps=self.steps, step_size=alpha,
                              random_start=self.random_start, restarts=self.restarts, target=self.target,
                              early_stop=self.early_stop, generator=generator)
