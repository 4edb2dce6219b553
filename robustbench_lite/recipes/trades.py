"""TRADES: "Theoretically Principled Trade-off between Robustness and Accuracy",
Zhang et al., 2019, arXiv:1901.08573."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..params import integer, positive, real
from ..inference import eval_mode
from ..registry import RECIPES
from ..threat import Threat
from .base import Recipe, Step


@RECIPES.register("trades")
@dataclass(frozen=True, kw_only=True)
class TRADES(Recipe):
    """CE(f(x), y) + beta * KL(f(x) || f(x')), with x' maximising the KL term by signed
    steps from x + 0.001 * N(0, 1), projected onto the L-inf ball and [0, 1].

    Example:
        >>> rbl train --arch smallcnn --recipe trades
    """

    eps: float = real(0.1, "L-inf radius", lo=0, hi=1, interval="()")
    beta: float = positive(1.0, "weight of the robustness term (1: the paper's MNIST value; 6 for CIFAR)")
    steps: int = integer(10, "inner steps", lo=1)
    step_size: float | None = positive(None, "inner step; None means 2.5 * eps / steps")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator, progress: float) -> Step:
        threat = Threat("linf", self.eps)
        alpha = self.step_size or 2.5 * self.eps / self.steps
        with eval_mode(model):
            with torch.no_grad():
                p_clean = F.softmax(model(x), dim=1)
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x_adv = threat.project(x + 0.001 * noise, x)
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
                x_adv = threat.project(x_adv.detach() + alpha * grad.sign(), x)
        logits = model(x)
        adv_logits = model(x_adv.detach())
        robust = F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return Step(F.cross_entropy(logits, y) + self.beta * robust, logits, adv_logits)
