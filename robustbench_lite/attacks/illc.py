"""Iterative least-likely class: "Adversarial examples in the physical world", Kurakin et al., 2017, arXiv:1607.02533."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from robustbench_lite.registry import ATTACKS

from .bim import BIM


@ATTACKS.register("illc")
@dataclass(frozen=True, kw_only=True)
class ILLC(BIM):
    """Iterative least-likely class: step *down* CE(X_n, y_LL) with y_LL = argmin p(y|x), clipping as in BIM.

    Targeting the least likely class gives the most dramatic mistakes (a sneaker read as
    a shirt); robust accuracy still counts any misclassification as success. The hyperparameters
    are BIM's, declared and checked once by that class; errors name ``illc``.

    Returns:
        x_adv with the shape, dtype and device of x.

    Example:
        >>> x_adv = ILLC()(model, x, y, Threat("linf", 0.1))
    """

    batch_invariant = True

    _target: ClassVar[str] = "least_likely"
