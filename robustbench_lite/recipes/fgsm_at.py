"""FGSM adversarial training: "Explaining and Harnessing Adversarial Examples",
Goodfellow et al., 2015, arXiv:1412.6572."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..registry import ATTACKS, RECIPES
from ..threat import Threat
from .base import Recipe, Step, check_eps, check_fraction, mixed_loss


@RECIPES.register("fgsm_at")
@dataclass(frozen=True, kw_only=True)
class FGSMAT(Recipe):
    """The mixed objective 0.5 * CE(x, y) + 0.5 * CE(x_fgsm, y), with x_fgsm crafted on the
    current weights (Goodfellow 2015, eq. 6 with alpha = 0.5).

    Args:
        eps: L-inf radius in (0, 1) (default 0.1).
        clean_weight: the weight alpha of the clean term, in [0, 1] (default 0.5).

    Example:
        >>> rbl train --arch smallcnn --recipe fgsm_at
    """

    eps: float = 0.1
    clean_weight: float = 0.5

    def __post_init__(self) -> None:
        check_eps("fgsm_at", self.eps)
        check_fraction("fgsm_at", "clean_weight", self.clean_weight)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator, progress: float) -> Step:
        x_adv = ATTACKS.create("fgsm")(model, x, y, Threat("linf", self.eps), generator=generator)
        return mixed_loss(model, x, x_adv, y, self.clean_weight)
