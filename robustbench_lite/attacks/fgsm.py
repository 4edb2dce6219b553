"""FGSM: "Explaining and Harnessing Adversarial Examples", Goodfellow et al., 2015, arXiv:1412.6572."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustbench_lite.attacks.base import Attack, gradient_steps
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat


@ATTACKS.register("fgsm")
@dataclass(frozen=True, kw_only=True)
class FGSM(Attack):
    """Fast gradient sign method: x' = clip(x + eps * sign(grad_x CE(x, y))).

    One step of exactly eps, no random start. Under an L2 threat the step follows the
    L2-normalised gradient (the "fast gradient method"). It has no hyperparameters: the step
    is the whole budget by definition.

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> x_adv = FGSM()(model, x, y, Threat("linf", 0.1))
    """

    batch_invariant = True

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        return gradient_steps(model, x, y, threat, steps=1, step_size=threat.eps, random_start=False,
                              early_stop=False, generator=generator)
