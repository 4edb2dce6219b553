"""Iterative least-likely class: "Adversarial examples in the physical world", Kurakin et al., 2017, arXiv:1607.02533."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustbench_lite.attack import Attack, check_positive, check_steps, gradient_steps, warn_unreachable
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat

from .bim import kurakin_schedule


@ATTACKS.register("illc")
@dataclass(frozen=True, kw_only=True)
class ILLC(Attack):
    """Iterative least-likely class: step *down* CE(X_n, y_LL) with y_LL = argmin p(y|x), clipping as in BIM.

    Targeting the least likely class gives the most dramatic mistakes (a sneaker read as
    a shirt); robust accuracy still counts any misclassification as success.

    Args:
        steps: iterations; default None means Kurakin's min(eps*255 + 4, 1.25*eps*255).
        step_size: alpha; default None means max(1/255, eps/10).
        early_stop: stop moving a point once it is misclassified (default True).

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> x_adv = ILLC()(model, x, y, Threat("linf", 0.1))
    """

    steps: int | None = None
    step_size: float | None = None
    early_stop: bool = True

    def __post_init__(self) -> None:
        if self.steps is not None:
            check_steps("illc", self.steps)
        check_positive("illc", "step_size", self.step_size)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        if threat.eps == 0:
            return x.clone()
        steps, alpha = kurakin_schedule(threat, self.steps, self.step_size)
        warn_unreachable("illc", steps, alpha, threat.eps)
        return gradient_steps(model, x, y, threat, steps=steps, step_size=alpha, random_start=False,
                              target="least_likely", early_stop=self.early_stop, generator=generator)
