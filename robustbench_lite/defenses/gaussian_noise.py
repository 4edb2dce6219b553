"""Gaussian input noise: the randomisation of "Certified Adversarial Robustness via Randomized
Smoothing", Cohen, Rosenfeld and Kolter, 2019, arXiv:1902.02918, used here as a preprocessor."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from robustbench_lite.params import real
from robustbench_lite.defenses.base import Defense
from robustbench_lite.registry import DEFENSES


@DEFENSES.register("gaussian_noise")
@dataclass(frozen=True, kw_only=True)
class GaussianNoise(Defense):
    """x + N(0, sigma^2), clipped to [0, 1]. Random, so the engine attacks it with EOT and
    scores predictions as a majority vote.

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --defense gaussian_noise:sigma=0.12 --attack pgd --eps 0.1
    """

    stochastic = True

    sigma: float = real(0.12, "noise standard deviation (0.12: Cohen 2019's smallest)", lo=0, hi=1, interval="(]")

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return (x + self.sigma * noise).clamp(0, 1)
