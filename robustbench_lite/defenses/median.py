"""Median smoothing: "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
Networks", Xu, Evans and Qi, 2018, arXiv:1704.01155."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustbench_lite.params import integer
from robustbench_lite.defenses.base import Defense
from robustbench_lite.registry import DEFENSES


@DEFENSES.register("median")
@dataclass(frozen=True, kw_only=True)
class Median(Defense):
    """A ``window`` x ``window`` median filter per channel, reflect-padded so the size is kept
    (for an even window the extra row and column go right and below, as in scipy).

    The median picks one input pixel per output pixel, so autograd gives its exact
    (sparse) gradient and no approximation is needed.

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --defense median:window=2 --attack pgd --eps 0.1
    """

    batch_invariant = True

    window: int = integer(2, "side of the median window (2: Xu 2018's MNIST squeezer)", lo=2, hi=11)

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        k = self.window
        lo, hi = (k - 1) // 2, k // 2
        padded = F.pad(x, (lo, hi, lo, hi), mode="reflect")
        patches = padded.unfold(2, k, 1).unfold(3, k, 1)  # N, C, H, W, k, k
        return patches.reshape(*patches.shape[:4], k * k).median(dim=-1).values
