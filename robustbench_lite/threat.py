"""The threat model: a norm ball of radius eps around x, intersected with the input box.

The engine, not the attack, enforces it (as foolbox does): it checks what each attack
returns against the budget and projects it before judging.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .rng import PointStreams

NORMS = ("linf", "l2")


@dataclass(frozen=True)
class Threat:
    """An L-inf or L2 ball of radius ``eps`` intersected with ``bounds``.

    Args:
        norm: ``linf`` or ``l2``.
        eps: radius, >= 0 and finite (``math.inf`` is allowed for the unbounded check).
        bounds: the valid input box; models take inputs in [0, 1].
    """

    norm: str
    eps: float
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; allowed: {', '.join(NORMS)}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or math.isnan(self.eps) or self.eps < 0:
            raise ValueError(f"eps must be a number >= 0, got {self.eps!r}")
        lo, hi = self.bounds
        if not lo < hi:
            raise ValueError(f"bounds must satisfy low < high, got {self.bounds!r}")

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-example distance in this threat's norm."""
        d = (x_adv - x).flatten(1)
        return d.abs().amax(1) if self.norm == "linf" else d.norm(p=2, dim=1)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project onto the eps-ball around ``x``, then onto the input box."""
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        elif math.isfinite(self.eps):
            norms = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
            factor = (self.eps / norms).clamp(max=1.0)
            delta = delta * factor.view(-1, *([1] * (delta.ndim - 1)))
        return (x + delta).clamp(*self.bounds)

    def random_start(self, x: torch.Tensor, generator: "torch.Generator | PointStreams | None") -> torch.Tensor:
        """A uniform sample from the ball (Madry 2018), clipped to the box; each point's from its own stream."""

        if not math.isfinite(self.eps):
            raise ValueError("random start needs a finite eps")
        streams = PointStreams.of(generator, x.shape[0], x.device)
        shape = x.shape[1:]
        if self.norm == "linf":
            delta = (2 * streams.random(shape, x.dtype) - 1) * self.eps
        else:
            g = streams.normal(shape, x.dtype).flatten(1)
            d = g.shape[1]
            r = streams.random((1,), x.dtype) ** (1.0 / d)
            delta = (g / g.norm(dim=1, keepdim=True).clamp_min(1e-12) * r * self.eps).view_as(x)
        return (x + delta).clamp(*self.bounds)
