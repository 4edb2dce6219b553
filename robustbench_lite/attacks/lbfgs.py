"""Box-constrained L-BFGS: "Intriguing properties of neural networks", Szegedy et al., 2014,
arXiv:1312.6199 (Section 4.1)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lite.attacks.base import Attack, input_grad, scores
from robustbench_lite.params import integer, positive
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat


def lbfgs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, search_steps: int = 8, max_iter: int = 100,
          c_init: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise c * ||r||_2^2 + CE(x + r, t) over x + r in [0, 1] with L-BFGS-B, towards the
    runner-up class t, and line-search per point for the largest c (the smallest r) that still
    changes the label. Returns (x_adv, fooled); an unfooled point keeps x.

    scipy's optimizer runs on the CPU: on another device each iterate goes there for the model's
    loss and gradient and back, the only transfers (one vector per L-BFGS-B call of the objective).
    """
    dev = x.device
    with torch.no_grad():
        target = scores(model, x, y).scatter(1, y[:, None], float("-inf")).argmax(1)
    n, shape = len(x), x.shape
    x0 = x.detach().double().flatten().cpu().numpy()
    c = np.full(n, float(c_init))
    lo, hi = np.zeros(n), np.full(n, np.inf)
    best = np.full(n, np.inf)
    best_x = x.clone()

    def objective(z: np.ndarray, c_t: torch.Tensor) -> tuple[float, np.ndarray]:
        zt = torch.from_numpy(z).view(shape).to(device=dev, dtype=x.dtype).requires_grad_(True)
        r2 = (zt - x).flatten(1).pow(2).sum(1)
        loss = (c_t * r2).sum() + F.cross_entropy(scores(model, zt, y), target, reduction="sum")
        g = input_grad(loss, zt)
        return float(loss.detach()), g.double().flatten().cpu().numpy()

    from scipy.optimize import minimize

    for _ in range(search_steps):
        c_t = torch.from_numpy(c).to(device=dev, dtype=x.dtype)
        res = minimize(objective, x0, args=(c_t,), jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * x0.size,
                       options={"maxiter": max_iter})
        z = torch.from_numpy(res.x).view(shape).to(device=dev, dtype=x.dtype)
        with torch.no_grad():
            fooled = (scores(model, z, y).argmax(1) != y).cpu().numpy()
        dist = (z - x).flatten(1).norm(dim=1).cpu().numpy()
        better = fooled & (dist < best)
        best[better] = dist[better]
        pick = torch.from_numpy(better).to(dev)
        best_x[pick] = z[pick]
        # Success: try a larger c (a smaller perturbation); failure: a smaller one.
        lo = np.where(fooled, c, lo)
        hi = np.where(fooled, hi, c)
        c = np.where(np.isinf(hi), c * 10, np.where(lo > 0, (lo + hi) / 2, c / 10))
    return best_x, torch.from_numpy(np.isfinite(best)).to(dev)


@ATTACKS.register("lbfgs", example={"search_steps": 1, "max_iter": 20}, norms=("l2", "linf"))
@dataclass(frozen=True, kw_only=True)
class LBFGS(Attack):
    """Szegedy's minimal-perturbation attack, scaled back onto the threat's ball when larger.

    Its use is the minimal-perturbation experiment (``rbl min-norm``), which reports the
    median distance over an unbounded threat; under a finite eps it is a weak bounded attack.

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> x_adv = LBFGS()(model, x, y, Threat("l2", float("inf")))
    """

    search_steps: int = integer(8, "line-search steps on c per point", lo=1)
    max_iter: int = integer(100, "L-BFGS-B iterations per c", lo=1)
    c_init: float = positive(1.0, "the first c; it grows tenfold until a point fails, then bisects")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        x_adv, _ = lbfgs(model, x, y, search_steps=self.search_steps, max_iter=self.max_iter, c_init=self.c_init)
        return threat.project(x_adv, x) if math.isfinite(threat.eps) else x_adv
