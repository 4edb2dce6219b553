"""Random resizing and padding: "Mitigating Adversarial Effects Through Randomization",
Xie et al., 2018, arXiv:1711.01991."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustbench_lite.params import real
from robustbench_lite.defenses.base import Defense
from robustbench_lite.registry import DEFENSES


@DEFENSES.register("random_resize_pad")
@dataclass(frozen=True, kw_only=True)
class RandomResizePad(Defense):
    """Shrink the batch to a random side r in [min_scale * s, s] (bilinear), then zero-pad it
    back to s at a random offset.

    Xie 2018 resizes 299 to [299, 331) and pads to 331; our classifiers take a fixed size, so the
    same ratio (299/331 = 0.90) is applied by shrinking instead. One draw per batch, as in
    the paper's implementation. Differentiable but random: attacked with EOT.

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --defense random_resize_pad --attack pgd --eps 0.1
    """

    stochastic = True

    min_scale: float = real(0.9, "smallest relative side (0.9: the paper's ratio)", lo=0, hi=1, interval="()")

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        h, w = x.shape[-2:]
        lo = max(1, int(round(self.min_scale * h)))
        side = int(torch.randint(lo, h + 1, (), generator=generator, device=x.device))
        small = F.interpolate(x, size=(side, side * w // h), mode="bilinear", align_corners=False)
        top = int(torch.randint(0, h - small.shape[-2] + 1, (), generator=generator, device=x.device))
        left = int(torch.randint(0, w - small.shape[-1] + 1, (), generator=generator, device=x.device))
        return F.pad(small, (left, w - small.shape[-1] - left, top, h - small.shape[-2] - top))
