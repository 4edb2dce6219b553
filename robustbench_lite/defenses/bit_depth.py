"""Bit-depth reduction: "Countering Adversarial Images using Input Transformations",
Guo et al., 2018, arXiv:1711.00117; also the squeezer of Xu et al., 2018, arXiv:1704.01155."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from robustbench_lite.params import integer
from robustbench_lite.defenses.base import Defense
from robustbench_lite.registry import DEFENSES


@DEFENSES.register("bit_depth")
@dataclass(frozen=True, kw_only=True)
class BitDepth(Defense):
    """Quantise every pixel to ``bits`` bits: round(x * (2^bits - 1)) / (2^bits - 1).

    Rounding has a zero gradient almost everywhere, so the step is declared non-differentiable
    and attacked with BPDA (identity backward), which is how Athalye 2018 broke it.

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --defense bit_depth:bits=3 --attack pgd --eps 0.1
    """

    differentiable = False
    batch_invariant = True

    bits: int = integer(3, "bits per pixel (3: Guo 2018; Xu 2018 used 1 on MNIST)", lo=1, hi=8)

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        levels = 2 ** self.bits - 1
        return torch.round(x * levels) / levels
