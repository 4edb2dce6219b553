"""BIM / iterative FGSM: "Adversarial examples in the physical world", Kurakin et al., 2017, arXiv:1607.02533."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from robustbench_lite.attacks.base import Attack, gradient_steps, warn_unreachable
from robustbench_lite.params import flag, integer, positive
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat


def kurakin_schedule(threat: Threat, steps: int | None, step_size: float | None) -> tuple[int, float]:
    """Kurakin's L-inf defaults on the 0-255 scale: steps = min(eps + 4, 1.25 eps), alpha = 1.

    The step is max(1/255, eps/10): the 1/255 floor is Kurakin's own and guarantees that
    steps * alpha >= eps, so the boundary is always reachable; eps/10 is the usual larger
    step at big budgets. The 0-255 pixel scale means nothing for an L2 radius, so there
    the default is 20 steps of 2.5 eps / 20.
    """
    eps = threat.eps
    if threat.norm == "l2":
        n = steps if steps is not None else 20
        return n, step_size if step_size is not None else 2.5 * eps / n
    e255 = eps * 255.0
    n = steps if steps is not None else max(1, math.ceil(min(e255 + 4, 1.25 * e255)))
    alpha = step_size if step_size is not None else max(1 / 255, eps / 10)
    return n, alpha


@ATTACKS.register("bim")
@dataclass(frozen=True, kw_only=True)
class BIM(Attack):
    """Basic iterative method: X_{n+1} = Clip_{x,eps}(X_n + alpha * sign(grad CE(X_n, y))), from X_0 = x.

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> x_adv = BIM(steps=20)(model, x, y, Threat("linf", 0.1))
    """

    batch_invariant = True

    steps: int | None = integer(None, "iterations; None means Kurakin's min(eps*255 + 4, 1.25*eps*255)",
                                lo=1, optional=True)
    step_size: float | None = positive(None, "alpha; None means max(1/255, eps/10)")
    early_stop: bool = flag(True, "stop moving a point once it is misclassified")

    _target: ClassVar[str] = "none"  # ILLC reuses this class with the least-likely target

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        steps, alpha = kurakin_schedule(threat, self.steps, self.step_size)
        warn_unreachable(self.registered_as, steps, alpha, threat.eps)
        return gradient_steps(model, x, y, threat, steps=steps, step_size=alpha, random_start=False,
                              target=self._target, early_stop=self.early_stop, generator=generator)
