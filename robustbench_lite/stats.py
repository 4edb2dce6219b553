"""Small statistics used by the engine."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

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
