"""Standard (non-adversarial) training: empirical risk minimisation with cross-entropy."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..params import value
from ..registry import RECIPES
from .base import Recipe, Step


def _check_smoothing(method: str, name: str, smoothing: float) -> None:
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"{method}: {name} must be in [0, 1), got {smoothing!r}")


@RECIPES.register("standard")
@dataclass(frozen=True, kw_only=True)
class Standard(Recipe):
    """Cross-entropy on clean inputs; the undefended baseline every defense is compared to.

    Example:
        >>> rbl train --arch smallcnn --recipe standard
    """

    label_smoothing: float = value(0.0, "label smoothing of the cross-entropy", check=_check_smoothing,
                                  allowed="number in [0, 1)")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             generator: torch.Generator, progress: float) -> Step:
        logits = model(x)
        return Step(F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits, None)
