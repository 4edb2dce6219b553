"""The engine's self-protection: every attack runs on copies, its output is checked against the
threat and the engine's own copies of the images and labels, and neither the model nor a
detector may change while code under test runs."""
from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from typing import Any

import torch
from torch import nn

from .. import devices
from ..attacks.base import Attack
from ..errors import AttackBudgetError, TamperingError
from ..rng import PointStreams
from ..threat import Threat
from ..views import Fitted

from .plan import cell_seed

_log = logging.getLogger(__name__)


def attacked(name: str, attack: Attack, surface: nn.Module, judge: Any, x: torch.Tensor, y: torch.Tensor,
              todo: torch.Tensor, threat: Threat, batch_size: int, seed: tuple[Any, ...], guard: "Guard",
              tolerance: float) -> Any:
    """Run one attack on the points ``todo`` in chunks, as the engine does everywhere: on copies of
    the images and labels, each chunk's random numbers from per-point streams (a batch-invariant
    attack) or a generator per chunk, every output checked against the engine's own copies and the
    threat, then projected and judged. Yields (chunk, projected x_adv, the judge's scores)."""
    for j, chunk in enumerate(todo.split(batch_size) if todo.numel() else ()):
        xc, yc = x[chunk], y[chunk]  # the engine's, for checking and judging
        xb, yb = xc.clone(), yc.clone()  # the attack's
        rng: PointStreams | torch.Generator = (
            PointStreams.for_points(cell_seed(*seed), chunk) if attack.batch_invariant
            else devices.generator(cell_seed(*seed, j), x.device))
        x_adv = attack(surface, xb, yb, dataclasses.replace(threat), generator=rng)
        check_untouched(f"attack {name}", xb, xc, yb, yc)
        guard.check(f"attack {name}")
        check_output(name, x_adv, xc, threat, tolerance)
        x_adv = threat.project(x_adv, xc)
        yield chunk, x_adv, judge(x_adv)


def check_output(attack: str, x_adv: torch.Tensor, x: torch.Tensor, threat: Threat, tol: float) -> None:
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape or x_adv.dtype != x.dtype or x_adv.device != x.device:
        raise AttackBudgetError(f"attack {attack} returned {type(x_adv).__name__} {getattr(x_adv, 'dtype', '')} "
                                f"{tuple(getattr(x_adv, 'shape', ()))}; expected {x.dtype} {tuple(x.shape)} on {x.device}")
    if not torch.isfinite(x_adv).all():
        raise AttackBudgetError(f"attack {attack} returned NaN or infinite values")
    dist = threat.distance(x_adv, x).max().item() if x.shape[0] else 0.0
    if dist > threat.eps + tol * max(1.0, threat.eps):
        raise AttackBudgetError(f"attack {attack} left its budget: {threat.norm} distance {dist:.6g} > eps {threat.eps:.6g}")
    lo, hi = threat.bounds
    if x_adv.numel() and (x_adv.min().item() < lo - tol or x_adv.max().item() > hi + tol):
        raise AttackBudgetError(f"attack {attack} left the input bounds {threat.bounds}: "
                                f"range [{x_adv.min().item():.6g}, {x_adv.max().item():.6g}]")


def check_untouched(who: str, xb: torch.Tensor, x: torch.Tensor, yb: torch.Tensor, y: torch.Tensor) -> None:
    if not torch.equal(yb, y):
        raise TamperingError(f"{who} modified the labels it was handed ({int((yb != y).sum())} of {len(y)} changed); "
                             "the engine judges against its own copy and refuses the result")
    if not torch.equal(xb, x):
        raise TamperingError(f"{who} modified the images it was handed in place (largest change "
                             f"{(xb - x).abs().max().item():.4g}); an attack returns x_adv and leaves x as it got it")


class Guard:
    """The model the attacks run on, as a private copy, and a check that neither it nor the
    engine's own model (nor a detector's fitted parts) changed: an attack that edits the weights
    it attacks would otherwise weaken the model it is judged on."""

    def __init__(self, model: nn.Module, fitted: Fitted | None):
        self.model = model
        self.parts = fitted.parts if fitted is not None else None
        self.snapshot = _state(model, self.parts)

    @functools.cached_property
    def attack_model(self) -> nn.Module:
        """Made on first use: an evaluation whose cells are all stored copies nothing."""
        try:
            return copy.deepcopy(self.model)
        except Exception as exc:  # noqa: BLE001 - a model that cannot be copied is attacked in place, still checked
            _log.warning("the model could not be copied for the attacks (%s: %s); they run on the engine's own, "
                         "whose state is checked after each call", type(exc).__name__, exc)
            return self.model

    def check(self, who: str) -> None:
        models = [self.model] + ([self.attack_model] if "attack_model" in vars(self) else [])
        for module in models:
            _compare(who, "model", self.snapshot[0], module.state_dict())
        if self.parts is not None:
            _compare(who, "detector", self.snapshot[1], self.parts.state_dict())


def _state(model: nn.Module, parts: nn.Module | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    copy_of = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa: E731
    return copy_of(model), (copy_of(parts) if parts is not None else {})


def _compare(who: str, label: str, before: dict[str, torch.Tensor], now: dict[str, torch.Tensor]) -> None:
    if before.keys() != now.keys():
        raise TamperingError(f"the {label}'s parameters and buffers changed during {who}: "
                             f"entries {sorted(set(before) ^ set(now))[:5]} appeared or went")
    for k, v in before.items():
        if not torch.equal(v, now[k]):
            raise TamperingError(f"the {label}'s {k!r} changed during {who} (by the code run there, or by a forward "
                                 "pass that updates its own state); the engine refuses to score a moving model")
