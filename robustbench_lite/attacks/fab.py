"""FAB: "Minimally distorted adversarial examples with a fast adaptive boundary attack", Croce and
Hein, ICML 2020, arXiv:1907.02044 (Algorithm 1, L-inf); FAB-T, its targeted version, is the third
attack of AutoAttack's standard version (arXiv:2003.01690)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robustbench_lite.attacks.base import Attack, input_grad, ranked_target, scores, target_ranks
from robustbench_lite.params import integer, real
from robustbench_lite.registry import ATTACKS
from robustbench_lite.rng import PointStreams
from robustbench_lite.threat import Threat


def _project_linf(p: torch.Tensor, w: torch.Tensor, b: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Per row, the step d of least L-inf norm with w.d = -b (b: the linearised function's value at
    p, so p + d lies on its zero set) and p + d in [lo, hi]; where the box does not let the
    hyperplane be reached, the step that goes as far towards it as the box allows.

    Along sign(c) * sign(w) every coordinate moves by min(t, room_i): w.d is piecewise linear and
    increasing in t, so the least t is found from the sorted rooms and cumulative sums."""
    n = p.shape[0]
    c = -b  # the required w.d
    direction = torch.sign(w) * torch.sign(c).view(n, 1)
    room = torch.where(direction > 0, hi - p, p - lo).clamp_min(0)
    aw = w.abs()
    target = c.abs()
    order = room.argsort(dim=1)
    r_sorted = room.gather(1, order)
    w_sorted = aw.gather(1, order)
    # With t between r_(k-1) and r_(k): w.d(t) = sum_{i<k} w_i r_i + t * sum_{i>=k} w_i.
    reached_full = torch.cumsum(w_sorted * r_sorted, dim=1) - w_sorted * r_sorted  # sum_{i<k} w_i r_i
    tail = w_sorted.flip(1).cumsum(1).flip(1)  # sum_{i>=k} w_i
    value_at_r = reached_full + r_sorted * tail  # w.d(t = r_k)
    k = (value_at_r < target.view(n, 1)).sum(1).clamp(max=p.shape[1] - 1)  # first k with w.d(r_k) >= target
    base = reached_full.gather(1, k.view(n, 1)).squeeze(1)
    slope = tail.gather(1, k.view(n, 1)).squeeze(1).clamp_min(1e-12)
    t = ((target - base) / slope).clamp_min(0)
    feasible = value_at_r[:, -1] >= target
    t = torch.where(feasible, t, room.amax(1))
    return direction * torch.minimum(room, t.view(n, 1))


