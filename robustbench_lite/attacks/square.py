"""Square: "Square Attack: a query-efficient black-box adversarial attack via random search",
Andriushchenko et al., 2020, arXiv:1912.00049 (Algorithm 1 and Section 3, L-inf)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from robustbench_lite.attacks.base import Attack, scores
from robustbench_lite.params import flag, integer, real
from robustbench_lite.registry import ATTACKS
from robustbench_lite.rng import PointStreams
from robustbench_lite.threat import Threat


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j: negative once the point is misclassified."""
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return logits.gather(1, y[:, None]).squeeze(1) - other


def _square_fraction(p_init: float, query: int, queries: int, rescale: bool = True) -> float:
    # The paper's schedule, defined on a 10000-query budget: rescaled to ours, or read at the raw
    # query count (AutoAttack's standard run, which never reaches the last halvings at 5000).
    i = int(query / queries * 10000) if rescale else query
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if i <= bound:
            return p_init / div
    return p_init / 512


@ATTACKS.register("square", example={"queries": 300}, norms=("linf",))
@dataclass(frozen=True, kw_only=True)
class Square(Attack):
    """Score-based black-box random search: it only reads the model's outputs, never a gradient,
    which is why it is the AutoAttack member that gradient masking cannot fool.

    Starts from vertical stripes of +-eps; each query proposes, per point, a square window
    re-filled with +-eps per channel, and keeps it if the margin loss z_y - max_{j!=y} z_j drops.
    The window covers a fraction p of the image that shrinks on the paper's schedule. A point
    stops querying once it is misclassified. The defaults of ``queries`` and ``p_init`` are
    AutoAttack's (L-inf).

    Returns:
        x_adv with the shape, dtype and device of x (L-inf only).

    Example:
        >>> x_adv = Square(queries=1000)(model, x, y, Threat("linf", 0.1))
    """

    batch_invariant = True

    queries: int = integer(5000, "model queries per point, the initial one included", lo=1)
    p_init: float = real(0.8, "the initial fraction of pixels a window covers", lo=0, hi=1, interval="(]")
    restarts: int = integer(1, "runs from fresh stripes on the points still robust", lo=1)
    rescale: bool = flag(True, "the window schedule, defined on 10000 queries, is rescaled to queries; False "
                               "reads it at the raw query count, as AutoAttack's standard version does")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
            generator: PointStreams) -> torch.Tensor:
        if threat.norm != "linf":
            raise ValueError(f"square: only the linf threat is implemented, got {threat.norm!r}")
        out = x.clone()
        todo = torch.arange(len(x), device=x.device)
        for r in range(self.restarts):
            x_adv, fooled = self._run_once(model, x[todo], y[todo], threat, generator.child(r)[todo])
            out[todo] = x_adv
            todo = todo[~fooled]
            if todo.numel() == 0:
                break
        return out

    @torch.no_grad()
    def _run_once(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
                  streams: PointStreams) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        eps = threat.eps
        signs = streams.randint(0, 2, (c, 1, w)).to(x) * 2 - 1
        best = threat.project(x + eps * signs, x)
        margin = _margin(scores(model, best, y), y)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        for q in range(1, self.queries):
            alive = (margin > 0).nonzero().squeeze(1)
            if alive.numel() == 0:
                break
            s = min(max(round(math.sqrt(_square_fraction(self.p_init, q, self.queries, self.rescale) * h * w)), 1), h - 1, w - 1)
            draw = streams[alive]
            top = draw.randint(0, h - s + 1, (1, 1))
            left = draw.randint(0, w - s + 1, (1, 1))
            window = ((rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)).unsqueeze(1)
            value = draw.randint(0, 2, (c, 1, 1)).to(x) * 2 - 1
            xa, base = x[alive], best[alive]
            # A window refilled with the value it already has is a wasted query: flip its sign.
            same = ((base - xa) * value * window).sum((2, 3), keepdim=True) >= eps * s * s * (1 - 1e-6)
            value = torch.where(same, -value, value)
            cand = threat.project(torch.where(window, xa + eps * value, base), xa)
            new = _margin(scores(model, cand, y[alive]), y[alive])
            better = new < margin[alive]
            best[alive[better]] = cand[better]
            margin[alive[better]] = new[better]
        return best, margin <= 0
