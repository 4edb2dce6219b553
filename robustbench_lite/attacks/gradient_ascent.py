"""Gradient ascent on the loss, targeted or untargeted (the unsigned form of BIM): Kurakin et al., 2017, arXiv:1607.02533."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustbench_lite.attacks.base import TARGETS, Attack, gradient_steps
from robustbench_lite.params import choice, flag, integer, positive
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat


@ATTACKS.register("gradient_ascent")
@dataclass(frozen=True, kw_only=True)
class GradientAscent(Attack):
    """Projected steps along the raw gradient rather than its sign.

    Untargeted, it climbs CE(x', y); targeted, it descends CE(x', t). Under L-inf each step
    moves the largest-gradient pixel by ``step_size`` and the others proportionally, so
    it spends the budget on the pixels that matter; under L2 it equals PGD's step.

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> x_adv = GradientAscent(target="next")(model, x, y, Threat("linf", 0.1))
    """

    batch_invariant = True

    steps: int = integer(40, "iterations", lo=1)
    step_size: float | None = positive(None, "absolute step; None means 2.5 * eps / steps")
    target: str = choice("none", "the target class of a targeted run", TARGETS)
    early_stop: bool = flag(True, "stop moving a point once it is misclassified")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        alpha = self.step_size if self.step_size is not None else 2.5 * threat.eps / self.steps
        return gradient_steps(model, x, y, threat, steps=self.steps, step_size=alpha, random_start=False,
                              target=self.target, direction="gradient", early_stop=self.early_stop,
                              generator=generator)
