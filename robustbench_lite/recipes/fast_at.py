"""Fast adversarial training: "Fast is better than free: Revisiting adversarial training",
Wong, Rice and Kolter, 2020, arXiv:2001.03994."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_positive
from ..registry import ATTACKS, RECIPES
from ..threat import Threat
from .base import Recipe, Step, check_eps, check_fraction, clean_logits


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

    Args:
        eps: L-inf radius in (0, 1) (default 0.1).
        alpha: FGSM step; default None means 1.25 * eps.
        random_start: start from x + U(-eps, eps) (default True; False is plain FGSM training,
            the configuration that overfits).
        collapse_drop: fall in training PGD accuracy, in [0, 1], that counts as a collapse
            (default 0.2; 1 disables this check).
        masking_gap: FGSM-minus-PGD training accuracy, in [0, 1], that counts as a collapse
            (default 0.3; 1 disables this check).

    Example:
        >>> rbl train --arch smallcnn --recipe fast_at --epochs 15
    """

    schedule: ClassVar[str] = "cyclic"

    eps: float = 0.1
    alpha: float | None = None
    random_start: bool = True
    collapse_drop: float = 0.2
    masking_gap: float = 0.3

    def __post_init__(self) -> None:
        check_eps("fast_at", self.eps)
        check_positive("fast_at", "alpha", self.alpha)
        check_fraction("fast_at", "collapse_drop", self.collapse_drop)
        check_fraction("fast_at", "masking_gap", self.masking_gap)
        if not isinstance(self.random_start, bool):
            raise ValueError(f"fast_at: random_start must be true or false, got {self.random_start!r}")

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
