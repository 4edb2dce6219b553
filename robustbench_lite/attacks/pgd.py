"""PGD: "Towards Deep Learning Models Resistant to Adversarial Attacks", Madry et al., 2018, arXiv:1706.06083."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustbench_lite.attacks.base import TARGETS, Attack, gradient_steps, warn_unreachable
from robustbench_lite.validation import check_choice, check_positive, check_steps
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat


@ATTACKS.register("pgd")
@dataclass(frozen=True, kw_only=True)
class PGD(Attack):
    """Projected gradient descent from a uniform random start in the ball, with restarts.

    Signed steps under L-inf, L2-normalised steps under L2, each followed by projection
    onto the eps-ball intersected with [0, 1].

    Args:
        steps: iterations per restart (default 50, >= 1).
        step_size: absolute step; default None means 2.5 * eps / steps (Madry's rule of
            thumb), which always reaches the boundary.
        restarts: random restarts (default 1); a restart only sees points still robust.
        random_start: start at x + U(ball) (default True); False gives BIM with PGD's step.
        target: ``none`` (default), ``least_likely``, ``next`` or ``random`` target class.
        early_stop: stop moving a point once it is misclassified (default True).

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> x_adv = PGD(steps=20, restarts=2)(model, x, y, Threat("linf", 0.1))
    """

    batch_invariant = True

    steps: int = 50
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    target: str = "none"
    early_stop: bool = True

    def __post_init__(self) -> None:
        check_steps("pgd", self.steps, self.restarts)
        check_positive("pgd", "step_size", self.step_size)
        check_choice("pgd", "target", self.target, TARGETS)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        if threat.eps == 0:
            return x.clone()
        alpha = self.step_size if self.step_size is not None else 2.5 * threat.eps / self.steps
        warn_unreachable("pgd", self.steps, alpha, threat.eps)
        return gradient_steps(model, x, y, threat, steps=self.steps, step_size=alpha,
                              random_start=self.random_start, restarts=self.restarts, target=self.target,
                              early_stop=self.early_stop, generator=generator)