@ATTACKS.register("fab", example={"steps": 10, "targets": 2}, norms=("linf",))
@dataclass(frozen=True, kw_only=True)
class FAB(Attack):
    """Fast adaptive boundary attack (L-inf): a minimum-norm attack, counted here as breaking a
    point when the smallest adversarial example it finds lies within eps.

    Each iteration linearises the boundary between the label and the target class at the current
    iterate, projects both the iterate and the original point onto it (the least L-inf step,
    inside the input box), and steps to a convex combination of the two projections, extrapolated
    by ``eta`` and weighted towards the original point by at most ``alpha_max``; an iterate that is
    adversarial is kept if it is the closest so far and pulled back towards the original point by
    ``beta``. Restarts after the first start from a random point of the eps-ball scaled by how
    close the best example is. The defaults are AutoAttack's (standard version).

    Example:
        >>> x_adv = ATTACKS.create("fab", targets=9)(model, x, y, Threat("linf", 0.1))
    """

    batch_invariant = True

    steps: int = integer(100, "iterations per run", lo=1)
    restarts: int = integer(1, "runs per target", lo=1)
    targets: int = integer(9, "0 is untargeted (the closest boundary each step); k > 0 runs FAB-T once for each "
                              "of the k classes ranked most likely after the true one", lo=0, hi=9)
    alpha_max: float = real(0.1, "the paper's bound on the weight towards the original point", lo=0, hi=1,
                            interval="[]")
    eta: float = real(1.05, "the paper's extrapolation of the projections", lo=1, hi=10, interval="[]")
    beta: float = real(0.9, "the paper's backward step of an adversarial iterate towards the original point",
                       lo=0, hi=1, interval="[]")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: PointStreams) -> torch.Tensor:
        if threat.norm != "linf":
            raise ValueError(f"fab: only the linf threat is implemented, got {threat.norm!r}")
        out = x.clone()
        with torch.no_grad():
            logits = scores(model, x, y)
        ranked = logits.argsort(dim=1, descending=True)
        correct = logits.argmax(1) == y
        best = torch.full((len(x),), float("inf"), device=x.device)
        for rank in target_ranks(self.targets, ranked.shape[1]):
            for restart in range(self.restarts):
                idx = (correct & (best > threat.eps)).nonzero().squeeze(1)
                if idx.numel() == 0:
                    return out
                t = ranked_target(ranked[idx], y[idx], rank)
                x_adv, dist = self._run_once(model, x[idx], y[idx], t, threat, generator.child(rank or 0, restart)[idx],
                                             restart, best[idx])
                better = dist < best[idx]
                out[idx[better]] = x_adv[better]
                best[idx[better]] = dist[better]
        return out

    def _linearised(self, model: nn.Module, v: torch.Tensor, y: torch.Tensor,
                    t: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """At v, per point: f = z_t - z_y (the closest boundary's class untargeted), its gradient,
        and whether v is adversarial."""
        v = v.detach().requires_grad_(True)
        z = scores(model, v, y)
        if t is None:
            # The boundary closest in the linear approximation: min over j != y of |z_j - z_y| / ||grad||_1.
            zy = z.gather(1, y[:, None])
            grads = [input_grad(z[:, j].sum() - zy.sum(), v, retain_graph=True) for j in range(z.shape[1])]
            g = torch.stack(grads, 1).flatten(2)
            f = (z - zy).detach()
            dist = f.abs() / g.abs().sum(2).clamp_min(1e-12)
            dist.scatter_(1, y[:, None], float("inf"))
            j = dist.argmin(1)
            f = f.gather(1, j[:, None]).squeeze(1)
            g = g[torch.arange(len(v), device=v.device), j].view_as(v)
        else:
            f_t = z.gather(1, t[:, None]).squeeze(1) - z.gather(1, y[:, None]).squeeze(1)
            g = input_grad(f_t.sum(), v)
            f = f_t.detach()
        return f, g.detach(), (z.argmax(1) != y).detach()

    def _run_once(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None, threat: Threat,
                  streams: PointStreams, restart: int, best: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, flat = len(x), x.flatten(1)
        lo, hi = threat.bounds
        shape = (-1,) + (1,) * (x.ndim - 1)
        if restart == 0:
            x_k = x.clone()
        else:
            # A random start in the ball of the best distance so far (or eps), as the paper's restarts.
            radius = torch.minimum(best, torch.full_like(best, threat.eps)).clamp_max(threat.eps) / 2
            noise = 2 * streams.random(x.shape[1:]).to(x) - 1
            x_k = (x + radius.view(shape) * noise).clamp(lo, hi)
        x_best = x.clone()
        dist_best = torch.full((n,), float("inf"), device=x.device)
        for _ in range(self.steps):
            f, g, adversarial = self._linearised(model, x_k, y, t)
            dk = (x_k - x).flatten(1).abs().amax(1)
            found = adversarial & (dk < dist_best)
            x_best[found], dist_best[found] = x_k[found], dk[found]
            gf = g.flatten(1)
            # The hyperplane f(x_k) + g.(v - x_k) = 0, seen from x_k and from the original point.
            d_k = _project_linf(x_k.flatten(1), gf, f, lo, hi)
            b0 = f + (gf * (flat - x_k.flatten(1))).sum(1)
            d_0 = _project_linf(flat, gf, b0, lo, hi)
            nk, n0 = d_k.abs().amax(1), d_0.abs().amax(1)
            alpha = torch.minimum(nk / (nk + n0).clamp_min(1e-12), torch.full_like(nk, self.alpha_max))
            step = ((1 - alpha).view(-1, 1) * (x_k.flatten(1) + self.eta * d_k)
                    + alpha.view(-1, 1) * (flat + self.eta * d_0)).clamp(lo, hi)
            x_k = step.view_as(x)
            # An adversarial iterate is pulled back towards the original point (the paper's biased
            # backward step), so the next one searches closer.
            with torch.no_grad():
                now_adv = scores(model, x_k, y).argmax(1) != y
            dk = (x_k - x).flatten(1).abs().amax(1)
            found = now_adv & (dk < dist_best)
            x_best[found], dist_best[found] = x_k[found], dk[found]
            x_k = torch.where(now_adv.view(shape), (1 - self.beta) * x + self.beta * x_k, x_k)
        # Only what lies inside the threat is returned as the attack's result; elsewhere the input.
        inside = dist_best <= threat.eps * (1 + 1e-6)
        return torch.where(inside.view(shape), threat.project(x_best, x), x), dist_best
