"""A one-file defense plugin (README, "Plugins"): Gaussian blur in front of the classifier."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustbench_lite.defenses.base import Defense
from robustbench_lite.registry import DEFENSES


@DEFENSES.register("my_blur")
@dataclass(frozen=True, kw_only=True)
class MyBlur(Defense):
    """Blur each channel with a 5x5 Gaussian kernel of std ``sigma``."""

    differentiable = True  # a convolution: the engine attacks it with full gradients
    stochastic = False

    sigma: float = 1.0

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"my_blur: sigma must be > 0, got {self.sigma!r}")

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        t = torch.arange(5, dtype=x.dtype) - 2
        k = torch.exp(-t**2 / (2 * self.sigma**2))
        k = (k[:, None] * k[None, :]) / k.sum() ** 2
        weight = k.expand(x.shape[1], 1, 5, 5)
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), weight, groups=x.shape[1]).clamp(0, 1)
