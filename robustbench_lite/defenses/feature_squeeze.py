"""Feature squeezing: "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
Networks", Xu, Evans and Qi, 2018, arXiv:1704.01155."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustbench_lite.params import integer
from robustbench_lite.views import Defended
from robustbench_lite.defenses.base import Detector
from robustbench_lite.registry import DEFENSES

from .bit_depth import BitDepth
from .median import Median


@DEFENSES.register("feature_squeeze", kind="detector")
@dataclass(frozen=True, kw_only=True)
class FeatureSqueeze(Detector):
    """Detector: the L1 distance between the softmax on the input and on each squeezed copy
    (bit-depth reduction, median smoothing), maximised over the squeezers. Adversarial
    perturbations tend to move the prediction more under squeezing than natural inputs do.

    The bit-depth squeezer is not differentiable; a joint attack takes BPDA (identity
    backward) through it, as it does for the bit_depth defense.

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --defense feature_squeeze --attack pgd --eps 0.1
    """

    differentiable = False  # the bit-depth squeezer; its backward pass is BPDA's identity
    batch_invariant = True

    bits: int = integer(1, "bit depth of the first squeezer (1: the paper's MNIST setting)", lo=1, hi=8)
    window: int = integer(2, "median window of the second squeezer (2: the paper's MNIST setting)", lo=2, hi=8)

    def score(self, parts: nn.Module | None, classifier: nn.Module, x: torch.Tensor, logits: torch.Tensor,
              activations: torch.Tensor | None, bpda: bool) -> torch.Tensor:
        p = torch.softmax(logits, dim=1)
        squeezed = Defended(classifier, (), bpda=bpda)
        dists = []
        for squeezer in (BitDepth(bits=self.bits), Median(window=self.window)):
            squeezed.defenses = (squeezer,)
            dists.append((p - torch.softmax(squeezed(x), dim=1)).abs().sum(1))
        return torch.stack(dists).amax(0)
