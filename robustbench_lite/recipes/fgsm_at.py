"""FGSM adversarial training: "Explaining and Harnessing Adversarial Examples",
Goodfellow et al., 2015, arXiv:1412.6572."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..registry import ATTACKS, RECIPES
from ..threat import Threat
from ..params import real
from .base import Recipe, Step, mixed_loss


@RECIPES.register("fgsm_at")
@dataclass(frozen=True, kw_only=True)
class FGSMAT(Recipe):
    """The mixed objective 0.5 * CE(x, y) + 0.5 * CE(x_fgsm, y), with x_fgsm crafted on the
    current weights (Goodfellow 2015, eq. 6 with alpha = 0.5).

    Example:
        >>> rbl train --arch smallcnn --recipe fgsm_at
    """

    eps: float = real(0.1, "L-inf radius", lo=0, hi=1, interval="()")
    clean_weight: float = real(0.5, "the weight alpha of the clean term", lo=0, hi=1, interval="[]")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator, progress: float) -> Step:
        x_adv = ATTACKS.create("fgsm")(model, x, y, Threat("linf", self.eps), generator=generator)
        return mixed_loss(model, x, x_adv, y, self.clean_weight)
