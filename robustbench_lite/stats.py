"""Small statistics used by the engine."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (Wilson 1927).

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0% and 100%,
    which is where robust accuracies live.
    """
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def auc(negatives: "torch.Tensor", positives: "torch.Tensor") -> float | None:
    """ROC-AUC of a score separating ``positives`` from ``negatives``: the chance that a random
    positive outscores a random negative, ties counted half (Mann-Whitney). None when a side is empty."""
    if negatives.numel() == 0 or positives.numel() == 0:
        return None
    diff = positives.double()[:, None] - negatives.double()[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def paired_difference(a: Any, b: Any, z: float = 1.959964) -> tuple[float, float, float]:
    """p_a - p_b for two binary outcomes on the same points (two models' robustness on one test
    subset), with Newcombe's 95% interval for paired proportions (Newcombe 1998, "Improved
    confidence intervals for the difference between binomial proportions based on paired
    data", method 10: Wilson intervals of each side combined with their correlation phi).

    Returns (difference, low, high)."""
    import numpy as np

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a and b must be equal-length non-empty 1-d outcomes, got shapes {a.shape} and {b.shape}")
    n = a.size
    both, a_only, b_only, neither = (int(v) for v in ((a & b).sum(), (a & ~b).sum(), (~a & b).sum(), (~a & ~b).sum()))
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    l1, u1 = wilson(both + a_only, n, z)
    l2, u2 = wilson(both + b_only, n, z)
    denom = math.sqrt((both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither))
    phi = (both * neither - a_only * b_only) / denom if denom else 0.0
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return d, max(-1.0, low), min(1.0, high)
