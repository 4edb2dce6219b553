"""DeepFool: "DeepFool: a simple and accurate method to fool deep neural networks",
Moosavi-Dezfooli, Fawzi and Frossard, 2016, arXiv:1511.04599 (Algorithm 2, multi-class)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustbench_lite.attacks.base import Attack, input_grad, scores
from robustbench_lite.params import integer, real
from robustbench_lite.registry import ATTACKS
from robustbench_lite.threat import Threat


def deepfool(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, *, steps: int = 50,
             overshoot: float = 0.02, candidates: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimal perturbations, batched: each step linearises the ``candidates`` most likely
    classes around the current point and jumps to the nearest linearised boundary, in L2 or
    (with the dual L1 norm) L-inf. Returns (x_adv, fooled); x_adv stays in [0, 1].
    """
    with torch.no_grad():
        classes = scores(model, x, y).argsort(1, descending=True)
    k = min(candidates, classes.shape[1])
    # The candidate set always holds the label, first, then the k - 1 most likely other classes.
    others = classes[classes != y[:, None]].view(len(x), -1)[:, : k - 1]
    cand = torch.cat([y[:, None], others], 1)
    r_total = torch.zeros_like(x)
    x_adv = x.clone()
    active = torch.ones(len(x), dtype=torch.bool, device=x.device)
    shape = (-1,) + (1,) * (x.ndim - 1)
    for _ in range(steps):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa = x_adv[idx].detach().requires_grad_(True)
        logits = scores(model, xa, y[idx])
        still = logits.argmax(1) == y[idx]
        active[idx[~still]] = False
        if not bool(still.any()):
            break
        picked = logits.gather(1, cand[idx])  # (m, k): column 0 is the label
        grads = torch.stack([input_grad(picked[:, j].sum(), xa, retain_graph=j < k - 1) for j in range(k)], 1)
        w = grads[:, 1:] - grads[:, :1]  # (m, k-1, C, H, W)
        f = (picked[:, 1:] - picked[:, :1]).detach()  # negative while the label wins
        dual = w.flatten(2).abs().sum(2) if norm == "linf" else w.flatten(2).norm(dim=2)
        dist = f.abs() / dual.clamp_min(1e-12)
        best = dist.argmin(1)
        rows = torch.arange(len(idx), device=x.device)
        w_l = w[rows, best]
        f_l = f.abs()[rows, best]
        if norm == "linf":
            step = ((f_l + 1e-4) / dual[rows, best].clamp_min(1e-12)).view(shape) * w_l.sign()
        else:
            step = ((f_l + 1e-4) / dual[rows, best].clamp_min(1e-12) ** 2).view(shape) * w_l
        keep = idx[still]
        r_total[keep] += step[still].detach()
        x_adv[keep] = (x[keep] + (1 + overshoot) * r_total[keep]).clamp(0, 1)
    with torch.no_grad():
        fooled = scores(model, x_adv, y).argmax(1) != y
    return x_adv, fooled


@ATTACKS.register("deepfool", example={"steps": 20})
@dataclass(frozen=True, kw_only=True)
class DeepFool(Attack):
    """DeepFool's minimal perturbation, scaled back onto the threat's ball when it is larger.

    Under a finite eps this is a (weak, boundary-seeking) bounded attack; its real use is the
    minimal-perturbation experiment (``rbl min-norm``), where the threat is unbounded and the
    reported figure is the distance, never a success rate.

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> x_adv = DeepFool()(model, x, y, Threat("l2", float("inf")))
    """

    batch_invariant = True

    steps: int = integer(50, "linearisation steps", lo=1)
    overshoot: float = real(0.02, "the final push past the boundary, (1 + overshoot) r", lo=0, hi=1, interval="[]")
    candidates: int = integer(10, "classes linearised per step, the label included", lo=2)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: torch.Generator | None) -> torch.Tensor:
        x_adv, _ = deepfool(model, x, y, threat.norm, steps=self.steps, overshoot=self.overshoot,
                            candidates=self.candidates)
        return threat.project(x_adv, x)
