"""Total-variance minimisation: "Countering Adversarial Images using Input Transformations",
Guo et al., 2018, arXiv:1711.00117."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from robustbench_lite.params import integer, value
from robustbench_lite.defenses.base import Defense
from robustbench_lite.registry import DEFENSES


def _finite(allowed: str, ok: Callable[[float], bool]) -> Callable[[str, str, Any], None]:
    """A check that ``value`` is a finite number (never None) with ``ok(value)``."""

    def check(method: str, name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise ValueError(f"{method}: {name} must be a finite number {allowed}, got {value!r}")

    return check


_POSITIVE = _finite("> 0", lambda v: v > 0)


@DEFENSES.register("tv_min")
@dataclass(frozen=True, kw_only=True)
class TVMin(Defense):
    """Keep each pixel with probability ``keep``, then reconstruct the image z minimising
    ||keep_mask * (z - x)||^2 + lam * TV(z), with TV the isotropic total variation (smoothed by
    1e-6 under the square root), by projected gradient descent on z in [0, 1] started from the
    kept pixels (dropped ones at the image's mean). Guo 2018 used a Bregman solver; this is
    the same objective with a plain one.

    The forward pass runs an optimisation and draws a random mask, so the step is declared
    non-differentiable (BPDA with the identity, as Athalye 2018 did) and random (EOT).

    Example:
        >>> rbl eval --model smallcnn-fmnist-standard --defense tv_min --attack pgd --eps 0.1
    """

    differentiable = False
    stochastic = True

    keep: float = value(0.5, "pixel keep probability (0.5: Guo 2018)", check=_finite("in (0, 1]", lambda v: 0 < v <= 1),
                        allowed="finite number in (0, 1]")
    lam: float = value(0.03, "TV weight (0.03: Guo 2018)", check=_POSITIVE, allowed="finite number > 0")
    steps: int = integer(40, "descent steps", lo=1)
    lr: float = value(0.1, "descent step size", check=_POSITIVE, allowed="finite number > 0")

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        mask = (torch.rand(x.shape, generator=generator, device=x.device) < self.keep).to(x.dtype)
        target = x.detach()
        # Dropped pixels start at the image's mean kept value: starting at x would leak them back.
        mean = (mask * target).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
        z = mask * target + (1 - mask) * mean.view(-1, *([1] * (x.ndim - 1)))
        with torch.enable_grad():
            for _ in range(self.steps):
                z.requires_grad_(True)
                dx = z[..., :, 1:] - z[..., :, :-1]
                dy = z[..., 1:, :] - z[..., :-1, :]
                tv = torch.sqrt(dx[..., :-1, :] ** 2 + dy[..., :, :-1] ** 2 + 1e-6).sum()
                loss = (mask * (z - target) ** 2).sum() + self.lam * tv
                (grad,) = torch.autograd.grad(loss, z)
                z = (z.detach() - self.lr * grad).clamp(0, 1)
        return z.detach()
