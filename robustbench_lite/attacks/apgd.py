"""APGD: "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", Croce and Hein, 2020, arXiv:2003.01690 (Algorithm 1)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_lite.attacks.base import Attack, _direction, input_grad, ranked_target, scores, target_ranks
from robustbench_lite.params import integer, real
from robustbench_lite.registry import ATTACKS
from robustbench_lite.rng import PointStreams
from robustbench_lite.threat import Threat


def _dlr(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    """Difference of logits ratio, per sample: shift- and scale-invariant, so saturated or
    rescaled logits do not flatten it the way they flatten cross-entropy. With too few classes for
    its denominator (3 untargeted, 4 targeted: a binary head has 2), the plain margin."""
    z, _ = logits.sort(dim=1, descending=True)
    k = logits.shape[1]
    zy = logits.gather(1, y[:, None]).squeeze(1)
    if t is None:
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        return -(zy - other) / ((z[:, 0] - z[:, 2] + 1e-12) if k >= 3 else 1.0)
    zt = logits.gather(1, t[:, None]).squeeze(1)
    return -(zy - zt) / ((z[:, 0] - 0.5 * (z[:, 2] + z[:, 3]) + 1e-12) if k >= 4 else 1.0)


def _ce(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none") if t is None else -F.cross_entropy(logits, t, reduction="none")


@dataclass(frozen=True, kw_only=True)
class _APGD(Attack):
    """Auto-PGD: momentum 0.75 and a step size that starts at 2 eps and halves at checkpoints
    (at 22% of the budget, then ever closer, by at least 6%) where the loss rose in fewer than
    rho = 75% of the steps since the last one, or neither the step nor the best loss changed;
    a halving restarts from the best point. Returns the first misclassified iterate of a point,
    else its highest-loss one. The default of 100 steps is the AutoAttack standard version's.

    Example:
        >>> x_adv = ATTACKS.create("apgd_dlr", targets=9)(model, x, y, Threat("linf", 0.1))
    """

    batch_invariant = True

    _loss: ClassVar = staticmethod(_ce)

    steps: int = integer(100, "iterations per run", lo=1)
    restarts: int = integer(1, "runs from fresh random starts, each on the points still robust", lo=1)
    targets: int = integer(0, "0 is untargeted; k > 0 runs APGD-T once for each of the k classes ranked most "
                              "likely after the true one (AutoAttack uses 9)", lo=0, hi=9)
    rho: float = real(0.75, "the checkpoint's fraction of rising steps", lo=0, hi=1, interval="(]")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: PointStreams) -> torch.Tensor:
        out = x.clone()
        with torch.no_grad():
            ranked = scores(model, x, y).argsort(dim=1, descending=True)
        robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for rank in target_ranks(self.targets, ranked.shape[1]):
            for restart in range(self.restarts):
                idx = robust.nonzero().squeeze(1)
                if idx.numel() == 0:
                    return out
                t = ranked_target(ranked[idx], y[idx], rank)
                x_adv, fooled = self._run_once(model, x[idx], y[idx], t, threat, generator.child(rank or 0, restart)[idx])
                out[idx] = x_adv
                robust[idx[fooled]] = False
        return out

    def _run_once(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None,
                  threat: Threat, generator: PointStreams) -> tuple[torch.Tensor, torch.Tensor]:
        n, shape = len(x), (-1,) + (1,) * (x.ndim - 1)

        def loss_grad(v: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            v = v.detach().requires_grad_(True)
            yi, ti = y[idx], (t[idx] if t is not None else None)
            logits = scores(model, v, yi)
            loss = self._loss(logits, yi, ti)
            g = input_grad(loss.sum(), v)
            return loss.detach(), g, logits.argmax(1) != yi

        x_adv = threat.random_start(x, generator)
        loss, grad, fooled = loss_grad(x_adv, torch.arange(n, device=x.device))
        best_loss, x_best, grad_best = loss.clone(), x_adv.clone(), grad.clone()
        x_found, found = x_adv.clone(), fooled.clone()
        step = torch.full((n,), 2.0 * threat.eps, device=x.device)
        x_prev = x_adv.clone()
        period, min_period, shrink = max(int(0.22 * self.steps), 1), max(int(0.06 * self.steps), 1), max(int(0.03 * self.steps), 1)
        since, rises = 0, torch.zeros(n, device=x.device)
        best_at_check, reduced_at_check = best_loss.clone(), torch.ones(n, dtype=torch.bool, device=x.device)
        for i in range(self.steps):
            # A point stops at its first misclassified iterate, which is what it returns: only the
            # others step on (every quantity is per point, so theirs do not change).
            idx = (~found).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            a = 0.75 if i > 0 else 1.0
            xa, xi = x_adv[idx], x[idx]
            z = threat.project(xa + step[idx].view(shape) * _direction(grad[idx], threat, "sign"), xi)
            x_next = threat.project(xa + a * (z - xa) + (1 - a) * (xa - x_prev[idx]), xi)
            x_prev[idx], x_adv[idx] = xa, x_next
            new_loss, g, fooled = loss_grad(x_next, idx)
            grad[idx] = g
            x_found[idx[fooled]] = x_next[fooled]
            found[idx[fooled]] = True
            rises[idx] += (new_loss > loss[idx]).float()
            loss[idx] = new_loss
            better = idx[new_loss > best_loss[idx]]
            x_best[better], grad_best[better], best_loss[better] = x_adv[better], grad[better], loss[better]
            since += 1
            if since == period:
                halve = (rises <= self.rho * period) | (~reduced_at_check & (best_at_check >= best_loss))
                step[halve] /= 2
                x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
                reduced_at_check, best_at_check = halve, best_loss.clone()
                since, rises = 0, torch.zeros(n, device=x.device)
                period = max(period - shrink, min_period)
        return torch.where(found.view(shape), x_found, x_best), found


@ATTACKS.register("apgd_ce", example={"steps": 20})
@dataclass(frozen=True, kw_only=True)
class APGDCE(_APGD):
    __doc__ = "APGD on the cross-entropy (AutoAttack's first attack).\n\n" + (_APGD.__doc__ or "")


@ATTACKS.register("apgd_dlr", example={"steps": 20})
@dataclass(frozen=True, kw_only=True)
class APGDDLR(_APGD):
    __doc__ = "APGD on the difference-of-logits-ratio loss (AutoAttack's APGD-T uses it targeted).\n\n" + (_APGD.__doc__ or "")

    _loss: ClassVar = staticmethod(_dlr)
