"""Feature squeezing: "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
Networks", Xu, Evans and Qi, 2018, arXiv:1704.01155."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustbench_lite.validation import check_int
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

    Args:
        bits: bit depth of the first squeezer (default 1, the paper's MNIST setting; 1 to 8).
        window: median window of the second squeezer (default 2, the paper's MNIST setting).
        fpr: false-positive rate on clean calibration data that sets the threshold (default 0.05).
        calibration: last N training points used to set it (default 2000).

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --defense feature_squeeze --attack pgd --eps 0.1
    """

    differentiable = False  # the bit-depth squeezer; its backward pass is BPDA's identity
    batch_invariant = True

    bits: int = 1
    window: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("feature_squeeze", "bits", self.bits, 1, 8)
        check_int("feature_squeeze", "window", self.window, 2, 8)

    def score(self, parts: nn.Module | None, classifier: nn.Module, x: torch.Tensor, logits: torch.Tensor,
              activations: torch.Tensor | None, bpda: bool) -> torch.Tensor:
        p = torch.softmax(logits, dim=1)
        squeezed = Defended(classifier, (), bpda=bpda)
        dists = []
        for squeezer in (BitDepth(bits=self.bits), Median(window=self.window)):
            squeezed.defenses = (squeezer,)
            dists.append((p - torch.softmax(squeezed(x), dim=1)).abs().sum(1))
        return torch.stack(dists).amax(0)
