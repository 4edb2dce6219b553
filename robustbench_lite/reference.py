"""The authors' AutoAttack code (``pyautoattack``, the ``reference`` extra) set up member by member
like ours: what the known-answer tests (tests/test_autoattack_reference.py), the script that prints
their numbers (scripts/autoattack_reference.py) and the benchmark compare against.

Each case is our spec and a builder of the reference attack with the same settings. The settings
are cut from the standard version's (fewer steps, targets and queries) to keep the comparison fast;
both sides run the same ones.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


def cases(eps: float) -> dict[str, tuple[str, Callable[[nn.Module], Any]]]:
    """{member: (our spec, model -> the reference attack)} at L-inf ``eps``."""
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    def fab(model: nn.Module) -> Any:
        attack = FABAttack_PT(model, n_restarts=1, n_iter=30, eps=eps, seed=0, norm="Linf", verbose=False, device="cpu",
                              n_target_classes=3)
        attack.targeted = True  # FAB-T, as AutoAttack's standard version runs it
        return attack

    return {
        "apgd_ce": ("apgd_ce:steps=100",
                    lambda m: APGDAttack(m, n_iter=100, norm="Linf", n_restarts=1, eps=eps, seed=0, loss="ce", device="cpu")),
        "apgd_t": ("apgd_dlr:targets=3,steps=50",
                   lambda m: APGDAttack_targeted(m, n_iter=50, norm="Linf", n_restarts=1, eps=eps, seed=0,
                                                 n_target_classes=3, device="cpu")),
        "fab_t": ("fab:targets=3,steps=30", fab),
        "square": ("square:queries=500,rescale=False",
                   lambda m: SquareAttack(m, p_init=0.8, n_queries=500, eps=eps, norm="Linf", n_restarts=1, seed=0,
                                          device="cpu", resc_schedule=False)),
    }


def robust_under(attack: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Per point: clean-correct and still correct at the reference attack's output, which must lie
    within eps of x."""
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    adv = attack.perturb(x.clone(), y.clone())
    dist = (adv - x).abs().max().item()
    if dist > eps + 1e-5:
        raise AssertionError(f"the reference attack left its budget: {dist:.6g} > {eps}")
    with torch.no_grad():
        return clean & (model(adv).argmax(1) == y)
