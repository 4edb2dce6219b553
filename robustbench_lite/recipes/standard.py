"""Standard (non-adversarial) training: empirical risk minimisation with cross-entropy."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import RECIPES
from .base import Recipe, Step


@RECIPES.register("standard")
@dataclass(frozen=True, kw_only=True)
class Standard(Recipe):
    """Cross-entropy on clean inputs; the undefended baseline every defense is compared to.

    Args:
        label_smoothing: in [0, 1) (default 0).

    Example:
        >>> rbl train --arch smallcnn --recipe standard
    """

    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"standard: label_smoothing must be in [0, 1), got {self.label_smoothing!r}")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator, progress: float) -> Step:
        logits = model(x)
        return Step(F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits, None)
