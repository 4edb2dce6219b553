"""Fast adversarial training: "Fast is better than free: Revisiting adversarial training",
Wong, Rice and Kolter, 2020, arXiv:2001.03994."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..params import flag, positive, real
from ..registry import ATTACKS, RECIPES
from ..threat import Threat
from .base import Recipe, Step, clean_logits


@RECIPES.register("fast_at")
@dataclass(frozen=True, kw_only=True)
class FastAT(Recipe):
    """FGSM from a uniform random start in the L-inf ball with step alpha = 1.25 * eps, under a
    cyclic learning rate, and a guard against catastrophic overfitting.

    Catastrophic overfitting is FGSM training losing its robustness to PGD, often within an
    epoch, while accuracy against FGSM itself stays high. After each epoch the loop measures
    FGSM and PGD-10 accuracy on a fixed training subset. Training stops, keeping the weights of
    the epoch with the best PGD accuracy, when PGD accuracy falls more than ``collapse_drop``
    below its best (the check of Wong 2020, section 5.3), or when FGSM accuracy exceeds PGD
    accuracy by more than ``masking_gap`` (the model has learnt to mask the one-step gradient).

    Example:
        >>> rbl train --arch smallcnn --recipe fast_at --epochs 15
    """

    schedule: ClassVar[str] = "cyclic"

    eps: float = real(0.1, "L-inf radius", lo=0, hi=1, interval="()")
    alpha: float | None = positive(None, "FGSM step; None means 1.25 * eps")
    random_start: bool = flag(True, "start from x + U(-eps, eps); False is plain FGSM training, the "
                                    "configuration that overfits")
    collapse_drop: float = real(0.2, "fall in training PGD accuracy that counts as a collapse (1 disables "
                                     "this check)", lo=0, hi=1, interval="[]")
    masking_gap: float = real(0.3, "FGSM-minus-PGD training accuracy that counts as a collapse (1 disables "
                                   "this check)", lo=0, hi=1, interval="[]")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator, progress: float) -> Step:
        # One projected step of size alpha from the random start is FGSM-RS exactly.
        fgsm_rs = ATTACKS.create("pgd", steps=1, step_size=self.alpha or 1.25 * self.eps,
                                 random_start=self.random_start, early_stop=False)
        x_adv = fgsm_rs(model, x, y, Threat("linf", self.eps), generator=generator)
        logits = model(x_adv)
        return Step(F.cross_entropy(logits, y), clean_logits(model, x), logits)

    def collapsed(self, history: list[dict[str, float]]) -> str | None:
        best = max(row["pgd_acc_train"] for row in history)
        now = history[-1]
        if self.collapse_drop < 1 and now["pgd_acc_train"] < best - self.collapse_drop:
            return (f"catastrophic overfitting: PGD-10 accuracy on the training subset fell to {now['pgd_acc_train']:.3f} "
                    f"from a best of {best:.3f} (allowed drop {self.collapse_drop})")
        gap = now["fgsm_acc_train"] - now["pgd_acc_train"]
        if self.masking_gap < 1 and gap > self.masking_gap:
            return (f"catastrophic overfitting: FGSM accuracy on the training subset ({now['fgsm_acc_train']:.3f}) "
                    f"exceeds PGD-10 accuracy ({now['pgd_acc_train']:.3f}) by {gap:.3f} (allowed gap {self.masking_gap})")
        return None
